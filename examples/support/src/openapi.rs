//! What the services' OpenAPI documents share: the RFC 9457 body schemas,
//! the builders that add a problem example or a header to an answer, the
//! idempotency layer's own answers, and [`docs_endpoints!`](crate::docs_endpoints)
//! for `/openapi.json`, `/docs` and `/docs/{file}`.
//!
//! A service keeps its own `#[derive(OpenApi)]` document, its operations,
//! its problem catalogue and its modifiers; they call these functions.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use idempotency_tower::{PROBLEM_CONTENT_TYPE, ProblemType};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Type};

/// The answers of one operation, by status code.
pub type Responses = BTreeMap<String, RefOr<utoipa::openapi::Response>>;

/// A problem+json body (RFC 9457): the schema of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `https://idempotency.rs/problems/<service>/<slug>` for the service's
    /// own problems, `https://idempotency.rs/problems/<slug>` for the
    /// idempotency layer's.
    #[schema(example = "https://idempotency.rs/problems/idempotency-key-in-use")]
    pub r#type: String,
    /// The same for every occurrence of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// This occurrence.
    pub detail: String,
}

/// `validation-failed`: a problem with the broken rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationProblem {
    /// `https://idempotency.rs/problems/<service>/validation-failed`.
    pub r#type: String,
    /// `Request body failed validation`.
    pub title: String,
    /// 422.
    pub status: u16,
    /// How many fields failed.
    pub detail: String,
    /// Each broken rule.
    pub errors: Vec<FieldError>,
}

/// One broken rule of a body.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer of the field, e.g. `/lines/0/quantity`.
    pub pointer: String,
    /// What is wrong.
    pub detail: String,
}

/// One problem type as a document shows it: an example of `schema` (a
/// component name, `Problem` or `ValidationProblem`) under the answer of
/// `status`, whose description lists `uri` and `title`.
#[derive(Debug, Clone, Copy)]
pub struct ProblemExample<'a> {
    /// The answer's status.
    pub status: StatusCode,
    /// The problem's slug: the example's name.
    pub slug: &'a str,
    /// Its full `type` URI.
    pub uri: &'a str,
    /// Its title.
    pub title: &'a str,
    /// The component schema of its body.
    pub schema: &'a str,
}

impl<'a> ProblemExample<'a> {
    /// A `Problem`-shaped problem (see [`validation`](Self::validation)).
    pub fn new(status: StatusCode, slug: &'a str, uri: &'a str, title: &'a str) -> Self {
        Self {
            status,
            slug,
            uri,
            title,
            schema: "Problem",
        }
    }

    /// The same, shaped as a `ValidationProblem`.
    #[must_use]
    pub fn validation(self) -> Self {
        Self {
            schema: "ValidationProblem",
            ..self
        }
    }
}

/// The answer of `status` in `responses`, created with the status's reason
/// as its description when the operation documents none; `None` when it is
/// a reference (left alone).
pub fn answer(
    responses: &mut Responses,
    status: StatusCode,
) -> Option<&mut utoipa::openapi::Response> {
    let entry = responses
        .entry(status.as_u16().to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(status.canonical_reason().unwrap_or("Error"))
                    .build(),
            )
        });
    match entry {
        RefOr::T(response) => Some(response),
        RefOr::Ref(_) => None,
    }
}

/// Adds `problem` to `responses`: a line `` `uri`: title`` (and `note`,
/// when not empty) in the description of its status's answer, and an
/// `application/problem+json` example named by its slug. Returns the
/// answer, for its headers.
pub fn add_problem<'r>(
    responses: &'r mut Responses,
    problem: &ProblemExample<'_>,
    note: &str,
) -> Option<&'r mut utoipa::openapi::Response> {
    let response = answer(responses, problem.status)?;
    response
        .description
        .push_str(&format!("\n\n`{}`: {}{note}", problem.uri, problem.title));
    let content = response
        .content
        .entry(PROBLEM_CONTENT_TYPE.to_owned())
        .or_insert_with(|| {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(problem.schema)))
                .build()
        });
    content.examples.insert(
        problem.slug.to_owned(),
        RefOr::T(
            ExampleBuilder::new()
                .summary(problem.title)
                .value(Some(serde_json::json!({
                    "type": problem.uri,
                    "title": problem.title,
                    "status": problem.status.as_u16(),
                    "detail": problem.title,
                })))
                .build(),
        ),
    );
    Some(response)
}

