#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod codec;
mod config;
mod conn;
mod error;
mod notify;
mod scripts;
mod store;

pub use config::{ConnectionMode, RedisConfig};
pub use error::ConfigError;
pub use store::RedisStore;

/// Re-exported so callers can name pool statistics without depending on it.
pub use deadpool_redis;
/// Re-exported so callers can build their own connections to the same server.
pub use redis;
