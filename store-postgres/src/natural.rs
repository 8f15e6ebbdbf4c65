//! Idempotency by the application's own UNIQUE constraint: insert a row
//! once per natural key, or get the row that won ([`NaturalKey`]), and run a
//! transaction again after a serialization failure or a deadlock
//! ([`retry_transaction`]).
//!
//! No idempotency table is involved: the constraint is the guard, and the
//! select-then-insert race is recovered on `23505`. See the crate README,
//! "Idempotency by your own unique constraint".

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgConnection, PgPool, Postgres};

/// The future a [`retry_transaction`] body returns: boxed, `Send`, and
/// borrowing the transaction's connection.
pub type TxFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// A statement of a [`NaturalKey`]: a `query_as` whose bound values are owned.
pub type RowQuery<T> = QueryAs<'static, Postgres, T, PgArguments>;

/// The savepoint around the insert, so a unique violation does not abort
/// the caller's transaction. Savepoints of one name nest: an enclosing one
/// of the same name is left alone.
const SAVEPOINT: &str = "SAVEPOINT idempotency_natural_key";
const RELEASE: &str = "RELEASE SAVEPOINT idempotency_natural_key";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT idempotency_natural_key";

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE `serialization_failure`.
const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE `deadlock_detected`.
const DEADLOCK_DETECTED: &str = "40P01";

/// The isolation level of a transaction [`retry_transaction`] or
/// [`NaturalKey::insert_or_get`] begins. Each is set explicitly, whatever
/// the server's `default_transaction_isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// `READ COMMITTED` (PostgreSQL's default).
    #[default]
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl Isolation {
    /// All three, weakest first.
    pub const ALL: [Self; 3] = [
        Self::ReadCommitted,
        Self::RepeatableRead,
        Self::Serializable,
    ];

    /// The statement that sets it as a transaction's first statement.
    pub const fn set_transaction(self) -> &'static str {
        match self {
            Self::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Self::RepeatableRead => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Self::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// How often, and how patiently, a transaction runs again after a
/// serialization failure or a deadlock: up to `max_attempts` runs in all,
/// waiting a random time from zero to `min(cap, base × 2^(n-1))` before run
/// `n + 1` ("full jitter"), so the total wait is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
}

impl Default for RetryPolicy {
    /// 10 runs, backoff from 2 ms doubling up to 100 ms: at most about
    /// 0.43 s of waiting in all.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// Runs in all, first included (at least 1, at most 100).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.clamp(1, 100);
        self
    }

    /// The first backoff's upper bound (at most 10 s).
    #[must_use]
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base.min(Duration::from_secs(10));
        self
    }

    /// The largest backoff (at most 10 s).
    #[must_use]
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap.min(Duration::from_secs(10));
        self
    }

    /// Runs in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest wait before run `attempt + 1` (`attempt` from 1).
    pub fn max_backoff(&self, attempt: u32) -> Duration {
        let doubling = 1u32 << attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(doubling).min(self.cap)
    }

    /// The longest total wait of a transaction that uses every run.
    pub fn max_total_backoff(&self) -> Duration {
        (1..self.max_attempts).map(|a| self.max_backoff(a)).sum()
    }

    async fn sleep(&self, attempt: u32) {
        let bound = self.max_backoff(attempt).as_micros() as u64;
        if bound == 0 {
            return;
        }
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        tokio::time::sleep(Duration::from_micros(random % (bound + 1))).await;
    }
}

/// Why a transaction must run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// `40001 serialization_failure`.
    SerializationFailure,
    /// `40P01 deadlock_detected`.
    Deadlock,
    /// The insert hit the natural key's unique constraint, but the row that
    /// holds the key is not visible to this transaction's snapshot (it was
    /// committed after the snapshot was taken, at `REPEATABLE READ` or
    /// `SERIALIZABLE`, or deleted meanwhile): only a new transaction can see it.
    WinnerNotVisible,
}

impl RetryReason {
    /// A short name: `serialization_failure`, `deadlock`, `winner_not_visible`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SerializationFailure => "serialization_failure",
            Self::Deadlock => "deadlock",
            Self::WinnerNotVisible => "winner_not_visible",
        }
    }
}

