//! The per-stream hash chain: how a row's hash is computed and how a stream
//! is checked, independent of where the rows are stored.

use std::fmt;

use sha2::{Digest, Sha256};

/// The `prev_hash` of a stream's first event: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The hash of one row of a stream:
///
/// `SHA-256(prev_hash ‖ be64(seq) ‖ be64(len(stream)) ‖ stream ‖ content)`
///
/// where `prev_hash` is the previous row's hash ([`GENESIS_HASH`] for
/// `seq` 1), `be64` is an 8-byte big-endian integer, `stream` is the
/// stream name's UTF-8 bytes and `content` the event's canonical JSON
/// ([`AuditEvent::canonical_json`](crate::AuditEvent::canonical_json)) as
/// stored. The length prefix keeps the stream/content boundary unambiguous.
///
/// The PostgreSQL sink computes the same value in the database; the
/// verifier recomputes it here.
///
/// ```
/// use idempotency_audit::{chain_hash, GENESIS_HASH};
/// let first = chain_hash(&GENESIS_HASH, 1, "orders", r#"{"type":"order.placed"}"#);
/// let second = chain_hash(&first, 2, "orders", r#"{"type":"order.paid"}"#);
/// assert_ne!(first, second);
/// ```
pub fn chain_hash(prev_hash: &[u8; 32], seq: u64, stream: &str, content: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update((stream.len() as u64).to_be_bytes());
    h.update(stream.as_bytes());
    h.update(content.as_bytes());
    h.finalize().into()
}

/// What is wrong at a broken link of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// No row carries these sequence numbers: rows were deleted (a gap, or
    /// the end of the stream when the head says there were more).
    Missing,
    /// A row carries a sequence number that should not exist here (beyond
    /// the head, or out of order).
    Unexpected,
    /// The row's `prev_hash` is not the previous row's hash.
    PrevHashMismatch,
    /// The row's hash is not the hash of its content: the row was changed.
    HashMismatch,
    /// A queryable column disagrees with the hashed content: the column was changed.
    ColumnMismatch {
        /// The column.
        column: &'static str,
    },
    /// The stored content is not a readable event.
    InvalidContent {
        /// Why.
        detail: String,
    },
    /// The stream head records another hash for its last row.
    HeadMismatch,
    /// Rows exist but the stream has no head row.
    HeadMissing,
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("row missing"),
            Self::Unexpected => f.write_str("unexpected row"),
            Self::PrevHashMismatch => {
                f.write_str("prev_hash does not match the previous row's hash")
            }
            Self::HashMismatch => f.write_str("hash does not match the row's content"),
            Self::ColumnMismatch { column } => {
                write!(f, "column {column} does not match the hashed content")
            }
            Self::InvalidContent { detail } => write!(f, "content is not a valid event: {detail}"),
            Self::HeadMismatch => f.write_str("stream head does not match the last row"),
            Self::HeadMissing => f.write_str("stream head is missing"),
        }
    }
}

/// One broken link of a stream: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The (first) sequence number at which the chain breaks.
    pub seq: u64,
    /// The last sequence number the break covers: `seq` itself, except for
    /// a run of [`BreakKind::Missing`] or [`BreakKind::Unexpected`] rows.
    pub through: u64,
    /// What is wrong there.
    pub kind: BreakKind,
}

impl ChainBreak {
    /// A break at one sequence number.
    pub fn at(seq: u64, kind: BreakKind) -> Self {
        Self {
            seq,
            through: seq,
            kind,
        }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.through > self.seq {
            write!(f, "seq={}..{}: {}", self.seq, self.through, self.kind)
        } else {
            write!(f, "seq={}: {}", self.seq, self.kind)
        }
    }
}

/// How many breaks a [`ChainReport`] lists per stream; the count of all of
/// them is [`ChainReport::break_count`].
pub const MAX_LISTED_BREAKS: usize = 1_000;

