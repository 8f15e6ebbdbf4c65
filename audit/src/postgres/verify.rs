//! Walking the stored chains.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::Deserialize;
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
    /// Reads the rows with binary `COPY`, one statement per range of
    /// sequence numbers (see [`with_verify_batch`](Self::with_verify_batch)),
    /// inside one read-only `REPEATABLE READ` transaction, and checks them on
    /// a blocking thread while the next ones arrive: memory stays bounded
    /// whatever the stream's length, and concurrent appends do not disturb
    /// the result. Rows numbered below 1 (which no append makes) are read
    /// and reported too. Reports **every** broken link
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

        // Two stages: this task reads the rows (binary COPY: the cheapest
        // way out of the server, no per-row protocol decoding here) while a
        // blocking thread checks those already read (hashes, content,
        // columns), so reading and checking overlap. The bytes are handed
        // over in chunks through a bounded channel: memory stays bounded, and
        // the order is kept.
        let (chunks, mut to_check) = tokio::sync::mpsc::channel::<Vec<Bytes>>(CHUNKS_IN_FLIGHT);
        let name = stream.to_owned();
        let checker = tokio::task::spawn_blocking(move || {
            let mut checker = RowChecker::new(name);
            while let Some(chunk) = to_check.blocking_recv() {
                for message in chunk {
                    checker.feed(message)?;
                }
            }
            checker.finish()
        });
        let read = self.read_pages(&mut tx, stream, chunks).await;
        // The checker ends when the reader drops its sender (done or failed);
        // a reader whose checker failed drains the COPY and stops.
        let verifier = match checker.await {
            Ok(checked) => checked,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(AuditError::unavailable(e)),
        };
        read?;
        let verifier = verifier?;
        // Read-only: nothing to keep.
        tx.rollback().await.map_err(map_err)?;
        Ok(verifier.finish(head))
    }

    /// Copies `stream`'s rows out, one statement per range of
    /// `verify_batch` sequence numbers between the stream's least and
    /// greatest (in this snapshot), handing the bytes to the checker.
    async fn read_pages(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        stream: &str,
        chunks: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    ) -> Result<(), AuditError> {
        let bounds = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.bounds)))
            .bind(stream)
            .fetch_one(&mut **tx)
            .await
            .map_err(map_err)?;
        let (Some(min), Some(max)) = (
            bounds.try_get::<Option<i64>, _>(0).map_err(map_err)?,
            bounds.try_get::<Option<i64>, _>(1).map_err(map_err)?,
        ) else {
            return Ok(());
        };
        sqlx::query("SELECT set_config('idempotency_audit.verify_stream', $1, true)")
            .bind(stream)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        let step = i64::try_from(self.verify_batch).unwrap_or(i64::MAX);
        // Rows numbered below 1 (only a forger's) are read too, and reported.
        let mut after = min.min(1).saturating_sub(1);
        let mut listening = true;
        while after < max {
            let through = after.saturating_add(step).min(max);
            let statement = self
                .sql
                .page
                .replace("{{after}}", &after.to_string())
                .replace("{{through}}", &through.to_string());
            let mut copy = tx.copy_out_raw(&statement).await.map_err(map_err)?;
            let mut chunk = Vec::with_capacity(CHUNK_MESSAGES);
            // Read to the end even when the checker stopped: the connection
            // must leave the COPY before the transaction can end.
            while let Some(message) = copy.try_next().await.map_err(map_err)? {
                if !listening {
                    continue;
                }
                chunk.push(message);
                if chunk.len() == CHUNK_MESSAGES {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_MESSAGES));
                    listening = chunks.send(full).await.is_ok();
                }
            }
            drop(copy);
            if listening && !chunk.is_empty() {
                listening = chunks.send(chunk).await.is_ok();
            }
            if !listening {
                // The checker failed: its error is the answer.
                return Ok(());
            }
            after = through;
        }
        Ok(())
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

/// COPY messages (one row each, as the server sends them) handed from the
/// reader to the checker at a time.
const CHUNK_MESSAGES: usize = 512;
/// Chunks read ahead of the checker, at most.
const CHUNKS_IN_FLIGHT: usize = 8;
/// The columns of the page statement.
const COLUMNS: usize = 14;
/// The signature that opens binary COPY data.
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// One row of the page statement, in PostgreSQL's binary COPY format:
/// each column's bytes, `None` for NULL.
struct CopyRow<'a> {
    columns: [Option<&'a [u8]>; COLUMNS],
}

impl<'a> CopyRow<'a> {
    fn bytes(&self, index: usize) -> Result<&'a [u8], BreakKind> {
        self.columns[index].ok_or_else(|| invalid(format!("column {index} is NULL")))
    }

    fn text(&self, index: usize, column: &str) -> Result<Option<&'a str>, BreakKind> {
        self.columns[index]
            .map(|b| std::str::from_utf8(b).map_err(|e| invalid(format!("column {column}: {e}"))))
            .transpose()
    }
}

