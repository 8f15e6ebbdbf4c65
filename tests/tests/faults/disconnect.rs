//! Item 5: clients that disconnect mid-request. Raw TCP clients, 64 at a
//! time, send `POST /orders` (some only half of the body) and close the
//! connection after 0 to 150 ms while the handler sleeps 0 to 40 ms: the
//! disconnect lands before the claim, in the handler, during the completion
//! or after the answer. Then no record is left `Pending` past its lease,
//! and the service's pooled connections still work: fresh requests all
//! execute once and replay, and (PostgreSQL) no session of the service is
//! left `idle in transaction`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use example_support::testing;
use http::StatusCode;
use idempotency_core::{IdempotencyKey, IdempotencyStore, KeySpec, RecordState, StorageKey};
use idempotency_postgres::sqlx;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::env::{self, Figures, Journal};
use super::services::{self, LEASE, Store};

/// The storage key the quickstart's layer computes for `user`'s `key`.
fn quickstart_key(user: &str, key: &str) -> StorageKey {
    KeySpec::new("quickstart")
        .scope(user)
        .client_key(&IdempotencyKey::new(key).expect("a valid key"))
        .storage_key()
}

/// The body of the `i`th disconnecting request: its handler sleeps 0 to 40 ms.
fn hangup_body(key: &str, i: usize) -> String {
    let delay_ms = (i as u64 * 7) % 41;
    format!(r#"{{"sku":"{key}","quantity":1,"simulate":{{"delay_ms":{delay_ms}}}}}"#)
}

/// One client: sends the request (the whole body, or half of it) and
/// closes after `after`.
async fn hang_up(
    addr: std::net::SocketAddr,
    user: &str,
    key: &str,
    body: &str,
    after: Duration,
    half: bool,
) {
    let head = format!(
        "POST /orders HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {user}\r\n\
         idempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let Ok(mut s) = TcpStream::connect(addr).await else {
        panic!("connect to the service");
    };
    let sent = if half {
        &body.as_bytes()[..body.len() / 2]
    } else {
        body.as_bytes()
    };
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(sent).await;
    tokio::time::sleep(after).await;
    // Dropping the stream closes the connection.
}

async fn storm<S: IdempotencyStore>(store: Store, reader: S, pg: Option<sqlx::PgPool>) -> Figures {
    let journal = Journal::new();
    let http = testing::client();
    let server = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    // The key computation is the layer's: a completed probe is found.
    let probe = services::order(&http, &server, &user, "probe", "probe")
        .await
        .unwrap();
    assert_eq!(probe.status, StatusCode::CREATED);
    let found = reader.get(&quickstart_key(&user, "probe")).await.unwrap();
    assert!(
        matches!(found.map(|r| r.state), Some(RecordState::Completed(_))),
        "the probe's record"
    );

    let n = env::trials(1_000, 10_000);
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let user = user.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let key = format!("hangup-{i}");
            let after = Duration::from_millis((i as u64 * 13) % 151);
            hang_up(addr, &user, &key, &hangup_body(&key, i), after, i % 10 == 0).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let storm_took = started.elapsed();

    // Once a request owns its key, a disconnect detaches its handler,
    // which completes the record (or fails it). A disconnect while the
    // claim itself is in flight hands the claim to a task of its own,
    // which releases the lease it gets: no record is left pending. (Were
    // one left, by a release that failed, it must not outlive its lease,
    // and the next request with the key takes it over at once.)
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (mut pending, mut completed, mut failed, mut absent) = (0, 0, 0, 0);
    let mut lapsed = Vec::new();
    for i in 0..n {
        let key = quickstart_key(&user, &format!("hangup-{i}"));
        match reader.get(&key).await.unwrap().map(|r| r.state) {
            None => absent += 1,
            Some(RecordState::Pending(p)) => {
                pending += 1;
                let deadline = u128::from(p.lease_deadline.as_millis());
                assert!(
                    deadline <= now_ms,
                    "hangup-{i}: pending with a live lease {}ms after the storm",
                    LEASE.as_millis() + 500
                );
                lapsed.push(i);
            }
            Some(RecordState::Completed(_)) => completed += 1,
            Some(RecordState::Failed(_)) => failed += 1,
            Some(other) => panic!("hangup-{i}: {other:?}"),
        }
    }
    assert!(
        lapsed.is_empty(),
        "claims cut short by a disconnect are released: {} left pending, e.g. hangup-{}",
        lapsed.len(),
        lapsed[0]
    );
    let auth = format!("Bearer {user}");
    for &i in &lapsed {
        let key = format!("hangup-{i}");
        let retry = testing::send(
            &http,
            http::Method::POST,
            &server.url("/orders"),
            Some(&hangup_body(&key, i)),
            &[("authorization", &auth), ("idempotency-key", &key)],
        )
        .await
        .unwrap();
        assert_eq!(
            retry.status,
            StatusCode::CREATED,
            "{key}: taken over at once: {retry:?}"
        );
        assert!(!retry.is_replay());
    }

    // No pooled connection came back in a bad state: fresh requests on
    // every connection of the pool run once and replay.
    let fresh: Vec<_> = (0..200)
        .map(|i| {
            let (http, url, user) = (http.clone(), server.url("/orders"), user.clone());
            tokio::spawn(async move {
                let key = format!("after-{i}");
                let first = services::order_at(&http, &url, &user, &key, &key)
                    .await
                    .unwrap();
                let again = services::order_at(&http, &url, &user, &key, &key)
                    .await
                    .unwrap();
                (first, again)
            })
        })
        .collect();
    for t in fresh {
        let (first, again) = t.await.unwrap();
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(!first.is_replay());
        assert!(again.is_replay() && again.body == first.body, "{again:?}");
    }
    if let Some(pg) = &pg {
        // A session can be inside a transaction for a moment (the audit
        // trail appends in one); one that stays there was handed back in a
        // bad state.
        let pg = pg.clone();
        testing::eventually(
            Duration::from_secs(5),
            "no session idle in a transaction",
            move || {
                let pg = pg.clone();
                async move {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = 'test' AND state LIKE 'idle in transaction%' \
                       AND pid <> pg_backend_pid()",
                    )
                    .fetch_one(&pg)
                    .await
                    .unwrap();
                    n == 0
                }
            },
        )
        .await;
    }
    // Each key ran at most once: no retries were sent.
    let mut duplicates = 0;
    let lines = journal.lines();
    let mut per_key = std::collections::HashMap::<&str, usize>::new();
    for l in &lines {
        if let Some(sku) = l.rsplit(' ').next() {
            *per_key.entry(sku).or_default() += 1;
        }
    }
    for (sku, count) in per_key {
        assert_eq!(count, 1, "{sku}");
        duplicates += count - 1;
    }
    Figures {
        case: "disconnects",
        store: store.name(),
        trials: n,
        faults: n,
        duplicates,
        guarantee: "0 pending: a claim cut short by a disconnect is released",
        extra: vec![
            ("storm_ms", storm_took.as_millis().to_string()),
            (
                "records",
                format!(
                    "completed {completed}, failed {failed}, absent {absent}, \
                     pending {pending}"
                ),
            ),
        ],
        ..Figures::default()
    }
}

/// On a private PostgreSQL (every session on it is the service's).
pub async fn postgres() -> Option<Figures> {
    if !super::pg::available() {
        return None;
    }
    let pg = super::pg::PrivatePostgres::start().await;
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let reader = idempotency_postgres::PostgresStore::builder()
        .build(pool.clone())
        .unwrap();
    Some(storm(Store::Postgres(pg.url()), reader, Some(pool)).await)
}

/// On the shared Redis.
pub async fn redis() -> Option<Figures> {
    if !env::shared_redis().await {
        return None;
    }
    let reader =
        idempotency_redis::RedisStore::new(idempotency_redis::RedisConfig::new(env::redis_url()))
            .unwrap();
    Some(storm(Store::Redis(env::redis_url()), reader, None).await)
}
