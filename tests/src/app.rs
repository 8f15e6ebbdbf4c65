//! A small axum service for the HTTP behaviour suite: counts its executions
//! and the request bytes it was handed, and does what each request asks
//! (delay, status, `no-store`, a large body).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::routing::post;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use idempotency_core::IdempotencyStore;
use idempotency_tower::IdempotencyLayer;
use pin_project_lite::pin_project;
use tower::ServiceExt;

/// Counters shared by every clone of one app.
#[derive(Debug, Default)]
struct Counters {
    started: AtomicUsize,
    finished: AtomicUsize,
    gets: AtomicUsize,
    body_bytes: AtomicUsize,
}

/// One instance of the test service.
///
/// Routes: `POST /orders`, `PATCH /orders`, `POST /other`, `GET /orders`.
/// The POST/PATCH handler reads a JSON body whose optional fields steer it:
///
/// | field | effect |
/// |---|---|
/// | `delay_ms` | sleep that long before answering |
/// | `status` | answer this status (default 201) |
/// | `no_store` | add `Cache-Control: no-store` |
/// | `release` | attach the `ReleaseKey` response extension |
/// | `big` | answer a body of this many bytes instead of JSON |
///
/// It answers `Location: /orders/{uuid}`, `Set-Cookie`, `ETag` and a JSON body
/// holding a fresh UUID and the execution number, so two executions never
/// answer the same bytes. The scope is the `x-user` header.
#[derive(Clone)]
pub struct TestApp {
    router: Router,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("counters", &self.counters)
            .finish()
    }
}

