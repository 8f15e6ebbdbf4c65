//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use example_support::docs;
use idempotency_tower::{PROBLEM_CONTENT_TYPE, ProblemType};
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};

use crate::app;

/// The service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "example-quickstart",
        description = "An order service whose `POST /orders` runs exactly once per \
                       `Idempotency-Key` (scoped per user)."
    ),
    paths(
        app::create_order,
        app::list_orders,
        app::get_order,
        app::healthz,
        app::render_metrics,
        openapi_json,
        docs_page,
        docs_asset,
    ),
    components(schemas(app::Order, app::CreateOrder, app::Simulate, app::Problem)),
    modifiers(&BearerAuth, &IdempotencyProblems),
    tags(
        (name = "orders", description = "Orders of the authenticated user"),
        (name = "operations", description = "Health and metrics"),
        (name = "docs", description = "This document and its interactive page"),
    )
)]
pub(crate) struct ApiDoc;

/// The demo `Authorization: Bearer <user>` scheme.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Demo: the token is the user name (1 to 64 bytes)"))
                    .build(),
            ),
        );
    }
}

/// The answers of the idempotency layer itself, added to every operation it
/// guards, one example per [`ProblemType`] (so a new problem type of the
/// layer is documented without touching this file).
struct IdempotencyProblems;

/// The paths whose `POST` is behind the idempotency layer.
const IDEMPOTENT: [&str; 1] = ["/orders"];

impl Modify for IdempotencyProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for path in IDEMPOTENT {
            let Some(op) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
            else {
                continue;
            };
            add_layer_problems(&mut op.responses.responses);
        }
    }
}

/// Adds one `application/problem+json` example per [`ProblemType`] to the
/// response of its status (created when the handler documents none).
pub(crate) fn add_layer_problems(
    responses: &mut BTreeMap<String, RefOr<utoipa::openapi::Response>>,
) {
    for kind in ProblemType::ALL {
        let status = kind.status();
        let entry = responses
            .entry(status.as_u16().to_string())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(status.canonical_reason().unwrap_or("Error"))
                        .build(),
                )
            });
        let RefOr::T(response) = entry else { continue };
        response.description.push_str(&format!(
            "\n\n`{}`: {} (answered by the idempotency layer)",
            kind.uri(),
            kind.title()
        ));
        let content = response
            .content
            .entry(PROBLEM_CONTENT_TYPE.to_owned())
            .or_insert_with(|| {
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build()
            });
        content.examples.insert(
            kind.slug().to_owned(),
            RefOr::T(
                ExampleBuilder::new()
                    .summary(kind.title())
                    .value(Some(serde_json::json!({
                        "type": kind.uri(),
                        "title": kind.title(),
                        "status": status.as_u16(),
                        "detail": kind.title(),
                    })))
                    .build(),
            ),
        );
        response.headers.insert(
            "x-request-id".to_owned(),
            HeaderBuilder::new()
                .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::String))
                .description(Some("The request's id, the client's or a generated one"))
                .build(),
        );
        if matches!(kind, ProblemType::InFlight | ProblemType::StoreUnavailable) {
            response.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("Seconds to wait before retrying with the same key"))
                    .build(),
            );
        }
    }
}

/// The document, rendered once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The OpenAPI document of this service.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json() -> Response {
    docs::document(DOCUMENT.as_str())
}

/// The interactive page (Swagger UI) over `/openapi.json`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    responses((status = 200, description = "Swagger UI; its assets are under `/docs/`", content_type = "text/html", body = String))
)]
pub(crate) async fn docs_page() -> Response {
    docs::page().unwrap_or_else(|| app::problem(StatusCode::NOT_FOUND, "no Swagger UI page"))
}

