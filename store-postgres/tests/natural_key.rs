//! The natural-key primitive on a real PostgreSQL: one row per key among
//! 100 concurrent inserters at every isolation level, the conflict recovered
//! inside the caller's transaction, serialization failures and deadlocks
//! retried with bounded backoff, other errors returned at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use idempotency_postgres::natural::{
    Inserted, Isolation, NaturalKey, NaturalKeyError, RetryPolicy, RetryReason, RowQuery,
    retry_transaction,
};
use idempotency_postgres::sqlx::postgres::PgPoolOptions;
use idempotency_postgres::sqlx::{self, PgPool};
use tokio::sync::Barrier;
use uuid::Uuid;

const CONSTRAINT: &str = "jobs_natural_key";

/// The test table, in a schema of its own (created once, shared by every
/// test; each test uses keys of its own).
async fn setup(connections: u32) -> Option<PgPool> {
    let pool = common::pool_with(PgPoolOptions::new().max_connections(connections)).await?;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('natural_key_test:setup'))")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS natural_key_test;
         CREATE TABLE IF NOT EXISTS natural_key_test.jobs (
             id             uuid PRIMARY KEY,
             assessment_id  uuid NOT NULL,
             correlation_id text NOT NULL,
             schema_version text NOT NULL,
             max_attempts   integer NOT NULL CHECK (max_attempts >= 1),
             CONSTRAINT jobs_natural_key UNIQUE (assessment_id, correlation_id, schema_version)
         );
         CREATE TABLE IF NOT EXISTS natural_key_test.side (id uuid PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS natural_key_test.accounts (id uuid PRIMARY KEY, n integer NOT NULL);",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    Some(pool)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    id: Uuid,
    correlation_id: String,
}

impl sqlx::FromRow<'_, sqlx::postgres::PgRow> for Job {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            id: row.try_get("id")?,
            correlation_id: row.try_get("correlation_id")?,
        })
    }
}

/// The natural key `(assessment, correlation, 'v1')`; `inserts` counts the
/// insert statements built (one per insert sent).
fn job_key<'a>(
    assessment: Uuid,
    correlation: &'a str,
    max_attempts: i32,
    inserts: &'a AtomicU32,
) -> NaturalKey<Job, impl Fn() -> RowQuery<Job> + Sync + 'a, impl Fn() -> RowQuery<Job> + Sync + 'a>
{
    slow_job_key(assessment, correlation, max_attempts, inserts, 0.0)
}

/// [`job_key`] whose insert first sleeps `delay` seconds in the database,
/// so that concurrent callers all find no row before any has inserted one.
fn slow_job_key<'a>(
    assessment: Uuid,
    correlation: &'a str,
    max_attempts: i32,
    inserts: &'a AtomicU32,
    delay: f64,
) -> NaturalKey<Job, impl Fn() -> RowQuery<Job> + Sync + 'a, impl Fn() -> RowQuery<Job> + Sync + 'a>
{
    NaturalKey::new(
        move || {
            inserts.fetch_add(1, Ordering::SeqCst);
            sqlx::query_as::<_, Job>(
                "INSERT INTO natural_key_test.jobs \
                 (id, assessment_id, correlation_id, schema_version, max_attempts) \
                 SELECT $1, $2, $3, 'v1', $4 FROM pg_sleep($5) RETURNING id, correlation_id",
            )
            .bind(Uuid::new_v4())
            .bind(assessment)
            .bind(correlation.to_owned())
            .bind(max_attempts)
            .bind(delay)
        },
        move || {
            sqlx::query_as::<_, Job>(
                "SELECT id, correlation_id FROM natural_key_test.jobs \
                 WHERE assessment_id = $1 AND correlation_id = $2 AND schema_version = 'v1'",
            )
            .bind(assessment)
            .bind(correlation.to_owned())
        },
    )
    .constraint(CONSTRAINT)
}

