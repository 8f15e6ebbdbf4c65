//! `idempotent` 0.3.0: it has no HTTP middleware, so the handler drives its store API
//! directly (`try_insert` → run → `complete`), the way its README shows:
//! claim the key with a fingerprint of method, path and body, run the side effect once,
//! cache status and body, and replay them; in flight → 409, other request → 422.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use idempotent::entry::ExistingEntry;
use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
use idempotent::store::memory::MemoryStore;
use idempotent::store::valkey::ValkeyStore;
use idempotent::store::{IdempotencyStore, InsertResult};
use idempotent::{CachedResponse, IdempotencyEntry, IdempotencyKey, Metadata};

use crate::{App, KEY_HEADER, Peer, RETENTION, StartError, Store};

/// Set on a replayed response by this adapter: the crate itself has no replay marker.
const REPLAY_HEADER: &str = "idempotency-replayed";

struct Shared<S> {
    store: S,
    app: App,
}

pub(crate) async fn build(store: Store, app: App) -> Result<Peer, StartError> {
    match store {
        Store::Memory => {
            let store = MemoryStore::new(1024, Duration::from_secs(60));
            Ok(Peer { router: router(store, app), cleanup: None })
        }
        Store::Redis => {
            let url = crate::redis_url();
            let client =
                redis::Client::open(url.as_str()).map_err(|e| StartError::Failed(format!("{url}: {e}")))?;
            let prefix = format!("peer-idempotent-{}", crate::run_id());
            let store = tokio::time::timeout(
                Duration::from_secs(5),
                ValkeyStore::with_prefix(client.clone(), Some(&prefix)),
            )
            .await
            .map_err(|_| StartError::Failed(format!("redis at {url}: connect timed out")))?
            .map_err(|e| StartError::Failed(format!("redis at {url}: {}", chain(&e))))?;
            let cleanup = Box::pin(delete_prefixed(client, format!("{prefix}-*")));
            Ok(Peer { router: router(store, app), cleanup: Some(cleanup) })
        }
        Store::Postgres => Err(StartError::Unsupported(
            "idempotent 0.3.0 ships only a memory store and a Valkey/Redis store; it has no PostgreSQL store".to_owned(),
        )),
    }
}

fn router<S>(store: S, app: App) -> Router
where
    S: IdempotencyStore,
{
    Router::new()
        .route("/orders", post(create_order::<S>))
        .with_state(Arc::new(Shared { store, app }))
}

async fn create_order<S: IdempotencyStore>(
    State(shared): State<Arc<Shared<S>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(raw_key) = headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing or non-ASCII Idempotency-Key header",
        )
            .into_response();
    };
    let key = match IdempotencyKey::new(raw_key) {
        Ok(key) => key,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let fingerprint =
        DefaultFingerprintStrategy.compute(&format!("{method} {}", uri.path()), &body);
    let entry = IdempotencyEntry::new(fingerprint, RETENTION);

    let claim = match shared.store.try_insert(&key, entry.clone()).await {
        Ok(claim) => claim,
        Err(e) => return unavailable(&e),
    };
    match claim {
        InsertResult::Claimed { fencing_token } => {
            let response = shared.app.create_order(raw_key).await;
            let (parts, body) = response.into_parts();
            let body = to_bytes(body, usize::MAX).await.expect("in-memory body");
            let cached = CachedResponse {
                status_code: parts.status.as_u16(),
                // `Metadata` has no public constructor besides `Default` in 0.3.0:
                // response headers cannot be cached, only status and body.
                metadata: Metadata::default(),
                body: body.clone(),
            };
            if let Err(e) = shared
                .store
                .complete(&key, entry.complete(cached), fencing_token)
                .await
            {
                eprintln!("peer-server: completing {raw_key}: {}", chain(&e));
            }
            Response::from_parts(parts, Body::from(body))
        }
        InsertResult::Exists(existing) => {
            let matches = match &existing {
                ExistingEntry::Processing(e) => e.fingerprint_matches(fingerprint),
                ExistingEntry::Completed(e) => e.fingerprint_matches(fingerprint),
            };
            if !matches {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency-Key reused with a different request",
                )
                    .into_response();
            }
            match existing {
                ExistingEntry::Processing(_) => (
                    StatusCode::CONFLICT,
                    "a request with this Idempotency-Key is in flight",
                )
                    .into_response(),
                ExistingEntry::Completed(done) => {
                    let cached = done.into_response();
                    let mut response = Response::new(Body::from(cached.body));
                    *response.status_mut() = StatusCode::from_u16(cached.status_code)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    response
                        .headers_mut()
                        .insert(REPLAY_HEADER, HeaderValue::from_static("true"));
                    response
                }
            }
        }
    }
}

fn unavailable(e: &(dyn std::error::Error + 'static)) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("idempotency store: {}", chain(e)),
    )
        .into_response()
}

/// An error with its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Removes this run's keys (SCAN + DEL on its own prefix only).
async fn delete_prefixed(client: redis::Client, pattern: String) {
    let result: redis::RedisResult<()> = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = {
            let mut iter =
                redis::AsyncCommands::scan_match::<_, String>(&mut conn, &pattern).await?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        for batch in keys.chunks(500) {
            redis::cmd("DEL").arg(batch).exec_async(&mut conn).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("peer-server: removing keys {pattern}: {e}");
    }
}