/// Why a natural-key insert gave no row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NaturalKeyError {
    /// The transaction must be rolled back and run again (from
    /// [`NaturalKey::insert_or_get_in`]; [`NaturalKey::insert_or_get`] and
    /// [`retry_transaction`] do it themselves).
    #[error("the transaction must run again ({})", reason.as_str())]
    Retry {
        /// Why.
        reason: RetryReason,
        /// The database's error, when it raised one.
        #[source]
        source: Option<sqlx::Error>,
    },
    /// Every run of the transaction had to be retried.
    #[error("the transaction did not settle in {attempts} attempts")]
    Exhausted {
        /// Runs made.
        attempts: u32,
        /// The last run's reason.
        #[source]
        last: Box<NaturalKeyError>,
    },
    /// Any other database error (a unique violation of another constraint
    /// than the natural key's included): returned at once, never retried.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl NaturalKeyError {
    /// The SQLSTATE of the database error behind this one, if any.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Retry { source, .. } => source.as_ref().and_then(sqlstate),
            Self::Exhausted { last, .. } => last.code(),
            Self::Database(e) => sqlstate(e),
        }
    }
}

impl From<sqlx::Error> for NaturalKeyError {
    /// `40001` and `40P01` become [`Retry`](Self::Retry), anything else
    /// [`Database`](Self::Database).
    fn from(e: sqlx::Error) -> Self {
        match sqlstate(&e).as_deref() {
            Some(SERIALIZATION_FAILURE) => Self::Retry {
                reason: RetryReason::SerializationFailure,
                source: Some(e),
            },
            Some(DEADLOCK_DETECTED) => Self::Retry {
                reason: RetryReason::Deadlock,
                source: Some(e),
            },
            _ => Self::Database(e),
        }
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// An error that may say "run the transaction again"; what
/// [`retry_transaction`] asks of its body's error type.
pub trait TransactionRetry {
    /// Whether the transaction must be rolled back and run again.
    fn must_retry(&self) -> bool;
}

impl TransactionRetry for NaturalKeyError {
    fn must_retry(&self) -> bool {
        matches!(self, Self::Retry { .. })
    }
}

impl TransactionRetry for sqlx::Error {
    /// `40001` and `40P01`.
    fn must_retry(&self) -> bool {
        matches!(
            sqlstate(self).as_deref(),
            Some(SERIALIZATION_FAILURE | DEADLOCK_DETECTED)
        )
    }
}

/// A row found or made by [`NaturalKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted<T> {
    /// This call inserted it.
    Created(T),
    /// It existed (or a concurrent caller inserted it first).
    Found(T),
}

impl<T> Inserted<T> {
    /// Whether this call inserted the row.
    pub fn is_created(&self) -> bool {
        matches!(self, Self::Created(_))
    }

    /// The row.
    pub fn row(&self) -> &T {
        match self {
            Self::Created(r) | Self::Found(r) => r,
        }
    }

