//! The PostgreSQL sink: an append-only table with one SHA-256 hash chain
//! per stream, its migrations and its verifier.
//!
//! See the crate README for the table layout, the hash construction and
//! the insert-only role the application should connect as.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Row, Transaction};

use crate::error::{AuditError, BatchError, RefusedEvent};
use crate::event::{AuditEvent, MAX_CORRELATION_ID_LEN};
use crate::modes::TransactionalSink;
use crate::sink::AuditSink;

mod migrate;
mod roles;
mod tlog;
mod verify;

pub use migrate::MigrationReport;
pub use roles::AuditRoles;
/// The `sqlx` this sink is built on, for naming its types (`PgPool`, `Transaction`, ...).
pub use sqlx;
pub use tlog::{CHECKPOINT_METRIC, Checkpointed, Checkpointer, PostgresTlog};

/// The schema the sink uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "audit";

/// Longest accepted stream name, in bytes.
pub const MAX_STREAM_LEN: usize = 200;

/// Longest accepted event `type`, in bytes (an indexed column).
pub const MAX_TYPE_LEN: usize = 255;

/// Longest accepted event `subject`, in bytes (an indexed column).
pub const MAX_SUBJECT_LEN: usize = 1024;

/// Name of the counter of events the sink refused on their own in a batch,
/// labelled `reason` (`invalid_stream`, `field_too_long`, `duplicate`,
/// `database`).
pub const REFUSED_METRIC: &str = "audit_events_refused_total";

/// SQLSTATE raised by the triggers when something tries to update, delete
/// or truncate the audit tables, insert into the events table other than
/// through the append functions, or move a stream head back.
pub const APPEND_ONLY_SQLSTATE: &str = "AUD01";

/// Rows read per query while verifying, unless told otherwise.
const DEFAULT_VERIFY_BATCH: usize = 100_000;

/// Most events one call of the database's `append_events` takes; a larger
/// batch for one stream is sent in several calls of the same transaction.
pub const MAX_APPEND_CHUNK: usize = 10_000;

/// Whether `name` is a plain lowercase identifier: 1 to 63 bytes of
/// `[a-z0-9_]`, not starting with a digit or `pg_`.
pub(crate) fn is_identifier(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_")
}

/// A validated schema name, quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schema {
    name: Arc<str>,
    quoted: Arc<str>,
}

