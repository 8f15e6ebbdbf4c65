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

/// What is wrong at the first broken link of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// No row carries this sequence number: a row was deleted (a gap, or
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

/// The first broken link of a stream: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The sequence number at which the chain breaks.
    pub seq: u64,
    /// What is wrong there.
    pub kind: BreakKind,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}: {}", self.seq, self.kind)
    }
}

/// The result of verifying one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The stream.
    pub stream: String,
    /// Rows checked.
    pub events: u64,
    /// The last sequence number seen (0 for an empty stream).
    pub last_seq: u64,
    /// The hash of the last row seen, if any. Record it somewhere else to be
    /// able to detect a later rewrite of the whole chain.
    pub last_hash: Option<[u8; 32]>,
    /// The first broken link, if any.
    pub broken: Option<ChainBreak>,
}

impl ChainReport {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(
                f,
                "ok     stream={} events={} last_seq={} head={}",
                self.stream,
                self.events,
                self.last_seq,
                self.last_hash
                    .map_or_else(|| "-".to_owned(), |h| crate::hex(&h))
            ),
            Some(b) => write!(
                f,
                "BROKEN stream={} seq={} events_checked={}: {}",
                self.stream, b.seq, self.events, b.kind
            ),
        }
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

/// Checks a stream's rows one at a time, in sequence order, in constant memory.
///
/// ```
/// use idempotency_audit::{chain_hash, BreakKind, ChainRow, ChainVerifier, GENESIS_HASH};
/// let h1 = chain_hash(&GENESIS_HASH, 1, "s", "{}");
/// let h2 = chain_hash(&h1, 2, "s", "{}");
/// let mut v = ChainVerifier::new("s");
/// v.push(&ChainRow { seq: 1, prev_hash: &GENESIS_HASH, hash: &h1, content: "{}" });
/// // Row 2 was deleted; row 3 follows row 1.
/// v.push(&ChainRow { seq: 3, prev_hash: &h2, hash: &h2, content: "{}" });
/// let report = v.finish(Some((3, h2)));
/// let broken = report.broken.unwrap();
/// assert_eq!((broken.seq, broken.kind), (2, BreakKind::Missing));
/// ```
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    stream: String,
    next_seq: u64,
    prev: [u8; 32],
    events: u64,
    broken: Option<ChainBreak>,
}

