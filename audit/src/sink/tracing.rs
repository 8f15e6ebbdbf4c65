//! [`TracingSink`]: writes events as `tracing` events.

use tracing::Level;

use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::sink::AuditSink;

macro_rules! emit {
    ($level:expr, $e:expr) => {{
        let e = $e;
        tracing::event!(
            target: "audit",
            $level,
            audit.id = %e.id,
            audit.event_type = %e.event_type,
            audit.source = %e.source,
            audit.subject = e.subject.as_deref(),
            audit.outcome = e.outcome.as_ref().map(|o| o.as_str()),
            audit.actor = e.actor.as_ref().map(|a| a.id.as_str()),
            audit.correlation_id = e.correlation_id.as_deref(),
            audit.key_hash = e.key_hash.as_deref(),
            event = %e.canonical_json(),
            "audit event"
        )
    }};
}

/// Emits each event as a `tracing` event with target `audit` (level INFO by
/// default): the main attributes as fields, the whole event as canonical
/// JSON in the `event` field. It never fails.
///
/// Useful alongside a durable sink (see [`FanOut`](crate::FanOut)) or in
/// development; log pipelines are not tamper-evident.
#[derive(Debug, Clone, Copy)]
pub struct TracingSink {
    level: Level,
}

impl TracingSink {
    /// A sink logging at INFO.
    pub const fn new() -> Self {
        Self { level: Level::INFO }
    }

    /// Logs at `level` instead.
    #[must_use]
    pub const fn with_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }
}

impl TracingSink {
    /// Logs `event` now (what [`append`](AuditSink::append) does, without a future).
    pub fn emit(&self, event: &AuditEvent) {
        match self.level {
            Level::ERROR => emit!(Level::ERROR, event),
            Level::WARN => emit!(Level::WARN, event),
            Level::INFO => emit!(Level::INFO, event),
            Level::DEBUG => emit!(Level::DEBUG, event),
            _ => emit!(Level::TRACE, event),
        }
    }
}

impl Default for TracingSink {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditSink for TracingSink {
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.emit(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_the_event_at_the_chosen_level() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let e = AuditEvent::builder("promotion.attempted", "/promotions")
            .subject("E-1/3")
            .build();
        TracingSink::default().append(&e).await.unwrap();
        TracingSink::new()
            .with_level(Level::TRACE)
            .append(&e)
            .await
            .unwrap();
        for level in [Level::ERROR, Level::WARN, Level::DEBUG] {
            TracingSink::new()
                .with_level(level)
                .append(&e)
                .await
                .unwrap();
        }

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "TRACE is filtered out: {text}");
        assert!(lines[0].contains("INFO") && lines[0].contains("audit:"));
        assert!(lines[0].contains(&format!("audit.id={}", e.id)));
        assert!(lines[0].contains("audit.subject=\"E-1/3\""));
        assert!(lines[0].contains(&e.canonical_json()));
        assert!(
            lines[1].contains("ERROR") && lines[2].contains("WARN") && lines[3].contains("DEBUG")
        );
    }
}