impl Schema {
    pub(crate) fn new(name: &str) -> Result<Self, AuditError> {
        if !is_identifier(name) {
            return Err(AuditError::InvalidSchema {
                name: name.to_owned(),
            });
        }
        Ok(Self {
            name: name.into(),
            quoted: format!("\"{name}\"").into(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Substitutes the quoted schema name for `{{schema}}`, and the bare
    /// name (a valid identifier, safe in a string literal) for
    /// `{{schema_name}}`, in a SQL template.
    pub(crate) fn apply(&self, template: &str) -> String {
        template
            .replace("{{schema_name}}", &self.name)
            .replace("{{schema}}", &self.quoted)
    }
}

/// The statements, built once per schema from fixed templates.
#[derive(Debug)]
struct Sql {
    append: Arc<str>,
    append_one: Arc<str>,
    head: Arc<str>,
    bounds: Arc<str>,
    page: Arc<str>,
    next_stream: Arc<str>,
}

impl Sql {
    fn new(schema: &Schema) -> Self {
        let s = |t: &str| -> Arc<str> { schema.apply(t).into() };
        Self {
            append: s("SELECT first_seq, hashes FROM {{schema}}.append_events(\
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
            append_one: s("SELECT seq, hash FROM {{schema}}.append_event(\
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
            head: s("SELECT last_seq, last_hash FROM {{schema}}.streams WHERE stream = $1"),
            bounds: s("SELECT min(seq) AS min_seq, max(seq) AS max_seq \
                 FROM {{schema}}.events WHERE stream = $1"),
            // verify.rs reads these columns by position; the stream is the
            // transaction's `idempotency_audit.verify_stream` setting (COPY
            // takes no parameters), the bounds are written in per page.
            page: s(
                "COPY (SELECT seq, prev_hash, hash, content::text AS content, id, type, source, \
                  subject, time, actor_id, actor_tenant, outcome, correlation_id, key_hash \
                 FROM {{schema}}.events \
                 WHERE stream = current_setting('idempotency_audit.verify_stream') \
                   AND seq > {{after}} AND seq <= {{through}} ORDER BY seq) \
                 TO STDOUT (FORMAT binary)",
            ),
            next_stream: s("SELECT min(stream) AS stream FROM ( \
                  (SELECT stream FROM {{schema}}.streams WHERE stream > $1 ORDER BY stream LIMIT 1) \
                  UNION ALL \
                  (SELECT stream FROM {{schema}}.events WHERE stream > $1 ORDER BY stream LIMIT 1) \
                 ) AS next"),
        }
    }
}

/// Which stream (hash chain) an event is appended to.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum StreamBy {
    /// The event's `source` (the default): one chain per producer, e.g. `/promotions`.
    #[default]
    Source,
    /// One fixed stream for every event.
    Fixed(String),
    /// Computed from the event (e.g. per tenant).
    Custom(Arc<dyn Fn(&AuditEvent) -> String + Send + Sync>),
}

impl StreamBy {
    /// The stream for `event`.
    pub fn stream_for(&self, event: &AuditEvent) -> String {
        match self {
            Self::Source => event.source.clone(),
            Self::Fixed(s) => s.clone(),
            Self::Custom(f) => f(event),
        }
    }
}

impl fmt::Debug for StreamBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source => f.write_str("Source"),
            Self::Fixed(s) => f.debug_tuple("Fixed").field(s).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream.
    pub stream: String,
    /// Its sequence number in the stream (from 1, without gaps).
    pub seq: u64,
    /// The row's chain hash.
    pub hash: [u8; 32],
}

/// Checks a stream name: 1 to [`MAX_STREAM_LEN`] bytes, no control characters.
///
/// # Errors
///
/// [`AuditError::InvalidStream`] otherwise.
pub fn validate_stream(stream: &str) -> Result<(), AuditError> {
    let reason = if stream.is_empty() {
        "empty"
    } else if stream.len() > MAX_STREAM_LEN {
        "longer than 200 bytes"
    } else if stream.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(AuditError::InvalidStream { reason })
}

/// Checks the event's indexed text columns against what the table can hold
/// (a B-tree index entry is at most about 2.7 kB): `type` at most
/// [`MAX_TYPE_LEN`] bytes, `subject` at most [`MAX_SUBJECT_LEN`],
/// `correlation_id` at most [`MAX_CORRELATION_ID_LEN`] (what the builder keeps).
///
/// # Errors
///
/// [`AuditError::FieldTooLong`] naming the first field over its bound.
pub fn validate_event(event: &AuditEvent) -> Result<(), AuditError> {
    let fields = [
        ("type", Some(event.event_type.as_str()), MAX_TYPE_LEN),
        ("subject", event.subject.as_deref(), MAX_SUBJECT_LEN),
        (
            "correlation_id",
            event.correlation_id.as_deref(),
            MAX_CORRELATION_ID_LEN,
        ),
    ];
    for (field, value, max) in fields {
        if value.is_some_and(|v| v.len() > max) {
            return Err(AuditError::FieldTooLong { field, max });
        }
    }
    Ok(())
}

/// Whether a write error is the event's own fault (its stream, a field, a
/// duplicate id, or a database error of SQLSTATE class 22 data exception,
/// 23 integrity constraint violation or 54 program limit exceeded, such as
/// an index entry too large), rather than the sink's (a missing table, a
/// privilege, a timeout, a serialization failure, a lost connection).
fn event_fault(e: &AuditError) -> bool {
    match e {
        AuditError::InvalidStream { .. }
        | AuditError::FieldTooLong { .. }
        | AuditError::Duplicate { .. } => true,
        AuditError::Backend { source } => source
            .downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(|d| d.code())
            .is_some_and(|c| ["22", "23", "54"].iter().any(|class| c.starts_with(class))),
        _ => false,
    }
}

/// The `reason` label of a refused event.
fn refusal_reason(e: &AuditError) -> &'static str {
    match e {
        AuditError::InvalidStream { .. } => "invalid_stream",
        AuditError::FieldTooLong { .. } => "field_too_long",
        AuditError::Duplicate { .. } => "duplicate",
        _ => "database",
    }
}

/// PostgreSQL text cannot hold NUL: queryable columns store U+FFFD instead
/// (the hashed content keeps the exact value, JSON-escaped).
pub(crate) fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

pub(crate) fn map_err(e: sqlx::Error) -> AuditError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => AuditError::unavailable(e),
        e => AuditError::backend(e),
    }
}

/// A duplicate id of a single-event append is [`AuditError::Duplicate`];
/// in a batch it stays a backend error (of class 23: an event's fault, so
/// the batch is written again one by one to find it).
fn map_insert_err(e: sqlx::Error, event: Option<&AuditEvent>) -> AuditError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
        && db.constraint() == Some("events_id_key")
        && let Some(event) = event
    {
        return AuditError::Duplicate { id: event.id };
    }
    map_err(e)
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], AuditError> {
    bytes
        .try_into()
        .map_err(|_| AuditError::backend(format!("stored hash has {} bytes, not 32", bytes.len())))
}

