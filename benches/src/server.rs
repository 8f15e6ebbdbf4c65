//! The server variants: one handler with a counted side effect, behind
//! nothing (`bare`) or behind `IdempotencyLayer` on each store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use idempotency_core::MemoryStore;
use idempotency_core::cache::{ReplayCache, ReplayCacheConfig};
use idempotency_postgres::{ClaimCommit, PostgresStore};
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};
use idempotency_tower::{IdempotencyContext, IdempotencyLayer};
use sqlx::PgPool;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use crate::Workload;

/// A server configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// The handler alone: the upper bound, with no protection.
    Bare,
    /// `IdempotencyLayer` on `MemoryStore`.
    Memory,
    /// `IdempotencyLayer` on `RedisStore` (one multiplexed connection, the default).
    Redis,
    /// `IdempotencyLayer` on `RedisStore` over a deadpool-redis pool.
    RedisPooled,
    /// `IdempotencyLayer` on `PostgresStore`; the side effect is an insert.
    Postgres,
    /// As `Postgres`, but the handler inserts its row and completes the
    /// record in one transaction (`PostgresStore::complete_in`).
    PostgresTx,
    /// As `PostgresTx`, with the claim committed asynchronously
    /// (`ClaimCommit::Asynchronous`, safe with the completion in the
    /// effect's transaction).
    PostgresTxAsync,
    /// As `Redis`, behind the opt-in replay cache (`idempotency_core::cache`).
    RedisCached,
    /// As `Postgres`, behind the opt-in replay cache.
    PostgresCached,
    /// A published peer, run as a child process (see `benches/peers`).
    Peer(Peer, PeerStore),
}

/// Published peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// `axum-idempotent` (session-scoped response cache).
    AxumIdempotent,
    /// `idempotent` (claim / execute-or-replay).
    Idempotent,
}

/// A peer's backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerStore {
    Memory,
    Redis,
    Postgres,
}

impl Variant {
    pub(crate) const ALL: [Variant; 15] = [
        Variant::Bare,
        Variant::Memory,
        Variant::Redis,
        Variant::RedisPooled,
        Variant::RedisCached,
        Variant::Postgres,
        Variant::PostgresTx,
        Variant::PostgresTxAsync,
        Variant::PostgresCached,
        Variant::Peer(Peer::AxumIdempotent, PeerStore::Memory),
        Variant::Peer(Peer::AxumIdempotent, PeerStore::Redis),
        Variant::Peer(Peer::AxumIdempotent, PeerStore::Postgres),
        Variant::Peer(Peer::Idempotent, PeerStore::Memory),
        Variant::Peer(Peer::Idempotent, PeerStore::Redis),
        Variant::Peer(Peer::Idempotent, PeerStore::Postgres),
    ];

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisPooled => "redis-pooled",
            Self::Postgres => "postgres",
            Self::PostgresTx => "postgres-tx",
            Self::PostgresTxAsync => "postgres-tx-async",
            Self::RedisCached => "redis-cached",
            Self::PostgresCached => "postgres-cached",
            Self::Peer(Peer::AxumIdempotent, PeerStore::Memory) => "axum-idempotent-memory",
            Self::Peer(Peer::AxumIdempotent, PeerStore::Redis) => "axum-idempotent-redis",
            Self::Peer(Peer::AxumIdempotent, PeerStore::Postgres) => "axum-idempotent-postgres",
            Self::Peer(Peer::Idempotent, PeerStore::Memory) => "idempotent-memory",
            Self::Peer(Peer::Idempotent, PeerStore::Redis) => "idempotent-redis",
            Self::Peer(Peer::Idempotent, PeerStore::Postgres) => "idempotent-postgres",
        }
    }

    /// Whether the variant promises one execution per key.
    pub(crate) fn protected(self) -> bool {
        self != Self::Bare
    }
}

/// Side effects per key: a counted map entry, or a row inserted in PostgreSQL
/// (the `postgres-tx` variants, whose row commits with the record).
#[derive(Clone)]
enum Effects {
    Map(Arc<Mutex<HashMap<String, u32>>>),
    Rows { pool: PgPool, run: String },
}

