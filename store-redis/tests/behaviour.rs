//! Redis-specific behaviour on the shared server: key layout, expiry
//! (`PX` versus stored timestamps), corrupted data written behind the
//! store's back, configuration errors, cross-store notifications.

mod common;

use std::time::{Duration, Instant};

use idempotency_core::conformance::support::{acquire, claim_and_complete, value};
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Failure, Fingerprint, IdempotencyStore, Outcome,
    RecordState, Resolution, StateKind, StorageKey, StoreError,
};
use idempotency_redis::redis::{self, AsyncCommands};
use idempotency_redis::{ConfigError, ConnectionMode, RedisConfig, RedisStore};

fn key() -> StorageKey {
    StorageKey::from_segments(&[b"behaviour".as_slice(), uuid::Uuid::new_v4().as_bytes()])
}

fn req(key: StorageKey) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("behaviour", b"1"),
        lease: Duration::from_secs(10),
        retention: Duration::from_secs(60),
        max_attempts: 3,
    }
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_are_prefix_and_hash_tagged_storage_key() {
    let Some(store) = common::store().await else {
        return;
    };
    let k = key();
    let expected = format!("{}:{{{}}}", store.config().key_prefix(), k.to_hex());
    assert_eq!(store.record_key(&k), expected);
    acquire(&store, &req(k)).await;
    let mut raw = raw().await;
    assert!(raw.exists::<_, bool>(&expected).await.unwrap());
    // Binary fields are stored raw: compact.
    assert_eq!(
        redis::cmd("HSTRLEN")
            .arg(&expected)
            .arg("f")
            .query_async::<usize>(&mut raw)
            .await
            .unwrap(),
        32
    );
    assert_eq!(
        redis::cmd("HSTRLEN")
            .arg(&expected)
            .arg("t")
            .query_async::<usize>(&mut raw)
            .await
            .unwrap(),
        16
    );
    assert_eq!(
        store.change_channel(),
        format!("{}:changes", store.config().key_prefix())
    );
}

#[tokio::test]
async fn px_covers_the_stored_lifetime_and_corrupted_records_persist() {
    let Some(store) = common::store().await else {
        return;
    };
    let mut raw = raw().await;
    let k = key();
    let rk = store.record_key(&k);
    let (lease, _) = acquire(&store, &req(k)).await;
    let pttl: i64 = raw.pttl(&rk).await.unwrap();
    assert!((59_000..=60_000).contains(&pttl), "pending: {pttl}");

    // A lease longer than the retention keeps the key for the lease.
    let k2 = key();
    let long = ClaimRequest {
        lease: Duration::from_secs(120),
        ..req(k2)
    };
    acquire(&store, &long).await;
    let pttl: i64 = raw.pttl(store.record_key(&k2)).await.unwrap();
    assert!((119_000..=120_000).contains(&pttl), "long lease: {pttl}");

    // Completion restarts retention from the store's now (offset included).
    store.advance(Duration::from_secs(30));
    store.complete(&lease, value("v")).await.unwrap();
    let pttl: i64 = raw.pttl(&rk).await.unwrap();
    assert!((59_000..=60_000).contains(&pttl), "completed: {pttl}");

    // The stored timestamp decides, even while Redis still holds the key.
    store.advance(Duration::from_secs(61));
    assert!(raw.exists::<_, bool>(&rk).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), None);

    // Corrupted: no expiry at all.
    let k3 = key();
    let (pending, _) = acquire(&store, &req(k3)).await;
    let observed = idempotency_core::Observed::new(StateKind::Pending, pending.fence);
    store.mark_corrupted(&k3, observed, "gone").await.unwrap();
    let pttl: i64 = raw.pttl(store.record_key(&k3)).await.unwrap();
    assert_eq!(pttl, -1, "corrupted records never expire");
    // Resolved into a failure: a day of retention again.
    store
        .resolve(
            &k3,
            Resolution::Fail(idempotency_core::Failure::terminal("x")),
        )
        .await
        .unwrap();
    let pttl: i64 = raw.pttl(store.record_key(&k3)).await.unwrap();
    assert!(pttl > 86_000_000, "resolved failure: {pttl}");
}

