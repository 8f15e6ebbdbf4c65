//! Notifications: queued in the business transaction (one row per
//! recipient and channel), sent by the dispatcher to the SMS/e-mail gateway
//! with the notification id as the gateway's idempotency key. SMS is retried
//! once and e-mail twice; then the notification is `FAILED`, flagged for a
//! manual follow-up, and `NotificationFailed` goes out.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::metrics_names as m;
use crate::outbox::{self, NOTIFICATION_FAILED};

/// Sends to SMS: the first try and one retry.
pub const SMS_ATTEMPTS: i32 = 2;
/// Sends to e-mail: the first try and two retries.
pub const EMAIL_ATTEMPTS: i32 = 3;

fn max_attempts(channel: &str) -> i32 {
    if channel == "SMS" {
        SMS_ATTEMPTS
    } else {
        EMAIL_ATTEMPTS
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert(
    conn: &mut PgConnection,
    instance: &str,
    appointment: &str,
    recipient_type: &str,
    recipient: &str,
    address: &str,
    channel: &str,
    kind: &str,
    content: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO appointments.notifications (id, instance, appointment_id, recipient_type, \
             recipient_id, address, channel, kind, content, max_attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(Uuid::now_v7())
    .bind(instance)
    .bind(appointment)
    .bind(recipient_type)
    .bind(recipient)
    .bind(address)
    .bind(channel)
    .bind(kind)
    .bind(content)
    .bind(max_attempts(channel))
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues the customer's notifications of a new time: SMS and e-mail, to
/// whichever contact the source has.
///
/// # Errors
///
/// Database errors.
pub async fn queue_customer(
    conn: &mut PgConnection,
    instance: &str,
    appointment: &str,
    source_type: &str,
    source_id: &str,
    customer: &str,
    when: &str,
) -> Result<(), sqlx::Error> {
    let (phone, email): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT customer_phone, customer_email FROM appointments.sources \
         WHERE source_type = $1 AND id = $2",
    )
    .bind(source_type)
    .bind(source_id)
    .fetch_one(&mut *conn)
    .await?;
    let content = format!("Your appointment {appointment} is now at {when}.");
    for (channel, address) in [("SMS", phone), ("EMAIL", email)] {
        if let Some(address) = address {
            insert(
                conn,
                instance,
                appointment,
                "CUSTOMER",
                customer,
                &address,
                channel,
                "RESCHEDULED",
                &content,
            )
            .await?;
        }
    }
    Ok(())
}

/// Queues a mechanic's SMS: `TIME_CHANGED` or `UNASSIGNED`.
///
/// # Errors
///
/// Database errors.
pub async fn queue_mechanic(
    conn: &mut PgConnection,
    instance: &str,
    appointment: &str,
    mechanic: &str,
    kind: &str,
    when: &str,
) -> Result<(), sqlx::Error> {
    let phone: Option<String> =
        sqlx::query_scalar("SELECT phone FROM appointments.mechanics WHERE id = $1")
            .bind(mechanic)
            .fetch_one(&mut *conn)
            .await?;
    let Some(phone) = phone else {
        return Ok(());
    };
    let content = if kind == "UNASSIGNED" {
        format!("You are no longer assigned to appointment {appointment} (moved to {when}).")
    } else {
        format!("Appointment {appointment} moved to {when}; you are still assigned.")
    };
    insert(
        conn,
        instance,
        appointment,
        "MECHANIC",
        mechanic,
        &phone,
        "SMS",
        kind,
        &content,
    )
    .await
}

/// The HTTP client of the gateway.
#[derive(Clone, Debug)]
pub struct Gateway {
    url: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    /// A client of the gateway at `url` (`http://host:port`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends one message; `Ok` when the gateway accepted it (also as a replay).
    async fn send(&self, key: Uuid, channel: &str, to: &str, content: &str) -> Result<(), String> {
        let body = json!({"channel": channel, "to": to, "content": content}).to_string();
        let req = http::Request::post(format!("{}/messages", self.url))
            .header("content-type", "application/json")
            .header("idempotency-key", key.to_string())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| "the gateway did not answer in 5 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let _ = res.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the gateway answered {status}"))
        }
    }
}

/// Sends every due notification of `instance`, one at a time (each under
/// its row lock, so several dispatchers never send one twice at once).
/// Returns how many it handled.
///
/// # Errors
///
/// Database errors.
pub async fn dispatch_due(
    pool: &PgPool,
    instance: &str,
    gateway: &Gateway,
    retry_delay: Duration,
) -> Result<usize, sqlx::Error> {
    let mut handled = 0;
    loop {
        let mut tx = pool.begin().await?;
        let row: Option<(Uuid, String, String, String, String, i32, i32)> = sqlx::query_as(
            "SELECT id, appointment_id, channel, address, content, attempts, max_attempts \
             FROM appointments.notifications \
             WHERE instance = $1 AND status = 'PENDING' AND next_attempt_at <= now() \
             ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(instance)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, appointment, channel, address, content, attempts, max)) = row else {
            return Ok(handled);
        };
        handled += 1;
        let attempts = attempts + 1;
        match gateway.send(id, &channel, &address, &content).await {
            Ok(()) => {
                sqlx::query(
                    "UPDATE appointments.notifications SET status = 'SENT', attempts = $2, \
                         sent_at = now(), last_error = NULL WHERE id = $1",
                )
                .bind(id)
                .bind(attempts)
                .execute(&mut *tx)
                .await?;
                metrics::counter!(m::NOTIFICATIONS_TOTAL, "channel" => channel, "outcome" => "sent")
                    .increment(1);
            }
            Err(error) if attempts >= max => {
                tracing::warn!(%id, %channel, attempts, %error, "notification failed; manual follow-up");
                sqlx::query(
                    "UPDATE appointments.notifications SET status = 'FAILED', attempts = $2, \
                         last_error = $3, manual_follow_up = true WHERE id = $1",
                )
                .bind(id)
                .bind(attempts)
                .bind(&error)
                .execute(&mut *tx)
                .await?;
                outbox::emit(
                    &mut tx,
                    instance,
                    NOTIFICATION_FAILED,
                    &appointment,
                    None,
                    json!({"notificationId": id, "channel": channel, "attempts": attempts,
                           "error": error, "manualFollowUp": true}),
                )
                .await?;
                metrics::counter!(m::NOTIFICATIONS_TOTAL, "channel" => channel, "outcome" => "failed")
                    .increment(1);
            }
            Err(error) => {
                tracing::info!(%id, %channel, attempts, %error, "notification will be retried");
                sqlx::query(
                    "UPDATE appointments.notifications SET attempts = $2, last_error = $3, \
                         next_attempt_at = now() + $4 * interval '1 millisecond' WHERE id = $1",
                )
                .bind(id)
                .bind(attempts)
                .bind(&error)
                .bind(i64::try_from(retry_delay.as_millis()).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
                metrics::counter!(m::NOTIFICATIONS_TOTAL, "channel" => channel, "outcome" => "retried")
                    .increment(1);
            }
        }
        tx.commit().await?;
    }
}
