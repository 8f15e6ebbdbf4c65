//! Shared helpers: the built binary run as a process against a real store
//! (PostgreSQL in a fresh schema, Redis under a fresh prefix), and the
//! records the tests put there through the stores' own APIs.

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use idempotency_core::conformance::support::{database_url, in_ci, redis_url};
use idempotency_core::{
    Claim, ClaimRequest, Completion, DynStore, Fingerprint, IdempotencyStore, Lease, Observed,
    Outcome, StorageKey, StoredResponse,
};
use idempotency_postgres::PostgresStore;
use idempotency_postgres::sqlx::{self, PgPool};
use idempotency_redis::redis::AsyncCommands as _;
use idempotency_redis::{RedisConfig, RedisStore};
use serde_json::Value;

/// What a run of the binary left.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The audit events printed on stderr.
    pub fn audit_events(&self) -> Vec<Value> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .map(|v| v["audit_event"].clone())
            .collect()
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; {self:#?}");
        self
    }
}

/// Runs the binary with `args`, stdin not a terminal (empty), and no store
/// settings from the environment.
pub fn admin(args: &[&str]) -> Run {
    admin_with_stdin(args, "")
}

/// [`admin`] with `input` on stdin.
pub fn admin_with_stdin(args: &[&str], input: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idempotency-admin"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("IDEMPOTENCY_STORE")
        .env_remove("IDEMPOTENCY_AUDIT_DATABASE_URL")
        .env("USER", "test-operator")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("the binary ends");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A store the binary works on, and the same store for the test's own claims.
pub struct Target {
    pub kind: &'static str,
    pub store: DynStore,
    /// The connection arguments naming it.
    pub args: Vec<String>,
    backend: Backend,
}

enum Backend {
    Postgres(PostgresStore),
    Redis(RedisStore),
}

fn fresh(tag: &str) -> String {
    format!("{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

impl Target {
    /// A migrated store in a fresh schema, or `None` when PostgreSQL is
    /// unreachable outside CI.
    pub async fn postgres() -> Option<Self> {
        let pool = pool().await?;
        let schema = fresh("idem_adm");
        let store = PostgresStore::builder()
            .schema(&schema)
            .build(pool)
            .expect("valid schema");
        store.migrate().await.expect("migrate");
        Some(Self {
            kind: "postgres",
            store: DynStore::new(store.clone()),
            args: vec![
                "--store".into(),
                "postgres".into(),
                "--database-url".into(),
                database_url(),
                "--schema".into(),
                schema,
            ],
            backend: Backend::Postgres(store),
        })
    }

    /// A store under a fresh prefix, or `None` when Redis is unreachable
    /// outside CI.
    pub async fn redis() -> Option<Self> {
        let prefix = fresh("idem-adm");
        let store = RedisStore::new(RedisConfig::new(redis_url()).prefix(&prefix)).unwrap();
        match store.ping().await {
            Ok(()) => {}
            Err(e) if in_ci() => panic!("Redis unreachable under CI: {e}"),
            Err(_) => {
                println!("skipping: redis unreachable");
                return None;
            }
        }
        Some(Self::on_redis(
            store,
            vec![
                "--store".into(),
                "redis".into(),
                "--redis-url".into(),
                redis_url(),
                "--prefix".into(),
                prefix,
            ],
        ))
    }

    /// A Redis store the binary reaches with `args`.
    pub fn on_redis(store: RedisStore, args: Vec<String>) -> Self {
        Self {
            kind: "redis",
            store: DynStore::new(store.clone()),
            args,
            backend: Backend::Redis(store),
        }
    }

    /// Runs the binary on this store.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "")
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut all: Vec<&str> = self.args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        admin_with_stdin(&all, input)
    }

    /// Claims `key` with `lease`, returning the lease.
    pub async fn claim(&self, key: StorageKey, lease: Duration) -> Lease {
        match self.store.claim(&request(key, lease)).await.expect("claim") {
            Claim::Acquired { lease, .. } => lease,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    /// A completed record at `key`: 201, a location header, a JSON body.
    pub async fn completed(&self, key: StorageKey) -> Lease {
        let lease = self.claim(key, Duration::from_secs(60)).await;
        self.store
            .complete(&lease, response())
            .await
            .expect("complete");
        lease
    }

    /// A pending record whose lease has run out (a crashed owner).
    pub async fn stuck(&self, key: StorageKey) -> Lease {
        let lease = self.claim(key, Duration::from_millis(5)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        lease
    }

    /// A corrupted record at `key`.
    pub async fn corrupted(&self, key: StorageKey) -> Lease {
        let lease = self.completed(key).await;
        self.store
            .mark_corrupted(&key, Observed::completed(lease.fence), "the order is gone")
            .await
            .expect("mark");
        lease
    }

    /// Moves the stored expiry of `key` a minute into the past: the record
    /// no longer counts but is still held (as after a lost eviction).
    pub async fn expire(&self, key: &StorageKey) {
        match &self.backend {
            Backend::Postgres(s) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE \"{}\".records SET expires_at = statement_timestamp() - interval '1 minute' WHERE key = $1",
                    s.schema()
                )))
                .bind(&key.as_bytes()[..])
                .execute(s.pool())
                .await
                .unwrap();
            }
            Backend::Redis(s) => {
                let client = idempotency_redis::redis::Client::open(redis_url()).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let past = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64
                    - 60_000;
                let _: () = conn
                    .hset(s.record_key(key), "e", past.to_string())
                    .await
                    .unwrap();
            }
        }
    }
}

/// A claim request for `key`: fingerprint `admin-test`, an hour of retention.
pub fn request(key: StorageKey, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("admin-test", b""),
        lease,
        retention: Duration::from_secs(3600),
        max_attempts: 3,
    }
}

