//! The simulated accounting system that postings go to, reached over HTTP
//! (its own server: `cargo run -p example-staging --bin staging-destination`).
//!
//! It deduplicates by the `Idempotency-Key` of each call the way a real
//! accounting API does: a second posting with a key it has booked answers
//! the same booking (200, `Idempotent-Replayed: true`) and books nothing.
//! Failures are injected with `POST /faults`: fail the next N calls (503,
//! nothing booked), time out the next N (no answer, nothing booked), or
//! drop the next N responses (booked, then no answer).
//!
//! | method | path | |
//! |---|---|---|
//! | `POST` | `/postings` | book `{export_id, external_reference, amount}` once per key |
//! | `POST` | `/postings/{booking_id}/reversal` | reverse a booking once per key |
//! | `GET` | `/postings` | every booking (what the tests count) |
//! | `POST` | `/faults` | `{fail_next, timeout_next, drop_next, latency_ms}` |
//! | `GET` | `/healthz` | `ok` |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How long a timed-out or dropped call hangs before the server gives up
/// on it (the client has long stopped waiting).
const HANG: Duration = Duration::from_secs(60);

/// One booking.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Booking {
    /// `BK-<n>`.
    pub booking_id: String,
    /// The idempotency key it was booked under.
    pub idempotency_key: String,
    /// The staged export it books.
    pub export_id: String,
    /// The caller's reference.
    pub external_reference: String,
    /// The amount, a decimal string.
    pub amount: String,
    /// The reversal, once reversed.
    pub reversal_id: Option<String>,
}

/// Injected failures, each counted down per call.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Faults {
    /// Answer 503 to the next N calls, booking nothing.
    pub fail_next: u32,
    /// Never answer the next N calls, booking nothing.
    pub timeout_next: u32,
    /// Book the next N calls, then never answer them.
    pub drop_next: u32,
    /// Latency added to every call, in milliseconds.
    pub latency_ms: u64,
}

#[derive(Debug, Default)]
struct Books {
    bookings: Vec<Booking>,
    by_key: HashMap<String, usize>,
    reversals: HashMap<String, usize>,
    faults: Faults,
    calls: u64,
}

/// The simulated system: its state and router.
#[derive(Debug, Clone, Default)]
pub struct Destination {
    books: Arc<Mutex<Books>>,
}

/// What a call does after the fault check.
enum Fault {
    None,
    Fail,
    Timeout,
    Drop,
}

impl Destination {
    /// An empty ledger with no faults and `latency` per call.
    pub fn new(latency: Duration) -> Self {
        let d = Self::default();
        d.lock().faults.latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every booking so far.
    pub fn bookings(&self) -> Vec<Booking> {
        self.lock().bookings.clone()
    }

    /// Calls received so far (postings and reversals).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The HTTP server.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/postings", post(book).get(list))
            .route("/postings/{booking_id}/reversal", post(reverse))
            .route("/faults", post(set_faults))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.clone())
    }

    /// Counts the call and takes the next injected fault.
    async fn admit(&self) -> Fault {
        let (fault, latency) = {
            let mut b = self.lock();
            b.calls += 1;
            let f = &mut b.faults;
            let fault = if f.fail_next > 0 {
                f.fail_next -= 1;
                Fault::Fail
            } else if f.timeout_next > 0 {
                f.timeout_next -= 1;
                Fault::Timeout
            } else if f.drop_next > 0 {
                f.drop_next -= 1;
                Fault::Drop
            } else {
                Fault::None
            };
            (fault, Duration::from_millis(f.latency_ms))
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        fault
    }
}

fn key_of(headers: &HeaderMap) -> Option<String> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if (1..=255).contains(&k.len()) => Some(k.to_owned()),
        _ => None,
    }
}

fn missing_key() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error_code": "MISSING_KEY", "message": "Idempotency-Key is required"})),
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error_code": "DEST_UNAVAILABLE", "message": "injected failure"})),
    )
        .into_response()
}

/// The fields of a posting.
#[derive(Debug, Deserialize)]
struct PostingBody {
    export_id: String,
    external_reference: String,
    amount: String,
}

async fn book(State(d): State<Destination>, headers: HeaderMap, body: Json<Value>) -> Response {
    let Some(key) = key_of(&headers) else {
        return missing_key();
    };
    let Ok(posting) = serde_json::from_value::<PostingBody>(body.0) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": "INVALID_POSTING", "message": "export_id, external_reference and amount are required"})),
        )
            .into_response();
    };
    let fault = d.admit().await;
    match fault {
        Fault::Fail => return unavailable(),
        Fault::Timeout => {
            tokio::time::sleep(HANG).await;
            return unavailable();
        }
        Fault::None | Fault::Drop => {}
    }
    let (booking, replayed) = {
        let mut b = d.lock();
        if let Some(&i) = b.by_key.get(&key) {
            (b.bookings[i].clone(), true)
        } else {
            let booking = Booking {
                booking_id: format!("BK-{}", b.bookings.len() + 1),
                idempotency_key: key.clone(),
                export_id: posting.export_id,
                external_reference: posting.external_reference,
                amount: posting.amount,
                reversal_id: None,
            };
            b.bookings.push(booking.clone());
            let i = b.bookings.len() - 1;
            b.by_key.insert(key, i);
            (booking, false)
        }
    };
    if matches!(fault, Fault::Drop) {
        // Booked; the answer never leaves.
        tokio::time::sleep(HANG).await;
    }
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut res = (status, Json(json!(booking))).into_response();
    if replayed {
        res.headers_mut().insert(
            "idempotent-replayed",
            http::HeaderValue::from_static("true"),
        );
    }
    res
}

async fn reverse(
    State(d): State<Destination>,
    Path(booking_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(key) = key_of(&headers) else {
        return missing_key();
    };
    match d.admit().await {
        Fault::Fail => return unavailable(),
        Fault::Timeout => {
            tokio::time::sleep(HANG).await;
            return unavailable();
        }
        Fault::None | Fault::Drop => {}
    }
    let mut b = d.lock();
    if let Some(&i) = b.reversals.get(&key) {
        return (StatusCode::OK, Json(json!(b.bookings[i]))).into_response();
    }
    let Some(i) = b.bookings.iter().position(|x| x.booking_id == booking_id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": "NO_BOOKING", "message": "no such booking"})),
        )
            .into_response();
    };
    if b.bookings[i].reversal_id.is_some() {
        return (
            StatusCode::CONFLICT,
            Json(
                json!({"error_code": "ALREADY_REVERSED", "message": "reversed under another key"}),
            ),
        )
            .into_response();
    }
    let reversal = format!("RV-{}", b.reversals.len() + 1);
    b.bookings[i].reversal_id = Some(reversal);
    b.reversals.insert(key, i);
    (StatusCode::CREATED, Json(json!(b.bookings[i]))).into_response()
}

async fn list(State(d): State<Destination>) -> Json<Value> {
    Json(json!({"bookings": d.bookings(), "calls": d.calls()}))
}

async fn set_faults(State(d): State<Destination>, Json(f): Json<Faults>) -> Json<Faults> {
    d.set_faults(f);
    Json(f)
}
