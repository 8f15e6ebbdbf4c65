//! Measures the PostgreSQL audit trail in a throw-away schema: batched
//! appends to one stream, single-event atomic appends (one transaction
//! each, many streams, many writers), and the verification of the batched
//! stream. Prints how long each part took.
//!
//! Run with:
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p idempotency-audit --features postgres --example chain_throughput -- 1000000`
//!
//! Arguments: total events of the batched part (default 100,000), writers
//! (default 4), events per transaction (default 100). Options:
//! `--atomic N` also appends N single events, each in a transaction of its
//! own (default 0: skipped), by `--atomic-writers W` writers (default 32)
//! over `--streams S` streams (default 256); `--verify-batch ROWS` rows per
//! verification statement (default 100,000); `--schema NAME` uses (and keeps)
//! that schema, so `0 --schema NAME` verifies again what an earlier
//! `--schema NAME` run appended. Otherwise the schema `audit_bench_<random>`
//! (and its roles) is dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency_audit::postgres::sqlx::postgres::PgPoolOptions;
use idempotency_audit::postgres::sqlx::{self, AssertSqlSafe, PgPool};
use idempotency_audit::postgres::{PostgresSink, StreamBy};
use idempotency_audit::{AuditEvent, AuditSink};

struct Options {
    total: usize,
    writers: usize,
    batch: usize,
    atomic: usize,
    atomic_writers: usize,
    streams: usize,
    verify_batch: usize,
    schema: Option<String>,
}

fn options() -> Result<Options, Box<dyn std::error::Error>> {
    let mut o = Options {
        total: 100_000,
        writers: 4,
        batch: 100,
        atomic: 0,
        atomic_writers: 32,
        streams: 256,
        verify_batch: 100_000,
        schema: None,
    };
    let mut positional = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--schema" {
            o.schema = Some(args.next().ok_or("--schema needs a value")?);
            continue;
        }
        let mut value = || -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.next().ok_or(format!("{arg} needs a value"))?.parse()?)
        };
        match arg.as_str() {
            "--atomic" => o.atomic = value()?,
            "--atomic-writers" => o.atomic_writers = value()?.max(1),
            "--streams" => o.streams = value()?.max(1),
            "--verify-batch" => o.verify_batch = value()?.max(1),
            _ => {
                let n: usize = arg.parse()?;
                match positional {
                    0 => o.total = n,
                    1 => o.writers = n.max(1),
                    2 => o.batch = n.max(1),
                    _ => return Err(format!("unexpected argument {arg:?}").into()),
                }
                positional += 1;
            }
        }
    }
    Ok(o)
}

fn bench_event(writer: usize, i: usize) -> AuditEvent {
    AuditEvent::builder("bench.appended", "/bench")
        .subject(format!("writer-{writer}"))
        .attribute("i", i)
        .build()
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// `total` events to stream `bench`, by `writers` writers, `batch` per transaction.
async fn batched(sink: &PostgresSink, o: &Options) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let per_writer = o.total / o.writers;
    let mut tasks = Vec::new();
    for w in 0..o.writers {
        let sink = sink.clone().with_stream(StreamBy::Fixed("bench".into()));
        let count = if w + 1 == o.writers {
            o.total - per_writer * (o.writers - 1)
        } else {
            per_writer
        };
        let batch = o.batch;
        tasks.push(tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                let events: Vec<_> = (0..n).map(|i| bench_event(w, i)).collect();
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
    Ok(started.elapsed())
}

/// `o.atomic` events, each appended in a transaction of its own (the
/// business transaction of an atomic event), by `o.atomic_writers` writers
/// over `o.streams` streams.
async fn atomic(
    sink: &PostgresSink,
    pool: &PgPool,
    o: &Options,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..o.atomic_writers {
        let (sink, pool, next) = (sink.clone(), pool.clone(), Arc::clone(&next));
        let (total, streams) = (o.atomic, o.streams);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(());
                }
                let stream = format!("atomic/{}", i % streams);
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                sink.append_to_stream(&mut tx, &stream, &bench_event(w, i))
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = options()?;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(o.writers.max(o.atomic_writers) + 1)?)
        .connect(&url)
        .await?;
    let keep = o.schema.is_some();
    let schema = o.schema.clone().unwrap_or_else(|| {
        format!(
            "audit_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    });
    let sink = PostgresSink::new(pool.clone())
        .with_schema(&schema)?
        .with_verify_batch(o.verify_batch);
    sink.migrate().await?;

    let result = run(&sink, &pool, &o).await;
    if keep {
        return result;
    }
    let roles = sink.roles()?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE; DROP ROLE \"{}\", \"{}\", \"{}\";",
        roles.owner(),
        roles.writer(),
        roles.reader()
    )))
    .execute(&pool)
    .await?;
    result
}

async fn run(
    sink: &PostgresSink,
    pool: &PgPool,
    o: &Options,
) -> Result<(), Box<dyn std::error::Error>> {
    if o.total > 0 {
        let took = batched(sink, o).await?;
        println!(
            "append: {} events, {} writers, {} per transaction, one stream: {took:.2?} ({:.0} events/s)",
            o.total,
            o.writers,
            o.batch,
            rate(o.total, took)
        );
    }
    if o.atomic > 0 {
        let took = atomic(sink, pool, o).await?;
        println!(
            "atomic: {} events, one transaction each, {} writers, {} streams: {took:.2?} ({:.0} events/s)",
            o.atomic,
            o.atomic_writers,
            o.streams,
            rate(o.atomic, took)
        );
    }
    if o.total > 0 || o.schema.is_some() {
        let started = Instant::now();
        let report = sink.verify("bench").await?;
        let took = started.elapsed();
        println!(
            "verify: {} events, {} sequence numbers per statement: {took:.2?} ({:.0} events/s)",
            report.events,
            o.verify_batch,
            rate(usize::try_from(report.events)?, took)
        );
        println!("{report}");
        if !report.is_intact() {
            return Err("chain broken".into());
        }
    }
    Ok(())
}
