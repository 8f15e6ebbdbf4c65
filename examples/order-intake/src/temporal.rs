//! Temporal, from the service's side: the client connection, the outbox
//! relay that starts each order's workflow exactly once, the workflow's
//! description and `step` query, the shipment signal, and the worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::Digest;
use sqlx::{PgPool, Row};
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowDescribeOptions,
    WorkflowExecutionStatus, WorkflowIdReusePolicy, WorkflowQueryOptions, WorkflowSignalOptions,
    WorkflowStartOptions, errors::WorkflowStartError,
};
use temporalio_sdk::{Worker, WorkerOptions};
use uuid::Uuid;

use crate::activities::OrderActivities;
use crate::workflow::{OrderIntakeWorkflow, WorkflowInput};

/// How long the relay waits for Temporal to answer one start (the row stays
/// locked meanwhile).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `GET /orders/{id}/workflow` waits for a worker to answer the
/// `step` query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to Temporal at `address` (`host:port`), namespace `namespace`.
///
/// # Errors
///
/// A one-line message naming `TEMPORAL_ADDRESS`.
pub async fn connect(address: &str, namespace: &str) -> Result<Client, String> {
    let url = format!("http://{address}");
    let target = temporalio_client::Url::parse(&url)
        .map_err(|e| format!("TEMPORAL_ADDRESS={address:?} is not host:port ({e})"))?;
    let options = ConnectionOptions::new(target)
        .identity(format!("example-order-intake@{}", std::process::id()))
        .build();
    let connection = tokio::time::timeout(Duration::from_secs(10), Connection::connect(options))
        .await
        .map_err(|_| format!("cannot reach Temporal at TEMPORAL_ADDRESS={address} within 10 s"))?
        .map_err(|e| {
            format!(
                "cannot reach Temporal at TEMPORAL_ADDRESS={address} ({e}); start it with scripts/services.sh temporal"
            )
        })?;
    Client::new(connection, ClientOptions::new(namespace).build())
        .map_err(|e| format!("cannot use Temporal namespace {namespace:?}: {e}"))
}

/// The relay's faults (tests only).
#[derive(Debug, Default)]
pub struct RelayFaults {
    /// `OMS_FAULT=crash-before-workflow-start`: abort once an outbox row
    /// is read, before its workflow is started.
    pub crash_before_start: AtomicBool,
    /// `OMS_FAULT=crash-after-workflow-start`: abort once a workflow is
    /// started, before its outbox row is marked.
    pub crash_after_start: AtomicBool,
}

