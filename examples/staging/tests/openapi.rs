//! `GET /openapi.json` and `GET /docs`: the document is OpenAPI 3.1 (read by
//! an independent model too), every route is documented and every
//! documented operation routed, every reference resolves, every problem
//! type the service spells is in it, and the page is served from the binary.

mod common;

use common::app;
use example_staging::problem::PROBLEM_BASE;
use example_support::openapi_checks as checks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_and_matches_the_routes() {
    let Some(app) = app().await else { return };
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers[http::header::CONTENT_TYPE], "application/json");
    let spec = oas3::from_json(std::str::from_utf8(&r.body).unwrap()).unwrap();
    let version = spec.validate_version().unwrap();
    assert_eq!((version.major, version.minor), (3, 1));
    let doc = r.json();
    let mut documented: Vec<String> = Vec::new();
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
    let mut routed: Vec<String> = app
        .service
        .routes()
        .iter()
        .map(|(m, p)| format!("{m} {}", p.replace("{*file}", "{file}")))
        .collect();
    routed.sort();
    assert_eq!(documented, routed);
    checks::assert_refs_resolve(&doc);
    checks::assert_every_answer_has(&doc, "x-request-id");
    // Every slug the problem module spells is documented.
    let text = doc.to_string();
    let source = include_str!("../src/problem.rs");
    let mut spelled = 0;
    for call in source.split("Self::new(").skip(1) {
        let Some(slug) = call
            .split('"')
            .nth(1)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        else {
            continue;
        };
        spelled += 1;
        assert!(
            text.contains(&format!("`{slug}`")),
            "problem type {slug} is not documented"
        );
    }
    assert_eq!(spelled, 14, "every constructor of src/problem.rs was read");
    assert!(PROBLEM_BASE.ends_with("/staging/"));
    // The page and its assets come from the binary.
    let page = app.get("/docs").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<base href=\"/docs/\">"));
    assert_eq!(app.get("/docs/swagger-ui.css").await.status, 200);
    let none = app.get("/docs/nothing.js").await;
    assert_eq!(
        (none.status.as_u16(), none.problem_slug().as_str()),
        (404, "no-route")
    );
    app.drop().await;
}
