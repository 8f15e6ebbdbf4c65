#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod config;
mod context;
mod execute;
mod future;
mod hook;
mod key;
mod layer;
pub mod metrics;
mod observe;
mod policy;
mod problem;
mod replay;
mod request_id;
mod service;
mod verify;

pub use body::{RequestBody, ResponseBody};
pub use config::{
    Concurrency, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_STORED_RESPONSE, DEFAULT_REPLAY_HEADERS,
    IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, MAX_REQUEST_ID_LEN, NEVER_REPLAYED, StoreFailureMode,
    X_REQUEST_ID,
};
pub use context::IdempotencyContext;
pub use future::ResponseFuture;
pub use hook::{Decision, DecisionHook, DecisionOutcome};
pub use key::{
    HeaderKey, JsonFields, KeyInput, KeyMaterial, KeyRejection, KeySource, ParamType, PathParams,
    ScopeSource, parse_key_header,
};
pub use layer::IdempotencyLayer;
pub use policy::{DEFAULT_RELEASED, OutcomeAction, OutcomePolicy, ReleaseKey};
pub use problem::{PROBLEM_BASE, PROBLEM_CONTENT_TYPE, ProblemType};
pub use request_id::{
    RequestId, RequestIdFuture, RequestIdLayer, ensure_request_id, is_acceptable_request_id,
};
pub use service::Idempotency;
pub use verify::{VerifyFuture, VerifyResource};
