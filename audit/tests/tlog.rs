//! Checkpoints and proofs against a real PostgreSQL, as the superuser: the
//! attacks a database insider can make on the chain are each caught from a
//! checkpoint taken before the attack.
#![cfg(feature = "postgres")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use idempotency_audit::postgres::sqlx::{self, PgPool, Row};
use idempotency_audit::postgres::{PostgresSink, PostgresTlog};
use idempotency_audit::tlog::{
    Checkpoint, ConsistencyProof, DirStore, InclusionProof, NoteSigner, ProofError, TlogError,
    origin_for,
};
use idempotency_audit::{AuditEvent, AuditSink, EventTime, GENESIS_HASH, chain_hash};
use serde_json::Value;

const STREAM: &str = "/orders";
const LOG: &str = "audit.test.example";

struct Fixture {
    pool: PgPool,
    schema: String,
    sink: PostgresSink,
    dir: PathBuf,
    signer: NoteSigner,
}

impl Fixture {
    async fn new(events: u64) -> Option<Self> {
        let pool = common::pool(4).await?;
        common::drop_stale_schemas(&pool).await;
        let schema = common::fresh_schema();
        let sink = PostgresSink::new(pool.clone())
            .with_schema(&schema)
            .unwrap();
        sink.migrate().await.unwrap();
        let dir = std::env::temp_dir().join(format!("audit-tlog-{schema}"));
        let f = Self {
            pool,
            schema,
            sink,
            dir,
            signer: NoteSigner::generate(LOG).unwrap(),
        };
        f.append(1, events).await;
        Some(f)
    }

    async fn append(&self, from: u64, to: u64) {
        let events: Vec<AuditEvent> = (from..=to)
            .map(|i| {
                AuditEvent::builder("order.placed", STREAM)
                    .subject(format!("order-{i}"))
                    .attribute("n", i)
                    .attribute("amount", i as f64 * 1.25)
                    .build()
            })
            .collect();
        self.sink.append_batch(&events).await.unwrap();
    }

    /// A fresh checkpointer, as a separate process would be: nothing cached.
    fn tlog(&self) -> PostgresTlog<DirStore> {
        PostgresTlog::with_signer(
            self.sink.clone(),
            DirStore::new(&self.dir),
            self.signer.clone(),
        )
    }