    /// The row, however it was obtained.
    pub fn into_inner(self) -> T {
        match self {
            Self::Created(r) | Self::Found(r) => r,
        }
    }
}

/// Begins a transaction at `isolation`, runs `body` in it and commits;
/// when the body or the commit fails with an error that
/// [`must_retry`](TransactionRetry::must_retry) (`40001`, `40P01`, or
/// [`NaturalKeyError::Retry`]), rolls back, waits a bounded, jittered
/// backoff and runs it again, up to [`RetryPolicy::attempts`] runs. Any
/// other error is returned at once, after the rollback.
///
/// The body runs once per attempt: it must only touch the database through
/// the connection it is given (everything else it did would be repeated),
/// and it owns what it uses (clone into a `move` closure).
///
/// ```rust,no_run
/// use idempotency_postgres::natural::{Isolation, RetryPolicy, retry_transaction};
/// # async fn f(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let moved: u64 = retry_transaction(pool, Isolation::Serializable, RetryPolicy::default(), |tx| {
///     Box::pin(async move {
///         let done = sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
///             .execute(&mut *tx)
///             .await?;
///         Ok::<_, sqlx::Error>(done.rows_affected())
///     })
/// })
/// .await?;
/// # let _ = moved; Ok(()) }
/// ```
///
/// # Errors
///
/// The body's error, or the begin's or commit's as `E`; after the last
/// allowed run, the last run's error, whatever it is.
///
/// # Cancel safety
///
/// Dropping the future drops the open transaction, which PostgreSQL rolls
/// back; a commit already sent may still have landed.
pub async fn retry_transaction<T, E, F>(
    pool: &PgPool,
    isolation: Isolation,
    retry: RetryPolicy,
    body: F,
) -> Result<T, E>
where
    F: FnMut(&mut PgConnection) -> TxFuture<'_, T, E>,
    E: From<sqlx::Error> + TransactionRetry,
{
    run(pool, isolation, retry, &mut Closure(body))
        .await
        .map_err(|(_, e)| e)
}

/// What one run of a transaction does.
trait Body {
    type Output;
    type Error: From<sqlx::Error> + TransactionRetry;

    /// Boxed, so the retry loop's future is `Send` without a higher-ranked
    /// bound on the body's future type.
    fn run<'c>(&'c mut self, conn: &'c mut PgConnection)
    -> TxFuture<'c, Self::Output, Self::Error>;
}

/// A [`retry_transaction`] body.
struct Closure<F>(F);

impl<T, E, F> Body for Closure<F>
where
    F: FnMut(&mut PgConnection) -> TxFuture<'_, T, E>,
    E: From<sqlx::Error> + TransactionRetry,
{
    type Output = T;
    type Error = E;

    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> TxFuture<'c, T, E> {
        (self.0)(conn)
    }
}

/// The retry loop of [`retry_transaction`] and [`NaturalKey::insert_or_get`]:
/// the result, or the runs made and the last error.
async fn run<B: Body>(
    pool: &PgPool,
    isolation: Isolation,
    retry: RetryPolicy,
    body: &mut B,
) -> Result<B::Output, (u32, B::Error)> {
    let mut attempt = 1;
    loop {
        let result = async {
            let mut tx = pool.begin().await?;
            sqlx::query(isolation.set_transaction())
                .execute(&mut *tx)
                .await?;
            match body.run(&mut tx).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(value)
                }
                Err(e) => {
                    // A failed rollback closes the connection; the error
                    // that matters is the body's.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
        .await;
        match result {
            Ok(value) => return Ok(value),
            Err(e) if e.must_retry() && attempt < retry.max_attempts => {
                retry.sleep(attempt).await;
                attempt += 1;
            }
            Err(e) => return Err((attempt, e)),
        }
    }
}

/// One natural key of one table: the `INSERT ... RETURNING` that creates
/// its row and the `SELECT` that finds it, each built afresh by a closure
/// for every use (both return the same row type `T`).
///
/// ```rust,no_run
/// use idempotency_postgres::natural::{Isolation, NaturalKey, RetryPolicy};
/// # async fn f(pool: &sqlx::PgPool, assessment: uuid::Uuid, correlation: &str) -> Result<(), idempotency_postgres::natural::NaturalKeyError> {
/// // (job id, status)
/// type Job = (uuid::Uuid, String);
///
/// let key = NaturalKey::new(
///     || {
///         sqlx::query_as::<_, Job>(
///             "INSERT INTO processing_jobs (id, assessment_id, correlation_id, schema_version) \
///              VALUES ($1, $2, $3, 'v1') RETURNING id, status",
///         )
///         .bind(uuid::Uuid::now_v7())
///         .bind(assessment)
///         .bind(correlation.to_owned())
///     },
///     || {
///         sqlx::query_as::<_, Job>(
///             "SELECT id, status FROM processing_jobs \
///              WHERE assessment_id = $1 AND correlation_id = $2 AND schema_version = 'v1'",
///         )
///         .bind(assessment)
///         .bind(correlation.to_owned())
///     },
/// )
/// .constraint("processing_jobs_assessment_correlation_version_unique");
/// let job = key
///     .insert_or_get(pool, Isolation::ReadCommitted, RetryPolicy::default())
///     .await?;
/// println!("{} (created: {})", job.row().0, job.is_created());
/// # Ok(()) }
/// ```
pub struct NaturalKey<T, I, S> {
    insert: I,
    select: S,
    constraint: Option<&'static str>,
    _row: PhantomData<fn() -> T>,
}

impl<T, I, S> std::fmt::Debug for NaturalKey<T, I, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NaturalKey")
            .field("constraint", &self.constraint)
            .finish_non_exhaustive()
    }
}