/// A completion or a failure rewrites the fence floor only when the one
/// the claim wrote would outlive the record by less than an hour: either
/// way the floor outlives it by at least an hour.
#[tokio::test]
async fn the_floor_outlives_a_finished_record_by_an_hour() {
    let Some(store) = common::store().await else {
        return;
    };
    let mut raw = raw().await;
    for (late, fail) in [(0, false), (0, true), (90, false), (90, true)] {
        let k = key();
        let (rk, floor) = (store.record_key(&k), store.fence_key(&k));
        let req = ClaimRequest {
            retention: Duration::from_secs(2 * 3600),
            ..req(k)
        };
        let (lease, _) = acquire(&store, &req).await;
        // The owner finishes `late` minutes after its claim: past its lease,
        // but the record has not expired, so it still owns it. At 90
        // minutes the claim's floor would outlive the finished record by
        // less than an hour, and is rewritten.
        store.advance(Duration::from_secs(late * 60));
        if fail {
            store.fail(&lease, Failure::terminal("boom")).await.unwrap();
        } else {
            store.complete(&lease, value("ok")).await.unwrap();
        }
        let record_ttl: i64 = raw.pttl(&rk).await.unwrap();
        let floor_ttl: i64 = raw.pttl(&floor).await.unwrap();
        assert!(
            floor_ttl >= record_ttl + 3_590_000,
            "{late} min, fail {fail}: {record_ttl} / {floor_ttl}"
        );
        assert_eq!(raw.get::<_, u64>(&floor).await.unwrap(), lease.fence);
    }
}

/// The fence floor keeps a key's fences increasing after its record is
/// gone: released, deleted behind the store's back (as Redis's own expiry
/// does), or with the floor gone too (then the server clock decides).
#[tokio::test]
async fn fences_keep_increasing_once_the_record_is_gone() {
    let Some(store) = common::store().await else {
        return;
    };
    let mut raw = raw().await;
    let k = key();
    let (rk, floor) = (store.record_key(&k), store.fence_key(&k));
    let (first, _) = acquire(&store, &req(k)).await;
    assert_eq!(
        raw.get::<_, u64>(&floor).await.unwrap(),
        first.fence,
        "the floor holds the record's fence"
    );
    let record_ttl: i64 = raw.pttl(&rk).await.unwrap();
    let floor_ttl: i64 = raw.pttl(&floor).await.unwrap();
    assert!(
        floor_ttl >= record_ttl + 3_590_000,
        "the floor outlives the record by an hour: {record_ttl} / {floor_ttl}"
    );

    // Released: the floor stays two hours (at least one is guaranteed).
    store.release(&first).await.unwrap();
    assert!(!raw.exists::<_, bool>(&rk).await.unwrap());
    let floor_ttl: i64 = raw.pttl(&floor).await.unwrap();
    assert!((7_190_000..=7_200_000).contains(&floor_ttl), "{floor_ttl}");
    let (second, _) = acquire(&store, &req(k)).await;
    assert!(second.fence > first.fence);

    // The record vanishes without a script (Redis expired or evicted it).
    let () = raw.del(&rk).await.unwrap();
    let (third, _) = acquire(&store, &req(k)).await;
    assert!(third.fence > second.fence);

    // The floor is gone as well: the server clock still moves forward.
    let () = raw.del(&[&rk, &floor]).await.unwrap();
    let (fourth, _) = acquire(&store, &req(k)).await;
    assert!(fourth.fence > third.fence);

    // A floor written by a store whose clock runs ahead wins over this
    // store's clock: fences never go back.
    let () = raw.del(&rk).await.unwrap();
    let ahead = fourth.fence + 3_600_000_000;
    let () = raw.set(&floor, ahead).await.unwrap();
    let (fifth, _) = acquire(&store, &req(k)).await;
    assert_eq!(fifth.fence, ahead + 1);
    // Completion and renewal keep the floor with the record.
    let fifth = store.renew(&fifth).await.unwrap();
    store.complete(&fifth, value("v")).await.unwrap();
    assert_eq!(raw.get::<_, u64>(&floor).await.unwrap(), fifth.fence);
    assert!(raw.pttl::<_, i64>(&floor).await.unwrap() > raw.pttl::<_, i64>(&rk).await.unwrap());
}

