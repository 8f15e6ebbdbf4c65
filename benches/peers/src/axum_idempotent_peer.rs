//! `axum-idempotent` 0.6: its `IdempotentLayer` in direct-key mode, inside ruts'
//! `SessionLayer` and tower-cookies' `CookieManagerLayer`, as its README lays out.
//!
//! Responses are cached in the caller's session, so a client must first `GET /session`
//! and send the returned cookie with every `POST /orders`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum_idempotent::{IdempotentLayer, IdempotentOptions};
use fred::prelude::{ClientLike, Config};
use ruts::store::moka::MokaStoreBuilder;
use ruts::store::postgres::PostgresStoreBuilder;
use ruts::store::redis::RedisStore;
use ruts::store::{SessionStore, Ttl};
use ruts::{CookieOptions, Id, Session, SessionLayer};
use tower_cookies::CookieManagerLayer;

use crate::{App, KEY_HEADER, Peer, RETENTION, StartError, Store};

pub(crate) async fn build(store: Store, app: App) -> Result<Peer, StartError> {
    match store {
        Store::Memory => {
            let store = MokaStoreBuilder::new().max_capacity(1_000_000).build();
            let router = router(probe(store).await?, app);
            Ok(Peer {
                router,
                cleanup: None,
            })
        }
        Store::Redis => {
            let url = crate::redis_url();
            let config =
                Config::from_url(&url).map_err(|e| StartError::Failed(format!("{url}: {e}")))?;
            let client = fred::clients::Client::new(config, None, None, None);
            tokio::time::timeout(Duration::from_secs(5), client.init())
                .await
                .map_err(|_| StartError::Failed(format!("redis at {url}: connect timed out")))?
                .map_err(|e| StartError::Failed(format!("redis at {url}: {e}")))?;
            let version: String = client
                .info::<String>(Some(fred::types::InfoKind::Server))
                .await
                .ok()
                .and_then(|info| {
                    info.lines().find_map(|l| {
                        l.strip_prefix("redis_version:")
                            .map(|v| v.trim().to_owned())
                    })
                })
                .unwrap_or_else(|| "unknown".to_owned());
            let store = RedisStore::new(Arc::new(client))
                .await
                .map_err(|e| StartError::Failed(format!("ruts RedisStore: {e}")))?;
            let store = probe(store).await.map_err(|e| match e {
                StartError::Failed(msg) => StartError::Unsupported(format!(
                    "ruts redis-store needs Redis >= 7.4 (HEXPIRE); {url} runs {version}: {msg}"
                )),
                other => other,
            })?;
            // Session keys are random session ids, not prefixed: they expire with their TTL.
            Ok(Peer {
                router: router(store, app),
                cleanup: None,
            })
        }
        Store::Postgres => {
            let url = crate::database_url();
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
                .await
                .map_err(|e| StartError::Failed(format!("postgres at {url}: {e}")))?;
            // A schema of its own per run: ruts' index names are fixed, so a shared
            // schema would mix this run's indexes with other tables'.
            let schema = format!("peer_ruts_{}", crate::run_id());
            let store = PostgresStoreBuilder::new(pool.clone())
                .schema_name(schema.clone())
                .map_err(|e| StartError::Failed(e.to_string()))?
                .create_table(true)
                .build()
                .await
                .map_err(|e| StartError::Failed(format!("ruts PostgresStore: {e}")))?;
            let cleanup = Box::pin(async move {
                let drop = format!("drop schema if exists \"{schema}\" cascade");
                if let Err(e) = sqlx::query(&drop).execute(&pool).await {
                    eprintln!("peer-server: dropping schema {schema}: {e}");
                }
            });
            let store = match probe(store).await {
                Ok(store) => store,
                Err(e) => {
                    cleanup.await;
                    return Err(e);
                }
            };
            Ok(Peer {
                router: router(store, app),
                cleanup: Some(cleanup),
            })
        }
    }
}

/// Writes and deletes one session field, the operation the middleware depends on:
/// the middleware itself swallows store errors and runs the handler uncached.
async fn probe<S: SessionStore>(store: S) -> Result<Arc<S>, StartError> {
    let id = Id::default();
    let ttl = Ttl::new(5).expect("valid ttl");
    store
        .set(&id, "probe", &1u8, ttl, None)
        .await
        .map_err(|e| StartError::Failed(format!("session store write failed: {e}")))?;
    store
        .delete(&id)
        .await
        .map_err(|e| StartError::Failed(format!("session store delete failed: {e}")))?;
    Ok(Arc::new(store))
}

fn router<S: SessionStore>(store: Arc<S>, app: App) -> Router {
    let options = IdempotentOptions::default()
        .use_idempotency_key_header(Some(KEY_HEADER), true)
        .expire_after(RETENTION.as_secs() as i64);
    let cookie = CookieOptions::build()
        .name("session")
        .http_only(true)
        .secure(false)
        .path("/")
        .max_age(RETENTION.as_secs());
    Router::new()
        .route("/orders", post(create_order))
        .layer(IdempotentLayer::<S>::new(options))
        .route("/session", get(open_session::<S>))
        .layer(SessionLayer::new(store).with_cookie_options(cookie))
        .layer(CookieManagerLayer::new())
        .with_state(app)
}

async fn create_order(State(app): State<App>, headers: HeaderMap) -> Response {
    // The layer already refused a request without a usable key.
    let key = headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    app.create_order(key).await
}

/// Establishes a session: the middleware caches only for a request that has one.
async fn open_session<S: SessionStore>(
    session: Session<S>,
) -> Result<StatusCode, (StatusCode, String)> {
    session
        .set(
            "client",
            &true,
            Ttl::new(RETENTION.as_secs() as i64).expect("valid ttl"),
            None,
        )
        .await
        .map_err(|e| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("session store: {e}"),
            )
        })?;
    Ok(StatusCode::NO_CONTENT)
}
