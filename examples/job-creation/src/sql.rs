//! The service's statements, built once for the configured schema (every
//! value is a bound parameter; only the validated schema name is
//! substituted).

use std::sync::Arc;

use crate::db::apply;

/// Timestamps as RFC 3339 UTC with microseconds.
macro_rules! ts {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

/// The columns of a job's JSON.
const JOB_COLUMNS: &str = concat!(
    "id, assessment_id, correlation_id, schema_version, status, stage, attempt, \
     max_attempts, last_error, ",
    ts!("created_at"),
    " AS created_at, ",
    ts!("updated_at"),
    " AS updated_at, ",
    ts!("completed_at"),
    " AS completed_at"
);

/// Every statement of the service, for one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) create_assessment: Arc<str>,
    pub(crate) complete: Arc<str>,
    pub(crate) assessment: Arc<str>,
    pub(crate) assessment_exists: Arc<str>,
    pub(crate) insert_job: Arc<str>,
    pub(crate) find_job: Arc<str>,
    pub(crate) job_by_id: Arc<str>,
    pub(crate) jobs_of_assessment: Arc<str>,
    pub(crate) transition: Arc<str>,
    pub(crate) fail_exhausted: Arc<str>,
    pub(crate) claim: Arc<str>,
    pub(crate) renew: Arc<str>,
    pub(crate) advance: Arc<str>,
    pub(crate) stage_output: Arc<str>,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let s = |t: &str| -> Arc<str> { apply(t, schema).into() };
        Self {
            create_assessment: s(
                "INSERT INTO {{schema}}.assessments (id, funnel, patient_id) VALUES ($1, $2, $3)",
            ),
            // Once: only an assessment still in progress changes; a
            // concurrent completion waits for the row and then matches
            // nothing (READ COMMITTED re-checks the WHERE on the new row).
            complete: s("UPDATE {{schema}}.assessments \
                 SET status = 'completed', completed_at = now(), correlation_id = $3 \
                 WHERE id = $1 AND funnel = $2 AND status = 'in_progress' \
                 RETURNING correlation_id"),
            assessment: s(
                "SELECT status, correlation_id FROM {{schema}}.assessments WHERE id = $1 AND funnel = $2",
            ),
            assessment_exists: s(
                "SELECT EXISTS (SELECT 1 FROM {{schema}}.assessments WHERE id = $1)",
            ),
            insert_job: s("INSERT INTO {{schema}}.processing_jobs \
                 (id, assessment_id, correlation_id, schema_version, max_attempts) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id, status"),
            find_job: s("SELECT id, status FROM {{schema}}.processing_jobs \
                 WHERE assessment_id = $1 AND correlation_id = $2 AND schema_version = $3"),
            job_by_id: s(&format!(
                "SELECT {JOB_COLUMNS} FROM {{{{schema}}}}.processing_jobs WHERE id = $1"
            )),
            jobs_of_assessment: s(&format!(
                "SELECT {JOB_COLUMNS} FROM {{{{schema}}}}.processing_jobs \
                 WHERE assessment_id = $1 ORDER BY created_at, id"
            )),
            // Compare-and-set on (status, claim).
            transition: s("UPDATE {{schema}}.processing_jobs SET \
                   status = $3, \
                   last_error = coalesce($6, last_error), \
                   updated_at = now(), \
                   stage = CASE WHEN $3 = 'completed' THEN 'done' ELSE stage END, \
                   completed_at = CASE WHEN $3 = 'completed' THEN now() ELSE completed_at END, \
                   lease_until = CASE WHEN $3 = 'queued' \
                                 THEN now() + $7::int8 * interval '1 millisecond' END, \
                   worker_id = CASE WHEN $3 = 'queued' THEN NULL ELSE worker_id END \
                 WHERE id = $1 AND status = $2 AND worker_id = $4 AND attempt = $5"),
            // A job whose holder died on its last attempt.
            fail_exhausted: s("UPDATE {{schema}}.processing_jobs SET \
                   status = 'failed', updated_at = now(), lease_until = NULL, \
                   last_error = coalesce(last_error || '; ', '') || 'attempts exhausted: the worker stopped' \
                 WHERE status = 'in_progress' AND lease_until <= now() AND attempt >= max_attempts"),
            // One claimable job, skipping those other workers are claiming.
            claim: s("WITH next AS ( \
                   SELECT id FROM {{schema}}.processing_jobs \
                   WHERE status IN ('queued', 'in_progress') \
                     AND coalesce(lease_until, '-infinity') <= now() \
                     AND attempt < max_attempts \
                   ORDER BY created_at, id LIMIT 1 \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE {{schema}}.processing_jobs j SET \
                   status = 'in_progress', attempt = j.attempt + 1, worker_id = $1, \
                   lease_until = now() + $2::int8 * interval '1 millisecond', updated_at = now() \
                 FROM next WHERE j.id = next.id \
                 RETURNING j.id, j.stage, j.attempt, j.max_attempts"),
            renew: s("UPDATE {{schema}}.processing_jobs SET \
                   lease_until = now() + $4::int8 * interval '1 millisecond' \
                 WHERE id = $1 AND status = 'in_progress' AND worker_id = $2 AND attempt = $3"),
            advance: s(
                "UPDATE {{schema}}.processing_jobs SET stage = $5, updated_at = now() \
                 WHERE id = $1 AND status = 'in_progress' AND worker_id = $2 AND attempt = $3 \
                   AND stage = $4",
            ),
            stage_output: s(
                "INSERT INTO {{schema}}.stage_outputs (job_id, stage, attempt, fence, output) \
                 VALUES ($1, $2, $3, $4, $5::jsonb)",
            ),
        }
    }
}
