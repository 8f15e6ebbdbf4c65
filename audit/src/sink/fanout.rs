//! [`FanOut`]: one event, several sinks.

use futures_util::future::join_all;

use crate::error::{AuditError, BatchError};
use crate::event::AuditEvent;
use crate::sink::{AuditSink, DynSink};

/// Appends every event to all of its sinks, concurrently.
///
/// Every sink is tried even when another fails; the append fails with
/// [`AuditError::FanOut`] (carrying the first failure) if any sink failed.
/// Put a [`BufferedSink`](crate::BufferedSink) in front of a slow sink so it
/// does not hold the others' caller back.
///
/// ```
/// use idempotency_audit::{AuditEvent, AuditSink, FanOut, MemorySink, TracingSink};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let memory = MemorySink::new();
/// let sink = FanOut::new().with(TracingSink::new()).with(memory.clone());
/// sink.append(&AuditEvent::builder("promotion.attempted", "/promotions").build()).await?;
/// assert_eq!(memory.len(), 1);
/// # Ok::<_, idempotency_audit::AuditError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct FanOut {
    sinks: Vec<DynSink>,
}

impl FanOut {
    /// A fan-out to no sink yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink.
    pub fn with<S: AuditSink + 'static>(mut self, sink: S) -> Self {
        self.sinks.push(DynSink::new(sink));
        self
    }

    /// How many sinks there are.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// Whether there is no sink.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl AuditSink for FanOut {
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let results = join_all(self.sinks.iter().map(|s| s.append(event))).await;
        let total = results.len();
        let mut errors = results.into_iter().filter_map(Result::err);
        match errors.next() {
            None => Ok(()),
            Some(first) => Err(AuditError::FanOut {
                failed: 1 + errors.count(),
                total,
                source: Box::new(first),
            }),
        }
    }

    /// Gives the batch to every sink; on failure, `written` is the least any
    /// failing sink wrote (and no event is reported as refused: what one
    /// sink refused another may have written).
    async fn append_batch(&self, events: &[AuditEvent]) -> Result<(), BatchError> {
        let results = join_all(self.sinks.iter().map(|s| s.append_batch(events))).await;
        let total = results.len();
        let mut errors: Vec<BatchError> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            return Ok(());
        }
        let written = errors.iter().map(|e| e.written).min().unwrap_or(0);
        let failed = errors.len();
        let first = errors.swap_remove(0);
        Err(BatchError::new(
            written,
            AuditError::FanOut {
                failed,
                total,
                source: Box::new(first.source),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemorySink;
    use crate::sink::test_sinks::Failing;

    #[tokio::test]
    async fn every_sink_gets_every_event() {
        let (a, b) = (MemorySink::new(), MemorySink::new());
        let fan = FanOut::new().with(a.clone()).with(b.clone());
        assert_eq!(fan.len(), 2);
        let e = AuditEvent::builder("t", "/s").build();
        fan.append(&e).await.unwrap();
        fan.append_batch(&[e.clone(), e.clone()]).await.unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(b.events(), a.events());
    }

    #[tokio::test]
    async fn a_failing_sink_does_not_stop_the_others() {
        let mem = MemorySink::new();
        let fan = FanOut::new()
            .with(Failing::default())
            .with(mem.clone())
            .with(Failing::default());
        let e = AuditEvent::builder("t", "/s").build();
        match fan.append(&e).await.unwrap_err() {
            AuditError::FanOut {
                failed,
                total,
                source,
            } => {
                assert_eq!((failed, total), (2, 3));
                assert!(matches!(*source, AuditError::Backend { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(mem.len(), 1);

        let err = fan.append_batch(&[e.clone(), e]).await.unwrap_err();
        assert_eq!(err.written, 0);
        assert!(matches!(
            err.source,
            AuditError::FanOut {
                failed: 2,
                total: 3,
                ..
            }
        ));
        assert_eq!(mem.len(), 3);
    }

    #[tokio::test]
    async fn empty_fan_out_accepts_everything() {
        let fan = FanOut::new();
        assert!(fan.is_empty());
        fan.append(&AuditEvent::builder("t", "/s").build())
            .await
            .unwrap();
    }
}
