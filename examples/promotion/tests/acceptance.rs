//! The promotion story's acceptance criteria (AC1–AC4), its error flows and
//! its audit trail, on a real PostgreSQL database, with the service in
//! process. Each assertion reads the rows the service wrote as well as its
//! HTTP answers. The crash scenarios and the two-process race are in
//! `processes.rs`.

mod common;

use common::PromotionReply;

use common::{ADMIN_TOKEN, App, app, config, promotions, summary, work_orders};
use example_promotion::{Config, Fault};
use http::{StatusCode, header};
use idempotency_core::{Failure, IdempotencyStore, Observed, RecordState, Resolution};
use serde_json::json;

const P: &str = "https://idempotency.rs/problems/";

fn created(events: &[(String, String, bool, Option<String>)]) -> usize {
    events.iter().filter(|e| e.1 == "CREATED").count()
}

/// AC1: a first promotion creates one work order and a COMPLETED record
/// linking the snapshot to it, and answers its reference.
#[tokio::test]
async fn ac1_first_promotion_creates_the_work_order() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    let r = app.promote(&e, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert!(!r.is_replay());
    let body = r.json();
    let wo = r.workorder_id();
    assert!(wo.starts_with("WO-"));
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["estimate_id"], e.as_str());
    assert_eq!(body["snapshot_version"], 1);
    assert_eq!(
        r.headers[header::LOCATION],
        format!("/work-orders/{wo}").as_str()
    );

    // Rows: one work order, one promotion row linking it, a COMPLETED record.
    assert_eq!(work_orders(&app.pool, &e, 1).await, [wo.as_str()]);
    let rows = promotions(&app.pool, &e, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.as_deref(), Some(wo.as_str()));
    assert_eq!(body["promotion_id"], rows[0].0.to_string().as_str());
    let record = app.record(&e, 1).await.expect("record");
    let RecordState::Completed(done) = &record.state else {
        panic!("not completed: {:?}", record.state)
    };
    assert_eq!(
        done.resource.as_deref(),
        Some(format!("/work-orders/{wo}").as_str())
    );
    assert_eq!(record.attempts, 1);

    // The work order is readable, with the snapshot's lines and total.
    let w = app.get(&format!("/work-orders/{wo}")).await;
    assert_eq!(w.status, StatusCode::OK);
    let w = w.json();
    assert_eq!(w["estimate_id"], e.as_str());
    assert_eq!(w["total_cents"], 2 * 4500 + 12000);
    assert_eq!(w["lines"].as_array().unwrap().len(), 2);

    // The list shows the record's lifecycle.
    let list = app
        .get(&format!("/promotions?estimate_id={e}"))
        .await
        .json();
    let item = &list["promotions"][0];
    assert_eq!(item["status"], "COMPLETED");
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["workorder_id"], wo.as_str());
    assert!(item["created_at"].as_str().unwrap().ends_with('Z'));

    let events = summary(&app.audit(&e, 1).await);
    assert_eq!(
        events,
        [(
            "promotion.attempted".into(),
            "CREATED".into(),
            true,
            Some(wo)
        )]
    );
}

/// AC2: a second promotion of the same snapshot creates nothing and answers
/// the existing work order (200, replayed).
#[tokio::test]
async fn ac2_second_promotion_returns_the_existing_work_order() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    let first = app.promote(&e, 1).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for _ in 0..3 {
        let again = app.promote(&e, 1).await;
        assert_eq!(again.status, StatusCode::OK, "{again:?}");
        assert!(again.is_replay());
        assert_eq!(again.body, first.body, "the same promotion and work order");
        assert_eq!(
            again.headers[header::LOCATION],
            first.headers[header::LOCATION]
        );
    }
    assert_eq!(work_orders(&app.pool, &e, 1).await.len(), 1);
    assert_eq!(promotions(&app.pool, &e, 1).await.len(), 1);
    assert_eq!(app.record(&e, 1).await.unwrap().attempts, 1);

    let events = summary(&app.audit(&e, 1).await);
    let wo = Some(first.workorder_id());
    assert_eq!(events.len(), 4, "one event per attempt: {events:?}");
    assert_eq!(
        events[0],
        (
            "promotion.attempted".into(),
            "CREATED".into(),
            true,
            wo.clone()
        )
    );
    for ev in &events[1..] {
        assert_eq!(
            ev,
            &(
                "promotion.attempted".into(),
                "RETRIEVED".into(),
                false,
                wo.clone()
            )
        );
    }
}