/// An asset of the Swagger UI page, from the binary.
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "docs",
    params(("file" = String, Path, description = "An asset name, e.g. `swagger-ui.css`")),
    responses(
        (status = 200, description = "The asset (CSS, JavaScript or an image)"),
        (status = 404, description = "No such asset", body = app::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn docs_asset(Path(file): Path<String>) -> Response {
    docs::asset(&file)
        .unwrap_or_else(|| app::problem(StatusCode::NOT_FOUND, format!("no asset {file}")))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Method, Request, header};
    use http_body_util::BodyExt;
    use idempotency_core::{DynStore, MemoryStore};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::app::IdempotencySettings;
    use example_support::routes::Routes;

    fn routes() -> Routes {
        app::routes(
            DynStore::new(MemoryStore::new()),
            &IdempotencySettings::default(),
            None,
            idempotency_audit::MemorySink::new(),
        )
    }

    fn service() -> Router {
        app::app(
            DynStore::new(MemoryStore::new()),
            &IdempotencySettings::default(),
            None,
            idempotency_audit::MemorySink::new(),
        )
    }

    /// `GET uri` without credentials: status, content type, body.
    async fn get(app: &Router, uri: &str) -> (StatusCode, String, Vec<u8>) {
        let res = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, content_type, body)
    }

    /// The operation of `method` in a path item of the JSON document.
    fn operation<'a>(doc: &'a Value, path: &str, method: &Method) -> Option<&'a Value> {
        doc["paths"]
            .get(path)?
            .get(method.as_str().to_ascii_lowercase())
    }

    /// The router's routes come from [`Routes::route`], the only way to add
    /// one, so a route added to the router and not to `ApiDoc` fails here;
    /// and the other way round, a documented operation no route serves.
    #[test]
    fn every_route_is_documented_and_every_operation_routed() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let routes = routes();
        let mut routed = Vec::new();
        for (method, path) in &routes.list {
            // axum's `{*rest}` is OpenAPI's `{rest}`.
            let path = path.replace("{*", "{");
            assert!(
                operation(&doc, &path, method).is_some(),
                "{method} {path} is routed but not in the OpenAPI document"
            );
            routed.push((method.as_str().to_ascii_lowercase(), path));
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    routed.contains(&(method.clone(), path.clone())),
                    "{method} {path} is documented but not routed"
                );
            }
        }
        assert_eq!(routed.len(), 8);
    }

    #[tokio::test]
    async fn openapi_json_is_a_valid_openapi_3_1_document() {
        let (status, content_type, body) = get(&service(), "/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        // It reads back as utoipa's own model of a document, and as an
        // independent model of OpenAPI 3.1 (`oas3`).
        let _: utoipa::openapi::OpenApi = serde_json::from_slice(&body).unwrap();
        let spec = oas3::from_json(std::str::from_utf8(&body).unwrap()).unwrap();
        let version = spec.validate_version().unwrap();
        assert_eq!((version.major, version.minor), (3, 1));
        assert_eq!(spec.operations().count(), 8);
        // Every operation answers something, and every `$ref` resolves.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{method} {path} has no responses");
                for (code, r) in responses {
                    assert!(r["description"].is_string(), "{method} {path} {code}");
                }
            }
        }
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a schema ref");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} dangles"
            );
        }
        // The idempotency contract of `POST /orders`.
        let post = operation(&doc, "/orders", &Method::POST).unwrap();
        let key = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .expect("Idempotency-Key documented");
        assert_eq!(
            (&key["in"], &key["required"]),
            (&"header".into(), &true.into())
        );
        let responses = &post["responses"];
        assert!(
            responses["201"]["headers"]
                .get("Idempotent-Replayed")
                .is_some()
        );
        assert!(responses["201"]["headers"].get("x-request-id").is_some());
        assert!(responses["409"]["headers"].get("Retry-After").is_some());
        assert!(responses["503"]["headers"].get("Retry-After").is_some());
        for kind in ProblemType::ALL {
            let example = &responses[kind.status().as_str()]["content"][PROBLEM_CONTENT_TYPE]["examples"]
                [kind.slug()]["value"];
            assert_eq!(example["type"], kind.uri());
            assert_eq!(example["status"], kind.status().as_u16());
        }
        let problem = &doc["components"]["schemas"]["Problem"];
        let required: Vec<&str> = problem["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["type", "title", "status", "detail"]);
        assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    /// The value of every `attr="..."` in `html`.
    fn attribute_values(html: &str, attr: &str) -> Vec<String> {
        let attr = format!(" {attr}=\"");
        html.match_indices(&attr)
            .map(|(at, _)| {
                let rest = &html[at + attr.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    }

    /// Every `<script src>` and `<link href>` of an HTML page, resolved as
    /// a browser does against its `<base href>`; `None` for one on another
    /// host.
    fn asset_links(html: &str) -> Vec<Option<String>> {
        let base_tag = "<base href=\"/docs/\">";
        assert!(html.contains(base_tag), "{html}");
        let html = html.replacen(base_tag, "", 1);
        let mut links = attribute_values(&html, "src");
        links.extend(attribute_values(&html, "href"));
        links
            .into_iter()
            .map(|link| {
                if link.starts_with("//") || link.contains("://") {
                    None
                } else if link.starts_with('/') {
                    Some(link)
                } else {
                    Some(format!("/docs/{}", link.trim_start_matches("./")))
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn docs_page_and_all_its_assets_are_served_by_the_app() {
        let app = service();
        let (status, content_type, body) = get(&app, "/docs").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let html = String::from_utf8(body).unwrap();
        let links = asset_links(&html);
        assert!(links.len() >= 5, "{links:?}");
        for link in links {
            let link = link.expect("every asset is served by the app itself");
            let (status, _, body) = get(&app, &link).await;
            assert_eq!(status, StatusCode::OK, "{link}");
            assert!(!body.is_empty(), "{link}");
            if link.ends_with("swagger-initializer.js") {
                let js = String::from_utf8(body).unwrap();
                assert!(js.contains("\"/openapi.json\""), "{js}");
            }
        }
        let (status, _, _) = get(&app, "/docs/no-such-asset.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
