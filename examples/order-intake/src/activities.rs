//! The workflow's activities — ValidateOrder, MarkOrderReserved,
//! MarkOrderFulfilling, MarkOrderShipped, RecordOrderFailure — each run once
//! per `workflowId + activityId` (never per attempt) by the framework's
//! runner over the PostgreSQL store: the guarded transition, its event and
//! the completed idempotency record commit in one transaction, so a retry
//! after a crash replays the stored result and emits nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use idempotency_core::{
    Completion, Execution, Fingerprint, Idempotent, KeySpec, Outcome, StoreError,
};
use idempotency_postgres::PostgresStore;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;

use crate::domain::Status;
use crate::lifecycle::{Actor, Detail, TransitionError, transition};

/// The idempotency namespace of activity records.
pub const ACTIVITY_NAMESPACE: &str = "order-intake/activity";

/// The `type` of the application failures the workflow tells apart.
pub mod error_types {
    /// The order cannot be fulfilled (non-retryable; the workflow records
    /// the failure).
    pub const UNFULFILLABLE: &str = "OrderUnfulfillable";
    /// The order is in a state the step cannot leave (cancelled, failed,
    /// shipped with another parcel): non-retryable, the workflow ends.
    pub const CLOSED: &str = "OrderClosed";
}

/// What an activity's record stores: its result, or its refusal, so a
/// retry of the same activity gets the same answer, whatever the order's
/// state is by then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Recorded {
    /// The step's result.
    Done(StepOutcome),
    /// The order cannot be fulfilled.
    Unfulfillable(String),
    /// The order is closed to the step.
    Closed(String),
}

fn non_retryable(kind: &'static str, message: String) -> ActivityError {
    ActivityError::application(
        ApplicationFailure::builder(message)
            .type_name(kind.to_owned())
            .non_retryable(true)
            .build(),
    )
}

/// Whether order `id` shipped with the tracking number of `detail`.
async fn same_tracking(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    detail: &Detail,
) -> Result<bool, sqlx::Error> {
    let Detail::TrackingNumber(wanted) = detail else {
        return Ok(false);
    };
    let stored: Option<String> =
        sqlx::query_scalar("SELECT tracking_number FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    Ok(stored.as_deref() == Some(wanted.as_str()))
}

/// What a step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepOutcome {
    /// The order's state after the step.
    pub status: Status,
    /// Whether this step moved the order (false: it was there already, or,
    /// for RecordOrderFailure, it is closed and was left alone).
    pub changed: bool,
}

/// RecordOrderFailure's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureInput {
    /// The order.
    pub order_id: String,
    /// Why it failed.
    pub reason: String,
}

/// MarkOrderShipped's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentInput {
    /// The order.
    pub order_id: String,
    /// The parcel's tracking number.
    pub tracking_number: String,
}

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The order cannot be fulfilled.
    #[error("unfulfillable: {0}")]
    Unfulfillable(String),
    /// The order is closed to this step.
    #[error("illegal transition from {from} to {to}")]
    Closed {
        /// The order's state.
        from: Status,
        /// The step's target.
        to: Status,
    },
    /// No such order.
    #[error("no order {0}")]
    NotFound(Uuid),
    /// The database failed (retryable: the record is marked failed
    /// retryable, Temporal retries the activity).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The record could not be completed (retryable).
    #[error("idempotency store error: {0}")]
    Store(#[from] StoreError),
}

impl From<TransitionError> for StepError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::NotFound(id) => Self::NotFound(id),
            TransitionError::Illegal { from, to } => Self::Closed { from, to },
            TransitionError::Database(e) => Self::Database(e),
        }
    }
}

/// Which activity attempt runs: its idempotency key is `workflow_id +
/// activity_id`, the same on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The workflow that scheduled it.
    pub workflow_id: String,
    /// Its id in that workflow's history.
    pub activity_id: String,
    /// `ValidateOrder`, `MarkOrderReserved`, ...
    pub activity_type: String,
    /// Temporal's attempt number, from 1 (logged, never part of the key).
    pub attempt: u32,
}

/// Why an activity attempt produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepFailure {
    /// The order cannot be fulfilled (non-retryable).
    #[error("unfulfillable: {0}")]
    Unfulfillable(String),
    /// The order is closed to this step (non-retryable).
    #[error("closed: {0}")]
    Closed(String),
    /// Try again (the database or the record store failed, or another
    /// attempt holds the record).
    #[error("retryable: {0}")]
    Retryable(String),
}

