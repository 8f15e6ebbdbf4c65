//! The guarded transition: one `UPDATE ... WHERE status = ANY(<the states
//! the target may be reached from>)` and, when it moved the order, exactly
//! one event, both in the caller's transaction. The HTTP cancel and every
//! activity go through here.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::Status;

/// What a transition stores besides the status.
#[derive(Debug, Clone)]
pub enum Detail {
    /// Nothing.
    None,
    /// `FAILED`'s reason.
    FailureReason(String),
    /// `CANCELLED`'s reason.
    CancelReason(String),
    /// `SHIPPED`'s tracking number.
    TrackingNumber(String),
}

/// Who asked for a transition, recorded in its event.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An HTTP request.
    Api,
    /// A workflow activity.
    Activity {
        /// The workflow's id.
        workflow_id: String,
        /// The activity's id within it.
        activity_id: String,
    },
}

/// A transition that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The state it left.
    pub from: Status,
    /// The event's id.
    pub event_id: i64,
}

/// Why an order did not move.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// No such order.
    #[error("no order {0}")]
    NotFound(Uuid),
    /// The lifecycle has no edge from the order's state to the target
    /// (`from == to` when it is already there).
    #[error("illegal transition from {from} to {to}")]
    Illegal {
        /// The order's state.
        from: Status,
        /// The target.
        to: Status,
    },
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

const MOVE: &str = "\
UPDATE orders SET status = $2::text::order_status, updated_at = now(),
       failure_reason  = CASE WHEN $2 = 'FAILED'    THEN $3 ELSE failure_reason END,
       cancel_reason   = CASE WHEN $2 = 'CANCELLED' THEN $3 ELSE cancel_reason END,
       tracking_number = CASE WHEN $2 = 'SHIPPED'   THEN $3 ELSE tracking_number END
 WHERE id = $1 AND status = $4::text::order_status";

/// Moves order `id` to `to` if its state allows, and appends the
/// transition's event, in the caller's transaction `tx`.
///
/// The order's row is locked first and its state checked under the lock;
/// the `UPDATE` is guarded by that state. Of concurrent transitions from one
/// state exactly one moves the order (and emits its event); the others see
/// the new state and get [`TransitionError::Illegal`].
///
/// # Errors
///
/// [`TransitionError`]; the caller's transaction stays usable after
/// `NotFound` and `Illegal`.
pub async fn transition(
    tx: &mut PgConnection,
    id: Uuid,
    to: Status,
    detail: &Detail,
    actor: &Actor,
) -> Result<Moved, TransitionError> {
    let text = match detail {
        Detail::None => None,
        Detail::FailureReason(s) | Detail::CancelReason(s) | Detail::TrackingNumber(s) => {
            Some(s.as_str())
        }
    };
    // The row lock first: concurrent transitions of one order queue here,
    // and each sees the state the previous one committed.
    let now: Option<String> =
        sqlx::query_scalar("SELECT status::text FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(from) = now.as_deref().and_then(Status::parse) else {
        return Err(TransitionError::NotFound(id));
    };
    if !from.can_become(to) {
        return Err(TransitionError::Illegal { from, to });
    }
    // Guarded by the expected state (the trigger checks the edge again).
    let moved = sqlx::query(MOVE)
        .bind(id)
        .bind(to.as_str())
        .bind(text)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
    if moved.rows_affected() != 1 {
        return Err(TransitionError::Illegal { from, to });
    }
    let mut payload = json!({"from": from.as_str(), "to": to.as_str()});
    match detail {
        Detail::None => {}
        Detail::FailureReason(r) | Detail::CancelReason(r) => payload["reason"] = json!(r),
        Detail::TrackingNumber(t) => payload["trackingNumber"] = json!(t),
    }
    payload["by"] = actor_json(actor);
    let event_id: i64 = sqlx::query_scalar(
        "INSERT INTO order_events (order_id, type, payload) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(id)
    .bind(to.event().as_str())
    .bind(&payload)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Moved { from, event_id })
}

fn actor_json(actor: &Actor) -> Value {
    match actor {
        Actor::Api => json!({"api": true}),
        Actor::Activity {
            workflow_id,
            activity_id,
        } => json!({"workflowId": workflow_id, "activityId": activity_id}),
    }
}