async fn rows(pool: &PgPool, assessment: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM natural_key_test.jobs WHERE assessment_id = $1")
        .bind(assessment)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// 100 callers start together on one natural key: exactly one row, every
/// caller gets it, exactly one was told it created it, none is an error.
async fn hundred_inserters(pool: &PgPool, isolation: Isolation) {
    const CALLERS: usize = 100;
    let assessment = Uuid::new_v4();
    let inserts = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (pool, inserts, barrier) = (pool.clone(), inserts.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let key = slow_job_key(assessment, "corr-1", 3, &inserts, 0.05);
            barrier.wait().await;
            key.insert_or_get(&pool, isolation, RetryPolicy::default())
                .await
        }));
    }
    let mut created = 0;
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(row) => {
                created += usize::from(row.is_created());
                ids.push(row.into_inner().id);
            }
            Err(e) => panic!("{isolation:?}: a caller failed: {e:?}"),
        }
    }
    assert_eq!(created, 1, "{isolation:?}");
    ids.dedup();
    assert_eq!(ids.len(), 1, "{isolation:?}: every caller gets the one row");
    assert_eq!(rows(pool, assessment).await, 1, "{isolation:?}");
    // More than one caller reached the insert: the race really happened.
    assert!(
        inserts.load(Ordering::SeqCst) > 1,
        "{isolation:?}: {} inserts",
        inserts.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_inserters_make_one_row_at_every_isolation_level() {
    let Some(pool) = setup(30).await else { return };
    // Every connection open before the callers start.
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    for isolation in Isolation::ALL {
        hundred_inserters(&pool, isolation).await;
    }
}

#[tokio::test]
async fn an_existing_row_is_found_and_nothing_is_inserted() {
    let Some(pool) = setup(4).await else { return };
    let assessment = Uuid::new_v4();
    let inserts = AtomicU32::new(0);
    let key = job_key(assessment, "corr-1", 3, &inserts);
    for isolation in Isolation::ALL {
        let first = key
            .insert_or_get(&pool, isolation, RetryPolicy::default())
            .await
            .unwrap();
        let again = key
            .insert_or_get(&pool, isolation, RetryPolicy::default())
            .await
            .unwrap();
        assert_eq!(again, Inserted::Found(first.row().clone()));
    }
    assert_eq!(inserts.load(Ordering::SeqCst), 1);
    assert_eq!(rows(&pool, assessment).await, 1);
    // Another correlation is another key.
    let other = job_key(assessment, "corr-2", 3, &inserts);
    let row = other
        .insert_or_get(&pool, Isolation::ReadCommitted, RetryPolicy::default())
        .await
        .unwrap();
    assert!(row.is_created() && row.row().correlation_id == "corr-2");
    assert_eq!(rows(&pool, assessment).await, 2);
}

/// Holds the natural key's row uncommitted in another transaction while the
/// caller's transaction (which has already written a row of its own and
/// taken its snapshot) inserts the key, then commits it.
async fn conflict_inside_the_callers_transaction(
    pool: &PgPool,
    isolation: Isolation,
) -> (Result<Inserted<Job>, NaturalKeyError>, bool, Uuid, u32) {
    let assessment = Uuid::new_v4();
    let winner_id = Uuid::new_v4();
    let mut winner = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO natural_key_test.jobs (id, assessment_id, correlation_id, schema_version, max_attempts) \
         VALUES ($1, $2, 'corr-1', 'v1', 3)",
    )
    .bind(winner_id)
    .bind(assessment)
    .execute(&mut *winner)
    .await
    .unwrap();
    let side = Uuid::new_v4();
    let pool2 = pool.clone();
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel::<i32>();
    let caller = tokio::spawn(async move {
        let inserts = AtomicU32::new(0);
        let key = job_key(assessment, "corr-1", 3, &inserts);
        let mut tx = pool2.begin().await.unwrap();
        sqlx::query(isolation.set_transaction())
            .execute(&mut *tx)
            .await
            .unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let _ = pid_tx.send(pid);
        sqlx::query("INSERT INTO natural_key_test.side (id) VALUES ($1)")
            .bind(side)
            .execute(&mut *tx)
            .await
            .unwrap();
        let result = key.insert_or_get_in(&mut tx).await;
        // The caller's transaction goes on after a recovered conflict.
        let committed = result.is_ok() && tx.commit().await.is_ok();
        (result, committed, inserts.load(Ordering::SeqCst))
    });
    // Let the caller reach its insert (it waits on the winner's row).
    let pid = pid_rx.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock' \
             AND query LIKE 'INSERT INTO natural_key_test.jobs%'",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the caller never reached its insert"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    winner.commit().await.unwrap();
    let (result, committed, inserts) = caller.await.unwrap();
    assert_eq!(inserts, 1);
    let side_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM natural_key_test.side WHERE id = $1")
            .bind(side)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(side_rows == 1, committed);
    (result, committed, winner_id, inserts)
}

#[tokio::test]
async fn a_conflict_in_the_callers_transaction_finds_the_winner_at_read_committed() {
    let Some(pool) = setup(4).await else { return };
    let (result, committed, winner, _) =
        conflict_inside_the_callers_transaction(&pool, Isolation::ReadCommitted).await;
    let row = result.unwrap();
    assert!(!row.is_created());
    assert_eq!(row.row().id, winner);
    assert!(committed, "the caller's own row commits with it");
}

