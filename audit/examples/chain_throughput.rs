//! Appends events to one stream of a throw-away schema, then verifies the
//! chain, printing how long each part took.
//!
//! Run with:
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p idempotency-audit --features postgres --example chain_throughput -- 1000000`
//!
//! Arguments: total events (default 100,000), writers (default 4), events per
//! transaction (default 100). The schema `audit_bench_<random>` is dropped at the end.

use std::time::Instant;

use idempotency_audit::postgres::sqlx::postgres::PgPoolOptions;
use idempotency_audit::postgres::sqlx::{self, AssertSqlSafe};
use idempotency_audit::postgres::{PostgresSink, StreamBy};
use idempotency_audit::{AuditEvent, AuditSink};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let total = args.next().transpose()?.unwrap_or(100_000);
    let writers = args.next().transpose()?.unwrap_or(4).max(1);
    let batch = args.next().transpose()?.unwrap_or(100).max(1);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(writers + 1)?)
        .connect(&url)
        .await?;
    let schema = format!(
        "audit_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let sink = PostgresSink::new(pool.clone())
        .with_schema(&schema)?
        .with_stream(StreamBy::Fixed("bench".into()));
    sink.migrate().await?;

    let started = Instant::now();
    let per_writer = total / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let sink = sink.clone();
        let count = if w + 1 == writers {
            total - per_writer * (writers - 1)
        } else {
            per_writer
        };
        tasks.push(tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                let events: Vec<_> = (0..n)
                    .map(|i| {
                        AuditEvent::builder("bench.appended", "/bench")
                            .subject(format!("writer-{w}"))
                            .attribute("i", i)
                            .build()
                    })
                    .collect();
                sink.append_batch(&events)
                    .await
                    .map_err(|e| e.to_string())?;
                left -= n;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let append = started.elapsed();
    println!(
        "append: {total} events, {writers} writers, {batch} per transaction: {:.2?} ({:.0} events/s)",
        append,
        total as f64 / append.as_secs_f64()
    );

    let started = Instant::now();
    let report = sink.verify("bench").await?;
    let verify = started.elapsed();
    println!(
        "verify: {} events: {:.2?} ({:.0} events/s)",
        report.events,
        verify,
        report.events as f64 / verify.as_secs_f64()
    );
    println!("{report}");

    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&pool)
        .await?;
    if !report.is_intact() {
        return Err("chain broken".into());
    }
    Ok(())
}
