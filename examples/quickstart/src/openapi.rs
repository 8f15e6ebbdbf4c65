//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.

use axum::http::StatusCode;
use example_support::openapi::{add_layer_problems, string_header};
use utoipa::openapi::RefOr;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::{self, Problem};

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
    components(schemas(app::Order, app::CreateOrder, app::Simulate, Problem)),
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
/// guards, one example per [`idempotency_tower::ProblemType`] (so a new problem type of the
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
            let request_id = string_header("The request's id, the client's or a generated one");
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(r) = response {
                    r.headers
                        .insert("x-request-id".to_owned(), request_id.clone());
                }
            }
        }
    }
}

example_support::docs_endpoints!(
    ApiDoc,
    Problem,
    "No such asset",
    app::problem(StatusCode::NOT_FOUND, "no such Swagger UI asset"),
    app::problem(StatusCode::NOT_FOUND, "no Swagger UI page"),
);

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use idempotency_core::{DynStore, MemoryStore};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::app::IdempotencySettings;
    use example_support::openapi_checks as checks;
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

    /// The router's routes come from [`Routes::route`], the only way to add
    /// one, so a route added to the router and not to `ApiDoc` fails here;
    /// and the other way round, a documented operation no route serves.
    #[test]
    fn every_route_is_documented_and_every_operation_routed() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let routes = routes();
        let list = routes.list.iter().map(|(m, p)| (m.as_str(), *p));
        assert_eq!(checks::assert_routes_match(&doc, list), 8);
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
        checks::assert_refs_resolve(&doc);
        // The idempotency contract of `POST /orders`.
        let post = checks::operation(&doc, "/orders", "post").unwrap();
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
        checks::assert_layer_problems(responses);
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

    #[tokio::test]
    async fn docs_page_and_all_its_assets_are_served_by_the_app() {
        let app = service();
        let (status, content_type, body) = get(&app, "/docs").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let html = String::from_utf8(body).unwrap();
        let links = checks::asset_links(&html);
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