impl<T, I, S> NaturalKey<T, I, S>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    I: Fn() -> RowQuery<T> + Sync,
    S: Fn() -> RowQuery<T> + Sync,
{
    /// The key whose row `insert` creates (an `INSERT ... RETURNING`, plain
    /// or `ON CONFLICT DO NOTHING`) and `select` finds (at most one row).
    pub fn new(insert: I, select: S) -> Self {
        Self {
            insert,
            select,
            constraint: None,
            _row: PhantomData,
        }
    }

    /// Recovers only a unique violation of the constraint named `name`;
    /// one of any other constraint (a primary key collision, another unique
    /// index) is then [`NaturalKeyError::Database`]. Without it every
    /// unique violation is taken for the natural key's.
    #[must_use]
    pub fn constraint(mut self, name: &'static str) -> Self {
        self.constraint = Some(name);
        self
    }

    /// Finds the row, or inserts it, inside the caller's transaction (or
    /// on a bare connection, where each statement commits by itself).
    ///
    /// 1. `select`: an existing row is [`Inserted::Found`];
    /// 2. `insert` under a savepoint: its row is [`Inserted::Created`];
    /// 3. on a unique violation of the natural key (`23505`; or no row from
    ///    an `ON CONFLICT DO NOTHING`), back to the savepoint (the caller's
    ///    transaction goes on) and `select` again: the winner's row is
    ///    [`Inserted::Found`].
    ///
    /// At `READ COMMITTED` step 3 always sees the winner, which committed
    /// before the violation was raised. At `REPEATABLE READ` and
    /// `SERIALIZABLE` the transaction's snapshot may predate the winner;
    /// then, rather than answer "not found", this returns
    /// [`NaturalKeyError::Retry`] with [`RetryReason::WinnerNotVisible`]:
    /// roll back and run the transaction again (a new snapshot sees the
    /// winner), as [`retry_transaction`] does. `40001` and `40P01` are
    /// `Retry` too; anything else is [`NaturalKeyError::Database`].
    ///
    /// # Errors
    ///
    /// As above. After a `Retry` from a serialization failure or deadlock
    /// the transaction is aborted: roll it back.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the transaction in an unknown state (the
    /// savepoint may be open): roll it back.
    ///
    /// The future is boxed: it is `Send` wherever it is awaited (an axum
    /// handler, a spawned task), whatever closures the key holds.
    pub fn insert_or_get_in<'a>(
        &'a self,
        conn: &'a mut PgConnection,
    ) -> TxFuture<'a, Inserted<T>, NaturalKeyError> {
        Box::pin(self.find_or_insert(conn))
    }

    async fn find_or_insert(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Inserted<T>, NaturalKeyError> {
        if let Some(row) = (self.select)().fetch_optional(&mut *conn).await? {
            return Ok(Inserted::Found(row));
        }
        sqlx::query(SAVEPOINT).execute(&mut *conn).await?;
        match (self.insert)().fetch_optional(&mut *conn).await {
            Ok(Some(row)) => {
                sqlx::query(RELEASE).execute(&mut *conn).await?;
                return Ok(Inserted::Created(row));
            }
            Ok(None) => {
                sqlx::query(RELEASE).execute(&mut *conn).await?;
            }
            Err(e) if self.is_natural_key_violation(&e) => {
                sqlx::query(ROLLBACK_TO).execute(&mut *conn).await?;
                sqlx::query(RELEASE).execute(&mut *conn).await?;
            }
            Err(e) => {
                // Keep the caller's transaction usable for a non-conflict
                // error too; the insert's error is the answer either way.
                if sqlx::query(ROLLBACK_TO).execute(&mut *conn).await.is_ok() {
                    let _ = sqlx::query(RELEASE).execute(&mut *conn).await;
                }
                return Err(e.into());
            }
        }
        match (self.select)().fetch_optional(&mut *conn).await? {
            Some(row) => Ok(Inserted::Found(row)),
            None => Err(NaturalKeyError::Retry {
                reason: RetryReason::WinnerNotVisible,
                source: None,
            }),
        }
    }

    /// Finds or inserts the row in a transaction of its own at `isolation`
    /// ([`insert_or_get_in`](Self::insert_or_get_in) inside
    /// [`retry_transaction`]): never "not found" after a conflict, at any
    /// isolation level.
    ///
    /// # Errors
    ///
    /// [`NaturalKeyError::Exhausted`] when every run had to be retried;
    /// [`NaturalKeyError::Database`] for any other database error (at once).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future rolls the open transaction back; a commit
    /// already sent may have landed (the next call finds its row).
    ///
    /// The future is boxed, as [`insert_or_get_in`](Self::insert_or_get_in)'s.
    pub fn insert_or_get<'a>(
        &'a self,
        pool: &'a PgPool,
        isolation: Isolation,
        retry: RetryPolicy,
    ) -> TxFuture<'a, Inserted<T>, NaturalKeyError> {
        Box::pin(async move {
            match run(pool, isolation, retry, &mut InsertBody(self)).await {
                Ok(row) => Ok(row),
                Err((attempts, e)) if e.must_retry() => Err(NaturalKeyError::Exhausted {
                    attempts,
                    last: Box::new(e),
                }),
                Err((_, e)) => Err(e),
            }
        })
    }

    fn is_natural_key_violation(&self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(db) = e else {
            return false;
        };
        db.code().as_deref() == Some(UNIQUE_VIOLATION)
            && self
                .constraint
                .is_none_or(|name| db.constraint() == Some(name))
    }
}

