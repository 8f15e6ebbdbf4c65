//! The HTTP behaviour suite: one `pub async fn` per behaviour, over any store.
//!
//! Run it for a store with [`http_behaviour_suite!`](crate::http_behaviour_suite).
//! Every case uses random keys, so cases run in parallel against one shared
//! server.

use std::time::Duration;

use http::{Method, StatusCode};
use idempotency_core::{ClockControl, IdempotencyStore};
use idempotency_tower::Concurrency;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::{Answer, Req, TestApp, random_key};

/// What every store under the suite must offer.
pub trait SuiteStore: IdempotencyStore + ClockControl + Clone + Send + Sync + 'static {}
impl<T: IdempotencyStore + ClockControl + Clone + Send + Sync + 'static> SuiteStore for T {}

const PROBLEMS: &str = "https://idempotency.rs/problems/";

fn assert_problem(a: &Answer, status: u16, slug: &str) {
    assert_eq!(a.status.as_u16(), status, "status; body: {:?}", a.body);
    assert_eq!(
        a.problem_type().as_deref(),
        Some(format!("{PROBLEMS}{slug}").as_str()),
        "problem type"
    );
}

fn app<S: SuiteStore>(store: S) -> TestApp {
    TestApp::new(store, |l| l)
}

/// The first request with a key executes and is not marked as a replay.
pub async fn first_call_executes_unmarked<S: SuiteStore>(store: S) {
    let app = app(store);
    let a = app.send(Req::post().key(random_key()).build()).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert!(a.headers.get("idempotent-replayed").is_none());
    assert_eq!(a.json()["execution"], 1);
    assert_eq!(app.executions(), 1);
}

/// A duplicate gets the first response byte for byte, marked `Idempotent-Replayed: true`.
pub async fn replay_is_byte_identical_and_marked<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key()).field("quantity", 2);
    let first = app.send(req.build()).await;
    let second = app.send(req.build()).await;
    let third = app.send(req.build()).await;
    assert_eq!(app.executions(), 1);
    for replay in [&second, &third] {
        assert!(replay.is_replay());
        assert_eq!(replay.status, first.status);
        assert_eq!(replay.body, first.body, "byte-identical body");
        for h in ["content-type", "location", "etag"] {
            assert_eq!(replay.headers.get(h), first.headers.get(h), "{h}");
        }
        assert!(
            replay.headers.get("x-execution").is_none(),
            "not allow-listed"
        );
    }
}

/// Status 201 and `Location` are replayed.
pub async fn location_and_201_are_replayed<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key());
    let first = app.send(req.build()).await;
    let replay = app.send(req.build()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(replay.status, StatusCode::CREATED);
    let loc = first.headers.get("location").expect("location");
    assert!(loc.to_str().unwrap().starts_with("/orders/"));
    assert_eq!(replay.headers.get("location"), Some(loc));
}

/// `Set-Cookie` reaches the first client only.
pub async fn set_cookie_is_not_replayed<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key());
    let first = app.send(req.build()).await;
    let replay = app.send(req.build()).await;
    assert!(first.headers.get("set-cookie").is_some());
    assert!(replay.is_replay());
    assert!(replay.headers.get("set-cookie").is_none());
}

/// Same key, different body → 422, nothing runs.
pub async fn different_body_is_422<S: SuiteStore>(store: S) {
    let app = app(store);
    let key = random_key();
    assert_eq!(app.send(Req::post().key(&key).build()).await.status, 201);
    let a = app
        .send(Req::post().key(&key).field("sku", "pen").build())
        .await;
    assert_problem(&a, 422, "key-reused");
    // Key order and whitespace do not make a different body.
    let same = http::Request::post("/orders")
        .header("idempotency-key", key.as_str())
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{ \"sku\" : \"book\" }"))
        .unwrap();
    assert!(app.send(same).await.is_replay());
    assert_eq!(app.executions(), 1);
}

/// Same key, different method → 422.
pub async fn different_method_is_422<S: SuiteStore>(store: S) {
    let app = app(store);
    let key = random_key();
    assert_eq!(app.send(Req::post().key(&key).build()).await.status, 201);
    let a = app
        .send(Req::post().method(Method::PATCH).key(&key).build())
        .await;
    assert_problem(&a, 422, "key-reused");
    assert_eq!(app.executions(), 1);
}

/// Same key, different route → 422.
pub async fn different_route_is_422<S: SuiteStore>(store: S) {
    let app = app(store);
    let key = random_key();
    assert_eq!(app.send(Req::post().key(&key).build()).await.status, 201);
    let a = app.send(Req::post().path("/other").key(&key).build()).await;
    assert_problem(&a, 422, "key-reused");
    assert_eq!(app.executions(), 1);
}

