//! Shared by the appointments tests: a real PostgreSQL (`DATABASE_URL`) and
//! a real JetStream (`NATS_URL`), the service in process on a real listener
//! or as running binaries, each test with its own instance (stream, subjects,
//! durable consumer) and its own shop, so tests never see each other.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use example_appointments::gateway::Gateway;
use example_appointments::{Config, Service};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idempotency_core::conformance::support::{database_url, in_ci};
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;

pub const SCHEDULER: &str = "Bearer sam:SCHEDULER";
pub const DISPATCHER: &str = "Bearer dana:DISPATCHER";
pub const MANAGER: &str = "Bearer max:SHOP_MANAGER";

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The database and NATS, or `None` (after a printed line) outside CI when
/// either is unreachable. Under CI a missing service fails the test.
pub async fn services() -> Option<(PgPool, async_nats::Client)> {
    let url = database_url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await;
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            assert!(!in_ci(), "PostgreSQL at {url} is unreachable under CI: {e}");
            println!("skipping: PostgreSQL at {url} is unreachable");
            return None;
        }
    };
    let nats = nats_url();
    match async_nats::connect(&nats).await {
        Ok(c) => Some((pool, c)),
        Err(e) => {
            assert!(!in_ci(), "NATS at {nats} is unreachable under CI: {e}");
            println!("skipping: NATS at {nats} is unreachable");
            None
        }
    }
}

/// A fresh instance name: private stream, subjects and durable consumer.
pub fn instance() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

pub use example_support::testing::Reply;

/// An HTTP client of a base URL.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            self.client
                .request(req.body(Full::new(Bytes::from(body))).unwrap()),
        )
        .await
        .expect("the service answers in 30 s")
        .expect("request");
        Reply::read(res).await
    }

    pub async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::POST, path, Some(body), headers).await
    }

    pub async fn get(&self, path: &str, auth: &str) -> Reply {
        self.call(Method::GET, path, None, &[("authorization", auth)])
            .await
    }
}

/// A gateway on a real listener.
pub async fn gateway() -> (Gateway, String) {
    let gw = Gateway::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = gw.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (gw, url)
}

/// The service in process on a real listener, with its own instance and gateway.
pub struct App {
    pub http: Http,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub gateway: Gateway,
    pub gateway_url: String,
    pub config: Config,
    pub service: Option<Service>,
    server: tokio::task::JoinHandle<()>,
}

/// A test configuration: short delays.
pub fn config(instance: &str, gateway_url: &str) -> Config {
    let mut c = Config::new(instance);
    c.gateway_url = gateway_url.to_owned();
    c.poll = Duration::from_millis(50);
    c.retry_delay = Duration::from_millis(50);
    c.consumer.ack_wait = Duration::from_secs(2);
    c.consumer.nak_delay = Duration::from_millis(100);
    c
}

pub async fn app() -> Option<App> {
    app_with(|_| {}).await
}

pub async fn app_with(edit: impl FnOnce(&mut Config)) -> Option<App> {
    let (pool, nats) = services().await?;
    let (gateway, gateway_url) = gateway().await;
    let mut config = config(&instance(), &gateway_url);
    edit(&mut config);
    let service = Service::start(pool.clone(), nats.clone(), config.clone(), None)
        .await
        .expect("the service starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = service.router();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Some(App {
        http: Http::new(&base),
        pool,
        nats,
        gateway,
        gateway_url,
        config,
        service: Some(service),
        server,
    })
}

impl App {
    pub async fn stop(mut self) {
        self.server.abort();
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
        let js = async_nats::jetstream::new(self.nats.clone());
        let _ = js.delete_stream(&self.config.instance).await;
    }

