//! Item 2: a stale owner. A process with `EXAMPLE_STOP_AT=after_claim`
//! stops itself (SIGSTOP) right after it claimed the record; its lease runs
//! out while it is frozen, a second process takes the record over and
//! completes it; then the first gets SIGCONT and finishes its handler. Its
//! completion is rejected (fenced) and the new owner's outcome stands.

use std::time::{Duration, Instant};

use example_support::testing::{self, Reply};
use http::{Method, StatusCode};

use super::env::{self, Figures, Journal};
use super::services::{self, LEASE, Store};

async fn fenced(http: &testing::HttpClient, server: &example_support::testing::Server) -> u64 {
    let m = testing::send(http, Method::GET, &server.url("/metrics"), None, &[])
        .await
        .expect("metrics");
    testing::series(&m.text(), "idempotency_requests_total{outcome=\"fenced\"}")
}

/// The quickstart on `store`.
pub async fn quickstart(store: Store) -> Figures {
    let journal = Journal::new();
    let http = testing::client();
    let owner = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    // The new owner's order ids start at 2, the stale owner's at 1: their
    // answers differ.
    let warm = services::order(&http, &owner, &user, "warm-up", "warm-up")
        .await
        .unwrap();
    assert_eq!(warm.status, StatusCode::CREATED);
    let trials = env::trials(1, 10);
    let mut figures = Figures {
        case: "stale-owner",
        store: store.name(),
        point: "after_claim",
        trials,
        guarantee: "completion fenced; the stale owner's own effect (outside the store) ran",
        ..Figures::default()
    };
    for t in 0..trials {
        let stale = services::quickstart(
            &store,
            &journal,
            LEASE,
            &[("EXAMPLE_STOP_AT", "after_claim")],
        )
        .await;
        let key = format!("stale-{t}");
        let sku = format!("stale-{t}");
        let frozen = {
            let (http, url, user, key, sku) = (
                http.clone(),
                stale.url("/orders"),
                user.clone(),
                key.clone(),
                sku.clone(),
            );
            tokio::spawn(async move { services::order_at(&http, &url, &user, &key, &sku).await })
        };
        services::wait_stopped(&stale).await;
        let stopped = Instant::now();
        figures.faults += 1;
        let (taken, recovery) = services::until_not_in_flight(stopped, LEASE * 5, || {
            services::order(&http, &owner, &user, &key, &sku)
        })
        .await;
        assert_eq!(taken.status, StatusCode::CREATED, "{taken:?}");
        assert!(
            !taken.is_replay(),
            "{taken:?} after {recovery:?}; effects {:?}; stale owner: {}",
            journal.lines(),
            stale.log_text()
        );
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        figures.recoveries.push(recovery);

        services::resume(&stale);
        let late: Reply = frozen.await.unwrap().expect("the stale owner answers");
        // Its client gets what its handler answered...
        assert_eq!(late.status, StatusCode::CREATED, "{late:?}");
        assert_ne!(late.body, taken.body);
        // ...but its completion was rejected: the record holds the new
        // owner's answer, on either process.
        assert_eq!(fenced(&http, &stale).await, 1, "{}", stale.log_text());
        for server in [&owner, &stale] {
            let replay = services::order(&http, server, &user, &key, &sku)
                .await
                .unwrap();
            assert!(replay.is_replay(), "{replay:?}");
            assert_eq!(replay.body, taken.body, "the new owner's outcome stands");
        }
        let effects = journal.count(&sku);
        assert_eq!(effects, 2, "{:?}", journal.lines());
        figures.duplicates += effects - 1;
    }
    figures
}

/// The promotion service: the stale owner's transaction is rolled back, one
/// work order.
pub async fn promotion() -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let url = db.url.clone();
    let http = testing::client();
    let owner = services::promotion(&url, LEASE, &[]).await;
    let trials = env::trials(1, 10);
    let mut figures = Figures {
        case: "stale-owner",
        store: "postgres-tx",
        point: "after_claim",
        trials,
        guarantee: "0",
        ..Figures::default()
    };
    for _ in 0..trials {
        let stale = services::promotion(&url, LEASE, &[("EXAMPLE_STOP_AT", "after_claim")]).await;
        let e = services::finalized_estimate(&http, &owner).await;
        let frozen = {
            let (http, base, e) = (http.clone(), services::base(&stale), e.clone());
            tokio::spawn(async move { services::promote_at(&http, &base, &e).await })
        };
        services::wait_stopped(&stale).await;
        let stopped = Instant::now();
        figures.faults += 1;
        let base = services::base(&owner);
        let (taken, recovery) = services::until_not_in_flight(stopped, LEASE * 5, || {
            services::promote_at(&http, &base, &e)
        })
        .await;
        assert_eq!(taken.status, StatusCode::CREATED, "{taken:?}");
        assert!(recovery <= LEASE + Duration::from_secs(1), "{recovery:?}");
        figures.recoveries.push(recovery);

        services::resume(&stale);
        let late = frozen.await.unwrap().expect("the stale owner answers");
        assert_eq!(late.status, StatusCode::CONFLICT, "{late:?}");
        assert_eq!(late.problem_slug(), "promotion-superseded", "{late:?}");
        for server in [&owner, &stale] {
            let replay = services::promote_at(&http, &services::base(server), &e)
                .await
                .unwrap();
            assert!(replay.is_replay(), "{replay:?}");
            assert_eq!(
                replay.json()["workorder_id"],
                taken.json()["workorder_id"],
                "the new owner's outcome stands"
            );
        }
        let count = services::work_orders(&pool, &e).await;
        figures.duplicates += usize::try_from(count - 1).unwrap_or(0);
        assert_eq!(count, 1);
    }
    Some(figures)
}
