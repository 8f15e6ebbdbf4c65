//! The story's acceptance criteria one by one, on the service in process
//! and a real PostgreSQL, each asserting the rows and the answers; then
//! graceful degradation, the audit outage, guarded transitions and every
//! bad input.

mod common;

use common::JobReply;

use std::time::{Duration, Instant};

use common::{App, app, config, problem};
use example_job_creation::assessments::ALREADY_COMPLETED;
use example_job_creation::{Fault, JobStatus, TransitionError};
use http::{Method, StatusCode};
use serde_json::json;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

/// `(status, completed_at, correlation_id)` of the assessment.
async fn assessment_row(app: &App, id: Uuid) -> (String, Option<String>, Option<String>) {
    let r = sqlx::query(AssertSqlSafe(format!(
        "SELECT status, completed_at::text AS completed_at, correlation_id \
         FROM \"{}\".assessments WHERE id = $1",
        app.config.schema
    )))
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    (
        r.get("status"),
        r.get("completed_at"),
        r.get("correlation_id"),
    )
}

#[tokio::test]
async fn ac1_complete_sets_completed_and_completed_at_once() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    assert_eq!(assessment_row(&app, id).await.0, "in_progress");
    let before: String = sqlx::query_scalar("SELECT now()::text")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let first = app.complete("stress", id, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let (status, completed_at, _) = assessment_row(&app, id).await;
    assert_eq!(status, "completed");
    let completed_at = completed_at.expect("completed_at is set");
    assert!(completed_at >= before, "{completed_at} < {before}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = app.complete("stress", id, &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["data"]["message"], ALREADY_COMPLETED);
    assert_eq!(
        assessment_row(&app, id).await.1.as_deref(),
        Some(completed_at.as_str()),
        "a later completion changes nothing"
    );
    app.drop().await;
}

#[tokio::test]
async fn ac2_a_job_row_is_created_with_the_stable_correlation_id() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let r = app
        .complete("stress", id, &[("x-correlation-id", "corr-ac2")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.correlation(), "corr-ac2");
    let jobs = app.jobs(id).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.correlation_id, "corr-ac2");
    assert_eq!(
        (
            job.schema_version.as_str(),
            job.status.as_str(),
            job.stage.as_str()
        ),
        ("v1", "queued", "pending")
    );
    assert_eq!((job.attempt, job.max_attempts), (0, 3));
    assert_eq!(r.job_id(), Some(job.id));
    assert_eq!(
        assessment_row(&app, id).await.2.as_deref(),
        Some("corr-ac2")
    );
    // Without x-correlation-id, the first completion's x-request-id is the correlation.
    let other = app.assessment("stress").await;
    let r = app
        .complete("stress", other, &[("x-request-id", "req-ac2")])
        .await;
    assert_eq!(r.correlation(), "req-ac2");
    assert_eq!(app.jobs(other).await[0].correlation_id, "req-ac2");
    // With neither, the generated request id is.
    let third = app.assessment("stress").await;
    let r = app.complete("stress", third, &[]).await;
    assert_eq!(r.correlation(), r.headers["x-request-id"].to_str().unwrap());
    assert_eq!(app.jobs(third).await[0].correlation_id, r.correlation());
    app.drop().await;
}

#[tokio::test]
async fn ac3_the_unique_constraint_is_enforced_by_the_database() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let r = app
        .complete("stress", id, &[("x-correlation-id", "corr-ac3")])
        .await;
    assert!(r.job_id().is_some());
    let err = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{}\".processing_jobs (id, assessment_id, correlation_id, schema_version) \
         VALUES ($1, $2, 'corr-ac3', 'v1')",
        app.config.schema
    )))
    .bind(Uuid::now_v7())
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap_err();
    let db = err.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("23505"));
    assert_eq!(
        db.constraint(),
        Some("processing_jobs_assessment_correlation_version_unique")
    );
    assert_eq!(app.jobs(id).await.len(), 1);
    app.drop().await;
}