/// The result of verifying one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The stream.
    pub stream: String,
    /// Rows checked.
    pub events: u64,
    /// The last sequence number seen (0 for an empty stream).
    pub last_seq: u64,
    /// The stored hash of the last row seen, if any. Record it somewhere
    /// else to be able to detect a later rewrite of the whole chain.
    pub last_hash: Option<[u8; 32]>,
    /// Every broken link, in the order found (sequence order, the head's
    /// last), at most [`MAX_LISTED_BREAKS`] of them.
    pub breaks: Vec<ChainBreak>,
    /// How many breaks were found, listed or not.
    pub break_count: u64,
}

impl ChainReport {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.break_count == 0
    }

    /// The first broken link, if any.
    pub fn first_break(&self) -> Option<&ChainBreak> {
        self.breaks.first()
    }
}

impl fmt::Display for ChainReport {
    /// One line when intact; otherwise a `BROKEN` line, then one indented
    /// line per listed break.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_intact() {
            return write!(
                f,
                "ok     stream={} events={} last_seq={} head={}",
                self.stream,
                self.events,
                self.last_seq,
                self.last_hash
                    .map_or_else(|| "-".to_owned(), |h| crate::hex(&h))
            );
        }
        write!(
            f,
            "BROKEN stream={} events={} last_seq={} breaks={}",
            self.stream, self.events, self.last_seq, self.break_count
        )?;
        for b in &self.breaks {
            write!(f, "\n  {b}")?;
        }
        let unlisted = self.break_count - self.breaks.len() as u64;
        if unlisted > 0 {
            write!(f, "\n  ... and {unlisted} more")?;
        }
        Ok(())
    }
}

/// One stored row, as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct ChainRow<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Stored previous hash.
    pub prev_hash: &'a [u8],
    /// Stored hash.
    pub hash: &'a [u8],
    /// Stored canonical content.
    pub content: &'a str,
}

/// Checks a stream's rows one at a time, in sequence order, in constant
/// memory, and reports **every** broken link, not only the first.
///
/// Each row is checked on its own against what is stored: its sequence
/// number against the previous row's (a gap is one [`BreakKind::Missing`]
/// covering the missing numbers), its `prev_hash` against the previous
/// row's stored hash, and its hash against [`chain_hash`] of its own
/// `prev_hash` and content. So one changed row is one `HashMismatch`, a row
/// changed and re-hashed is a `PrevHashMismatch` at the next row, and a
/// break never hides what comes after it.
///
/// ```
/// use idempotency_audit::{chain_hash, BreakKind, ChainRow, ChainVerifier, GENESIS_HASH};
/// let h1 = chain_hash(&GENESIS_HASH, 1, "s", "{}");
/// let h2 = chain_hash(&h1, 2, "s", "{}");
/// let h3 = chain_hash(&h2, 3, "s", "{}");
/// let mut v = ChainVerifier::new("s");
/// v.push(&ChainRow { seq: 1, prev_hash: &GENESIS_HASH, hash: &h1, content: "{}" });
/// // Row 2 was deleted; row 3 follows row 1, and its content was changed.
/// v.push(&ChainRow { seq: 3, prev_hash: &h2, hash: &h3, content: "{ }" });
/// let report = v.finish(Some((3, h3)));
/// let found: Vec<_> = report.breaks.iter().map(|b| (b.seq, b.kind.clone())).collect();
/// assert_eq!(found, [(2, BreakKind::Missing), (3, BreakKind::HashMismatch)]);
/// ```
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    stream: String,
    next_seq: u64,
    /// The stored hash of the previous row (GENESIS before the first).
    prev: [u8; 32],
    events: u64,
    breaks: Vec<ChainBreak>,
    break_count: u64,
}

