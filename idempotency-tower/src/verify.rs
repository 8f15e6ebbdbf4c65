//! [`VerifyResource`]: check, before a replay, that what the record points at
//! still exists.

use std::future::Future;
use std::pin::Pin;

use idempotency_core::BoxError;

/// The boxed future a [`VerifyResource`] returns.
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send + 'a>>;

/// Checks a completed record's resource reference before its response is replayed.
///
/// A record that says "work order 42 was created" while work order 42 no
/// longer exists (deleted, or never committed) must not be replayed as a
/// success. With a check installed
/// ([`IdempotencyLayer::verify_resource`](crate::IdempotencyLayer::verify_resource)),
/// every replay of a `Completed` record that carries a resource asks it first:
///
/// | the check answers | the layer |
/// |---|---|
/// | `Ok(true)` | replays as usual |
/// | `Ok(false)` | marks the record `Corrupted`, logs an error with `alert = true`, answers 500 `record-corrupted`; every later request with the key gets the same until an operator resolves the record |
/// | `Err(_)`, or no answer within the store timeout | answers 503 `store-unavailable` with `Retry-After`; the record is unchanged |
///
/// Records without a resource reference are replayed without asking.
///
/// Closures `Fn(String) -> impl Future<Output = Result<bool, BoxError>>` implement this trait:
///
/// ```
/// use idempotency_core::{BoxError, MemoryStore};
/// use idempotency_tower::IdempotencyLayer;
///
/// let layer = IdempotencyLayer::new(MemoryStore::new()).verify_resource(|resource: String| async move {
///     // e.g. SELECT EXISTS (SELECT 1 FROM work_orders WHERE id = $1)
///     Ok::<_, BoxError>(resource.starts_with("/work-orders/"))
/// });
/// # drop(layer);
/// ```
pub trait VerifyResource: Send + Sync + 'static {
    /// Whether `resource` (the record's resource reference) still exists.
    fn exists(&self, resource: String) -> VerifyFuture<'_>;
}

impl<F, Fut> VerifyResource for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
{
    fn exists(&self, resource: String) -> VerifyFuture<'_> {
        Box::pin(self(resource))
    }
}
