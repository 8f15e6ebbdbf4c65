//! The RFC 3339 form of `EventTime` is part of every event's canonical
//! encoding, so of every chain hash. These fixtures were written by the
//! crate's earlier, hand-written implementation; the current one (on the
//! `time` crate) must reproduce them byte for byte: 4,020 instants across
//! years 0000 to 9999, 46 parse cases (offsets, case, truncation, leap
//! seconds, malformed text), and a 64-event chain, in memory and as stored
//! by PostgreSQL.

use idempotency_audit::{
    Actor, AuditEvent, ChainRow, ChainVerifier, EventTime, Outcome, chain_hash,
};

const TIMES: &str = include_str!("fixtures/event-times-v1.txt");
const PARSES: &str = include_str!("fixtures/parse-v1.tsv");
const CHAIN: &str = include_str!("fixtures/chain-v1.jsonl");
const STREAM: &str = "golden";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `(micros, text)` of every fixture instant.
fn instants() -> Vec<(i64, &'static str)> {
    TIMES
        .lines()
        .map(|line| {
            let (micros, text) = line.split_once(' ').unwrap();
            (micros.parse().unwrap(), text)
        })
        .collect()
}

struct StoredRow {
    seq: u64,
    content: String,
    hash: Vec<u8>,
}

fn stored_chain() -> Vec<StoredRow> {
    CHAIN
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            StoredRow {
                seq: v["seq"].as_u64().unwrap(),
                content: v["content"].as_str().unwrap().to_owned(),
                hash: unhex(v["hash"].as_str().unwrap()),
            }
        })
        .collect()
}

/// The event the fixture's row `i` holds, built by today's code exactly as
/// the fixture's events were built.
fn golden_event(i: usize, micros: i64) -> AuditEvent {
    let time = EventTime::from_unix_micros(micros).unwrap();
    let id = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128);
    AuditEvent::builder("golden.recorded", "/golden")
        .id(id)
        .time(time)
        .subject(format!("S-{i}"))
        .actor(Actor::user("auditor"))
        .outcome(Outcome::Created)
        .correlation_id(format!("c-{i}"))
        .attribute("n", i as u64)
        .attribute("when", time.to_string())
        .build()
}

#[test]
fn every_instant_is_written_and_read_as_before() {
    let all = instants();
    assert_eq!(all.len(), 4020);
    for (micros, text) in all {
        let t = EventTime::from_unix_micros(micros).unwrap();
        assert_eq!(t.to_string(), text, "{micros}");
        assert_eq!(EventTime::parse_rfc3339(text), Ok(t), "{text}");
    }
}

#[test]
fn every_parse_case_is_answered_as_before() {
    let mut n = 0;
    for line in PARSES.lines() {
        let (input, expected) = line.split_once('\t').unwrap();
        let got = EventTime::parse_rfc3339(input).map(|t| t.to_string());
        match expected {
            "ERR" => assert!(got.is_err(), "{input:?} accepted as {got:?}"),
            text => assert_eq!(got.as_deref(), Ok(text), "{input:?}"),
        }
        n += 1;
    }
    assert_eq!(n, 46);
}

#[test]
fn a_stored_chain_reencodes_byte_for_byte_and_verifies() {
    let rows = stored_chain();
    assert_eq!(rows.len(), 64);
    let times = instants();
    let mut verifier = ChainVerifier::new(STREAM);
    let mut prev = idempotency_audit::GENESIS_HASH;
    for (i, row) in rows.iter().enumerate() {
        // What the store holds decodes and re-encodes to the same bytes...
        let stored: AuditEvent = serde_json::from_str(&row.content).unwrap();
        assert_eq!(stored.canonical_json(), row.content, "row {}", row.seq);
        // ...and today's code writes the same event as the same bytes.
        let rebuilt = golden_event(i, times[i].0);
        assert_eq!(rebuilt, stored, "row {}", row.seq);
        assert_eq!(rebuilt.canonical_json(), row.content, "row {}", row.seq);
        assert_eq!(
            chain_hash(&prev, row.seq, STREAM, &row.content).as_slice(),
            row.hash,
            "row {}",
            row.seq
        );
        verifier.push(&ChainRow {
            seq: row.seq,
            prev_hash: &prev,
            hash: &row.hash,
            content: &row.content,
        });
        prev.copy_from_slice(&row.hash);
    }
    let report = verifier.finish(Some((64, prev)));
    assert!(report.is_intact(), "{report}");
}

#[cfg(feature = "postgres")]
mod common;

#[cfg(feature = "postgres")]
mod postgres {
    use idempotency_audit::postgres::PostgresSink;
    use idempotency_audit::postgres::sqlx::{self, AssertSqlSafe, Row};

    use super::*;

    /// Written through the PostgreSQL sink today, the fixture chain is
    /// stored with the same content and the same hashes (computed by the
    /// database), and the verifier, which cross-checks the `time` column
    /// against the content, finds it intact.
    #[tokio::test]
    async fn postgres_stores_the_fixture_chain_byte_for_byte() {
        let Some(pool) = common::pool(2).await else {
            return;
        };
        common::drop_stale_schemas(&pool).await;
        let schema = common::fresh_schema();
        let sink = PostgresSink::new(pool.clone())
            .with_schema(&schema)
            .unwrap();
        sink.migrate().await.unwrap();
        let rows = stored_chain();
        let times = instants();
        let mut conn = pool.acquire().await.unwrap();
        for (i, (micros, _)) in times.iter().take(rows.len()).enumerate() {
            sink.append_to_stream(&mut conn, STREAM, &golden_event(i, *micros))
                .await
                .unwrap();
        }
        drop(conn);
        let stored = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, content::text AS content, hash FROM \"{schema}\".events
              WHERE stream = $1 ORDER BY seq"
        )))
        .bind(STREAM)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), rows.len());
        for (row, want) in stored.iter().zip(&rows) {
            let seq: i64 = row.get("seq");
            let content: String = row.get("content");
            let hash: Vec<u8> = row.get("hash");
            assert_eq!(seq.unsigned_abs(), want.seq);
            assert_eq!(content, want.content, "row {seq}");
            assert_eq!(hash, want.hash, "row {seq}");
        }
        let report = sink.verify(STREAM).await.unwrap();
        assert!(report.is_intact(), "{report}");
        common::drop_schema(&pool, &schema).await;
    }
}