/// The worker's faults (tests only).
#[derive(Debug, Default)]
pub struct Faults {
    /// `OMS_FAULT=crash-after-activity-commit`: abort the process right after
    /// the first activity transaction of this process committed.
    pub crash_after_commit: AtomicBool,
}

/// What the activities need.
pub struct OrderActivities {
    pool: PgPool,
    runner: Idempotent<PostgresStore>,
    ship_countries: Vec<String>,
    faults: Arc<Faults>,
}

impl std::fmt::Debug for OrderActivities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderActivities")
            .field("ship_countries", &self.ship_countries)
            .finish_non_exhaustive()
    }
}

fn order_id(raw: &str) -> Result<Uuid, ActivityError> {
    Uuid::try_parse(raw)
        .map_err(|_| non_retryable(error_types::CLOSED, format!("{raw:?} is not an order id")))
}

/// The storage key of an activity: its workflow and its id in that
/// workflow's history, the same on every attempt.
pub fn activity_key(workflow_id: &str, activity_id: &str) -> idempotency_core::StorageKey {
    KeySpec::new(ACTIVITY_NAMESPACE)
        .derived([workflow_id.to_owned(), activity_id.to_owned()])
        .storage_key()
}

impl OrderActivities {
    /// The activities over `pool` and `store`; orders ship to
    /// `ship_countries` only.
    pub fn new(
        pool: PgPool,
        store: PostgresStore,
        ship_countries: Vec<String>,
        faults: Arc<Faults>,
    ) -> Self {
        // The record's lease is renewed while a step runs; a retry that
        // finds it held (a crashed attempt) waits for it a lease and a bit,
        // then takes it over.
        let policy = idempotency_core::Policy::default()
            .lease(std::time::Duration::from_secs(5))
            .wait(std::time::Duration::from_secs(6))
            .max_attempts(100)
            .retention(std::time::Duration::from_secs(30 * 24 * 3600));
        Self {
            pool,
            runner: Idempotent::new(store, policy),
            ship_countries,
            faults,
        }
    }

    /// Runs `step` once per (workflow, activity): the closure's transaction
    /// is completed with the record before it commits.
    async fn once(
        &self,
        ctx: &ActivityContext,
        order: Uuid,
        to: Status,
        detail: Detail,
    ) -> Result<StepOutcome, ActivityError> {
        let info = ctx.info();
        let call = Call {
            workflow_id: info.workflow_id.clone().unwrap_or_default(),
            activity_id: info.activity_id.clone(),
            activity_type: info.activity_type.clone(),
            attempt: info.attempt,
        };
        self.step(&call, order, to, detail)
            .await
            .map_err(|f| match f {
                StepFailure::Unfulfillable(reason) => {
                    non_retryable(error_types::UNFULFILLABLE, reason)
                }
                StepFailure::Closed(reason) => non_retryable(error_types::CLOSED, reason),
                StepFailure::Retryable(reason) => {
                    ActivityError::application(ApplicationFailure::new(reason))
                }
            })
    }

