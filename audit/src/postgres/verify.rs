//! Walking the stored chains.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::TryStreamExt;
use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::{PostgresSink, hash32, map_err, pg_text, set_role};
use crate::chain::{BreakKind, ChainReport, ChainRow, ChainVerifier};
use crate::error::AuditError;
use crate::time::EventTime;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl PostgresSink {
    /// Verifies one stream: contiguous sequence numbers from 1, every
    /// `prev_hash` equal to the previous row's hash, every hash equal to
    /// [`chain_hash`](crate::chain_hash) of its row, every queryable column
    /// equal to the hashed content, and the last row equal to the stream head.
    ///
    /// Reads the rows in pages (see [`with_verify_batch`](Self::with_verify_batch))
    /// inside one read-only `REPEATABLE READ` transaction, so memory stays
    /// bounded whatever the stream's length and concurrent appends do not
    /// disturb the result. Reports **every** broken link
    /// ([`ChainReport::breaks`], by sequence number; see [`ChainVerifier`]):
    /// a malformed row does not hide a changed one after it. A stream that
    /// does not exist is reported intact and empty. With
    /// [`with_least_privilege`](Self::with_least_privilege) it reads as the
    /// reader role.
    ///
    /// The chain detects rows changed, removed or inserted behind the
    /// triggers' back; it cannot detect a rewrite of a whole stream's tail
    /// by someone who recomputes every later hash and the head. Keep the
    /// reported head hash elsewhere (a log, a ticket, another system) to
    /// detect that too.
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidStream`], or a database error. A broken chain is
    /// not an error: its breaks are in [`ChainReport::breaks`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify(&self, stream: &str) -> Result<ChainReport, AuditError> {
        super::validate_stream(stream)?;
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(map_err)?;
        if self.least_privilege {
            set_role(&mut tx, self.roles()?.reader()).await?;
        }
        // Walk the primary key in order, whatever the statistics say: right
        // after a bulk append they are stale, and a sort of the rest of the
        // stream for every page costs quadratic time.
        sqlx::raw_sql("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let head = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.head)))
            .bind(stream)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let head = match head {
            Some(row) => {
                let seq: i64 = row.try_get("last_seq").map_err(map_err)?;
                let hash: Vec<u8> = row.try_get("last_hash").map_err(map_err)?;
                Some((seq.unsigned_abs(), hash32(&hash)?))
            }
            None => None,
        };

        let mut verifier = ChainVerifier::new(stream);
        let batch = i64::try_from(self.verify_batch).unwrap_or(i64::MAX);
        let mut after = 0i64;
        loop {
            // Streamed: the server produces rows while the last ones are checked.
            let mut rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.page)))
                .bind(stream)
                .bind(after)
                .bind(batch)
                .fetch(&mut *tx);
            let mut in_page = 0u64;
            while let Some(row) = rows.try_next().await.map_err(map_err)? {
                let row = &row;
                in_page += 1;
                // By position (the page statement's column order): no name lookups.
                let seq: i64 = row.try_get(0).map_err(map_err)?;
                let prev_hash: &[u8] = row.try_get(1).map_err(map_err)?;
                let hash: &[u8] = row.try_get(2).map_err(map_err)?;
                let content: &str = row.try_get(3).map_err(map_err)?;
                let seq_u = seq.unsigned_abs();
                verifier.push(&ChainRow {
                    seq: seq_u,
                    prev_hash,
                    hash,
                    content,
                });
                if let Err(kind) = check_columns(row, content) {
                    verifier.record_break(seq_u, kind);
                }
                after = seq;
            }
            drop(rows);
            if in_page < self.verify_batch as u64 {
                break;
            }
        }
        // Read-only: nothing to keep.
        tx.rollback().await.map_err(map_err)?;
        Ok(verifier.finish(head))
    }

    /// The first stream name after `after` (or the first of all), in the
    /// database's order, whether it has a head row, events, or both.
    ///
    /// # Errors
    ///
    /// A database error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn next_stream(&self, after: Option<&str>) -> Result<Option<String>, AuditError> {
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.next_stream)))
            .bind(after.unwrap_or(""))
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        row.try_get("stream").map_err(map_err)
    }

    /// Verifies every stream, one after the other; see [`verify`](Self::verify).
    ///
    /// # Errors
    ///
    /// The first database error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify_all(&self) -> Result<Vec<ChainReport>, AuditError> {
        let mut reports = Vec::new();
        let mut after: Option<String> = None;
        while let Some(stream) = self.next_stream(after.as_deref()).await? {
            reports.push(self.verify(&stream).await?);
            after = Some(stream);
        }
        Ok(reports)
    }
}

/// The fields of an event that back the queryable columns, borrowed from
/// the content where they need no unescaping.
#[derive(Deserialize)]
struct Indexed<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(default, borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(default, borrow)]
    actor: Option<IndexedActor<'a>>,
    #[serde(default, borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    key_hash: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IndexedActor<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    tenant: Option<Cow<'a, str>>,
}

fn invalid(detail: impl Into<String>) -> BreakKind {
    BreakKind::InvalidContent {
        detail: detail.into(),
    }
}

/// Compares the queryable columns with the hashed content, which must be an
/// event (a JSON object with at least `id`, `type`, `source` and `time`).
fn check_columns(row: &PgRow, content: &str) -> Result<(), BreakKind> {
    let event: Indexed<'_> = serde_json::from_str(content).map_err(|e| invalid(e.to_string()))?;
    let time = EventTime::parse_rfc3339(&event.time).map_err(|e| invalid(format!("time: {e}")))?;
    let same =
        |index: usize, column: &'static str, expected: Option<&str>| -> Result<(), BreakKind> {
            let stored: Option<&str> = row
                .try_get(index)
                .map_err(|e| invalid(format!("column {column}: {e}")))?;
            if stored == expected.map(pg_text).as_deref() {
                Ok(())
            } else {
                Err(BreakKind::ColumnMismatch { column })
            }
        };
    let id: uuid::Uuid = row
        .try_get(4)
        .map_err(|e| invalid(format!("column id: {e}")))?;
    if id != event.id {
        return Err(BreakKind::ColumnMismatch { column: "id" });
    }
    // timestamptz in binary: microseconds since 2000-01-01, big-endian.
    let stored_time = row
        .try_get_raw(8)
        .ok()
        .and_then(|v| v.as_bytes().ok())
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| i64::from_be_bytes(b).saturating_add(PG_EPOCH_UNIX_MICROS));
    if stored_time != Some(time.unix_micros()) {
        return Err(BreakKind::ColumnMismatch { column: "time" });
    }
    same(5, "type", Some(&event.event_type))?;
    same(6, "source", Some(&event.source))?;
    same(7, "subject", event.subject.as_deref())?;
    same(9, "actor_id", event.actor.as_ref().map(|a| a.id.as_ref()))?;
    same(
        10,
        "actor_tenant",
        event.actor.as_ref().and_then(|a| a.tenant.as_deref()),
    )?;
    same(11, "outcome", event.outcome.as_deref())?;
    same(12, "correlation_id", event.correlation_id.as_deref())?;
    same(13, "key_hash", event.key_hash.as_deref())?;
    Ok(())
}
