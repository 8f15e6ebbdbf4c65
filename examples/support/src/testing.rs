//! Helpers for the examples' tests (feature `testing`): a service binary
//! started on a free port and stopped by the test, an HTTP client, what a
//! test reads back from an answer, and readers of `/metrics`.
//!
//! ```no_run
//! # async fn t() {
//! use example_support::testing::{self, Server};
//! let mut cmd = testing::command("target/debug/example-x");
//! cmd.env("DATABASE_URL", testing::database_url());
//! let server = Server::spawn(cmd, "/readyz").await;
//! let reply = testing::send(&testing::client(), http::Method::GET, &server.url("/healthz"), None, &[])
//!     .await
//!     .unwrap();
//! assert_eq!(reply.status, 200);
//! # }
//! ```

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Whether this is a CI run (`CI=true` or `CI=1`): a missing service
/// fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `DATABASE_URL`, else the local test database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A port on 127.0.0.1 that nothing listens on now.
///
/// # Panics
///
/// No port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The HTTP/1 client of the tests.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client whose idle connections close after 5 s.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

/// What a test reads back from an answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// Reads the whole of `res` (an unreadable body reads as empty).
    pub async fn read<B>(res: http::Response<B>) -> Self
    where
        B: http_body::Body,
    {
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// The body is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether it is a replay (`Idempotent-Replayed: true`).
    pub fn is_replay(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The `type` of a problem+json answer.
    ///
    /// # Panics
    ///
    /// It is not `application/problem+json`.
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap_or_default()),
            Some("application/problem+json"),
            "{self:?}"
        );
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    /// The last segment of a problem's `type`.
    ///
    /// # Panics
    ///
    /// As [`Reply::problem_type`].
    pub fn problem_slug(&self) -> String {
        let t = self.problem_type();
        t.rsplit('/').next().unwrap_or_default().to_owned()
    }
}

/// Sends `method url` with `headers` and, when given, a JSON `body`; reads
/// the whole answer.
///
/// # Errors
///
/// The request could not be sent or its answer not read (connection refused, reset).
///
/// # Panics
///
/// A header name or value is not valid.
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .expect("a well-formed request");
    let res = client.request(req).await?;
    Ok(Reply::read(res).await)
}

/// A command for a service binary: `RUST_LOG=warn`, `NO_COLOR=1`, no
/// stdin. Add the service's settings, then [`Server::spawn`] it.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// A running service binary, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `cmd` with `BIND_ADDR` on a free port, its output in a file
    /// under the temp dir, and waits (at most 30 s) until `ready_path`
    /// answers 200.
    ///
    /// # Panics
    ///
    /// It cannot start, exits, or is not ready in time (with its log).
    pub async fn spawn(mut cmd: Command, ready_path: &str) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let name = PathBuf::from(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let log = std::env::temp_dir().join(format!(
            "{name}-{}-{}-{nanos}.log",
            std::process::id(),
            addr.port()
        ));
        let file = std::fs::File::create(&log).expect("create the log file");
        cmd.env("BIND_ADDR", addr.to_string())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut server = Self { child, addr, log };
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!("{name} exited with {status}: {}", server.log_text());
            }
            if let Ok(r) = send(&client, Method::GET, &server.url(ready_path), None, &[]).await
                && r.status == StatusCode::OK
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} did not become ready: {}", server.log_text());
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, ...) with the `kill` command.
    ///
    /// # Panics
    ///
    /// `kill` fails.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM.
    ///
    /// # Panics
    ///
    /// As [`Server::signal`].
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit; kills it (SIGKILL) if it has not
    /// within `within`, so a hung process fails the test instead of
    /// hanging it. Needs the multi-thread runtime.
    ///
    /// # Panics
    ///
    /// The wait fails.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let (exited, watch) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(within).is_err() {
                let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
            }
        });
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        let _ = exited.send(());
        let _ = watchdog.join();
        status
    }
}

/// Runs `cmd` to its end with stdout and stderr captured; a process still
/// running after `within` (it started serving when it should have refused
/// to start) is killed, and what it printed returned.
///
/// # Panics
///
/// It cannot start or be waited for.
pub fn run_to_exit(mut cmd: Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start the binary");
    let pid = child.id().to_string();
    let (exited, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(within).is_err() {
            let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = exited.send(());
    let _ = watchdog.join();
    out
}

/// Polls `check` every 20 ms until it is true.
///
/// # Panics
///
/// It is not true within `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the Prometheus counter `name` over its series in a
/// `/metrics` text (0 when absent).
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

/// The value of the Prometheus series whose line starts with `series`
/// (e.g. `x_total{outcome="ok"}`), 0 when absent.
pub fn series(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (s, value) = l.rsplit_once(' ')?;
            (s == series).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_their_series() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 2\na_total{x=\"2\"} 3\nab_total 7\n";
        assert_eq!(counter(text, "a_total"), 5);
        assert_eq!(counter(text, "ab_total"), 7);
        assert_eq!(counter(text, "none"), 0);
        assert_eq!(series(text, "a_total{x=\"2\"}"), 3);
    }
}
