//! The binary split over processes (`--run`), its graceful stop on SIGTERM,
//! and its settings refused at start.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::json;

/// The API in one process, relay, consumer and dispatcher in another: an
/// appointment created through the first reaches Work Execution through the
/// second; SIGTERM stops both with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_over_two_processes_and_stopped_by_sigterm() {
    let Some((pool, nats)) = services().await else {
        return;
    };
    let instance = instance();
    let (gateway, gateway_url) = gateway().await;
    let api = Process::start(&[
        ("APPOINTMENTS_INSTANCE", &instance),
        ("APPOINTMENTS_RUN", "api"),
    ]);
    let workers = Process::start(&[
        ("APPOINTMENTS_INSTANCE", &instance),
        ("APPOINTMENTS_RUN", "relay,consumer,dispatcher"),
        ("APPOINTMENTS_GATEWAY_URL", &gateway_url),
        ("APPOINTMENTS_RETRY_DELAY_MS", "50"),
    ]);
    let http = Http::new(&api.base);
    let shop = http
        .post(
            "/shops",
            json!({"opensAt": "06:00", "closesAt": "22:00", "capacity": 5}),
            &[],
        )
        .await
        .json()["shopId"]
        .as_str()
        .unwrap()
        .to_owned();
    http.post(
        &format!("/shops/{shop}/bays"),
        json!({"bayType": "GENERAL_SERVICE_BAY", "name": "B"}),
        &[],
    )
    .await;
    let wo = http
        .post(
            "/work-orders",
            json!({"shopId": shop, "customerId": "C", "vehicleId": "V", "status": "OPEN",
            "serviceDescription": "x", "durationMinutes": 30, "customerPhone": "+1555"}),
            &[],
        )
        .await
        .json()["sourceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = format!("{instance}-create");
    let r = http
        .post(
            "/appointments",
            json!({"sourceType": "WORK_ORDER", "sourceId": wo, "scheduledStart": at(3, 10)}),
            &[("authorization", SCHEDULER), ("idempotency-key", &key)],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json()["appointmentId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(15), "the planned time", || {
        let pool = pool.clone();
        let id = id.clone();
        async move { planned(&pool, &id).await }
    })
    .await;
    let key = format!("{instance}-move");
    let r = http
        .post(
            &format!("/appointments/{id}/reschedule"),
            json!({"newStart": at(4, 10), "reason": "WEATHER"}),
            &[("authorization", SCHEDULER), ("idempotency-key", &key)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    eventually(Duration::from_secs(15), "the SMS", || {
        let gateway = gateway.clone();
        async move { (gateway.delivered().len() == 1).then_some(()) }
    })
    .await;
    // The workers' process serves only operations.
    let ops = Http::new(&workers.base);
    assert_eq!(ops.get("/healthz", SCHEDULER).await.status, StatusCode::OK);
    assert_eq!(
        ops.get("/appointments?sourceId=x", SCHEDULER).await.status,
        StatusCode::NOT_FOUND
    );
    for mut p in [api, workers] {
        let pid = p.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        let status = loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}");
        p.wait_for_line("stopped", Duration::from_secs(1));
    }
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(&instance)
        .await;
}

/// A nonsense setting is one line on stderr and exit status 2, before
/// anything is connected.
#[test]
fn bad_settings_exit_2() {
    for (name, value) in [
        ("APPOINTMENTS_INSTANCE", "No.Dots"),
        ("APPOINTMENTS_RUN", "api,everything"),
        ("NATS_URL", "http://127.0.0.1:4222"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_example-appointments"))
            .env(name, value)
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(name), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_example-appointments"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

/// `/healthz` and `/readyz` say 503 when NATS is gone, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_nats_down() {
    let Some(app) = app_with(|c| c.parts.consumer = false).await else {
        return;
    };
    let up = app.http.get("/healthz", SCHEDULER).await;
    assert_eq!(up.status, StatusCode::OK);
    assert_eq!(up.json(), json!({"database": "ok", "nats": "ok"}));
    let js = async_nats::jetstream::new(app.nats.clone());
    let _ = js.delete_stream(&app.config.instance).await;
    app.nats.drain().await.unwrap();
    let down = eventually(Duration::from_secs(5), "NATS reported down", || {
        let http = app.http.clone();
        async move {
            let r = http.get("/healthz", SCHEDULER).await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        }
    })
    .await;
    assert_eq!(down.json(), json!({"database": "ok", "nats": "down"}));
    let ready = app.http.get("/readyz", SCHEDULER).await;
    assert_eq!(
        (ready.status, ready.problem_slug()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into())
    );
    app.stop().await;
}