/// Appends events to an append-only PostgreSQL table, one hash chain per
/// stream, and verifies the chains.
///
/// Every row gets the next sequence number of its stream and
/// `hash = SHA-256(prev_hash ‖ be64(seq) ‖ be64(len(stream)) ‖ stream ‖ content)`
/// ([`chain_hash`](crate::chain_hash)), both assigned in the database by the
/// append functions (`append_event`, `append_events`), which lock the
/// stream's head row once per call, so concurrent writers never fork or gap
/// a chain. The application's role needs only the schema's writer role
/// ([`AuditRoles`]). Which stream an event goes to is decided by
/// [`StreamBy`] (default: the event's source).
///
/// A batch ([`AuditSink::append_batch`]) is written in one transaction, but
/// one bad event never costs the others: an event whose stream name or
/// bounded fields are invalid ([`validate_stream`], [`validate_event`]) is
/// refused before anything is sent, and when the database refuses the batch
/// because of one of its events (a duplicate id, or any error of SQLSTATE
/// class 22 data exception, 23 integrity constraint violation or 54
/// program limit exceeded), the events are written again one by one (a
/// savepoint each) so that only the events the database refuses are left
/// out. A failure of the sink itself (unreachable, a missing table or
/// privilege, a timeout) leaves the batch unwritten. Each refused event is
/// counted ([`refused`](Self::refused) and the `metrics` counter
/// `audit_events_refused_total{reason}`), logged at warn level (target
/// `audit`) with its reason, and reported in [`BatchError::refused`].
///
/// Cheap to clone; clones share the refusal counter.
#[derive(Clone)]
pub struct PostgresSink {
    pool: PgPool,
    schema: Schema,
    sql: Arc<Sql>,
    stream: StreamBy,
    verify_batch: usize,
    refused: Arc<AtomicU64>,
    /// Named with [`with_roles`](PostgresSink::with_roles); derived from the schema otherwise.
    roles: Option<AuditRoles>,
    least_privilege: bool,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("schema", &self.schema.name())
            .field("stream", &self.stream)
            .field("roles", &self.roles.as_ref().map(AuditRoles::writer))
            .field("least_privilege", &self.least_privilege)
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// A sink on `pool`, schema [`DEFAULT_SCHEMA`], streams by source.
    pub fn new(pool: PgPool) -> Self {
        let schema = Schema::new(DEFAULT_SCHEMA).unwrap_or_else(|_| unreachable!("valid"));
        Self {
            pool,
            sql: Arc::new(Sql::new(&schema)),
            schema,
            stream: StreamBy::Source,
            verify_batch: DEFAULT_VERIFY_BATCH,
            refused: Arc::new(AtomicU64::new(0)),
            roles: None,
            least_privilege: false,
        }
    }

    /// Names the schema's owner, writer and reader roles (default:
    /// [`AuditRoles::for_schema`], e.g. `audit_owner`, `audit_writer`,
    /// `audit_reader`).
    #[must_use]
    pub fn with_roles(mut self, roles: AuditRoles) -> Self {
        self.roles = Some(roles);
        self
    }

