//! Crashes at the three dangerous moments, each followed by a restart: one
//! workflow execution (Temporal's visibility API), no duplicate event, and
//! the order reaches `SHIPPED` after one shipment signal sent twice.

mod common;

use std::time::Duration;

use common::{World, order, post_then_find, wait_for_end, wait_for_status, wait_for_step, world};
use http::StatusCode;
use serde_json::json;

const SHIPPED: [&str; 5] = [
    "ORDER_CREATED",
    "ORDER_VALIDATED",
    "ORDER_RESERVED",
    "ORDER_FULFILLING",
    "ORDER_SHIPPED",
];

/// After the restart: ship (the same signal twice), then check the events
/// and the executions.
async fn finish_after_restart(w: &World, id: &str) {
    let p = w.start(&[]).await;
    wait_for_step(&p.http, id, "awaiting-shipment").await;
    for _ in 0..2 {
        let r = p
            .http
            .post(
                &format!("/orders/{id}/shipment"),
                json!({"trackingNumber": "PARCEL-1"}),
                &[],
            )
            .await;
        assert!(
            r.status == StatusCode::ACCEPTED || r.status == StatusCode::OK,
            "{r:?}"
        );
    }
    wait_for_status(w, id, "SHIPPED").await;
    wait_for_end(&p.http, id, "shipped", "COMPLETED").await;
    assert_eq!(w.event_types(id).await, SHIPPED);
    assert_eq!(w.executions(&format!("order-intake-{id}")).await, 1);
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_an_activity_commit_replays_the_activity_on_retry() {
    let Some(w) = world().await else { return };
    let mut p = w
        .start(&[("OMS_FAULT", "crash-after-activity-commit")])
        .await;
    let id = post_then_find(
        &w,
        &p.http,
        "crash-activity",
        order(Some("crash-activity"), "US"),
    )
    .await;
    let status = p.wait_for_exit(Duration::from_secs(60));
    assert!(!status.success(), "aborted: {status}");
    assert!(p.log().contains("crash-after-activity-commit: aborting"));
    // ValidateOrder committed, Temporal never heard of it.
    assert_eq!(w.status(&id).await, "VALIDATED");
    assert_eq!(w.attempts(&id, "ValidateOrder").await, 1);
    drop(p);
    finish_after_restart(&w, &id).await;
    // Temporal retried ValidateOrder (attempt 2) after the timeout; the
    // retry found the completed record and emitted nothing.
    assert_eq!(w.attempts(&id, "ValidateOrder").await, 2);
    let max: i32 = sqlx::query_scalar(
        "SELECT max(attempt) FROM activity_attempts WHERE order_id = $1::uuid AND activity_type = 'ValidateOrder'",
    )
    .bind(&id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(max, 2);
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_workflow_start_starts_it_once_after_restart() {
    let Some(w) = world().await else { return };
    let mut p = w
        .start(&[("OMS_FAULT", "crash-before-workflow-start")])
        .await;
    let id = post_then_find(&w, &p.http, "crash-start", order(Some("crash-start"), "US")).await;
    assert!(!p.wait_for_exit(Duration::from_secs(30)).success());
    assert!(p.log().contains("crash-before-workflow-start: aborting"));
    drop(p);
    // The order committed; no workflow exists.
    assert_eq!(w.event_types(&id).await, vec!["ORDER_CREATED"]);
    assert_eq!(w.executions(&format!("order-intake-{id}")).await, 0);
    finish_after_restart(&w, &id).await;
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_start_and_the_mark_starts_it_once() {
    let Some(w) = world().await else { return };
    // API and relay only: the workflow is started, not run, then the
    // process dies before marking the outbox row.
    let mut p = w
        .start(&[
            ("OMS_FAULT", "crash-after-workflow-start"),
            ("OMS_RUN", "api,relay"),
        ])
        .await;
    let id = post_then_find(&w, &p.http, "crash-mark", order(Some("crash-mark"), "US")).await;
    assert!(!p.wait_for_exit(Duration::from_secs(30)).success());
    assert!(p.log().contains("crash-after-workflow-start: aborting"));
    drop(p);
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM workflow_starts WHERE order_id = $1::uuid AND started_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(unmarked, 1);
    assert_eq!(
        w.executions_once_visible(&format!("order-intake-{id}"))
            .await,
        1
    );
    finish_after_restart(&w, &id).await;
    let marked: (i64, i32) = sqlx::query_as(
        "SELECT count(started_at), max(attempts) FROM workflow_starts WHERE order_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(marked, (1, 1), "marked by the restart's AlreadyStarted");
    w.drop_schemas().await;
}
