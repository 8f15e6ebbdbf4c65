//! The fault suite: real example processes (the quickstart, the promotion
//! service) against real PostgreSQL and Redis, on loopback, bounded in
//! time. Each case counts side effects from the system of record, not from
//! the answers, and measures how soon the service recovered.
//!
//! | case | module | what is proven |
//! |---|---|---|
//! | kill -9 at each crash point | [`crash`], [`blocked`] | the record is recovered within lease + 1 s; no duplicate effect where the effect commits with the record |
//! | a stale owner (SIGSTOP past its lease, SIGCONT) | [`stale`] | its completion is rejected, the new owner's outcome stands |
//! | the store restarted under load | [`restart`] | 503 + `Retry-After` while down, never a 5xx replay, no duplicate, throughput back within 5 s |
//! | lost responses | [`lost`] | the retry gets the replay, one effect |
//! | clients disconnecting mid-request | [`disconnect`] | no record left pending (a claim cut short is released), no bad pooled connection |
//! | a PostgreSQL crash after an asynchronous claim | [`claim_commit`] | `ClaimCommit::Asynchronous` can be forgotten by a server crash, a durable claim cannot |
//!
//! By default every case runs once with bounded counts (the CI subset);
//! `FAULTS_FULL=1` runs the full matrix, and `FAULTS_REPORT=<file>` appends
//! each case's figures as a JSON line (`RELIABILITY.md` is made from them):
//!
//! ```text
//! FAULTS_FULL=1 FAULTS_REPORT=/tmp/faults.jsonl \
//!   cargo test -p idempotency-tests --test faults -- --test-threads=1 --nocapture
//! ```
//!
//! The cases run one at a time whatever `--test-threads` says (they start
//! servers and measure recovery times). Destructive cases (restart, pause,
//! inspect every session) use private PostgreSQL and Redis servers on free
//! ports, never the shared ones; the other PostgreSQL cases each create a
//! database of their own on the shared server (dropped at their end), so
//! the schema versions of other suites sharing `test` never meet theirs.

#![allow(unreachable_pub)]

mod blocked;
mod claim_commit;
mod crash;
mod disconnect;
mod env;
mod lost;
mod pg;
mod redis_server;
mod restart;
mod services;
mod stale;

use services::Store;

/// A database of the case's own on the shared PostgreSQL, as a quickstart
/// store, when it answers.
async fn shared_pg() -> Option<(env::CaseDatabase, Store)> {
    let db = env::shared_postgres().await?;
    let store = Store::Postgres(db.url.clone());
    Some((db, store))
}

/// The shared Redis as a quickstart store, when it answers.
async fn shared_redis() -> Option<Store> {
    env::shared_redis()
        .await
        .then(|| Store::Redis(env::redis_url()))
}

macro_rules! case {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let _one = env::serial().await;
            if let Some(figures) = $body.await {
                figures.report();
            }
        }
    };
}

async fn quickstart_crash(store: Option<Store>, point: &'static str) -> Option<env::Figures> {
    Some(crash::quickstart(store?, point).await)
}

async fn quickstart_crash_pg(point: &'static str) -> Option<env::Figures> {
    let (_db, store) = shared_pg().await?;
    Some(crash::quickstart(store, point).await)
}

case!(
    crash_after_claim_postgres,
    quickstart_crash_pg("after_claim")
);
case!(
    crash_after_effect_postgres,
    quickstart_crash_pg("after_effect")
);
case!(crash_after_claim_redis, async {
    quickstart_crash(shared_redis().await, "after_claim").await
});
case!(crash_after_effect_redis, async {
    quickstart_crash(shared_redis().await, "after_effect").await
});
case!(
    crash_after_claim_in_transaction,
    crash::promotion("after_claim")
);
case!(
    crash_before_commit_in_transaction,
    crash::promotion("before_commit")
);
case!(
    crash_after_commit_in_transaction,
    crash::promotion("after_commit")
);

case!(crash_during_claim_postgres, blocked::claim_postgres());
case!(
    crash_during_completion_postgres,
    blocked::completion_postgres()
);
case!(
    crash_during_claim_in_transaction,
    blocked::claim_in_transaction()
);
case!(
    crash_during_completion_in_transaction,
    blocked::completion_in_transaction()
);
case!(crash_during_claim_redis, blocked::claim_redis());
case!(crash_during_completion_redis, blocked::completion_redis());

case!(stale_owner_postgres, async {
    let (_db, store) = shared_pg().await?;
    Some(stale::quickstart(store).await)
});
case!(stale_owner_redis, async {
    Some(stale::quickstart(shared_redis().await?).await)
});
case!(stale_owner_in_transaction, stale::promotion());

case!(store_restart_postgres, restart::postgres());
case!(store_restart_redis, restart::redis());

case!(lost_response_postgres, async {
    let (_db, store) = shared_pg().await?;
    Some(lost::quickstart(store).await)
});
case!(lost_response_redis, async {
    Some(lost::quickstart(shared_redis().await?).await)
});
case!(lost_response_in_transaction, lost::promotion());

case!(disconnects_postgres, disconnect::postgres());
case!(disconnects_redis, disconnect::redis());

/// A real crash of a private server after a durable and an asynchronous
/// claim (`ClaimCommit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_claim_is_forgotten_by_a_server_crash_a_durable_one_is_not() {
    let _one = env::serial().await;
    if !pg::available() {
        return;
    }
    claim_commit::forgotten_by_a_crash().await;
}
