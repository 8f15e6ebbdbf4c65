//! The Work Execution consumer: a durable JetStream pull consumer with
//! explicit acks whose handler runs through the inbox, so each
//! `AppointmentCreated` / `AppointmentRescheduled` is applied to
//! `work_execution.planned` once, in version order per appointment,
//! whatever JetStream redelivers.
//!
//! | delivery | inbox | JetStream |
//! |---|---|---|
//! | applied, duplicate, stale | committed (or nothing to do) | ack (waits for the server's confirmation) |
//! | out of order | nothing written | nak with a delay: redelivered until the versions before it are in |
//! | handler or database failure | rolled back | nak with a delay |
//! | not an event (unparseable) | nothing | term, counted and logged |

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::StreamExt;
use idempotency_core::{Delivery, Inbox, InboxMessage};
use idempotency_postgres::PostgresInbox;
use serde_json::Value;
use uuid::Uuid;

use crate::metrics_names as m;
use crate::outbox::{CREATED, RESCHEDULED};

/// Where the consumer stops, for the crash tests (it prints a line naming
/// the point and then waits for ever, to be killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Inside the transaction, after the handler's writes, before the commit.
    BeforeCommit,
    /// After the commit, before the ack.
    AfterCommit,
}

/// The consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The durable consumer's name; also the inbox's consumer name.
    pub durable: String,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Delay of a nak (out of order, or a failure).
    pub nak_delay: Duration,
    /// Deliveries of one message before JetStream gives up on it.
    pub max_deliver: i64,
    /// A pause point (tests only).
    pub pause: Option<Pause>,
}

/// One event as the consumer reads it.
#[derive(Debug, Clone)]
struct Event {
    id: Uuid,
    kind: String,
    appointment: String,
    version: u64,
    source_type: String,
    source_id: String,
    start: String,
    minutes: i32,
}

fn parse(payload: &[u8]) -> Option<Event> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let kind = v["eventType"].as_str()?.to_owned();
    let start = match kind.as_str() {
        CREATED => v["scheduledDateTime"].as_str()?,
        RESCHEDULED => v["newScheduledDateTime"].as_str()?,
        _ => return None,
    }
    .to_owned();
    crate::body::parse_time(&start)?;
    Some(Event {
        id: v["eventId"].as_str()?.parse().ok()?,
        appointment: v["appointmentId"].as_str()?.to_owned(),
        version: v["version"].as_u64()?,
        source_type: v["sourceType"].as_str()?.to_owned(),
        source_id: v["sourceId"].as_str()?.to_owned(),
        minutes: i32::try_from(v["durationMinutes"].as_i64()?).ok()?,
        kind,
        start,
    })
}

/// Creates (or binds to) the durable consumer on `instance`'s stream.
///
/// # Errors
///
/// When JetStream refuses or cannot be reached.
pub async fn durable(
    js: &jetstream::Context,
    instance: &str,
    config: &ConsumerConfig,
) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
    let stream = crate::relay::ensure_stream(js, instance).await?;
    stream
        .get_or_create_consumer(
            &config.durable,
            consumer::pull::Config {
                durable_name: Some(config.durable.clone()),
                filter_subject: format!("{instance}.appointment.state.>"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
}

/// Consumes until the message stream ends or `stop` fires.
///
/// # Errors
///
/// When the consumer cannot be created or its message stream fails to start.
pub async fn run(
    inbox: Inbox<PostgresInbox>,
    js: jetstream::Context,
    instance: String,
    config: ConsumerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let consumer = durable(&js, &instance, &config).await?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    tracing::info!(durable = %config.durable, "work execution consumer started");
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let Some(next) = next else {
            return Ok(());
        };
        let msg = match next {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "consumer message stream error");
                continue;
            }
        };
        handle(&inbox, &config, msg).await;
    }
}

async fn handle(inbox: &Inbox<PostgresInbox>, config: &ConsumerConfig, msg: jetstream::Message) {
    let Some(event) = parse(&msg.payload) else {
        tracing::error!(subject = %msg.subject, "not an appointment event; terminated");
        metrics::counter!(m::CONSUMER_REJECTED_TOTAL).increment(1);
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let inbox_msg = match InboxMessage::new(&config.durable, &event.id.to_string())
        .and_then(|m| m.ordered(&event.appointment, event.version))
    {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "event has an unusable id or version; terminated");
            metrics::counter!(m::CONSUMER_REJECTED_TOTAL).increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let durable = config.durable.clone();
    let pause = config.pause;
    let e = event.clone();
    let result = inbox
        .process(&inbox_msg, move |tx| {
            Box::pin(async move {
                // No version guard here: ordering is the inbox's job.
                sqlx::query(
                    "INSERT INTO work_execution.planned \
                         (appointment_id, source_type, source_id, planned_start, duration_minutes, version) \
                     VALUES ($1, $2, $3, $4::timestamptz, $5, $6) \
                     ON CONFLICT (appointment_id) DO UPDATE SET planned_start = EXCLUDED.planned_start, \
                         duration_minutes = EXCLUDED.duration_minutes, version = EXCLUDED.version, \
                         updated_at = now()",
                )
                .bind(&e.appointment)
                .bind(&e.source_type)
                .bind(&e.source_id)
                .bind(&e.start)
                .bind(e.minutes)
                .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
                .execute(&mut **tx)
                .await?;
                sqlx::query(
                    "INSERT INTO work_execution.applied_events \
                         (consumer, event_id, event_type, appointment_id, version) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&durable)
                .bind(e.id)
                .bind(&e.kind)
                .bind(&e.appointment)
                .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
                .execute(&mut **tx)
                .await?;
                if pause == Some(Pause::BeforeCommit) {
                    pause_here("consumer-before-commit", e.id).await;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .await;
    match result {
        Ok(delivery) if delivery.should_ack() => {
            if matches!(delivery, Delivery::Applied(())) && pause == Some(Pause::AfterCommit) {
                pause_here("consumer-after-commit", event.id).await;
            }
            if let Err(e) = msg.double_ack().await {
                // Not acknowledged: it comes again, and is a duplicate then.
                tracing::warn!(error = %e, event_id = %event.id, "ack failed");
            }
        }
        Ok(delivery) => {
            tracing::info!(event_id = %event.id, ?delivery, "event out of order; redelivered later");
            let _ = msg.ack_with(AckKind::Nak(Some(config.nak_delay))).await;
        }
        Err(error) => {
            tracing::warn!(event_id = %event.id, %error, "event not applied; redelivered later");
            let _ = msg.ack_with(AckKind::Nak(Some(config.nak_delay))).await;
        }
    }
}

/// Prints where it stopped and waits for ever (a test kills the process).
async fn pause_here(point: &str, event: Uuid) {
    eprintln!("PAUSED {point} {event}");
    std::future::pending::<()>().await;
}