/// One snapshot, four spellings (`/snapshots/1/`, `/01/`, `/+1/`, and the
/// estimate id percent-encoded, `/%45-…/`; plus a `?utm=1`): axum hands the
/// handler the same estimate and version for each. They used to be four
/// records, four handler runs and four audit chains each claiming the first
/// attempt (only the UNIQUE constraint stopped a second work order). Now: one
/// record, one run, one work order, one chain, and the others replay it.
#[tokio::test]
async fn every_spelling_of_a_snapshot_is_one_promotion() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    let encoded = format!("%45{}", e.strip_prefix('E').unwrap());
    let paths = [
        format!("/estimates/{e}/snapshots/1/promote"),
        format!("/estimates/{e}/snapshots/01/promote"),
        format!("/estimates/{e}/snapshots/+1/promote"),
        format!("/estimates/{encoded}/snapshots/1/promote"),
        format!("/estimates/{encoded}/snapshots/+01/promote?utm=1"),
    ];
    let ids: Vec<String> = (0..paths.len())
        .map(|i| format!("{e}-spelling-{i}"))
        .collect();
    let mut replies = Vec::new();
    for (path, id) in paths.iter().zip(&ids) {
        replies.push(
            app.call(http::Method::POST, path, None, &[("x-request-id", id)])
                .await,
        );
    }
    assert_eq!(replies[0].status, StatusCode::CREATED, "{:?}", replies[0]);
    for (path, r) in paths.iter().zip(&replies).skip(1) {
        assert_eq!(r.status, StatusCode::OK, "{path}: {r:?}");
        assert!(r.is_replay(), "{path}");
        assert_eq!(r.body, replies[0].body, "{path}");
    }
    let wo = replies[0].workorder_id();

    // The rows: one work order, one promotion row, one record of one attempt.
    let all_work_orders: Vec<String> =
        sqlx::query_scalar("SELECT id FROM promotion.work_orders WHERE estimate_id = $1")
            .bind(&e)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(all_work_orders, [wo.as_str()], "of any version");
    let promotion_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM promotion.promotions WHERE estimate_id = $1")
            .bind(&e)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(promotion_rows, 1);
    assert_eq!(app.record(&e, 1).await.unwrap().attempts, 1);

    // The trail: every request's event in the one chain of the snapshot,
    // one CREATED (the one run, the first attempt), the others RETRIEVED.
    app.service.flush_audit().await.unwrap();
    let streams: Vec<String> = sqlx::query_scalar(
        // Only the promotion's chains: the table is shared with other tests.
        "WITH promotion AS MATERIALIZED \
           (SELECT stream, content FROM audit.events WHERE stream LIKE 'promotion/%') \
         SELECT DISTINCT stream FROM promotion WHERE content::jsonb->>'correlation_id' = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(streams, [format!("promotion/{e}/1")]);
    let events = summary(&app.audit(&e, 1).await);
    assert_eq!(
        events.len(),
        paths.len(),
        "one event per request: {events:?}"
    );
    assert_eq!(
        events[0],
        (
            "promotion.attempted".into(),
            "CREATED".into(),
            true,
            Some(wo.clone())
        )
    );
    for ev in &events[1..] {
        assert_eq!(
            ev,
            &(
                "promotion.attempted".into(),
                "RETRIEVED".into(),
                false,
                Some(wo.clone())
            )
        );
    }
    let chain_heads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit.events WHERE stream LIKE $1 OR stream LIKE $2",
    )
    .bind(format!("promotion/{e}/%"))
    .bind(format!("promotion/{encoded}/%"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        chain_heads,
        i64::try_from(paths.len()).unwrap(),
        "no other chain"
    );

    // A spelling that decodes to no text names no estimate: refused before
    // the idempotency layer, so nothing runs.
    let bad = app
        .post(&format!("/estimates/{e}%FF/snapshots/1/promote"), None)
        .await;
    assert_eq!(bad.status, StatusCode::NOT_FOUND, "{bad:?}");
    assert_eq!(
        bad.problem_type(),
        format!("{P}promotion/estimate-not-found")
    );
    assert_eq!(
        work_orders(&app.pool, &e, 1).await,
        [wo.as_str()],
        "still the one work order"
    );
}

