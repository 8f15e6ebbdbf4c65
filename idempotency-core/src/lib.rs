#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
pub mod cache;
mod engine;
mod fingerprint;
mod inbox;
mod key;
mod memory;
pub mod metered;
mod once;
pub mod peek;
mod policy;
mod record;
mod store;
pub mod wait;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use admin::{AdminRecord, AdminStore, ListFilter, Listing};
pub use engine::{
    Attempt, OwnedAttempt, Run, SettleError, WithTimeout, claim_with_wait, downstream_key,
    with_timeout,
};
pub use fingerprint::{Fingerprint, FingerprintError, FingerprintMode, canonical_json};
pub use inbox::{
    Admission, Delivery, Disposition, HandlerFuture, INBOX_MESSAGES_TOTAL, Inbox, InboxError,
    InboxMessage, InboxStore, MAX_INBOX_ID_LEN, MAX_VERSION, MemoryInbox, MemoryInboxTx,
    MessageError,
};
pub use key::{
    IdempotencyKey, KeyError, KeySpec, MAX_KEY_LEN, StorageKey, derive_from_json, derive_from_value,
};
pub use memory::{MemoryStore, MemoryStoreBuilder};
pub use once::{Execution, FailureClass, Idempotent, RunError};
pub use policy::{MAX_DURATION, MIN_LEASE, Policy};
pub use record::{
    Completed, Corrupted, DecodeError, Failed, Lease, LeaseToken, MAX_STORE_MILLIS, Outcome,
    Pending, Record, RecordState, StoredResponse, Timestamp, clamp_millis,
};
pub use store::{
    BoxError, Claim, ClaimKind, ClaimRequest, ClockControl, Completion, DynStore, ErasedStore,
    Failure, IdempotencyStore, Observed, PurgeExpired, Resolution, StateKind, StoreError,
};

/// The repository README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct RepositoryReadme;