    /// The schema's roles: named with [`with_roles`](Self::with_roles), or
    /// derived from the schema name.
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidRole`] when derived names would be too long.
    pub fn roles(&self) -> Result<AuditRoles, AuditError> {
        match &self.roles {
            Some(r) => Ok(r.clone()),
            None => AuditRoles::for_schema(self.schema.name()),
        }
    }

    /// Appends with the writer role's rights only, and verifies with the
    /// reader's, whatever role the pool connects as: each append runs in a
    /// (sub)transaction that switches to the writer role (`SET LOCAL ROLE`)
    /// and back, and each verification's read-only transaction switches to
    /// the reader. The connecting role must be a member of both (a
    /// superuser is).
    ///
    /// For a service that connects as a broader role than its audit trail
    /// needs (one pool for its business tables and its trail, the
    /// migrations run at start): its appends then cannot do more than the
    /// writer may. A service whose login role is itself only a member of the
    /// writer role does not need it. Costs two round trips per append call
    /// (three outside a transaction).
    #[must_use]
    pub fn with_least_privilege(mut self) -> Self {
        self.least_privilege = true;
        self
    }

    /// The SQL an administrator runs once when the role that migrates,
    /// `migrator`, may not create roles (see [`AuditError::RolesMissing`]).
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidRole`] as for [`roles`](Self::roles).
    pub fn roles_sql(&self, migrator: &str) -> Result<String, AuditError> {
        Ok(self.roles()?.setup_sql(migrator))
    }

    /// Uses another schema: 1 to 63 characters of `[a-z0-9_]`, not starting
    /// with a digit or `pg_`.
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidSchema`] for any other name.
    pub fn with_schema(mut self, schema: &str) -> Result<Self, AuditError> {
        self.schema = Schema::new(schema)?;
        self.sql = Arc::new(Sql::new(&self.schema));
        Ok(self)
    }

    /// Chooses streams with `stream`.
    #[must_use]
    pub fn with_stream(mut self, stream: StreamBy) -> Self {
        self.stream = stream;
        self
    }

    /// Sequence numbers read per statement while verifying (default
    /// 100,000; at least 1).
    #[must_use]
    pub fn with_verify_batch(mut self, rows: usize) -> Self {
        self.verify_batch = rows.max(1);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        self.schema.name()
    }

    /// The stream `event` would be appended to.
    pub fn stream_for(&self, event: &AuditEvent) -> String {
        self.stream.stream_for(event)
    }

    /// Events refused on their own by [`append_batch`](AuditSink::append_batch)
    /// so far, by this sink and its clones.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Creates or upgrades the schema, its roles and their privileges: safe
    /// to call at every start, from several processes at once.
    ///
    /// Needs a role that may create the schema (or owns it) and that is a
    /// superuser, has `CREATEROLE`, or finds the roles ([`roles`](Self::roles))
    /// created and itself a member of the owner role ([`roles_sql`](Self::roles_sql)).
    /// Missing roles are created `NOLOGIN`; the tables and functions are
    /// handed to the owner role; the writer may only call the append
    /// function; the reader may read. The application then connects as a
    /// member of the writer role.
    ///
    /// # Errors
    ///
    /// [`AuditError::RolesMissing`] (logged at error level with the SQL to
    /// run) when the roles are missing and the migrating role may not
    /// create them; [`AuditError::InvalidRole`] when derived role names are
    /// too long; [`AuditError::MigrationChanged`] when an applied migration
    /// differs from the shipped one; backend errors otherwise (nothing is
    /// applied then).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: everything happens in one transaction, which a dropped
    /// future rolls back.
    pub async fn migrate(&self) -> Result<MigrationReport, AuditError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let roles = self.roles()?;
        migrate::migrate(&mut conn, &self.schema, &roles).await
    }

    /// Appends `event` to its stream through `conn`, so that it commits or
    /// rolls back with whatever else the caller's transaction does. Pass
    /// `&mut *tx` for a `sqlx::Transaction`.
    ///
    /// The stream's head row stays locked until the transaction ends:
    /// appends to the same stream wait for it. A transaction that appends to
    /// several streams should do so in a consistent order.
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidStream`] or [`AuditError::FieldTooLong`] (nothing
    /// sent), [`AuditError::Duplicate`] when the event id is already stored,
    /// [`AuditError::Unavailable`] or
    /// [`AuditError::Backend`]. After a database error the transaction is
    /// aborted: roll it back.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the transaction in an unknown state; roll it back.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        event: &AuditEvent,
    ) -> Result<Appended, AuditError> {
        let stream = self.stream_for(event);
        self.append_to_stream(conn, &stream, event).await
    }

    /// Appends `event` to the named `stream` through `conn`, ignoring
    /// [`StreamBy`]. Otherwise like [`append_in`](Self::append_in).
    ///
    /// # Errors
    ///
    /// As [`append_in`](Self::append_in).
    ///
    /// # Cancel safety
    ///
    /// As [`append_in`](Self::append_in).
    pub async fn append_to_stream(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        event: &AuditEvent,
    ) -> Result<Appended, AuditError> {
        validate_stream(stream)?;
        validate_event(event)?;
        if !self.least_privilege {
            return self.append_one(conn, stream, event).await;
        }
        let mut tx = conn.begin().await.map_err(map_err)?;
        let previous = self.become_writer(&mut tx).await?;
        let appended = self.append_one(&mut tx, stream, event).await?;
        restore_role(&mut tx, &previous).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(appended)
    }
}