/// A fence floor that is not a string (written by something else) is
/// replaced by the claim of a new key, as a plain `SET` would: the claim
/// acquires, and the floor holds its fence.
#[tokio::test]
async fn a_floor_of_another_type_is_replaced_by_a_new_claim() {
    let Some(store) = common::store().await else {
        return;
    };
    let mut raw = raw().await;
    let k = key();
    let floor = store.fence_key(&k);
    let () = redis::cmd("RPUSH")
        .arg(&floor)
        .arg("not a fence")
        .query_async(&mut raw)
        .await
        .unwrap();
    let (lease, kind) = acquire(&store, &req(k)).await;
    assert_eq!(kind, ClaimKind::New);
    assert_eq!(raw.get::<_, u64>(&floor).await.unwrap(), lease.fence);
    let record_ttl: i64 = raw.pttl(store.record_key(&k)).await.unwrap();
    let floor_ttl: i64 = raw.pttl(&floor).await.unwrap();
    assert!(
        floor_ttl >= record_ttl + 3_590_000,
        "{record_ttl} / {floor_ttl}"
    );
    store.complete(&lease, value("v")).await.unwrap();
    assert!(matches!(
        store.claim(&req(k)).await.unwrap(),
        Claim::Completed(c) if c.fence == lease.fence
    ));
}

#[tokio::test]
async fn garbage_outcome_bytes_mark_the_record_corrupted_on_claim() {
    let Some(store) = common::store().await else {
        return;
    };
    let k = key();
    let r = req(k);
    let lease = claim_and_complete(&store, &r, value("fine")).await;
    let mut raw = raw().await;
    let rk = store.record_key(&k);
    let () = raw
        .hset(&rk, "o", b"\x01R\xff\xff garbage".as_slice())
        .await
        .unwrap();
    match store.claim(&r).await.unwrap() {
        Claim::Corrupted { detail } => assert!(detail.contains("cannot be decoded"), "{detail}"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // Marked in the store: every later claim (any fingerprint) is blocked.
    assert_eq!(raw.hget::<_, _, String>(&rk, "s").await.unwrap(), "X");
    assert_eq!(raw.pttl::<_, i64>(&rk).await.unwrap(), -1);
    let other = ClaimRequest {
        fingerprint: Fingerprint::of_bytes("behaviour", b"2"),
        ..r.clone()
    };
    assert!(matches!(
        store.claim(&other).await.unwrap(),
        Claim::Corrupted { .. }
    ));
    let rec = store.get(&k).await.unwrap().unwrap();
    assert!(matches!(rec.state, RecordState::Corrupted(_)));
    assert_eq!((rec.fence, rec.attempts), (lease.fence, 1));
    // An operator clears it; the next claim starts afresh.
    store.resolve(&k, Resolution::Delete).await.unwrap();
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Acquired {
            kind: ClaimKind::New,
            ..
        }
    ));
}