/// AC3 (FAILED variant; the PENDING variant, a crashed process, is in
/// `processes.rs`): an attempt whose transaction failed leaves the record
/// FAILED with no work order; the next promotion creates the work order and
/// completes the same record.
#[tokio::test]
async fn ac3_failed_attempt_is_completed_by_the_next() {
    let Some(app) = app(Config {
        fault: Some(Fault::FailBeforeCommit),
        ..config()
    })
    .await
    else {
        return;
    };
    let e = app.finalized_estimate().await;
    let failed = app.promote(&e, 1).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{failed:?}");
    assert!(failed.problem_type().ends_with("/database-unavailable"));
    assert!(
        work_orders(&app.pool, &e, 1).await.is_empty(),
        "nothing committed"
    );
    let rows = promotions(&app.pool, &e, 1).await;
    assert_eq!(rows.len(), 1, "the promotion record exists");
    assert_eq!(rows[0].1, None, "with no work order");
    let record = app.record(&e, 1).await.unwrap();
    assert!(
        matches!(&record.state, RecordState::Failed(f) if f.retryable),
        "{:?}",
        record.state
    );

    let done = app.promote(&e, 1).await;
    assert_eq!(done.status, StatusCode::CREATED, "{done:?}");
    let wo = done.workorder_id();
    assert_eq!(work_orders(&app.pool, &e, 1).await, [wo.as_str()]);
    let rows_after = promotions(&app.pool, &e, 1).await;
    assert_eq!(
        rows_after,
        [(rows[0].0, Some(wo.clone()))],
        "the existing record, now linked"
    );
    assert_eq!(done.json()["promotion_id"], rows[0].0.to_string().as_str());
    let record = app.record(&e, 1).await.unwrap();
    assert!(matches!(record.state, RecordState::Completed(_)));
    assert_eq!(record.attempts, 2);

    let events = summary(&app.audit(&e, 1).await);
    assert_eq!(
        events,
        [
            ("promotion.attempted".into(), "FAILED".into(), true, None),
            (
                "promotion.attempted".into(),
                "CREATED".into(),
                false,
                Some(wo)
            ),
        ]
    );
}

/// AC4: a COMPLETED record whose work order no longer exists answers 500,
/// becomes CORRUPTED, and blocks every promotion until an operator resolves
/// it; the next promotion then creates the work order afresh.
#[tokio::test]
async fn ac4_missing_work_order_corrupts_the_record_until_resolved() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    let first = app.promote(&e, 1).await;
    let wo = first.workorder_id();
    sqlx::query("DELETE FROM promotion.work_orders WHERE id = $1")
        .bind(&wo)
        .execute(&app.pool)
        .await
        .unwrap();

    for _ in 0..2 {
        let r = app.promote(&e, 1).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
        assert_eq!(r.problem_type(), format!("{P}record-corrupted"));
    }
    let record = app.record(&e, 1).await.unwrap();
    let RecordState::Corrupted(c) = &record.state else {
        panic!("not corrupted: {:?}", record.state)
    };
    assert!(c.detail.contains(&wo), "{}", c.detail);
    assert!(
        work_orders(&app.pool, &e, 1).await.is_empty(),
        "nothing was re-created"
    );
    let list = app
        .get(&format!("/promotions?estimate_id={e}"))
        .await
        .json();
    assert_eq!(list["promotions"][0]["status"], "CORRUPTED");
    assert_eq!(list["promotions"][0]["workorder_id"], wo.as_str());

    // Resolution needs the admin token.
    let r = app.resolve(&e, 1, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(
        app.resolve(&e, 1, Some("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(matches!(
        app.record(&e, 1).await.unwrap().state,
        RecordState::Corrupted(_)
    ));

    let r = app.resolve(&e, 1, Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["status"], "FAILED");
    assert_eq!(
        promotions(&app.pool, &e, 1).await[0].1,
        None,
        "the dangling link is gone"
    );
    // Resolving again: the record is no longer corrupted.
    let again = app.resolve(&e, 1, Some(ADMIN_TOKEN)).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.problem_type().ends_with("/promotion-not-corrupted"));

    let redo = app.promote(&e, 1).await;
    assert_eq!(redo.status, StatusCode::CREATED, "{redo:?}");
    let wo2 = redo.workorder_id();
    assert_ne!(wo2, wo);
    assert_eq!(work_orders(&app.pool, &e, 1).await, [wo2.as_str()]);
    assert_eq!(
        promotions(&app.pool, &e, 1).await[0].1.as_deref(),
        Some(wo2.as_str())
    );

    let events = app.audit(&e, 1).await;
    let s = summary(&events);
    let kinds: Vec<(&str, &str)> = s.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("promotion.attempted", "CREATED"),
            ("promotion.attempted", "FAILED"),
            ("promotion.attempted", "FAILED"),
            ("promotion.resolved", ""),
            ("promotion.attempted", "CREATED"),
        ]
    );
    assert_eq!(
        s[1].3.as_deref(),
        Some(wo.as_str()),
        "the corrupted link is audited"
    );
    assert_eq!(events[3]["actor"]["id"], "admin");
    assert_eq!(events[3]["before"]["status"], "CORRUPTED");
    assert_eq!(events[3]["before"]["workorderId"], wo.as_str());
    assert_eq!(events[3]["reason"], "work order deleted by mistake");

    // The snapshot's chain is intact.
    let report = idempotency_audit::postgres::PostgresSink::new(app.pool.clone())
        .verify(&format!("promotion/{e}/1"))
        .await
        .unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.events, 5);
}