impl ChainVerifier {
    /// Starts verifying `stream` from its first row.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            next_seq: 1,
            prev: GENESIS_HASH,
            events: 0,
            broken: None,
        }
    }

    /// Whether a break was found (later rows are then ignored).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Records a break found by a check outside the chain (such as a column
    /// cross-check), unless an earlier one was recorded.
    pub fn record_break(&mut self, seq: u64, kind: BreakKind) {
        if self.broken.is_none() {
            self.broken = Some(ChainBreak { seq, kind });
        }
    }

    /// Checks the next row.
    pub fn push(&mut self, row: &ChainRow<'_>) {
        if self.broken.is_some() {
            return;
        }
        let expected = self.next_seq;
        if row.seq != expected {
            let kind = if row.seq > expected {
                BreakKind::Missing
            } else {
                BreakKind::Unexpected
            };
            let seq = if row.seq > expected {
                expected
            } else {
                row.seq
            };
            self.record_break(seq, kind);
            return;
        }
        self.events += 1;
        if row.prev_hash != self.prev {
            self.record_break(row.seq, BreakKind::PrevHashMismatch);
            return;
        }
        let computed = chain_hash(&self.prev, row.seq, &self.stream, row.content);
        if row.hash != computed {
            self.record_break(row.seq, BreakKind::HashMismatch);
            return;
        }
        self.prev = computed;
        self.next_seq += 1;
    }

    /// Ends the walk, comparing the last row with the stream head
    /// (`(last_seq, last_hash)` as the store recorded it), if the store keeps one.
    pub fn finish(mut self, head: Option<(u64, [u8; 32])>) -> ChainReport {
        let last_seq = self.next_seq - 1;
        if self.broken.is_none() {
            match head {
                None if last_seq > 0 => self.record_break(last_seq, BreakKind::HeadMissing),
                None => {}
                Some((head_seq, _)) if head_seq > last_seq => {
                    self.record_break(last_seq + 1, BreakKind::Missing);
                }
                Some((head_seq, _)) if head_seq < last_seq => {
                    self.record_break(head_seq + 1, BreakKind::Unexpected);
                }
                Some((head_seq, head_hash)) if last_seq > 0 && head_hash != self.prev => {
                    self.record_break(head_seq, BreakKind::HeadMismatch);
                }
                Some(_) => {}
            }
        }
        ChainReport {
            stream: self.stream,
            events: self.events,
            last_seq,
            last_hash: (last_seq > 0).then_some(self.prev),
            broken: self.broken,
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

    fn broken_at(report: &ChainReport) -> (u64, BreakKind) {
        let b = report.broken.clone().expect("expected a break");
        (b.seq, b.kind)
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
    fn changed_content_is_a_hash_mismatch_at_its_seq() {
        let mut rows = chain("s", 5);
        rows[2].content = r#"{"n":999}"#.into();
        let report = verify("s", &rows, head(&rows));
        assert_eq!(broken_at(&report), (3, BreakKind::HashMismatch));
        assert_eq!(report.events, 3);
        assert!(report.to_string().contains("BROKEN stream=s seq=3"));
    }

    #[test]
    fn a_rehashed_row_breaks_the_next_link() {
        let mut rows = chain("s", 5);
        rows[2].content = r#"{"n":999}"#.into();
        rows[2].hash = chain_hash(&rows[2].prev, 3, "s", &rows[2].content);
        assert_eq!(
            broken_at(&verify("s", &rows, head(&rows))),
            (4, BreakKind::PrevHashMismatch)
        );
    }

    #[test]
    fn deleted_rows_are_missing_seqs() {
        let mut rows = chain("s", 5);
        let h = head(&rows);
        rows.remove(1);
        assert_eq!(broken_at(&verify("s", &rows, h)), (2, BreakKind::Missing));
        let mut rows = chain("s", 5);
        rows.truncate(3);
        assert_eq!(broken_at(&verify("s", &rows, h)), (4, BreakKind::Missing));
        let rows = chain("s", 5);
        assert_eq!(
            broken_at(&verify("s", &rows[1..], h)),
            (1, BreakKind::Missing)
        );
        assert_eq!(broken_at(&verify("s", &[], h)), (1, BreakKind::Missing));
    }

    #[test]
    fn head_disagreements() {
        let rows = chain("s", 3);
        assert_eq!(
            broken_at(&verify("s", &rows, None)),
            (3, BreakKind::HeadMissing)
        );
        assert_eq!(
            broken_at(&verify("s", &rows, Some((2, rows[1].hash)))),
            (3, BreakKind::Unexpected)
        );
        assert_eq!(
            broken_at(&verify("s", &rows, Some((3, [1; 32])))),
            (3, BreakKind::HeadMismatch)
        );
    }

    #[test]
    fn other_breaks() {
        let rows = chain("s", 3);
        // Same rows checked under another stream name: every hash differs.
        assert_eq!(
            broken_at(&verify("t", &rows, head(&rows))),
            (1, BreakKind::HashMismatch)
        );
        let mut dup = chain("s", 3);
        dup[2].seq = 2;
        assert_eq!(
            broken_at(&verify("s", &dup, head(&dup))),
            (2, BreakKind::Unexpected)
        );
        let mut v = ChainVerifier::new("s");
        v.record_break(1, BreakKind::ColumnMismatch { column: "type" });
        v.record_break(2, BreakKind::HashMismatch);
        assert!(v.is_broken());
        let report = v.finish(None);
        assert_eq!(
            broken_at(&report),
            (1, BreakKind::ColumnMismatch { column: "type" })
        );
        assert!(report.to_string().contains("column type does not match"));
    }
}