/// Parses the binary COPY stream of one or more page statements and checks
/// its rows in order.
struct RowChecker {
    verifier: ChainVerifier,
    /// Bytes of a row (or header) that continues in the next message.
    carry: Vec<u8>,
    /// Whether the next bytes open a COPY (its header) rather than a row.
    at_header: bool,
}

/// Why the COPY data could not be read (not a break: the server's answer
/// itself is malformed).
fn malformed(what: &str) -> AuditError {
    AuditError::backend(format!("malformed COPY data from the server: {what}"))
}

impl RowChecker {
    fn new(stream: String) -> Self {
        Self {
            verifier: ChainVerifier::new(stream),
            carry: Vec::new(),
            at_header: true,
        }
    }

    /// Takes the next COPY message. The server sends one row per message;
    /// rows split across messages are handled all the same.
    fn feed(&mut self, message: Bytes) -> Result<(), AuditError> {
        if self.carry.is_empty() {
            let used = self.parse(&message)?;
            self.carry.extend_from_slice(&message[used..]);
        } else {
            let mut data = std::mem::take(&mut self.carry);
            data.extend_from_slice(&message);
            let used = self.parse(&data)?;
            data.drain(..used);
            self.carry = data;
        }
        Ok(())
    }

    /// Checks every whole row at the start of `data`; returns the bytes used.
    fn parse(&mut self, data: &[u8]) -> Result<usize, AuditError> {
        let mut at = 0;
        loop {
            let rest = &data[at..];
            if self.at_header {
                // Signature, flags, header extension length, extension.
                let Some(ext) = rest.get(15..19) else {
                    return Ok(at);
                };
                if &rest[..11] != COPY_SIGNATURE {
                    return Err(malformed("no binary COPY signature"));
                }
                let ext = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]) as usize;
                let len = 19 + ext;
                if rest.len() < len {
                    return Ok(at);
                }
                at += len;
                self.at_header = false;
                continue;
            }
            let Some(count) = rest.get(..2) else {
                return Ok(at);
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                // The trailer: the next page's COPY starts with its header.
                at += 2;
                self.at_header = true;
                continue;
            }
            if count != COLUMNS as i16 {
                return Err(malformed("unexpected column count"));
            }
            let mut columns = [None; COLUMNS];
            let mut pos = 2;
            for column in &mut columns {
                let Some(len) = rest.get(pos..pos + 4) else {
                    return Ok(at);
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                pos += 4;
                if len >= 0 {
                    let end = pos + len as usize;
                    let Some(value) = rest.get(pos..end) else {
                        return Ok(at);
                    };
                    *column = Some(value);
                    pos = end;
                }
            }
            self.check(&CopyRow { columns })?;
            at += pos;
        }
    }

    fn check(&mut self, row: &CopyRow<'_>) -> Result<(), AuditError> {
        let seq = row
            .bytes(0)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| malformed("seq is not a bigint"))?;
        if seq < 1 {
            // Not a number the chain can hold: a forged row.
            self.verifier.record_break(0, BreakKind::Unexpected);
            return Ok(());
        }
        let seq = seq.unsigned_abs();
        let (Ok(prev_hash), Ok(hash)) = (row.bytes(1), row.bytes(2)) else {
            return Err(malformed("a NOT NULL hash column is NULL"));
        };
        let content = match row.text(3, "content") {
            Ok(Some(content)) => content,
            Ok(None) => return Err(malformed("the NOT NULL content is NULL")),
            Err(kind) => {
                // Not text: the hash cannot match either.
                self.verifier.push(&ChainRow {
                    seq,
                    prev_hash,
                    hash,
                    content: "",
                });
                self.verifier.record_break(seq, kind);
                return Ok(());
            }
        };
        self.verifier.push(&ChainRow {
            seq,
            prev_hash,
            hash,
            content,
        });
        if let Err(kind) = check_columns(row, content) {
            self.verifier.record_break(seq, kind);
        }
        Ok(())
    }

    fn finish(self) -> Result<ChainVerifier, AuditError> {
        if !self.carry.is_empty() || !self.at_header {
            return Err(malformed("the data ends inside a row"));
        }
        Ok(self.verifier)
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
fn check_columns(row: &CopyRow<'_>, content: &str) -> Result<(), BreakKind> {
    let event: Indexed<'_> = serde_json::from_str(content).map_err(|e| invalid(e.to_string()))?;
    let time = EventTime::parse_rfc3339(&event.time).map_err(|e| invalid(format!("time: {e}")))?;
    let same =
        |index: usize, column: &'static str, expected: Option<&str>| -> Result<(), BreakKind> {
            // Bytes against bytes: equal to a string's bytes is valid text.
            let stored = row.columns[index];
            let matches = match (stored, expected) {
                (None, None) => true,
                (Some(stored), Some(expected)) => {
                    stored == expected.as_bytes()
                        || (expected.contains('\0') && stored == pg_text(expected).as_bytes())
                }
                _ => false,
            };
            if matches {
                Ok(())
            } else {
                Err(BreakKind::ColumnMismatch { column })
            }
        };
    // uuid in binary: its 16 bytes.
    if row.columns[4] != Some(event.id.as_bytes().as_slice()) {
        return Err(BreakKind::ColumnMismatch { column: "id" });
    }
    // timestamptz in binary: microseconds since 2000-01-01, big-endian.
    let stored_time = row.columns[8]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditEvent, GENESIS_HASH, chain_hash};

    /// `events` as binary COPY data, in one page statement per slice of
    /// `pages`, the way the server sends them: a header, one message per
    /// row, a trailer.
    fn copy_messages(stream: &str, events: &[AuditEvent], pages: usize) -> Vec<Bytes> {
        let mut messages = Vec::new();
        let mut prev = GENESIS_HASH;
        for (page, chunk) in events.chunks(pages).enumerate() {
            let mut header = COPY_SIGNATURE.to_vec();
            header.extend_from_slice(&[0; 8]);
            let mut first = true;
            for (i, event) in chunk.iter().enumerate() {
                let seq = (page * pages + i + 1) as i64;
                let content = event.canonical_json();
                let hash = chain_hash(&prev, seq as u64, stream, &content);
                let time = (event.time.unix_micros() - PG_EPOCH_UNIX_MICROS).to_be_bytes();
                let actor = event.actor.as_ref();
                let columns: [Option<Vec<u8>>; COLUMNS] = [
                    Some(seq.to_be_bytes().to_vec()),
                    Some(prev.to_vec()),
                    Some(hash.to_vec()),
                    Some(content.into_bytes()),
                    Some(event.id.as_bytes().to_vec()),
                    Some(event.event_type.clone().into_bytes()),
                    Some(event.source.clone().into_bytes()),
                    event.subject.clone().map(String::into_bytes),
                    Some(time.to_vec()),
                    actor.map(|a| a.id.clone().into_bytes()),
                    actor.and_then(|a| a.tenant.clone()).map(String::into_bytes),
                    event
                        .outcome
                        .as_ref()
                        .map(|o| o.as_str().as_bytes().to_vec()),
                    event.correlation_id.clone().map(String::into_bytes),
                    event.key_hash.clone().map(String::into_bytes),
                ];
                let mut row = if first {
                    std::mem::take(&mut header)
                } else {
                    Vec::new()
                };
                first = false;
                row.extend_from_slice(&(COLUMNS as i16).to_be_bytes());
                for column in columns {
                    match column {
                        None => row.extend_from_slice(&(-1i32).to_be_bytes()),
                        Some(v) => {
                            row.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            row.extend_from_slice(&v);
                        }
                    }
                }
                messages.push(Bytes::from(row));
                prev = hash;
            }
            messages.push(Bytes::from_static(&[0xff, 0xff]));
        }
        messages
    }

    fn events(n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|i| {
                AuditEvent::builder("test.copied", "/copy")
                    .subject(format!("s-{i}"))
                    .build()
            })
            .collect()
    }

    fn check(messages: impl IntoIterator<Item = Bytes>) -> Result<ChainReport, AuditError> {
        let mut checker = RowChecker::new("copy".into());
        for m in messages {
            checker.feed(m)?;
        }
        Ok(checker.finish()?.finish(None))
    }

    #[test]
    fn rows_split_anywhere_across_messages_read_the_same() {
        let events = events(5);
        let messages = copy_messages("copy", &events, 2);
        let whole = check(messages.clone()).unwrap();
        assert_eq!(whole.events, 5);
        // Only the missing head is reported: every row is intact.
        assert_eq!(whole.break_count, 1, "{whole}");
        let bytes: Vec<u8> = messages.iter().flat_map(|m| m.to_vec()).collect();
        for size in [1, 2, 3, 7, 64, 1000] {
            let split = check(bytes.chunks(size).map(Bytes::copy_from_slice)).unwrap();
            assert_eq!(split, whole, "pieces of {size} bytes");
        }
        // All in one message.
        assert_eq!(check([Bytes::from(bytes)]).unwrap(), whole);
    }

    #[test]
    fn malformed_copy_data_is_an_error_not_a_break() {
        let messages = copy_messages("copy", &events(2), 10);
        let mut cut: Vec<u8> = messages.iter().flat_map(|m| m.to_vec()).collect();
        cut.truncate(cut.len() - 5);
        assert!(check([Bytes::from(cut)]).is_err(), "ends inside a row");
        assert!(check([Bytes::from_static(b"PGCOPY\n\xff\r\n\x01\0\0\0\0\0\0\0\0")]).is_err());
        let mut wrong = messages[0].to_vec();
        wrong[19] = 0;
        wrong[20] = 3;
        assert!(check([Bytes::from(wrong)]).is_err(), "three columns");
    }
}