#[tokio::test]
async fn admin_endpoints_refuse_what_they_cannot_resolve() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    let r = app.resolve(&e, 1, Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.problem_type().ends_with("/promotion-not-found"));
    app.promote(&e, 1).await;
    let r = app.resolve(&e, 1, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a healthy record is not resolved"
    );
    assert!(matches!(
        app.record(&e, 1).await.unwrap().state,
        RecordState::Completed(_)
    ));
    let bad = app
        .call(
            http::Method::POST,
            &format!("/admin/promotions/{e}/1/resolve"),
            Some(r#"{"reason": 5}"#),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);

    let Some(off) = common::app(Config::default()).await else {
        return;
    };
    let r = off.resolve(&e, 1, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "no token configured: admin is off"
    );
    assert!(r.problem_type().ends_with("/admin-disabled"));
}

/// Unknown estimate or version → 404; a draft → 422. Neither is kept: once
/// the snapshot exists and is finalized, the promotion runs.
#[tokio::test]
async fn invalid_promotions_are_refused_and_not_kept() {
    let Some(app) = app(config()).await else {
        return;
    };
    let r = app.promote("E-does-not-exist", 1).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.problem_type().ends_with("/promotion/estimate-not-found"));

    let e = app.estimate().await;
    for v in ["2", "0", "abc", "99999999999"] {
        let r = app
            .post(&format!("/estimates/{e}/snapshots/{v}/promote"), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "version {v}: {r:?}");
        assert!(r.problem_type().ends_with("/promotion/snapshot-not-found"));
    }
    let draft = app.promote(&e, 1).await;
    assert_eq!(draft.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        draft
            .problem_type()
            .ends_with("/promotion/snapshot-not-finalized")
    );
    assert!(
        app.record(&e, 1).await.is_none(),
        "a refusal releases the key"
    );
    assert!(promotions(&app.pool, &e, 1).await.is_empty());
    assert!(work_orders(&app.pool, &e, 1).await.is_empty());

    // Finalize v1, revise to v2 (a draft), finalize v2: both promotable.
    assert_eq!(
        app.post(&format!("/estimates/{e}/finalize"), None)
            .await
            .status,
        StatusCode::OK
    );
    let rev = app
        .post(
            &format!("/estimates/{e}/revise"),
            Some(&json!({"lines": [{"description": "tyres", "quantity": 4, "unit_price_cents": 9000}]}).to_string()),
        )
        .await;
    assert_eq!(rev.status, StatusCode::CREATED, "{rev:?}");
    assert_eq!(rev.json()["snapshot_version"], 2);
    assert_eq!(
        app.promote(&e, 2).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.post(&format!("/estimates/{e}/finalize"), None)
            .await
            .status,
        StatusCode::OK
    );
    let v1 = app.promote(&e, 1).await;
    let v2 = app.promote(&e, 2).await;
    assert_eq!(
        (v1.status, v2.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(
        v1.workorder_id(),
        v2.workorder_id(),
        "one work order per snapshot"
    );
    let w2 = app
        .get(&format!("/work-orders/{}", v2.workorder_id()))
        .await
        .json();
    assert_eq!(w2["total_cents"], 4 * 9000);

    let events = summary(&app.audit(&e, 1).await);
    assert_eq!(
        events.len(),
        2,
        "the refused attempt and the creation: {events:?}"
    );
    assert_eq!(events[0].1, "FAILED");
    assert_eq!(created(&events), 1);
}

#[tokio::test]
async fn estimate_input_is_validated() {
    let Some(app) = app(config()).await else {
        return;
    };
    let r = app.post("/estimates", Some("{not json")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem_type().ends_with("/promotion/invalid-json"));
    assert_eq!(
        app.post("/estimates", Some("[1]")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.post("/estimates", None).await.status,
        StatusCode::BAD_REQUEST
    );

    let r = app
        .post(
            "/estimates",
            Some(r#"{"customer_id": "", "lines": [{"description": "x", "quantity": 0, "unit_price_cents": -5}]}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.problem_type().ends_with("/promotion/validation-failed"));
    let pointers: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        pointers,
        [
            "/customer_id",
            "/lines/0/quantity",
            "/lines/0/unit_price_cents"
        ]
    );
    let r = app
        .post("/estimates", Some(r#"{"customer_id": "C", "lines": []}"#))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = app.post("/estimates/E-nope/finalize", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.post("/estimates/E-nope/revise", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/estimates/E-nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/work-orders/WO-nope").await.status,
        StatusCode::NOT_FOUND
    );
    let r = app.get("/promotions").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem_type().ends_with("/promotion/missing-parameter"));
    assert_eq!(
        app.get("/promotions?estimate_id=E-nope").await.status,
        StatusCode::NOT_FOUND
    );
    let r = app.get("/no-such-route").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.problem_type().ends_with("/promotion/not-found"));

    // Revising a draft supersedes it; only the current draft is finalized.
    let e = app.estimate().await;
    let rev = app.post(&format!("/estimates/{e}/revise"), None).await;
    assert_eq!(rev.status, StatusCode::CREATED);
    let est = app.get(&format!("/estimates/{e}")).await.json();
    assert_eq!(est["current_version"], 2);
    assert_eq!(est["snapshots"][0]["status"], "SUPERSEDED");
    assert_eq!(est["snapshots"][1]["status"], "DRAFT");
    assert_eq!(
        est["snapshots"][1]["lines"], est["snapshots"][0]["lines"],
        "the lines are carried over"
    );
    let r = app.promote(&e, 1).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a superseded draft is not promotable"
    );
    // Finalizing twice answers the same, and changes nothing.
    let a = app.post(&format!("/estimates/{e}/finalize"), None).await;
    let b = app.post(&format!("/estimates/{e}/finalize"), None).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a.body, b.body);
}

/// 50 concurrent promotions of one snapshot in one process: one work order,
/// one record, one 201, 49 replays of it, and 50 audit events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_promotions_create_one_work_order() {
    let Some(app) = app(config()).await else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let e = app.finalized_estimate().await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app, e) = (app.clone(), e.clone());
            tokio::spawn(async move { app.promote(&e, 1).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    check_race(&app, &e, &replies).await;
}

async fn check_race(app: &App, e: &str, replies: &[common::Reply]) {
    let firsts: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(
        firsts.len(),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let wo = firsts[0].workorder_id();
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(r.is_replay());
        assert_eq!(r.workorder_id(), wo);
    }
    assert_eq!(work_orders(&app.pool, e, 1).await, [wo.as_str()]);
    assert_eq!(promotions(&app.pool, e, 1).await.len(), 1);
    let events = summary(&app.audit(e, 1).await);
    assert_eq!(events.len(), replies.len(), "one audit event per attempt");
    assert_eq!(created(&events), 1);
    assert!(events.iter().all(|ev| ev.3.as_deref() == Some(wo.as_str())));
}

/// An attempt that lost its record while it ran (an operator failed the
/// stuck record, and a retry took it over) never commits: its transaction
/// rolls back at the record's completion, and the snapshot keeps the one
/// work order of the attempt that owns the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superseded_attempt_never_commits() {
    let Some(app) = app(Config {
        lease: std::time::Duration::from_millis(600),
        ..config()
    })
    .await
    else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let e = app.finalized_estimate().await;
    let hold = app.service.hold_next_promotion();
    let stale = {
        let (app, e) = (app.clone(), e.clone());
        tokio::spawn(async move { app.promote(&e, 1).await })
    };
    hold.reached().await;
    let key = app.service.promotion_key(&e, "1");
    app.service
        .store()
        .resolve(
            &key,
            Resolution::Fail(Failure::retryable("stuck: taken over")),
        )
        .await
        .unwrap();
    let owner = app.promote(&e, 1).await;
    assert_eq!(owner.status, StatusCode::CREATED, "{owner:?}");
    let wo = owner.workorder_id();
    hold.release();
    let stale = stale.await.unwrap();
    assert_eq!(stale.status, StatusCode::CONFLICT, "{stale:?}");
    assert!(
        stale
            .problem_type()
            .ends_with("/promotion/promotion-superseded")
    );

    assert_eq!(work_orders(&app.pool, &e, 1).await, [wo.as_str()]);
    assert_eq!(
        promotions(&app.pool, &e, 1).await[0].1.as_deref(),
        Some(wo.as_str())
    );
    let record = app.record(&e, 1).await.unwrap();
    assert!(matches!(record.state, RecordState::Completed(_)));
    assert_eq!(record.attempts, 2);
    assert!(
        record.fence >= 2,
        "the retry was fenced above the first attempt"
    );
    let again = app.promote(&e, 1).await;
    assert_eq!(
        (again.status, again.workorder_id()),
        (StatusCode::OK, wo.clone())
    );

    let events = summary(&app.audit(&e, 1).await);
    let outcomes: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "CREATED").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "FAILED").count(),
        1,
        "the stale attempt"
    );
    assert_eq!(events.len(), 3);
}