#[tokio::test]
async fn ac4_two_calls_make_one_job_with_one_correlation_whatever_the_retry_sends() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let first = app
        .complete("stress", id, &[("x-request-id", "req-first")])
        .await;
    // The retry carries a new request id, and even another correlation id:
    // the one fixed by the first completion is kept.
    let second = app
        .complete(
            "stress",
            id,
            &[("x-request-id", "req-retry"), ("x-correlation-id", "other")],
        )
        .await;
    let third = app.complete("stress", id, &[]).await;
    for r in [&first, &second, &third] {
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.correlation(), "req-first");
    }
    let jobs = app.jobs(id).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].correlation_id, "req-first");
    assert_eq!(first.job_id(), Some(jobs[0].id));
    assert_eq!(second.job_id(), first.job_id());
    assert_eq!(third.job_id(), first.job_id());
    app.drop().await;
}

#[tokio::test]
async fn ac5_the_response_is_exactly_the_storys_envelope() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let first = app.complete("stress", id, &[]).await;
    let job = first.job_id().unwrap();
    assert_eq!(
        first.json(),
        json!({
            "success": true,
            "data": {
                "assessmentId": id,
                "status": "completed",
                "processingJob": {"jobId": job, "status": "queued"},
            },
            "schemaVersion": "v1",
        })
    );
    let again = app.complete("stress", id, &[]).await;
    assert_eq!(
        again.json(),
        json!({
            "success": true,
            "data": {
                "assessmentId": id,
                "status": "completed",
                "message": ALREADY_COMPLETED,
                "processingJob": {"jobId": job, "status": "queued"},
            },
            "schemaVersion": "v1",
        })
    );
    assert_eq!(again.headers["content-type"], "application/json");
    assert!(again.headers.contains_key("x-request-id"));
    // The read endpoints.
    let r = app.get(&format!("/api/processing-jobs/{job}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let data = &r.json()["data"];
    assert_eq!(data["jobId"], json!(job));
    assert_eq!(data["assessmentId"], json!(id));
    assert_eq!(data["status"], "queued");
    assert_eq!(data["stage"], "pending");
    assert_eq!(data["maxAttempts"], 3);
    let r = app
        .get(&format!("/api/assessments/{id}/processing-jobs"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["data"]["processingJobs"][0]["jobId"], json!(job));
    app.drop().await;
}

#[tokio::test]
async fn ac6_one_audit_event_per_creation_never_for_a_found_job() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let first = app
        .complete("stress", id, &[("x-correlation-id", "corr-ac6")])
        .await;
    let job = first.job_id().unwrap();
    for _ in 0..3 {
        app.complete("stress", id, &[]).await;
    }
    let events = app.audit(id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["type"], "processing_job.create");
    assert_eq!(e["subject"], job.to_string());
    assert_eq!(e["correlation_id"], "corr-ac6");
    let a = &e["attributes"];
    assert_eq!(a["entity_type"], "processing_job");
    assert_eq!(a["action"], "create");
    assert_eq!(a["entity_id"], job.to_string());
    assert_eq!(
        a["metadata"],
        json!({
            "assessment_id": id,
            "correlation_id": "corr-ac6",
            "job_id": job,
            "status_to": "queued",
        })
    );
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_in_one_process_make_one_job() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let rid = format!("req-{i}");
            app.complete("stress", id, &[("x-request-id", rid.as_str())])
                .await
        }));
    }
    let mut ids = Vec::new();
    let mut correlations = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        ids.push(r.job_id().expect("every answer has the job"));
        correlations.push(r.correlation());
    }
    ids.dedup();
    correlations.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(correlations.len(), 1);
    assert_eq!(app.jobs(id).await.len(), 1);
    assert_eq!(app.audit(id).await.len(), 1);
    std::sync::Arc::try_unwrap(app).ok().unwrap().drop().await;
}

#[tokio::test]
async fn a_failed_job_creation_degrades_gracefully_and_the_next_completion_creates_it() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    app.service.faults().set(Fault::Insert, true);
    let r = app
        .complete("stress", id, &[("x-correlation-id", "corr-deg")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"success": true, "data": {"assessmentId": id, "status": "completed"}, "schemaVersion": "v1"})
    );
    assert_eq!(assessment_row(&app, id).await.0, "completed");
    assert!(app.jobs(id).await.is_empty());
    assert_eq!(app.service.creation_failures(), 1);
    // Still failing: still a success without a job.
    let r = app.complete("stress", id, &[]).await;
    assert_eq!(r.json()["data"]["message"], ALREADY_COMPLETED);
    assert!(r.json()["data"].get("processingJob").is_none());
    assert_eq!(app.service.creation_failures(), 2);
    // Recovered: the next completion creates the job, with the first
    // completion's correlation id, and audits it.
    app.service.faults().set(Fault::Insert, false);
    let r = app.complete("stress", id, &[]).await;
    assert_eq!(r.json()["data"]["message"], ALREADY_COMPLETED);
    let jobs = app.jobs(id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].correlation_id, "corr-deg");
    assert_eq!(r.job_id(), Some(jobs[0].id));
    assert_eq!(app.audit(id).await.len(), 1);
    app.drop().await;
}

