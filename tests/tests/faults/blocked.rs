//! Item 1, the crash points inside a store call: "before the claim
//! commits" and "during the completion". No hook reaches them; the test
//! holds the statement instead, observes that the service is blocked in it,
//! kills the service with SIGKILL, then lets the statement go.
//!
//! - PostgreSQL: the test's own transaction holds a lock on the record's
//!   key (an uncommitted row of that key for the claim's insert, `SELECT ...
//!   FOR UPDATE` of the pending row for the completion); the service's
//!   backend is seen waiting on it (`pg_blocking_pids`).
//! - Redis: `CLIENT PAUSE ... WRITE` on a private server; the service's
//!   script is seen blocked (`INFO clients`, `blocked_clients`).
//!
//! What each proves is in the function's comment: a statement the dead
//! process sent may still land (PostgreSQL finishes an autocommit statement
//! whose client died), never twice, and the record is recovered within
//! lease + 1 s of the statement's release.

use std::time::{Duration, Instant};

use example_support::testing::{self, Server};
use http::StatusCode;
use idempotency_core::{IdempotencyKey, KeySpec, StorageKey};
use idempotency_postgres::sqlx;

use super::env::{self, Figures, Journal};
use super::redis_server::{Persistence, PrivateRedis};
use super::services::{self, LEASE, Store};

fn quickstart_key(user: &str, key: &str) -> StorageKey {
    KeySpec::new("quickstart")
        .scope(user)
        .client_key(&IdempotencyKey::new(key).expect("a valid key"))
        .storage_key()
}

/// The test's own transaction on the shared database, and its backend pid.
async fn blocker(pool: &sqlx::PgPool) -> (sqlx::Transaction<'static, sqlx::Postgres>, i32) {
    let mut tx = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (tx, pid)
}

/// An uncommitted pending row of `key` in `idempotency.records`: a claim's
/// insert of the same key waits for this transaction.
async fn hold_insert(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, key: &StorageKey) {
    sqlx::query(
        "INSERT INTO idempotency.records \
         (key, fingerprint, state, fence, attempts, claim_kind, token, lease_deadline, created_at, expires_at) \
         VALUES ($1, $2, 'PENDING', 1, 1, 'NEW', $3, now() + interval '1 hour', now(), now() + interval '1 hour')",
    )
    .bind(&key.as_bytes()[..])
    .bind(&[0_u8; 32][..])
    .bind(uuid::Uuid::new_v4())
    .execute(&mut **tx)
    .await
    .unwrap();
}

/// The row lock of `key`'s record: a completion (an update) waits for it.
async fn hold_row(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, key: &StorageKey) {
    let n = sqlx::query("SELECT 1 FROM idempotency.records WHERE key = $1 FOR UPDATE")
        .bind(&key.as_bytes()[..])
        .execute(&mut **tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1, "the record exists");
}

/// Waits until a backend whose statement contains `needle` waits for `holder`.
async fn blocked_on(pool: &sqlx::PgPool, holder: i32, needle: &'static str) {
    let pool = pool.clone();
    testing::eventually(Duration::from_secs(10), needle, move || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE $1 = ANY(pg_blocking_pids(pid)) AND position($2 in query) > 0",
            )
            .bind(holder)
            .bind(needle)
            .fetch_one(&pool)
            .await
            .unwrap();
            n > 0
        }
    })
    .await;
}

/// The first line of the store's claim of a new key (`claim_fast.sql`, the
/// statement that waits on the held insert) and of its completion
/// (`pg_stat_activity.query` holds only the first 1024 bytes of a statement).
const CLAIM_SQL: &str = "-- The claim of a key that has no record yet";
const COMPLETE_SQL: &str = "-- PENDING (this lease, not expired) -> COMPLETED";

fn kill(server: &mut Server) {
    server.signal("KILL");
    let _ = server.wait_exit(Duration::from_secs(10));
}

