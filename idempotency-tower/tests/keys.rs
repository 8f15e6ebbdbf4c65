//! One request, one key: every spelling of one resource is one record (or
//! refused), an ambiguous body never borrows another document's record,
//! the fingerprint counts the query only where its options say so, and a
//! request without the scope it was configured to have never runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::{FingerprintMode, MemoryStore};
use idempotency_tower::{
    HeaderKey, IdempotencyLayer, JsonFields, KeyInput, KeyMaterial, KeyRejection, ParamType,
    PathParams,
};
use tower::ServiceExt;

const PROBLEMS: &str = "https://idempotency.rs/problems/";

#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts its runs and answers 201 with the run number and the body.
async fn create(State(runs): State<Runs>, body: Bytes) -> Response {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        format!("run {n}: {}", String::from_utf8_lossy(&body)),
    )
        .into_response()
}

fn app(layer: IdempotencyLayer<MemoryStore>, runs: Runs) -> Router {
    Router::new()
        .route("/orders", post(create))
        .layer(layer)
        .with_state(runs)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn problem_type(&self) -> String {
        assert_eq!(
            self.headers["content-type"],
            "application/problem+json",
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    fn is_replay(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn post_json(uri: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(uri).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

// ---- 2. duplicate JSON member names ----------------------------------------

/// `{"sku":"zzz","sku":"s","quantity":1}` used to fingerprint as
/// `{"sku":"s","quantity":1}` (last wins) and replay its response.
#[tokio::test]
async fn a_body_with_a_repeated_member_is_refused_not_replayed() {
    let runs = Runs::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), runs.clone());
    let first = send(
        &app,
        post_json("/orders", Some("k"), r#"{"sku":"s","quantity":1}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for body in [
        r#"{"sku":"zzz","sku":"s","quantity":1}"#,
        r#"{"sku":"zzz","\u0073ku":"s","quantity":1}"#,
        r#"{"quantity":1,"sku":"s","meta":{"a":1,"a":1}}"#,
        r#"{"quantity":1,"sku":"s","lines":[{"n":1},{"n":1,"n":2}]}"#,
    ] {
        let r = send(&app, post_json("/orders", Some("k"), body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!r.is_replay(), "{body}");
        assert_eq!(r.problem_type(), format!("{PROBLEMS}invalid-body"));
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{}",
            r.json()
        );
        // With a fresh key too: refused, never run.
        let r = send(&app, post_json("/orders", Some("fresh"), body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let detail = send(
        &app,
        post_json(
            "/orders",
            Some("k2"),
            r#"{"lines":[{"n":1},{"n":1,"n":2}]}"#,
        ),
    )
    .await
    .json();
    assert!(
        detail["detail"].as_str().unwrap().contains("/lines/1/n"),
        "{detail}"
    );
    assert_eq!(runs.get(), 1);
}

/// A key derived from JSON fields: a repeated member would have derived the
/// key of the last value.
#[tokio::test]
async fn a_derived_key_from_a_body_with_a_repeated_member_is_refused() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(JsonFields::new(["/sku"]))
        .fingerprint(FingerprintMode::None);
    let app = app(layer, runs.clone());
    let first = send(&app, post_json("/orders", None, r#"{"sku":"s"}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let r = send(
        &app,
        post_json("/orders", None, r#"{"sku":"zzz","sku":"s"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.is_replay());
    assert_eq!(r.problem_type(), format!("{PROBLEMS}invalid-body"));
    assert_eq!(runs.get(), 1);
}

// ---- 1. path parameters: decoded, typed, one record per resource ----------

const THING: &str = "/things/{v}/run";

fn ran(runs: &Runs, v: String) -> Response {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("{v} (run {n})")).into_response()
}

async fn run_u64(State(runs): State<Runs>, Path(v): Path<u64>) -> Response {
    ran(&runs, v.to_string())
}

async fn run_i64(State(runs): State<Runs>, Path(v): Path<i64>) -> Response {
    ran(&runs, v.to_string())
}

async fn run_uuid(State(runs): State<Runs>, Path(v): Path<uuid::Uuid>) -> Response {
    ran(&runs, v.to_string())
}

async fn run_str(State(runs): State<Runs>, Path(v): Path<String>) -> Response {
    ran(&runs, v)
}

/// The same route with and without the layer: what axum hands the handler
/// for a spelling, and what the layer makes of it.
fn thing_apps(ty: ParamType) -> (Router, Router, Runs) {
    let handler = match ty {
        ParamType::U64 => post(run_u64),
        ParamType::I64 => post(run_i64),
        ParamType::Uuid => post(run_uuid),
        _ => post(run_str),
    };
    let runs = Runs::default();
    let bare = Router::new()
        .route(THING, handler.clone())
        .with_state(Runs::default());
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(PathParams::new(["v"]).typed("v", ty))
        .fingerprint(FingerprintMode::None);
    let guarded = Router::new()
        .route(THING, handler)
        .route_layer(layer)
        .with_state(runs.clone());
    (bare, guarded, runs)
}

fn post_to(v: &str) -> Request<Body> {
    Request::post(format!("/things/{v}/run"))
        .body(Body::empty())
        .unwrap()
}

/// Every alias reaches axum's handler as the same value, and the layer runs
/// it once: the first executes, the others replay its answer. Every refused
/// spelling is refused by axum's extractor and by the layer (400
/// `key-invalid`, nothing run).
async fn check_aliases(ty: ParamType, aliases: &[&str], refused: &[&str]) {
    let (bare, guarded, runs) = thing_apps(ty);
    let value = |r: &Reply| {
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.split(" (run").next().unwrap().to_owned()
    };
    let expected = value(&send(&bare, post_to(aliases[0])).await);
    for alias in aliases {
        let r = send(&bare, post_to(alias)).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{ty:?} {alias}: axum accepts it"
        );
        assert_eq!(
            value(&r),
            expected,
            "{ty:?} {alias}: axum reads the same value"
        );
    }
    let first = send(&guarded, post_to(aliases[0])).await;
    assert_eq!(first.status, StatusCode::CREATED, "{ty:?}");
    assert!(!first.is_replay());
    for alias in &aliases[1..] {
        let r = send(&guarded, post_to(alias)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{ty:?} {alias}");
        assert!(
            r.is_replay(),
            "{ty:?} {alias}: one record for every spelling"
        );
        assert_eq!(r.body, first.body, "{ty:?} {alias}");
    }
    for spelling in refused {
        let r = send(&bare, post_to(spelling)).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{ty:?} {spelling}: axum refuses it"
        );
        let r = send(&guarded, post_to(spelling)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ty:?} {spelling}");
        assert_eq!(r.problem_type(), format!("{PROBLEMS}key-invalid"));
    }
    assert_eq!(runs.get(), 1, "{ty:?}: one execution");
}

#[tokio::test]
async fn integer_path_params_are_keyed_on_their_canonical_decimal() {
    check_aliases(
        ParamType::U64,
        &["1", "01", "+1", "0001", "%31", "%2B1", "+%301"],
        &[
            "-1",
            "1.0",
            "%201",
            "0x1",
            "1a",
            "18446744073709551616",
            "%FF",
        ],
    )
    .await;
    check_aliases(
        ParamType::I64,
        &["-1", "-01", "%2D1", "-0001"],
        &["--1", "1e3", "9223372036854775808"],
    )
    .await;
    check_aliases(ParamType::I64, &["0", "-0", "+0", "000"], &[]).await;
}

#[tokio::test]
async fn uuid_path_params_are_keyed_on_the_lowercase_hyphenated_form() {
    check_aliases(
        ParamType::Uuid,
        &[
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "%7B67e55044-10b1-426f-9247-bb680e5fe0c8%7D",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "%36%37e55044-10b1-426f-9247-bb680e5fe0c8",
        ],
        &["not-a-uuid", "67e55044-10b1-426f-9247-bb680e5fe0c"],
    )
    .await;
}

#[tokio::test]
async fn text_path_params_are_percent_decoded_and_case_sensitive() {
    check_aliases(
        ParamType::Str,
        &["E-1", "%45-1", "%45%2D1", "E%2d1"],
        &["%FF"],
    )
    .await;
    let (_, guarded, runs) = thing_apps(ParamType::Str);
    assert_eq!(send(&guarded, post_to("E-1")).await.status, 201);
    let other = send(&guarded, post_to("e-1")).await;
    assert_eq!(other.status, 201);
    assert!(!other.is_replay(), "case matters: another resource");
    // axum would hand `E%zz` to the handler as text; the layer refuses it.
    let bad = send(&guarded, post_to("E%zz")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.problem_type(), format!("{PROBLEMS}key-invalid"));
    assert!(
        bad.json()["detail"].as_str().unwrap().contains("`v`"),
        "{}",
        bad.json()
    );
    assert_eq!(runs.get(), 2);
}

/// The issue, with nothing but `PathParams::new`: the raw segment was
/// hashed, so `%45-1` and `E-1` (one estimate to axum's `Path`) were two
/// records and two executions.
#[tokio::test]
async fn percent_encoded_spellings_of_a_path_param_are_one_record() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(PathParams::new(["estimate_id", "version"]))
        .fingerprint(FingerprintMode::None);
    let app = Router::new()
        .route(
            "/estimates/{estimate_id}/snapshots/{version}/promote",
            post(create),
        )
        .layer(layer)
        .with_state(runs.clone());
    let mut replies = Vec::new();
    for path in [
        "/estimates/E-1/snapshots/1/promote",
        "/estimates/%45-1/snapshots/1/promote",
        "/estimates/%45%2D1/snapshots/%31/promote",
    ] {
        replies.push(send(&app, post_json(path, None, "")).await);
    }
    assert_eq!(runs.get(), 1, "one execution");
    assert!(
        replies[1..]
            .iter()
            .all(|r| r.is_replay() && r.body == replies[0].body)
    );
}

/// The fingerprint sees the path in the key's normal form: a duplicate
/// under another spelling is a replay, not a 422, even when the body counts.
/// A path parameter that is not part of the key still counts, decoded.
#[tokio::test]
async fn aliases_share_the_fingerprint_and_other_params_still_count() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(PathParams::new(["estimate", "version"]).typed("version", ParamType::U64));
    let app = Router::new()
        .route(
            "/estimates/{estimate}/snapshots/{version}/lines/{line}",
            post(create),
        )
        .layer(layer)
        .with_state(runs.clone());
    let first = send(
        &app,
        post_json("/estimates/E-1/snapshots/1/lines/A", None, "{}"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for alias in [
        "/estimates/%45-1/snapshots/01/lines/A",
        "/estimates/E-1/snapshots/+1/lines/%41",
    ] {
        let r = send(&app, post_json(alias, None, "{ }")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{alias}");
        assert!(r.is_replay(), "{alias}");
    }
    let other_line = send(
        &app,
        post_json("/estimates/E-1/snapshots/1/lines/B", None, "{}"),
    )
    .await;
    assert_eq!(other_line.status, StatusCode::UNPROCESSABLE_ENTITY);
    let other_body = send(
        &app,
        post_json("/estimates/E-1/snapshots/01/lines/A", None, r#"{"x":1}"#),
    )
    .await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.get(), 1);
}

// ---- 3. the query, and answers that name the key source ---------------------

const PROMOTE: &str = "/estimates/{estimate_id}/snapshots/{version}/promote";

/// Answers `x-status` (default 201) after `x-delay-ms`, counting its runs.
async fn flexible(State(runs): State<Runs>, headers: HeaderMap, body: Bytes) -> Response {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    let header = |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.parse().ok() };
    if let Some(ms) = header("x-delay-ms") {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let status = header("x-status")
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .unwrap_or(StatusCode::CREATED);
    (
        status,
        format!("run {n}: {}", String::from_utf8_lossy(&body)),
    )
        .into_response()
}

fn flexible_app(layer: IdempotencyLayer<MemoryStore>, runs: Runs) -> Router {
    Router::new()
        .route("/orders", post(flexible))
        .route(PROMOTE, post(flexible))
        .layer(layer)
        .with_state(runs)
}

fn promotion_layer() -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(MemoryStore::new())
        .key_source(PathParams::new(["estimate_id", "version"]).typed("version", ParamType::U64))
        .fingerprint(FingerprintMode::None)
}

/// The issue: with `FingerprintMode::None` ("the path is the whole request")
/// `POST .../promote?utm=1` was refused 422, in a text naming an
/// `Idempotency-Key` the client never sent.
#[tokio::test]
async fn the_query_does_not_count_where_the_path_is_the_whole_request() {
    let runs = Runs::default();
    let app = flexible_app(promotion_layer(), runs.clone());
    let first = send(
        &app,
        post_json("/estimates/E-1/snapshots/1/promote", None, ""),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for uri in [
        "/estimates/E-1/snapshots/1/promote?utm=1",
        "/estimates/E-1/snapshots/1/promote?utm=2&ref=mail",
        "/estimates/%45-1/snapshots/01/promote?utm=1",
    ] {
        let r = send(&app, post_json(uri, None, "")).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{uri}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.is_replay(), "{uri}");
        assert_eq!(r.body, first.body);
    }
    // A client key with FingerprintMode::None: the same.
    let runs_h = Runs::default();
    let app = flexible_app(
        IdempotencyLayer::new(MemoryStore::new()).fingerprint(FingerprintMode::None),
        runs_h.clone(),
    );
    assert_eq!(
        send(&app, post_json("/orders", Some("k"), "")).await.status,
        201
    );
    assert!(
        send(&app, post_json("/orders?utm=1", Some("k"), ""))
            .await
            .is_replay()
    );
    assert_eq!((runs.get(), runs_h.get()), (1, 1));
}

#[tokio::test]
async fn the_query_counts_with_the_body_unless_told_otherwise() {
    let runs = Runs::default();
    // Default (Body): another query is another request.
    let app = flexible_app(IdempotencyLayer::new(MemoryStore::new()), runs.clone());
    assert_eq!(
        send(&app, post_json("/orders?a=1", Some("k"), "{}"))
            .await
            .status,
        201
    );
    let r = send(&app, post_json("/orders?a=2", Some("k"), "{}")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        send(&app, post_json("/orders?a=1", Some("k"), "{}"))
            .await
            .is_replay()
    );
    // Body, query switched off.
    let app = flexible_app(
        IdempotencyLayer::new(MemoryStore::new()).fingerprint_query(false),
        runs.clone(),
    );
    assert_eq!(
        send(&app, post_json("/orders?a=1", Some("k"), "{}"))
            .await
            .status,
        201
    );
    assert!(
        send(&app, post_json("/orders?a=2", Some("k"), "{}"))
            .await
            .is_replay()
    );
    let r = send(&app, post_json("/orders?a=1", Some("k"), r#"{"x":1}"#)).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the body still counts"
    );
    // None, query switched on.
    let app = flexible_app(promotion_layer().fingerprint_query(true), runs.clone());
    let path = "/estimates/E-1/snapshots/1/promote";
    assert_eq!(send(&app, post_json(path, None, "")).await.status, 201);
    let r = send(&app, post_json(&format!("{path}?utm=1"), None, "")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.get(), 3);
}

fn assert_names(r: &Reply, header: Option<&str>) {
    let text = String::from_utf8_lossy(&r.body);
    match header {
        Some(h) => assert!(text.contains(h), "names {h}: {text}"),
        None => {
            assert!(!text.contains("Idempotency-Key"), "names no header: {text}");
            assert!(!text.to_ascii_lowercase().contains("header"), "{text}");
        }
    }
}

/// 422, 409, 400 key-missing and 500 operation-failed for a derived key say
/// "the same resource"; for a header key they name the header.
#[tokio::test]
async fn answers_name_the_idempotency_key_header_only_when_the_key_came_from_it() {
    // Derived from the path.
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(PathParams::new(["estimate_id", "version"]))
        .max_attempts(1);
    let app = flexible_app(layer, runs.clone());
    let p = "/estimates/E-1/snapshots/1/promote";
    assert_eq!(
        send(&app, post_json(p, None, r#"{"a":1}"#)).await.status,
        201
    );
    let mismatch = send(&app, post_json(p, None, r#"{"a":2}"#)).await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&mismatch, None);
    assert!(String::from_utf8_lossy(&mismatch.body).contains("same resource"));

    let slow = {
        let app = app.clone();
        tokio::spawn(async move {
            let req = Request::post("/estimates/E-2/snapshots/1/promote")
                .header("x-delay-ms", "400")
                .body(Body::empty())
                .unwrap();
            send(&app, req).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let busy = send(
        &app,
        post_json("/estimates/E-2/snapshots/1/promote", None, ""),
    )
    .await;
    assert_eq!(busy.status, StatusCode::CONFLICT);
    assert_names(&busy, None);
    assert_eq!(slow.await.unwrap().status, 201);

    let fail = Request::post("/estimates/E-3/snapshots/1/promote")
        .header("x-status", "500")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, fail).await.status, 500);
    let failed = send(
        &app,
        post_json("/estimates/E-3/snapshots/1/promote", None, ""),
    )
    .await;
    assert_eq!(failed.problem_type(), format!("{PROBLEMS}operation-failed"));
    assert_names(&failed, None);

    // Derived by a closure that finds nothing.
    let layer = IdempotencyLayer::new(MemoryStore::new()).key_source(
        |input: &KeyInput<'_>| -> Result<Option<KeyMaterial>, KeyRejection> {
            Ok(input
                .parts()
                .headers
                .get("x-message-id")
                .map(|v| KeyMaterial::Derived(vec![v.as_bytes().to_vec()])))
        },
    );
    let missing = send(
        &flexible_app(layer, runs.clone()),
        post_json("/orders", None, ""),
    )
    .await;
    assert_eq!(missing.problem_type(), format!("{PROBLEMS}key-missing"));
    assert_names(&missing, None);

    // From the header: named.
    let app = flexible_app(IdempotencyLayer::new(MemoryStore::new()), runs.clone());
    assert_eq!(
        send(&app, post_json("/orders", Some("k"), "{}"))
            .await
            .status,
        201
    );
    let mismatch = send(&app, post_json("/orders", Some("k"), r#"{"a":2}"#)).await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&mismatch, Some("Idempotency-Key"));
    assert_names(
        &send(&app, post_json("/orders", None, "{}")).await,
        Some("Idempotency-Key"),
    );
    let named = flexible_app(
        IdempotencyLayer::new(MemoryStore::new())
            .key_source(HeaderKey::named(http::HeaderName::from_static("x-op-key"))),
        runs.clone(),
    );
    assert_names(
        &send(&named, post_json("/orders", None, "{}")).await,
        Some("x-op-key"),
    );
}

// ---- 4. a scope source that finds no scope ---------------------------------

/// What an authentication layer leaves in the extensions.
#[derive(Clone)]
struct Principal(String);

/// Demo authentication: `x-user` names the principal.
async fn authenticate(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(user) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
        let user = Principal(user.to_owned());
        req.extensions_mut().insert(user);
    }
    next.run(req).await
}

fn scoped_layer(store: MemoryStore) -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(store).scope(|parts: &http::request::Parts| {
        parts.extensions.get::<Principal>().map(|p| p.0.clone())
    })
}

fn as_user(user: &str, key: &str) -> Request<Body> {
    let mut req = post_json("/orders", Some(key), "{}");
    req.headers_mut().insert("x-user", user.parse().unwrap());
    req
}

/// The issue: with the authentication layer missing (or placed after this
/// one) every caller fell into one shared key space, so bob received
/// alice's replay. Now: 500 `scope-missing`, the handler never runs, nothing
/// is stored, an error is logged without the key.
#[tokio::test]
async fn a_scope_source_that_finds_no_scope_fails_closed() {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::ERROR)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let runs = Runs::default();
    let layer = scoped_layer(store.clone());
    // No authentication layer at all.
    let app = app(layer.clone(), runs.clone());
    for user in ["alice", "bob"] {
        let r = send(&app, as_user(user, "secret-key-42")).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{user}");
        assert!(!r.is_replay(), "{user}");
        assert_eq!(r.problem_type(), format!("{PROBLEMS}scope-missing"));
    }
    assert_eq!(runs.get(), 0, "the handler never ran");
    let key = idempotency_core::IdempotencyKey::new("secret-key-42").unwrap();
    let shared = layer.storage_key(
        &http::Method::POST,
        "/orders",
        "",
        &KeyMaterial::Client(key),
    );
    use idempotency_core::IdempotencyStore as _;
    assert_eq!(store.get(&shared).await.unwrap(), None, "nothing stored");
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("ERROR"), "{log}");
    assert!(log.contains("scope-missing"), "{log}");
    assert!(!log.contains("secret-key-42"), "{log}");

    // Misordered: authentication runs inside the layer, too late.
    let misordered = Router::new()
        .route("/orders", post(create))
        .layer(axum::middleware::from_fn(authenticate))
        .layer(scoped_layer(MemoryStore::new()))
        .with_state(runs.clone());
    let r = send(&misordered, as_user("alice", "k")).await;
    assert_eq!(r.problem_type(), format!("{PROBLEMS}scope-missing"));
    assert_eq!(runs.get(), 0);

    // In the right order, each user has a key space of their own.
    let ordered = Router::new()
        .route("/orders", post(create))
        .layer(scoped_layer(MemoryStore::new()))
        .layer(axum::middleware::from_fn(authenticate))
        .with_state(runs.clone());
    assert_eq!(send(&ordered, as_user("alice", "k")).await.status, 201);
    let bob = send(&ordered, as_user("bob", "k")).await;
    assert_eq!(bob.status, 201);
    assert!(!bob.is_replay());
    assert_eq!(runs.get(), 2);
}

/// The explicit opt-in keeps the shared space for requests without a scope.
#[tokio::test]
async fn allow_unscoped_shares_one_key_space_by_choice() {
    let runs = Runs::default();
    let app = self::app(
        scoped_layer(MemoryStore::new()).allow_unscoped(),
        runs.clone(),
    );
    assert_eq!(send(&app, as_user("alice", "k")).await.status, 201);
    let r = send(&app, as_user("bob", "k")).await;
    assert_eq!(r.status, 201);
    assert!(r.is_replay(), "the shared space: bob gets alice's replay");
    assert_eq!(runs.get(), 1);
    // So does a source that says `Some("")` for them.
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).scope(|parts: &http::request::Parts| {
        Some(
            parts
                .extensions
                .get::<Principal>()
                .map_or_else(String::new, |p| p.0.clone()),
        )
    });
    let app = self::app(layer, runs.clone());
    assert_eq!(send(&app, as_user("alice", "k")).await.status, 201);
    assert!(send(&app, as_user("bob", "k")).await.is_replay());
    // And no scope source at all.
    let app = self::app(IdempotencyLayer::new(MemoryStore::new()), runs.clone());
    assert_eq!(send(&app, as_user("alice", "k")).await.status, 201);
    assert!(send(&app, as_user("bob", "k")).await.is_replay());
    assert_eq!(runs.get(), 2);
}

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
