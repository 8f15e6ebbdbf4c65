//! Walking the stored chains.

use std::sync::Arc;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::{PostgresSink, hash32, map_err, pg_text};
use crate::chain::{BreakKind, ChainReport, ChainRow, ChainVerifier};
use crate::error::AuditError;
use crate::event::AuditEvent;

impl PostgresSink {
    /// Verifies one stream: contiguous sequence numbers from 1, every
    /// `prev_hash` equal to the previous row's hash, every hash equal to
    /// [`chain_hash`](crate::chain_hash) of its row, every queryable column
    /// equal to the hashed content, and the last row equal to the stream head.
    ///
    /// Reads the rows in pages (see [`with_verify_batch`](Self::with_verify_batch))
    /// inside one read-only `REPEATABLE READ` transaction, so memory stays
    /// bounded whatever the stream's length and concurrent appends do not
    /// disturb the result. Stops at the first broken link, which the report
    /// names by sequence number. A stream that does not exist is reported
    /// intact and empty.
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
    /// not an error: it is in [`ChainReport::broken`].
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
        'pages: loop {
            let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.page)))
                .bind(stream)
                .bind(after)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
            for row in &rows {
                let seq: i64 = row.try_get("seq").map_err(map_err)?;
                let prev_hash: Vec<u8> = row.try_get("prev_hash").map_err(map_err)?;
                let hash: Vec<u8> = row.try_get("hash").map_err(map_err)?;
                let content: String = row.try_get("content").map_err(map_err)?;
                verifier.push(&ChainRow {
                    seq: seq.unsigned_abs(),
                    prev_hash: &prev_hash,
                    hash: &hash,
                    content: &content,
                });
                if !verifier.is_broken()
                    && let Err(kind) = check_columns(row, &content)
                {
                    verifier.record_break(seq.unsigned_abs(), kind);
                }
                if verifier.is_broken() {
                    break 'pages;
                }
                after = seq;
            }
            if (rows.len() as u64) < self.verify_batch as u64 {
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

/// Compares the queryable columns with the hashed content.
fn check_columns(row: &PgRow, content: &str) -> Result<(), BreakKind> {
    let event: AuditEvent =
        serde_json::from_str(content).map_err(|e| BreakKind::InvalidContent {
            detail: e.to_string(),
        })?;
    let text = |column: &'static str| -> Result<Option<String>, BreakKind> {
        row.try_get::<Option<String>, _>(column)
            .map_err(|e| BreakKind::InvalidContent {
                detail: format!("column {column}: {e}"),
            })
    };
    let same = |column: &'static str, expected: Option<&str>| -> Result<(), BreakKind> {
        let stored = text(column)?;
        if stored.as_deref() == expected.map(pg_text).as_deref() {
            Ok(())
        } else {
            Err(BreakKind::ColumnMismatch { column })
        }
    };
    let id: uuid::Uuid = row.try_get("id").map_err(|e| BreakKind::InvalidContent {
        detail: format!("column id: {e}"),
    })?;
    if id != event.id {
        return Err(BreakKind::ColumnMismatch { column: "id" });
    }
    let time_us: i64 = row
        .try_get("time_us")
        .map_err(|e| BreakKind::InvalidContent {
            detail: format!("column time: {e}"),
        })?;
    if time_us != event.time.unix_micros() {
        return Err(BreakKind::ColumnMismatch { column: "time" });
    }
    same("type", Some(&event.event_type))?;
    same("source", Some(&event.source))?;
    same("subject", event.subject.as_deref())?;
    same("actor_id", event.actor.as_ref().map(|a| a.id.as_str()))?;
    same(
        "actor_tenant",
        event.actor.as_ref().and_then(|a| a.tenant.as_deref()),
    )?;
    same("outcome", event.outcome.as_ref().map(|o| o.as_str()))?;
    same("correlation_id", event.correlation_id.as_deref())?;
    same("key_hash", event.key_hash.as_deref())?;
    Ok(())
}