/// 64 concurrent identical requests: exactly one execution; every other
/// answer is a 409 `in-flight` or a marked replay of the same response.
pub async fn concurrent_duplicates_execute_once<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key()).field("delay_ms", 200);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        let req = req.build();
        tasks.push(tokio::spawn(async move { app.send(req).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert_eq!(app.executions(), 1, "exactly one execution");
    let executed: Vec<_> = answers
        .iter()
        .filter(|a| a.status == 201 && !a.is_replay())
        .collect();
    assert_eq!(executed.len(), 1, "exactly one unmarked answer");
    for a in &answers {
        if a.status == StatusCode::CONFLICT {
            assert_problem(a, 409, "in-flight");
            assert!(a.headers.get("retry-after").is_some());
        } else {
            assert_eq!(a.status, StatusCode::CREATED);
            assert_eq!(a.body, executed[0].body);
        }
    }
}

/// In wait mode duplicates wait and receive the first response, marked.
pub async fn wait_mode_returns_first_response<S: SuiteStore>(store: S) {
    let app = TestApp::new(store, |l| {
        l.concurrency(Concurrency::Wait(Duration::from_secs(10)))
    });
    let req = Req::post().key(random_key()).field("delay_ms", 300);
    let first = {
        let app = app.clone();
        let req = req.build();
        tokio::spawn(async move { app.send(req).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut dups = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let req = req.build();
        dups.push(tokio::spawn(async move { app.send(req).await }));
    }
    let first = first.await.expect("task");
    assert_eq!(first.status, 201);
    assert!(!first.is_replay());
    for d in dups {
        let d = d.await.expect("task");
        assert_eq!(d.status, 201, "waited instead of 409");
        assert!(d.is_replay());
        assert_eq!(d.body, first.body);
    }
    assert_eq!(app.executions(), 1);
}

/// Missing, empty, 256-character, control-character and repeated keys → 400.
pub async fn invalid_keys_are_400<S: SuiteStore>(store: S) {
    let app = app(store);
    assert_problem(&app.send(Req::post().build()).await, 400, "key-missing");
    for bad in [
        b"".to_vec(),
        b"\"\"".to_vec(),
        "k".repeat(256).into_bytes(),
        b"ab\tcd".to_vec(),
        b"caf\xc3\xa9".to_vec(),
        b"\"unterminated".to_vec(),
    ] {
        let a = app.send(Req::post().key(&bad).build()).await;
        assert_problem(&a, 400, "key-invalid");
    }
    let mut twice = Req::post().key(random_key()).build();
    twice
        .headers_mut()
        .append("idempotency-key", "other".parse().unwrap());
    assert_problem(&app.send(twice).await, 400, "key-invalid");
    assert_eq!(app.executions(), 0);
    // 255 characters is fine.
    let longest = format!("{}{}", random_key(), "k".repeat(255 - 40));
    assert_eq!(
        app.send(Req::post().key(&longest).build()).await.status,
        201
    );
}

/// `"abc"` (sf-string) and `abc` (bare) are the same key.
pub async fn quoted_and_bare_are_the_same_key<S: SuiteStore>(store: S) {
    let app = app(store);
    let key = random_key();
    let first = app
        .send(Req::post().key(format!("\"{key}\"")).build())
        .await;
    let second = app.send(Req::post().key(&key).build()).await;
    assert_eq!(first.status, 201);
    assert!(second.is_replay());
    assert_eq!(first.body, second.body);
    assert_eq!(app.executions(), 1);
}

/// Safe methods pass through untouched, even with a key.
pub async fn get_passes_through<S: SuiteStore>(store: S) {
    let app = app(store);
    let key = random_key();
    for _ in 0..2 {
        let req = http::Request::get("/orders")
            .header("idempotency-key", key.as_str())
            .body(axum::body::Body::empty())
            .unwrap();
        let a = app.send(req).await;
        assert_eq!(a.status, 200);
        assert!(!a.is_replay());
        assert!(a.headers.get("x-request-id").is_none(), "untouched");
    }
    assert_eq!(app.gets(), 2);
}

/// Two users with the same key both execute and never see each other's response.
pub async fn users_are_scoped<S: SuiteStore>(store: S) {
    let app = app(store);
    let key = random_key();
    let alice = app.send(Req::post().key(&key).user("alice").build()).await;
    let bob = app.send(Req::post().key(&key).user("bob").build()).await;
    assert_eq!(
        (alice.status, bob.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(!bob.is_replay());
    assert_ne!(alice.body, bob.body);
    assert_eq!(app.executions(), 2);
    let alice2 = app.send(Req::post().key(&key).user("alice").build()).await;
    let bob2 = app.send(Req::post().key(&key).user("bob").build()).await;
    assert_eq!(alice2.body, alice.body);
    assert_eq!(bob2.body, bob.body);
    assert_eq!(app.executions(), 2);
}

/// After the retention, the same key executes again.
pub async fn retention_expiry_reexecutes<S: SuiteStore>(store: S) {
    let clock = store.clone();
    let app = TestApp::new(store, |l| l.retention(Duration::from_secs(60)));
    let req = Req::post().key(random_key());
    let first = app.send(req.build()).await;
    assert!(app.send(req.build()).await.is_replay());
    clock.advance(Duration::from_secs(61));
    let again = app.send(req.build()).await;
    assert_eq!(again.status, 201);
    assert!(!again.is_replay());
    assert_ne!(again.body, first.body);
    assert_eq!(app.executions(), 2);
}

/// A 5xx marks a retryable failure: the same key runs again.
pub async fn server_errors_release_for_retry<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key()).field("status", 503);
    let first = app.send(req.build()).await;
    assert_eq!(first.status, 503);
    let second = app.send(req.build()).await;
    assert_eq!(second.status, 503);
    assert!(!second.is_replay(), "executed again");
    assert_eq!(app.executions(), 2);
}

/// A business 4xx is stored and replayed.
pub async fn business_4xx_is_replayed<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key()).field("status", 409);
    let first = app.send(req.build()).await;
    let second = app.send(req.build()).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CONFLICT, StatusCode::CONFLICT)
    );
    assert!(second.is_replay());
    assert_eq!(first.body, second.body);
    assert_eq!(app.executions(), 1);
}

