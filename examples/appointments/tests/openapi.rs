//! `GET /openapi.json` and `GET /docs`: the document is OpenAPI 3.1 (read by
//! an independent model too), every operation in it is routed, every
//! reference resolves, and the page needs nothing from the network.

mod common;

use common::*;
use http::{Method, StatusCode, header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_and_every_operation_is_routed() {
    let Some(app) = app().await else { return };
    let reply = app.http.call(Method::GET, "/openapi.json", None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let doc = reply.json();
    let spec = oas3::from_json(std::str::from_utf8(&reply.body).unwrap()).unwrap();
    let version = spec.validate_version().unwrap();
    assert_eq!((version.major, version.minor), (3, 1));
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{method} {path}"
            );
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "POST /shops",
        "POST /shops/{id}/bays",
        "POST /shops/{id}/mechanics",
        "POST /estimates",
        "GET /estimates/{id}",
        "POST /work-orders",
        "GET /work-orders/{id}",
        "POST /appointments",
        "POST /appointments/{id}/reschedule",
        "GET /appointments/{id}",
        "GET /appointments",
        "GET /work-orders/{id}/planned",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /docs",
        "GET /docs/{file}",
    ];
    expected.sort_unstable();
    assert_eq!(documented, expected);
    // Each is routed: nothing answers with the fallback's "No such route".
    for op in &expected {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path
            .replace("{file}", "swagger-ui.css")
            .replace("{id}", "X-1");
        let method: Method = method.parse().unwrap();
        let body = (method == Method::POST).then(|| serde_json::json!({}));
        let r = app
            .http
            .call(
                method,
                &path,
                body,
                &[
                    ("authorization", SCHEDULER),
                    ("idempotency-key", "openapi-probe"),
                ],
            )
            .await;
        let fallback = r
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c == "application/problem+json")
            && r.json()["title"] == "No such route";
        assert!(!fallback, "{op} is documented but not routed");
    }
    example_support::openapi_checks::assert_refs_resolve(&doc);
    assert!(doc["components"]["securitySchemes"]["demo"].is_object());

    let page = app.http.call(Method::GET, "/docs", None, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert!(html.contains("<base href=\"/docs/\">"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page loads nothing from the network"
    );
    let css = app
        .http
        .call(Method::GET, "/docs/swagger-ui.css", None, &[])
        .await;
    assert_eq!(css.status, StatusCode::OK);
    let missing = app
        .http
        .call(Method::GET, "/docs/nothing.js", None, &[])
        .await;
    assert_eq!(
        (missing.status, missing.problem_slug()),
        (StatusCode::NOT_FOUND, "not-found".into())
    );
    app.stop().await;
}
