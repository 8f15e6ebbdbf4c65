//! The worker: claims queued jobs with `FOR UPDATE SKIP LOCKED`, advances
//! them through their stages, retries a failed attempt up to the job's
//! `max_attempts`, and runs each stage's effect once per (job, stage) with
//! the idempotency runner ([`idempotency_core::Idempotent`]) over the
//! PostgreSQL store, the effect and the stage's record committed together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idempotency_core::{
    Completion, Execution, Fingerprint, KeySpec, Outcome, RunError, StorageKey, StoreError,
};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::AppState;
use crate::jobs::{JobStatus, TransitionError};

/// The stages of a job, in order; `pending` comes before the first and
/// `done` after the last.
pub const STAGES: [&str; 3] = ["risk", "ranking", "report"];

/// The idempotency namespace of the stage records.
pub const STAGE_NAMESPACE: &str = "job-creation/stage";

/// The storage key of stage `stage` of job `job`.
pub fn stage_key(job: Uuid, stage: &str) -> StorageKey {
    KeySpec::new(STAGE_NAMESPACE)
        .derived([job.to_string(), stage.to_owned()])
        .storage_key()
}

/// Why a stage produced nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    /// `JOB_CREATION_FAULT=stage`.
    #[error("stage failed (injected fault)")]
    Injected,
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The stage's record could not be completed.
    #[error("idempotency store error")]
    Store(#[from] StoreError),
}

/// A job this worker holds.
#[derive(Debug, Clone)]
struct Claimed {
    id: Uuid,
    stage: String,
    attempt: i32,
    max_attempts: i32,
}

/// Runs until `stop` turns true; the job in hand is finished first.
pub(crate) async fn run(app: AppState, mut stop: watch::Receiver<bool>) {
    let worker = format!("worker-{}", Uuid::now_v7());
    tracing::info!(worker, "worker started");
    loop {
        if *stop.borrow() {
            break;
        }
        match step(&app, &worker).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(worker, error = %e, "worker could not claim a job"),
        }
        tokio::select! {
            () = app.worker_wake.notified() => {}
            () = tokio::time::sleep(app.config.poll) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!(worker, "worker stopped");
}

/// Claims one job and works it; whether there was one.
async fn step(app: &AppState, worker: &str) -> Result<bool, sqlx::Error> {
    let exhausted = sqlx::query(AssertSqlSafe(app.sql.fail_exhausted.clone()))
        .execute(&app.pool)
        .await?;
    if exhausted.rows_affected() > 0 {
        tracing::warn!(
            jobs = exhausted.rows_affected(),
            "jobs failed: their worker stopped during their last attempt"
        );
    }
    let row = sqlx::query(AssertSqlSafe(app.sql.claim.clone()))
        .bind(worker)
        .bind(millis(app.config.lease))
        .fetch_optional(&app.pool)
        .await?;
    let Some(row) = row else { return Ok(false) };
    let job = Claimed {
        id: row.try_get("id")?,
        stage: row.try_get("stage")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
    };
    tracing::info!(job = %job.id, stage = job.stage, attempt = job.attempt, "job claimed");
    work(app, worker, &job).await;
    Ok(true)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Renews the claim's lease every third of it until dropped; `lost` turns
/// true when the claim is gone.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn heartbeat(app: &AppState, worker: &str, job: &Claimed, lost: Arc<AtomicBool>) -> Heartbeat {
    let (app, worker, id, attempt) = (app.clone(), worker.to_owned(), job.id, job.attempt);
    Heartbeat(tokio::spawn(async move {
        let every = app.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let renewed = sqlx::query(AssertSqlSafe(app.sql.renew.clone()))
                .bind(id)
                .bind(&worker)
                .bind(attempt)
                .bind(millis(app.config.lease))
                .execute(&app.pool)
                .await;
            match renewed {
                Ok(done) if done.rows_affected() == 0 => {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "job lease not renewed"),
            }
        }
    }))
}

