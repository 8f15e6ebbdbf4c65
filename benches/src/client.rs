//! The load generator: an in-process hyper client over keep-alive connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::{Options, Workload};

/// The requests of one run: groups of keys; a group's copies are sent
/// together (burst) or all requests are shuffled into one queue.
pub(crate) struct Plan {
    pub(crate) groups: Vec<Vec<String>>,
    pub(crate) burst: bool,
    pub(crate) distinct_keys: usize,
}

impl Plan {
    pub(crate) fn requests(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

/// Builds the request plan of a workload.
pub(crate) fn plan(workload: Workload, opts: &Options) -> Plan {
    let run = uuid_like();
    match workload {
        Workload::Unique => Plan {
            groups: vec![(0..opts.unique).map(|i| format!("{run}-{i}")).collect()],
            burst: false,
            distinct_keys: opts.unique,
        },
        Workload::Duplicates | Workload::Slow => {
            let mut all: Vec<String> = (0..opts.keys)
                .flat_map(|k| std::iter::repeat_n(format!("{run}-{k}"), opts.copies))
                .collect();
            shuffle(&mut all, 0x9e37_79b9_7f4a_7c15);
            Plan {
                groups: vec![all],
                burst: false,
                distinct_keys: opts.keys,
            }
        }
        Workload::Burst => Plan {
            groups: (0..opts.keys)
                .map(|k| vec![format!("{run}-{k}"); opts.copies])
                .collect(),
            burst: true,
            distinct_keys: opts.keys,
        },
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// Deterministic Fisher-Yates shuffle (xorshift64*).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) elapsed: Duration,
    pub(crate) latencies_us: Vec<u64>,
    /// p99 latency (ms) of the requests that finished in the first and in
    /// the last quarter of the run's time: a p99 that grows with run length
    /// shows up as the second exceeding the first.
    pub(crate) p99_quarters_ms: (f64, f64),
    pub(crate) statuses: HashMap<u16, u64>,
    pub(crate) transport_errors: u64,
    pub(crate) cut_short: bool,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    cookie: Option<&str>,
    key: &str,
) -> (Option<u16>, u64) {
    let body = format!(r#"{{"sku":"SKU-{key}","quantity":1,"note":"bench"}}"#);
    let mut req = http::Request::post(format!("http://{addr}/orders"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let req = req
        .header("content-type", "application/json")
        .header("idempotency-key", format!("\"{key}\""))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let start = Instant::now();
    let exchange = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        // Read the whole body: a replay is only done when its bytes arrived.
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    // A request that hangs counts as a transport error, never stalls the run.
    let status = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten();
    (status, start.elapsed().as_micros() as u64)
}

#[derive(Default)]
struct Local {
    lat: Vec<u64>,
    /// (µs since the run started when the request finished, latency µs).
    timed: Vec<(u64, u64)>,
    statuses: HashMap<u16, u64>,
    errors: u64,
}

impl Local {
    fn record(&mut self, start: Instant, (status, us): (Option<u16>, u64)) {
        self.lat.push(us);
        let at = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.timed.push((at, us));
        match status {
            Some(s) => *self.statuses.entry(s).or_default() += 1,
            None => self.errors += 1,
        }
    }
}

/// Drives `plan` against `addr` with `opts.connections` concurrent connections.
pub(crate) async fn drive(
    addr: SocketAddr,
    cookie: Option<&str>,
    plan: &Plan,
    opts: &Options,
) -> Stats {
    let cookie: Option<Arc<str>> = cookie.map(Arc::from);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.connections)
        .build_http();
    let groups = Arc::new(plan.groups.clone());
    let deadline = Instant::now() + opts.max_duration;
    let start = Instant::now();
    let mut workers = Vec::new();
    if plan.burst {
        // Each worker takes a whole key and fires all its copies at once.
        let per_key = groups.first().map_or(1, Vec::len).max(1);
        let parallel_keys = (opts.connections / per_key).max(1);
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..parallel_keys {
            let (client, groups, next) = (client.clone(), groups.clone(), next.clone());
            let cookie = cookie.clone();
            workers.push(tokio::spawn(async move {
                let mut local = Local::default();
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    if g >= groups.len() || Instant::now() > deadline {
                        break;
                    }
                    let sends = groups[g]
                        .iter()
                        .map(|k| send(&client, addr, cookie.as_deref(), k));
                    for r in futures_util::future::join_all(sends).await {
                        local.record(start, r);
                    }
                }
                local
            }));
        }
    } else {
        let queue: Arc<Vec<String>> = Arc::new(groups.iter().flatten().cloned().collect());
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..opts.connections {
            let (client, queue, next) = (client.clone(), queue.clone(), next.clone());
            let cookie = cookie.clone();
            workers.push(tokio::spawn(async move {
                let mut local = Local::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= queue.len() || Instant::now() > deadline {
                        break;
                    }
                    local.record(
                        start,
                        send(&client, addr, cookie.as_deref(), &queue[i]).await,
                    );
                }
                local
            }));
        }
    }
    let mut stats = Stats::default();
    let mut timed = Vec::new();
    for w in workers {
        let local = w.await.expect("worker");
        stats.latencies_us.extend(local.lat);
        timed.extend(local.timed);
        stats.transport_errors += local.errors;
        for (s, n) in local.statuses {
            *stats.statuses.entry(s).or_default() += n;
        }
    }
    stats.elapsed = start.elapsed();
    stats.p99_quarters_ms = p99_quarters(&timed, stats.elapsed);
    stats.cut_short = stats.latencies_us.len() < plan.requests();
    stats.latencies_us.sort_unstable();
    stats
}

/// p99 (ms) of the requests finished in the first and in the last quarter
/// of `elapsed`.
fn p99_quarters(timed: &[(u64, u64)], elapsed: Duration) -> (f64, f64) {
    let total = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let p99 = |pick: &dyn Fn(u64) -> bool| {
        let mut v: Vec<u64> = timed
            .iter()
            .filter(|(at, _)| pick(*at))
            .map(|(_, us)| *us)
            .collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        let idx = ((v.len() as f64 - 1.0) * 0.99).round() as usize;
        v[idx] as f64 / 1000.0
    };
    (
        p99(&|at| at <= total / 4),
        p99(&|at| at >= total - total / 4),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarters_split_by_finishing_time() {
        // 100 requests of 1 ms in the first quarter, 100 of 9 ms in the last.
        let mut timed: Vec<(u64, u64)> = (0..100).map(|i| (i * 100, 1000)).collect();
        timed.extend((0..100).map(|i| (31_000 + i * 90, 9000)));
        let (first, last) = p99_quarters(&timed, Duration::from_millis(40));
        assert_eq!((first, last), (1.0, 9.0));
        assert_eq!(p99_quarters(&[], Duration::from_secs(1)), (0.0, 0.0));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..1000).collect();
        shuffle(&mut v, 42);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