/// The events of one `append_events` call, as parallel column arrays.
#[derive(Default)]
struct Columns {
    ids: Vec<uuid::Uuid>,
    types: Vec<String>,
    sources: Vec<String>,
    subjects: Vec<Option<String>>,
    times: Vec<i64>,
    actor_ids: Vec<Option<String>>,
    actor_tenants: Vec<Option<String>>,
    outcomes: Vec<Option<String>>,
    correlation_ids: Vec<Option<String>>,
    key_hashes: Vec<Option<String>>,
    contents: Vec<String>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            subjects: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            actor_ids: Vec::with_capacity(n),
            actor_tenants: Vec::with_capacity(n),
            outcomes: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            key_hashes: Vec::with_capacity(n),
            contents: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, event: &AuditEvent) {
        let text = |s: &str| pg_text(s).into_owned();
        let opt = |s: Option<&str>| s.map(text);
        self.ids.push(event.id);
        self.types.push(text(&event.event_type));
        self.sources.push(text(&event.source));
        self.subjects.push(opt(event.subject.as_deref()));
        self.times.push(event.time.unix_micros());
        self.actor_ids
            .push(opt(event.actor.as_ref().map(|a| a.id.as_str())));
        self.actor_tenants
            .push(opt(event.actor.as_ref().and_then(|a| a.tenant.as_deref())));
        self.outcomes
            .push(opt(event.outcome.as_ref().map(|o| o.as_str())));
        self.correlation_ids
            .push(opt(event.correlation_id.as_deref()));
        self.key_hashes.push(opt(event.key_hash.as_deref()));
        self.contents.push(event.canonical_json());
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

impl PostgresSink {
    /// Appends one event (already validated) through `conn`.
    async fn append_one(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        event: &AuditEvent,
    ) -> Result<Appended, AuditError> {
        let text = |s: &str| pg_text(s).into_owned();
        let opt = |s: Option<&str>| s.map(text);
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.append_one)))
            .bind(stream)
            .bind(event.id)
            .bind(text(&event.event_type))
            .bind(text(&event.source))
            .bind(opt(event.subject.as_deref()))
            .bind(event.time.unix_micros())
            .bind(opt(event.actor.as_ref().map(|a| a.id.as_str())))
            .bind(opt(event.actor.as_ref().and_then(|a| a.tenant.as_deref())))
            .bind(opt(event.outcome.as_ref().map(|o| o.as_str())))
            .bind(opt(event.correlation_id.as_deref()))
            .bind(opt(event.key_hash.as_deref()))
            .bind(event.canonical_json())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map_insert_err(e, Some(event)))?;
        let seq: i64 = row.try_get("seq").map_err(map_err)?;
        let hash: Vec<u8> = row.try_get("hash").map_err(map_err)?;
        Ok(Appended {
            stream: stream.to_owned(),
            seq: seq.unsigned_abs(),
            hash: hash32(&hash)?,
        })
    }

    /// One call of the database's `append_events`: the first seq and every hash.
    async fn append_columns(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        c: Columns,
    ) -> Result<(u64, Vec<[u8; 32]>), sqlx::Error> {
        let n = c.len();
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.append)))
            .bind(stream)
            .bind(c.ids)
            .bind(c.types)
            .bind(c.sources)
            .bind(c.subjects)
            .bind(c.times)
            .bind(c.actor_ids)
            .bind(c.actor_tenants)
            .bind(c.outcomes)
            .bind(c.correlation_ids)
            .bind(c.key_hashes)
            .bind(c.contents)
            .fetch_one(&mut *conn)
            .await?;
        let first: i64 = row.try_get("first_seq")?;
        let hashes: Vec<Vec<u8>> = row.try_get("hashes")?;
        if hashes.len() != n {
            return Err(sqlx::Error::Protocol(format!(
                "append_events returned {} hashes for {n} events",
                hashes.len()
            )));
        }
        let hashes = hashes
            .iter()
            .map(|h| hash32(h).map_err(|e| sqlx::Error::Protocol(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok((first.unsigned_abs(), hashes))
    }

    /// Appends validated events to one stream, in calls of at most
    /// [`MAX_APPEND_CHUNK`] events.
    async fn append_run(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        events: &[&AuditEvent],
    ) -> Result<(), AuditError> {
        for chunk in events.chunks(MAX_APPEND_CHUNK) {
            let mut columns = Columns::with_capacity(chunk.len());
            for e in chunk {
                columns.push(e);
            }
            self.append_columns(conn, stream, columns)
                .await
                .map_err(|e| map_insert_err(e, None))?;
        }
        Ok(())
    }

    /// Switches the transaction to the writer role; returns the role to go back to.
    async fn become_writer(&self, conn: &mut PgConnection) -> Result<String, AuditError> {
        let roles = self.roles()?;
        set_role(conn, roles.writer()).await
    }
}

/// `SET LOCAL ROLE role` (until the transaction ends or [`restore_role`]);
/// returns the `role` setting it replaced (`none` for the session's own).
pub(crate) async fn set_role(conn: &mut PgConnection, role: &str) -> Result<String, AuditError> {
    let row =
        sqlx::query("SELECT current_setting('role') AS previous, set_config('role', $1, true)")
            .bind(role)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
    row.try_get("previous").map_err(map_err)
}

/// Goes back to the role [`set_role`] replaced.
async fn restore_role(conn: &mut PgConnection, previous: &str) -> Result<(), AuditError> {
    sqlx::query("SELECT set_config('role', $1, true)")
        .bind(previous)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

impl PostgresSink {
    /// Counts and logs an event refused on its own.
    fn refuse(&self, index: usize, event: &AuditEvent, source: AuditError) -> RefusedEvent {
        let reason = refusal_reason(&source);
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REFUSED_METRIC, "reason" => reason).increment(1);
        tracing::warn!(
            target: "audit",
            reason,
            event_type = %crate::event::truncated(event.event_type.clone(), MAX_TYPE_LEN),
            event_id = %event.id,
            index,
            error = &source as &(dyn std::error::Error + 'static),
            "audit event refused; the rest of its batch is still written"
        );
        RefusedEvent::new(index, source)
    }

    /// Writes `events[i]` to `stream` for each `(i, stream)` in one
    /// transaction: one `append_events` call per stream (in stream order,
    /// so concurrent batches lock heads in the same order), events of a
    /// stream in batch order.
    async fn write_together(
        &self,
        events: &[AuditEvent],
        valid: &[(usize, String)],
    ) -> Result<(), AuditError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if self.least_privilege {
            self.become_writer(&mut tx).await?;
        }
        let mut rest = valid;
        let mut run = Vec::with_capacity(valid.len().min(MAX_APPEND_CHUNK));
        while let Some((_, stream)) = rest.first() {
            let len = rest.iter().take_while(|(_, s)| s == stream).count();
            run.clear();
            run.extend(rest[..len].iter().map(|(i, _)| &events[*i]));
            self.append_run(&mut tx, stream, &run).await?;
            rest = &rest[len..];
        }
        tx.commit().await.map_err(map_err)
    }

    /// Writes `events[i]` to `stream` for each `(i, stream)` in one
    /// transaction, each behind a savepoint: an event the database refuses
    /// for its own fault ([`event_fault`]) is rolled back alone and added to
    /// `refused`. Returns how many were written; an error (any other error,
    /// or the commit failing) means none was.
    async fn write_one_by_one(
        &self,
        events: &[AuditEvent],
        valid: &[(usize, String)],
        refused: &mut Vec<RefusedEvent>,
    ) -> Result<usize, AuditError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if self.least_privilege {
            self.become_writer(&mut tx).await?;
        }
        let mut written = 0;
        let mut refusals = Vec::new();
        for (i, stream) in valid {
            let event = &events[*i];
            sqlx::query("SAVEPOINT audit_event")
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            match self.append_one(&mut tx, stream, event).await {
                Ok(_) => {
                    sqlx::query("RELEASE SAVEPOINT audit_event")
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    written += 1;
                }
                Err(e) if !event_fault(&e) => return Err(e),
                Err(e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT audit_event")
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    refusals.push((*i, e));
                }
            }
        }
        tx.commit().await.map_err(map_err)?;
        // Counted only once the others are committed.
        for (i, e) in refusals {
            refused.push(self.refuse(i, &events[i], e));
        }
        Ok(written)
    }
}