/// A record cleared by an operator while its work order still exists (its
/// stored outcome was unreadable) links the existing work order again on the
/// next promotion instead of creating a second one.
#[tokio::test]
async fn a_cleared_record_links_the_existing_work_order_again() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    let wo = app.promote(&e, 1).await.workorder_id();
    let key = app.service.promotion_key(&e, "1");
    let record = app.service.store().get(&key).await.unwrap().unwrap();
    app.service
        .store()
        .mark_corrupted(&key, Observed::of(&record), "stored outcome unreadable")
        .await
        .unwrap();
    assert_eq!(
        app.promote(&e, 1).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        app.resolve(&e, 1, Some(ADMIN_TOKEN)).await.status,
        StatusCode::OK
    );

    let r = app.promote(&e, 1).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the existing work order, not a new one: {r:?}"
    );
    assert!(!r.is_replay(), "executed, not replayed");
    assert_eq!(r.workorder_id(), wo);
    assert_eq!(work_orders(&app.pool, &e, 1).await, [wo.as_str()]);
    assert_eq!(
        promotions(&app.pool, &e, 1).await[0].1.as_deref(),
        Some(wo.as_str())
    );
    assert!(matches!(
        app.record(&e, 1).await.unwrap().state,
        RecordState::Completed(_)
    ));
    let again = app.promote(&e, 1).await;
    assert_eq!((again.status, again.is_replay()), (StatusCode::OK, true));
    assert_eq!(again.body, r.body);

    let events = summary(&app.audit(&e, 1).await);
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.0.as_str(), e.1.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("promotion.attempted", "CREATED"),
            ("promotion.attempted", "FAILED"),
            ("promotion.resolved", ""),
            ("promotion.attempted", "RETRIEVED"),
            ("promotion.attempted", "RETRIEVED"),
        ]
    );
}

