//! The simulated SMS/e-mail gateway: its own small HTTP server that
//! delivers each message once per `Idempotency-Key`, with failure injection.
//!
//! | route | what |
//! |---|---|
//! | `POST /messages` | `{"channel", "to", "content"}` + `Idempotency-Key`: 202 delivered, 200 the replay of a delivered key, 503 an injected failure |
//! | `GET /messages` | every delivery and every attempt per key |
//! | `POST /faults` | `{"channel": "SMS", "failNext": 3}`: the next three sends on the channel fail |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

#[derive(Default, Debug)]
struct Inner {
    delivered: Vec<Value>,
    keys: HashMap<String, usize>,
    attempts: HashMap<String, u32>,
    fail_next: HashMap<String, u32>,
}

/// The gateway's state (shared by its handlers).
#[derive(Clone, Default, Debug)]
pub struct Gateway {
    inner: Arc<Mutex<Inner>>,
}

impl Gateway {
    /// The gateway's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/messages", post(send).get(list))
            .route("/faults", post(faults))
            .with_state(self.clone())
    }

    /// Makes the next `n` sends on `channel` fail with 503.
    pub fn fail_next(&self, channel: &str, n: u32) {
        if let Ok(mut g) = self.inner.lock() {
            g.fail_next.insert(channel.to_owned(), n);
        }
    }

    /// Deliveries so far (each key at most once).
    pub fn delivered(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|g| g.delivered.clone())
            .unwrap_or_default()
    }

    /// Attempts per idempotency key (failed ones and replays included).
    pub fn attempts(&self) -> HashMap<String, u32> {
        self.inner
            .lock()
            .map(|g| g.attempts.clone())
            .unwrap_or_default()
    }
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response {
    let mut res = (
        status,
        json!({"type": format!("https://idempotency.rs/problems/gateway/{slug}"),
               "title": slug, "status": status.as_u16(), "detail": detail})
        .to_string(),
    )
        .into_response();
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    res
}

async fn send(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "key-missing",
            "Idempotency-Key is required",
        );
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "the body is not JSON",
        );
    };
    let channel = msg["channel"].as_str().unwrap_or_default().to_owned();
    if !["SMS", "EMAIL"].contains(&channel.as_str()) || !msg["to"].is_string() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "channel must be SMS or EMAIL and to a string",
        );
    }
    let Ok(mut g) = gw.inner.lock() else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "state lock");
    };
    *g.attempts.entry(key.to_owned()).or_default() += 1;
    if let Some(&i) = g.keys.get(key) {
        let replay = g.delivered[i].clone();
        return (StatusCode::OK, axum::Json(replay)).into_response();
    }
    if let Some(n) = g.fail_next.get_mut(&channel)
        && *n > 0
    {
        *n -= 1;
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected-failure",
            "the gateway is failing (injected)",
        );
    }
    let delivery =
        json!({"key": key, "channel": channel, "to": msg["to"], "content": msg["content"]});
    let index = g.delivered.len();
    g.delivered.push(delivery.clone());
    g.keys.insert(key.to_owned(), index);
    (StatusCode::ACCEPTED, axum::Json(delivery)).into_response()
}

async fn list(State(gw): State<Gateway>) -> Response {
    axum::Json(json!({"delivered": gw.delivered(), "attempts": gw.attempts()})).into_response()
}

async fn faults(State(gw): State<Gateway>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "the body is not JSON",
        );
    };
    let (Some(channel), Some(n)) = (v["channel"].as_str(), v["failNext"].as_u64()) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "send {\"channel\": \"SMS\" | \"EMAIL\", \"failNext\": n}",
        );
    };
    gw.fail_next(channel, u32::try_from(n).unwrap_or(u32::MAX));
    StatusCode::NO_CONTENT.into_response()
}