fn figures(store: &'static str, point: &'static str, guarantee: &'static str) -> Figures {
    Figures {
        case: "crash",
        store,
        point,
        trials: env::trials(1, 10),
        guarantee,
        ..Figures::default()
    }
}

/// Quickstart, PostgreSQL, killed while its claim waits: the claim lands
/// after the release (its backend finishes the statement) as a pending
/// record of the dead process, taken over after the lease; one order.
pub async fn claim_postgres() -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let store = Store::Postgres(db.url.clone());
    let journal = Journal::new();
    let http = testing::client();
    let survivor = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    let mut f = figures("postgres", "during_claim", "0");
    for t in 0..f.trials {
        let mut doomed = services::quickstart(&store, &journal, LEASE, &[]).await;
        let (key, sku) = (format!("claim-{t}"), format!("claim-{t}"));
        let (mut tx, holder) = blocker(&pool).await;
        hold_insert(&mut tx, &quickstart_key(&user, &key)).await;
        let cut = {
            let (http, url, user, key, sku) = (
                http.clone(),
                doomed.url("/orders"),
                user.clone(),
                key.clone(),
                sku.clone(),
            );
            tokio::spawn(async move { services::order_at(&http, &url, &user, &key, &sku).await })
        };
        blocked_on(&pool, holder, CLAIM_SQL).await;
        kill(&mut doomed);
        assert!(cut.await.unwrap().is_err());
        tx.rollback().await.unwrap();
        let released = Instant::now();
        f.faults += 1;
        let (first, recovery) = services::until_not_in_flight(released, LEASE * 5, || {
            services::order(&http, &survivor, &user, &key, &sku)
        })
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(!first.is_replay());
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        f.recoveries.push(recovery);
        let effects = journal.count(&sku);
        f.duplicates += effects.saturating_sub(1);
        assert_eq!(effects, 1, "{:?}", journal.lines());
    }
    Some(f)
}

/// Quickstart, PostgreSQL, killed while its completion waits (the order
/// exists): the completion's backend finishes the statement after the
/// release, so the record is completed with the dead process's answer and
/// the retry replays it; one order.
pub async fn completion_postgres() -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let store = Store::Postgres(db.url.clone());
    let journal = Journal::new();
    let http = testing::client();
    let survivor = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    let mut f = figures("postgres", "during_completion", "0");
    for t in 0..f.trials {
        let mut doomed = services::quickstart(
            &store,
            &journal,
            LEASE,
            &[("EXAMPLE_STOP_AT", "after_effect")],
        )
        .await;
        let (key, sku) = (format!("complete-{t}"), format!("complete-{t}"));
        let cut = {
            let (http, url, user, key, sku) = (
                http.clone(),
                doomed.url("/orders"),
                user.clone(),
                key.clone(),
                sku.clone(),
            );
            tokio::spawn(async move { services::order_at(&http, &url, &user, &key, &sku).await })
        };
        services::wait_stopped(&doomed).await;
        let (mut tx, holder) = blocker(&pool).await;
        hold_row(&mut tx, &quickstart_key(&user, &key)).await;
        services::resume(&doomed);
        blocked_on(&pool, holder, COMPLETE_SQL).await;
        kill(&mut doomed);
        assert!(cut.await.unwrap().is_err());
        tx.rollback().await.unwrap();
        let released = Instant::now();
        f.faults += 1;
        let (first, recovery) = services::until_not_in_flight(released, LEASE * 5, || {
            services::order(&http, &survivor, &user, &key, &sku)
        })
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(
            first.is_replay(),
            "the dead process's completion landed: {first:?}"
        );
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        f.recoveries.push(recovery);
        let effects = journal.count(&sku);
        f.duplicates += effects.saturating_sub(1);
        assert_eq!(effects, 1, "{:?}", journal.lines());
    }
    Some(f)
}

/// A reader of promotion keys and records on the shared database.
async fn promotion_reader(pool: &sqlx::PgPool) -> example_promotion::Service {
    example_promotion::Service::start(pool.clone(), example_promotion::Config::default(), None)
        .await
        .expect("a promotion service to compute keys")
}

