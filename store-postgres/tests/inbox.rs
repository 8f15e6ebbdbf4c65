//! The inbox on PostgreSQL: the core inbox conformance suite, and what only a
//! database shows: the handler's rows commit with the entry or not at all,
//! across connections ("processes").

mod common;

use idempotency_core::{Admission, Delivery, Inbox, InboxError, InboxMessage, InboxStore};
use idempotency_postgres::sqlx::{self, PgPool};
use idempotency_postgres::{PostgresInbox, PostgresStore};

/// One schema for every case of this file (cases use random consumers).
async fn inbox() -> Option<PostgresInbox> {
    static SCHEMA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let pool = common::pool().await?;
    let schema = SCHEMA.get_or_init(common::fresh_schema);
    let store = common::store_on(pool, schema).await;
    Some(PostgresInbox::new(&store))
}

idempotency_core::inbox_conformance_tests!(async { inbox().await });

/// A business table next to the inbox, in the inbox's schema.
async fn effects_table(store: &PostgresStore) -> String {
    let table = format!("\"{}\".effects", store.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (consumer text, message_id text)"
    )))
    .execute(store.pool())
    .await
    .expect("create effects");
    table
}

async fn effects(pool: &PgPool, table: &str, consumer: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE consumer = $1"
    )))
    .bind(consumer)
    .fetch_one(pool)
    .await
    .expect("count effects")
}

fn consumer() -> String {
    idempotency_core::conformance::inbox::random_consumer()
}

/// The handler's row and the entry commit together; a failing handler
/// leaves neither, and a redelivery writes the row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_commit_with_the_entry() {
    let Some(store) = common::store().await else {
        return;
    };
    let table = effects_table(&store).await;
    let inbox = Inbox::new(PostgresInbox::new(&store));
    let consumer = consumer();
    let msg = InboxMessage::new(&consumer, "evt-1").unwrap();
    let insert = format!("INSERT INTO {table} VALUES ($1, $2)");

    let q = insert.clone();
    let (c, m) = (consumer.clone(), msg.message_id().to_owned());
    let failed = inbox
        .process(&msg, move |tx| {
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(c)
                    .bind(m)
                    .execute(&mut **tx)
                    .await?;
                Err::<(), sqlx::Error>(sqlx::Error::RowNotFound)
            })
        })
        .await;
    assert!(matches!(failed, Err(InboxError::Handler(_))), "{failed:?}");
    assert_eq!(effects(store.pool(), &table, &consumer).await, 0);
    assert_eq!(inbox.store().entry(&consumer, "evt-1").await.unwrap(), None);

    for expected in [
        Delivery::Applied(()),
        Delivery::Duplicate,
        Delivery::Duplicate,
    ] {
        let q = insert.clone();
        let (c, m) = (consumer.clone(), msg.message_id().to_owned());
        let d = inbox
            .process(&msg, move |tx| {
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(q))
                        .bind(c)
                        .bind(m)
                        .execute(&mut **tx)
                        .await?;
                    Ok::<(), sqlx::Error>(())
                })
            })
            .await
            .unwrap();
        assert_eq!(d, expected);
    }
    assert_eq!(effects(store.pool(), &table, &consumer).await, 1);
}

/// `admit_in` inside the caller's own transaction: a second "process" (its
/// own pool) delivering the same message waits for the first transaction
/// and then sees a duplicate; had the first rolled back, it would apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_waits_for_the_first_transaction() {
    let Some(store) = common::store().await else {
        return;
    };
    let other = common::other_process(&store).await;
    let (a, b) = (PostgresInbox::new(&store), PostgresInbox::new(&other));
    let consumer = consumer();
    let msg = InboxMessage::new(&consumer, "evt-1")
        .unwrap()
        .ordered("agg", 1)
        .unwrap();

    // Rolled back: the other process applies.
    let mut tx = store.pool().begin().await.unwrap();
    assert_eq!(a.admit_in(&mut tx, &msg).await.unwrap(), Admission::Apply);
    let waiting = {
        let (b, msg) = (b.clone(), msg.clone());
        tokio::spawn(async move {
            let mut tx = b.begin().await.unwrap();
            let d = b.admit(&mut tx, &msg).await.unwrap();
            (d, tx)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the second delivery must wait");
    drop(tx);
    let (decided, tx_b) = waiting.await.unwrap();
    assert_eq!(decided, Admission::Apply);
    b.commit(tx_b).await.unwrap();

    // Committed: the other process sees a duplicate, and v1 again is one too.
    let v2 = InboxMessage::new(&consumer, "evt-2")
        .unwrap()
        .ordered("agg", 2)
        .unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    assert_eq!(a.admit_in(&mut tx, &v2).await.unwrap(), Admission::Apply);
    let waiting = {
        let (b, v2) = (b.clone(), v2.clone());
        tokio::spawn(async move {
            let mut tx = b.begin().await.unwrap();
            b.admit(&mut tx, &v2).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the second delivery must wait");
    tx.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap(), Admission::Duplicate);
    assert_eq!(b.last_version(&consumer, "agg").await.unwrap(), Some(2));
}

/// Purging drops old entries and keeps versions, so an ordered message
/// redelivered after the purge is stale rather than applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_keeps_versions() {
    let Some(store) = common::store().await else {
        return;
    };
    let inbox = Inbox::new(PostgresInbox::new(&store));
    let consumer = consumer();
    for v in 1..=3u64 {
        let msg = InboxMessage::new(&consumer, &format!("evt-{v}"))
            .unwrap()
            .ordered("agg", v)
            .unwrap();
        let d = inbox
            .process(&msg, |_| Box::pin(async { Ok::<_, sqlx::Error>(()) }))
            .await
            .unwrap();
        assert_eq!(d, Delivery::Applied(()));
    }
    let pg = inbox.store();
    assert_eq!(
        pg.purge(std::time::Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0
    );
    // Age the entries instead of waiting.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".inbox_entries SET processed_at = now() - interval '2 hours'",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(
        pg.purge(std::time::Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        3
    );
    assert_eq!(pg.entry(&consumer, "evt-2").await.unwrap(), None);
    let again = InboxMessage::new(&consumer, "evt-2")
        .unwrap()
        .ordered("agg", 2)
        .unwrap();
    let d = inbox
        .process(&again, |_| Box::pin(async { Ok::<_, sqlx::Error>(()) }))
        .await
        .unwrap();
    assert_eq!(d, Delivery::Stale { last_applied: 3 });
}