/// Adds one example per [`ProblemType`] of the idempotency layer to the
/// answer of its status, with `Retry-After` on the in-flight and
/// store-unavailable answers (so a new problem type of the layer is
/// documented without touching any service).
pub fn add_layer_problems(responses: &mut Responses) {
    for kind in ProblemType::ALL {
        let uri = kind.uri();
        let problem = ProblemExample::new(kind.status(), kind.slug(), &uri, kind.title());
        let Some(response) =
            add_problem(responses, &problem, " (answered by the idempotency layer)")
        else {
            continue;
        };
        if matches!(kind, ProblemType::InFlight | ProblemType::StoreUnavailable) {
            response.headers.insert(
                "Retry-After".to_owned(),
                integer_header("Seconds to wait before retrying with the same key"),
            );
        }
    }
}

/// A header whose value is a string.
pub fn string_header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

/// A header whose value is an integer (`Retry-After`).
pub fn integer_header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer))
        .description(Some(description))
        .build()
}

/// Adds the header `name` to every answer of every operation of `openapi`
/// (`x-request-id`, which the services set on every answer).
pub fn add_header_everywhere(openapi: &mut OpenApi, name: &str, header: &Header) {
    for item in openapi.paths.paths.values_mut() {
        for op in [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(r) = response {
                    r.headers.insert(name.to_owned(), header.clone());
                }
            }
        }
    }
}

/// Declares, in the calling module, the document rendered once
/// (`DOCUMENT`) and the three documented handlers of the documentation:
/// `openapi_json` (`GET /openapi.json`), `docs_page` (`GET /docs`, the
/// vendored Swagger UI) and `docs_asset` (`GET /docs/{file}`). List them in
/// the document's `paths(...)` and route them.
///
/// Arguments: the service's `OpenApi` type, its problem body schema, and
/// then either
/// - `under BASE, missing "slug", "description"`: the answers are
///   [`Problem`](crate::Problem)s under the `type` base `BASE`: a missing
///   asset is a 404 of the slug (`"description"`, a string literal, is the
///   404's description in the document), a page that cannot be rendered a
///   500 `internal`; or
/// - `"description", MISSING, NO_PAGE`: two expressions of type `Response`
///   for those two answers.
///
/// ```ignore
/// example_support::docs_endpoints!(ApiDoc, Problem, under PROBLEM_BASE, missing "not-found", "`not-found`");
/// ```
#[macro_export]
macro_rules! docs_endpoints {
    ($api:ident, $problem:ident, under $base:expr, missing $slug:literal, $missing_doc:tt $(,)?) => {
        $crate::docs_endpoints!(
            $api,
            $problem,
            $missing_doc,
            $crate::__private::axum::response::IntoResponse::into_response($crate::Problem::new(
                $base,
                $crate::__private::axum::http::StatusCode::NOT_FOUND,
                $slug,
                "No such route",
                "no such Swagger UI asset",
            )),
            $crate::__private::axum::response::IntoResponse::into_response($crate::Problem::new(
                $base,
                $crate::__private::axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "no Swagger UI page",
            ))
        );
    };
    ($api:ident, $problem:ident, $missing_doc:tt, $missing:expr, $no_page:expr $(,)?) => {
        /// The document, rendered once.
        static DOCUMENT: ::std::sync::LazyLock<::std::string::String> =
            ::std::sync::LazyLock::new(|| {
                <$api as ::utoipa::OpenApi>::openapi()
                    .to_json()
                    .expect("the OpenAPI document serializes")
            });

        /// The OpenAPI document of this service.
        #[::utoipa::path(
            get,
            path = "/openapi.json",
            tag = "docs",
            responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object))
        )]
        pub(crate) async fn openapi_json() -> $crate::__private::axum::response::Response {
            $crate::docs::document(DOCUMENT.as_str())
        }

        /// The interactive page (Swagger UI) over `/openapi.json`.
        #[::utoipa::path(
            get,
            path = "/docs",
            tag = "docs",
            responses((status = 200, description = "Swagger UI; its assets are under `/docs/`", content_type = "text/html", body = String))
        )]
        pub(crate) async fn docs_page() -> $crate::__private::axum::response::Response {
            $crate::docs::page().unwrap_or_else(|| $no_page)
        }

        /// An asset of the Swagger UI page, from the binary.
        #[::utoipa::path(
            get,
            path = "/docs/{file}",
            tag = "docs",
            params(("file" = String, Path, description = "An asset name, e.g. `swagger-ui.css`")),
            responses(
                (status = 200, description = "The asset (CSS, JavaScript or an image)"),
                (status = 404, description = $missing_doc, body = $problem, content_type = "application/problem+json"),
            )
        )]
        pub(crate) async fn docs_asset(
            $crate::__private::axum::extract::Path(file): $crate::__private::axum::extract::Path<
                ::std::string::String,
            >,
        ) -> $crate::__private::axum::response::Response {
            $crate::docs::asset(&file).unwrap_or_else(|| $missing)
        }
    };
}