/// Promotion, killed while its claim waits: as the quickstart's, and the
/// takeover creates the one work order.
pub async fn claim_in_transaction() -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let reader = promotion_reader(&pool).await;
    let url = db.url.clone();
    let http = testing::client();
    let survivor = services::promotion(&url, LEASE, &[]).await;
    let base = services::base(&survivor);
    let mut f = figures("postgres-tx", "during_claim", "0");
    for _ in 0..f.trials {
        let mut doomed = services::promotion(&url, LEASE, &[]).await;
        let e = services::finalized_estimate(&http, &survivor).await;
        let (mut tx, holder) = blocker(&pool).await;
        hold_insert(&mut tx, &reader.promotion_key(&e, "1")).await;
        let cut = {
            let (http, b, e) = (http.clone(), services::base(&doomed), e.clone());
            tokio::spawn(async move { services::promote_at(&http, &b, &e).await })
        };
        blocked_on(&pool, holder, CLAIM_SQL).await;
        kill(&mut doomed);
        assert!(cut.await.unwrap().is_err());
        tx.rollback().await.unwrap();
        let released = Instant::now();
        f.faults += 1;
        let (first, recovery) = services::until_not_in_flight(released, LEASE * 5, || {
            services::promote_at(&http, &base, &e)
        })
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        f.recoveries.push(recovery);
        let count = services::work_orders(&pool, &e).await;
        f.duplicates += usize::try_from(count - 1).unwrap_or(0);
        assert_eq!(count, 1);
    }
    Some(f)
}

/// Promotion, killed while its in-transaction completion waits (the work
/// order is written in the same transaction): the transaction never
/// commits, the takeover creates the one work order.
pub async fn completion_in_transaction() -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let reader = promotion_reader(&pool).await;
    let url = db.url.clone();
    let http = testing::client();
    let survivor = services::promotion(&url, LEASE, &[]).await;
    let base = services::base(&survivor);
    let mut f = figures("postgres-tx", "during_completion", "0");
    for _ in 0..f.trials {
        let mut doomed =
            services::promotion(&url, LEASE, &[("EXAMPLE_STOP_AT", "after_claim")]).await;
        let e = services::finalized_estimate(&http, &survivor).await;
        let cut = {
            let (http, b, e) = (http.clone(), services::base(&doomed), e.clone());
            tokio::spawn(async move { services::promote_at(&http, &b, &e).await })
        };
        services::wait_stopped(&doomed).await;
        let (mut tx, holder) = blocker(&pool).await;
        hold_row(&mut tx, &reader.promotion_key(&e, "1")).await;
        services::resume(&doomed);
        blocked_on(&pool, holder, COMPLETE_SQL).await;
        kill(&mut doomed);
        assert!(cut.await.unwrap().is_err());
        tx.rollback().await.unwrap();
        let released = Instant::now();
        f.faults += 1;
        let (first, recovery) = services::until_not_in_flight(released, LEASE * 5, || {
            services::promote_at(&http, &base, &e)
        })
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(!first.is_replay(), "{first:?}");
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        f.recoveries.push(recovery);
        let count = services::work_orders(&pool, &e).await;
        f.duplicates += usize::try_from(count - 1).unwrap_or(0);
        assert_eq!(count, 1);
    }
    Some(f)
}

async fn blocked_script(redis: &PrivateRedis) {
    testing::eventually(Duration::from_secs(10), "a blocked script", || async {
        redis.info_clients("blocked_clients") > 0
    })
    .await;
}