/// The database goes away: every answer is a 503 with `Retry-After`, and
/// nothing is promoted.
#[tokio::test]
async fn a_database_outage_answers_503() {
    let Some(app) = app(config()).await else {
        return;
    };
    let e = app.finalized_estimate().await;
    app.pool.close().await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = app.promote(&e, 1).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.problem_type(), format!("{P}store-unavailable"));
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    let body = json!({"customer_id": "C", "lines": common::lines()}).to_string();
    let r = app.post("/estimates", Some(&body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.problem_type()
            .ends_with("/promotion/database-unavailable")
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        app.get("/work-orders/WO-1").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.get("/healthz").await.status,
        StatusCode::OK,
        "alive, not ready"
    );

    let Some(pool) = common::pool().await else {
        return;
    };
    assert!(work_orders(&pool, &e, 1).await.is_empty());
}

/// Every answer carries the request's `x-request-id` (generated when
/// absent), and the promotion's audit event has it as its correlation id.
#[tokio::test]
async fn request_ids_are_propagated_to_answers_and_audit() {
    let Some(app) = app(config()).await else {
        return;
    };
    let r = app
        .call(
            http::Method::GET,
            "/estimates/E-nope",
            None,
            &[("x-request-id", "req-123")],
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "req-123");
    let r = app.get("/healthz").await;
    let generated = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let e = app.finalized_estimate().await;
    let path = format!("/estimates/{e}/snapshots/1/promote");
    let first = app
        .call(
            http::Method::POST,
            &path,
            None,
            &[("x-request-id", "req-first")],
        )
        .await;
    assert_eq!(first.headers["x-request-id"], "req-first");
    let again = app
        .call(
            http::Method::POST,
            &path,
            None,
            &[("x-request-id", "req-again")],
        )
        .await;
    assert_eq!(
        again.headers["x-request-id"], "req-again",
        "a replay has its own request id"
    );
    let events = app.audit(&e, 1).await;
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["req-first", "req-again"]);
}