/// A service's problem catalogue, applied to its document as a modifier:
/// each operation's problem answers (one example per type), the
/// idempotency layer's on the operations behind it, `Retry-After` on every
/// 503, and `x-request-id` on every answer.
///
/// ```
/// use axum::http::StatusCode;
/// use example_support::openapi::Catalog;
///
/// static CATALOG: Catalog = Catalog {
///     base: "https://idempotency.rs/problems/shop/",
///     types: &[
///         ("order-not-found", StatusCode::NOT_FOUND, "Order not found"),
///         ("validation-failed", StatusCode::UNPROCESSABLE_ENTITY, "Request body failed validation"),
///         ("internal", StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
///     ],
///     operations: &[
///         ("get", "/orders/{id}", &["order-not-found"]),
///         ("post", "/orders", &["validation-failed"]),
///     ],
///     common: &["internal"],
///     idempotent: &["/orders"],
///     request_id: "The request's id: the client's or a new UUIDv7",
/// };
/// let mut doc = utoipa::openapi::OpenApiBuilder::new().build();
/// CATALOG.apply(&mut doc);
/// ```
#[derive(Debug)]
pub struct Catalog {
    /// The base of the service's `type` URIs, ending in `/`.
    pub base: &'static str,
    /// Every problem type of the service: `(slug, status, title)`.
    /// `validation-failed` is shown as a `ValidationProblem`.
    pub types: &'static [(&'static str, StatusCode, &'static str)],
    /// The problems each operation may answer: `(method, path, slugs)`.
    pub operations: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// What every listed operation also answers, but those under `/docs`.
    pub common: &'static [&'static str],
    /// The paths whose `POST` the idempotency layer guards.
    pub idempotent: &'static [&'static str],
    /// The description of the `x-request-id` header.
    pub request_id: &'static str,
}

impl Catalog {
    /// The type `slug`.
    ///
    /// # Panics
    ///
    /// It is not in [`types`](Self::types): a catalogue that names a slug
    /// it does not define is a bug, found by the first test that renders
    /// the document.
    pub fn problem(&self, slug: &str) -> (StatusCode, &'static str) {
        let (_, status, title) = self
            .types
            .iter()
            .find(|(s, _, _)| *s == slug)
            .unwrap_or_else(|| panic!("problem type {slug} is not in the catalogue"));
        (*status, title)
    }