    async fn content(&self, seq: i64) -> Value {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT content::text AS c FROM \"{}\".events WHERE stream = $1 AND seq = $2",
            self.schema
        )))
        .bind(STREAM)
        .bind(seq)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        serde_json::from_str(&row.get::<String, _>("c")).unwrap()
    }

    /// Runs `sql` as the superuser with the triggers off (binds `$1` = the stream).
    async fn tamper(&self, sql: &str) -> u64 {
        common::tamper(
            &self.pool,
            &sql.replace("{s}", &format!("\"{}\"", self.schema)),
            STREAM,
        )
        .await
    }

    async fn finish(self) {
        common::drop_schema(&self.pool, &self.schema).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

macro_rules! fixture {
    ($n:expr) => {
        match Fixture::new($n).await {
            Some(f) => f,
            None => return,
        }
    };
}

fn inconsistent(r: Result<impl std::fmt::Debug, TlogError>) -> String {
    match r {
        Err(TlogError::Inconsistent { detail, .. }) => detail,
        other => panic!("expected Inconsistent, got {other:?}"),
    }
}

#[tokio::test]
async fn checkpoints_prove_every_event_offline_and_grow_consistently() {
    let f = fixture!(10);
    let tlog = f.tlog();
    let first = tlog.checkpoint(STREAM).await.unwrap().unwrap();
    assert!(first.signed);
    assert_eq!(first.checkpoint.size, 10);
    assert_eq!(first.checkpoint.origin, origin_for(LOG, STREAM));
    assert!(f.dir.join("%2Forders").join("10.checkpoint").is_file());
    assert_eq!(
        std::fs::read_to_string(f.dir.join("%2Forders").join("latest")).unwrap(),
        first.note
    );
    // Nothing new: the same checkpoint, not signed again.
    let again = tlog.checkpoint(STREAM).await.unwrap().unwrap();
    assert!(!again.signed);
    assert_eq!(again.note, first.note);
    assert!(
        again
            .to_string()
            .starts_with("unchanged stream=/orders size=10 root=")
    );

    // Every event is provably in it, from the proof, the event and the key alone.
    let verifier = f.signer.verifier();
    for seq in 1..=10 {
        let (proof, content) = tlog.prove_inclusion(STREAM, seq, None).await.unwrap();
        let text = proof.to_json();
        let proof = InclusionProof::from_json(&text).unwrap();
        let event: Value = serde_json::from_str(&content).unwrap();
        let ok = proof.verify(&event, &verifier).unwrap();
        assert_eq!((ok.seq, ok.checkpoint.size), (seq, 10));
        // Pretty-printed, the event is the same event.
        let pretty: Value =
            serde_json::from_str(&serde_json::to_string_pretty(&event).unwrap()).unwrap();
        proof.verify(&pretty, &verifier).unwrap();
        // Another event does not verify at this seq.
        let other = f.content(if seq == 1 { 2 } else { 1 }).await;
        assert!(matches!(
            proof.verify(&other, &verifier),
            Err(TlogError::Proof(_))
        ));
    }

    // The log grows; the new checkpoint is consistent with the old one.
    f.append(11, 25).await;
    let second = tlog.checkpoint(STREAM).await.unwrap().unwrap();
    assert!(second.signed);
    assert_eq!(second.checkpoint.size, 25);
    let proof = tlog.prove_consistency(STREAM, 10, None).await.unwrap();
    let proof = ConsistencyProof::from_json(&proof.to_json()).unwrap();
    let (old, new) = proof.verify(&verifier).unwrap();
    assert_eq!((old.size, new.size), (10, 25));
    // A proof against an older stored checkpoint.
    let (old_proof, _) = tlog.prove_inclusion(STREAM, 3, Some(10)).await.unwrap();
    assert_eq!(old_proof.tree_size, 10);
    old_proof.verify(&f.content(3).await, &verifier).unwrap();
    // A fresh reader (nothing cached) agrees, and the table matches the checkpoint.
    let fresh = f.tlog();
    let (p, _) = fresh.prove_inclusion(STREAM, 25, None).await.unwrap();
    p.verify(&f.content(25).await, &verifier).unwrap();
    assert_eq!(
        fresh
            .verify_against_checkpoint(STREAM)
            .await
            .unwrap()
            .unwrap()
            .size,
        25
    );

    // Bad requests.
    assert!(matches!(
        tlog.prove_inclusion(STREAM, 26, None).await,
        Err(TlogError::MalformedProof { .. })
    ));
    assert!(matches!(
        tlog.prove_inclusion(STREAM, 1, Some(11)).await,
        Err(TlogError::MalformedProof { .. })
    ));
    assert!(matches!(
        tlog.prove_inclusion("/none", 1, None).await,
        Err(TlogError::MalformedProof { .. })
    ));
    assert!(matches!(
        tlog.prove_consistency(STREAM, 25, Some(10)).await,
        Err(TlogError::MalformedProof { .. })
    ));
    assert!(matches!(
        tlog.prove_consistency(STREAM, 11, None).await,
        Err(TlogError::MalformedProof { .. })
    ));
    assert!(tlog.checkpoint("/none").await.unwrap().is_none());
    assert!(
        tlog.verify_against_checkpoint("/none")
            .await
            .unwrap()
            .is_none()
    );
    // Another key's verifier trusts none of these checkpoints.
    let stranger = PostgresTlog::new(
        f.sink.clone(),
        DirStore::new(&f.dir),
        NoteSigner::generate(LOG).unwrap().verifier(),
    );
    assert!(matches!(
        stranger.prove_inclusion(STREAM, 1, None).await,
        Err(TlogError::UnverifiedNote { .. })
    ));
    assert!(matches!(
        stranger.checkpoint(STREAM).await,
        Err(TlogError::InvalidKey { .. })
    ));
    // A proof checked with another key, or for another stream, fails.
    let other_key = NoteSigner::generate(LOG).unwrap().verifier();
    assert!(p.verify(&f.content(25).await, &other_key).is_err());
    let mut moved = p.clone();
    moved.stream = "/other".into();
    assert!(matches!(
        moved.verify(&f.content(25).await, &verifier),
        Err(TlogError::MalformedProof { .. })
    ));
    let mut resized = p.clone();
    resized.tree_size = 24;
    assert!(matches!(
        resized.verify(&f.content(25).await, &verifier),
        Err(TlogError::MalformedProof { .. })
    ));
    f.finish().await;
}

#[tokio::test]
async fn export_writes_cloudevents_with_proofs() {
    let f = fixture!(6);
    let tlog = f.tlog();
    tlog.checkpoint(STREAM).await.unwrap().unwrap();
    f.append(7, 8).await;
    let mut out = Vec::new();
    let (written, uncovered) = tlog
        .export(STREAM, EventTime::from_unix_micros(0).unwrap(), &mut out)
        .await
        .unwrap();
    assert_eq!((written, uncovered), (6, 2));
    let text = String::from_utf8(out).unwrap();
    let verifier = f.signer.verifier();
    for (i, line) in text.lines().enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["specversion"], "1.0");
        assert_eq!(line["type"], "order.placed");
        assert_eq!(line["data"]["attributes"]["n"], i as u64 + 1);
        assert_eq!(line["auditseq"], i as u64 + 1);
        let ok = InclusionProof::verify_export_line(&line, &verifier).unwrap();
        assert_eq!(ok.seq, i as u64 + 1);
        // A changed attribute in the export fails.
        let mut changed = line.clone();
        changed["data"]["attributes"]["amount"] = Value::from(0);
        assert!(matches!(
            InclusionProof::verify_export_line(&changed, &verifier),
            Err(TlogError::Proof(_))
        ));
        let mut relabelled = line.clone();
        relabelled["auditseq"] = Value::from(99);
        assert!(InclusionProof::verify_export_line(&relabelled, &verifier).is_err());
    }
    // `since` after every event: nothing.
    let mut none = Vec::new();
    let far = EventTime::parse_rfc3339("2999-01-01T00:00:00Z").unwrap();
    assert_eq!(tlog.export(STREAM, far, &mut none).await.unwrap(), (0, 0));
    assert!(none.is_empty());
    f.finish().await;
}