#[tokio::test]
async fn garbage_outcome_bytes_mark_the_record_corrupted_on_get() {
    let Some(store) = common::store().await else {
        return;
    };
    let k = key();
    let (lease, _) = acquire(&store, &req(k)).await;
    store
        .complete(&lease, value("fine").with_resource("/things/1"))
        .await
        .unwrap();
    let mut raw = raw().await;
    let rk = store.record_key(&k);
    let () = raw.hset(&rk, "r", b"\xff\xfe".as_slice()).await.unwrap();
    let rec = store.get(&k).await.unwrap().unwrap();
    match &rec.state {
        RecordState::Corrupted(c) => assert!(c.detail.contains("UTF-8"), "{c:?}"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert_eq!(raw.hget::<_, _, String>(&rk, "s").await.unwrap(), "X");
    assert!(matches!(
        store.claim(&req(k)).await.unwrap(),
        Claim::Corrupted { .. }
    ));
}

#[tokio::test]
async fn foreign_and_malformed_values_become_corrupted_records() {
    let Some(store) = common::store().await else {
        return;
    };
    let mut raw = raw().await;

    // Not a hash at all.
    let k = key();
    let rk = store.record_key(&k);
    let () = raw
        .set(&rk, b"\x00\x01 not a record".as_slice())
        .await
        .unwrap();
    match store.claim(&req(k)).await.unwrap() {
        Claim::Corrupted { detail } => assert_eq!(detail, "record is not a hash"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        redis::cmd("TYPE")
            .arg(&rk)
            .query_async::<String>(&mut raw)
            .await
            .unwrap(),
        "hash"
    );

    // A hash missing what its state needs.
    let k = key();
    let rk = store.record_key(&k);
    let () = raw
        .hset_multiple(
            &rk,
            &[
                ("s", b"P".as_slice()),
                ("f", [7u8; 32].as_slice()),
                ("n", b"1"),
                ("a", b"1"),
                ("c", b"1"),
                ("e", b"99999999999999"),
            ],
        )
        .await
        .unwrap();
    let rec = store.get(&k).await.unwrap().unwrap();
    match &rec.state {
        RecordState::Corrupted(c) => assert_eq!(c.detail, "pending record is malformed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rec.fingerprint, Fingerprint::from_bytes([7; 32]));

    // An unknown state.
    let k = key();
    let rk = store.record_key(&k);
    let () = raw
        .hset_multiple(
            &rk,
            &[
                ("s", b"Q".as_slice()),
                ("f", [7u8; 32].as_slice()),
                ("n", b"1"),
                ("a", b"1"),
                ("c", b"1"),
                ("e", b"99999999999999"),
            ],
        )
        .await
        .unwrap();
    assert!(matches!(
        store.claim(&req(k)).await.unwrap(),
        Claim::Corrupted { detail } if detail == "unknown record state"
    ));
    // Lease operations never touch what they cannot read.
    let k = key();
    let (lease, _) = acquire(&store, &req(k)).await;
    let () = raw
        .hset(store.record_key(&k), "n", "not a number")
        .await
        .unwrap();
    assert!(matches!(
        store.complete(&lease, value("v")).await,
        Err(StoreError::LeaseLost)
    ));
}

#[tokio::test]
async fn invalid_configuration_is_refused_without_io() {
    for prefix in ["", "a{b", "a}b"] {
        let err =
            RedisStore::new(RedisConfig::new("redis://127.0.0.1:6379").prefix(prefix)).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidPrefix(_)), "{err:?}");
    }
    for mode in [ConnectionMode::Multiplexed, ConnectionMode::Pooled] {
        let err = RedisStore::new(RedisConfig::new("nonsense://x").mode(mode)).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidUrl { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some());
        let err = RedisStore::new(RedisConfig::new("").mode(mode)).unwrap_err();
        assert!(matches!(err, ConfigError::NoUrl), "{err:?}");
    }
    let err = RedisStore::new(RedisConfig::cluster(Vec::<String>::new())).unwrap_err();
    assert!(matches!(err, ConfigError::NoUrl), "{err:?}");
}

/// Two stores with the same prefix stand for two processes: a waiter in one
/// is woken by the other's completion through pub/sub, long before its
/// poll interval.
#[tokio::test]
async fn waiters_are_woken_across_stores_by_notification() {
    let Some(a) = common::store().await else {
        return;
    };
    let config = a
        .config()
        .clone()
        .wait_poll_interval(Duration::from_secs(120));
    let a = RedisStore::new(config.clone()).unwrap();
    let b = RedisStore::new(config).unwrap();
    // Start the subscription and wait until it is live.
    a.wait_for_change(&key(), Duration::from_millis(1))
        .await
        .unwrap();
    let start = Instant::now();
    while !a.change_subscription_live() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "subscription never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let k = key();
    let r = ClaimRequest {
        lease: Duration::from_secs(120),
        ..req(k)
    };
    let (lease, _) = acquire(&b, &r).await;
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            a.wait_for_change(&k, Duration::from_secs(120))
                .await
                .unwrap();
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.complete(&lease, value("done")).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter must be woken by the notification")
        .unwrap();
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    assert!(matches!(a.claim(&r).await.unwrap(), Claim::Completed(_)));
}

/// A waiter on a record that is not pending returns at once; one on a lease
/// that runs out is bounded by the lease, not by its timeout.
#[tokio::test]
async fn waiting_is_bounded_by_the_lease() {
    let Some(store) = common::store().await else {
        return;
    };
    let store = RedisStore::new(
        store
            .config()
            .clone()
            .wait_poll_interval(Duration::from_secs(120)),
    )
    .unwrap();
    let k = key();
    let r = ClaimRequest {
        lease: Duration::from_millis(300),
        ..req(k)
    };
    acquire(&store, &r).await;
    let start = Instant::now();
    for _ in 0..100 {
        store
            .wait_for_change(&k, Duration::from_secs(120))
            .await
            .unwrap();
        if !matches!(store.claim(&r).await.unwrap(), Claim::InFlight { .. }) {
            break;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::InFlight { .. } | Claim::Acquired { .. }
    ));
}

#[tokio::test]
async fn a_completed_record_is_read_whole_on_every_claim() {
    // A replay is answered by the claim script's fast path; everything it
    // does not cover must end as the general path decides.
    let Some(store) = common::store().await else {
        return;
    };
    let mut raw = raw().await;
    let completed = async |store: &RedisStore| {
        let k = key();
        claim_and_complete(store, &req(k), value("done")).await;
        (k, store.record_key(&k))
    };

    // Well-formed: replayed (fence and completion time as stored), and a
    // different request with the key is a mismatch.
    let (k, _) = completed(&store).await;
    match store.claim(&req(k)).await.unwrap() {
        Claim::Completed(c) => {
            assert!(matches!(&c.outcome, Outcome::Value(v) if v.as_ref() == b"done"));
            assert_eq!(c.resource, None);
        }
        other => panic!("expected Completed, got {other:?}"),
    }
    let other = ClaimRequest {
        fingerprint: Fingerprint::of_bytes("behaviour", b"2"),
        ..req(k)
    };
    assert!(matches!(
        store.claim(&other).await.unwrap(),
        Claim::Mismatch
    ));

    // Each field a completed record needs, missing or unreadable in turn.
    for (field, bad) in [
        ("w", None),
        ("o", None),
        ("e", Some("soon")),
        ("a", Some("-1")),
        ("c", None),
        ("n", Some("1.5")),
        ("f", Some("short")),
    ] {
        let (k, rk) = completed(&store).await;
        match bad {
            Some(v) => raw.hset::<_, _, _, ()>(&rk, field, v).await.unwrap(),
            None => raw.hdel::<_, _, ()>(&rk, field).await.unwrap(),
        }
        match store.claim(&req(k)).await.unwrap() {
            Claim::Corrupted { detail } => {
                let expected = if matches!(field, "w" | "o") {
                    "completed record is malformed"
                } else {
                    "record header is malformed"
                };
                assert_eq!(detail, expected, "{field}");
            }
            other => panic!("{field}: expected Corrupted, got {other:?}"),
        }
        assert_eq!(raw.hget::<_, _, String>(&rk, "s").await.unwrap(), "X");
    }

    // Expired by its stored timestamp while Redis still holds it: a new
    // execution, not a replay.
    let (k, rk) = completed(&store).await;
    let () = raw.hset(&rk, "e", "1").await.unwrap();
    assert!(raw.pttl::<_, i64>(&rk).await.unwrap() > 0);
    assert!(matches!(
        store.claim(&req(k)).await.unwrap(),
        Claim::Acquired {
            kind: ClaimKind::New,
            ..
        }
    ));
}

/// A completion publishes on the change channel only when a waiter marked
/// the record: completing an unwatched record, then a watched one, the
/// first message on the channel is the watched record's key (pub/sub keeps
/// the order of the publishing scripts).
#[tokio::test]
async fn only_a_watched_record_publishes_its_completion() {
    use futures_util::StreamExt;

    let Some(store) = common::store().await else {
        return;
    };
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(store.change_channel()).await.unwrap();
    let mut raw = raw().await;

    let (quiet, watched) = (key(), key());
    let (quiet_lease, _) = acquire(&store, &req(quiet)).await;
    let (watched_lease, _) = acquire(&store, &req(watched)).await;
    let waiter = {
        let store = store.clone();
        // A duplicate that waits, as the layer's wait mode does: it claims,
        // waits for a change (polling until the subscription is up), claims again.
        tokio::spawn(async move {
            idempotency_core::claim_with_wait(&store, &req(watched), Some(Duration::from_secs(10)))
                .await
        })
    };
    // The waiter marks the record before it sleeps.
    let rk = store.record_key(&watched);
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw
        .hget::<_, _, Option<String>>(&rk, "v")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the waiter never marked the record"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        raw.hget::<_, _, Option<String>>(store.record_key(&quiet), "v")
            .await
            .unwrap(),
        None
    );

    store.complete(&quiet_lease, value("q")).await.unwrap();
    store.complete(&watched_lease, value("w")).await.unwrap();
    let mut messages = pubsub.on_message();
    let first = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("the watched completion was published")
        .unwrap();
    assert_eq!(first.get_payload_bytes(), watched.as_bytes().as_slice());
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter woke")
        .unwrap()
        .unwrap();
    assert!(matches!(answer, Claim::Completed(_)), "{answer:?}");
    // The completed record carries no mark.
    assert_eq!(
        raw.hget::<_, _, Option<String>>(&rk, "v").await.unwrap(),
        None
    );
}
