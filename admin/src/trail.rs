//! The audit trail of operator changes: one [`AuditEvent`] per change,
//! always printed on stderr as a JSON line, and appended to the PostgreSQL
//! audit trail (`idempotency_audit::postgres::PostgresSink`) when one is
//! configured.

use std::io::Write as _;
use std::time::Duration;

use idempotency_audit::postgres::PostgresSink;
use idempotency_audit::postgres::sqlx::postgres::PgPoolOptions;
use idempotency_audit::postgres::sqlx::{self, PgPool};
use idempotency_audit::{Actor, AuditEvent, Outcome};
use serde_json::{Value, json};

use crate::cli::{AuditArgs, ChangeArgs};
use crate::exit::{Failure, chain};

/// The `source` of every event the CLI writes.
pub(crate) const SOURCE: &str = "/idempotency-admin";

/// Where change events go.
pub(crate) struct Trail {
    sink: Option<PostgresSink>,
}

/// Who asks for a change, and why.
pub(crate) struct Change {
    pub(crate) actor: String,
    pub(crate) reason: String,
    pub(crate) yes: bool,
}

impl Change {
    /// The actor (`--actor`, else the OS user) and the reason (required).
    pub(crate) fn from_args(args: &ChangeArgs) -> Result<Self, Failure> {
        let reason = args
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Failure::Usage("every change needs --reason \"...\"".into()))?;
        let actor = args
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Failure::Usage(
                    "no OS user in $USER or $LOGNAME: say who you are with --actor".into(),
                )
            })?;
        Ok(Self {
            actor,
            reason: reason.to_owned(),
            yes: args.yes,
        })
    }
}

/// Builds a pool for an audit database URL.
pub(crate) fn audit_pool(url: &str, connect_timeout: Duration) -> Result<PgPool, Failure> {
    let options: sqlx::postgres::PgConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| Failure::Usage(format!("audit database URL: {}", chain(&e))))?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .connect_lazy_with(options))
}

/// A sink on `pool` in `schema`.
pub(crate) fn audit_sink(pool: PgPool, schema: &str) -> Result<PostgresSink, Failure> {
    PostgresSink::new(pool)
        .with_schema(schema)
        .map_err(|e| Failure::Usage(format!("--audit-schema: {}", chain(&e))))
}

impl Trail {
    /// Opens the trail before anything is changed: with an audit database,
    /// its events table must answer now (after a migration with
    /// `--audit-migrate`), so a change is not made that cannot be recorded
    /// (the append itself can still fail afterwards: see `record`).
    pub(crate) async fn open(args: &AuditArgs, connect_timeout: Duration) -> Result<Self, Failure> {
        let Some(url) = &args.audit_database_url else {
            return Ok(Self { sink: None });
        };
        let sink = audit_sink(audit_pool(url, connect_timeout)?, &args.audit_schema)?;
        let unreachable = |e: &dyn std::error::Error| {
            Failure::Unreachable(format!("audit trail: {}; nothing was changed", chain(e)))
        };
        if args.audit_migrate {
            sink.migrate().await.map_err(|e| unreachable(&e))?;
        }
        // The trail's table must be there (and readable, as for the
        // insert-only role), not only the database: a missing schema is
        // found before the change, not after it.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM \"{}\".events LIMIT 0",
            sink.schema()
        )))
        .execute(sink.pool())
        .await
        .map_err(|e| unreachable(&e))?;
        Ok(Self { sink: Some(sink) })
    }

    /// Records `event`: prints it on stderr (one JSON line), then appends it
    /// to the audit database, if any. Returns where it was written.
    pub(crate) async fn record(&self, event: &AuditEvent) -> Result<Value, Failure> {
        let line = json!({ "audit_event": event.to_json() }).to_string();
        let mut stderr = std::io::stderr().lock();
        // A closed stderr must not stop the append below.
        let _ = writeln!(stderr, "{line}");
        drop(stderr);
        let Some(sink) = &self.sink else {
            return Ok(json!({ "stderr": true, "postgres": null }));
        };
        let appended = async {
            let mut conn = sink.pool().acquire().await.map_err(|e| chain(&e))?;
            sink.append_in(&mut conn, event)
                .await
                .map_err(|e| chain(&e))
        }
        .await
        .map_err(|e| {
            Failure::Unreachable(format!(
                "the change WAS made, but the audit trail refused its event ({e}); \
                 the event is the audit_event line above: append it by hand"
            ))
        })?;
        Ok(json!({
            "stderr": true,
            "postgres": {
                "schema": sink.schema(),
                "stream": appended.stream,
                "seq": appended.seq,
            },
        }))
    }
}

/// An operator change event: type `idempotency.operator.<action>`.
pub(crate) fn event(
    action: &str,
    change: &Change,
    outcome: Outcome,
    subject: &str,
    key_hash: Option<&str>,
) -> idempotency_audit::AuditEventBuilder {
    let mut b = AuditEvent::builder(format!("idempotency.operator.{action}"), SOURCE)
        .subject(subject)
        .actor(Actor::user(&change.actor))
        .outcome(outcome)
        .reason(&change.reason);
    if let Some(hash) = key_hash {
        b = b.key_hash(hash);
    }
    b
}