impl AuditSink for PostgresSink {
    /// Appends in a transaction of its own.
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        self.append_in(&mut conn, event).await.map(|_| ())
    }

    /// Appends the batch in one transaction; a bad event is refused on its
    /// own (see [`PostgresSink`]): validated first, and when the database
    /// refuses the batch because of an event, the events are written again
    /// one by one, so every event the database accepts is written.
    ///
    /// # Errors
    ///
    /// [`BatchError`] listing the refused events (with
    /// [`AuditError::Refused`] when nothing else went wrong), or, when the
    /// database cannot be reached or a commit fails, the error that left
    /// the batch unwritten.
    async fn append_batch(&self, events: &[AuditEvent]) -> Result<(), BatchError> {
        let mut refused = Vec::new();
        let mut valid = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let stream = self.stream_for(event);
            match validate_stream(&stream).and_then(|()| validate_event(event)) {
                Ok(()) => valid.push((i, stream)),
                Err(e) => refused.push(self.refuse(i, event, e)),
            }
        }
        // Stable: a stream's events keep their order.
        valid.sort_by(|a, b| a.1.cmp(&b.1));
        let written = if valid.is_empty() {
            Ok(0)
        } else {
            match self.write_together(events, &valid).await {
                Ok(()) => Ok(valid.len()),
                // One event broke the batch: write them one by one.
                Err(e) if event_fault(&e) => {
                    self.write_one_by_one(events, &valid, &mut refused).await
                }
                // The sink itself failed (unreachable, no table, a timeout):
                // one by one would fail too.
                Err(e) => Err(e),
            }
        };
        refused.sort_by_key(|r| r.index);
        match written {
            Ok(_) if refused.is_empty() => Ok(()),
            Ok(written) => Err(BatchError::with_refusals(written, refused)),
            Err(source) => {
                let mut e = BatchError::new(0, source);
                e.refused = refused;
                Err(e)
            }
        }
    }
}

