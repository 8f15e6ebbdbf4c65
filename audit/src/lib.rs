#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod canonical;
mod chain;
mod error;
mod event;
mod modes;
mod redact;
mod sink;
mod time;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod decision;

pub mod tlog;

pub use canonical::canonical_json;
pub use chain::{
    BreakKind, ChainBreak, ChainReport, ChainRow, ChainVerifier, GENESIS_HASH, MAX_LISTED_BREAKS,
    chain_hash,
};
pub use error::{AuditError, BatchError, BoxError, RefusedEvent};
pub use event::{
    Actor, ActorKind, AuditEvent, AuditEventBuilder, MAX_CORRELATION_ID_LEN, Outcome,
    SCHEMA_VERSION,
};
pub use modes::{AuditModes, Auditor, Mode, Recorded, TransactionalSink};
pub use redact::{PointerRedactor, REDACTED, RedactError, Redacting, Redactor};
pub use sink::buffered::{BufferConfig, BufferedSink, DROPPED_METRIC, DropReason, ShutdownReport};
pub use sink::fanout::FanOut;
pub use sink::memory::MemorySink;
pub use sink::tracing::TracingSink;
pub use sink::{AuditSink, DynSink};
pub use time::{EventTime, TimeParseError};

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
