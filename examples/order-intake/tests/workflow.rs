//! The workflow end to end on a real Temporal server: intake to shipment,
//! the query while running and after the end, validation failing once and
//! non-retryably, cancellation and illegal transitions; and activity
//! attempts driven directly (retry after the order moved on, failure
//! recorded on a shipped order).

mod common;

use std::sync::Arc;

use common::{order, wait_for_end, wait_for_status, wait_for_step, world};
use example_order_intake::activities::{Call, Faults, OrderActivities, StepFailure};
use example_order_intake::domain::Status;
use example_order_intake::lifecycle::Detail;
use http::StatusCode;
use idempotency_postgres::PostgresStore;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_runs_from_intake_to_shipment_once() {
    let Some(w) = world().await else { return };
    let p = w.start(&[]).await;
    let http = &p.http;
    let r = http.post("/orders", order(Some("happy"), "GB"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let wf = format!("order-intake-{id}");
    // The query answers while the workflow runs (waiting for the parcel).
    let view = wait_for_step(http, &id, "awaiting-shipment").await;
    assert_eq!(view["workflowId"], wf.as_str());
    assert_eq!(view["status"], "RUNNING");
    assert!(!view["runId"].as_str().unwrap().is_empty());
    assert_eq!(w.status(&id).await, "FULFILLING");
    // A cancel is too late now: 409, no event.
    let r = http
        .post(
            &format!("/orders/{id}/cancel"),
            json!({"reason": "late"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.problem_slug(), "illegal-transition");
    assert_eq!(r.json()["from"], "FULFILLING");
    assert_eq!(r.json()["to"], "CANCELLED");
    // The parcel leaves; the same tracking number twice is one shipment.
    for _ in 0..2 {
        let r = http
            .post(
                &format!("/orders/{id}/shipment"),
                json!({"trackingNumber": "1Z-999"}),
                &[],
            )
            .await;
        assert!(
            r.status == StatusCode::ACCEPTED || r.status == StatusCode::OK,
            "{r:?}"
        );
    }
    wait_for_status(&w, &id, "SHIPPED").await;
    // The query answers after the workflow finished too.
    wait_for_end(http, &id, "shipped", "COMPLETED").await;
    let again = http
        .post(
            &format!("/orders/{id}/shipment"),
            json!({"trackingNumber": "1Z-999"}),
            &[],
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["trackingNumber"], "1Z-999");
    let other = http
        .post(
            &format!("/orders/{id}/shipment"),
            json!({"trackingNumber": "OTHER-1"}),
            &[],
        )
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.problem_slug(), "already-shipped");
    assert_eq!(
        w.event_types(&id).await,
        vec![
            "ORDER_CREATED",
            "ORDER_VALIDATED",
            "ORDER_RESERVED",
            "ORDER_FULFILLING",
            "ORDER_SHIPPED"
        ]
    );
    let events = http.get(&format!("/orders/{id}/events")).await.json();
    assert_eq!(events[4]["payload"]["trackingNumber"], "1Z-999");
    assert_eq!(events[4]["payload"]["by"]["workflowId"], wf.as_str());
    let lines: Vec<String> =
        sqlx::query_scalar("SELECT status::text FROM order_lines WHERE order_id = $1::uuid")
            .bind(&id)
            .fetch_all(&w.pool)
            .await
            .unwrap();
    assert_eq!(lines, vec!["SHIPPED", "SHIPPED"]);
    assert_eq!(w.executions(&wf).await, 1);
    drop(p);
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfulfillable_order_fails_after_one_validation_attempt() {
    let Some(w) = world().await else { return };
    let p = w.start(&[]).await;
    let r = p.http.post("/orders", order(Some("far"), "JP"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for_end(&p.http, &id, "failed", "COMPLETED").await;
    let order = p.http.get(&format!("/orders/{id}")).await.json();
    assert_eq!(order["status"], "FAILED");
    assert!(
        order["failureReason"]
            .as_str()
            .unwrap()
            .contains("shipTo.country JP is not one of US,CA,GB,DE,FR"),
        "{order}"
    );
    assert_eq!(w.attempts(&id, "ValidateOrder").await, 1);
    assert_eq!(w.attempts(&id, "RecordOrderFailure").await, 1);
    assert_eq!(
        w.event_types(&id).await,
        vec!["ORDER_CREATED", "ORDER_FAILED"]
    );
    // A failed order ships nowhere.
    let r = p
        .http
        .post(
            &format!("/orders/{id}/shipment"),
            json!({"trackingNumber": "X"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.problem_slug(), "illegal-transition");
    drop(p);
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_stays_cancelled_and_its_workflow_ends() {
    let Some(w) = world().await else { return };
    // No worker yet: the order waits in CREATED.
    let api = w.start(&[("OMS_RUN", "api,relay")]).await;
    let r = api
        .http
        .post("/orders", order(Some("cancel-me"), "US"), &[])
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let cancel = |reason: &'static str| {
        let (http, id) = (api.http.clone(), id.clone());
        async move {
            http.post(
                &format!("/orders/{id}/cancel"),
                json!({"reason": reason}),
                &[],
            )
            .await
        }
    };
    let first = cancel("customer changed their mind").await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.json()["status"], "CANCELLED");
    let second = cancel("again").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.json()["cancelReason"], "customer changed their mind");
    assert_eq!(
        w.event_types(&id).await,
        vec!["ORDER_CREATED", "ORDER_CANCELLED"]
    );
    let r = api
        .http
        .post(&format!("/orders/{id}/cancel"), json!({}), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .http
        .post(
            &format!("/orders/{}/cancel", uuid::Uuid::now_v7()),
            json!({"reason": "x"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // No worker answers the workflow's query yet: a prompt 503.
    common::eventually(
        std::time::Duration::from_secs(30),
        "the workflow started",
        || async {
            let n = w.executions(&format!("order-intake-{id}")).await;
            (n == 1).then_some(())
        },
    )
    .await;
    let r = api.http.get(&format!("/orders/{id}/workflow")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.problem_slug(), "unavailable");
    // Now a worker: the workflow meets a closed order and ends.
    let worker = w.start(&[("OMS_RUN", "worker")]).await;
    wait_for_end(&api.http, &id, "closed", "COMPLETED").await;
    assert_eq!(w.status(&id).await, "CANCELLED");
    assert_eq!(
        w.event_types(&id).await,
        vec!["ORDER_CREATED", "ORDER_CANCELLED"]
    );
    drop((api, worker));
    w.drop_schemas().await;
}

/// Activity attempts driven directly, as Temporal's retries would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_attempts_are_once_per_workflow_and_activity_id() {
    let Some(w) = world().await else { return };
    let p = w.start(&[("OMS_RUN", "api")]).await;
    let r = p
        .http
        .post("/orders", order(Some("direct"), "US"), &[])
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let order_id = uuid::Uuid::parse_str(&id).unwrap();
    let store = PostgresStore::builder()
        .schema(w.idempotency_schema.clone())
        .build(w.pool.clone())
        .unwrap();
    store.migrate().await.unwrap();
    let acts = OrderActivities::new(
        w.pool.clone(),
        store,
        vec!["US".into()],
        Arc::new(Faults::default()),
    );
    let wf = format!("order-intake-{id}");
    let call = |activity: &str, activity_id: &str, attempt: u32| Call {
        workflow_id: wf.clone(),
        activity_id: activity_id.to_owned(),
        activity_type: activity.to_owned(),
        attempt,
    };
    let validate = call("ValidateOrder", "1", 1);
    let first = acts
        .step(&validate, order_id, Status::Validated, Detail::None)
        .await
        .unwrap();
    assert!(first.changed);
    // The order moves on; a late retry of the same activity replays its
    // result and emits nothing.
    for (n, (kind, to)) in [
        ("MarkOrderReserved", Status::Reserved),
        ("MarkOrderFulfilling", Status::Fulfilling),
    ]
    .into_iter()
    .enumerate()
    {
        acts.step(
            &call(kind, &(n + 2).to_string(), 1),
            order_id,
            to,
            Detail::None,
        )
        .await
        .unwrap();
    }
    let retry = acts
        .step(
            &call("ValidateOrder", "1", 2),
            order_id,
            Status::Validated,
            Detail::None,
        )
        .await
        .unwrap();
    assert_eq!(retry, first);
    let ship = call("MarkOrderShipped", "4", 1);
    let shipped = acts
        .step(
            &ship,
            order_id,
            Status::Shipped,
            Detail::TrackingNumber("T-1".into()),
        )
        .await
        .unwrap();
    assert!(shipped.changed);
    // Shipped again by another activity with the same parcel: no change;
    // with another parcel: the final state holds.
    let same = acts
        .step(
            &call("MarkOrderShipped", "5", 1),
            order_id,
            Status::Shipped,
            Detail::TrackingNumber("T-1".into()),
        )
        .await
        .unwrap();
    assert!(!same.changed);
    let other = acts
        .step(
            &call("MarkOrderShipped", "6", 1),
            order_id,
            Status::Shipped,
            Detail::TrackingNumber("T-2".into()),
        )
        .await
        .unwrap_err();
    assert!(matches!(other, StepFailure::Closed(_)), "{other:?}");
    // RecordOrderFailure on a SHIPPED order changes nothing, every time.
    for attempt in 1..=2 {
        let failed = acts
            .step(
                &call("RecordOrderFailure", "7", attempt),
                order_id,
                Status::Failed,
                Detail::FailureReason("late failure".into()),
            )
            .await
            .unwrap();
        assert_eq!(failed.status, Status::Shipped);
        assert!(!failed.changed);
    }
    assert_eq!(w.status(&id).await, "SHIPPED");
    assert_eq!(
        w.event_types(&id).await,
        vec![
            "ORDER_CREATED",
            "ORDER_VALIDATED",
            "ORDER_RESERVED",
            "ORDER_FULFILLING",
            "ORDER_SHIPPED"
        ]
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT failure_reason FROM orders WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(reason, None);
    // An illegal edge through an activity: refused, nothing written.
    let r2 = p
        .http
        .post("/orders", order(Some("direct-2"), "US"), &[])
        .await;
    let id2 = uuid::Uuid::parse_str(r2.json()["id"].as_str().unwrap()).unwrap();
    let skip = acts
        .step(
            &call("MarkOrderFulfilling", "9", 1),
            id2,
            Status::Fulfilling,
            Detail::None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&skip, StepFailure::Closed(m) if m.contains("from CREATED to FULFILLING")),
        "{skip:?}"
    );
    assert_eq!(w.event_types(&id2.to_string()).await, vec!["ORDER_CREATED"]);
    // Unfulfillable (activities that ship to Canada only): non-retryable,
    // and a retry of the same activity says the same, writing nothing.
    let canada = OrderActivities::new(
        w.pool.clone(),
        PostgresStore::builder()
            .schema(w.idempotency_schema.clone())
            .build(w.pool.clone())
            .unwrap(),
        vec!["CA".into()],
        Arc::new(Faults::default()),
    );
    let wf2 = format!("order-intake-{id2}");
    let mut answers = Vec::new();
    for attempt in 1..=2 {
        let c = Call {
            workflow_id: wf2.clone(),
            activity_id: "1".into(),
            activity_type: "ValidateOrder".into(),
            attempt,
        };
        answers.push(
            canada
                .step(&c, id2, Status::Validated, Detail::None)
                .await
                .unwrap_err(),
        );
    }
    assert!(
        matches!(&answers[0], StepFailure::Unfulfillable(m) if m.contains("US is not one of CA")),
        "{answers:?}"
    );
    assert_eq!(answers[0], answers[1]);
    assert_eq!(w.event_types(&id2.to_string()).await, vec!["ORDER_CREATED"]);
    drop(p);
    w.drop_schemas().await;
}
