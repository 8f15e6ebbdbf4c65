//! The worker in process on a real PostgreSQL: every stage of a job runs
//! once and the job completes; a failing stage is retried up to the job's
//! `max_attempts`, then the job fails; two workers share the queue with
//! `FOR UPDATE SKIP LOCKED` and still run each stage once.

mod common;

use common::JobReply;

use std::time::Duration;

use common::{app, app_on, config, eventually, job, stage_outputs};
use example_job_creation::worker::{STAGES, stage_key};
use example_job_creation::{Config, Fault};
use idempotency_core::{IdempotencyStore, RecordState};

fn with_worker() -> Config {
    Config {
        worker: true,
        ..config()
    }
}

fn once_each() -> Vec<(String, i64)> {
    STAGES.iter().map(|s| ((*s).to_owned(), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_every_stage_once_and_completes_the_job() {
    let Some(app) = app(with_worker()).await else {
        return;
    };
    let id = app.assessment("stress").await;
    let job_id = app.complete("stress", id, &[]).await.job_id().unwrap();
    let (pool, schema) = (app.pool.clone(), app.config.schema.clone());
    eventually(Duration::from_secs(10), "the job completes", || {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move { job(&pool, &schema, job_id).await.status == "completed" }
    })
    .await;
    let row = job(&app.pool, &app.config.schema, job_id).await;
    assert_eq!((row.stage.as_str(), row.attempt), ("done", 1));
    assert_eq!(
        stage_outputs(&app.pool, &app.config.schema, job_id).await,
        once_each()
    );
    for stage in STAGES {
        let record = app
            .service
            .store()
            .get(&stage_key(job_id, stage))
            .await
            .unwrap()
            .expect("a stage record");
        assert!(
            matches!(record.state, RecordState::Completed(_)),
            "{stage}: {:?}",
            record.state
        );
    }
    // The read endpoint shows it.
    let r = app.get(&format!("/api/processing-jobs/{job_id}")).await;
    assert_eq!(r.json()["data"]["status"], "completed");
    assert!(r.json()["data"]["completedAt"].is_string());
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stage_is_retried_up_to_max_attempts_then_the_job_fails() {
    let Some(app) = app(with_worker()).await else {
        return;
    };
    app.service.faults().set(Fault::Stage, true);
    let id = app.assessment("stress").await;
    let job_id = app.complete("stress", id, &[]).await.job_id().unwrap();
    let (pool, schema) = (app.pool.clone(), app.config.schema.clone());
    eventually(Duration::from_secs(10), "the job fails", || {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move { job(&pool, &schema, job_id).await.status == "failed" }
    })
    .await;
    let row = job(&app.pool, &app.config.schema, job_id).await;
    assert_eq!(row.attempt, 3, "{row:?}");
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("stage risk"),
        "{row:?}"
    );
    assert!(
        stage_outputs(&app.pool, &app.config.schema, job_id)
            .await
            .is_empty()
    );
    // A failed job stays failed, even once the fault is gone.
    app.service.faults().set(Fault::Stage, false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        job(&app.pool, &app.config.schema, job_id).await.status,
        "failed"
    );

    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_failed_once_runs_once_on_the_next_attempt() {
    // The retry waits long enough for the test to disarm the fault.
    let Some(app) = app(Config {
        retry_delay: Duration::from_millis(500),
        ..with_worker()
    })
    .await
    else {
        return;
    };
    let (pool, schema) = (app.pool.clone(), app.config.schema.clone());
    app.service.faults().set(Fault::Stage, true);
    let other = app.assessment("stress").await;
    let job_id = app.complete("stress", other, &[]).await.job_id().unwrap();
    eventually(Duration::from_secs(10), "the first attempt fails", || {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            let j = job(&pool, &schema, job_id).await;
            j.status == "queued" && j.attempt == 1 && j.last_error.is_some()
        }
    })
    .await;
    app.service.faults().set(Fault::Stage, false);
    eventually(Duration::from_secs(10), "the job completes", || {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move { job(&pool, &schema, job_id).await.status == "completed" }
    })
    .await;
    let row = job(&app.pool, &app.config.schema, job_id).await;
    assert_eq!(row.attempt, 2, "{row:?}");
    assert_eq!(
        stage_outputs(&app.pool, &app.config.schema, job_id).await,
        once_each()
    );
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_queue_and_each_stage_runs_once() {
    let Some(first) = app(with_worker()).await else {
        return;
    };
    let second = app_on(first.pool.clone(), first.config.clone()).await;
    let mut jobs = Vec::new();
    for i in 0..10 {
        let app = if i % 2 == 0 { &first } else { &second };
        let id = app.assessment("stress").await;
        jobs.push(app.complete("stress", id, &[]).await.job_id().unwrap());
    }
    let (pool, schema) = (first.pool.clone(), first.config.schema.clone());
    for job_id in &jobs {
        let job_id = *job_id;
        eventually(Duration::from_secs(20), "every job completes", || {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move { job(&pool, &schema, job_id).await.status == "completed" }
        })
        .await;
        assert_eq!(stage_outputs(&pool, &schema, job_id).await, once_each());
        assert_eq!(job(&pool, &schema, job_id).await.attempt, 1);
    }
    // Both workers took part.
    let workers: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(DISTINCT worker_id) FROM \"{schema}\".processing_jobs"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(workers, 2);
    second.service.shutdown().await;
    first.drop().await;
}

/// Short leases, so heartbeat renewals often run while a stage commits: a
/// renewal queued behind the stage's own completion finds the record
/// completed; the stage's result still counts, and the job is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_racing_a_stages_commit_does_not_cost_an_attempt() {
    let Some(app) = app(Config {
        lease: Duration::from_millis(150),
        stage_time: Duration::from_millis(45),
        ..with_worker()
    })
    .await
    else {
        return;
    };
    let mut jobs = Vec::new();
    for _ in 0..8 {
        let id = app.assessment("stress").await;
        jobs.push(app.complete("stress", id, &[]).await.job_id().unwrap());
    }
    let (pool, schema) = (app.pool.clone(), app.config.schema.clone());
    for job_id in jobs {
        eventually(Duration::from_secs(20), "every job completes", || {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move { job(&pool, &schema, job_id).await.status == "completed" }
        })
        .await;
        let row = job(&pool, &schema, job_id).await;
        assert_eq!(row.attempt, 1, "{row:?}");
        assert_eq!(stage_outputs(&pool, &schema, job_id).await, once_each());
    }
    app.drop().await;
}
