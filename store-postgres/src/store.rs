//! [`PostgresStore`]: records in one table, every decision one guarded statement.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotency_core::peek::{PeekGate, ReadFirst};
use idempotency_core::wait;
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completion, Corrupted, Failure, IdempotencyStore,
    Lease, LeaseToken, Observed, PurgeExpired, Record, RecordState, Resolution, StorageKey,
    StoreError, Timestamp,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};
use tokio::time::Instant;

use crate::error::{ClaimContention, SetupError, map_sqlx};
use crate::listen::Notifier;
use crate::migrate;
use crate::reaper::Reaper;
use crate::row::{Decoded, RawRecord, ms, ts};
use crate::sql::{Queries, Stmt};

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "idempotency";

/// Longest schema name accepted (the notification channel appends `_changes`
/// and must stay within PostgreSQL's 63-byte identifiers).
const MAX_SCHEMA_LEN: usize = 48;

/// How many times a claim re-runs after losing a race to a concurrent writer
/// (each re-run sees the winner's committed record, so one is the norm).
const CLAIM_ROUNDS: u32 = 8;

/// While the listener is down, waiters re-check at least this often.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Metric: latency of the store's SQL statements in seconds, by `operation`
/// (the store's own view; `idempotency_store_operation_seconds` is the
/// caller's view, written once by the layer's timing decorator).
const STATEMENT_SECONDS: &str = "idempotency_postgres_statement_seconds";
/// Metric: records deleted by the reaper, by `schema`.
const REAPED_TOTAL: &str = "idempotency_postgres_reaped_total";
/// Metric: records found undecodable and marked corrupted, by `schema`.
const CORRUPTED_TOTAL: &str = "idempotency_postgres_corrupted_total";

/// A PostgreSQL-backed [`IdempotencyStore`] over a [`sqlx::PgPool`].
///
/// - **Atomic decisions**: a claim is one statement (insert, take over an
///   expired lease, retry a retryable failure, or read the live record); every
///   lease operation is one statement guarded by the lease's token and fence.
/// - **Time** comes from the database (`statement_timestamp()`), plus a test
///   offset moved by [`ClockControl`].
/// - **Transactional completion**: [`PostgresStore::complete_in`] completes
///   the record inside the caller's own transaction.
/// - **Waiting** across processes with `LISTEN/NOTIFY`.
/// - **Reaper**: [`PurgeExpired`] and [`PostgresStore::spawn_reaper`].
///
/// Cloning is cheap and shares the pool, the clock offset and the listener.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: Box<str>,
    channel: Box<str>,
    sql: Queries,
    offset_ms: AtomicU64,
    notifier: Notifier,
    /// Whether a claim runs `peek.sql` first.
    peek: PeekGate,
    /// Whether a claim tries `claim_fast.sql` before `claim.sql`.
    fast_claim: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PostgresStore`]: schema, statement timeout, and (with
/// [`connect_lazy`](Self::connect_lazy)) the pool.
///
/// ```
/// use std::time::Duration;
/// use idempotency_postgres::PostgresStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::builder()
///     .schema("idempotency")
///     .statement_timeout(Duration::from_secs(2))
///     .max_connections(16)
///     .connect_lazy("postgres://app@127.0.0.1:5432/app")?;
/// assert_eq!(store.schema(), "idempotency");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    schema: String,
    statement_timeout: Option<Duration>,
    max_connections: u32,
    acquire_timeout: Duration,
    read_first: ReadFirst,
    claim_commit: ClaimCommit,
    fast_claim: bool,
}

