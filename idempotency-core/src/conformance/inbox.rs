//! The inbox conformance suite (feature `conformance`): one `pub async fn`
//! per behaviour of the [`InboxStore`] contract, and a macro that turns them
//! into named tests for a store:
//!
//! ```ignore
//! // tests/inbox_conformance.rs of a store crate
//! idempotency_core::inbox_conformance_tests!(async { Some(my_inbox_store().await) });
//! ```
//!
//! The async block yields `Option<S>`: `None` skips the case (the block
//! prints why, and panics instead under CI). Every case uses a fresh random
//! consumer name, so cases run in parallel against one shared server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::inbox::{Delivery, Disposition, Inbox, InboxError, InboxMessage, InboxStore};

/// What an inbox conformance case needs of a store.
pub trait InboxConformanceStore: InboxStore + Clone + 'static {}
impl<T: InboxStore + Clone + 'static> InboxConformanceStore for T {}

/// A fresh consumer name.
pub fn random_consumer() -> String {
    format!("conformance-{}", uuid::Uuid::new_v4().simple())
}

fn msg(consumer: &str, id: &str) -> InboxMessage {
    InboxMessage::new(consumer, id).expect("valid message")
}

fn ordered(consumer: &str, id: &str, aggregate: &str, version: u64) -> InboxMessage {
    msg(consumer, id)
        .ordered(aggregate, version)
        .expect("valid version")
}

/// Processes `m` with a handler that counts its runs in `runs` and yields `m`'s version.
async fn deliver<S: InboxStore>(
    inbox: &Inbox<S>,
    m: &InboxMessage,
    runs: &Arc<AtomicU32>,
) -> Delivery<Option<u64>> {
    let runs = Arc::clone(runs);
    let version = m.version();
    inbox
        .process(m, move |_tx| {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(version)
            })
        })
        .await
        .expect("process")
}

/// A message is applied on its first delivery and a duplicate on every later
/// one; the handler runs once and the entry says applied.
pub async fn inbox_applies_once<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let m = msg(&consumer, "evt-1");
    assert_eq!(store.entry(&consumer, "evt-1").await.unwrap(), None);
    assert_eq!(deliver(&inbox, &m, &runs).await, Delivery::Applied(None));
    for _ in 0..3 {
        assert_eq!(deliver(&inbox, &m, &runs).await, Delivery::Duplicate);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.entry(&consumer, "evt-1").await.unwrap(),
        Some(Disposition::Applied)
    );
}

/// A transaction dropped after `Apply` leaves nothing: the next delivery
/// applies, as after a crash before the commit.
pub async fn inbox_rollback_leaves_nothing<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let m = ordered(&consumer, "evt-1", "agg", 1);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        store.admit(&mut tx, &m).await.unwrap(),
        crate::inbox::Admission::Apply
    );
    drop(tx);
    assert_eq!(store.entry(&consumer, "evt-1").await.unwrap(), None);
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), None);
    let runs = Arc::new(AtomicU32::new(0));
    let inbox = Inbox::new(store.clone());
    assert_eq!(deliver(&inbox, &m, &runs).await, Delivery::Applied(Some(1)));
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), Some(1));
}

/// A failing handler rolls back the entry and the version; the next
/// delivery runs the handler again.
pub async fn inbox_handler_failure_rolls_back<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let m = ordered(&consumer, "evt-1", "agg", 1);
    let failed = inbox
        .process(&m, |_tx| {
            Box::pin(async { Err::<(), _>(std::io::Error::other("handler broke")) })
        })
        .await;
    assert!(
        matches!(&failed, Err(InboxError::Handler(e)) if e.to_string() == "handler broke"),
        "{failed:?}"
    );
    assert_eq!(store.entry(&consumer, "evt-1").await.unwrap(), None);
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), None);
    let runs = Arc::new(AtomicU32::new(0));
    assert_eq!(deliver(&inbox, &m, &runs).await, Delivery::Applied(Some(1)));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Entries and versions belong to one consumer: another consumer applies the
