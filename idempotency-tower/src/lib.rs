#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod context;
mod future;
mod hook;
mod key;
mod layer;
pub mod metrics;
mod policy;
mod problem;
mod service;
mod verify;

pub use body::{RequestBody, ResponseBody};
pub use context::IdempotencyContext;
pub use future::ResponseFuture;
pub use hook::{Decision, DecisionHook, DecisionOutcome};
pub use key::{
    HeaderKey, IDEMPOTENCY_KEY, JsonFields, KeyInput, KeyMaterial, KeyRejection, KeySource,
    ParamType, PathParams, ScopeSource,
};
pub use layer::{
    Concurrency, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_STORED_RESPONSE, DEFAULT_REPLAY_HEADERS,
    IdempotencyLayer, NEVER_REPLAYED, StoreFailureMode,
};
pub use policy::{DEFAULT_RELEASED, OutcomeAction, OutcomePolicy, ReleaseKey};
pub use problem::{PROBLEM_BASE, PROBLEM_CONTENT_TYPE, ProblemType};
pub use service::{
    IDEMPOTENT_REPLAYED, Idempotency, MAX_REQUEST_ID_LEN, X_REQUEST_ID, ensure_request_id,
    is_acceptable_request_id,
};
pub use verify::{VerifyFuture, VerifyResource};
