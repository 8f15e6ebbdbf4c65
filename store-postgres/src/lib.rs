#![doc = include_str!("../README.md")]

mod admin;
mod error;
mod inbox;
mod listen;
mod migrate;
pub mod natural;
mod reaper;
mod row;
mod sql;
mod store;

pub use error::SetupError;
pub use inbox::PostgresInbox;
pub use natural::{
    Inserted, Isolation, NaturalKey, NaturalKeyError, RetryPolicy, retry_transaction,
};
pub use reaper::Reaper;
pub use store::{ClaimCommit, DEFAULT_SCHEMA, PostgresStore, PostgresStoreBuilder};

/// Re-exported so applications name the same sqlx the store was built with.
pub use sqlx;