/// same message and the same aggregate's versions on its own.
pub async fn inbox_consumers_are_independent<S: InboxConformanceStore>(store: &S) {
    let (a, b) = (random_consumer(), random_consumer());
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    for consumer in [&a, &b] {
        assert_eq!(
            deliver(&inbox, &ordered(consumer, "evt-1", "agg", 1), &runs).await,
            Delivery::Applied(Some(1))
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(store.last_version(&a, "agg").await.unwrap(), Some(1));
    assert_eq!(store.last_version(&b, "agg").await.unwrap(), Some(1));
}

/// Versions 1, 2, 3 in order are applied and the aggregate's last version
/// follows them; other aggregates are untouched.
pub async fn inbox_versions_apply_in_order<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    for v in 1..=3 {
        let m = ordered(&consumer, &format!("evt-{v}"), "agg", v);
        assert_eq!(deliver(&inbox, &m, &runs).await, Delivery::Applied(Some(v)));
        assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), Some(v));
    }
    let other = ordered(&consumer, "evt-other", "agg-2", 1);
    assert_eq!(
        deliver(&inbox, &other, &runs).await,
        Delivery::Applied(Some(1))
    );
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), Some(3));
    assert_eq!(
        store.last_version(&consumer, "agg-2").await.unwrap(),
        Some(1)
    );
}

/// A version at or below the last applied one is skipped and recorded as
/// stale (its redelivery is a duplicate); the last version does not move.
pub async fn inbox_stale_versions_are_recorded<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    for v in 1..=2 {
        deliver(
            &inbox,
            &ordered(&consumer, &format!("evt-{v}"), "agg", v),
            &runs,
        )
        .await;
    }
    for (id, v) in [("evt-late-2", 2), ("evt-late-1", 1)] {
        let m = ordered(&consumer, id, "agg", v);
        assert_eq!(
            deliver(&inbox, &m, &runs).await,
            Delivery::Stale { last_applied: 2 }
        );
        assert_eq!(
            store.entry(&consumer, id).await.unwrap(),
            Some(Disposition::Stale)
        );
        assert_eq!(deliver(&inbox, &m, &runs).await, Delivery::Duplicate);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), Some(2));
}

/// A redelivered applied message is a duplicate, not stale, even once newer
/// versions are in.
pub async fn inbox_duplicate_is_decided_before_stale<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let first = ordered(&consumer, "evt-1", "agg", 1);
    deliver(&inbox, &first, &runs).await;
    deliver(&inbox, &ordered(&consumer, "evt-2", "agg", 2), &runs).await;
    assert_eq!(deliver(&inbox, &first, &runs).await, Delivery::Duplicate);
    assert_eq!(
        store.entry(&consumer, "evt-1").await.unwrap(),
        Some(Disposition::Applied)
    );
}

/// A version beyond the next expected one is not applied and not recorded;
/// once the gap is filled its redelivery applies. A new aggregate expects 1.
pub async fn inbox_out_of_order_waits_for_the_gap<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let v3 = ordered(&consumer, "evt-3", "agg", 3);
    assert_eq!(
        deliver(&inbox, &v3, &runs).await,
        Delivery::OutOfOrder { expected: 1 }
    );
    deliver(&inbox, &ordered(&consumer, "evt-1", "agg", 1), &runs).await;
    let early = deliver(&inbox, &v3, &runs).await;
    assert_eq!(early, Delivery::OutOfOrder { expected: 2 });
    assert!(!early.should_ack());
    assert_eq!(store.entry(&consumer, "evt-3").await.unwrap(), None);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        deliver(&inbox, &ordered(&consumer, "evt-2", "agg", 2), &runs).await,
        Delivery::Applied(Some(2))
    );
    assert_eq!(
        deliver(&inbox, &v3, &runs).await,
        Delivery::Applied(Some(3))
    );
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), Some(3));
}

/// Unordered and ordered messages of one consumer share its message ids:
/// an id applied unordered is a duplicate when it comes again with a version.
pub async fn inbox_message_ids_are_per_consumer<S: InboxConformanceStore>(store: &S) {
    let consumer = random_consumer();
    let inbox = Inbox::new(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    deliver(&inbox, &msg(&consumer, "evt-1"), &runs).await;
    assert_eq!(
        deliver(&inbox, &ordered(&consumer, "evt-1", "agg", 1), &runs).await,
        Delivery::Duplicate
    );
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), None);
}

