//! Item 1: `kill -9` at each crash point of the handler. A process with
//! `EXAMPLE_CRASH_AT=<point>` SIGKILLs itself exactly there; a second
//! process on the same store serves the client's retries. The effects are
//! counted from the system of record (the quickstart's effect journal, the
//! promotion's `work_orders` table), the recovery is the time from the
//! death to the first answer that is not 409 in-flight.

use std::time::{Duration, Instant};

use example_support::testing;
use http::StatusCode;

use super::env::{self, Figures, Journal};
use super::services::{self, LEASE, Store};

/// The quickstart (effects in process memory, journaled) on `store`,
/// crashed at `point` (`after_claim` or `after_effect`).
pub async fn quickstart(store: Store, point: &'static str) -> Figures {
    let journal = Journal::new();
    let http = testing::client();
    let survivor = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    let trials = env::trials(1, 20);
    let mut figures = Figures {
        case: "crash",
        store: store.name(),
        point,
        trials,
        guarantee: if point == "after_effect" {
            "1 per crash: an effect outside the store runs again"
        } else {
            "0"
        },
        ..Figures::default()
    };
    for t in 0..trials {
        let mut doomed =
            services::quickstart(&store, &journal, LEASE, &[("EXAMPLE_CRASH_AT", point)]).await;
        let key = format!("crash-{t}");
        let sku = format!("{point}-{t}");
        let cut = services::order(&http, &doomed, &user, &key, &sku).await;
        assert!(cut.is_err(), "the crashing process answered: {cut:?}");
        services::wait_killed(&mut doomed);
        let died = Instant::now();
        figures.faults += 1;
        let (first, recovery) = services::until_not_in_flight(died, LEASE * 5, || {
            services::order(&http, &survivor, &user, &key, &sku)
        })
        .await;
        // The record was never completed: the retry takes it over and runs.
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert!(!first.is_replay(), "{first:?}");
        let again = services::order(&http, &survivor, &user, &key, &sku)
            .await
            .unwrap();
        assert!(again.is_replay() && again.body == first.body, "{again:?}");
        assert!(
            recovery <= LEASE + Duration::from_secs(1),
            "recovered in {recovery:?}"
        );
        figures.recoveries.push(recovery);
        let effects = journal.count(&sku);
        figures.duplicates += effects.saturating_sub(1);
        match point {
            // Nothing was done: one order, the survivor's.
            "after_claim" => assert_eq!(effects, 1, "{:?}", journal.lines()),
            // The order exists and its record was never completed: the
            // takeover runs the handler again. An effect outside the
            // store's transaction is at least once across a crash (the
            // in-transaction completion is exactly once: see `promotion`).
            "after_effect" => {
                assert_eq!(effects, 2, "{:?}", journal.lines());
            }
            other => panic!("unknown point {other}"),
        }
    }
    figures
}

/// The promotion service (work order, completion and audit event in one
/// PostgreSQL transaction), crashed at `point` (`after_claim`,
/// `before_commit` or `after_commit`): one work order every time.
pub async fn promotion(point: &'static str) -> Option<Figures> {
    let db = env::shared_postgres().await?;
    let pool = db.pool.clone();
    let url = db.url.clone();
    let http = testing::client();
    let survivor = services::promotion(&url, LEASE, &[]).await;
    let trials = env::trials(1, 20);
    let mut figures = Figures {
        case: "crash",
        store: "postgres-tx",
        point,
        trials,
        guarantee: "0",
        ..Figures::default()
    };
    for _ in 0..trials {
        let mut doomed = services::promotion(&url, LEASE, &[("EXAMPLE_CRASH_AT", point)]).await;
        let e = services::finalized_estimate(&http, &survivor).await;
        let cut = services::promote_at(&http, &services::base(&doomed), &e).await;
        assert!(cut.is_err(), "the crashing process answered: {cut:?}");
        services::wait_killed(&mut doomed);
        let died = Instant::now();
        figures.faults += 1;
        let base = services::base(&survivor);
        let (first, recovery) = services::until_not_in_flight(died, LEASE * 5, || {
            services::promote_at(&http, &base, &e)
        })
        .await;
        if point == "after_commit" {
            // Committed: the retry is the replay of the first answer.
            assert_eq!(first.status, StatusCode::OK, "{first:?}");
            assert!(first.is_replay(), "{first:?}");
        } else {
            // Rolled back or never begun: the takeover creates it.
            assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
            assert!(!first.is_replay(), "{first:?}");
        }
        assert!(
            recovery <= LEASE + Duration::from_secs(1),
            "recovered in {recovery:?}"
        );
        figures.recoveries.push(recovery);
        let count = services::work_orders(&pool, &e).await;
        figures.duplicates += usize::try_from(count - 1).unwrap_or(0);
        assert_eq!(count, 1, "{e}: one work order");
    }
    Some(figures)
}