#[tokio::test]
async fn an_audit_outage_never_fails_or_slows_a_completion() {
    let Some(app) = app(config()).await else {
        return;
    };
    let audit = app.config.audit_schema.clone();
    // The audit table refuses every write.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE FUNCTION \"{audit}\".refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'audit table unwritable (test)'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON \"{audit}\".events
             FOR EACH ROW EXECUTE FUNCTION \"{audit}\".refuse();"
    )))
    .execute(&app.pool)
    .await
    .unwrap();
    let id = app.assessment("stress").await;
    let started = Instant::now();
    let r = app.complete("stress", id, &[]).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.job_id().is_some(), "the job is created all the same");
    assert!(app.audit(id).await.is_empty());
    assert!(app.service.audit_dropped() >= 1);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TRIGGER refuse ON \"{audit}\".events"
    )))
    .execute(&app.pool)
    .await
    .unwrap();

    // The audit table locked (writes hang): completions do not wait for it.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "LOCK TABLE \"{audit}\".events IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut *lock)
    .await
    .unwrap();
    let locked = app.assessment("stress").await;
    let started = Instant::now();
    let r = app.complete("stress", locked, &[]).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(r.job_id().is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    lock.rollback().await.unwrap();
    // Once the trail is back, the queued event is written.
    assert_eq!(app.audit(locked).await.len(), 1);
    app.drop().await;
}

#[tokio::test]
async fn job_status_transitions_are_guarded() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let job = app.complete("stress", id, &[]).await.job_id().unwrap();
    let schema = app.config.schema.clone();
    // Illegal by the table: refused before anything is sent.
    let err = app
        .service
        .transition(job, ("w", 0), JobStatus::Queued, JobStatus::Completed)
        .await
        .unwrap_err();
    assert!(matches!(err, TransitionError::Illegal { .. }), "{err:?}");
    // Legal, but the job is not held by that claim: nothing matches.
    let err = app
        .service
        .transition(job, ("w", 1), JobStatus::InProgress, JobStatus::Completed)
        .await
        .unwrap_err();
    assert!(matches!(err, TransitionError::Stale { .. }), "{err:?}");
    assert_eq!(app.jobs(id).await[0].status, "queued");
    // Any other writer is refused by the database too.
    for (set, from) in [
        ("status = 'completed'", "queued"),
        ("status = 'failed'", "queued"),
    ] {
        let err = sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{schema}\".processing_jobs SET {set} WHERE id = $1"
        )))
        .bind(job)
        .execute(&app.pool)
        .await
        .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("23514"),
            "{from}: {err}"
        );
    }
    // A claim, then a legal move, then nothing leaves a final state.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{schema}\".processing_jobs SET status = 'in_progress', attempt = 1, worker_id = 'w' WHERE id = $1"
    )))
    .bind(job)
    .execute(&app.pool)
    .await
    .unwrap();
    app.service
        .transition(job, ("w", 1), JobStatus::InProgress, JobStatus::Completed)
        .await
        .unwrap();
    let row = &app.jobs(id).await[0];
    assert_eq!(
        (row.status.as_str(), row.stage.as_str()),
        ("completed", "done")
    );
    for to in ["queued", "in_progress", "failed"] {
        let err = sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{schema}\".processing_jobs SET status = '{to}' WHERE id = $1"
        )))
        .bind(job)
        .execute(&app.pool)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("illegal"), "{to}: {err}");
    }
    let err = sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{schema}\".processing_jobs SET correlation_id = 'x' WHERE id = $1"
    )))
    .bind(job)
    .execute(&app.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("identity"), "{err}");
    assert_eq!(app.jobs(id).await[0].status, "completed");
    app.drop().await;
}