    /// One attempt of activity `call` on order `order`: the transition to
    /// `to` once per `(workflowId, activityId)`. What the Temporal
    /// activities run; public so tests can drive an attempt directly.
    ///
    /// # Errors
    ///
    /// [`StepFailure`].
    pub async fn step(
        &self,
        call: &Call,
        order: Uuid,
        to: Status,
        detail: Detail,
    ) -> Result<StepOutcome, StepFailure> {
        let (workflow_id, activity_id) = (call.workflow_id.clone(), call.activity_id.clone());
        let activity = call.activity_type.clone();
        let attempt = call.attempt;
        metrics::counter!(crate::metrics_names::ACTIVITY_ATTEMPTS, "activity" => activity.clone())
            .increment(1);
        tracing::info!(orderId = %order, workflowId = %workflow_id, activity, attempt, "activity attempt");
        // Every attempt is logged (outside the step's transaction), so tests
        // and operators count attempts from the database.
        sqlx::query(
            "INSERT INTO activity_attempts (workflow_id, activity_id, activity_type, attempt, order_id) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&workflow_id)
        .bind(&activity_id)
        .bind(&activity)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(order)
        .execute(&self.pool)
        .await
        .map_err(|e| StepFailure::Retryable(format!("database error: {e}")))?;

        let key = activity_key(&workflow_id, &activity_id);
        let fingerprint = Fingerprint::of_bytes(&activity, order.as_bytes());
        let actor = Actor::Activity {
            workflow_id: workflow_id.clone(),
            activity_id: activity_id.clone(),
        };
        let ran = self
            .runner
            .run(
                key,
                fingerprint,
                |attempt| {
                    let (pool, store, faults) =
                        (&self.pool, self.runner.store(), self.faults.clone());
                    let countries = &self.ship_countries;
                    async move {
                        let mut tx = pool.begin().await?;
                        // A refusal wrote nothing: the record alone commits.
                        let recorded = match decide(&mut tx, order, to, &detail, &actor, countries).await? {
                            Ok(outcome) => Recorded::Done(outcome),
                            Err(StepError::Unfulfillable(reason)) => Recorded::Unfulfillable(reason),
                            Err(e @ (StepError::Closed { .. } | StepError::NotFound(_))) => {
                                Recorded::Closed(e.to_string())
                            }
                            Err(e) => return Err(e),
                        };
                        let bytes = serde_json::to_vec(&recorded).unwrap_or_default();
                        store
                            .complete_in(
                                &mut tx,
                                attempt.lease(),
                                Completion::new(Outcome::Value(bytes.into())),
                            )
                            .await?;
                        tx.commit().await?;
                        attempt.mark_completed(None);
                        if faults.crash_after_commit.swap(false, Ordering::SeqCst) {
                            tracing::error!(orderId = %order, "OMS_FAULT=crash-after-activity-commit: aborting");
                            std::process::abort();
                        }
                        Ok(recorded)
                    }
                },
            )
            .await;
        let kind = match &ran {
            Ok(Execution::Executed(_)) => "executed",
            Ok(Execution::Replayed(_)) => "replayed",
            Err(_) => "failed",
        };
        metrics::counter!(crate::metrics_names::ACTIVITY_RUNS, "activity" => activity.clone(), "outcome" => kind)
            .increment(1);
        let (recorded, replayed) = match ran {
            Ok(Execution::Executed(r)) => (r, false),
            Ok(Execution::Replayed(r)) => (r, true),
            Err(e) => {
                tracing::warn!(orderId = %order, workflowId = %workflow_id, activity, error = %e, "activity attempt failed; Temporal retries it");
                return Err(StepFailure::Retryable(e.to_string()));
            }
        };
        let how = if replayed {
            "replayed from its record"
        } else {
            "executed"
        };
        match recorded {
            Recorded::Done(outcome) => {
                tracing::info!(orderId = %order, workflowId = %workflow_id, activity, status = %outcome.status, changed = outcome.changed, "activity {how}");
                Ok(outcome)
            }
            Recorded::Unfulfillable(reason) => {
                tracing::warn!(orderId = %order, workflowId = %workflow_id, activity, reason, "order unfulfillable ({how})");
                Err(StepFailure::Unfulfillable(reason))
            }
            Recorded::Closed(reason) => {
                tracing::warn!(orderId = %order, workflowId = %workflow_id, activity, reason, "order closed to this step ({how})");
                Err(StepFailure::Closed(reason))
            }
        }
    }
}

/// The step's decision, in the caller's transaction: `Ok(Ok(outcome))`
/// when it moved the order (or found it where the step leads, for
/// RecordOrderFailure and MarkOrderShipped), `Ok(Err(refusal))` when the
/// order cannot take this step, `Err` when the database failed.
async fn decide(
    tx: &mut sqlx::PgConnection,
    order: Uuid,
    to: Status,
    detail: &Detail,
    actor: &Actor,
    countries: &[String],
) -> Result<Result<StepOutcome, StepError>, StepError> {
    if to == Status::Validated {
        let country: Option<String> =
            sqlx::query_scalar("SELECT ship_to_country FROM orders WHERE id = $1")
                .bind(order)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(country) = country else {
            return Ok(Err(StepError::NotFound(order)));
        };
        if !countries.contains(&country) {
            return Ok(Err(StepError::Unfulfillable(format!(
                "shipTo.country {country} is not one of {} (OMS_SHIP_COUNTRIES)",
                countries.join(",")
            ))));
        }
    }
    match transition(&mut *tx, order, to, detail, actor).await {
        Ok(_) => {
            let line_status = match to {
                Status::Reserved => Some("RESERVED"),
                Status::Shipped => Some("SHIPPED"),
                Status::Cancelled | Status::Failed => Some("CANCELLED"),
                _ => None,
            };
            if let Some(ls) = line_status {
                sqlx::query(
                    "UPDATE order_lines SET status = $2::text::line_status WHERE order_id = $1",
                )
                .bind(order)
                .bind(ls)
                .execute(&mut *tx)
                .await?;
            }
            Ok(Ok(StepOutcome {
                status: to,
                changed: true,
            }))
        }
        // RecordOrderFailure never overwrites a closed order (SHIPPED above
        // all): it leaves it alone.
        Err(TransitionError::Illegal { from, .. })
            if to == Status::Failed && from.is_terminal() =>
        {
            Ok(Ok(StepOutcome {
                status: from,
                changed: false,
            }))
        }
        // MarkOrderShipped enforces the final state: the same parcel again is
        // the same shipment.
        Err(TransitionError::Illegal { from, .. })
            if to == Status::Shipped
                && from == Status::Shipped
                && same_tracking(&mut *tx, order, detail).await? =>
        {
            Ok(Ok(StepOutcome {
                status: from,
                changed: false,
            }))
        }
        Err(TransitionError::Database(e)) => Err(e.into()),
        Err(e) => Ok(Err(e.into())),
    }
}

// The macro adds an associated constant per activity (its definition
// marker, what a workflow names) that it cannot document: each method's
// `allow(missing_docs)` is copied onto its constant. The methods themselves
// are documented.
#[temporalio_sdk::activities::activities]
impl OrderActivities {
    /// ValidateOrder: `CREATED → VALIDATED` when the order can be fulfilled
    /// (`shipTo.country` in `OMS_SHIP_COUNTRIES`); otherwise a
    /// non-retryable `OrderUnfulfillable` failure.
    #[allow(missing_docs)]
    #[activity(name = "ValidateOrder")]
    pub async fn validate_order(
        self: Arc<Self>,
        ctx: ActivityContext,
        order_id_raw: String,
    ) -> Result<StepOutcome, ActivityError> {
        let id = order_id(&order_id_raw)?;
        self.once(&ctx, id, Status::Validated, Detail::None).await
    }

