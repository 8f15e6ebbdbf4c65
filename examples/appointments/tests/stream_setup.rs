//! The stream's creation against a private `nats-server` (its own store
//! directory and port; the shared server is never touched): JetStream's
//! "error creating store for stream" (10049) is asked again a bounded number
//! of times, every other refusal is returned at once.
//!
//! The store failure is made on purpose: a regular file where the server
//! makes the stream's directory, so its `MkdirAll` fails as it would on a
//! directory it cannot write.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use example_appointments::relay::{CREATE_ATTEMPTS, ensure_stream};
use idempotency_core::conformance::support::in_ci;

/// A `nats-server -js` child process on a free loopback port, killed (and
/// its store directory removed) on drop.
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

fn name() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
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
    (js, name, blocker)
}

#[tokio::test]
async fn a_momentary_store_failure_is_asked_again() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (js, name, blocker) = blocked_stream(&server).await;

    let unblock = {
        let blocker = blocker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            std::fs::remove_file(&blocker).expect("remove the blocking file");
        })
    };
    let stream = ensure_stream(&js, &name)
        .await
        .expect("created once the store can be set up");
    unblock.await.expect("unblocked");
    assert_eq!(stream.cached_info().config.name, name);
    assert_eq!(
        stream.cached_info().config.subjects,
        vec![format!("{name}.>")]
    );
    assert!(
        server.stream_dir(&name).is_dir(),
        "the stream's store exists"
    );

    // Asked again for an existing stream: the same stream, nothing created.
    let again = ensure_stream(&js, &name).await.expect("existing stream");
    assert_eq!(again.cached_info().created, stream.cached_info().created);
}

#[tokio::test]
async fn a_lasting_store_failure_ends_in_a_clear_error_after_bounded_attempts() {
    let Some(server) = NatsServer::start() else {
        return;
    };
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
    // The pauses between the attempts: 50, 100, 200, 400 and 800 ms.
    assert!(took >= Duration::from_millis(1_550), "{took:?}");
    assert!(
        Path::new(&blocker).is_file(),
        "nothing removed the obstacle"
    );
    let missing = js.get_stream(&name).await;
    assert!(missing.is_err(), "no stream was created");
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