/// One request naming a 250-character estimate id among 60 concurrent
/// promotions of one snapshot (one of them with a 300-character
/// `x-request-id`): the bad one gets a clear 404 problem before the
/// idempotency layer — no record, no audit event, nothing dropped — and
/// every one of the 60 attempts has its audit event in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_over_long_estimate_id_among_sixty_promotions_costs_no_audit_event() {
    let Some(app) = app(config()).await else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let e = app.finalized_estimate().await;
    let bad = format!("E-{}", "9".repeat(248));
    assert_eq!(bad.len(), 250);
    let long_request_id = "r".repeat(300);
    let mut tasks: Vec<_> = (0..60)
        .map(|i| {
            let (app, e, rid) = (app.clone(), e.clone(), long_request_id.clone());
            tokio::spawn(async move {
                let path = format!("/estimates/{e}/snapshots/1/promote");
                let headers: &[(&str, &str)] = if i == 30 {
                    &[("x-request-id", &rid)]
                } else {
                    &[]
                };
                app.call(http::Method::POST, &path, None, headers).await
            })
        })
        .collect();
    let bad_task = {
        let (app, bad) = (app.clone(), bad.clone());
        tokio::spawn(async move { app.promote(&bad, 1).await })
    };
    tasks.rotate_left(20);
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let refused = bad_task.await.unwrap();
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{refused:?}");
    assert!(
        refused
            .problem_type()
            .ends_with("/promotion/estimate-not-found")
    );
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("E- and 1 to 19 digits") && !detail.contains(&bad),
        "a bounded answer: {detail}"
    );
    assert!(app.record(&bad, 1).await.is_none(), "nothing claimed");

    check_race(&app, &e, &replies).await; // 60 events of 60 attempts
    let events = app.audit(&e, 1).await;
    assert_eq!(events.len(), 60);
    assert_eq!(
        app.service.audit_dropped(),
        0,
        "no event refused or dropped"
    );
    assert!(
        events
            .iter()
            .all(|ev| ev["correlation_id"].as_str().unwrap().len() <= 128)
    );
    assert!(
        replies
            .iter()
            .all(|r| r.headers["x-request-id"].len() <= 128),
        "an over-long x-request-id is replaced"
    );
}

/// Path parameters of another shape than the service's ids are refused
/// with 404 problems that do not echo them, on every route.
#[tokio::test]
async fn ids_of_another_shape_are_404_without_echo() {
    let Some(app) = app(config()).await else {
        return;
    };
    let long = "x".repeat(300);
    for (uri, slug) in [
        (format!("/estimates/{long}"), "estimate-not-found"),
        (format!("/work-orders/{long}"), "work-order-not-found"),
        (
            format!("/promotions?estimate_id={long}"),
            "estimate-not-found",
        ),
    ] {
        let r = app.get(&uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(r.problem_type().ends_with(slug), "{uri}");
        assert!(!String::from_utf8_lossy(&r.body).contains(&long));
    }
    for uri in [
        format!("/estimates/{long}/finalize"),
        format!("/estimates/{long}/revise"),
        format!("/estimates/{long}/snapshots/1/promote"),
    ] {
        let r = app.post(&uri, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(r.problem_type().ends_with("/estimate-not-found"), "{uri}");
    }
    let e = app.finalized_estimate().await;
    for v in ["0", "-1", &"9".repeat(300)] {
        let r = app
            .post(&format!("/estimates/{e}/snapshots/{v}/promote"), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "version {v}");
        assert!(r.problem_type().ends_with("/snapshot-not-found"));
    }
    assert!(app.record(&e, 1).await.is_none(), "nothing was claimed");
    assert!(app.audit(&e, 1).await.is_empty(), "nothing was audited");
}