/// Runs the job's remaining stages, then completes it; a failed stage
/// queues it again (attempts left) or fails it.
async fn work(app: &AppState, worker: &str, job: &Claimed) {
    let lost = Arc::new(AtomicBool::new(false));
    let _beat = heartbeat(app, worker, job, lost.clone());
    let mut stage = job.stage.clone();
    if stage == "pending" {
        if !advance(app, worker, job, "pending", STAGES[0]).await {
            return;
        }
        stage = STAGES[0].to_owned();
    }
    loop {
        if lost.load(Ordering::SeqCst) {
            tracing::warn!(job = %job.id, "job claim lost; another worker goes on");
            return;
        }
        let mut ran = run_stage(app, job, &stage).await;
        if matches!(ran, Err(RunError::LeaseLost)) {
            // A heartbeat renewal queued behind the stage's own commit finds
            // the record completed and reports the lease lost; asking again
            // replays the committed result (or, if another worker really
            // took the stage over, says so).
            ran = run_stage(app, job, &stage).await;
        }
        match ran {
            Ok(execution) => {
                metrics::counter!(
                    "processing_job_stage_runs_total",
                    "outcome" => if execution.is_replay() { "replayed" } else { "executed" }
                )
                .increment(1);
            }
            Err(e) => {
                metrics::counter!("processing_job_stage_runs_total", "outcome" => "failed")
                    .increment(1);
                let reason = format!("stage {stage}: {e}");
                tracing::warn!(job = %job.id, stage, attempt = job.attempt, error = %e, "stage failed");
                give_up_attempt(app, worker, job, &reason).await;
                return;
            }
        }
        let next = STAGES
            .iter()
            .position(|s| *s == stage)
            .and_then(|i| STAGES.get(i + 1));
        match next {
            Some(next) => {
                if !advance(app, worker, job, &stage, next).await {
                    return;
                }
                stage = (*next).to_owned();
            }
            None => {
                let done = crate::jobs::transition_state(
                    app,
                    job.id,
                    (worker, job.attempt),
                    (JobStatus::InProgress, JobStatus::Completed),
                    None,
                    Duration::ZERO,
                )
                .await;
                match done {
                    Ok(()) => tracing::info!(job = %job.id, "job completed"),
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "job not completed"),
                }
                return;
            }
        }
    }
}

/// Moves the held job from stage `from` to `to`; false when the claim is gone.
async fn advance(app: &AppState, worker: &str, job: &Claimed, from: &str, to: &str) -> bool {
    let done = sqlx::query(AssertSqlSafe(app.sql.advance.clone()))
        .bind(job.id)
        .bind(worker)
        .bind(job.attempt)
        .bind(from)
        .bind(to)
        .execute(&app.pool)
        .await;
    match done {
        Ok(d) if d.rows_affected() == 1 => true,
        Ok(_) => {
            tracing::warn!(job = %job.id, from, to, "stage not advanced: the claim is gone");
            false
        }
        Err(e) => {
            tracing::warn!(job = %job.id, from, to, error = %e, "stage not advanced");
            false
        }
    }
}

/// The attempt failed: queue the job again while attempts are left, else fail it.
async fn give_up_attempt(app: &AppState, worker: &str, job: &Claimed, reason: &str) {
    let to = if job.attempt < job.max_attempts {
        JobStatus::Queued
    } else {
        JobStatus::Failed
    };
    let delay = app
        .config
        .retry_delay
        .saturating_mul(job.attempt.unsigned_abs());
    match crate::jobs::transition_state(
        app,
        job.id,
        (worker, job.attempt),
        (JobStatus::InProgress, to),
        Some(reason),
        delay,
    )
    .await
    {
        Ok(()) => tracing::info!(job = %job.id, status = to.as_str(), "attempt given up"),
        Err(TransitionError::Stale { .. }) => {
            tracing::warn!(job = %job.id, "attempt outcome not recorded: the claim is gone");
        }
        Err(e) => tracing::warn!(job = %job.id, error = %e, "attempt outcome not recorded"),
    }
}

/// Runs stage `stage` of `job` once per (job, stage): its output row and
/// its record's completion commit in one transaction, so a worker killed
/// before the commit leaves nothing (the stage runs again once the record's
/// lease runs out) and one killed after it leaves a completed record (the
/// stage is replayed, not run).
async fn run_stage(
    app: &AppState,
    job: &Claimed,
    stage: &str,
) -> Result<Execution<Value>, RunError<StageError>> {
    let key = stage_key(job.id, stage);
    let fingerprint = Fingerprint::of_bytes("job-creation/stage", stage.as_bytes());
    app.stages
        .run(key, fingerprint, |attempt| async move {
            if app.faults.stage_fails() {
                return Err(StageError::Injected);
            }
            // The stage's work.
            tokio::time::sleep(app.config.stage_time).await;
            let output = json!({
                "stage": stage,
                "job": job.id,
                "jobAttempt": job.attempt,
                "fence": attempt.fence(),
            });
            let mut tx = app.pool.begin().await?;
            sqlx::query(AssertSqlSafe(app.sql.stage_output.clone()))
                .bind(job.id)
                .bind(stage)
                .bind(job.attempt)
                .bind(i64::try_from(attempt.fence()).unwrap_or(i64::MAX))
                .bind(output.to_string())
                .execute(&mut *tx)
                .await?;
            let bytes = serde_json::to_vec(&output).unwrap_or_default();
            app.store
                .complete_in(
                    &mut tx,
                    attempt.lease(),
                    Completion::new(Outcome::Value(bytes.into())),
                )
                .await?;
            tx.commit().await?;
            attempt.mark_completed(None);
            Ok(output)
        })
        .await
}