/// [`NaturalKey::insert_or_get_in`] as a transaction's body.
struct InsertBody<'k, T, I, S>(&'k NaturalKey<T, I, S>);

impl<T, I, S> Body for InsertBody<'_, T, I, S>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    I: Fn() -> RowQuery<T> + Sync,
    S: Fn() -> RowQuery<T> + Sync,
{
    type Output = Inserted<T>;
    type Error = NaturalKeyError;

    fn run<'c>(
        &'c mut self,
        conn: &'c mut PgConnection,
    ) -> TxFuture<'c, Inserted<T>, NaturalKeyError> {
        self.0.insert_or_get_in(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_doubles() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_backoff(1), Duration::from_millis(2));
        assert_eq!(p.max_backoff(2), Duration::from_millis(4));
        assert_eq!(p.max_backoff(7), Duration::from_millis(100));
        assert_eq!(p.max_backoff(u32::MAX), Duration::from_millis(100));
        assert_eq!(p.max_total_backoff(), Duration::from_millis(426));
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(1_000).attempts(), 100);
        let slow = RetryPolicy::default().base(Duration::from_secs(60));
        assert_eq!(slow.max_backoff(1), Duration::from_millis(100));
    }

    #[test]
    fn conflicts_are_retried_and_nothing_else() {
        assert!(
            NaturalKeyError::Retry {
                reason: RetryReason::WinnerNotVisible,
                source: None
            }
            .must_retry()
        );
        assert!(!NaturalKeyError::Database(sqlx::Error::RowNotFound).must_retry());
        assert!(!sqlx::Error::PoolTimedOut.must_retry());
        let e: NaturalKeyError = sqlx::Error::PoolTimedOut.into();
        assert!(matches!(e, NaturalKeyError::Database(_)));
        assert_eq!(RetryReason::Deadlock.as_str(), "deadlock");
        assert_eq!(
            Isolation::Serializable.set_transaction(),
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
        );
    }
}
