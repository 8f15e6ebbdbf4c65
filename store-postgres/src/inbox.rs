//! The inbox on PostgreSQL: [`PostgresInbox`], an
//! [`InboxStore`](idempotency_core::InboxStore) whose transactions are the
//! caller's, so a handler's rows and the inbox entry commit together.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{Admission, Disposition, InboxMessage, InboxStore, StoreError};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row, Transaction};

use crate::PostgresStore;
use crate::error::{UnexpectedRow, map_sqlx};
use crate::sql::substitute;
use crate::store::timed_statement;

struct Queries {
    admit: Arc<str>,
    entry: Arc<str>,
    last_version: Arc<str>,
    purge: Arc<str>,
}

impl Queries {
    fn new(schema: &str) -> Self {
        // The inbox sends no notifications: no channel to substitute.
        let q = |t: &str| -> Arc<str> { substitute(t, schema, "").into() };
        Self {
            admit: q(include_str!("../sql/inbox_admit.sql")),
            entry: q(include_str!("../sql/inbox_entry.sql")),
            last_version: q(include_str!("../sql/inbox_last_version.sql")),
            purge: q(include_str!("../sql/inbox_purge.sql")),
        }
    }
}

/// A statement's text. Safe: the only dynamic part is the schema name,
/// validated and quoted when the store was built; values are bound.
fn sql(s: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(s))
}

/// The inbox in a [`PostgresStore`]'s schema (tables `inbox_entries` and
/// `inbox_versions`, created by [`PostgresStore::migrate`]).
///
/// Use it through [`Inbox`](idempotency_core::Inbox), whose handler gets the
/// transaction, or decide inside a transaction of your own with
/// [`PostgresInbox::admit_in`]:
///
/// ```no_run
/// use idempotency_core::{Admission, InboxMessage};
/// use idempotency_postgres::{PostgresInbox, PostgresStore};
///
/// # async fn f(store: PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
/// let inbox = PostgresInbox::new(&store);
/// let msg = InboxMessage::new("work-execution", "evt-1")?.ordered("appt-9", 2)?;
/// let mut tx = store.pool().begin().await?;
/// match inbox.admit_in(&mut tx, &msg).await? {
///     Admission::Apply => {
///         sqlx::query("UPDATE planned SET start = now() WHERE id = $1")
///             .bind("appt-9")
///             .execute(&mut *tx)
///             .await?;
///         tx.commit().await?; // the row and the entry, together: acknowledge
///     }
///     Admission::Stale { .. } => tx.commit().await?, // recorded: acknowledge
///     Admission::Duplicate => {}                     // acknowledge
///     Admission::OutOfOrder { .. } => {}             // leave unacknowledged
///     _ => {}
/// }
/// # Ok(()) }
/// ```
///
/// Works at every isolation level. Under `REPEATABLE READ` or `SERIALIZABLE`
/// a delivery racing another one of the same message or aggregate may fail
/// with a serialization error (a [`StoreError`]); leave it unacknowledged
/// and the redelivery is decided on what committed.
#[derive(Clone)]
pub struct PostgresInbox {
    pool: PgPool,
    schema: Arc<str>,
    sql: Arc<Queries>,
}

impl std::fmt::Debug for PostgresInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresInbox")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn version_param(msg: &InboxMessage) -> Option<i64> {
    // Versions are at most `MAX_VERSION` (= i64::MAX), checked by `InboxMessage`.
    msg.version().map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn unsigned(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::backend(UnexpectedRow(format!("version {v}"))))
}

impl PostgresInbox {
    /// The inbox in `store`'s schema, over its pool. Run
    /// [`PostgresStore::migrate`] first.
    pub fn new(store: &PostgresStore) -> Self {
        Self {
            pool: store.pool().clone(),
            schema: store.schema().into(),
            sql: Arc::new(Queries::new(store.schema())),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Decides one delivery of `msg` on `conn` (inside a transaction: the
    /// decision's writes and locks belong to it). See [`Admission`] for what
    /// each answer asks of the caller; the writes count only once the
    /// transaction commits.
    ///
    /// On a connection outside a transaction the decision commits at once,
    /// before any handler ran: that is not what an inbox is for.
    ///
    /// # Errors
    ///
    /// Database errors, mapped as for the store's operations; roll back and
    /// leave the message unacknowledged.
    ///
    /// # Cancel safety
    ///
    /// Inside a transaction, dropping the future writes nothing that
    /// survives the rollback.
    pub async fn admit_in(
        &self,
        conn: &mut PgConnection,
        msg: &InboxMessage,
    ) -> Result<Admission, StoreError> {
        let row = timed_statement(
            "inbox_admit",
            sqlx::query(sql(&self.sql.admit))
                .bind(msg.consumer())
                .bind(msg.message_id())
                .bind(msg.aggregate())
                .bind(version_param(msg))
                .fetch_one(conn),
        )
        .await?;
        let decision: String = row.try_get(0).map_err(map_sqlx)?;
        let last: Option<i64> = row.try_get(1).map_err(map_sqlx)?;
        let last = || unsigned(last.unwrap_or(0));
        Ok(match decision.as_str() {
            "APPLY" => Admission::Apply,
            "DUPLICATE" => Admission::Duplicate,
            "STALE" => Admission::Stale {
                last_applied: last()?,
            },
            "OUT_OF_ORDER" => Admission::OutOfOrder {
                expected: last()?.saturating_add(1),
            },
            other => {
                return Err(StoreError::backend(UnexpectedRow(format!(
                    "inbox decision {other:?}"
                ))));
            }
        })
    }

    /// Deletes entries processed more than `older_than` ago, `batch` rows
    /// per statement, until a batch comes back short. Returns how many.
    ///
    /// After that, a redelivery of such a message is applied again unless
    /// it is ordered (its version is then stale). Purge only beyond the
    /// longest time the broker may still redeliver or a producer re-publish.
    ///
    /// # Errors
    ///
    /// Database errors; what was deleted before stays deleted.
    pub async fn purge(&self, older_than: Duration, batch: usize) -> Result<u64, StoreError> {
        let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let done = timed_statement(
                "inbox_purge",
                sqlx::query(sql(&self.sql.purge))
                    .bind(ms)
                    .bind(batch)
                    .execute(&self.pool),
            )
            .await?
            .rows_affected();
            total += done;
            if done < batch.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

impl InboxStore for PostgresInbox {
    type Tx = Transaction<'static, Postgres>;

    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send {
        let pool = self.pool.clone();
        async move { pool.begin().await.map_err(map_sqlx) }
    }

    fn admit(
        &self,
        tx: &mut Self::Tx,
        msg: &InboxMessage,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send {
        self.admit_in(tx, msg)
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(map_sqlx)
    }

    fn entry(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<Disposition>, StoreError>> + Send {
        let (consumer, message_id) = (consumer.to_owned(), message_id.to_owned());
        async move {
            let found: Option<String> = sqlx::query_scalar(sql(&self.sql.entry))
                .bind(consumer)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_sqlx)?;
            found
                .map(|d| {
                    Disposition::parse(&d).ok_or_else(|| {
                        StoreError::backend(UnexpectedRow(format!("disposition {d:?}")))
                    })
                })
                .transpose()
        }
    }

    fn last_version(
        &self,
        consumer: &str,
        aggregate: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        let (consumer, aggregate) = (consumer.to_owned(), aggregate.to_owned());
        async move {
            let found: Option<i64> = sqlx::query_scalar(sql(&self.sql.last_version))
                .bind(consumer)
                .bind(aggregate)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_sqlx)?;
            found.map(unsigned).transpose()
        }
    }
}
