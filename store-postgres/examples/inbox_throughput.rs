//! Inbox throughput on PostgreSQL: deliveries per second through
//! `Inbox<PostgresInbox>`, each applying one row in the same transaction.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p idempotency-postgres --example inbox_throughput [N] [TASKS]`
//! (in its own schema, dropped at the end).

use std::sync::Arc;
use std::time::Instant;

use idempotency_core::{Delivery, Inbox, InboxMessage};
use idempotency_postgres::sqlx::{self, postgres::PgPoolOptions};
use idempotency_postgres::{PostgresInbox, PostgresStore};

type Shared = Arc<Inbox<PostgresInbox>>;

async fn deliver(inbox: &Shared, table: &str, msg: InboxMessage) -> Delivery<()> {
    let insert = format!("INSERT INTO {table} (message_id) VALUES ($1)");
    let id = msg.message_id().to_owned();
    inbox
        .process(&msg, move |tx| {
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await
        .expect("process")
}

/// Runs `n` deliveries over `tasks` tasks; `make(i)` is the i-th message.
async fn run(
    label: &str,
    inbox: &Shared,
    table: &str,
    n: usize,
    tasks: usize,
    make: impl Fn(usize) -> InboxMessage + Send + Sync + 'static,
) {
    let make = Arc::new(make);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (inbox, table, make) = (Arc::clone(inbox), table.to_owned(), Arc::clone(&make));
            tokio::spawn(async move {
                let mut outcomes = [0usize; 4];
                for i in (t..n).step_by(tasks) {
                    let slot = match deliver(&inbox, &table, make(i)).await {
                        Delivery::Applied(()) => 0,
                        Delivery::Duplicate => 1,
                        Delivery::Stale { .. } => 2,
                        _ => 3,
                    };
                    outcomes[slot] += 1;
                }
                outcomes
            })
        })
        .collect();
    let mut total = [0usize; 4];
    for h in handles {
        for (t, o) in total.iter_mut().zip(h.await.expect("task")) {
            *t += o;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<44} {n:>6} deliveries, {tasks:>2} tasks: {:>8.0}/s, {:>6.3} ms each \
         (applied {}, duplicate {}, stale {}, out of order {})",
        n as f64 / secs,
        secs * 1000.0 * tasks as f64 / n as f64,
        total[0],
        total[1],
        total[2],
        total[3],
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N and TASKS are numbers"))
        .collect();
    let n = args.first().copied().unwrap_or(5000);
    let tasks = args.get(1).copied().unwrap_or(8);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(tasks + 2).unwrap_or(32))
        .connect(&url)
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let schema = format!(
        "inbox_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let store = PostgresStore::builder()
        .schema(&schema)
        .build(pool.clone())
        .expect("schema");
    store.migrate().await.expect("migrate");
    let table = format!("\"{schema}\".effects");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (message_id text)"
    )))
    .execute(&pool)
    .await
    .expect("effects table");
    let inbox: Shared = Arc::new(Inbox::new(PostgresInbox::new(&store)));

    run("unordered, first deliveries", &inbox, &table, n, 1, |i| {
        InboxMessage::new("bench-a", &format!("m-{i}")).unwrap()
    })
    .await;
    run(
        "unordered, first deliveries",
        &inbox,
        &table,
        n,
        tasks,
        |i| InboxMessage::new("bench-b", &format!("m-{i}")).unwrap(),
    )
    .await;
    run(
        "unordered, redeliveries (all duplicates)",
        &inbox,
        &table,
        n,
        tasks,
        |i| InboxMessage::new("bench-b", &format!("m-{i}")).unwrap(),
    )
    .await;
    // One aggregate per task, versions in order within it.
    run(
        "ordered, one aggregate per task",
        &inbox,
        &table,
        n,
        tasks,
        move |i| {
            let (aggregate, version) = (i % tasks, i / tasks + 1);
            InboxMessage::new("bench-c", &format!("m-{i}"))
                .unwrap()
                .ordered(&format!("agg-{aggregate}"), version as u64)
                .unwrap()
        },
    )
    .await;
    let applied: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&pool)
            .await
            .expect("count");
    println!("rows written by handlers: {applied} (3 x {n} applied deliveries)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
}