/// What the relay needs.
#[derive(Clone)]
pub struct Relay {
    /// The database.
    pub pool: PgPool,
    /// Temporal.
    pub client: Client,
    /// The workers' task queue.
    pub task_queue: String,
    /// Each activity attempt's start-to-close timeout.
    pub activity_timeout: Duration,
    /// Faults to inject.
    pub faults: Arc<RelayFaults>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("task_queue", &self.task_queue)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts the workflows of up to 20 unmarked outbox rows and marks them;
    /// returns how many it marked.
    ///
    /// Rows are locked `FOR UPDATE SKIP LOCKED` for the batch, so relays of
    /// several processes share the work. The start is idempotent on
    /// Temporal's side: the workflow id is deterministic and reuse is
    /// refused (`RejectDuplicate`), so a start that already happened — the
    /// process died between the start and the mark — answers
    /// `AlreadyStarted`, which counts as success.
    ///
    /// # Errors
    ///
    /// The database's; a failed start is recorded on its row (`attempts`,
    /// `last_error`) and retried on the next pass.
    pub async fn relay_once(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT order_id, workflow_id FROM workflow_starts WHERE started_at IS NULL \
             ORDER BY created_at LIMIT 20 FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = 0;
        for row in &rows {
            let order: Uuid = row.try_get("order_id")?;
            let workflow_id: String = row.try_get("workflow_id")?;
            if self.faults.crash_before_start.load(Ordering::SeqCst) {
                tracing::error!(orderId = %order, workflowId = %workflow_id, "OMS_FAULT=crash-before-workflow-start: aborting");
                std::process::abort();
            }
            let started = self.start(order, &workflow_id).await;
            if self.faults.crash_after_start.load(Ordering::SeqCst) {
                tracing::error!(orderId = %order, workflowId = %workflow_id, "OMS_FAULT=crash-after-workflow-start: aborting");
                std::process::abort();
            }
            match started {
                Ok(run_id) => {
                    sqlx::query(
                        "UPDATE workflow_starts SET started_at = now(), run_id = $2, \
                         attempts = attempts + 1, last_error = NULL WHERE order_id = $1",
                    )
                    .bind(order)
                    .bind(&run_id)
                    .execute(&mut *tx)
                    .await?;
                    marked += 1;
                }
                Err(e) => {
                    tracing::warn!(orderId = %order, workflowId = %workflow_id, error = %e, "workflow not started; retrying");
                    sqlx::query(
                        "UPDATE workflow_starts SET attempts = attempts + 1, last_error = $2 \
                         WHERE order_id = $1",
                    )
                    .bind(order)
                    .bind(e.chars().take(500).collect::<String>())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(marked)
    }

    /// Starts order `order`'s workflow; its run id (`None` when it was
    /// started before and Temporal did not say which run).
    async fn start(&self, order: Uuid, workflow_id: &str) -> Result<Option<String>, String> {
        let input = WorkflowInput {
            order_id: order.to_string(),
            activity_timeout_ms: u64::try_from(self.activity_timeout.as_millis())
                .unwrap_or(u64::MAX),
        };
        let options = WorkflowStartOptions::new(self.task_queue.clone(), workflow_id.to_owned())
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .build();
        let started = tokio::time::timeout(
            START_TIMEOUT,
            self.client
                .start_workflow(OrderIntakeWorkflow::run, input, options),
        )
        .await
        .map_err(|_| format!("Temporal did not answer the start within {START_TIMEOUT:?}"))?;
        match started {
            Ok(handle) => {
                metrics::counter!(crate::metrics_names::WORKFLOWS_STARTED, "outcome" => "started")
                    .increment(1);
                tracing::info!(orderId = %order, workflowId = %workflow_id, runId = ?handle.run_id(), "workflow started");
                Ok(handle.run_id().map(str::to_owned))
            }
            Err(WorkflowStartError::AlreadyStarted { run_id, .. }) => {
                metrics::counter!(crate::metrics_names::WORKFLOWS_STARTED, "outcome" => "already_started")
                    .increment(1);
                tracing::info!(orderId = %order, workflowId = %workflow_id, runId = ?run_id, "workflow was started before");
                Ok(run_id)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `GET /orders/{id}/workflow`'s answer.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowView {
    /// `order-intake-{orderId}`.
    pub workflow_id: String,
    /// The run.
    pub run_id: String,
    /// Temporal's execution status (`RUNNING`, `COMPLETED`, `FAILED`, ...).
    pub status: String,
    /// The workflow's `step` query's answer.
    pub step: String,
}

/// Why the workflow could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// Temporal knows no such workflow (not started yet).
    #[error("no workflow {0}")]
    NotFound(String),
    /// Temporal failed.
    #[error("temporal error: {0}")]
    Temporal(String),
}

/// Temporal's name of an execution status.
pub fn status_name(s: WorkflowExecutionStatus) -> &'static str {
    match s {
        WorkflowExecutionStatus::Running => "RUNNING",
        WorkflowExecutionStatus::Completed => "COMPLETED",
        WorkflowExecutionStatus::Failed => "FAILED",
        WorkflowExecutionStatus::Canceled => "CANCELED",
        WorkflowExecutionStatus::Terminated => "TERMINATED",
        WorkflowExecutionStatus::ContinuedAsNew => "CONTINUED_AS_NEW",
        WorkflowExecutionStatus::TimedOut => "TIMED_OUT",
        WorkflowExecutionStatus::Paused => "PAUSED",
        _ => "UNSPECIFIED",
    }
}

/// Describes workflow `workflow_id` and asks it for its step.
///
/// # Errors
///
/// [`DescribeError`].
pub async fn describe(client: &Client, workflow_id: &str) -> Result<WorkflowView, DescribeError> {
    let handle = client.get_workflow_handle::<OrderIntakeWorkflow>(workflow_id);
    let description = handle
        .describe(WorkflowDescribeOptions::default())
        .await
        .map_err(|e| match e {
            temporalio_client::errors::WorkflowInteractionError::NotFound(_) => {
                DescribeError::NotFound(workflow_id.to_owned())
            }
            other => DescribeError::Temporal(other.to_string()),
        })?;
    // A query needs a worker to answer it: bounded, so a missing worker is
    // a prompt 503 rather than a hanging request.
    let step = tokio::time::timeout(
        QUERY_TIMEOUT,
        handle.query(
            OrderIntakeWorkflow::step,
            (),
            WorkflowQueryOptions::default(),
        ),
    )
    .await
    .map_err(|_| {
        DescribeError::Temporal(format!(
            "no worker answered the query within {QUERY_TIMEOUT:?}"
        ))
    })?
    .map_err(|e| DescribeError::Temporal(e.to_string()))?;
    Ok(WorkflowView {
        workflow_id: workflow_id.to_owned(),
        run_id: description.run_id().to_owned(),
        status: status_name(description.status()).to_owned(),
        step,
    })
}

/// Signals workflow `workflow_id` that the parcel left. The signal's
/// request id is derived from the tracking number, so Temporal itself
/// drops a repeated signal of the same parcel.
///
/// # Errors
///
/// [`DescribeError`].
pub async fn signal_shipment(
    client: &Client,
    workflow_id: &str,
    tracking_number: &str,
) -> Result<(), DescribeError> {
    let handle = client.get_workflow_handle::<OrderIntakeWorkflow>(workflow_id);
    let request_id = hex::encode(sha2::Sha256::digest(
        format!("{workflow_id}\0shipment\0{tracking_number}").as_bytes(),
    ));
    handle
        .signal(
            OrderIntakeWorkflow::shipment,
            tracking_number.to_owned(),
            WorkflowSignalOptions::builder()
                .request_id(request_id)
                .build(),
        )
        .await
        .map_err(|e| match e {
            temporalio_client::errors::WorkflowInteractionError::NotFound(_) => {
                DescribeError::NotFound(workflow_id.to_owned())
            }
            other => DescribeError::Temporal(other.to_string()),
        })
}

/// Builds the worker of `task_queue`: the workflow and the activities.
///
/// # Errors
///
/// A one-line message.
pub fn worker(
    client: Client,
    task_queue: &str,
    activities: OrderActivities,
) -> Result<(Worker, temporalio_sdk::Runtime), String> {
    let runtime = temporalio_sdk::Runtime::from_current_tokio(Default::default())
        .map_err(|e| format!("cannot start the Temporal runtime: {e}"))?;
    let options = WorkerOptions::new(task_queue)
        .register_workflow::<OrderIntakeWorkflow>()
        .map_err(|e| format!("cannot register the workflow: {e}"))?
        .register_activities(activities)
        // After a crash the workflow's next task waits this long on the dead
        // worker's sticky queue before any worker may take it.
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(2))
        .graceful_shutdown_period(Duration::from_secs(5))
        .build();
    let worker = Worker::new(&runtime, client, options)
        .map_err(|e| format!("cannot create the Temporal worker: {e}"))?;
    Ok((worker, runtime))
}

/// One round trip to the Temporal frontend (`GetSystemInfo`).
///
/// # Errors
///
/// The server's status, as text.
pub async fn ping(client: &Client) -> Result<(), String> {
    use temporalio_client::grpc::WorkflowService;
    use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;
    let mut service = client.clone();
    service
        .get_system_info(temporalio_client::tonic::Request::new(
            GetSystemInfoRequest::default(),
        ))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