impl TransactionalSink<PgConnection> for PostgresSink {
    type Receipt = Appended;

    async fn append_in(
        &self,
        conn: &mut PgConnection,
        event: &AuditEvent,
    ) -> Result<Appended, AuditError> {
        PostgresSink::append_in(self, conn, event).await
    }
}

impl<'t> TransactionalSink<Transaction<'t, Postgres>> for PostgresSink {
    type Receipt = Appended;

    async fn append_in(
        &self,
        tx: &mut Transaction<'t, Postgres>,
        event: &AuditEvent,
    ) -> Result<Appended, AuditError> {
        PostgresSink::append_in(self, tx, event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["audit", "_a", "a1_b", &"x".repeat(63)] {
            assert_eq!(Schema::new(ok).unwrap().name(), ok);
        }
        for bad in [
            "",
            "1a",
            "Audit",
            "a-b",
            "a b",
            "pg_audit",
            "a\"b",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(Schema::new(bad), Err(AuditError::InvalidSchema { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            Schema::new("select").unwrap().apply("{{schema}}.t"),
            "\"select\".t"
        );
    }

    #[test]
    fn stream_names() {
        validate_stream("/promotions").unwrap();
        validate_stream(&"s".repeat(MAX_STREAM_LEN)).unwrap();
        for bad in ["", "a\nb", "a\0b", &"s".repeat(MAX_STREAM_LEN + 1)] {
            assert!(matches!(
                validate_stream(bad),
                Err(AuditError::InvalidStream { .. })
            ));
        }
    }

    #[test]
    fn stream_selection() {
        let e = AuditEvent::builder("t", "/promotions")
            .actor(crate::Actor::user("u").with_tenant("acme"))
            .build();
        assert_eq!(StreamBy::default().stream_for(&e), "/promotions");
        assert_eq!(StreamBy::Fixed("all".into()).stream_for(&e), "all");
        let by_tenant = StreamBy::Custom(Arc::new(|e: &AuditEvent| {
            format!(
                "tenant:{}",
                e.actor
                    .as_ref()
                    .and_then(|a| a.tenant.as_deref())
                    .unwrap_or("-")
            )
        }));
        assert_eq!(by_tenant.stream_for(&e), "tenant:acme");
        assert_eq!(format!("{by_tenant:?}"), "Custom(..)");
    }

    #[test]
    fn nul_is_replaced_in_columns_only() {
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(pg_text("ab"), Cow::Borrowed("ab")));
    }
}
