//! The promotion of an estimate snapshot to a work order: exactly once per
//! `(estimate_id, snapshot_version)`, the work order and the record's
//! completion in one transaction, one `promotion.attempted` audit event per
//! attempt.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idempotency_audit::{Actor, AuditEvent, AuditSink, BufferedSink, Outcome};
use idempotency_core::StoreError;
use idempotency_tower::{Decision, DecisionHook, DecisionOutcome, IdempotencyContext};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::{AppState, Fault};

/// The route template of the promotion (its path parameters are the key).
pub const PROMOTE_ROUTE: &str = "/estimates/{estimate_id}/snapshots/{snapshot_version}/promote";

/// The audit event type of every promotion attempt.
pub const ATTEMPTED: &str = "promotion.attempted";
/// The audit event type of an operator's resolution of a corrupted record.
pub const RESOLVED: &str = "promotion.resolved";
/// The audit source of the promotion events.
pub const SOURCE: &str = "/promotions";

/// Counter: work orders created by a promotion (story: `promotions.created.count`).
pub const CREATED_METRIC: &str = "promotions.created.count";
/// Counter: promotions answered with the existing work order.
pub const RETRIEVED_METRIC: &str = "promotions.retrieved.count";
/// Counter: promotion attempts that failed.
pub const FAILED_METRIC: &str = "promotions.failed.count";
/// Counter: promotion records found corrupted.
pub const CORRUPTED_METRIC: &str = "promotions.corrupted.count";

/// The story's outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A work order was created.
    Created,
    /// The existing work order was returned.
    Retrieved,
    /// The attempt failed.
    Failed,
}

impl AttemptOutcome {
    /// `CREATED`, `RETRIEVED` or `FAILED`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Retrieved => "RETRIEVED",
            Self::Failed => "FAILED",
        }
    }

    fn audit_outcome(self) -> Outcome {
        match self {
            Self::Created => Outcome::Created,
            Self::Retrieved => Outcome::from("retrieved"),
            Self::Failed => Outcome::Failed,
        }
    }

    fn count(self) {
        let name = match self {
            Self::Created => CREATED_METRIC,
            Self::Retrieved => RETRIEVED_METRIC,
            Self::Failed => FAILED_METRIC,
        };
        metrics::counter!(name).increment(1);
    }
}

/// One attempt, as the audit trail records it.
#[derive(Debug, Clone)]
pub(crate) struct Attempt<'a> {
    pub(crate) estimate_id: &'a str,
    pub(crate) snapshot_version: &'a str,
    pub(crate) is_first_attempt: bool,
    pub(crate) outcome: AttemptOutcome,
    pub(crate) workorder_id: Option<&'a str>,
    pub(crate) correlation_id: &'a str,
    pub(crate) key_hash: Option<&'a str>,
    pub(crate) reason: Option<String>,
}

/// The audit subject of a snapshot's promotion: `{estimate_id}/{snapshot_version}`.
pub fn subject(estimate_id: &str, snapshot_version: &str) -> String {
    format!("{estimate_id}/{snapshot_version}")
}

/// A snapshot version as the promotion reads it: an `i32` of at least 1, in
/// any spelling `str::parse` accepts (`1`, `01`, `+1`).
pub(crate) fn parse_version(text: &str) -> Option<i32> {
    text.parse::<i32>().ok().filter(|v| *v >= 1)
}

/// The one spelling of a snapshot version in keys, audit subjects and
/// chains: the canonical decimal of a version the promotion reads (`01`,
/// `+1` → `1`); any other text as it is (it names no snapshot: the promotion
/// answers 404 and its key is released).
pub fn canonical_version(text: &str) -> String {
    parse_version(text).map_or_else(|| text.to_owned(), |v| v.to_string())
}

/// A snapshot version as the audit trail holds it: a number when it is one.
fn version_value(version: &str) -> serde_json::Value {
    version
        .parse::<i64>()
        .map_or_else(|_| json!(version), |v| json!(v))
}

