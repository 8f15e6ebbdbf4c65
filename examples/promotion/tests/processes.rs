//! The promotion service as running processes on one PostgreSQL database:
//! 50 concurrent promotions split over two processes, a process killed
//! before its commit (story AC3, PENDING), the alert, log and metrics of a
//! corrupted record, and start-up failures.

mod common;

use common::PromotionReply;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    ADMIN_TOKEN, client, counter, finalized_estimate_on, promotions, send, spawn, summary,
    work_orders,
};
use example_promotion::{Config, Service};
use http::{Method, StatusCode};
use idempotency_core::RecordState;

/// Audit events of a snapshot, waiting (bounded) until `n` are written: the
/// fire-and-forget ones are written by each process's buffer shortly after.
async fn audit_when(pool: &sqlx::PgPool, e: &str, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let events = common::audit_events(pool, e, 1).await;
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::audit_events(pool, e, 1).await
}

/// A `Service` on the test database, only to read records and compute keys.
async fn reader() -> Option<(Service, sqlx::PgPool)> {
    let pool = common::pool().await?;
    let service = Service::start(pool.clone(), Config::default(), None)
        .await
        .unwrap();
    Some((service, pool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_promotions_over_two_processes_create_one_work_order() {
    let Some((_, pool)) = reader().await else {
        return;
    };
    let a = spawn(&[]).await;
    let b = spawn(&[]).await;
    let http = client();
    let e = finalized_estimate_on(&http, &a).await;
    let path = format!("/estimates/{e}/snapshots/1/promote");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url(&path)
            } else {
                b.url(&path)
            };
            let http = http.clone();
            tokio::spawn(async move { send(&http, Method::POST, &url, None).await.unwrap() })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    let created: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "{statuses:?}");
    let wo = created[0].workorder_id();
    for r in &replies {
        if r.status != StatusCode::CREATED {
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
            assert!(r.is_replay());
            assert_eq!(r.workorder_id(), wo);
        }
    }
    assert_eq!(work_orders(&pool, &e, 1).await, [wo.as_str()]);
    assert_eq!(promotions(&pool, &e, 1).await.len(), 1);

    let events = summary(&audit_when(&pool, &e, 50).await);
    assert_eq!(
        events.len(),
        50,
        "one audit event per attempt, from both processes"
    );
    assert_eq!(events.iter().filter(|ev| ev.1 == "CREATED").count(), 1);
    assert_eq!(events.iter().filter(|ev| ev.1 == "RETRIEVED").count(), 49);

    // Each process counts what it answered; together: 1 created, 49 retrieved.
    let mut created_total = 0;
    let mut retrieved_total = 0;
    for s in [&a, &b] {
        let m = send(&http, Method::GET, &s.url("/metrics"), None)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&m.body).into_owned();
        created_total += counter(&text, "promotions_created_count");
        retrieved_total += counter(&text, "promotions_retrieved_count");
        assert!(
            text.contains("idempotency_requests_total"),
            "the framework's own metrics"
        );
    }
    assert_eq!((created_total, retrieved_total), (1, 49));
}

/// Story AC3 (PENDING) and the crash test: a process dies after writing the
/// work order, the record's completion and the audit event, before its
/// commit. Nothing of it survives but the PENDING record and the promotion
/// row without a work order; after the lease another process takes the
/// record over and creates exactly one work order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_before_commit_is_recovered_after_the_lease() {
    let Some((service, pool)) = reader().await else {
        return;
    };
    let http = client();
    let mut crashing = spawn(&[
        ("PROMOTION_FAULT", "crash-before-commit"),
        ("PROMOTION_LEASE_MS", "1500"),
    ])
    .await;
    let e = finalized_estimate_on(&http, &crashing).await;
    let path = format!("/estimates/{e}/snapshots/1/promote");
    let cut = send(&http, Method::POST, &crashing.url(&path), None).await;
    assert!(
        cut.is_err(),
        "the connection dies with the process: {cut:?}"
    );
    let status = crashing.child.wait().unwrap();
    assert!(!status.success(), "the process aborted");
    assert!(crashing.log_text().contains("fault injection"));

    // What the crash left: a PENDING record, a promotion row, no work order.
    assert!(work_orders(&pool, &e, 1).await.is_empty());
    let rows = promotions(&pool, &e, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, None);
    let record = common::record(&service, &e, 1).await.unwrap();
    assert!(
        matches!(record.state, RecordState::Pending(_)),
        "{:?}",
        record.state
    );
    assert!(
        common::audit_events(&pool, &e, 1).await.is_empty(),
        "its audit event rolled back"
    );

    // Another process: the duplicate waits out the dead attempt's lease, then takes over.
    let b = spawn(&[]).await;
    let r = send(&http, Method::POST, &b.url(&path), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let wo = r.workorder_id();
    assert_eq!(
        r.json()["promotion_id"],
        rows[0].0.to_string().as_str(),
        "the existing record"
    );
    assert_eq!(work_orders(&pool, &e, 1).await, [wo.as_str()]);
    assert_eq!(
        promotions(&pool, &e, 1).await,
        [(rows[0].0, Some(wo.clone()))]
    );
    let record = common::record(&service, &e, 1).await.unwrap();
    assert!(matches!(record.state, RecordState::Completed(_)));
    assert_eq!(record.attempts, 2, "taken over");
    assert!(record.fence >= 2, "the dead attempt fenced off");
    let again = send(&http, Method::POST, &b.url(&path), None)
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.workorder_id(), wo);

    let events = summary(&audit_when(&pool, &e, 2).await);
    assert_eq!(
        events,
        [
            (
                "promotion.attempted".into(),
                "CREATED".into(),
                false,
                Some(wo.clone())
            ),
            (
                "promotion.attempted".into(),
                "RETRIEVED".into(),
                false,
                Some(wo)
            ),
        ]
    );
}