/// The attack of the issue: the last 3 rows deleted and the head rolled
/// back, so that the chain and its head agree again.
#[tokio::test]
async fn truncate_and_roll_back_is_caught() {
    let f = fixture!(10);
    let before = f.tlog().checkpoint(STREAM).await.unwrap().unwrap();
    f.tamper("DELETE FROM {s}.events WHERE stream = $1 AND seq > 7")
        .await;
    f.tamper(
        "UPDATE {s}.streams SET last_seq = 7, \
         last_hash = (SELECT hash FROM {s}.events WHERE stream = $1 AND seq = 7) WHERE stream = $1",
    )
    .await;
    // The chain alone no longer sees anything wrong.
    assert!(f.sink.verify(STREAM).await.unwrap().is_intact());
    // The checkpoint does.
    let detail = inconsistent(f.tlog().checkpoint(STREAM).await);
    assert!(
        detail.contains("7 events, fewer than the checkpoint"),
        "{detail}"
    );
    let detail = inconsistent(f.tlog().verify_against_checkpoint(STREAM).await);
    assert!(detail.contains("holds 7 of its events"), "{detail}");
    // Appending three new events to reach the old size does not help.
    f.append(8, 10).await;
    let detail = inconsistent(f.tlog().checkpoint(STREAM).await);
    assert!(detail.contains("another root"), "{detail}");
    assert!(
        inconsistent(f.tlog().verify_against_checkpoint(STREAM).await).contains("another root")
    );
    // The stored checkpoint was not replaced by one of the rewritten log.
    let latest = std::fs::read_to_string(f.dir.join("%2Forders").join("latest")).unwrap();
    assert_eq!(latest, before.note);
    f.finish().await;
}