impl Attempt<'_> {
    pub(crate) fn event(&self) -> AuditEvent {
        let version = version_value(self.snapshot_version);
        let mut b = AuditEvent::builder(ATTEMPTED, SOURCE)
            .subject(subject(self.estimate_id, self.snapshot_version))
            .actor(Actor::system())
            .outcome(self.outcome.audit_outcome())
            .correlation_id(self.correlation_id)
            .attribute("estimateId", self.estimate_id)
            .attribute("snapshotVersion", version)
            .attribute("isFirstAttempt", self.is_first_attempt)
            .attribute("outcome", self.outcome.as_str())
            .attribute("workorderId", self.workorder_id);
        if let Some(h) = self.key_hash {
            b = b.key_hash(h);
        }
        if let Some(r) = &self.reason {
            b = b.reason(r.clone());
        }
        b.build()
    }
}

fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(idempotency_tower::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

/// `POST /estimates/{estimate_id}/snapshots/{snapshot_version}/promote`,
/// behind the idempotency layer: it runs only for a request that owns the
/// record (first time, after a crashed attempt's lease ran out, or after a
/// retryable failure). Duplicates are answered by the layer.
#[utoipa::path(
    post,
    path = "/estimates/{estimate_id}/snapshots/{snapshot_version}/promote",
    tag = "promotion",
    params(
        ("estimate_id" = String, Path, description = "`E-` and 1 to 19 digits, percent-decoded; with the version, the idempotency key (no `Idempotency-Key` header needed)"),
        ("snapshot_version" = String, Path, description = "1 to 2147483647 (`01` and `+1` are `1`)"),
        ("x-request-id" = Option<String>, Header, description = "Correlation id: 1 to 128 visible ASCII characters, else a new UUIDv7"),
    ),
    responses(
        (status = 201, description = "The work order was created (first time, or after a crashed or failed attempt)", body = crate::openapi::Promotion, headers(
            ("Location" = String, description = "`/work-orders/{id}`"),
        )),
        (status = 200, description = "The replay of the promotion's answer, or the existing work order linked again after an operator cleared the record", body = crate::openapi::Promotion, headers(
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
            ("Location" = String, description = "`/work-orders/{id}`"),
        )),
    )
)]
pub(crate) async fn promote(
    State(app): State<AppState>,
    Path((estimate_id, version)): Path<(String, String)>,
    ctx: Option<Extension<IdempotencyContext>>,
    headers: HeaderMap,
) -> Response {
    let Some(Extension(ctx)) = ctx else {
        return ApiError::internal("the promotion runs only behind the idempotency layer")
            .into_response();
    };
    match run(&app, &ctx, &estimate_id, &version, &headers).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn run(
    app: &AppState,
    ctx: &IdempotencyContext,
    estimate_id: &str,
    version_text: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    // Fault injection (inert unless EXAMPLE_CRASH_AT / EXAMPLE_STOP_AT names
    // the point): the record is claimed, nothing is written yet.
    example_support::faults::point("after_claim").await;
    let correlation = correlation_id(headers);
    let Some(version) = parse_version(version_text) else {
        return Err(ApiError::snapshot_not_found(estimate_id, version_text));
    };
    // `01` and `+1` are snapshot 1: one audit subject, one chain.
    let version_text = &version.to_string();
    let snapshot = sqlx::query(
        "SELECT s.status, s.lines, s.total_cents, e.customer_id \
         FROM promotion.estimates e \
         LEFT JOIN promotion.estimate_snapshots s ON s.estimate_id = e.id AND s.version = $2 \
         WHERE e.id = $1",
    )
    .bind(estimate_id)
    .bind(version)
    .fetch_optional(&app.pool)
    .await?;
    let Some(snapshot) = snapshot else {
        return Err(ApiError::estimate_not_found(estimate_id));
    };
    let Some(status) = snapshot.try_get::<Option<String>, _>("status")? else {
        return Err(ApiError::snapshot_not_found(estimate_id, version_text));
    };
    if status != "FINALIZED" {
        return Err(ApiError::snapshot_not_finalized(
            estimate_id,
            version,
            &status,
        ));
    }
    let lines: sqlx::types::Json<serde_json::Value> = snapshot.try_get("lines")?;
    let total: i64 = snapshot.try_get("total_cents")?;
    let customer: String = snapshot.try_get("customer_id")?;

    // The promotion record's business row, visible while the attempt runs
    // (PENDING); a later attempt finds and completes the same row.
    let promotion_id: Uuid = sqlx::query_scalar(
        "INSERT INTO promotion.promotions (id, estimate_id, snapshot_version, key_hash) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (estimate_id, snapshot_version) DO UPDATE SET updated_at = now() \
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(estimate_id)
    .bind(version)
    .bind(ctx.key_hash())
    .fetch_one(&app.pool)
    .await?;

    if let Some(hold) = app.faults.take_hold() {
        hold.hold().await;
    }
    let mut tx = app.pool.begin().await?;
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO promotion.work_orders (estimate_id, snapshot_version, customer_id, lines, total_cents) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT ON CONSTRAINT work_orders_one_per_snapshot DO NOTHING RETURNING id",
    )
    .bind(estimate_id)
    .bind(version)
    .bind(&customer)
    .bind(&lines)
    .bind(total)
    .fetch_optional(&mut *tx)
    .await?;
    let (workorder_id, outcome) = match inserted {
        Some(id) => (id, AttemptOutcome::Created),
        // The snapshot's work order exists but its record was cleared (an
        // operator resolved it while the work order was still there): link
        // it again rather than create a second one.
        None => {
            let id: String = sqlx::query_scalar(
                "SELECT id FROM promotion.work_orders WHERE estimate_id = $1 AND snapshot_version = $2",
            )
            .bind(estimate_id)
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
            (id, AttemptOutcome::Retrieved)
        }
    };
    sqlx::query(
        "UPDATE promotion.promotions SET workorder_id = $2, updated_at = now() WHERE id = $1",
    )
    .bind(promotion_id)
    .bind(&workorder_id)
    .execute(&mut *tx)
    .await?;

    let location = format!("/work-orders/{workorder_id}");
    let body = json!({
        "promotion_id": promotion_id,
        "estimate_id": estimate_id,
        "snapshot_version": version,
        "workorder_id": workorder_id,
        "status": "COMPLETED",
    })
    .to_string();
    let mut reply_headers = HeaderMap::new();
    reply_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        reply_headers.insert(header::LOCATION, v);
    }
    // Duplicates get 200 with the same body: the existing work order.
    let completion = ctx
        .completion(StatusCode::OK, &reply_headers, body.clone())
        .with_resource(location.clone());
    match app
        .store
        .complete_in(&mut tx, ctx.lease(), completion)
        .await
    {
        Ok(()) => {}
        Err(StoreError::LeaseLost) => {
            tracing::warn!(
                estimate_id,
                version,
                fence = ctx.fence(),
                "promotion attempt lost its lease; rolled back"
            );
            return Err(ApiError::superseded());
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not complete the promotion record; rolled back");
            return Err(ApiError::unavailable(
                "the promotion could not be recorded; nothing was changed, retry later",
            ));
        }
    }
    let attempt = Attempt {
        estimate_id,
        snapshot_version: version_text,
        is_first_attempt: ctx.is_first_attempt(),
        outcome,
        workorder_id: Some(&workorder_id),
        correlation_id: &correlation,
        key_hash: Some(&ctx.key_hash()),
        reason: (outcome == AttemptOutcome::Retrieved)
            .then(|| "the snapshot's work order existed; linked again".to_owned()),
    };
    if let Err(e) = app.audit.append_in(&mut tx, &attempt.event()).await {
        tracing::warn!(error = %e, "could not write the audit event; rolled back");
        return Err(ApiError::unavailable(
            "the audit trail could not be written; nothing was changed, retry later",
        ));
    }
    match app.faults.take() {
        Some(Fault::CrashBeforeCommit) => {
            tracing::error!(
                estimate_id,
                version,
                "fault injection: the process dies before the commit"
            );
            std::process::abort();
        }
        Some(Fault::FailBeforeCommit) => {
            tracing::warn!(
                estimate_id,
                version,
                "fault injection: the transaction fails before the commit"
            );
            drop(tx);
            return Err(ApiError::unavailable(
                "injected fault: the transaction was rolled back",
            ));
        }
        None => {}
    }
    // The work order, the completed record and the audit event are written
    // in the transaction, not committed.
    example_support::faults::point("before_commit").await;
    tx.commit().await?;
    // Committed; the client has no answer yet.
    example_support::faults::point("after_commit").await;
    ctx.mark_completed(Some(location));
    outcome.count();
    tracing::info!(
        estimate_id,
        version,
        workorder_id = %workorder_id,
        promotion_id = %promotion_id,
        attempt = ctx.attempt(),
        outcome = outcome.as_str(),
        "promotion completed"
    );
    let status = if outcome == AttemptOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, reply_headers, body).into_response())
}