    /// MarkOrderReserved: `VALIDATED → RESERVED` (its lines too).
    #[allow(missing_docs)]
    #[activity(name = "MarkOrderReserved")]
    pub async fn mark_order_reserved(
        self: Arc<Self>,
        ctx: ActivityContext,
        order_id_raw: String,
    ) -> Result<StepOutcome, ActivityError> {
        let id = order_id(&order_id_raw)?;
        self.once(&ctx, id, Status::Reserved, Detail::None).await
    }

    /// MarkOrderFulfilling: `RESERVED → FULFILLING`.
    #[allow(missing_docs)]
    #[activity(name = "MarkOrderFulfilling")]
    pub async fn mark_order_fulfilling(
        self: Arc<Self>,
        ctx: ActivityContext,
        order_id_raw: String,
    ) -> Result<StepOutcome, ActivityError> {
        let id = order_id(&order_id_raw)?;
        self.once(&ctx, id, Status::Fulfilling, Detail::None).await
    }

    /// MarkOrderShipped: `FULFILLING → SHIPPED` with the tracking number;
    /// the final state is enforced (shipped with this parcel already: no
    /// change; any other state: a non-retryable `OrderClosed`).
    #[allow(missing_docs)]
    #[activity(name = "MarkOrderShipped")]
    pub async fn mark_order_shipped(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ShipmentInput,
    ) -> Result<StepOutcome, ActivityError> {
        let id = order_id(&input.order_id)?;
        self.once(
            &ctx,
            id,
            Status::Shipped,
            Detail::TrackingNumber(input.tracking_number),
        )
        .await
    }

    /// RecordOrderFailure: any open state → `FAILED` with the reason; a
    /// closed order (`SHIPPED`, `CANCELLED`, `FAILED`) is left alone.
    #[allow(missing_docs)]
    #[activity(name = "RecordOrderFailure")]
    pub async fn record_order_failure(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: FailureInput,
    ) -> Result<StepOutcome, ActivityError> {
        let id = order_id(&input.order_id)?;
        self.once(
            &ctx,
            id,
            Status::Failed,
            Detail::FailureReason(input.reason),
        )
        .await
    }
}