/// What the suite reads back from a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Answer {
    /// Whether `Idempotent-Replayed: true` is set.
    pub fn is_replay(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The problem `type`, if the body is a problem.
    pub fn problem_type(&self) -> Option<String> {
        if self.headers.get(header::CONTENT_TYPE)? != "application/problem+json" {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(v["type"].as_str()?.to_owned())
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// If the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl TestApp {
    /// Builds the app over `store`, letting `configure` adjust the layer
    /// (the scope is already set to the `x-user` header; requests without
    /// one are unscoped).
    pub fn new<S>(
        store: S,
        configure: impl FnOnce(IdempotencyLayer<S>) -> IdempotencyLayer<S>,
    ) -> Self
    where
        S: IdempotencyStore + Clone + Send + Sync + 'static,
    {
        let counters = Arc::new(Counters::default());
        // Requests without `x-user` share the unscoped space (by choice: a
        // scope that finds none otherwise fails closed with 500 scope-missing).
        let layer = configure(
            IdempotencyLayer::new(store)
                .namespace("http-suite")
                .scope(|parts: &http::request::Parts| {
                    parts
                        .headers
                        .get("x-user")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .allow_unscoped(),
        );
        let counting = counters.clone();
        let router = Router::new()
            .route("/orders", post(handler).patch(handler).get(list))
            .route("/other", post(handler))
            .layer(layer)
            // Outside the idempotency layer: counts what the layer pulls from the client.
            .layer(tower::util::MapRequestLayer::new(move |req: Request| {
                let counter = counting.clone();
                req.map(|b| {
                    Body::new(Counting {
                        inner: b,
                        counters: counter,
                    })
                })
            }))
            .with_state(counters.clone());
        Self { router, counters }
    }

    /// How many times the handler started.
    pub fn executions(&self) -> usize {
        self.counters.started.load(Ordering::SeqCst)
    }

    /// How many times the handler ran to its end.
    pub fn completions(&self) -> usize {
        self.counters.finished.load(Ordering::SeqCst)
    }

    /// How many times `GET /orders` ran.
    pub fn gets(&self) -> usize {
        self.counters.gets.load(Ordering::SeqCst)
    }

    /// Request body bytes handed to the service so far (all requests).
    pub fn body_bytes_read(&self) -> usize {
        self.counters.body_bytes.load(Ordering::SeqCst)
    }

    /// Sends one request through the router (no network).
    ///
    /// # Panics
    ///
    /// If the router fails (it never does: errors are responses).
    pub async fn send(&self, req: http::Request<Body>) -> Answer {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Serves the app on `127.0.0.1:0`; returns the address. The server runs
    /// until the runtime stops.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let router = self.router.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        addr
    }
}

/// A request to the test app.
#[derive(Debug, Clone)]
pub struct Req {
    method: http::Method,
    path: String,
    key: Option<Vec<u8>>,
    user: Option<String>,
    body: serde_json::Value,
}

impl Req {
    /// `POST /orders` with body `{"sku": "book"}`.
    pub fn post() -> Self {
        Self {
            method: http::Method::POST,
            path: "/orders".to_owned(),
            key: None,
            user: None,
            body: serde_json::json!({"sku": "book"}),
        }
    }

    /// Sets the method.
    #[must_use]
    pub fn method(mut self, method: http::Method) -> Self {
        self.method = method;
        self
    }

    /// Sets the path.
    #[must_use]
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// Sets the raw `Idempotency-Key` header value.
    #[must_use]
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// Sets the `x-user` scope header.
    #[must_use]
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Sets a body field.
    #[must_use]
    pub fn field(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.body[name] = value.into();
        self
    }

    /// The JSON body.
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }

    /// Builds the request.
    ///
    /// # Panics
    ///
    /// If the key is not a valid header value.
    pub fn build(&self) -> http::Request<Body> {
        let mut b = http::Request::builder()
            .method(self.method.clone())
            .uri(&self.path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = &self.key {
            b = b.header(
                "idempotency-key",
                HeaderValue::from_bytes(k).expect("header value"),
            );
        }
        if let Some(u) = &self.user {
            b = b.header("x-user", u.as_str());
        }
        b.body(Body::from(self.body_bytes())).expect("request")
    }

    /// The request as HTTP/1.1 bytes with a `Content-Length`.
    pub fn to_http1(&self) -> Vec<u8> {
        let body = self.body_bytes();
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.method,
            self.path,
            body.len()
        )
        .into_bytes();
        if let Some(k) = &self.key {
            out.extend_from_slice(b"idempotency-key: ");
            out.extend_from_slice(k);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(u) = &self.user {
            out.extend_from_slice(format!("x-user: {u}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

/// A fresh random key.
pub fn random_key() -> String {
    format!("key-{}", uuid::Uuid::new_v4())
}

async fn list(State(c): State<Arc<Counters>>) -> Response<Body> {
    c.gets.fetch_add(1, Ordering::SeqCst);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("[]"))
        .expect("response")
}

async fn handler(State(c): State<Arc<Counters>>, body: Bytes) -> Response<Body> {
    let n = c.started.fetch_add(1, Ordering::SeqCst) + 1;
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(ms) = req["delay_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = req["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::CREATED);
    let id = uuid::Uuid::new_v4();
    let mut res = Response::builder()
        .status(status)
        .header(header::LOCATION, format!("/orders/{id}"))
        .header(header::SET_COOKIE, format!("session={id}; HttpOnly"))
        .header(header::ETAG, format!("\"{n}\""))
        .header("x-execution", n.to_string());
    if req["no_store"].as_bool() == Some(true) {
        res = res.header(header::CACHE_CONTROL, "no-store");
    }
    if req["release"].as_bool() == Some(true) {
        res = res.extension(idempotency_tower::ReleaseKey);
    }
    let body = match req["big"].as_u64() {
        Some(len) => {
            res = res.header(header::CONTENT_TYPE, "application/octet-stream");
            Body::from(vec![b'x'; usize::try_from(len).unwrap_or(0)])
        }
        None => {
            res = res.header(header::CONTENT_TYPE, "application/json");
            let v = serde_json::json!({"id": id.to_string(), "execution": n, "request": req});
            Body::from(serde_json::to_vec(&v).unwrap_or_default())
        }
    };
    c.finished.fetch_add(1, Ordering::SeqCst);
    res.body(body).expect("response")
}

pin_project! {
    struct Counting<B> {
        #[pin]
        inner: B,
        counters: Arc<Counters>,
    }
}

impl<B> http_body::Body for Counting<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let out = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &out
            && let Some(data) = frame.data_ref()
        {
            this.counters
                .body_bytes
                .fetch_add(data.len(), Ordering::SeqCst);
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