/// The completion `completed` stores.
pub fn response() -> Completion {
    Completion::new(Outcome::Response(StoredResponse {
        status: 201,
        headers: vec![("location".into(), Bytes::from_static(b"/orders/7"))],
        body: Bytes::from_static(b"{\"id\":7}"),
        trailers: Vec::new(),
    }))
    .with_resource("/orders/7")
}

/// A fresh random storage key.
pub fn key() -> StorageKey {
    StorageKey::from_segments(&[b"admin-test".as_slice(), uuid::Uuid::new_v4().as_bytes()])
}

/// A pool to the test database, or `None` when it is unreachable outside CI.
pub async fn pool() -> Option<PgPool> {
    let pool = idempotency_postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&database_url())
        .expect("DATABASE_URL parses");
    match sqlx::query("SELECT 1").execute(&pool).await {
        Ok(_) => Some(pool),
        Err(e) if in_ci() => panic!("PostgreSQL unreachable under CI: {e}"),
        Err(_) => {
            println!("skipping: postgres unreachable");
            None
        }
    }
}

/// Drops a test schema (the store's or an audit trail's).
pub async fn drop_schema(schema: &str) {
    if let Some(pool) = pool().await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&pool)
        .await;
    }
}

/// Removes what a test left (best effort, with the command-line clients:
/// no runtime in `drop`).
impl Drop for Target {
    fn drop(&mut self) {
        match &self.backend {
            Backend::Postgres(s) => {
                let _ = Command::new("psql")
                    .args([
                        database_url().as_str(),
                        "-qc",
                        &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", s.schema()),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Backend::Redis(s) if !s.config().urls().iter().any(|u| u.is_empty()) => {
                let Some(url) = s.config().urls().first() else {
                    return;
                };
                let pattern = format!("{}:*", s.config().key_prefix());
                let Ok(out) = Command::new("redis-cli")
                    .args(["-u", url, "--scan", "--pattern", &pattern])
                    .output()
                else {
                    return;
                };
                let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                if !keys.is_empty() && s.config().urls().len() == 1 {
                    let _ = Command::new("redis-cli")
                        .args(["-u", url, "DEL"])
                        .args(&keys)
                        .stdout(Stdio::null())
                        .status();
                }
            }
            Backend::Redis(_) => {}
        }
    }
}
