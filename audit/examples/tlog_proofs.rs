//! Fills one stream of a throw-away schema, then times what checkpoints and
//! proofs cost on it: the Merkle root read from the table (a checkpoint
//! taken cold), inclusion proofs with the tree cached, a proof taken cold,
//! the full check from content, and the offline verification.
//!
//! Run with:
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p idempotency-audit --features postgres --example tlog_proofs -- 1000000`
//!
//! Argument: events (default 100,000). The rows are written by one SQL
//! statement per 1,000 (through the chain trigger, so every hash is the
//! real one), not through the sink: appending is measured by
//! `chain_throughput`. The schema `audit_bench_<random>` and the checkpoint
//! directory are removed at the end.

use std::time::{Duration, Instant};

use idempotency_audit::postgres::sqlx::postgres::PgPoolOptions;
use idempotency_audit::postgres::sqlx::{self, AssertSqlSafe};
use idempotency_audit::postgres::{PostgresSink, PostgresTlog};
use idempotency_audit::tlog::{DirStore, MerkleTree, NoteSigner, leaf_hash, root_of};

const STREAM: &str = "bench";

/// Rows per statement: the head row is updated once per row, and a longer
/// transaction walks an ever longer chain of its versions.
const BATCH: u64 = 1_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let schema = format!(
        "audit_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let sink = PostgresSink::new(pool.clone()).with_schema(&schema)?;
    sink.migrate().await?;
    let dir = std::env::temp_dir().join(&schema);
    let result = run(&pool, &sink, &schema, &dir, total).await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&pool)
        .await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    pool: &sqlx::PgPool,
    sink: &PostgresSink,
    schema: &str,
    dir: &std::path::Path,
    total: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(BATCH);
        // Canonical JSON content, so that the offline check can recompute it.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".events (stream, id, type, source, time, content) \
             SELECT $1, gen_random_uuid(), 'bench.event', '/bench', now(), \
                    format('{{\"i\":%s,\"type\":\"bench.event\"}}', g)::json \
             FROM generate_series($2::int8, $3::int8) AS g"
        )))
        .bind(STREAM)
        .bind(done as i64 + 1)
        .bind((done + n) as i64)
        .execute(pool)
        .await?;
        done += n;
    }
    println!(
        "filled {total} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query(AssertSqlSafe(format!("VACUUM ANALYZE \"{schema}\".events")))
        .execute(pool)
        .await?;

    let signer = NoteSigner::generate("bench.example/audit")?;
    let verifier = signer.verifier();
    let tlog = PostgresTlog::with_signer(sink.clone(), DirStore::new(dir), signer);

    let t = Instant::now();
    let cp = tlog.checkpoint(STREAM).await?.ok_or("empty stream")?;
    let cold_root = t.elapsed();
    println!(
        "checkpoint, cold (read {total} leaves, Merkle root, sign, store): {:.0} ms",
        ms(cold_root)
    );

    // The reading alone: every stored hash in one query.
    let t = Instant::now();
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT string_agg(hash, ''::bytea) AS h FROM \
         (SELECT hash FROM \"{schema}\".events WHERE stream = $1 ORDER BY seq) AS c"
    )))
    .bind(STREAM)
    .fetch_one(pool)
    .await?;
    let bytes: Vec<u8> = sqlx::Row::try_get(&row, "h")?;
    println!(
        "  reading the {} hashes alone (one query, {} MB): {:.0} ms",
        bytes.len() / 32,
        bytes.len() >> 20,
        ms(t.elapsed())
    );

    // The hashing alone, in memory.
    let leaves: Vec<[u8; 32]> = (0..total).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let t = Instant::now();
    let _ = root_of(leaves.iter().copied());
    println!(
        "  of which hashing (root of {total} leaf hashes in memory): {:.0} ms",
        ms(t.elapsed())
    );
    let t = Instant::now();
    let _ = MerkleTree::from_leaves(leaves.iter().copied());
    println!(
        "  building the cached tree in memory: {:.0} ms",
        ms(t.elapsed())
    );

    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".events (stream, id, type, source, time, content) \
         SELECT $1, gen_random_uuid(), 'bench.event', '/bench', now(), \
                format('{{\"i\":%s,\"type\":\"bench.event\"}}', g)::json \
         FROM generate_series($2::int8, $2::int8 + 999) AS g"
    )))
    .bind(STREAM)
    .bind(total as i64 + 1)
    .execute(pool)
    .await?;
    let t = Instant::now();
    let grown = tlog.checkpoint(STREAM).await?.ok_or("empty stream")?;
    println!(
        "checkpoint, warm (1,000 new events, consistency with the previous one): {:.1} ms (size {})",
        ms(t.elapsed()),
        grown.checkpoint.size
    );

    let mut times = Vec::new();
    let mut seq = 1u64;
    let mut last = None;
    for _ in 0..200 {
        seq = (seq * 7_919 + 104_729) % total + 1;
        let t = Instant::now();
        let proof = tlog.prove_inclusion(STREAM, seq, None).await?;
        times.push(t.elapsed());
        last = Some(proof);
    }
    times.sort();
    println!(
        "inclusion proof, tree cached (200 random events): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        ms(times[times.len() - 1])
    );

    let (proof, content) = last.ok_or("no proof")?;
    let event: serde_json::Value = serde_json::from_str(&content)?;
    let t = Instant::now();
    proof.verify(&event, &verifier)?;
    println!(
        "offline verification of one proof: {:.3} ms",
        ms(t.elapsed())
    );

    let fresh = PostgresTlog::new(sink.clone(), DirStore::new(dir), verifier.clone());
    let t = Instant::now();
    fresh.prove_inclusion(STREAM, 1, None).await?;
    println!(
        "inclusion proof, cold (a new process: reads every leaf first): {:.0} ms",
        ms(t.elapsed())
    );

    let t = Instant::now();
    fresh.verify_against_checkpoint(STREAM).await?;
    println!(
        "full check against the checkpoint (every hash recomputed from content): {:.0} ms",
        ms(t.elapsed())
    );
    let _ = cp;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