    /// A shop open 06:00 to 22:00 UTC with `capacity`, one bay of each
    /// given type and the given mechanics `(skills, phone)` on 06:00 to 22:00.
    pub async fn shop(&self, capacity: i32, bays: &[&str], mechanics: &[(&[&str], bool)]) -> Shop {
        let r = self
            .http
            .post(
                "/shops",
                json!({"opensAt": "06:00", "closesAt": "22:00", "capacity": capacity}),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        let id = r.json()["shopId"].as_str().unwrap().to_owned();
        let mut bay_ids = Vec::new();
        for (i, t) in bays.iter().enumerate() {
            let r = self
                .http
                .post(
                    &format!("/shops/{id}/bays"),
                    json!({"bayType": t, "name": format!("Bay {i}")}),
                    &[],
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
            bay_ids.push(r.json()["bayId"].as_str().unwrap().to_owned());
        }
        let mut mech_ids = Vec::new();
        for (i, (skills, phone)) in mechanics.iter().enumerate() {
            let mut body = json!({"name": format!("Mechanic {i}"), "skills": skills,
                                  "shiftStart": "06:00", "shiftEnd": "22:00"});
            if *phone {
                body["phone"] = json!(format!("+1555000{i:04}"));
            }
            let r = self
                .http
                .post(&format!("/shops/{id}/mechanics"), body, &[])
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
            mech_ids.push(r.json()["mechanicId"].as_str().unwrap().to_owned());
        }
        Shop {
            id,
            bays: bay_ids,
            mechanics: mech_ids,
        }
    }

    /// An estimate (or work order) of `shop` in `status`.
    pub async fn source(&self, kind: &str, shop: &Shop, status: &str, skills: &[&str]) -> String {
        let path = if kind == "ESTIMATE" {
            "/estimates"
        } else {
            "/work-orders"
        };
        let r = self
            .http
            .post(
                path,
                json!({"shopId": shop.id, "customerId": "C-1", "vehicleId": "V-1", "status": status,
                       "serviceDescription": "brakes", "durationMinutes": 60,
                       "requiredSkills": skills, "customerPhone": "+15551234567",
                       "customerEmail": "c1@example.com"}),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        r.json()["sourceId"].as_str().unwrap().to_owned()
    }

    pub async fn create(
        &self,
        auth: &str,
        key: &str,
        source_type: &str,
        source: &str,
        start: &str,
        extra: Value,
    ) -> Reply {
        let mut body =
            json!({"sourceType": source_type, "sourceId": source, "scheduledStart": start});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        // Keys are the caller's: unique per test run.
        let key = format!("{}-{key}", self.config.instance);
        self.http
            .post(
                "/appointments",
                body,
                &[("authorization", auth), ("idempotency-key", &key)],
            )
            .await
    }

    pub async fn reschedule(&self, auth: &str, key: &str, id: &str, body: Value) -> Reply {
        let key = format!("{}-{key}", self.config.instance);
        self.http
            .post(
                &format!("/appointments/{id}/reschedule"),
                body,
                &[("authorization", auth), ("idempotency-key", &key)],
            )
            .await
    }
}

/// A shop and its resources.
pub struct Shop {
    pub id: String,
    pub bays: Vec<String>,
    pub mechanics: Vec<String>,
}

/// A start `days` ahead at `hour`:00 UTC, RFC 3339.
pub fn at(days: i64, hour: u8) -> String {
    let d = (OffsetDateTime::now_utc() + time::Duration::days(days)).date();
    format!("{}T{hour:02}:00:00Z", d)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of `work_execution.applied_events` per version, for one appointment.
pub async fn applied(pool: &PgPool, appointment: &str) -> Vec<(i64, uuid::Uuid)> {
    sqlx::query_as(
        "SELECT version, event_id FROM work_execution.applied_events \
         WHERE appointment_id = $1 ORDER BY id",
    )
    .bind(appointment)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The planned `(start, version)` of an appointment, if the consumer wrote one.
pub async fn planned(pool: &PgPool, appointment: &str) -> Option<(String, i64)> {
    sqlx::query_as(
        "SELECT appointments.iso(planned_start), version FROM work_execution.planned \
         WHERE appointment_id = $1",
    )
    .bind(appointment)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// A running service binary, its stderr collected line by line.
pub struct Process {
    pub child: Child,
    pub base: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts the binary with `env` (plus DATABASE_URL, NATS_URL) on an
    /// ephemeral port and waits until it listens.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-appointments"));
        cmd.args(["--bind", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url())
            .env("NATS_URL", nats_url())
            .env("RUST_LOG", "info")
            .env_remove("APPOINTMENTS_PAUSE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut p = Self {
            child,
            base: String::new(),
            lines,
        };
        let line = p.wait_for_line("listening on http://", Duration::from_secs(30));
        let addr = line
            .split("listening on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        p.base = format!("http://{addr}");
        p
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the service exited ({status}) before {needle:?}:\n{}",
                    self.lines.lock().unwrap().join("\n")
                );
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} within {limit:?}:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
