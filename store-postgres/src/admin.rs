//! [`AdminStore`] for [`PostgresStore`]: operator reads of the records
//! table (`sql/admin_*.sql`). Nothing here writes or locks.

use idempotency_core::{AdminRecord, AdminStore, ListFilter, Listing, StorageKey, StoreError};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::error::map_sqlx;
use crate::row::ts;
use crate::store::{PostgresStore, resolve_before, timed_statement};

/// A row of `admin_inspect.sql` or `admin_list.sql` as an operator's record
/// (an undecodable outcome reads as corrupted, unmarked).
fn admin_record(key: StorageKey, row: &PgRow) -> Result<AdminRecord, StoreError> {
    let record = resolve_before(key, row)?;
    let now: i64 = row.try_get("now_ms").map_err(map_sqlx)?;
    Ok(AdminRecord::new(record, ts(now)))
}

fn key_of(row: &PgRow) -> Result<StorageKey, StoreError> {
    let bytes: Vec<u8> = row.try_get("key").map_err(map_sqlx)?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::backend("stored key is not 32 bytes"))?;
    Ok(StorageKey::from_bytes(bytes))
}

/// Operator reads: one statement each.
///
/// - [`inspect`](AdminStore::inspect): the row by primary key, expired or
///   not (`get` hides expired rows and marks undecodable ones; this does
///   neither).
/// - [`list`](AdminStore::list): one statement over the records table,
///   filtered by state and creation age, ordered corrupted, stuck pending
///   (lease lapsed), pending, failed, completed, then oldest first. No index
///   serves it, on purpose: an index on the state would cost every claim
///   and completion an index write more, so a listing reads the whole table
///   (a top-N sort of the keys, then only the shown rows whole). On a table
///   of millions of rows expect it to take seconds.
/// - [`count_expired`](AdminStore::count_expired): walks
///   `records_expires_at_idx`, like the reaper.
impl AdminStore for PostgresStore {
    async fn inspect(&self, key: &StorageKey) -> Result<Option<AdminRecord>, StoreError> {
        let row = timed_statement(
            "admin_inspect",
            sqlx::query(self.queries().admin_inspect.sql())
                .bind(&key.as_bytes()[..])
                .bind(self.offset())
                .fetch_optional(self.pool()),
        )
        .await?;
        row.map(|row| admin_record(*key, &row)).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Listing, StoreError> {
        let age_ms = filter
            .older_than
            .map(|age| idempotency_core::clamp_millis(age) as f64);
        let rows = timed_statement(
            "admin_list",
            sqlx::query(self.queries().admin_list.sql())
                .bind(filter.state.map(|s| s.name()))
                .bind(age_ms)
                .bind(i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX))
                .bind(self.offset())
                .fetch_all(self.pool()),
        )
        .await?;
        let mut matched = 0_u64;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let total: i64 = row.try_get("matched").map_err(map_sqlx)?;
            matched = u64::try_from(total).unwrap_or(0);
            records.push(admin_record(key_of(row)?, row)?);
        }
        Ok(Listing { records, matched })
    }

    async fn count_expired(&self) -> Result<u64, StoreError> {
        let n: i64 = timed_statement(
            "admin_count_expired",
            sqlx::query_scalar(self.queries().admin_count_expired.sql())
                .bind(self.offset())
                .fetch_one(self.pool()),
        )
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