#[tokio::test]
async fn a_winner_the_snapshot_cannot_see_asks_for_a_new_transaction_never_not_found() {
    let Some(pool) = setup(4).await else { return };
    for isolation in [Isolation::RepeatableRead, Isolation::Serializable] {
        let (result, committed, _, _) =
            conflict_inside_the_callers_transaction(&pool, isolation).await;
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                NaturalKeyError::Retry {
                    reason: RetryReason::WinnerNotVisible | RetryReason::SerializationFailure,
                    ..
                }
            ),
            "{isolation:?}: {err:?}"
        );
        assert!(!committed);
    }
}

#[tokio::test]
async fn a_non_conflict_error_is_returned_at_once_not_retried() {
    let Some(pool) = setup(4).await else { return };
    // A CHECK violation (23514) on the insert.
    let assessment = Uuid::new_v4();
    let inserts = AtomicU32::new(0);
    let started = Instant::now();
    let err = job_key(assessment, "corr-1", 0, &inserts)
        .insert_or_get(&pool, Isolation::Serializable, RetryPolicy::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NaturalKeyError::Database(_)), "{err:?}");
    assert_eq!(err.code().as_deref(), Some("23514"));
    assert_eq!(inserts.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(rows(&pool, assessment).await, 0);

    // A unique violation of another constraint (the primary key) is not the
    // natural key's: returned, not taken for a conflict.
    let taken = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO natural_key_test.jobs (id, assessment_id, correlation_id, schema_version, max_attempts) \
         VALUES ($1, $2, 'x', 'v1', 3)",
    )
    .bind(taken)
    .bind(Uuid::new_v4())
    .execute(&pool)
    .await
    .unwrap();
    let calls = AtomicU32::new(0);
    let key = NaturalKey::new(
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            sqlx::query_as::<_, Job>(
                "INSERT INTO natural_key_test.jobs (id, assessment_id, correlation_id, schema_version, max_attempts) \
                 VALUES ($1, $2, 'corr-1', 'v1', 3) RETURNING id, correlation_id",
            )
            .bind(taken)
            .bind(assessment)
        },
        || {
            sqlx::query_as::<_, Job>(
                "SELECT id, correlation_id FROM natural_key_test.jobs WHERE assessment_id = $1",
            )
            .bind(assessment)
        },
    )
    .constraint(CONSTRAINT);
    let err = key
        .insert_or_get(&pool, Isolation::ReadCommitted, RetryPolicy::default())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_deref(), Some("23505"));
    assert!(matches!(err, NaturalKeyError::Database(_)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Inside the caller's transaction, the transaction stays usable.
    let mut tx = pool.begin().await.unwrap();
    let err = job_key(assessment, "corr-1", 0, &inserts)
        .insert_or_get_in(&mut tx)
        .await
        .unwrap_err();
    assert_eq!(err.code().as_deref(), Some("23514"));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(one, 1);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_key_that_never_settles_gives_up_after_the_bounded_retries() {
    let Some(pool) = setup(4).await else { return };
    // The select never sees the row the insert conflicts with: every run is
    // a conflict without a visible winner.
    let assessment = Uuid::new_v4();
    let inserts = AtomicU32::new(0);
    job_key(assessment, "corr-1", 3, &inserts)
        .insert_or_get(&pool, Isolation::ReadCommitted, RetryPolicy::default())
        .await
        .unwrap();
    let calls = AtomicU32::new(0);
    let key = NaturalKey::new(
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            sqlx::query_as::<_, Job>(
                "INSERT INTO natural_key_test.jobs (id, assessment_id, correlation_id, schema_version, max_attempts) \
                 VALUES ($1, $2, 'corr-1', 'v1', 3) RETURNING id, correlation_id",
            )
            .bind(Uuid::new_v4())
            .bind(assessment)
        },
        || {
            sqlx::query_as::<_, Job>(
                "SELECT id, correlation_id FROM natural_key_test.jobs WHERE false",
            )
        },
    );
    let retry = RetryPolicy::default().max_attempts(4);
    let started = Instant::now();
    let err = key
        .insert_or_get(&pool, Isolation::ReadCommitted, retry)
        .await
        .unwrap_err();
    let NaturalKeyError::Exhausted { attempts, last } = err else {
        panic!("{err:?}")
    };
    assert_eq!(attempts, 4);
    assert!(matches!(
        *last,
        NaturalKeyError::Retry {
            reason: RetryReason::WinnerNotVisible,
            ..
        }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(started.elapsed() < retry.max_total_backoff() + Duration::from_secs(2));
}

/// A body that raises `code` on its first `failures` runs.
async fn raising(
    pool: &PgPool,
    code: &'static str,
    failures: u32,
    retry: RetryPolicy,
) -> (Result<u32, sqlx::Error>, u32) {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let result = retry_transaction(pool, Isolation::ReadCommitted, retry, move |tx| {
        let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if run <= failures {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
                )))
                .execute(&mut *tx)
                .await?;
            }
            Ok::<_, sqlx::Error>(run)
        })
    })
    .await;
    (result, runs.load(Ordering::SeqCst))
}