/// How a claim's transaction commits: whether the claim that acquires a
/// record waits for its WAL flush ([`PostgresStoreBuilder::claim_commit`]).
///
/// Either way the claim is visible to every other session the moment it
/// commits, so concurrent duplicates, other processes and the lease engine
/// behave the same; the setting only decides what a **crash of the
/// PostgreSQL server** (not of the application) can take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClaimCommit {
    /// The server's own `synchronous_commit` (`on` by default): a claim
    /// that returned is on disk. The default.
    #[default]
    Durable,
    /// PostgreSQL's asynchronous commit for the claim statement alone
    /// (`synchronous_commit = off`, local to its transaction; completions,
    /// failures and releases stay durable). A claim returns without waiting
    /// for the disk, so a first execution waits for one flush fewer: the
    /// claim's WAL is flushed by the WAL writer within `3 ×
    /// wal_writer_delay` (600 ms by default), or earlier by the next durable
    /// commit on the server, because WAL is flushed in order.
    ///
    /// What it costs: a server crash within that window can forget a claim.
    /// The claim is durable as soon as anything committed durably after it
    /// on the same server, so what can be forgotten is a claim whose
    /// execution has committed nothing there yet; a duplicate arriving after
    /// the restart then acquires the key again while the first execution
    /// may still run.
    ///
    /// When it keeps exactly once: when the execution's effects are rows in
    /// this database committed **with the completion**
    /// ([`PostgresStore::complete_in`]). The completion matches the lease's
    /// token and fence in the effect's own transaction, so of the two
    /// executions of a forgotten claim only the one holding the current
    /// lease can commit; the other's transaction fails with `LeaseLost` and
    /// rolls back with its rows.
    ///
    /// When not to use it: effects outside this database (an HTTP call, a
    /// message, another store), a completion in a separate transaction from
    /// the effect, or a fence handed to another system (after a crash the
    /// fences of forgotten claims can be drawn again).
    Asynchronous,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            statement_timeout: Some(Duration::from_secs(5)),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            read_first: ReadFirst::Adaptive,
            fast_claim: true,
            claim_commit: ClaimCommit::Durable,
        }
    }
}

