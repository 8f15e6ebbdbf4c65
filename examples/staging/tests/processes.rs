//! The two binaries as processes: the service posts to the destination
//! over HTTP, `/metrics` counts what happened, SIGTERM stops both with exit
//! status 0, and nonsense settings are refused with one line and status 2.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{invoice_data, unique};
use example_support::testing::{self, Server, counter, series};
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_posts_to_the_destination_process_and_both_stop_on_sigterm() {
    let Some(pool) = common::pool().await else {
        return;
    };
    let mut dest = Server::spawn(
        testing::command(env!("CARGO_BIN_EXE_staging-destination")),
        "/healthz",
    )
    .await;
    let (schema, audit, store) = (unique("stg_p"), unique("stg_pa"), unique("stg_pi"));
    let files = std::env::temp_dir().join(unique("staging-files"));
    let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-staging"));
    cmd.env("DATABASE_URL", testing::database_url())
        .env("STAGING_SCHEMA", &schema)
        .env("STAGING_AUDIT_SCHEMA", &audit)
        .env("STAGING_STORE_SCHEMA", &store)
        .env("STAGING_FILE_DIR", &files)
        .env("STAGING_DESTINATION_URL", dest.url(""));
    let mut svc = Server::spawn(cmd, "/readyz").await;
    let http = testing::client();
    let data = invoice_data("INV-P1", "300.00").to_string();
    let up = common::upload(
        &http,
        &svc.url(""),
        "vendor_id=v1&uploaded_by=u1",
        data.as_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(up.status, 201, "{up:?}");
    let again = common::upload(
        &http,
        &svc.url(""),
        "vendor_id=v1&uploaded_by=u1",
        data.as_bytes(),
        "application/json",
    )
    .await;
    assert!(again.is_replay());
    let send = |method: Method, path: String, body: serde_json::Value| {
        let (http, url) = (http.clone(), svc.url(&path));
        async move {
            testing::send(&http, method, &url, Some(&body.to_string()), &[])
                .await
                .unwrap()
        }
    };
    let r = send(Method::POST, "/api/v1/staging/stage".into(), json!({"invoice_id": up.json()["invoice_id"],
        "export_format": "csv", "destination_system": "quickbooks", "export_data": serde_json::from_str::<serde_json::Value>(&data).unwrap(),
        "prepared_by": "paula"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    send(
        Method::POST,
        format!("/api/v1/staging/{id}/review"),
        json!({"reviewer": "rita"}),
    )
    .await;
    let r = send(
        Method::PUT,
        format!("/api/v1/staging/{id}/approve"),
        json!({"approved_by": "alice"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let body = json!({"posted_by": "pete", "external_reference": "QB-P"});
    let r = send(
        Method::POST,
        format!("/api/v1/staging/{id}/post"),
        body.clone(),
    )
    .await;
    assert_eq!(r.json()["status"], "POSTED", "{r:?}");
    let r = send(Method::POST, format!("/api/v1/staging/{id}/post"), body).await;
    assert!(r.is_replay());
    let books = testing::send(&http, Method::GET, &dest.url("/postings"), None, &[])
        .await
        .unwrap()
        .json();
    assert_eq!(books["bookings"].as_array().unwrap().len(), 1);
    let m = testing::send(&http, Method::GET, &svc.url("/metrics"), None, &[])
        .await
        .unwrap()
        .text();
    assert_eq!(
        series(&m, "staging_postings_total{outcome=\"posted\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        series(&m, "staging_postings_total{outcome=\"replayed\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "staging_duplicates_prevented_total{operation=\"upload\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(counter(&m, "staging_transitions_total"), 4, "{m}");
    assert!(m.contains("staging_stage_seconds"), "{m}");
    svc.terminate();
    dest.terminate();
    assert!(
        svc.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        svc.log_text()
    );
    assert!(
        dest.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        dest.log_text()
    );
    for s in [&schema, &audit, &store] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{audit}_owner\", \"{audit}_writer\", \"{audit}_reader\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(files);
}

/// A process that dies after the destination booked and before the
/// `POSTED` transition committed: the record's lease runs out, another
/// process takes the post over and calls the destination with the same
/// key; the booking is found, not made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_cut_by_a_crash_after_booking_is_finished_by_another_process_with_one_booking() {
    let Some(pool) = common::pool().await else {
        return;
    };
    let dest = Server::spawn(
        testing::command(env!("CARGO_BIN_EXE_staging-destination")),
        "/healthz",
    )
    .await;
    let (schema, audit, store) = (unique("stg_c"), unique("stg_ca"), unique("stg_ci"));
    let files = std::env::temp_dir().join(unique("staging-files"));
    let service = |fault: Option<&str>| {
        let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-staging"));
        cmd.env("DATABASE_URL", testing::database_url())
            .env("STAGING_SCHEMA", &schema)
            .env("STAGING_AUDIT_SCHEMA", &audit)
            .env("STAGING_STORE_SCHEMA", &store)
            .env("STAGING_FILE_DIR", &files)
            .env("STAGING_LEASE_MS", "1000")
            .env("STAGING_DESTINATION_URL", dest.url(""));
        if let Some(f) = fault {
            cmd.env("STAGING_FAULT", f);
        }
        Server::spawn(cmd, "/readyz")
    };
    let mut crashing = service(Some("crash-after-booking")).await;
    let http = testing::client();
    let data = invoice_data("INV-CRASH", "64.00");
    let up = common::upload(
        &http,
        &crashing.url(""),
        "vendor_id=v9&uploaded_by=u9",
        data.to_string().as_bytes(),
        "application/json",
    )
    .await;
    let call = |server: &Server, method: Method, path: String, body: serde_json::Value| {
        let (http, url) = (http.clone(), server.url(&path));
        async move { testing::send(&http, method, &url, Some(&body.to_string()), &[]).await }
    };
    let r = call(&crashing, Method::POST, "/api/v1/staging/stage".into(), json!({"invoice_id": up.json()["invoice_id"],
        "export_format": "csv", "destination_system": "xero", "export_data": data, "prepared_by": "paula"})).await.unwrap();
    let id = r.json()["id"].as_str().unwrap().to_owned();
    call(
        &crashing,
        Method::POST,
        format!("/api/v1/staging/{id}/review"),
        json!({"reviewer": "rita"}),
    )
    .await
    .unwrap();
    let r = call(
        &crashing,
        Method::PUT,
        format!("/api/v1/staging/{id}/approve"),
        json!({"approved_by": "alice"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let body = json!({"posted_by": "pete", "external_reference": "XR-1"});
    let cut = call(
        &crashing,
        Method::POST,
        format!("/api/v1/staging/{id}/post"),
        body.clone(),
    )
    .await;
    assert!(cut.is_err(), "the process died before answering: {cut:?}");
    assert_eq!(crashing.wait_exit(Duration::from_secs(10)).code(), Some(3));
    let books = testing::send(&http, Method::GET, &dest.url("/postings"), None, &[])
        .await
        .unwrap()
        .json();
    assert_eq!(
        books["bookings"].as_array().unwrap().len(),
        1,
        "booked before the crash"
    );
    let status: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT status FROM \"{schema}\".staged_exports WHERE id = $1::uuid"
    )))
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "APPROVED", "the transition did not commit");

    let other = service(None).await;
    let r = call(
        &other,
        Method::POST,
        format!("/api/v1/staging/{id}/post"),
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "POSTED");
    let books = testing::send(&http, Method::GET, &dest.url("/postings"), None, &[])
        .await
        .unwrap()
        .json();
    let bookings = books["bookings"].as_array().unwrap();
    assert_eq!(bookings.len(), 1, "{books}");
    assert_eq!(r.json()["booking_id"], bookings[0]["booking_id"]);
    drop(other);
    for s in [&schema, &audit, &store] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{audit}_owner\", \"{audit}_writer\", \"{audit}_reader\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(files);
}

/// A nonsense setting is one line on stderr and exit status 2, before
/// anything is bound or connected (the database here is closed).
#[test]
fn nonsense_settings_exit_2_with_one_line() {
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/test",
        testing::free_port()
    );
    for (name, value) in [
        ("STAGING_QUALITY_THRESHOLD", "120"),
        ("STAGING_ENABLE_ROLLBACK", "perhaps"),
        ("IDEMPOTENCY_MAX_EXECUTIONS", "0"),
        ("STAGING_COMPLIANCE_FLAGS", "sox"),
        ("BIND_ADDR", "nowhere"),
    ] {
        let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-staging"));
        cmd.env("DATABASE_URL", &closed).env(name, value);
        let out = testing::run_to_exit(cmd, Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(name), "{err}");
    }
    let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-staging"));
    cmd.env_remove("DATABASE_URL");
    let out = testing::run_to_exit(cmd, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    let mut cmd = testing::command(env!("CARGO_BIN_EXE_staging-destination"));
    cmd.env("DESTINATION_LATENCY_MS", "soon");
    let out = testing::run_to_exit(cmd, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DESTINATION_LATENCY_MS"));
}
