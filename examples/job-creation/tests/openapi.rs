//! `GET /openapi.json` and `GET /docs`: every route is documented, the
//! document is OpenAPI 3.1, and the page needs nothing from the network.

mod common;

use common::{app, config};
use example_job_creation::openapi::{ApiDoc, PROBLEM_TYPES};
use example_job_creation::problem::PROBLEM_BASE;
use http::{Method, StatusCode, header};
use serde_json::Value;
use utoipa::OpenApi;

/// The operation of `method` in a path item of the JSON document.
fn operation<'a>(doc: &'a Value, path: &str, method: &Method) -> Option<&'a Value> {
    doc["paths"]
        .get(path)?
        .get(method.as_str().to_ascii_lowercase())
}

/// `Service::routes` is filled by the one function that adds routes to the
/// router, so a route added to the router and not to `ApiDoc` fails here;
/// and the other way round, a documented operation no route serves.
#[tokio::test]
async fn every_route_is_documented_and_every_operation_routed() {
    let Some(app) = app(config()).await else {
        return;
    };
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut routed = Vec::new();
    for (method, path) in app.service.routes() {
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
    assert_eq!(routed.len(), 10);
    app.drop().await;
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
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            for (code, r) in responses {
                assert!(r["description"].is_string(), "{method} {path} {code}");
                assert!(
                    r["headers"].get("x-request-id").is_some(),
                    "{method} {path} {code} has no x-request-id"
                );
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
    // The completion: its envelope, its correlation header, its problems.
    let complete = operation(
        &doc,
        "/api/funnels/{slug}/assessments/{assessmentId}/complete",
        &Method::POST,
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

/// Every `<script src>` and `<link href>` of an HTML page, resolved as a
/// browser does against its `<base href>`; `None` for one on another host.
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
    let Some(app) = app(config()).await else {
        return;
    };
    let page = app.get("/docs").await;
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    let links = asset_links(&html);
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
