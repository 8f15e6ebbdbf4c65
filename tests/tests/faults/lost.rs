//! Item 4: lost responses. A TCP proxy of the suite's own sits between the
//! client and the service: it delivers the request, waits until the
//! service's response starts, and then closes the client's connection
//! without passing a byte of it on. The client retries with the same key:
//! one effect, and the retry gets the replay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use example_support::testing::{self, Reply};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::env::{self, Figures, Journal};
use super::services::{self, LEASE, Store};

/// The proxy: every response is dropped once it has started.
pub struct DroppingProxy {
    pub addr: SocketAddr,
    dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DroppingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if relay_and_drop(client, upstream).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            dropped,
            task,
        }
    }

    /// Responses dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for DroppingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies the client's bytes to `upstream` until the first byte of the
/// answer arrives, then closes both connections: whether a response was
/// dropped.
async fn relay_and_drop(client: TcpStream, upstream: SocketAddr) -> bool {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return false;
    };
    let (mut client_read, _client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let forward = tokio::spawn(async move {
        let mut buf = vec![0; 16 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut first = [0; 1];
    let started = matches!(server_read.read(&mut first).await, Ok(1));
    forward.abort();
    // `_client_write` and the server halves drop here: the client sees its
    // connection closed with no answer.
    started
}

/// One lost response and the retry, `trials` times, through `send` (the
/// proxy's or the service's address): the retry's answer and how long after
/// the loss it came.
async fn lose_then_retry<F, Fut>(
    proxy: &DroppingProxy,
    direct: &str,
    mut send: F,
) -> (Reply, std::time::Duration)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Reply, hyper_util::client::legacy::Error>>,
{
    let before = proxy.dropped();
    let lost = send(format!("http://{}", proxy.addr)).await;
    assert!(lost.is_err(), "the proxy passed an answer on: {lost:?}");
    assert_eq!(proxy.dropped(), before + 1, "the response was dropped");
    let since = Instant::now();
    let (retry, elapsed) =
        services::until_not_in_flight(since, LEASE * 5, || send(direct.to_owned())).await;
    (retry, elapsed)
}

pub async fn quickstart(store: Store) -> Figures {
    let journal = Journal::new();
    let http = testing::client();
    let server = services::quickstart(&store, &journal, LEASE, &[]).await;
    let proxy = DroppingProxy::start(server.addr).await;
    let user = services::user();
    let trials = env::trials(3, 200);
    let mut figures = Figures {
        case: "lost-response",
        store: store.name(),
        trials,
        guarantee: "0",
        ..Figures::default()
    };
    for t in 0..trials {
        let key = format!("lost-{t}");
        let sku = format!("lost-{t}");
        let (retry, elapsed) =
            lose_then_retry(&proxy, &format!("http://{}", server.addr), |base| {
                let (http, user, key, sku) = (http.clone(), user.clone(), key.clone(), sku.clone());
                async move {
                    services::order_at(&http, &format!("{base}/orders"), &user, &key, &sku).await
                }
            })
            .await;
        figures.faults += 1;
        assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
        assert!(retry.is_replay(), "the retry is the replay: {retry:?}");
        figures.recoveries.push(elapsed);
        let effects = journal.count(&sku);
        figures.duplicates += effects.saturating_sub(1);
        assert_eq!(effects, 1, "{:?}", journal.lines());
    }
    figures
}

pub async fn promotion() -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let http = testing::client();
    let server = services::promotion(&db.url, LEASE, &[]).await;
    let proxy = DroppingProxy::start(server.addr).await;
    let trials = env::trials(3, 200);
    let mut figures = Figures {
        case: "lost-response",
        store: "postgres-tx",
        trials,
        guarantee: "0",
        ..Figures::default()
    };
    for _ in 0..trials {
        let e = services::finalized_estimate(&http, &server).await;
        let (retry, elapsed) = lose_then_retry(&proxy, &services::base(&server), |base| {
            let (http, e) = (http.clone(), e.clone());
            async move { services::promote_at(&http, &base, &e).await }
        })
        .await;
        figures.faults += 1;
        assert_eq!(retry.status, StatusCode::OK, "{retry:?}");
        assert!(retry.is_replay(), "the retry is the replay: {retry:?}");
        figures.recoveries.push(elapsed);
        let count = services::work_orders(&pool, &e).await;
        figures.duplicates += usize::try_from(count - 1).unwrap_or(0);
        assert_eq!(count, 1);
    }
    Some(figures)
}