impl PostgresStoreBuilder {
    /// The schema holding the store's tables, functions and migration history
    /// (default `idempotency`). Must be a plain lowercase identifier
    /// (`[a-z_][a-z0-9_]*`, at most 48 bytes, not starting with `pg_`): it is
    /// substituted into the store's static SQL once, when the store is built.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// PostgreSQL's `statement_timeout` on the connections of the pool
    /// [`connect_lazy`](Self::connect_lazy) builds (default 5 s, the
    /// default `Policy::store_timeout`); `None` leaves the server's setting.
    ///
    /// The store keeps no timer of its own on the client: the caller's
    /// deadline (`Policy::store_timeout`, applied to every store call by the
    /// lease engine, the `Idempotent` runner and the HTTP layer) is the one
    /// client-side bound. This is its server-side half: a statement whose
    /// caller gave up is cancelled by PostgreSQL (the store answers
    /// [`StoreError::Timeout`] to anyone still waiting) instead of running on
    /// behind a lock and landing later, unseen, as a claim nobody holds.
    /// Keep it at or below the caller's store timeout. With your own pool
    /// (`build`), set it in the pool's connect options:
    /// `PgConnectOptions::options([("statement_timeout", "5s")])`.
    pub fn statement_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.statement_timeout = timeout.into();
        self
    }

    /// Pool size for [`connect_lazy`](Self::connect_lazy) (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long [`connect_lazy`](Self::connect_lazy)'s pool waits for a
    /// connection before the operation fails with
    /// [`StoreError::Unavailable`] (default 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Whether a claim first runs the read-only `peek.sql` (one indexed
    /// read, no row lock, no WAL) and answers a replay, an in-flight
    /// duplicate, a terminal failure or a fingerprint mismatch from it; the
    /// claim statement runs only when the read says it must. Default
    /// [`ReadFirst::Adaptive`]: read first while most recent claims were
    /// such answers (see [`idempotency_core::peek`]).
    pub fn read_first(mut self, read_first: ReadFirst) -> Self {
        self.read_first = read_first;
        self
    }

    /// Whether a claim tries the plain insert of `claim_fast.sql` before
    /// the general claim statement (default `true`). Off, every claim that
    /// gets past the peek is `claim.sql` alone: the same decisions, a
    /// costlier first execution. For the tests that keep the general
    /// statement's every branch covered.
    #[doc(hidden)]
    pub fn fast_claim(mut self, fast: bool) -> Self {
        self.fast_claim = fast;
        self
    }

    /// How a claim's transaction commits (default [`ClaimCommit::Durable`]).
    /// [`ClaimCommit::Asynchronous`] saves a first execution one wait for
    /// the disk and is safe only with the completion in the effect's
    /// transaction ([`PostgresStore::complete_in`]); read its caveats first.
    pub fn claim_commit(mut self, commit: ClaimCommit) -> Self {
        self.claim_commit = commit;
        self
    }

    /// A store over an existing pool (shared with the application, so
    /// [`PostgresStore::complete_in`] can join its transactions).
    ///
    /// # Errors
    ///
    /// [`SetupError::InvalidSchema`] if the schema name is not accepted.
    pub fn build(self, pool: PgPool) -> Result<PostgresStore, SetupError> {
        validate_schema(&self.schema)?;
        let channel = format!("{}_changes", self.schema);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                sql: Queries::new(&self.schema, &channel, self.claim_commit),
                pool,
                schema: self.schema.into_boxed_str(),
                channel: channel.into_boxed_str(),
                offset_ms: AtomicU64::new(0),
                notifier: Notifier::new(),
                peek: PeekGate::new(self.read_first),
                fast_claim: self.fast_claim,
            }),
        })
    }

    /// A store with its own pool for `url`; connections open on first use.
    ///
    /// # Errors
    ///
    /// [`SetupError::InvalidUrl`] if the URL cannot be parsed,
    /// [`SetupError::InvalidSchema`] if the schema name is not accepted.
    pub fn connect_lazy(self, url: &str) -> Result<PostgresStore, SetupError> {
        let mut options: PgConnectOptions = url
            .parse()
            .map_err(|source| SetupError::InvalidUrl { source })?;
        if let Some(t) = self.statement_timeout {
            options = options.options([("statement_timeout", format!("{}ms", ms(t).max(1)))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options);
        self.build(pool)
    }
}

fn validate_schema(name: &str) -> Result<(), SetupError> {
    let invalid = |reason| {
        Err(SetupError::InvalidSchema {
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.bytes().next() else {
        return invalid("empty");
    };
    if name.len() > MAX_SCHEMA_LEN {
        return invalid("longer than 48 bytes");
    }
    if !(first.is_ascii_lowercase() || first == b'_') {
        return invalid("must start with a lowercase letter or underscore");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return invalid("only lowercase ASCII letters, digits and underscores are allowed");
    }
    if name.starts_with("pg_") {
        return invalid("the pg_ prefix is reserved");
    }
    Ok(())
}

impl PostgresStore {
    /// A store over `pool` in the default schema with default settings.
    pub fn new(pool: PgPool) -> Self {
        match PostgresStoreBuilder::default().build(pool) {
            Ok(store) => store,
            // The default schema name is valid.
            Err(e) => unreachable!("default schema rejected: {e}"),
        }
    }

    /// A builder for a custom schema, statement timeout or pool.
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The store's schema.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The `LISTEN/NOTIFY` channel (`<schema>_changes`) that carries the hex
    /// storage key of every record leaving `PENDING`.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Creates the schema and applies the embedded migrations not applied yet.
    /// Returns how many were applied.
    ///
    /// Idempotent, and safe to run from several processes at once: it runs in
    /// one transaction under an advisory lock named after the schema, records
    /// what it applied in `<schema>.migrations` (apart from any migration
    /// history of the application), and refuses to run over a migration that
    /// was modified after it was applied.
    ///
    /// # Errors
    ///
    /// [`SetupError::MigrationModified`], or [`SetupError::Store`] when the
    /// database fails or cannot be reached (nothing is applied then).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future rolls the migration transaction back.
    pub async fn migrate(&self) -> Result<usize, SetupError> {
        migrate::run(
            &self.inner.pool,
            &self.inner.sql,
            &self.inner.schema,
            &self.inner.channel,
        )
        .await
    }

    /// `Pending` (this lease) → `Completed`, inside the caller's transaction.
    ///
    /// Write the business rows and complete the record on the same
    /// connection, then commit: both are kept, or neither. A transaction that
    /// is rolled back (or never committed: a crash) leaves the record
    /// `Pending`; its lease runs out and a retry takes it over and executes
    /// against a database holding none of the first attempt's rows. Waiters
    /// in other processes are woken when the transaction commits.
    ///
    /// The update takes the record's row lock until the transaction ends, so
    /// commit promptly after calling this.
    ///
    /// ```no_run
    /// # use idempotency_core::{Completion, Lease, Outcome, StoreError};
    /// # use idempotency_postgres::PostgresStore;
    /// # async fn f(store: PostgresStore, lease: Lease) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES ($1)")
    ///     .bind(42_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let outcome = Outcome::Value(br#"{"order":42}"#.to_vec().into());
    /// store.complete_in(&mut tx, &lease, Completion::new(outcome)).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] if the lease no longer owns the record (it
    /// expired and was taken over, or was resolved): roll the transaction
    /// back. Connection failures map as for every operation.
    ///
    /// # Cancel safety
    ///
    /// The update only counts once the caller commits; dropping this future
    /// (or the transaction) changes nothing that survives a rollback.
    pub async fn complete_in(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        completion: Completion,
    ) -> Result<(), StoreError> {
        let outcome = completion.outcome.encode();
        let done = self
            .run(
                "complete_in",
                sqlx::query(self.inner.sql.complete.sql())
                    .bind(&lease.key.as_bytes()[..])
                    .bind(lease.token.as_uuid())
                    .bind(fence(lease))
                    .bind(outcome)
                    .bind(completion.resource)
                    .bind(ms(lease.retention))
                    .bind(self.offset())
                    .execute(conn),
            )
            .await?;
        guarded(done.rows_affected())
    }

    /// Starts a background task that deletes expired records every `period`,
    /// `batch` rows per statement, until a batch comes back short.
    ///
    /// One reaper per schema runs at a time across processes (others skip
    /// their turn), rows locked by concurrent claims are skipped, and each
    /// batch is its own short transaction. Every deleted row is counted in
    /// the `idempotency_postgres_reaped_total{schema}` counter. The task stops when
    /// the returned [`Reaper`] is dropped or shut down.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_reaper(&self, period: Duration, batch: usize) -> Reaper {
        Reaper::spawn(self.clone(), period, batch)
    }

    /// The statements, specialised to the store's schema.
    pub(crate) fn queries(&self) -> &Queries {
        &self.inner.sql
    }

    pub(crate) fn offset(&self) -> i64 {
        i64::try_from(self.inner.offset_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    }

    /// Runs one database operation, mapping its error and recording its
    /// latency. No client-side timer: the caller's deadline bounds the call,
    /// PostgreSQL's `statement_timeout` the statement.
    async fn run<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        timed_statement(operation, fut).await
    }

    /// One run of a claim statement (`claim.sql`, or `claim_fast.sql` as
    /// `"claim_fast"`): `None` when it leaves the decision to `claim.sql`
    /// (a concurrent writer overtook its snapshot; for the fast one, also a
    /// record it may not take), else whether it wrote and the record it saw.
    async fn claim_once(
        &self,
        operation: &'static str,
        stmt: &Stmt,
        req: &ClaimRequest,
        token: LeaseToken,
        max_attempts: u32,
    ) -> Result<Option<(bool, RawRecord)>, StoreError> {
        let row = self
            .run(
                operation,
                sqlx::query(stmt.sql())
                    .bind(&req.key.as_bytes()[..])
                    .bind(&req.fingerprint.as_bytes()[..])
                    .bind(token.as_uuid())
                    .bind(ms(req.lease))
                    .bind(ms(req.retention))
                    .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
                    .bind(self.offset())
                    .fetch_optional(&self.inner.pool),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let written: bool = row.try_get("written").map_err(map_sqlx)?;
        Ok(Some((written, RawRecord::from_row(&row)?)))
    }

    /// The record when a claim would leave it untouched (`peek.sql`).
    async fn peek(
        &self,
        req: &ClaimRequest,
        max_attempts: u32,
    ) -> Result<Option<RawRecord>, StoreError> {
        let row = self
            .run(
                "peek",
                sqlx::query(self.inner.sql.peek.sql())
                    .bind(&req.key.as_bytes()[..])
                    .bind(&req.fingerprint.as_bytes()[..])
                    .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
                    .bind(self.offset())
                    .fetch_optional(&self.inner.pool),
            )
            .await?;
        row.map(|row| RawRecord::from_row(&row)).transpose()
    }

    /// Turns the claim statement's row into the decision.
    async fn decide(
        &self,
        req: &ClaimRequest,
        token: LeaseToken,
        written: bool,
        raw: RawRecord,
    ) -> Result<Claim, StoreError> {
        if written {
            return match raw.state.as_str() {
                "PENDING" => {
                    let kind = match raw.claim_kind.as_str() {
                        "NEW" => ClaimKind::New,
                        "TAKEOVER" => ClaimKind::Takeover,
                        _ => ClaimKind::Retry,
                    };
                    let lease = Lease {
                        key: req.key,
                        token,
                        fence: raw.fence(),
                        attempt: raw.attempts(),
                        deadline: raw.lease_deadline()?,
                        lease_duration: req.lease,
                        retention: req.retention,
                    };
                    Ok(Claim::Acquired { lease, kind })
                }
                // An abandoned lease with no attempts left, just settled.
                _ => Ok(Claim::Failed(raw.failed()?)),
            };
        }
        if raw.state == "CORRUPTED" {
            return match raw.state()? {
                Decoded::State(RecordState::Corrupted(c)) => {
                    Ok(Claim::Corrupted { detail: c.detail })
                }
                _ => unreachable!("a CORRUPTED row decodes as corrupted"),
            };
        }
        if raw.fingerprint()? != req.fingerprint {
            return Ok(Claim::Mismatch);
        }
        match raw.state()? {
            Decoded::State(RecordState::Pending(p)) => Ok(Claim::InFlight {
                retry_after: p.lease_deadline.saturating_since(raw.now()),
                attempt: raw.attempts(),
            }),
            Decoded::State(RecordState::Completed(c)) => Ok(Claim::Completed(c)),
            Decoded::State(RecordState::Failed(f)) => Ok(Claim::Failed(f)),
            Decoded::State(RecordState::Corrupted(c)) => Ok(Claim::Corrupted { detail: c.detail }),
            Decoded::Undecodable(reason) => {
                let detail = self.mark_undecodable(&req.key, &raw, reason).await?;
                Ok(Claim::Corrupted { detail })
            }
        }
    }

    /// The record just read holds an outcome that cannot be decoded: mark
    /// that version `CORRUPTED` (an operator resolves it) and say why.
    async fn mark_undecodable(
        &self,
        key: &StorageKey,
        raw: &RawRecord,
        reason: String,
    ) -> Result<String, StoreError> {
        let detail = format!("{reason} (detected by the postgres store)");
        let done = self
            .run(
                "mark_undecodable",
                sqlx::query(self.inner.sql.mark_undecodable.sql())
                    .bind(&key.as_bytes()[..])
                    .bind(&detail)
                    .bind(&raw.state)
                    .bind(raw.fence)
                    .bind(raw.outcome.as_deref())
                    .bind(self.offset())
                    .execute(&self.inner.pool),
            )
            .await?;
        metrics::counter!(CORRUPTED_TOTAL, "schema" => self.inner.schema.to_string()).increment(1);
        tracing::error!(
            key = %key.short(),
            fence = raw.fence,
            marked = done.rows_affected() == 1,
            "stored outcome cannot be decoded; record marked corrupted"
        );
        Ok(detail)
    }

    /// Milliseconds left on the live lease of `key`, `None` when it is not a
    /// live `PENDING` record. The first waiter of this process also marks
    /// the record watched, so its completion notifies (migration 0003);
    /// later ones only read.
    async fn lease_left(
        &self,
        key: &StorageKey,
        watch: bool,
    ) -> Result<Option<Duration>, StoreError> {
        let (operation, stmt) = if watch {
            ("watch", &self.inner.sql.watch)
        } else {
            ("lease_left", &self.inner.sql.lease_left)
        };
        let left: Option<i64> = self
            .run(
                operation,
                sqlx::query_scalar(stmt.sql())
                    .bind(&key.as_bytes()[..])
                    .bind(self.offset())
                    .fetch_optional(&self.inner.pool),
            )
            .await?
            .flatten();
        Ok(left.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    /// Number of keys with waiters in this process (for tests).
    #[doc(hidden)]
    pub fn waiting_keys(&self) -> usize {
        self.inner.notifier.waiting_keys()
    }

    fn record(
        key: StorageKey,
        row: &sqlx::postgres::PgRow,
        raw: &RawRecord,
        state: RecordState,
    ) -> Result<Record, StoreError> {
        let created: i64 = row.try_get("created_ms").map_err(map_sqlx)?;
        let expires: Option<i64> = row.try_get("expires_ms").map_err(map_sqlx)?;
        Ok(Record {
            key,
            fingerprint: raw.fingerprint()?,
            fence: raw.fence(),
            attempts: raw.attempts(),
            created_at: ts(created),
            expires_at: expires.map_or(Timestamp::MAX, ts),
            state,
        })
    }
}

fn fence(lease: &Lease) -> i64 {
    i64::try_from(lease.fence).unwrap_or(i64::MAX)
}

/// A guarded write changed one row, or the lease was lost.
fn guarded(rows: u64) -> Result<(), StoreError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

impl IdempotencyStore for PostgresStore {
    /// One statement for a new key or an answer without a write, two for a
    /// takeover or a retry; see the crate docs. A claim that loses a race
    /// to a concurrent writer runs again (it then sees the winner's record).
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let max_attempts = req.max_attempts.max(1);
        let token = LeaseToken::new();
        // A replay, a refusal or an in-flight answer is one indexed read.
        let gate = &self.inner.peek;
        let peeked = gate.should_peek();
        if peeked {
            let raw = self.peek(req, max_attempts).await?;
            gate.observe(raw.is_some());
            if let Some(raw) = raw {
                return self.decide(req, token, false, raw).await;
            }
        }
        // A new key is one plain insert; so is an answer without a write
        // when the gate did not peek. Anything else is `claim.sql`'s.
        let sql = &self.inner.sql;
        let mut stmt = if self.inner.fast_claim {
            ("claim_fast", &sql.claim_fast)
        } else {
            ("claim", &sql.claim)
        };
        // `CLAIM_ROUNDS` runs of `claim.sql`, after the fast one.
        for _ in 0..CLAIM_ROUNDS + u32::from(self.inner.fast_claim) {
            if let Some((written, raw)) = self
                .claim_once(stmt.0, stmt.1, req, token, max_attempts)
                .await?
            {
                let claim = self.decide(req, token, written, raw).await;
                if !peeked && let Ok(claim) = &claim {
                    gate.observe(PeekGate::would_answer(claim));
                }
                return claim;
            }
            stmt = ("claim", &sql.claim);
        }
        Err(StoreError::backend(ClaimContention(CLAIM_ROUNDS)))
    }

    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        let done = self
            .run(
                "complete",
                sqlx::query(self.inner.sql.complete.sql())
                    .bind(&lease.key.as_bytes()[..])
                    .bind(lease.token.as_uuid())
                    .bind(fence(lease))
                    .bind(completion.outcome.encode())
                    .bind(completion.resource)
                    .bind(ms(lease.retention))
                    .bind(self.offset())
                    .execute(&self.inner.pool),
            )
            .await?;
        guarded(done.rows_affected())
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        let done = self
            .run(
                "fail",
                sqlx::query(self.inner.sql.fail.sql())
                    .bind(&lease.key.as_bytes()[..])
                    .bind(lease.token.as_uuid())
                    .bind(fence(lease))
                    .bind(failure.reason)
                    .bind(failure.retryable)
                    .bind(ms(lease.retention))
                    .bind(self.offset())
                    .execute(&self.inner.pool),
            )
            .await?;
        guarded(done.rows_affected())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let done = self
            .run(
                "release",
                sqlx::query(self.inner.sql.release.sql())
                    .bind(&lease.key.as_bytes()[..])
                    .bind(lease.token.as_uuid())
                    .bind(fence(lease))
                    .bind(self.offset())
                    .execute(&self.inner.pool),
            )
            .await?;
        guarded(done.rows_affected())
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let deadline: Option<Option<i64>> = self
            .run(
                "renew",
                sqlx::query_scalar(self.inner.sql.renew.sql())
                    .bind(&lease.key.as_bytes()[..])
                    .bind(lease.token.as_uuid())
                    .bind(fence(lease))
                    .bind(ms(lease.lease_duration))
                    .bind(self.offset())
                    .fetch_optional(&self.inner.pool),
            )
            .await?;
        match deadline.flatten() {
            Some(ms) => Ok(Lease {
                deadline: ts(ms),
                ..lease.clone()
            }),
            None => Err(StoreError::LeaseLost),
        }
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let row = self
            .run(
                "get",
                sqlx::query(self.inner.sql.get.sql())
                    .bind(&key.as_bytes()[..])
                    .bind(self.offset())
                    .fetch_optional(&self.inner.pool),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let raw = RawRecord::from_row(&row)?;
        let state = match raw.state()? {
            Decoded::State(state) => state,
            Decoded::Undecodable(reason) => {
                let detail = self.mark_undecodable(key, &raw, reason).await?;
                let record = Self::record(
                    *key,
                    &row,
                    &raw,
                    RecordState::Corrupted(Corrupted {
                        detail,
                        detected_at: raw.now(),
                    }),
                )?;
                return Ok(Some(Record {
                    expires_at: Timestamp::MAX,
                    ..record
                }));
            }
        };
        Self::record(*key, &row, &raw, state).map(Some)
    }

    /// One guarded `UPDATE ... WHERE state = $observed AND fence = $observed`
    /// (and not expired); see `sql/mark_corrupted.sql`.
    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        let row = self
            .run(
                "mark_corrupted",
                sqlx::query(self.inner.sql.mark_corrupted.sql())
                    .bind(&key.as_bytes()[..])
                    .bind(detail)
                    .bind(observed.state.name())
                    .bind(i64::try_from(observed.fence).unwrap_or(i64::MAX))
                    .bind(self.offset())
                    .fetch_one(&self.inner.pool),
            )
            .await?;
        let marked: bool = row.try_get("marked").map_err(map_sqlx)?;
        let found: bool = row.try_get("found").map_err(map_sqlx)?;
        match (marked, found) {
            (true, _) => Ok(()),
            (false, true) => Err(StoreError::Conflict),
            (false, false) => Err(StoreError::NotFound),
        }
    }

    async fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> Result<Record, StoreError> {
        let sql = &self.inner.sql;
        let offset = self.offset();
        self.run("resolve", async {
            let mut tx = self.inner.pool.begin().await?;
            let Some(row) = sqlx::query(sql.resolve_lock.sql())
                .bind(&key.as_bytes()[..])
                .bind(offset)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(Err(StoreError::NotFound));
            };
            if row.try_get::<bool, _>("expired")? {
                return Ok(Err(StoreError::NotFound));
            }
            let before = match resolve_before(*key, &row) {
                Ok(before) => before,
                Err(e) => return Ok(Err(e)),
            };
            match &before.state {
                RecordState::Corrupted(_) | RecordState::Pending(_) => {}
                other => {
                    return Ok(Err(StoreError::InvalidState {
                        operation: "resolve",
                        state: other.name(),
                    }));
                }
            }
            match resolution {
                Resolution::Delete => {
                    sqlx::query(sql.resolve_delete.sql())
                        .bind(&key.as_bytes()[..])
                        .execute(&mut *tx)
                        .await?;
                }
                Resolution::Fail(failure) => {
                    sqlx::query(sql.resolve_fail.sql())
                        .bind(&key.as_bytes()[..])
                        .bind(failure.reason)
                        .bind(failure.retryable)
                        .bind(offset)
                        .execute(&mut *tx)
                        .await?;
                }
                other => {
                    return Ok(Err(StoreError::backend(format!(
                        "unsupported resolution: {other:?}"
                    ))));
                }
            }
            tx.commit().await?;
            Ok(Ok(before))
        })
        .await?
    }

    /// Waits for a `NOTIFY` about `key` from any process, bounded by the
    /// lease deadline and `timeout`; see the crate docs.
    async fn wait_for_change(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let listening = self
            .inner
            .notifier
            .ensure_listening(&self.inner.pool, &self.inner.channel, timeout)
            .await;
        let timeout = if listening {
            timeout
        } else {
            timeout.min(POLL_INTERVAL)
        };
        wait::wait_for_change(self.inner.notifier.waiters(), key, timeout, |first| {
            self.lease_left(key, first)
        })
        .await
    }
}

/// Runs one statement, mapping its error and timing it under
/// `idempotency_postgres_statement_seconds{operation}` (the store's
/// operations and its inbox's alike).
pub(crate) async fn timed_statement<T>(
    operation: &'static str,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let out = statement.await.map_err(map_sqlx);
    metrics::histogram!(STATEMENT_SECONDS, "operation" => operation)
        .record(start.elapsed().as_secs_f64());
    if let Err(error) = &out {
        tracing::debug!(operation, %error, "postgres store operation failed");
    }
    out
}

/// The feed of `idempotency_core::cache::ReplayCache`: the store's
/// `LISTEN` connection (migrations 3 and 5), live while it listens.
impl idempotency_core::cache::Invalidations for PostgresStore {
    fn invalidations(&self) -> idempotency_core::cache::InvalidationFeed {
        self.inner
            .notifier
            .invalidations(&self.inner.pool, &self.inner.channel)
    }
}

/// The record as it was before an operator's resolution (an undecodable
/// outcome reads as corrupted).
pub(crate) fn resolve_before(
    key: StorageKey,
    row: &sqlx::postgres::PgRow,
) -> Result<Record, StoreError> {
    let raw = RawRecord::from_row(row)?;
    let state = match raw.state()? {
        Decoded::State(s) => s,
        Decoded::Undecodable(detail) => RecordState::Corrupted(Corrupted {
            detail,
            detected_at: raw.now(),
        }),
    };
    PostgresStore::record(key, row, &raw, state)
}

impl PurgeExpired for PostgresStore {
    /// Deletes up to `batch` expired records in one short transaction, oldest
    /// expiry first, skipping rows locked by concurrent claims. If another
    /// reaper of the same schema is running (in any process), returns 0 at once.
    async fn purge_expired(&self, batch: usize) -> Result<u64, StoreError> {
        let sql = &self.inner.sql;
        let offset = self.offset();
        let lock = format!("reaper:{}", self.inner.schema);
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let deleted = self
            .run("purge_expired", async {
                let mut tx = self.inner.pool.begin().await?;
                let got: bool = sqlx::query_scalar(sql.reaper_lock.sql())
                    .bind(&lock)
                    .fetch_one(&mut *tx)
                    .await?;
                if !got {
                    tx.rollback().await?;
                    return Ok(0);
                }
                let done = sqlx::query(sql.purge.sql())
                    .bind(limit)
                    .bind(offset)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            })
            .await?;
        metrics::counter!(REAPED_TOTAL, "schema" => self.inner.schema.to_string())
            .increment(deleted);
        Ok(deleted)
    }
}

impl ClockControl for PostgresStore {
    fn advance(&self, by: Duration) {
        let add = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .inner
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(
                    v.saturating_add(add)
                        .min(u64::try_from(ms(Duration::MAX)).unwrap_or(0)),
                )
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["idempotency", "_x", "a1_b2", &"a".repeat(48)] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "1abc",
            "a-b",
            "a.b",
            "a;drop",
            "pg_catalog",
            r#"quo"te"#,
            &"a".repeat(49),
        ] {
            assert!(
                matches!(validate_schema(bad), Err(SetupError::InvalidSchema { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn guarded_writes() {
        assert!(guarded(1).is_ok());
        assert!(matches!(guarded(0), Err(StoreError::LeaseLost)));
    }
}