#[tokio::test]
async fn an_edited_row_is_caught() {
    let f = fixture!(10);
    let tlog = f.tlog();
    tlog.checkpoint(STREAM).await.unwrap().unwrap();
    let (proof_before, _) = tlog.prove_inclusion(STREAM, 4, None).await.unwrap();
    f.tamper(
        "UPDATE {s}.events SET content = replace(content::text, '\"amount\":5', '\"amount\":500')::json \
         WHERE stream = $1 AND seq = 4",
    )
    .await;
    let edited = f.content(4).await;
    assert_eq!(edited["attributes"]["amount"], 500);
    // The row's proof, taken before or after the edit, does not verify the edited event.
    let verifier = f.signer.verifier();
    assert!(matches!(
        proof_before.verify(&edited, &verifier),
        Err(TlogError::Proof(ProofError::RootMismatch))
    ));
    let (proof_after, _) = f.tlog().prove_inclusion(STREAM, 4, None).await.unwrap();
    assert!(proof_after.verify(&edited, &verifier).is_err());
    // The full check from content catches it.
    assert!(
        inconsistent(f.tlog().verify_against_checkpoint(STREAM).await).contains("another root")
    );
    f.finish().await;
}

#[tokio::test]
async fn a_deleted_middle_row_is_caught() {
    let f = fixture!(10);
    f.tlog().checkpoint(STREAM).await.unwrap().unwrap();
    assert_eq!(
        f.tamper("DELETE FROM {s}.events WHERE stream = $1 AND seq = 5")
            .await,
        1
    );
    match f.tlog().checkpoint(STREAM).await {
        Err(TlogError::Broken { detail, .. }) => {
            assert!(detail.contains("rows are missing"), "{detail}");
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(matches!(
        f.tlog().prove_inclusion(STREAM, 4, None).await,
        Err(TlogError::Broken { .. })
    ));
    let detail = inconsistent(f.tlog().verify_against_checkpoint(STREAM).await);
    assert!(detail.contains("row 5 is missing"), "{detail}");
    f.finish().await;
}

/// A forged row with the whole chain after it recomputed, and the head: the
/// chain verifies, the checkpoint does not.
#[tokio::test]
async fn a_forged_row_with_a_recomputed_chain_is_caught() {
    let f = fixture!(10);
    let before = f.tlog().checkpoint(STREAM).await.unwrap().unwrap();
    let (proof_before, _) = f.tlog().prove_inclusion(STREAM, 6, None).await.unwrap();
    let mut forged = f.content(6).await;
    forged["attributes"]["amount"] = Value::from(0.01);
    let forged_text = idempotency_audit::canonical_json(&forged);
    // Rewrite row 6 and re-chain rows 6..=10 as the owner of the database could.
    let mut prev = GENESIS_HASH;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT seq, content::text AS c FROM \"{}\".events WHERE stream = $1 ORDER BY seq",
        f.schema
    )))
    .bind(STREAM)
    .fetch_all(&f.pool)
    .await
    .unwrap();
    let mut tx = f.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    for row in rows {
        let seq: i64 = row.get("seq");
        let content = if seq == 6 {
            forged_text.clone()
        } else {
            row.get("c")
        };
        let hash = chain_hash(&prev, seq as u64, STREAM, &content);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE \"{}\".events SET content = $3::json, prev_hash = $4, hash = $5 \
             WHERE stream = $1 AND seq = $2",
            f.schema
        )))
        .bind(STREAM)
        .bind(seq)
        .bind(&content)
        .bind(prev.to_vec())
        .bind(hash.to_vec())
        .execute(&mut *tx)
        .await
        .unwrap();
        prev = hash;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".streams SET last_hash = $2 WHERE stream = $1",
        f.schema
    )))
    .bind(STREAM)
    .bind(prev.to_vec())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // The chain is perfect again.
    let report = f.sink.verify(STREAM).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.last_hash, Some(prev));
    // The checkpoint is not.
    assert!(inconsistent(f.tlog().checkpoint(STREAM).await).contains("another root"));
    assert!(
        inconsistent(f.tlog().verify_against_checkpoint(STREAM).await).contains("another root")
    );
    assert!(inconsistent(f.tlog().prove_inclusion(STREAM, 6, None).await).contains("another root"));
    assert!(proof_before.verify(&forged, &f.signer.verifier()).is_err());
    // The original event still verifies against the checkpoint taken before.
    assert_eq!(proof_before.checkpoint, before.note);
    f.finish().await;
}