    /// Adds the catalogue to `openapi` (see the type's documentation).
    pub fn apply(&self, openapi: &mut OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let ops = [
                ("get", item.get.as_mut()),
                ("post", item.post.as_mut()),
                ("put", item.put.as_mut()),
                ("patch", item.patch.as_mut()),
                ("delete", item.delete.as_mut()),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let responses = &mut op.responses.responses;
                if let Some((_, _, slugs)) = self
                    .operations
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path)
                {
                    let common = if path.starts_with("/docs") {
                        &[]
                    } else {
                        self.common
                    };
                    for slug in slugs.iter().chain(common) {
                        let (status, title) = self.problem(slug);
                        let uri = format!("{}{slug}", self.base);
                        let mut problem = ProblemExample::new(status, slug, &uri, title);
                        if *slug == "validation-failed" {
                            problem = problem.validation();
                        }
                        let response = add_problem(responses, &problem, "");
                        if let Some(response) = response
                            && status == StatusCode::SERVICE_UNAVAILABLE
                        {
                            response.headers.insert(
                                "Retry-After".to_owned(),
                                integer_header("Seconds to wait before retrying"),
                            );
                        }
                    }
                }
                if method == "post" && self.idempotent.contains(&path.as_str()) {
                    add_layer_problems(responses);
                }
            }
        }
        add_header_everywhere(openapi, "x-request-id", &string_header(self.request_id));
    }
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::{OpenApiBuilder, PathsBuilder};

    use super::*;

    static CATALOG: Catalog = Catalog {
        base: "https://idempotency.rs/problems/shop/",
        types: &[
            ("order-not-found", StatusCode::NOT_FOUND, "Order not found"),
            (
                "validation-failed",
                StatusCode::UNPROCESSABLE_ENTITY,
                "Request body failed validation",
            ),
            (
                "database-unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
            ),
        ],
        operations: &[
            ("get", "/orders/{id}", &["order-not-found"]),
            ("post", "/orders", &["validation-failed"]),
            ("get", "/docs/{file}", &["order-not-found"]),
        ],
        common: &["database-unavailable"],
        idempotent: &["/orders"],
        request_id: "The request's id",
    };

    fn document() -> serde_json::Value {
        let op = || OperationBuilder::new().build();
        let paths = PathsBuilder::new()
            .path("/orders", PathItem::new(HttpMethod::Post, op()))
            .path("/orders/{id}", PathItem::new(HttpMethod::Get, op()))
            .path("/docs/{file}", PathItem::new(HttpMethod::Get, op()))
            .build();
        let mut doc = OpenApiBuilder::new().paths(paths).build();
        CATALOG.apply(&mut doc);
        serde_json::to_value(&doc).unwrap()
    }

    #[test]
    fn a_catalogue_documents_each_operation_and_the_layer() {
        let doc = document();
        let get = &doc["paths"]["/orders/{id}"]["get"]["responses"];
        let example =
            &get["404"]["content"][PROBLEM_CONTENT_TYPE]["examples"]["order-not-found"]["value"];
        assert_eq!(
            example["type"],
            "https://idempotency.rs/problems/shop/order-not-found"
        );
        assert_eq!(example["status"], 404);
        assert!(get["503"]["headers"].get("Retry-After").is_some());
        assert!(
            get["503"]["description"]
                .as_str()
                .unwrap()
                .contains("Database unavailable")
        );
        assert!(get.get("409").is_none(), "the layer guards only /orders");

        let post = &doc["paths"]["/orders"]["post"]["responses"];
        assert_eq!(
            post["422"]["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"],
            "#/components/schemas/ValidationProblem"
        );
        for kind in ProblemType::ALL {
            let example = &post[kind.status().as_str()]["content"][PROBLEM_CONTENT_TYPE]["examples"]
                [kind.slug()];
            assert_eq!(example["value"]["type"], kind.uri(), "{}", kind.slug());
        }
        assert!(post["409"]["headers"].get("Retry-After").is_some());

        // The docs do not answer the common problems.
        let docs = &doc["paths"]["/docs/{file}"]["get"]["responses"];
        assert!(docs.get("404").is_some() && docs.get("503").is_none());
        // Every answer carries the request id.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (code, r) in op["responses"].as_object().unwrap() {
                    assert!(
                        r["headers"].get("x-request-id").is_some(),
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "is not in the catalogue")]
    fn a_slug_the_catalogue_does_not_define_is_a_bug() {
        let _ = CATALOG.problem("no-such-problem");
    }
}
