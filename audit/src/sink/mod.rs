//! The [`AuditSink`] trait and the sinks that need no database.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{AuditError, BatchError};
use crate::event::AuditEvent;

pub(crate) mod buffered;
pub(crate) mod fanout;
pub(crate) mod memory;
pub(crate) mod tracing;

/// Where audit events go. Appending is the only write: a sink never updates
/// or deletes what it was given.
///
/// Implemented with native `async fn` (or `impl Future + Send`), and for
/// `Arc<S>`, `&S` and `Box<S>` of any sink. [`DynSink`] erases the type.
///
/// ```
/// use idempotency_audit::{AuditError, AuditEvent, AuditSink};
///
/// /// Counts events.
/// #[derive(Default)]
/// struct Counter(std::sync::atomic::AtomicUsize);
///
/// impl AuditSink for Counter {
///     async fn append(&self, _event: &AuditEvent) -> Result<(), AuditError> {
///         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         Ok(())
///     }
/// }
/// ```
pub trait AuditSink: Send + Sync {
    /// Appends one event.
    ///
    /// # Errors
    ///
    /// [`AuditError`] when the sink could not store the event.
    ///
    /// # Cancel safety
    ///
    /// Depends on the sink; for the sinks of this crate, dropping the future
    /// either wrote the event entirely or not at all.
    fn append(&self, event: &AuditEvent) -> impl Future<Output = Result<(), AuditError>> + Send;

    /// Appends several events in order.
    ///
    /// The default appends them one by one and stops at the first failure.
    /// Sinks that can do better override it (the PostgreSQL sink writes a
    /// batch in one transaction, and refuses a bad event on its own so that
    /// the others are still written).
    ///
    /// # Errors
    ///
    /// [`BatchError`] saying how many events were written, which were
    /// refused on their own, and why the rest were not written.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave a prefix of the batch written.
    fn append_batch(
        &self,
        events: &[AuditEvent],
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        async move {
            for (written, event) in events.iter().enumerate() {
                if let Err(source) = self.append(event).await {
                    return Err(BatchError::new(written, source));
                }
            }
            Ok(())
        }
    }
}

macro_rules! forward_sink {
    ($ty:ty) => {
        impl<T: AuditSink + ?Sized> AuditSink for $ty {
            fn append(
                &self,
                event: &AuditEvent,
            ) -> impl Future<Output = Result<(), AuditError>> + Send {
                (**self).append(event)
            }
            fn append_batch(
                &self,
                events: &[AuditEvent],
            ) -> impl Future<Output = Result<(), BatchError>> + Send {
                (**self).append_batch(events)
            }
        }
    };
}

forward_sink!(Arc<T>);
forward_sink!(&T);
forward_sink!(Box<T>);

type BoxFut<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'a>>;

/// Object-safe mirror of [`AuditSink`], implemented for every sink.
trait ErasedSink: Send + Sync {
    fn append_dyn<'a>(&'a self, event: &'a AuditEvent) -> BoxFut<'a, AuditError>;
    fn append_batch_dyn<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFut<'a, BatchError>;
}

impl<S: AuditSink> ErasedSink for S {
    fn append_dyn<'a>(&'a self, event: &'a AuditEvent) -> BoxFut<'a, AuditError> {
        Box::pin(self.append(event))
    }
    fn append_batch_dyn<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFut<'a, BatchError> {
        Box::pin(self.append_batch(events))
    }
}

/// A type-erased, cheaply cloneable sink, for holding sinks of different
/// types together (as [`FanOut`](crate::FanOut) does) or choosing one at run time.
///
/// ```
/// use idempotency_audit::{DynSink, MemorySink, TracingSink};
/// let sinks = [DynSink::new(MemorySink::new()), DynSink::new(TracingSink::new())];
/// # drop(sinks);
/// ```
#[derive(Clone)]
pub struct DynSink(Arc<dyn ErasedSink>);

impl DynSink {
    /// Erases a sink's type.
    pub fn new<S: AuditSink + 'static>(sink: S) -> Self {
        Self(Arc::new(sink))
    }
}

impl std::fmt::Debug for DynSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynSink")
    }
}

impl AuditSink for DynSink {
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.0.append_dyn(event).await
    }
    async fn append_batch(&self, events: &[AuditEvent]) -> Result<(), BatchError> {
        self.0.append_batch_dyn(events).await
    }
}

#[cfg(test)]
pub(crate) mod test_sinks {
    //! Sinks with controlled behaviour, for exercising the combinators.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Fails every append with a backend error.
    #[derive(Debug, Default)]
    pub(crate) struct Failing {
        pub(crate) calls: AtomicUsize,
    }

    impl AuditSink for Failing {
        async fn append(&self, _event: &AuditEvent) -> Result<(), AuditError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(AuditError::backend("refused"))
        }
    }

    /// Waits for a permit before each append, so a test can hold writes back.
    #[derive(Debug, Clone)]
    pub(crate) struct Gated {
        pub(crate) gate: Arc<tokio::sync::Semaphore>,
        pub(crate) inner: crate::MemorySink,
    }

    impl Gated {
        pub(crate) fn closed() -> Self {
            Self {
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                inner: crate::MemorySink::new(),
            }
        }
    }

    impl AuditSink for Gated {
        async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
            let permit = self.gate.acquire().await.map_err(|_| AuditError::Closed)?;
            permit.forget();
            self.inner.append(event).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_sinks::Failing;
    use super::*;
    use crate::MemorySink;

    fn event(n: u32) -> AuditEvent {
        AuditEvent::builder("t", "/s").attribute("n", n).build()
    }

    #[tokio::test]
    async fn default_batch_stops_at_first_failure() {
        let mem = MemorySink::new();
        let events: Vec<_> = (0..3).map(event).collect();
        mem.append_batch(&events).await.unwrap();
        assert_eq!(mem.events(), events);

        let failing = Failing::default();
        let err = failing.append_batch(&events).await.unwrap_err();
        assert_eq!(err.written, 0);
        assert!(matches!(err.source, AuditError::Backend { .. }));
        assert_eq!(failing.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn forwarding_and_erased_sinks_reach_the_inner_sink() {
        let mem = MemorySink::new();
        Arc::new(mem.clone()).append(&event(1)).await.unwrap();
        let by_ref: &MemorySink = &mem;
        <&MemorySink as AuditSink>::append(&by_ref, &event(2))
            .await
            .unwrap();
        Box::new(mem.clone()).append(&event(3)).await.unwrap();
        let dynamic = DynSink::new(mem.clone());
        dynamic.append(&event(4)).await.unwrap();
        dynamic.append_batch(&[event(5), event(6)]).await.unwrap();
        assert_eq!(mem.len(), 6);
        let err = DynSink::new(Failing::default())
            .append_batch(&[event(7)])
            .await
            .unwrap_err();
        assert_eq!(err.written, 0);
    }
}