impl Effects {
    async fn record(&self, key: String) -> Result<(), String> {
        match self {
            Self::Map(m) => {
                *m.lock().await.entry(key).or_default() += 1;
                Ok(())
            }
            Self::Rows { pool, run } => {
                sqlx::query("INSERT INTO bench_effects (run, key) VALUES ($1, $2)")
                    .bind(run)
                    .bind(key)
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Removes this run's rows (the map goes with the server).
    async fn remove(&self) {
        if let Self::Rows { pool, run } = self {
            let _ = sqlx::query("DELETE FROM bench_effects WHERE run = $1")
                .bind(run)
                .execute(pool)
                .await;
        }
    }

    async fn counts(&self) -> Result<HashMap<String, u32>, String> {
        match self {
            Self::Map(m) => Ok(m.lock().await.clone()),
            Self::Rows { pool, run } => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT key, count(*) FROM bench_effects WHERE run = $1 GROUP BY key",
                )
                .bind(run)
                .fetch_all(pool)
                .await
                .map_err(|e| e.to_string())?;
                Ok(rows.into_iter().map(|(k, n)| (k, n as u32)).collect())
            }
        }
    }
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg_pool() -> Result<PgPool, String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&database_url())
        .await
        .map_err(|e| format!("PostgreSQL at DATABASE_URL unreachable: {e}"))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_effects (id bigserial PRIMARY KEY, run text NOT NULL, key text NOT NULL)",
    )
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok(pool)
}

#[derive(Clone)]
struct App {
    effects: Effects,
    delay: Duration,
    next_id: Arc<AtomicU64>,
}

/// The client's key as sent (an sf-string, quotes removed): what effects are counted by.
fn client_key(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_matches('"')
        .to_owned()
}

async fn create_order(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if !app.delay.is_zero() {
        tokio::time::sleep(app.delay).await;
    }
    let key = client_key(&headers);
    if let Err(e) = app.effects.record(key).await {
        return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
    }
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let out = format!(
        r#"{{"id":{id},"request_bytes":{},"status":"created"}}"#,
        body.len()
    );
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/orders/{id}")),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        out,
    )
        .into_response()
}

/// The state of the `postgres-tx` handler.
#[derive(Clone)]
struct TxApp {
    store: PostgresStore,
    run: String,
    delay: Duration,
}

