//! Operating the service: health with its components, readiness, metrics,
//! the OpenAPI document and its page, problems for unknown routes, one-line
//! start-up failures naming the setting, and a graceful stop on SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{order, world};
use http::{StatusCode, header};
use serde_json::json;
use utoipa::OpenApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_openapi_and_docs() {
    let Some(w) = world().await else { return };
    let p = w.start(&[]).await;
    let http = &p.http;
    let health = http.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.json(),
        json!({"status": "UP", "components": {"db": "UP", "temporal": "UP"}})
    );
    assert_eq!(http.get("/readyz").await.status, StatusCode::OK);
    let r = http.post("/orders", order(Some("ops"), "US"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let dup = http.post("/orders", order(Some("ops"), "US"), &[]).await;
    assert_eq!(dup.status, StatusCode::OK);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    common::wait_for_step(http, &id, "awaiting-shipment").await;
    let metrics = String::from_utf8(http.get("/metrics").await.body.to_vec()).unwrap();
    for needle in [
        "orders_created_total 1",
        "orders_intake_duplicates_total{outcome=\"replayed\"} 1",
        "orders_activity_attempts_total{activity=\"ValidateOrder\"} 1",
        "orders_workflow_starts_total{outcome=\"started\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
    // The document: OpenAPI 3.1, every reference resolved, readable by an
    // independent model.
    let reply = http.get("/openapi.json").await;
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    example_support::openapi_checks::assert_refs_resolve(&doc);
    oas3::from_json(std::str::from_utf8(&reply.body).unwrap()).expect("an OpenAPI 3.1 document");
    // The page and its assets come from the binary.
    let page = http.get("/docs").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains("<base href=\"/docs/\">"), "{html}");
    let css = http.get("/docs/swagger-ui.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(
        http.get("/docs/no-such.js").await.problem_slug(),
        "not-found"
    );
    // An unknown route: a problem too.
    let r = http.get("/nowhere").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.problem_slug(), "not-found");
    drop(p);
    w.drop_schemas().await;
}

/// The router lists what it serves (`example_support::routes::Routes`):
/// every route is in the OpenAPI document, and every documented operation
/// is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_operation_routed() {
    let Some(w) = world().await else { return };
    let config = example_order_intake::Config {
        schema: w.schema.clone(),
        idempotency_schema: w.idempotency_schema.clone(),
        task_queue: w.task_queue.clone(),
        ..example_order_intake::Config::default()
    };
    let service =
        example_order_intake::Service::start(w.pool.clone(), w.temporal.clone(), config, None)
            .await
            .expect("the service starts");
    let mut routed: Vec<(String, String)> = service
        .routes()
        .iter()
        // axum's `{*rest}` is OpenAPI's `{rest}`.
        .map(|(m, p)| (m.as_str().to_ascii_lowercase(), p.replace("{*", "{")))
        .collect();
    routed.sort();
    let doc = serde_json::to_value(example_order_intake::openapi::ApiDoc::openapi()).unwrap();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    assert_eq!(routed, documented);
    assert_eq!(routed.len(), 13);
    service.shutdown().await;
    w.drop_schemas().await;
}

/// A TCP proxy to `upstream` that can be cut: its listener and every
/// connection through it dropped at once.
struct Proxy {
    addr: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        Self {
            addr,
            tasks,
            accept,
        }
    }

    fn cut(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Temporal lost at run time: `/healthz` says which component is down
/// (503), `/readyz` refuses, the database part still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_temporal_is_a_down_component() {
    let Some(w) = world().await else { return };
    let proxy = Proxy::start(common::temporal_address()).await;
    let p = w
        .start(&[
            ("OMS_RUN", "api,relay"),
            ("TEMPORAL_ADDRESS", proxy.addr.as_str()),
        ])
        .await;
    assert_eq!(p.http.get("/healthz").await.status, StatusCode::OK);
    proxy.cut();
    common::eventually(Duration::from_secs(30), "temporal DOWN", || async {
        let r = p.http.get("/healthz").await;
        (r.status == StatusCode::SERVICE_UNAVAILABLE
            && r.json()
                == json!({"status": "DOWN", "components": {"db": "UP", "temporal": "DOWN"}}))
        .then_some(())
    })
    .await;
    let r = p.http.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.problem_slug(), "unavailable");
    // Orders are still read from the database.
    let r = p.http.get("/orders?status=CREATED").await;
    assert_eq!(r.status, StatusCode::OK);
    drop(p);
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_gracefully() {
    let Some(w) = world().await else { return };
    let mut p = w.start(&[]).await;
    let status = p.terminate();
    assert!(status.success(), "{status}\n{}", p.log());
    assert!(p.log().contains("stopped"), "{}", p.log());
    w.drop_schemas().await;
}

/// What the binary prints and returns when it cannot start.
fn fails_to_start(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-order-intake"));
    cmd.args(["--bind", "127.0.0.1:0"])
        .env_remove("OMS_PROFILE")
        .env_remove("OMS_RUN")
        .env_remove("OMS_FAULT")
        .env_remove("DATABASE_URL")
        .env_remove("TEMPORAL_ADDRESS")
        .env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = example_support::testing::run_to_exit(cmd, Duration::from_secs(30));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn start_up_failures_are_one_line_naming_the_setting() {
    let Some(w) = world().await else { return };
    let (code, err) = fails_to_start(&[("OMS_PROFILE", "prod")]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    let (code, err) = fails_to_start(&[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test")]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    let db = example_support::testing::database_url();
    let (code, err) = fails_to_start(&[
        ("DATABASE_URL", db.as_str()),
        ("TEMPORAL_ADDRESS", "127.0.0.1:1"),
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("TEMPORAL_ADDRESS=127.0.0.1:1"), "{err}");
    w.drop_schemas().await;
}
