//! The outbox relay: publishes unpublished outbox rows to JetStream with
//! `Nats-Msg-Id` set to the event id, then stamps them published.
//!
//! A crash between the publish and the stamp publishes the event again on
//! restart; JetStream's duplicate window (two minutes here) drops the second
//! copy, and the consumer's inbox absorbs any copy that gets through anyway.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use sqlx::PgPool;
use uuid::Uuid;

/// JetStream's duplicate window of the service's stream.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Rows published per transaction.
const BATCH: i64 = 100;

/// Why relaying failed (the rows stay unpublished and are tried again).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error("database error while relaying")]
    Database(#[from] sqlx::Error),
    /// JetStream did not take a message.
    #[error("publishing to JetStream failed: {0}")]
    Publish(String),
}

/// Creates the instance's stream when it is missing: subjects `<instance>.>`,
/// file storage, the duplicate window, a week of retention.
///
/// JetStream answers a creation whose file store it could not set up with
/// error code 10049 "error creating store for stream"; the cause (a
/// directory it could not make or write, say) is only in the server's own
/// log. That refusal can be momentary, so it is asked again, at most
/// [`CREATE_ATTEMPTS`] times in all with a doubling pause from 50 ms (about
/// 1.5 s in all); each retry is logged and counted in
/// `appointments_stream_create_retries_total`. Every other refusal is
/// returned at once.
///
/// # Errors
///
/// When JetStream refuses, cannot be reached, or still cannot set up the
/// store after the last attempt.
pub async fn ensure_stream(
    js: &jetstream::Context,
    instance: &str,
) -> Result<stream::Stream, String> {
    let config = stream::Config {
        name: instance.to_owned(),
        subjects: vec![format!("{instance}.>")],
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(7 * 24 * 3600),
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let mut pause = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) if store_setup_failed(&e) => {
                if attempt == CREATE_ATTEMPTS {
                    return Err(format!("{e} (after {attempt} attempts)"));
                }
                tracing::warn!(
                    stream = instance,
                    attempt,
                    error = %e,
                    "JetStream could not set up the stream's store; asking again"
                );
                metrics::counter!(crate::metrics_names::STREAM_CREATE_RETRIES_TOTAL).increment(1);
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// How many times in all [`ensure_stream`] asks JetStream to create a
/// stream whose store it could not set up.
pub const CREATE_ATTEMPTS: u32 = 6;

/// Whether JetStream refused a creation because it could not set up the
/// stream's store (error code 10049 with that description).
fn store_setup_failed(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(ref err)
            if err.error_code() == jetstream::ErrorCode::STREAM_CREATE
                && err.to_string().contains("error creating store")
    )
}

/// Publishes up to one batch of `instance`'s unpublished events, oldest
/// first, under their rows' locks (several relays never publish one row at
/// once). Returns how many were published.
///
/// # Errors
///
/// [`RelayError`]; nothing of the batch is stamped then.
pub async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    instance: &str,
) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, String, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
        "SELECT event_id, subject, payload FROM appointments.outbox \
         WHERE published_at IS NULL AND subject LIKE $1 || '.%' \
         ORDER BY created_at, event_id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(instance)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    for (id, subject, payload) in rows {
        publish(js, &subject, id, &payload.0).await?;
        ids.push(id);
    }
    sqlx::query("UPDATE appointments.outbox SET published_at = now() WHERE event_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::counter!(crate::metrics_names::RELAYED_TOTAL).increment(ids.len() as u64);
    Ok(ids.len())
}

/// Publishes one event and waits for JetStream's acknowledgement.
///
/// # Errors
///
/// [`RelayError::Publish`].
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    event_id: Uuid,
    payload: &serde_json::Value,
) -> Result<(), RelayError> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event_id.to_string().as_str());
    let body = serde_json::to_vec(payload).map_err(|e| RelayError::Publish(e.to_string()))?;
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .map_err(|e| RelayError::Publish(e.to_string()))?
        .await
        .map_err(|e| RelayError::Publish(e.to_string()))?;
    Ok(())
}