/// The same order, but the inserted row and the record's completion commit
/// in one transaction; the layer is then told to store nothing itself.
async fn create_order_tx(
    State(app): State<TxApp>,
    Extension(ctx): Extension<IdempotencyContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !app.delay.is_zero() {
        tokio::time::sleep(app.delay).await;
    }
    let key = client_key(&headers);
    match insert_and_complete(&app, &ctx, key, body.len()).await {
        Ok((id, response_headers, out)) => {
            ctx.mark_completed(Some(format!("/orders/{id}")));
            (StatusCode::CREATED, response_headers, out).into_response()
        }
        // Rolled back (the transaction is dropped): the layer applies its
        // policy to this 5xx, a retryable failure (or nothing if fenced).
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn insert_and_complete(
    app: &TxApp,
    ctx: &IdempotencyContext,
    key: String,
    request_bytes: usize,
) -> Result<(i64, HeaderMap, String), String> {
    let mut tx = app.store.pool().begin().await.map_err(|e| e.to_string())?;
    let (id,): (i64,) =
        sqlx::query_as("INSERT INTO bench_effects (run, key) VALUES ($1, $2) RETURNING id")
            .bind(&app.run)
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
    let out = format!(r#"{{"id":{id},"request_bytes":{request_bytes},"status":"created"}}"#);
    let mut headers = HeaderMap::new();
    let location = format!("/orders/{id}");
    headers.insert(
        header::LOCATION,
        location.parse().map_err(|_| "location header")?,
    );
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let completion = ctx
        .completion(StatusCode::CREATED, &headers, out.clone())
        .with_resource(location);
    app.store
        .complete_in(&mut tx, ctx.lease(), completion)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok((id, headers, out))
}

/// A running variant.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// A cookie every request must carry (session-scoped peers).
    pub(crate) cookie: Option<String>,
    running: Running,
}

enum Running {
    InProcess {
        effects: Effects,
        leftovers: Leftovers,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    },
    Child(Box<crate::peer::PeerProcess>),
}

impl Server {
    /// Executions per key.
    pub(crate) async fn effects(&self) -> Result<HashMap<String, u32>, String> {
        match &self.running {
            Running::InProcess { effects, .. } => effects.counts().await,
            Running::Child(p) => p.effects().await,
        }
    }

    pub(crate) async fn shutdown(self) {
        match self.running {
            Running::InProcess {
                effects,
                leftovers,
                stop,
                task,
            } => {
                let _ = stop.send(());
                let _ = task.await;
                effects.remove().await;
                leftovers.remove().await;
            }
            Running::Child(p) => p.stop().await,
        }
    }
}

/// Starts `variant` for `workload` on an ephemeral loopback port: in this
/// process, or (`isolate`, and always for the peers) as a child process.
pub(crate) async fn start(
    variant: Variant,
    workload: Workload,
    isolate: bool,
) -> Result<Server, String> {
    let child = match variant {
        Variant::Peer(peer, store) => {
            Some(crate::peer::PeerProcess::spawn(peer, store, workload.handler_delay()).await?)
        }
        _ if isolate => Some(crate::peer::PeerProcess::spawn_own(variant, workload).await?),
        _ => None,
    };
    if let Some(p) = child {
        return Ok(Server {
            addr: p.addr,
            cookie: p.cookie.clone(),
            running: Running::Child(Box::new(p)),
        });
    }
    let (router, effects, leftovers) = build(variant, workload).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Server {
        addr,
        cookie: None,
        running: Running::InProcess {
            effects,
            leftovers,
            stop,
            task,
        },
    })
}

/// `--serve`: one of this harness's variants as a child process, with the
/// peers' protocol (`listening on ADDR` once ready, `GET /effects`, exit
/// when stdin closes).
pub(crate) async fn serve_child(
    variant: Variant,
    workload: Workload,
    bind: SocketAddr,
) -> Result<(), String> {
    let (router, effects, leftovers) = build(variant, workload).await?;
    let counted = effects.clone();
    let router = router.route(
        "/effects",
        get(move || {
            let effects = effects.clone();
            async move {
                match effects.counts().await {
                    Ok(counts) => Json(counts).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {addr}");
    let (closed, stdin_closed) = oneshot::channel::<()>();
    // A plain thread: a blocking read inside the runtime would hold up its shutdown.
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(std::io::Read::read(&mut stdin, &mut buf), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = stdin_closed.await;
        })
        .await
        .map_err(|e| e.to_string());
    counted.remove().await;
    leftovers.remove().await;
    served
}

/// What a run leaves in a shared server besides its side effects: the
/// records of a Redis variant (its own key prefix) or of a PostgreSQL
/// variant (its own schema), removed when it stops. Every run starts from
/// an empty store, as the peers' runs do.
enum Leftovers {
    None,
    RedisPrefix(String),
    PgSchema { pool: PgPool, schema: String },
}

impl Leftovers {
    async fn remove(&self) {
        let prefix = match self {
            Self::None => return,
            Self::PgSchema { pool, schema } => {
                // The name is this harness's own `bench_<hex>`.
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(pool).await {
                    eprintln!("  could not drop the schema {schema}: {e}");
                }
                return;
            }
            Self::RedisPrefix(prefix) => prefix,
        };
        let result: Result<(), idempotency_redis::redis::RedisError> = async {
            let config = RedisConfig::from_env();
            let url = config.urls().first().cloned().unwrap_or_default();
            let client = idempotency_redis::redis::Client::open(url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = idempotency_redis::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}:*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    idempotency_redis::redis::cmd("UNLINK")
                        .arg(&keys)
                        .exec_async(&mut conn)
                        .await?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        }
        .await;
        if let Err(e) = result {
            eprintln!("  could not remove the keys {prefix}:*: {e}");
        }
    }
}

/// The router of one of this harness's variants, where its side effects are
/// counted and what it leaves behind.
async fn build(
    variant: Variant,
    workload: Workload,
) -> Result<(Router, Effects, Leftovers), String> {
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let pool = match variant {
        Variant::Postgres
        | Variant::PostgresTx
        | Variant::PostgresTxAsync
        | Variant::PostgresCached => Some(pg_pool().await?),
        _ => None,
    };
    // Every variant's handler counts its effects in the same in-process map
    // as the peers' handlers do, except the `postgres-tx` variants: their
    // point is the effect row and the record's completion in one
    // transaction, so their effects are rows.
    let app = App {
        effects: match (&pool, variant) {
            (Some(pool), Variant::PostgresTx | Variant::PostgresTxAsync) => Effects::Rows {
                pool: pool.clone(),
                run: run.clone(),
            },
            _ => Effects::Map(Arc::default()),
        },
        delay: workload.handler_delay(),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let effects = app.effects.clone();
    let delay = app.delay;
    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(app);
    // A PostgreSQL variant's records live in a schema of this run's own.
    let schema = format!("bench_{run}");
    let mut leftovers = match &pool {
        Some(pool) => Leftovers::PgSchema {
            pool: pool.clone(),
            schema: schema.clone(),
        },
        None => Leftovers::None,
    };
    let router = match variant {
        Variant::Bare => router,
        Variant::Memory => {
            router.layer(IdempotencyLayer::new(MemoryStore::new()).namespace("bench"))
        }
        Variant::Redis | Variant::RedisPooled | Variant::RedisCached => {
            let mode = if variant == Variant::RedisPooled {
                ConnectionMode::Pooled
            } else {
                ConnectionMode::Multiplexed
            };
            let prefix = format!("bench-{run}");
            leftovers = Leftovers::RedisPrefix(prefix.clone());
            let store = RedisStore::new(RedisConfig::from_env().prefix(prefix).mode(mode))
                .map_err(|e| e.to_string())?;
            store
                .ping()
                .await
                .map_err(|e| format!("Redis at REDIS_URL unreachable: {e}"))?;
            if variant == Variant::RedisCached {
                let cached = ReplayCache::new(store, ReplayCacheConfig::default());
                router.layer(IdempotencyLayer::new(cached).namespace("bench"))
            } else {
                router.layer(IdempotencyLayer::new(store).namespace("bench"))
            }
        }
        Variant::Postgres | Variant::PostgresCached => {
            let pool = pool.clone().expect("pool");
            let store = PostgresStore::builder()
                .schema(schema)
                .build(pool)
                .map_err(|e| e.to_string())?;
            store.migrate().await.map_err(|e| e.to_string())?;
            if variant == Variant::PostgresCached {
                let cached = ReplayCache::new(store, ReplayCacheConfig::default());
                router.layer(IdempotencyLayer::new(cached).namespace("bench"))
            } else {
                router.layer(IdempotencyLayer::new(store).namespace("bench"))
            }
        }
        Variant::PostgresTx | Variant::PostgresTxAsync => {
            let commit = if variant == Variant::PostgresTxAsync {
                ClaimCommit::Asynchronous
            } else {
                ClaimCommit::Durable
            };
            let pool = pool.clone().expect("pool");
            let store = PostgresStore::builder()
                .schema(schema)
                .claim_commit(commit)
                .build(pool)
                .map_err(|e| e.to_string())?;
            store.migrate().await.map_err(|e| e.to_string())?;
            Router::new()
                .route("/orders", post(create_order_tx))
                .with_state(TxApp {
                    store: store.clone(),
                    run: run.clone(),
                    delay,
                })
                .layer(IdempotencyLayer::new(store).namespace("bench"))
        }
        Variant::Peer(..) => return Err("a peer is not built in this process".to_owned()),
    };
    Ok((router, effects, leftovers))
}