impl ChainVerifier {
    /// Starts verifying `stream` from its first row.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            next_seq: 1,
            prev: GENESIS_HASH,
            events: 0,
            breaks: Vec::new(),
            break_count: 0,
        }
    }

    /// Whether a break was found so far.
    pub fn is_broken(&self) -> bool {
        self.break_count > 0
    }

    /// Records a break found by a check outside the chain (such as a column
    /// cross-check).
    pub fn record_break(&mut self, seq: u64, kind: BreakKind) {
        self.record(ChainBreak::at(seq, kind));
    }

    fn record(&mut self, b: ChainBreak) {
        self.break_count += 1;
        if self.breaks.len() < MAX_LISTED_BREAKS {
            self.breaks.push(b);
        }
    }

    /// Checks the next row.
    pub fn push(&mut self, row: &ChainRow<'_>) {
        if row.seq < self.next_seq {
            // A repeated or out-of-order number: not part of the chain.
            self.record_break(row.seq, BreakKind::Unexpected);
            return;
        }
        let after_gap = row.seq > self.next_seq;
        if after_gap {
            self.record(ChainBreak {
                seq: self.next_seq,
                through: row.seq - 1,
                kind: BreakKind::Missing,
            });
        }
        self.events += 1;
        // After a gap the previous row is unknown: the link is not checked.
        if !after_gap && row.prev_hash != self.prev {
            self.record_break(row.seq, BreakKind::PrevHashMismatch);
        }
        let link: [u8; 32] = row.prev_hash.try_into().unwrap_or([0; 32]);
        let computed = chain_hash(&link, row.seq, &self.stream, row.content);
        if row.hash != computed || row.prev_hash.len() != 32 {
            self.record_break(row.seq, BreakKind::HashMismatch);
        }
        self.prev = row.hash.try_into().unwrap_or([0; 32]);
        self.next_seq = row.seq + 1;
    }

    /// Ends the walk, comparing the last row with the stream head
    /// (`(last_seq, last_hash)` as the store recorded it), if the store keeps one.
    pub fn finish(mut self, head: Option<(u64, [u8; 32])>) -> ChainReport {
        let last_seq = self.next_seq - 1;
        match head {
            None if last_seq > 0 => self.record_break(last_seq, BreakKind::HeadMissing),
            None => {}
            Some((head_seq, _)) if head_seq > last_seq => self.record(ChainBreak {
                seq: last_seq + 1,
                through: head_seq,
                kind: BreakKind::Missing,
            }),
            Some((head_seq, _)) if head_seq < last_seq => self.record(ChainBreak {
                seq: head_seq + 1,
                through: last_seq,
                kind: BreakKind::Unexpected,
            }),
            Some((head_seq, head_hash)) if last_seq > 0 && head_hash != self.prev => {
                self.record_break(head_seq, BreakKind::HeadMismatch);
            }
            Some(_) => {}
        }
        ChainReport {
            stream: self.stream,
            events: self.events,
            last_seq,
            last_hash: (last_seq > 0).then_some(self.prev),
            breaks: self.breaks,
            break_count: self.break_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stored {
        seq: u64,
        prev: [u8; 32],
        hash: [u8; 32],
        content: String,
    }

    fn chain(stream: &str, n: u64) -> Vec<Stored> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let content = format!(r#"{{"n":{seq}}}"#);
                let hash = chain_hash(&prev, seq, stream, &content);
                let row = Stored {
                    seq,
                    prev,
                    hash,
                    content,
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(stream: &str, rows: &[Stored], head: Option<(u64, [u8; 32])>) -> ChainReport {
        let mut v = ChainVerifier::new(stream);
        for r in rows {
            v.push(&ChainRow {
                seq: r.seq,
                prev_hash: &r.prev,
                hash: &r.hash,
                content: &r.content,
            });
        }
        v.finish(head)
    }

    fn head(rows: &[Stored]) -> Option<(u64, [u8; 32])> {
        rows.last().map(|r| (r.seq, r.hash))
    }

    fn breaks(report: &ChainReport) -> Vec<(u64, u64, BreakKind)> {
        assert_eq!(report.break_count, report.breaks.len() as u64);
        report
            .breaks
            .iter()
            .map(|b| (b.seq, b.through, b.kind.clone()))
            .collect()
    }

    fn one(seq: u64, kind: BreakKind) -> (u64, u64, BreakKind) {
        (seq, seq, kind)
    }

    #[test]
    fn hash_is_the_documented_construction() {
        let mut input = Vec::new();
        input.extend_from_slice(&[7u8; 32]);
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(&2u64.to_be_bytes());
        input.extend_from_slice(b"s1");
        input.extend_from_slice(b"{}");
        let expected: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(chain_hash(&[7; 32], 3, "s1", "{}"), expected);
        // The stream name is length-prefixed: moving bytes across the boundary changes the hash.
        assert_ne!(
            chain_hash(&GENESIS_HASH, 1, "ab", "c"),
            chain_hash(&GENESIS_HASH, 1, "a", "bc")
        );
        assert_ne!(
            chain_hash(&GENESIS_HASH, 1, "a", "c"),
            chain_hash(&GENESIS_HASH, 2, "a", "c")
        );
    }

    #[test]
    fn intact_chains_pass() {
        let rows = chain("s", 5);
        let report = verify("s", &rows, head(&rows));
        assert!(report.is_intact(), "{report}");
        assert_eq!((report.events, report.last_seq), (5, 5));
        assert_eq!(report.last_hash, Some(rows[4].hash));
        assert!(report.first_break().is_none());
        assert!(
            report
                .to_string()
                .starts_with("ok     stream=s events=5 last_seq=5 head=")
        );
        let empty = verify("s", &[], None);
        assert!(empty.is_intact() && empty.last_hash.is_none());
        assert!(empty.to_string().ends_with("head=-"));
    }

    #[test]
    fn changed_content_is_one_hash_mismatch_at_its_seq() {
        let mut rows = chain("s", 5);
        rows[2].content = r#"{"n":999}"#.into();
        let report = verify("s", &rows, head(&rows));
        assert_eq!(breaks(&report), [one(3, BreakKind::HashMismatch)]);
        assert_eq!(report.events, 5, "every row is checked");
        assert_eq!(
            report.to_string(),
            "BROKEN stream=s events=5 last_seq=5 breaks=1\n  seq=3: hash does not match the row's content"
        );
    }

    #[test]
    fn a_rehashed_row_breaks_the_next_link() {
        let mut rows = chain("s", 5);
        rows[2].content = r#"{"n":999}"#.into();
        rows[2].hash = chain_hash(&rows[2].prev, 3, "s", &rows[2].content);
        // Row 4 keeps the old hash as its prev_hash; the head too.
        assert_eq!(
            breaks(&verify("s", &rows, head(&rows))),
            [one(4, BreakKind::PrevHashMismatch)]
        );
    }

    #[test]
    fn a_changed_stored_hash_breaks_its_row_and_the_next_link() {
        let mut rows = chain("s", 3);
        rows[0].hash = [9; 32];
        assert_eq!(
            breaks(&verify("s", &rows, head(&rows))),
            [
                one(1, BreakKind::HashMismatch),
                one(2, BreakKind::PrevHashMismatch)
            ]
        );
    }

    #[test]
    fn deleted_rows_are_missing_runs() {
        let mut rows = chain("s", 5);
        let h = head(&rows);
        rows.remove(1);
        assert_eq!(breaks(&verify("s", &rows, h)), [one(2, BreakKind::Missing)]);
        let mut rows = chain("s", 9);
        let h = head(&rows);
        rows.drain(1..4); // 2, 3, 4
        rows.remove(3); // 7
        rows.truncate(4); // 9 (8 is the last one kept)
        assert_eq!(
            breaks(&verify("s", &rows, h)),
            [
                (2, 4, BreakKind::Missing),
                one(7, BreakKind::Missing),
                one(9, BreakKind::Missing)
            ]
        );
        let report = verify("s", &rows, h);
        assert!(
            report
                .to_string()
                .contains("\n  seq=2..4: row missing\n  seq=7: row missing"),
            "{report}"
        );
        let rows = chain("s", 5);
        let h = head(&rows);
        assert_eq!(
            breaks(&verify("s", &rows[1..], h)),
            [one(1, BreakKind::Missing)]
        );
        assert_eq!(breaks(&verify("s", &[], h)), [(1, 5, BreakKind::Missing)]);
    }

    #[test]
    fn every_break_of_a_stream_is_reported() {
        let mut rows = chain("s", 12);
        let h = head(&rows);
        rows[1].content = "{}".into(); // 2: changed
        rows[4].prev = [1; 32]; // 5: bad link, its own hash wrong too
        rows[7].content = r#"{"n":80}"#.into(); // 8: changed and re-hashed
        rows[7].hash = chain_hash(&rows[7].prev, 8, "s", &rows[7].content);
        rows.remove(10); // 11: deleted
        let mut v = ChainVerifier::new("s");
        for r in &rows {
            v.push(&ChainRow {
                seq: r.seq,
                prev_hash: &r.prev,
                hash: &r.hash,
                content: &r.content,
            });
            if r.seq == 6 {
                v.record_break(6, BreakKind::ColumnMismatch { column: "type" });
            }
        }
        let report = v.finish(h);
        assert_eq!(
            breaks(&report),
            [
                one(2, BreakKind::HashMismatch),
                one(5, BreakKind::PrevHashMismatch),
                one(5, BreakKind::HashMismatch),
                one(6, BreakKind::ColumnMismatch { column: "type" }),
                one(9, BreakKind::PrevHashMismatch),
                one(11, BreakKind::Missing),
            ]
        );
        assert_eq!((report.events, report.last_seq), (11, 12));
        assert_eq!(report.first_break().map(|b| b.seq), Some(2));
        assert!(
            report
                .to_string()
                .starts_with("BROKEN stream=s events=11 last_seq=12 breaks=6\n")
        );
    }

    #[test]
    fn the_list_is_bounded_the_count_is_not() {
        let rows = chain("s", MAX_LISTED_BREAKS as u64 + 10);
        // Verified under another name: every row's hash differs.
        let report = verify("t", &rows, head(&rows));
        assert_eq!(report.breaks.len(), MAX_LISTED_BREAKS);
        assert_eq!(report.break_count, MAX_LISTED_BREAKS as u64 + 10);
        assert!(report.to_string().ends_with("\n  ... and 10 more"));
    }

    #[test]
    fn head_disagreements() {
        let rows = chain("s", 3);
        assert_eq!(
            breaks(&verify("s", &rows, None)),
            [one(3, BreakKind::HeadMissing)]
        );
        assert_eq!(
            breaks(&verify("s", &rows, Some((1, rows[0].hash)))),
            [(2, 3, BreakKind::Unexpected)]
        );
        assert_eq!(
            breaks(&verify("s", &rows, Some((3, [1; 32])))),
            [one(3, BreakKind::HeadMismatch)]
        );
    }

    #[test]
    fn other_breaks() {
        let mut dup = chain("s", 3);
        dup[2].seq = 2;
        assert_eq!(
            breaks(&verify("s", &dup, Some((2, dup[1].hash)))),
            [one(2, BreakKind::Unexpected)]
        );
        let mut v = ChainVerifier::new("s");
        v.record_break(1, BreakKind::ColumnMismatch { column: "type" });
        v.record_break(2, BreakKind::HashMismatch);
        assert!(v.is_broken());
        let report = v.finish(None);
        assert_eq!(report.break_count, 2);
        assert!(report.to_string().contains("column type does not match"));
    }
}