/// Quickstart, private Redis, killed while its claim script waits behind
/// `CLIENT PAUSE WRITE`: Redis drops the dead client's queued script, the
/// key was never claimed, the retry runs at once; one order.
pub async fn claim_redis() -> Option<Figures> {
    if !super::redis_server::available() {
        return None;
    }
    let redis = PrivateRedis::start(Persistence::None);
    let store = Store::Redis(redis.url());
    let journal = Journal::new();
    let http = testing::client();
    let survivor = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    let mut f = figures("redis", "during_claim", "0");
    for t in 0..f.trials {
        let mut doomed = services::quickstart(&store, &journal, LEASE, &[]).await;
        let (key, sku) = (format!("claim-{t}"), format!("claim-{t}"));
        assert!(redis.command("CLIENT PAUSE 60000 WRITE").starts_with("+OK"));
        let cut = {
            let (http, url, user, key, sku) = (
                http.clone(),
                doomed.url("/orders"),
                user.clone(),
                key.clone(),
                sku.clone(),
            );
            tokio::spawn(async move { services::order_at(&http, &url, &user, &key, &sku).await })
        };
        blocked_script(&redis).await;
        kill(&mut doomed);
        assert!(cut.await.unwrap().is_err());
        testing::eventually(Duration::from_secs(5), "the dead client gone", || async {
            redis.info_clients("blocked_clients") == 0
        })
        .await;
        assert!(redis.command("CLIENT UNPAUSE").starts_with("+OK"));
        let released = Instant::now();
        f.faults += 1;
        let (first, recovery) = services::until_not_in_flight(released, LEASE * 5, || {
            services::order(&http, &survivor, &user, &key, &sku)
        })
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(!first.is_replay());
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        f.recoveries.push(recovery);
        let effects = journal.count(&sku);
        f.duplicates += effects.saturating_sub(1);
        assert_eq!(effects, 1, "{:?}", journal.lines());
    }
    Some(f)
}

/// Quickstart, private Redis, killed while its completion script waits
/// behind `CLIENT PAUSE WRITE` (the order exists): the completion never
/// runs, the record is taken over after the lease and the handler runs
/// again, as at the `after_effect` crash point: an effect outside the store
/// is at least once across a crash.
pub async fn completion_redis() -> Option<Figures> {
    if !super::redis_server::available() {
        return None;
    }
    let redis = PrivateRedis::start(Persistence::None);
    let store = Store::Redis(redis.url());
    let journal = Journal::new();
    let http = testing::client();
    let survivor = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    let mut f = figures(
        "redis",
        "during_completion",
        "1 per crash: an effect outside the store runs again",
    );
    for t in 0..f.trials {
        let mut doomed = services::quickstart(
            &store,
            &journal,
            LEASE,
            &[("EXAMPLE_STOP_AT", "after_effect")],
        )
        .await;
        let (key, sku) = (format!("complete-{t}"), format!("complete-{t}"));
        let cut = {
            let (http, url, user, key, sku) = (
                http.clone(),
                doomed.url("/orders"),
                user.clone(),
                key.clone(),
                sku.clone(),
            );
            tokio::spawn(async move { services::order_at(&http, &url, &user, &key, &sku).await })
        };
        services::wait_stopped(&doomed).await;
        assert!(redis.command("CLIENT PAUSE 60000 WRITE").starts_with("+OK"));
        services::resume(&doomed);
        blocked_script(&redis).await;
        kill(&mut doomed);
        assert!(cut.await.unwrap().is_err());
        testing::eventually(Duration::from_secs(5), "the dead client gone", || async {
            redis.info_clients("blocked_clients") == 0
        })
        .await;
        assert!(redis.command("CLIENT UNPAUSE").starts_with("+OK"));
        let released = Instant::now();
        f.faults += 1;
        let (first, recovery) = services::until_not_in_flight(released, LEASE * 5, || {
            services::order(&http, &survivor, &user, &key, &sku)
        })
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(!first.is_replay(), "the completion never ran: {first:?}");
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        f.recoveries.push(recovery);
        let effects = journal.count(&sku);
        f.duplicates += effects.saturating_sub(1);
        assert_eq!(effects, 2, "{:?}", journal.lines());
    }
    Some(f)
}
