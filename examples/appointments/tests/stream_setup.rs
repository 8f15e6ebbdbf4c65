//! The stream's creation against a private `nats-server` (its own store
//! directory and port; the shared server is never touched): JetStream's
//! "error creating store for stream" (10049) is asked again a bounded number
//! of times, every other refusal is returned at once.
//!
//! The store failure is made on purpose: a regular file where the server
//! makes the stream's directory, so its `MkdirAll` fails as it would on a
//! directory it cannot write. Every refusal is counted from the server's
//! own log ("Stream create failed for ..."), and the retries from the
//! service's metric, so the tests know how often the service asked.

mod common;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::instance as name;
use example_appointments::metrics_names::STREAM_CREATE_RETRIES_TOTAL;
use example_appointments::relay::{CREATE_ATTEMPTS, ensure_stream};
use idempotency_core::conformance::support::in_ci;

/// A `nats-server -js` child process on a free loopback port, logging to a
/// file in its store directory; killed (and the directory removed) on drop.
struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl NatsServer {
    /// `None` (after a printed line) when `nats-server` is not installed,
    /// outside CI; under CI that fails the test.
    fn start() -> Option<Self> {
        let installed = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(!in_ci(), "nats-server is not installed under CI");
            println!("skipping: nats-server unavailable");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("appt-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("store dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(&dir)
            .arg("-l")
            .arg(dir.join("nats.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        Some(Self { port, dir, child })
    }

    async fn jetstream(&self) -> jetstream::Context {
        let url = format!("nats://127.0.0.1:{}", self.port);
        let start = Instant::now();
        loop {
            if let Ok(client) = async_nats::connect(&url).await {
                return jetstream::new(client);
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server on {url} did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the server makes `stream`'s file store.
    fn stream_dir(&self, stream: &str) -> PathBuf {
        self.dir
            .join("jetstream")
            .join("$G")
            .join("streams")
            .join(stream)
    }

    /// How many creations of `stream` the server has refused so far.
    fn refusals(&self, stream: &str) -> usize {
        let line = format!("Stream create failed for '$G > {stream}'");
        std::fs::read_to_string(self.dir.join("nats.log"))
            .unwrap_or_default()
            .matches(&line)
            .count()
    }

    /// Puts a regular file where `stream`'s directory would go.
    fn block(&self, stream: &str) -> PathBuf {
        let path = self.stream_dir(stream);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("streams dir");
        std::fs::write(&path, b"not a directory").expect("blocking file");
        path
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `test` on a current-thread runtime with a recorder of this test's
/// own; returns its output and the retries the service counted.
fn counting_retries<F: Future>(test: impl FnOnce() -> F) -> (F::Output, u64) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let out = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test())
    });
    let retries = handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{STREAM_CREATE_RETRIES_TOTAL} ")))
        .map_or(0, |v| v.trim().parse().expect("a counter value"));
    (out, retries)
}

/// A fresh stream name whose store is blocked, and the blocking file; the
/// obstacle is checked to make JetStream refuse exactly as seen: 10049,
/// "error creating store for stream".
async fn blocked_stream(server: &NatsServer) -> (jetstream::Context, String, PathBuf) {
    let js = server.jetstream().await;
    let name = name();
    let blocker = server.block(&name);
    let err = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect_err("the blocked store must be refused");
    let jetstream::context::CreateStreamErrorKind::JetStream(e) = err.kind() else {
        panic!("not a JetStream refusal: {err}");
    };
    assert_eq!(e.error_code(), jetstream::ErrorCode::STREAM_CREATE, "{err}");
    assert!(e.to_string().contains("error creating store"), "{err}");
    assert_eq!(server.refusals(&name), 1, "the server logs the refusal");
    (js, name, blocker)
}

/// The obstacle is removed only once the server has refused the service's
/// first attempt, so the stream is created by a retry, deterministically.
#[test]
fn a_momentary_store_failure_is_asked_again() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (refused, retries) = counting_retries(|| async {
        let (js, name, blocker) = blocked_stream(&server).await;
        let unblock = async {
            let start = Instant::now();
            while server.refusals(&name) < 2 {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the service never asked"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            std::fs::remove_file(&blocker).expect("remove the blocking file");
        };
        let (stream, ()) = tokio::join!(ensure_stream(&js, &name), unblock);
        let stream = stream.expect("created once the store can be set up");
        assert_eq!(stream.cached_info().config.name, name);
        assert_eq!(
            stream.cached_info().config.subjects,
            vec![format!("{name}.>")]
        );
        assert!(
            server.stream_dir(&name).is_dir(),
            "the stream's store exists"
        );
        // One retry per refusal of the service's attempts (the first
        // refusal in the log is `blocked_stream`'s own check).
        let refused = server.refusals(&name) - 1;
        assert!(refused >= 1, "the first attempt was refused");
        assert!(refused < CREATE_ATTEMPTS as usize, "{refused}");

        // Asked again for an existing stream: the same stream, nothing
        // created, nothing retried.
        let again = ensure_stream(&js, &name).await.expect("existing stream");
        assert_eq!(again.cached_info().created, stream.cached_info().created);
        assert_eq!(server.refusals(&name) - 1, refused);
        refused
    });
    assert_eq!(retries, refused as u64, "one counted retry per refusal");
}

#[test]
fn a_lasting_store_failure_ends_in_a_clear_error_after_bounded_attempts() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let ((), retries) = counting_retries(|| async {
        let (js, name, blocker) = blocked_stream(&server).await;
        let started = Instant::now();
        let err = ensure_stream(&js, &name)
            .await
            .expect_err("the store never can be set up");
        let took = started.elapsed();
        assert!(err.contains("error creating store"), "{err}");
        assert!(
            err.contains(&format!("after {CREATE_ATTEMPTS} attempts")),
            "{err}"
        );
        assert_eq!(
            server.refusals(&name),
            1 + CREATE_ATTEMPTS as usize,
            "every attempt reached the server"
        );
        // The pauses between the attempts: 50, 100, 200, 400 and 800 ms.
        assert!(took >= Duration::from_millis(1_550), "{took:?}");
        assert!(
            Path::new(&blocker).is_file(),
            "nothing removed the obstacle"
        );
        let missing = js.get_stream(&name).await;
        assert!(missing.is_err(), "no stream was created");
    });
    assert_eq!(
        retries,
        u64::from(CREATE_ATTEMPTS - 1),
        "every retry counted"
    );
}

#[tokio::test]
async fn any_other_refusal_is_returned_at_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = server.jetstream().await;
    let name = name();
    // Another stream already takes the subjects `<name>.>`.
    js.create_stream(stream::Config {
        name: format!("{name}other"),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .expect("the other stream");
    let err = ensure_stream(&js, &name)
        .await
        .expect_err("overlapping subjects are refused");
    assert!(err.contains("overlap"), "{err}");
    assert!(!err.contains("attempts"), "not asked again: {err}");

    let err = ensure_stream(&js, "not.valid")
        .await
        .expect_err("a name with a dot");
    assert!(!err.contains("attempts"), "not asked again: {err}");
}