/// A request and the problem it must get: method, path, body, headers,
/// status, problem slug.
type Case = (
    Method,
    String,
    Option<&'static str>,
    Vec<(&'static str, &'static str)>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn every_bad_input_is_a_problem_and_changes_nothing() {
    let Some(app) = app(config()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            format!(
                "/api/funnels/stress/assessments/{}/complete",
                Uuid::now_v7()
            ),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "assessment-not-found",
        ),
        (
            Method::POST,
            format!("/api/funnels/sleep/assessments/{id}/complete"),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "assessment-not-found",
        ),
        (
            Method::POST,
            "/api/funnels/stress/assessments/not-a-uuid/complete".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "assessment-not-found",
        ),
        (
            Method::POST,
            format!("/api/funnels/Bad_Slug/assessments/{id}/complete"),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "funnel-not-found",
        ),
        (
            Method::POST,
            format!("/api/funnels/stress/assessments/{id}/complete"),
            None,
            vec![("x-correlation-id", "has space")],
            StatusCode::BAD_REQUEST,
            "invalid-correlation-id",
        ),
        (
            Method::POST,
            "/api/funnels/stress/assessments".into(),
            Some("{"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        (
            Method::POST,
            "/api/funnels/stress/assessments".into(),
            Some("[]"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        (
            Method::POST,
            "/api/funnels/stress/assessments".into(),
            Some("{}"),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            Method::POST,
            "/api/funnels/stress/assessments".into(),
            Some(r#"{"patientId": 7}"#),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            Method::POST,
            "/api/funnels/stress/assessments".into(),
            Some(r#"{"patientId": "  "}"#),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            Method::POST,
            "/api/funnels/-x/assessments".into(),
            Some(r#"{"patientId": "P"}"#),
            vec![],
            StatusCode::NOT_FOUND,
            "funnel-not-found",
        ),
        (
            Method::GET,
            "/api/processing-jobs/nope".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "processing-job-not-found",
        ),
        (
            Method::GET,
            format!("/api/processing-jobs/{}", Uuid::now_v7()),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "processing-job-not-found",
        ),
        (
            Method::GET,
            "/api/assessments/nope/processing-jobs".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "assessment-not-found",
        ),
        (
            Method::GET,
            format!("/api/assessments/{}/processing-jobs", Uuid::now_v7()),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "assessment-not-found",
        ),
        (
            Method::GET,
            "/api/nothing-here".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            Method::DELETE,
            format!("/api/funnels/stress/assessments/{id}/complete"),
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
    ];
    for (method, uri, body, headers, status, slug) in cases {
        let r = app.call(method.clone(), &uri, body, &headers).await;
        assert_eq!(r.status, status, "{method} {uri}: {r:?}");
        assert_eq!(r.problem_type(), problem(slug), "{method} {uri}");
        assert!(r.headers.contains_key("x-request-id"));
    }
    let long = json!({"patientId": "p".repeat(201)}).to_string();
    let r = app
        .call(
            Method::POST,
            "/api/funnels/stress/assessments",
            Some(&long),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["errors"][0]["pointer"], "/patientId");
    let huge = json!({"patientId": "p".repeat(20_000)}).to_string();
    let r = app
        .call(
            Method::POST,
            "/api/funnels/stress/assessments",
            Some(&huge),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.problem_type(), problem("body-too-large"));
    // Nothing was completed or created by any of it.
    assert_eq!(assessment_row(&app, id).await.0, "in_progress");
    assert!(app.jobs(id).await.is_empty());
    // A body on the completion is ignored.
    let r = app
        .call(
            Method::POST,
            &format!("/api/funnels/stress/assessments/{id}/complete"),
            Some("not json at all"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.drop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let Some(app) = app(config()).await else {
        return;
    };
    let r = app.get("/healthz").await;
    assert_eq!(
        (r.status, r.body.as_ref()),
        (StatusCode::OK, b"ok\n".as_ref())
    );
    let r = app.get("/readyz").await;
    assert_eq!(
        (r.status, r.body.as_ref()),
        (StatusCode::OK, b"ready\n".as_ref())
    );
    assert_eq!(app.get("/metrics").await.status, StatusCode::NOT_FOUND);
    // Readiness follows the database.
    app.pool.close().await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.problem_type(), problem("database-unavailable"));
    assert_eq!(r.headers["retry-after"], "1");
    let pool = common::pool(2).await.unwrap();
    common::drop_schemas(&pool, &app.config).await;
}