#[tokio::test]
async fn serialization_failures_and_deadlocks_are_retried_with_bounded_backoff() {
    let Some(pool) = setup(4).await else { return };
    let retry = RetryPolicy::default();
    for code in ["40001", "40P01"] {
        let (result, runs) = raising(&pool, code, 2, retry).await;
        assert_eq!(result.unwrap(), 3, "{code}");
        assert_eq!(runs, 3);
    }
    // Always failing: exactly max_attempts runs, then the last error, in
    // bounded time.
    let retry = RetryPolicy::default().max_attempts(5);
    let started = Instant::now();
    let (result, runs) = raising(&pool, "40001", u32::MAX, retry).await;
    let err = result.unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("40001")
    );
    assert_eq!(runs, 5);
    assert!(started.elapsed() < retry.max_total_backoff() + Duration::from_secs(2));
    // Anything else: one run.
    for code in ["22012", "23505", "57014"] {
        let (result, runs) = raising(&pool, code, 1, RetryPolicy::default()).await;
        assert!(result.is_err(), "{code}");
        assert_eq!(runs, 1, "{code} is not retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_concurrent_update_failure_and_a_real_deadlock_are_retried() {
    let Some(pool) = setup(6).await else { return };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO natural_key_test.accounts (id, n) VALUES ($1, 0), ($2, 0)")
        .bind(a)
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();

    // Deadlock: two transactions lock a and b in opposite orders; the
    // victim (40P01) runs again and both succeed.
    let barrier = Arc::new(Barrier::new(2));
    let runs = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for (first, second) in [(a, b), (b, a)] {
        let (pool, barrier, runs) = (pool.clone(), barrier.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            retry_transaction(
                &pool,
                Isolation::ReadCommitted,
                RetryPolicy::default(),
                move |tx| {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    let barrier = barrier.clone();
                    Box::pin(async move {
                        sqlx::query("SET LOCAL deadlock_timeout = '20ms'")
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("UPDATE natural_key_test.accounts SET n = n + 1 WHERE id = $1")
                            .bind(first)
                            .execute(&mut *tx)
                            .await?;
                        if run < 2 {
                            barrier.wait().await;
                        }
                        sqlx::query("UPDATE natural_key_test.accounts SET n = n + 1 WHERE id = $1")
                            .bind(second)
                            .execute(&mut *tx)
                            .await?;
                        Ok::<_, sqlx::Error>(())
                    })
                },
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "one victim ran again");
    let total: i64 =
        sqlx::query_scalar("SELECT sum(n)::int8 FROM natural_key_test.accounts WHERE id = ANY($1)")
            .bind(vec![a, b])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(total, 4, "each transaction's two updates landed once");

    // Concurrent update at REPEATABLE READ (40001): the second writer's
    // snapshot predates the first writer's commit; it runs again and wins.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("UPDATE natural_key_test.accounts SET n = n + 10 WHERE id = $1")
        .bind(a)
        .execute(&mut *holder)
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let pool2 = pool.clone();
    let writer = tokio::spawn(async move {
        retry_transaction(
            &pool2,
            Isolation::RepeatableRead,
            RetryPolicy::default(),
            move |tx| {
                counter.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    sqlx::query("SELECT 1").execute(&mut *tx).await?;
                    sqlx::query("UPDATE natural_key_test.accounts SET n = n + 100 WHERE id = $1")
                        .bind(a)
                        .execute(&mut *tx)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                })
            },
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE 'UPDATE natural_key_test.accounts SET n = n + 100%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.commit().await.unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the 40001 run ran again");
    let n: i32 = sqlx::query_scalar("SELECT n FROM natural_key_test.accounts WHERE id = $1")
        .bind(a)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 2 + 10 + 100);
}
