//! `OrderIntakeWorkflow`: Validate → Reserve → Fulfilling → wait for the
//! shipment signal → Shipped; RecordOrderFailure when validation fails
//! non-retryably. Its `step` query answers from the workflow's own state
//! (Temporal replays a closed workflow to answer it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_common::error::IncomingError;
use temporalio_sdk::{
    ActivityExecutionError, ActivityOptions, SyncWorkflowContext, WorkflowContext,
    WorkflowContextView, WorkflowResult,
};
use temporalio_workflow::{workflow, workflow_methods};

use crate::activities::{FailureInput, OrderActivities, ShipmentInput, StepOutcome, error_types};

/// What the workflow is started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowInput {
    /// The order.
    pub order_id: String,
    /// Each activity attempt's start-to-close timeout, in milliseconds: how
    /// long Temporal waits for a worker that went silent before retrying.
    pub activity_timeout_ms: u64,
}

/// The steps the `step` query reports.
pub mod steps {
    /// ValidateOrder runs.
    pub const VALIDATING: &str = "validating";
    /// MarkOrderReserved runs.
    pub const RESERVING: &str = "reserving";
    /// MarkOrderFulfilling runs.
    pub const STARTING_FULFILMENT: &str = "starting-fulfilment";
    /// Waiting for `POST /orders/{id}/shipment`.
    pub const AWAITING_SHIPMENT: &str = "awaiting-shipment";
    /// MarkOrderShipped runs.
    pub const SHIPPING: &str = "shipping";
    /// Done: shipped.
    pub const SHIPPED: &str = "shipped";
    /// RecordOrderFailure runs.
    pub const RECORDING_FAILURE: &str = "recording-failure";
    /// Done: failed.
    pub const FAILED: &str = "failed";
    /// Done: the order was closed under the workflow (cancelled, or failed
    /// by someone else).
    pub const CLOSED: &str = "closed";
}

/// The order's workflow.
#[workflow]
#[derive(Default)]
pub struct OrderIntakeWorkflow {
    step: String,
    tracking_number: Option<String>,
    closed_because: Option<String>,
}

/// What ended the happy path.
enum Stop {
    /// The order cannot be fulfilled: record the failure.
    Unfulfillable(String),
    /// The order is closed already (cancelled): nothing more to do.
    Closed(String),
}

/// The stop a non-retryable failure of ours means; `None` for anything
/// else (the workflow fails with it).
fn classify(e: &ActivityExecutionError) -> Option<Stop> {
    let Some(IncomingError::Application(app)) = e.cause() else {
        return None;
    };
    let message = app.failure().map(|f| f.message.clone()).unwrap_or_default();
    match app.type_name() {
        Some(error_types::UNFULFILLABLE) => Some(Stop::Unfulfillable(message)),
        Some(error_types::CLOSED) => Some(Stop::Closed(message)),
        _ => None,
    }
}

// The macro adds an associated constant per method (its definition marker,
// what clients name) that it cannot document: each method's
// `allow(missing_docs)` is copied onto its constant. The methods themselves
// are documented.
#[workflow_methods]
impl OrderIntakeWorkflow {
    /// Runs the order to `SHIPPED` (or `FAILED`); returns the final step.
    #[allow(missing_docs)]
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: WorkflowInput,
    ) -> WorkflowResult<String> {
        let opts = || {
            ActivityOptions::with_start_to_close_timeout(Duration::from_millis(
                input.activity_timeout_ms,
            ))
            .build()
        };
        let order = input.order_id.clone();
        let happy = async {
            ctx.state_mut(|s| s.step = steps::VALIDATING.into());
            ctx.execute_activity(OrderActivities::validate_order, order.clone(), opts())
                .await?;
            ctx.state_mut(|s| s.step = steps::RESERVING.into());
            ctx.execute_activity(OrderActivities::mark_order_reserved, order.clone(), opts())
                .await?;
            ctx.state_mut(|s| s.step = steps::STARTING_FULFILMENT.into());
            ctx.execute_activity(
                OrderActivities::mark_order_fulfilling,
                order.clone(),
                opts(),
            )
            .await?;
            ctx.state_mut(|s| s.step = steps::AWAITING_SHIPMENT.into());
            Ok::<_, ActivityExecutionError>(())
        };
        let stop = match happy.await {
            Ok(()) => None,
            Err(e) => Some(classify(&e).ok_or_else(|| workflow_failure(e))?),
        };
        match stop {
            None => {}
            Some(Stop::Closed(why)) => {
                ctx.state_mut(|s| {
                    s.step = steps::CLOSED.into();
                    s.closed_because = Some(why);
                });
                return Ok(steps::CLOSED.into());
            }
            Some(Stop::Unfulfillable(reason)) => {
                ctx.state_mut(|s| s.step = steps::RECORDING_FAILURE.into());
                let _: StepOutcome = ctx
                    .execute_activity(
                        OrderActivities::record_order_failure,
                        FailureInput {
                            order_id: order.clone(),
                            reason,
                        },
                        opts(),
                    )
                    .await
                    .map_err(workflow_failure)?;
                ctx.state_mut(|s| s.step = steps::FAILED.into());
                return Ok(steps::FAILED.into());
            }
        }
        ctx.wait_condition(|s| s.tracking_number.is_some()).await?;
        let tracking = ctx.state(|s| s.tracking_number.clone().unwrap_or_default());
        ctx.state_mut(|s| s.step = steps::SHIPPING.into());
        match ctx
            .execute_activity(
                OrderActivities::mark_order_shipped,
                ShipmentInput {
                    order_id: order.clone(),
                    tracking_number: tracking,
                },
                opts(),
            )
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let why = match classify(&e).ok_or_else(|| workflow_failure(e))? {
                    Stop::Closed(why) | Stop::Unfulfillable(why) => why,
                };
                ctx.state_mut(|s| {
                    s.step = steps::CLOSED.into();
                    s.closed_because = Some(why);
                });
                return Ok(steps::CLOSED.into());
            }
        }
        ctx.state_mut(|s| s.step = steps::SHIPPED.into());
        Ok(steps::SHIPPED.into())
    }

    /// The parcel left with `tracking_number`; the first one wins, a
    /// repeated signal changes nothing.
    #[allow(missing_docs)]
    #[signal]
    pub fn shipment(&mut self, _ctx: &mut SyncWorkflowContext<Self>, tracking_number: String) {
        if self.tracking_number.is_none() {
            self.tracking_number = Some(tracking_number);
        }
    }

    /// Where the workflow is (one of [`steps`]).
    #[allow(missing_docs)]
    #[query]
    pub fn step(&self, _ctx: &WorkflowContextView) -> String {
        self.step.clone()
    }
}

fn workflow_failure(e: ActivityExecutionError) -> temporalio_sdk::WorkflowTermination {
    temporalio_sdk::WorkflowTermination::failed_application(
        temporalio_common::error::ApplicationFailure::new(e.to_string()),
    )
}