/// A corrupted record raises an error log line marked as an alert and the
/// corrupted and failed counters, in the running binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_record_alerts_logs_and_counts() {
    let Some((_, pool)) = reader().await else {
        return;
    };
    let http = client();
    let s = spawn(&[]).await;
    let e = finalized_estimate_on(&http, &s).await;
    let path = format!("/estimates/{e}/snapshots/1/promote");
    let wo = send(&http, Method::POST, &s.url(&path), None)
        .await
        .unwrap()
        .workorder_id();
    sqlx::query("DELETE FROM promotion.work_orders WHERE id = $1")
        .bind(&wo)
        .execute(&pool)
        .await
        .unwrap();
    let r = send(&http, Method::POST, &s.url(&path), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let m = send(&http, Method::GET, &s.url("/metrics"), None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert_eq!(counter(&text, "promotions_corrupted_count"), 1, "{text}");
    assert_eq!(counter(&text, "promotions_failed_count"), 1);
    assert_eq!(counter(&text, "promotions_created_count"), 1);
    let log = s.log_text();
    let alert = log
        .lines()
        .find(|l| l.contains("promotion record CORRUPTED"))
        .unwrap_or_else(|| panic!("no alert line in: {log}"));
    assert!(alert.contains("ERROR"), "{alert}");
    assert!(alert.contains("alert=true"), "{alert}");
    assert!(alert.contains(&e) && alert.contains(&wo), "{alert}");

    // The operator resolves it through the running service.
    let resolve = http::Request::post(s.url(&format!("/admin/promotions/{e}/1/resolve")))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = http.request(resolve).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let r = send(&http, Method::POST, &s.url(&path), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
}

/// 400 audited promotion attempts (8 snapshots × 50, at most 32 at a
/// time), then SIGTERM right after the last answer: the process exits 0
/// after writing every fire-and-forget event: exactly 400 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_writes_every_audit_event_before_exiting() {
    let Some((_, pool)) = reader().await else {
        return;
    };
    let mut s = spawn(&[]).await;
    let http = client();
    let mut estimates = Vec::new();
    for _ in 0..8 {
        estimates.push(finalized_estimate_on(&http, &s).await);
    }
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let url = s.url(&format!(
                "/estimates/{}/snapshots/1/promote",
                estimates[i % 8]
            ));
            let (http, limit) = (http.clone(), limit.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                send(&http, Method::POST, &url, None).await.unwrap().status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let replayed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!((created, replayed), (8, 392), "{statuses:?}");

    s.terminate();
    let status = s.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
    let streams: Vec<String> = estimates
        .iter()
        .map(|e| format!("promotion/{e}/1"))
        .collect();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE stream = ANY($1)")
        .bind(&streams)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 400, "one audit row per attempt: {}", s.log_text());
}

#[test]
fn startup_failures_are_one_clear_line() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-promotion"));
        cmd.env_remove("DATABASE_URL")
            .env("BIND_ADDR", format!("127.0.0.1:{}", common::free_port()))
            .env("RUST_LOG", "off")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run example-promotion")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATABASE_URL is not set") && err.contains("PostgreSQL"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let closed = format!("postgres://postgres@127.0.0.1:{}/test", common::free_port());
    let out = run(&[("DATABASE_URL", &closed)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach PostgreSQL at DATABASE_URL"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = run(&[
        ("DATABASE_URL", "postgres://x"),
        ("PROMOTION_LEASE_MS", "soon"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROMOTION_LEASE_MS"));
}

/// Runs the binary with `env` until it exits; a process still running
/// after 10 s (it started serving) is killed, and its output returned.
fn run_to_exit(env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = example_support::testing::command(env!("CARGO_BIN_EXE_example-promotion"));
    cmd.env_remove("PROMOTION_FAULT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    example_support::testing::run_to_exit(cmd, Duration::from_secs(10))
}

/// A nonsense setting is refused at start with one stderr line naming the
/// variable and exit status 2, before binding (the port is taken) or
/// connecting (the database is closed): either would fail otherwise.
#[test]
fn nonsense_settings_exit_2_with_one_line_before_binding_or_connecting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let closed = format!("postgres://postgres@127.0.0.1:{}/test", common::free_port());
    for (name, value) in [
        ("PROMOTION_LEASE_MS", "0"),
        ("PROMOTION_WAIT_MS", "18446744073709551615"),
        ("PROMOTION_LEASE_MS", "abc"),
        ("PROMOTION_ADMIN_TOKEN", "short"),
        ("BIND_ADDR", "nope"),
        ("RUST_LOG", "a=b=c"),
    ] {
        let mut env = vec![
            ("BIND_ADDR", bind.clone()),
            ("DATABASE_URL", closed.clone()),
        ];
        env.retain(|(k, _)| *k != name);
        env.push((name, value.to_owned()));
        let out = run_to_exit(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}={value}: {err}");
        assert!(err.contains(name), "{name}={value}: {err}");
    }
    let out = run_to_exit(&[
        ("PROMOTION_LEASE_MS", "0".to_owned()),
        ("DATABASE_URL", closed),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("from 1000 to 3600000"),
        "the accepted range: {err}"
    );
    drop(taken);
}