/// Sixteen concurrent deliveries of one message: one applies, fifteen are
/// duplicates, the handler runs once.
pub async fn inbox_concurrent_duplicates_apply_once<S: InboxConformanceStore + Sync>(store: &S) {
    let consumer = random_consumer();
    let inbox = Arc::new(Inbox::new(store.clone()));
    let runs = Arc::new(AtomicU32::new(0));
    let m = msg(&consumer, "evt-1");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (inbox, runs, m) = (Arc::clone(&inbox), Arc::clone(&runs), m.clone());
            tokio::spawn(async move {
                inbox
                    .process(&m, move |_tx| {
                        Box::pin(async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            // Hold the transaction open while the others arrive.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, std::io::Error>(())
                        })
                    })
                    .await
                    .expect("process")
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.expect("task") {
            Delivery::Applied(()) => applied += 1,
            Delivery::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Versions 1..=6 of one aggregate delivered concurrently, each redelivered
/// while it is out of order: each applies once, in version order.
pub async fn inbox_concurrent_versions_apply_in_order<S: InboxConformanceStore + Sync>(store: &S) {
    let consumer = random_consumer();
    let inbox = Arc::new(Inbox::new(store.clone()));
    let order = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (1..=6u64)
        .rev()
        .map(|v| {
            let (inbox, order) = (Arc::clone(&inbox), Arc::clone(&order));
            let m = ordered(&consumer, &format!("evt-{v}"), "agg", v);
            tokio::spawn(async move {
                for _ in 0..2000 {
                    let order = Arc::clone(&order);
                    let d = inbox
                        .process(&m, move |_tx| {
                            Box::pin(async move {
                                order.lock().expect("order").push(v);
                                Ok::<_, std::io::Error>(())
                            })
                        })
                        .await
                        .expect("process");
                    match d {
                        Delivery::Applied(()) => return,
                        Delivery::OutOfOrder { expected } => {
                            assert!(expected < v, "v{v} waits for {expected}");
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        other => panic!("v{v}: unexpected {other:?}"),
                    }
                }
                panic!("v{v} never applied");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(store.last_version(&consumer, "agg").await.unwrap(), Some(6));
}

/// Lists every inbox conformance case (for [`inbox_conformance_tests!`](crate::inbox_conformance_tests)).
#[macro_export]
macro_rules! for_each_inbox_conformance_case {
    (@call [$($callback:tt)+] [$($args:tt)*]) => {
        $($callback)+! { $($args)*
            inbox_applies_once,
            inbox_rollback_leaves_nothing,
            inbox_handler_failure_rolls_back,
            inbox_consumers_are_independent,
            inbox_versions_apply_in_order,
            inbox_stale_versions_are_recorded,
            inbox_duplicate_is_decided_before_stale,
            inbox_out_of_order_waits_for_the_gap,
            inbox_message_ids_are_per_consumer,
            inbox_concurrent_duplicates_apply_once,
            inbox_concurrent_versions_apply_in_order,
        }
    };
    ($callback:ident) => {
        $crate::for_each_inbox_conformance_case! { @call [$callback] [] }
    };
}

/// Turns every inbox conformance case into a named `#[test]` for a store.
///
/// `$factory` is an async block yielding `Option<S>` where
/// `S: InboxStore + Clone + Sync + 'static`; `None` skips the case.
#[macro_export]
macro_rules! inbox_conformance_tests {
    ($factory:expr) => {
        $crate::for_each_inbox_conformance_case! {
            @call [$crate::inbox_conformance_tests] [@cases $factory;]
        }
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::block_on(async {
                    let Some(store) = $factory.await else { return };
                    $crate::conformance::inbox::$case(&store).await;
                });
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    macro_rules! names {
        ($($case:ident),* $(,)?) => {
            [$(stringify!($case)),*]
        };
    }

    /// Every `pub async fn` taking a store is listed, so none runs nowhere.
    #[test]
    fn every_case_is_listed() {
        let mut listed: Vec<&str> = crate::for_each_inbox_conformance_case!(names).to_vec();
        let mut defined: Vec<&str> = include_str!("inbox.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter(|l| l.contains("InboxConformanceStore"))
            .filter_map(|l| l.split('<').next())
            .collect();
        listed.sort_unstable();
        defined.sort_unstable();
        assert_eq!(listed, defined);
    }
}
