//! The command line: every command, option and environment variable.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::parse_duration;

/// Inspect, list, release, resolve and purge idempotency records, and verify
/// the audit trail. Every change asks for confirmation, needs a reason and
/// leaves an audit event.
#[derive(Debug, Parser)]
#[command(name = "idempotency-admin", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) audit: AuditArgs,
    /// Print JSON (one document on stdout) instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Which store holds the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StoreKind {
    /// `idempotency-postgres`: `--database-url`, `--schema`.
    Postgres,
    /// `idempotency-redis`: `--redis-url`, `--prefix`, `--cluster`.
    Redis,
}

/// Where the records are.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The store: postgres or redis.
    #[arg(long, value_enum, env = "IDEMPOTENCY_STORE", global = true)]
    pub(crate) store: Option<StoreKind>,
    /// PostgreSQL URL of the store.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// The store's PostgreSQL schema.
    #[arg(long, default_value = "idempotency", global = true)]
    pub(crate) schema: String,
    /// Redis URL; with --cluster, a seed node (repeat the option, or
    /// separate URLs with commas).
    #[arg(
        long,
        env = "REDIS_URL",
        global = true,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) redis_url: Vec<String>,
    /// The Redis URLs are seed nodes of a Redis Cluster.
    #[arg(long, global = true)]
    pub(crate) cluster: bool,
    /// The store's Redis key prefix.
    #[arg(long, default_value = "idem", global = true)]
    pub(crate) prefix: String,
    /// How long to wait for the store (and the audit database) to answer
    /// a connection: 500ms, 5s, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub(crate) connect_timeout: Duration,
}

/// Where the audit trail is.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// PostgreSQL URL of the audit trail: every change is also appended
    /// there (always printed on stderr as a JSON line). `audit verify`
    /// falls back to --database-url.
    #[arg(
        long,
        env = "IDEMPOTENCY_AUDIT_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) audit_database_url: Option<String>,
    /// The audit trail's schema.
    #[arg(long, default_value = "audit", global = true)]
    pub(crate) audit_schema: String,
    /// Create or upgrade the audit schema before writing to it (needs the
    /// schema owner's rights).
    #[arg(long, global = true)]
    pub(crate) audit_migrate: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show one record: state, fence, attempts, lease, expiry, outcome.
    Inspect {
        #[command(flatten)]
        key: KeyArgs,
        /// Print the stored body too (text, or hex when it is not UTF-8).
        #[arg(long)]
        body: bool,
    },
    /// List live records, corrupted and stuck ones first, then oldest first.
    List {
        /// Only records in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only records created at least this long ago: 90s, 10m, 2h, 1d.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// At most this many records.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Release a stuck PENDING record: it is deleted, the next claim runs
    /// afresh with a greater fence.
    Release {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        change: ChangeArgs,
        /// Release even though the lease is live: the owner is fenced off
        /// (its completion fails with LeaseLost), but a side effect it makes
        /// outside the store may happen twice.
        #[arg(long)]
        force: bool,
    },
    /// Resolve a CORRUPTED record: delete it (absent) or turn it into a failure.
    Resolve {
        #[command(flatten)]
        key: KeyArgs,
        /// What the record becomes.
        #[arg(long, value_enum)]
        to: Target,
        /// With --to failed: a later claim may execute again.
        #[arg(long)]
        retryable: bool,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Delete records that are expired by their stored timestamps.
    Purge {
        /// Purge expired records (the only purge there is; required so the
        /// command says what it deletes).
        #[arg(long, required = true)]
        expired: bool,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Records deleted per batch (one short transaction or scan each).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the hash chains of the PostgreSQL audit trail.
    Verify {
        /// Verify this stream (repeatable); default: every stream.
        #[arg(long)]
        stream: Vec<String>,
    },
    /// Sign a checkpoint (RFC 6962 Merkle root, Ed25519, C2SP checkpoint
    /// text) of each stream into a directory outside the database; refused
    /// for a stream whose rows no longer match its latest checkpoint.
    Checkpoint {
        /// The signing key, in the note key format (`audit-verify keygen`).
        #[arg(long)]
        key: std::path::PathBuf,
        /// The checkpoint directory.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Checkpoint this stream (repeatable); default: every stream.
        #[arg(long)]
        stream: Vec<String>,
    },
}

/// Record states, as `list --state` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateArg {
    /// Someone is executing (or was, and is stuck).
    Pending,
    /// Done; replayed.
    Completed,
    /// Executed and failed.
    Failed,
    /// Blocks its key until resolved.
    Corrupted,
}

/// What `resolve` turns a corrupted record into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Target {
    /// A FAILED record (terminal unless --retryable), kept for a day.
    Failed,
    /// Nothing: the next claim executes afresh.
    Absent,
}

/// Which record: its storage key, or what the layer computes it from.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The storage key, 64 hex digits (as `list` and the service's logs print it).
    pub(crate) storage_key: Option<String>,
    /// Compute the storage key as the layer does: the layer's namespace.
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// The scope (tenant, principal); empty for unscoped services.
    #[arg(long, default_value = "")]
    pub(crate) scope: String,
    /// The client's Idempotency-Key header value (bare or sf-string quoted).
    #[arg(long = "key")]
    pub(crate) client_key: Option<String>,
    /// A derived key value (repeat in order), as path parameters give them;
    /// needs --route.
    #[arg(long)]
    pub(crate) derived: Vec<String>,
    /// A JSON request body to derive the key from with --pointer; needs --route.
    #[arg(long)]
    pub(crate) json_body: Option<String>,
    /// A JSON pointer into --json-body (repeat in order), as `JsonFields` uses.
    #[arg(long = "pointer")]
    pub(crate) pointers: Vec<String>,
    /// The method, for derived keys.
    #[arg(long, default_value = "POST")]
    pub(crate) method: String,
    /// The route template (`/estimates/{id}/promote`), for derived keys.
    #[arg(long)]
    pub(crate) route: Option<String>,
}

/// What every change needs.
#[derive(Debug, Args)]
pub(crate) struct ChangeArgs {
    /// Why (written to the audit trail; required for every change).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Who (default: the OS user, from $USER or $LOGNAME).
    #[arg(long)]
    pub(crate) actor: Option<String>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}