#[tokio::test]
async fn the_checkpointer_signs_every_stream_periodically_and_logs_refusals() {
    let f = fixture!(3);
    f.sink
        .append(&AuditEvent::builder("t", "/payments").build())
        .await
        .unwrap();
    let tlog = f.tlog();
    let results = tlog.checkpoint_all().await.unwrap();
    let sizes: Vec<(String, u64)> = results
        .iter()
        .map(|(s, r)| {
            (
                s.clone(),
                r.as_ref().unwrap().as_ref().unwrap().checkpoint.size,
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [("/orders".to_owned(), 3), ("/payments".to_owned(), 1)]
    );

    let checkpointer = tlog.spawn_checkpointer(Duration::from_millis(20));
    f.append(4, 5).await;
    let store = DirStore::new(&f.dir);
    let verifier = f.signer.verifier();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        use idempotency_audit::tlog::CheckpointStore;
        let latest = store.latest(STREAM).await.unwrap().unwrap();
        if Checkpoint::open(&latest, &verifier).unwrap().size == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint of size 5"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    checkpointer.shutdown().await;
    // A tampered stream is refused in the round; the other stream is still checkpointed.
    f.tamper("DELETE FROM {s}.events WHERE stream = $1 AND seq = 5")
        .await;
    f.tamper(
        "UPDATE {s}.streams SET last_seq = 4, \
         last_hash = (SELECT hash FROM {s}.events WHERE stream = $1 AND seq = 4) WHERE stream = $1",
    )
    .await;
    f.sink
        .append(&AuditEvent::builder("t", "/payments").build())
        .await
        .unwrap();
    let results = f.tlog().checkpoint_all().await.unwrap();
    assert!(matches!(
        results[0].1,
        Err(TlogError::Inconsistent {
            checkpoint_size: 5,
            ..
        })
    ));
    assert_eq!(
        results[1]
            .1
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .checkpoint
            .size,
        2
    );
    f.finish().await;
}

/// The trees a long-lived checkpointer keeps in memory do not hide a change
/// made behind its back: a rolled-back head and a changed last row are
/// both caught by the same instance.
#[tokio::test]
async fn a_cached_tree_notices_changes_behind_its_back() {
    let f = fixture!(10);
    let tlog = f.tlog();
    tlog.checkpoint(STREAM).await.unwrap().unwrap();
    // The last row re-hashed (and the head with it): the cache is dropped and
    // everything read again, which no longer matches the checkpoint.
    f.tamper("UPDATE {s}.events SET hash = sha256(hash) WHERE stream = $1 AND seq = 10")
        .await;
    f.tamper(
        "UPDATE {s}.streams SET last_hash = (SELECT hash FROM {s}.events WHERE stream = $1 AND seq = 10) \
         WHERE stream = $1",
    )
    .await;
    assert!(inconsistent(tlog.checkpoint(STREAM).await).contains("another root"));
    // The head rolled back below what was read.
    let g = fixture!(10);
    let tlog = g.tlog();
    tlog.checkpoint(STREAM).await.unwrap().unwrap();
    g.tamper("DELETE FROM {s}.events WHERE stream = $1 AND seq > 8")
        .await;
    g.tamper(
        "UPDATE {s}.streams SET last_seq = 8, \
         last_hash = (SELECT hash FROM {s}.events WHERE stream = $1 AND seq = 8) WHERE stream = $1",
    )
    .await;
    let detail = inconsistent(tlog.checkpoint(STREAM).await);
    assert!(detail.contains("head is at 8, below 10"), "{detail}");
    // Afterwards (the cache dropped), the shorter table against the checkpoint.
    let detail = inconsistent(tlog.checkpoint(STREAM).await);
    assert!(
        detail.contains("8 events, fewer than the checkpoint"),
        "{detail}"
    );
    f.finish().await;
    g.finish().await;
}

/// A stored hash that is not 32 bytes is reported, not hashed as a leaf.
#[tokio::test]
async fn a_malformed_stored_hash_is_reported() {
    let f = fixture!(4);
    f.tamper("UPDATE {s}.events SET hash = '\\x00'::bytea WHERE stream = $1 AND seq = 2")
        .await;
    match f.tlog().checkpoint(STREAM).await {
        Err(TlogError::Broken { detail, .. }) => {
            assert!(detail.contains("not 32 bytes"), "{detail}")
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    f.finish().await;
}
