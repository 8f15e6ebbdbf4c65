//! [`MemorySink`]: keeps events in memory, for tests.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::sink::AuditSink;

/// Keeps every event in memory, in append order, so tests can read them back.
///
/// Clones share the same events.
///
/// ```
/// use idempotency_audit::{AuditEvent, AuditSink, MemorySink};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let sink = MemorySink::new();
/// sink.append(&AuditEvent::builder("promotion.attempted", "/promotions").build()).await?;
/// assert_eq!(sink.of_type("promotion.attempted").len(), 1);
/// # Ok::<_, idempotency_audit::AuditError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<AuditEvent>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<AuditEvent>> {
        // A panic while holding the lock cannot leave the Vec half-written.
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an event without a future (what [`append`](AuditSink::append) does).
    pub fn push(&self, event: AuditEvent) {
        self.lock().push(event);
    }

    /// A copy of every event, in append order.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.lock().clone()
    }

    /// The events of one type, in append order.
    pub fn of_type(&self, event_type: &str) -> Vec<AuditEvent> {
        self.lock()
            .iter()
            .filter(|e| e.event_type == event_type)
            .cloned()
            .collect()
    }

    /// The last event appended.
    pub fn last(&self) -> Option<AuditEvent> {
        self.lock().last().cloned()
    }

    /// How many events were appended.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no event was appended.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Removes and returns every event.
    pub fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.lock())
    }
}

impl AuditSink for MemorySink {
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.push(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_back_in_order_and_shares_between_clones() {
        let sink = MemorySink::new();
        assert!(sink.is_empty() && sink.last().is_none());
        let a = AuditEvent::builder("a", "/s").build();
        let b = AuditEvent::builder("b", "/s").build();
        sink.append(&a).await.unwrap();
        sink.clone().append(&b).await.unwrap();
        assert_eq!(sink.events(), vec![a.clone(), b.clone()]);
        assert_eq!(sink.of_type("b"), vec![b.clone()]);
        assert_eq!(sink.last(), Some(b));
        assert_eq!(sink.len(), 2);
        assert_eq!(sink.take().len(), 2);
        assert!(sink.is_empty());
    }
}