/// Turns each decision of the promotion layer that the handler did not
/// record itself into a `promotion.attempted` event (fire-and-forget) and a
/// metric: replays are `RETRIEVED`, everything else that did not complete is
/// `FAILED`.
pub(crate) struct PromotionHook {
    pub(crate) buffer: BufferedSink,
}

impl DecisionHook for PromotionHook {
    fn on_decision(&self, d: &Decision) {
        // As the handler and the key read them: decoded, the version canonical
        // (`/estimates/%45-1/snapshots/01/...` is promotion `E-1/1`); a value
        // that does not decode (the layer refused it) is audited as sent.
        let param = |name| {
            d.path_param_decoded(name)
                .or_else(|| d.path_param(name).map(std::borrow::Cow::Borrowed))
        };
        let (Some(estimate_id), Some(version)) = (param("estimate_id"), param("snapshot_version"))
        else {
            return;
        };
        let estimate_id = estimate_id.as_ref();
        let version = &canonical_version(&version);
        let success = d.status.is_some_and(|s| s.is_success());
        let outcome = match d.outcome {
            // The handler completed the record and wrote its event in its transaction.
            DecisionOutcome::Executed | DecisionOutcome::Reclaimed if d.resource.is_some() => {
                return;
            }
            DecisionOutcome::Replayed if success => AttemptOutcome::Retrieved,
            _ => AttemptOutcome::Failed,
        };
        let workorder_id = d
            .resource
            .as_deref()
            .and_then(|r| r.strip_prefix("/work-orders/"));
        if d.outcome == DecisionOutcome::Corrupted {
            metrics::counter!(CORRUPTED_METRIC).increment(1);
            tracing::error!(
                alert = true,
                estimate_id,
                snapshot_version = version,
                workorder_id,
                "ALERT: promotion record CORRUPTED: its work order no longer exists; \
                 resolve it with POST /admin/promotions/{estimate_id}/{version}/resolve"
            );
        }
        let reason = (outcome == AttemptOutcome::Failed).then(|| {
            format!(
                "{}{}",
                d.outcome,
                d.status
                    .map(|s| format!(" ({})", s.as_u16()))
                    .unwrap_or_default()
            )
        });
        let attempt = Attempt {
            estimate_id,
            snapshot_version: version,
            is_first_attempt: matches!(
                d.outcome,
                DecisionOutcome::Executed | DecisionOutcome::Released | DecisionOutcome::Failed
            ) && d.attempt == Some(1),
            outcome,
            workorder_id,
            correlation_id: &d.correlation_id,
            key_hash: d.key_hash.as_deref(),
            reason,
        };
        outcome.count();
        if !self.buffer.enqueue(attempt.event()) {
            tracing::warn!("audit buffer full: a promotion.attempted event was dropped");
        }
    }
}

/// Whether a work order named by a record's resource reference exists.
pub(crate) async fn work_order_exists(
    pool: &sqlx::PgPool,
    resource: &str,
) -> Result<bool, sqlx::Error> {
    let Some(id) = resource.strip_prefix("/work-orders/") else {
        return Ok(false);
    };
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM promotion.work_orders WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Appends an operator's resolution event directly (atomic, awaited).
pub(crate) async fn audit_resolution(
    sink: &impl AuditSink,
    estimate_id: &str,
    version: &str,
    reason: &str,
    before: serde_json::Value,
    correlation: &str,
) -> Result<(), idempotency_audit::AuditError> {
    let event = AuditEvent::builder(RESOLVED, SOURCE)
        .subject(subject(estimate_id, version))
        .actor(Actor::user("admin").with_role("operator"))
        .outcome(Outcome::Updated)
        .reason(reason)
        .correlation_id(correlation)
        .attribute("estimateId", estimate_id)
        .attribute("snapshotVersion", version_value(version))
        .before(before)
        .after(json!({"status": "FAILED", "workorderId": null}))
        .build();
    sink.append(&event).await
}
