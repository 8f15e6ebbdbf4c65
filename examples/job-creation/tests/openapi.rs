//! `GET /openapi.json` and `GET /docs`: every route is documented, the
//! document is OpenAPI 3.1, and the page needs nothing from the network.

mod common;

use common::{app, config};
use example_job_creation::openapi::{ApiDoc, PROBLEM_TYPES};
use example_job_creation::problem::PROBLEM_BASE;
use example_support::openapi_checks as checks;
use http::{StatusCode, header};
use utoipa::OpenApi;

/// `Service::routes` is filled by the one function that adds routes to the
/// router, so a route added to the router and not to `ApiDoc` fails here;
/// and the other way round, a documented operation no route serves.
#[tokio::test]
async fn every_route_is_documented_and_every_operation_routed() {
    let Some(app) = app(config()).await else {
        return;
    };
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let routes = app.service.routes().iter().map(|(m, p)| (m.as_str(), *p));
    assert_eq!(checks::assert_routes_match(&doc, routes), 10);
    app.drop().await;
}

#[tokio::test]
async fn openapi_json_is_a_valid_openapi_3_1_document() {
    let Some(app) = app(config()).await else {
        return;
    };
    let reply = app.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let doc = reply.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    // It reads back as utoipa's own model of a document, and as an
    // independent model of OpenAPI 3.1 (`oas3`).
    let _: utoipa::openapi::OpenApi = serde_json::from_slice(&reply.body).unwrap();
    let spec = oas3::from_json(std::str::from_utf8(&reply.body).unwrap()).unwrap();
    let version = spec.validate_version().unwrap();
    assert_eq!((version.major, version.minor), (3, 1));
    assert_eq!(spec.operations().count(), 10);
    checks::assert_every_answer_has(&doc, "x-request-id");
    checks::assert_refs_resolve(&doc);
    // The completion: its envelope, its correlation header, its problems.
    let complete = checks::operation(
        &doc,
        "/api/funnels/{slug}/assessments/{assessmentId}/complete",
        "post",
    )
    .unwrap();
    let ok = &complete["responses"]["200"];
    assert!(ok["headers"].get("x-correlation-id").is_some());
    assert_eq!(
        ok["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CompletionEnvelope"
    );
    for code in ["400", "404", "500", "503"] {
        assert!(complete["responses"].get(code).is_some(), "{code}");
    }
    assert!(
        complete["responses"]["503"]["headers"]
            .get("Retry-After")
            .is_some()
    );
    // Every problem type of the service is in the document, and the list is
    // every slug the problem module spells.
    let text = doc.to_string();
    for (slug, _, _) in PROBLEM_TYPES {
        assert!(
            text.contains(&format!("\"{PROBLEM_BASE}{slug}\"")),
            "{slug} is not documented"
        );
    }
    let source = include_str!("../src/problem.rs");
    let mut spelled = 0;
    // Each slug is the second argument of `Self::new(status, "slug", ..)`,
    // on a line of its own or not.
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
            PROBLEM_TYPES.iter().any(|(s, _, _)| *s == slug),
            "problem type {slug} of src/problem.rs is not in PROBLEM_TYPES"
        );
    }
    assert_eq!(spelled, PROBLEM_TYPES.len());
    app.drop().await;
}

#[tokio::test]
async fn docs_page_and_all_its_assets_are_served_by_the_app() {
    let Some(app) = app(config()).await else {
        return;
    };
    let page = app.get("/docs").await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    let links = checks::asset_links(&html);
    assert!(links.len() >= 5, "{links:?}");
    for link in links {
        let link = link.expect("every asset is served by the app itself");
        let reply = app.get(&link).await;
        assert_eq!(reply.status, StatusCode::OK, "{link}");
        assert!(!reply.body.is_empty(), "{link}");
        if link.ends_with("swagger-initializer.js") {
            let js = String::from_utf8(reply.body.to_vec()).unwrap();
            assert!(js.contains("\"/openapi.json\""), "{js}");
        }
    }
    let missing = app.get("/docs/no-such-asset.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    app.drop().await;
}