/// 401 and 429 release the key: a corrected retry runs.
pub async fn auth_and_rate_limit_never_consume_a_key<S: SuiteStore>(store: S) {
    let app = app(store);
    for status in [401, 429] {
        let key = random_key();
        let rejected = app
            .send(Req::post().key(&key).field("status", status).build())
            .await;
        assert_eq!(rejected.status.as_u16(), status);
        let retried = app.send(Req::post().key(&key).build()).await;
        assert_eq!(retried.status, 201, "a retry after {status} runs");
        assert!(!retried.is_replay());
    }
    assert_eq!(app.executions(), 4);
}

/// `Cache-Control: no-store` (which security-header layers add to every
/// response) keeps the record; the `ReleaseKey` extension releases it.
pub async fn no_store_is_kept_and_release_key_releases<S: SuiteStore>(store: S) {
    let app = app(store);
    let req = Req::post().key(random_key()).field("no_store", true);
    let first = app.send(req.build()).await;
    let second = app.send(req.build()).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(second.is_replay(), "no-store does not turn idempotency off");
    assert_eq!(app.executions(), 1);
    let req = Req::post().key(random_key()).field("release", true);
    let first = app.send(req.build()).await;
    let second = app.send(req.build()).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(!second.is_replay(), "released on the handler's word");
    assert_eq!(app.executions(), 3);
}

/// A 10 MiB chunked body against the 1 MiB cap → 413, and the layer stops
/// reading near the cap (memory stays bounded).
pub async fn chunked_body_over_cap_is_413<S: SuiteStore>(store: S) {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 10 * 1024 * 1024;
    let app = app(store);
    let addr = app.serve().await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nidempotency-key: {}\r\n\r\n",
        random_key()
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; CHUNK];
        let mut sent = 0;
        while sent < TOTAL {
            wr.write_all(format!("{CHUNK:x}\r\n").as_bytes()).await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
            sent += CHUNK;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(sent)
    });
    let response = read_response(&mut rd).await;
    writer.abort();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("request-too-large"), "{response}");
    assert_eq!(app.executions(), 0);
    let read = app.body_bytes_read();
    assert!(
        read <= 2 * 1024 * 1024,
        "the layer read {read} bytes of a 10 MiB body"
    );
}

/// A response over the storage cap reaches its client in full; the record is
/// a tombstone: replays answer the status with an empty body, nothing re-runs.
pub async fn oversized_response_becomes_tombstone<S: SuiteStore>(store: S) {
    let app = TestApp::new(store, |l| l.max_stored_response(1024));
    let req = Req::post().key(random_key()).field("big", 64 * 1024);
    let first = app.send(req.build()).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body.len(), 64 * 1024, "the client gets everything");
    let replay = app.send(req.build()).await;
    assert_eq!(replay.status, 201);
    assert!(replay.is_replay());
    assert!(replay.body.is_empty());
    assert_eq!(app.executions(), 1, "a tombstone never re-executes");
}

/// A client that disconnects mid-handler: the handler runs to completion,
/// the record completes, and the retry gets the replay — one execution.
pub async fn client_disconnect_executes_once<S: SuiteStore>(store: S) {
    let app = app(store);
    let addr = app.serve().await;
    let req = Req::post().key(random_key()).field("delay_ms", 400);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&req.to_http1()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.executions(), 1, "the handler started");
    drop(stream);

    // The handler is not cut: it finishes although nobody listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.completions() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handler never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The retry gets the stored response (or 409 for the moment the record is settling).
    let retry = loop {
        let a = app.send(req.build()).await;
        if a.status != StatusCode::CONFLICT {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "record never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.status, 201);
    assert!(retry.is_replay());
    assert_eq!(retry.json()["execution"], 1);
    assert_eq!(app.executions(), 1, "exactly one execution");
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) as text.
async fn read_response(rd: &mut tokio::net::tcp::OwnedReadHalf) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let read = async {
        loop {
            match rd.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
