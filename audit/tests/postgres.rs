//! The PostgreSQL sink against a real server: append-only enforcement,
//! tamper detection, concurrent appends, modes, migrations.
#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeSet;

use idempotency_audit::postgres::sqlx::{self, Connection, PgConnection, Row};
use idempotency_audit::postgres::{APPEND_ONLY_SQLSTATE, PostgresSink, StreamBy};
use idempotency_audit::{
    Actor, AuditError, AuditEvent, AuditModes, AuditSink, Auditor, BreakKind, BufferedSink,
    DropReason, EventTime, GENESIS_HASH, Mode, Outcome, Recorded, chain_hash,
};
use serde_json::json;

macro_rules! sink {
    () => {
        match common::sink().await {
            Some(s) => s,
            None => return,
        }
    };
    ($n:expr) => {
        match common::sink_with($n).await {
            Some(s) => s,
            None => return,
        }
    };
}

fn event(stream: &str, n: u64) -> AuditEvent {
    AuditEvent::builder("test.appended", stream)
        .subject(format!("item-{n}"))
        .actor(Actor::user("u1").with_tenant("acme"))
        .outcome(Outcome::Created)
        .attribute("n", n)
        .build()
}

async fn append_n(sink: &PostgresSink, stream: &str, n: u64) -> Vec<AuditEvent> {
    let events: Vec<_> = (1..=n).map(|i| event(stream, i)).collect();
    for e in &events {
        sink.append(e).await.expect("append");
    }
    events
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// The first break of a broken report.
fn broken(report: &idempotency_audit::ChainReport) -> (u64, BreakKind) {
    let b = report
        .first_break()
        .cloned()
        .unwrap_or_else(|| panic!("expected a break: {report}"));
    (b.seq, b.kind)
}

/// Every break of a report, as (seq, through, kind).
fn breaks(report: &idempotency_audit::ChainReport) -> Vec<(u64, u64, BreakKind)> {
    assert_eq!(report.break_count, report.breaks.len() as u64, "{report}");
    report
        .breaks
        .iter()
        .map(|b| (b.seq, b.through, b.kind.clone()))
        .collect()
}

#[tokio::test]
async fn appends_form_a_chain_the_verifier_recomputes() {
    let sink = sink!();
    let stream = common::stream("chain");
    let mut conn = sink.pool().acquire().await.unwrap();
    let mut prev = GENESIS_HASH;
    for n in 1..=5 {
        let e = event(&stream, n);
        let appended = sink.append_in(&mut conn, &e).await.unwrap();
        assert_eq!(
            (appended.stream.as_str(), appended.seq),
            (stream.as_str(), n)
        );
        // The hash computed by the database is the documented construction.
        assert_eq!(
            appended.hash,
            chain_hash(&prev, n, &stream, &e.canonical_json())
        );
        prev = appended.hash;
    }
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(
        (report.events, report.last_seq, report.last_hash),
        (5, 5, Some(prev))
    );

    // Small pages walk the same chain.
    let paged = sink
        .clone()
        .with_verify_batch(2)
        .verify(&stream)
        .await
        .unwrap();
    assert_eq!(paged, report);

    let unknown = sink.verify(&common::stream("never-written")).await.unwrap();
    assert!(unknown.is_intact());
    assert_eq!(unknown.events, 0);
}

#[tokio::test]
async fn every_field_survives_storage_and_the_column_cross_check() {
    let sink = sink!();
    let stream = common::stream("fields");
    let e = AuditEvent::builder("promotion.attempted", &stream)
        .subject("E-1/3 \u{0} nul and ünïcödé")
        .actor(
            Actor::service("billing")
                .with_role("writer")
                .with_tenant("t\u{0}1"),
        )
        .outcome(Outcome::Other("escalated".into()))
        .reason("a \"quoted\" reason\nwith a newline")
        .correlation_id("req-1")
        .trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
        .span_id("00f067aa0ba902b7")
        .key_hash_bytes(&[0x5a; 32])
        .attribute("big", u64::MAX)
        .attribute("float", 0.1)
        .before(json!({"state": "draft", "nested": [1, {"b": 2, "a": 1}]}))
        .after(json!(null))
        .time(EventTime::parse_rfc3339("9999-12-31T23:59:59.999999Z").unwrap())
        .build();
    sink.append(&e).await.unwrap();
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact(), "{report}");

    let row = sqlx::query(
        "SELECT content::text AS content, subject, actor_tenant, outcome, key_hash, \
         to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS t \
         FROM audit.events WHERE stream = $1",
    )
    .bind(&stream)
    .fetch_one(sink.pool())
    .await
    .unwrap();
    let content: String = row.get("content");
    assert_eq!(content, e.canonical_json());
    let back: AuditEvent = serde_json::from_str(&content).unwrap();
    assert_eq!(back.subject, e.subject, "the content keeps NUL exactly");
    assert_eq!(
        row.get::<String, _>("subject"),
        "E-1/3 \u{FFFD} nul and ünïcödé"
    );
    assert_eq!(row.get::<String, _>("actor_tenant"), "t\u{FFFD}1");
    assert_eq!(row.get::<String, _>("outcome"), "escalated");
    assert_eq!(row.get::<String, _>("key_hash"), "5a".repeat(32));
    assert_eq!(row.get::<String, _>("t"), "9999-12-31 23:59:59.999999");
}

#[tokio::test]
async fn update_delete_and_truncate_are_refused() {
    let sink = sink!();
    let stream = common::stream("refuse");
    append_n(&sink, &stream, 2).await;
    let pool = sink.pool();

    for sql in [
        "UPDATE audit.events SET outcome = 'deleted' WHERE stream = $1",
        "UPDATE audit.events SET outcome = 'deleted' WHERE stream = $1 AND seq = -1",
        "DELETE FROM audit.events WHERE stream = $1",
        "DELETE FROM audit.events WHERE stream = $1 AND seq = -1",
        "DELETE FROM audit.streams WHERE stream = $1",
        "UPDATE audit.streams SET last_seq = 1 WHERE stream = $1",
        "INSERT INTO audit.streams (stream, last_seq, last_hash) \
         VALUES ($1 || '/forged', 7, decode(repeat('00', 32), 'hex'))",
    ] {
        let err = sqlx::query(sql)
            .bind(&stream)
            .execute(pool)
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some(APPEND_ONLY_SQLSTATE),
            "{sql}: {err}"
        );
    }
    for table in ["audit.events", "audit.streams"] {
        // In a transaction that is rolled back whatever happens, so a
        // regression could never empty the shared table.
        let mut tx = pool.begin().await.unwrap();
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {table}")))
            .execute(&mut *tx)
            .await
            .unwrap_err();
        tx.rollback().await.unwrap();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some(APPEND_ONLY_SQLSTATE),
            "{table}: {err}"
        );
        assert!(err.to_string().contains("append-only"));
    }
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact() && report.events == 2, "{report}");
}

/// Rows enter only through the append function: even a superuser's direct
/// INSERT is refused (while the triggers are on), whatever it supplies.
#[tokio::test]
async fn a_direct_insert_is_refused() {
    let sink = sink!();
    let stream = common::stream("direct");
    append_n(&sink, &stream, 2).await;
    let head: Vec<u8> = sqlx::query_scalar("SELECT last_hash FROM audit.streams WHERE stream = $1")
        .bind(&stream)
        .fetch_one(sink.pool())
        .await
        .unwrap();
    for (seq, prev) in [(3, head), (5, vec![0; 32])] {
        let err = sqlx::query(
            "INSERT INTO audit.events (stream, seq, id, type, source, time, content, prev_hash, hash) \
             VALUES ($1, $2, gen_random_uuid(), 't', 's', now(), '{}', $3, sha256('x'))",
        )
        .bind(&stream)
        .bind(seq)
        .bind(prev)
        .execute(sink.pool())
        .await
        .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some(APPEND_ONLY_SQLSTATE),
            "{err}"
        );
        assert!(
            err.to_string().contains("only through append_events"),
            "{err}"
        );
    }
    // The mark the function sets is its own: after a call, a direct INSERT
    // in the same transaction is refused again.
    let mut tx = sink.pool().begin().await.unwrap();
    sink.append_to_stream(&mut tx, &stream, &event(&stream, 3))
        .await
        .unwrap();
    let err = sqlx::query(
        "INSERT INTO audit.events (stream, seq, id, type, source, time, content, prev_hash, hash) \
         VALUES ($1, 4, gen_random_uuid(), 't', 's', now(), '{}', sha256('x'), sha256('x'))",
    )
    .bind(&stream)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some(APPEND_ONLY_SQLSTATE),
        "{err}"
    );
    tx.rollback().await.unwrap();
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact() && report.events == 2, "{report}");
}

/// Several kinds of tampering in one stream: every one is reported, in
/// sequence order, with a summary.
#[tokio::test]
async fn every_break_of_a_stream_is_reported() {
    let sink = sink!();
    let pool = sink.pool();
    let stream = common::stream("many-breaks");
    append_n(&sink, &stream, 10).await;
    for sql in [
        "UPDATE audit.events SET outcome = 'deleted' WHERE stream = $1 AND seq = 2",
        "UPDATE audit.events SET content = replace(content::text, '\"n\":4', '\"n\":40')::json \
         WHERE stream = $1 AND seq = 4",
        "UPDATE audit.events SET content = replace(content::text, '\"n\":6', '\"n\":60')::json, \
           hash = sha256(prev_hash || int8send(seq) \
             || int8send(octet_length(convert_to(stream, 'UTF8'))::bigint) \
             || convert_to(stream, 'UTF8') \
             || convert_to(replace(content::text, '\"n\":6', '\"n\":60'), 'UTF8')) \
         WHERE stream = $1 AND seq = 6",
        "DELETE FROM audit.events WHERE stream = $1 AND seq >= 9",
    ] {
        common::tamper(pool, sql, &stream).await;
    }
    let report = sink
        .clone()
        .with_verify_batch(3)
        .verify(&stream)
        .await
        .unwrap();
    assert_eq!(
        breaks(&report),
        [
            (2, 2, BreakKind::ColumnMismatch { column: "outcome" }),
            (4, 4, BreakKind::HashMismatch),
            (7, 7, BreakKind::PrevHashMismatch),
            (9, 10, BreakKind::Missing),
        ]
    );
    assert_eq!((report.events, report.last_seq), (8, 8));
    assert_eq!(
        report.to_string().lines().next(),
        Some(format!("BROKEN stream={stream} events=8 last_seq=8 breaks=4").as_str())
    );
    assert_eq!(
        sink.verify(&stream).await.unwrap(),
        report,
        "pages do not matter"
    );
}

#[tokio::test]
async fn a_row_changed_behind_the_triggers_back_is_detected() {
    let sink = sink!();
    let pool = sink.pool();

    // Content rewritten: the row's own hash no longer matches.
    let stream = common::stream("tamper-content");
    append_n(&sink, &stream, 5).await;
    let changed = common::tamper(
        pool,
        "UPDATE audit.events SET content = replace(content::text, '\"n\":3', '\"n\":30')::json \
         WHERE stream = $1 AND seq = 3",
        &stream,
    )
    .await;
    assert_eq!(changed, 1);
    assert_eq!(
        broken(&sink.verify(&stream).await.unwrap()),
        (3, BreakKind::HashMismatch)
    );

    // Content rewritten and re-hashed: the next row's link breaks.
    let stream = common::stream("tamper-rehash");
    append_n(&sink, &stream, 5).await;
    common::tamper(
        pool,
        "UPDATE audit.events SET content = replace(content::text, '\"n\":2', '\"n\":20')::json, \
           hash = sha256(prev_hash || int8send(seq) \
             || int8send(octet_length(convert_to(stream, 'UTF8'))::bigint) \
             || convert_to(stream, 'UTF8') \
             || convert_to(replace(content::text, '\"n\":2', '\"n\":20'), 'UTF8')) \
         WHERE stream = $1 AND seq = 2",
        &stream,
    )
    .await;
    assert_eq!(
        broken(&sink.verify(&stream).await.unwrap()),
        (3, BreakKind::PrevHashMismatch)
    );

    // A queryable column changed, content left alone.
    let stream = common::stream("tamper-column");
    append_n(&sink, &stream, 4).await;
    common::tamper(
        pool,
        "UPDATE audit.events SET outcome = 'deleted' WHERE stream = $1 AND seq = 4",
        &stream,
    )
    .await;
    assert_eq!(
        broken(&sink.verify(&stream).await.unwrap()),
        (4, BreakKind::ColumnMismatch { column: "outcome" })
    );

    // The stored hash itself changed.
    let stream = common::stream("tamper-hash");
    append_n(&sink, &stream, 3).await;
    common::tamper(
        pool,
        "UPDATE audit.events SET hash = sha256(hash) WHERE stream = $1 AND seq = 1",
        &stream,
    )
    .await;
    assert_eq!(
        breaks(&sink.verify(&stream).await.unwrap()),
        [
            (1, 1, BreakKind::HashMismatch),
            (2, 2, BreakKind::PrevHashMismatch)
        ]
    );
}

#[tokio::test]
async fn a_row_deleted_behind_the_triggers_back_is_detected() {
    let sink = sink!();
    let pool = sink.pool();

    let stream = common::stream("delete-middle");
    append_n(&sink, &stream, 5).await;
    let deleted = common::tamper(
        pool,
        "DELETE FROM audit.events WHERE stream = $1 AND seq = 3",
        &stream,
    )
    .await;
    assert_eq!(deleted, 1);
    let report = sink.verify(&stream).await.unwrap();
    assert_eq!(broken(&report), (3, BreakKind::Missing));
    assert!(report.to_string().contains("seq=3"), "{report}");

    let stream = common::stream("delete-tail");
    append_n(&sink, &stream, 5).await;
    common::tamper(
        pool,
        "DELETE FROM audit.events WHERE stream = $1 AND seq >= 4",
        &stream,
    )
    .await;
    assert_eq!(
        broken(&sink.verify(&stream).await.unwrap()),
        (4, BreakKind::Missing)
    );

    let stream = common::stream("delete-head");
    append_n(&sink, &stream, 2).await;
    common::tamper(pool, "DELETE FROM audit.streams WHERE stream = $1", &stream).await;
    assert_eq!(
        broken(&sink.verify(&stream).await.unwrap()),
        (2, BreakKind::HeadMissing)
    );
}

#[tokio::test]
async fn forged_rows_numbered_below_one_and_odd_stream_names_are_read_too() {
    let sink = sink!();
    let pool = sink.pool();
    // A name that would break a statement it was pasted into.
    let stream = common::stream("it's; -- \\ \"odd\"");
    append_n(&sink, &stream, 4).await;
    let intact = sink.verify(&stream).await.unwrap();
    assert!(intact.is_intact(), "{intact}");
    assert_eq!(intact.events, 4);
    for seq in [0, -7] {
        common::tamper(
            pool,
            &format!(
                "INSERT INTO audit.events SELECT stream, {seq}, gen_random_uuid(), type, source, \
                   subject, time, actor_id, actor_tenant, outcome, correlation_id, key_hash, \
                   content, prev_hash, hash \
                 FROM audit.events WHERE stream = $1 AND seq = 2"
            ),
            &stream,
        )
        .await;
    }
    for pages in [1, 2, 100] {
        let report = sink
            .clone()
            .with_verify_batch(pages)
            .verify(&stream)
            .await
            .unwrap();
        assert_eq!(
            breaks(&report),
            [(0, 0, BreakKind::Unexpected), (0, 0, BreakKind::Unexpected)],
            "{pages} per statement: {report}"
        );
        assert_eq!((report.events, report.last_seq), (4, 4));
    }
}

#[tokio::test]
async fn eight_concurrent_writers_keep_one_contiguous_chain() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 1_000;
    let sink = sink!(10);
    let stream = common::stream("concurrent");
    let sink = sink.with_stream(StreamBy::Fixed(stream.clone()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = sink.pool().acquire().await.unwrap();
            let mut seqs = Vec::with_capacity(EACH as usize);
            for i in 0..EACH {
                let e = AuditEvent::builder("test.concurrent", format!("/writer/{w}"))
                    .attribute("i", i)
                    .build();
                seqs.push(sink.append_in(&mut conn, &e).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer's events keep their order"
        );
        all.extend(seqs);
    }
    assert_eq!(all.len() as u64, WRITERS * EACH);
    assert_eq!(all.first(), Some(&1));
    assert_eq!(all.last(), Some(&(WRITERS * EACH)));
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(
        (report.events, report.last_seq),
        (WRITERS * EACH, WRITERS * EACH)
    );
}

async fn business_conn() -> PgConnection {
    let mut conn = PgConnection::connect(&common::database_url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TEMP TABLE business (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn business_rows(conn: &mut PgConnection) -> i64 {
    sqlx::query("SELECT count(*) AS n FROM business")
        .fetch_one(conn)
        .await
        .unwrap()
        .get("n")
}

/// A business operation: its row and its atomic audit event commit together.
async fn place_order<A>(
    conn: &mut PgConnection,
    auditor: &Auditor<A>,
    id: i32,
) -> Result<(), AuditError>
where
    A: for<'t> idempotency_audit::TransactionalSink<sqlx::Transaction<'t, sqlx::Postgres>>,
{
    let mut tx = conn.begin().await.map_err(AuditError::backend)?;
    sqlx::query("INSERT INTO business VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(AuditError::backend)?;
    auditor
        .record_in(
            &mut tx,
            AuditEvent::builder("order.placed", "/orders").build(),
        )
        .await?;
    tx.commit().await.map_err(AuditError::backend)
}

#[tokio::test]
async fn atomic_mode_commits_and_rolls_back_with_the_business_transaction() {
    let sink = sink!();
    let stream = common::stream("atomic");
    let sink = sink.with_stream(StreamBy::Fixed(stream.clone()));
    let logged = idempotency_audit::MemorySink::new();
    let auditor = Auditor::new(
        AuditModes::new(Mode::Atomic),
        sink.clone(),
        BufferedSink::new(logged.clone(), 16),
    );
    let mut conn = business_conn().await;

    // Committed together.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO business VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let recorded = auditor
        .record_in(
            &mut tx,
            AuditEvent::builder("order.placed", "/orders").build(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match recorded {
        Recorded::Written(a) => assert_eq!((a.stream.as_str(), a.seq), (stream.as_str(), 1)),
        other => panic!("unexpected {other:?}"),
    }

    // The business change fails after the audit insert: both roll back,
    // and the stream head does not move.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO business VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    auditor
        .record_in(
            &mut *tx,
            AuditEvent::builder("order.placed", "/orders").build(),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(business_rows(&mut conn).await, 1);
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact() && report.events == 1, "{report}");

    // The audit insert fails (its schema does not exist): the operation
    // fails and the business change rolls back.
    let missing = sink.clone().with_schema(&common::fresh_schema()).unwrap();
    let failing = Auditor::new(
        AuditModes::new(Mode::Atomic),
        missing,
        auditor.buffer().clone(),
    );
    let err = place_order(&mut conn, &failing, 3).await.unwrap_err();
    assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");
    // Even a commit attempt after the failure does not keep the row.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO business VALUES (4)")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(
        failing
            .record_in(
                &mut tx,
                AuditEvent::builder("order.placed", "/orders").build()
            )
            .await
            .is_err()
    );
    let _ = tx.commit().await;
    assert_eq!(business_rows(&mut conn).await, 1);
    assert!(logged.is_empty());
}

#[tokio::test]
async fn fire_and_forget_mode_never_fails_the_operation_and_counts_drops() {
    let sink = sink!();
    let durable = common::stream("ff-durable");
    let sink = sink.with_stream(StreamBy::Fixed(durable.clone()));
    // Two failing sinks: a schema that does not exist, a server that does not answer.
    let missing = sink.clone().with_schema(&common::fresh_schema()).unwrap();
    let unreachable_pool = idempotency_audit::postgres::sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let unreachable = PostgresSink::new(unreachable_pool);
    let direct = unreachable.append(&event("/x", 1)).await.unwrap_err();
    assert!(
        matches!(direct, AuditError::Unavailable { .. }),
        "{direct:?}"
    );

    for failing in [missing, unreachable] {
        let buffer = BufferedSink::new(failing, 64);
        let auditor = Auditor::new(
            AuditModes::new(Mode::FireAndForget).with("order.paid", Mode::Atomic),
            sink.clone(),
            buffer.clone(),
        );
        let mut conn = business_conn().await;
        for i in 0..20 {
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("INSERT INTO business VALUES ($1)")
                .bind(i)
                .execute(&mut *tx)
                .await
                .unwrap();
            let r = auditor
                .record_in(
                    &mut tx,
                    AuditEvent::builder("order.viewed", "/orders").build(),
                )
                .await
                .unwrap();
            assert_eq!(r, Recorded::Queued);
            tx.commit().await.unwrap();
        }
        // An atomic event in the same setup still goes to the durable sink.
        auditor
            .record(AuditEvent::builder("order.paid", "/orders").build())
            .await
            .unwrap();
        assert_eq!(business_rows(&mut conn).await, 20);
        buffer.flush().await.unwrap();
        assert_eq!(buffer.dropped_by(DropReason::SinkError), 20);
        assert_eq!(buffer.written(), 0);
    }
    let report = sink.verify(&durable).await.unwrap();
    assert!(report.is_intact() && report.events == 2, "{report}");
}

#[tokio::test]
async fn a_duplicate_in_a_batch_is_refused_alone() {
    let sink = sink!();
    let stream = common::stream("batch");
    let sink = sink.with_stream(StreamBy::Fixed(stream.clone()));
    let events: Vec<_> = (1..=3).map(|n| event("/b", n)).collect();
    sink.append_batch(&events).await.unwrap();

    // The same id again: refused as a duplicate, alone.
    let dup = sink.append(&events[1]).await.unwrap_err();
    assert!(
        matches!(dup, AuditError::Duplicate { id } if id == events[1].id),
        "{dup:?}"
    );
    let batch = vec![event("/b", 4), events[0].clone(), event("/b", 5)];
    let err = sink.append_batch(&batch).await.unwrap_err();
    assert_eq!(err.written, 2);
    assert_eq!(err.refused.len(), 1);
    assert_eq!(err.refused[0].index, 1);
    assert!(matches!(
        err.refused[0].source,
        AuditError::Duplicate { .. }
    ));
    assert!(matches!(
        err.source,
        AuditError::Refused {
            refused: 1,
            total: 3
        }
    ));
    assert_eq!(err.unwritten(batch.len()), 0);

    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.events, 5);

    let e = event("/b", 6);
    let mut conn = sink.pool().acquire().await.unwrap();
    let invalid = sink.append_to_stream(&mut conn, "", &e).await.unwrap_err();
    assert!(matches!(invalid, AuditError::InvalidStream { .. }));
    assert!(matches!(
        sink.verify("a\nb").await,
        Err(AuditError::InvalidStream { .. })
    ));
    let appended = sink.append_to_stream(&mut conn, &stream, &e).await.unwrap();
    assert_eq!(appended.seq, 6);
}

/// Streams named by the event's attribute `stream`, as a service naming
/// streams from request input would.
fn stream_from_attribute(sink: PostgresSink) -> PostgresSink {
    sink.with_stream(StreamBy::Custom(std::sync::Arc::new(|e: &AuditEvent| {
        e.attributes["stream"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    })))
}

fn event_on(stream: &str, n: u64) -> AuditEvent {
    AuditEvent::builder("test.appended", "/batch")
        .attribute("stream", stream)
        .attribute("n", n)
        .build()
}

async fn rows(sink: &PostgresSink, stream: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE stream = $1")
        .bind(stream)
        .fetch_one(sink.pool())
        .await
        .unwrap()
}

/// One bad event among 60 good ones costs only itself: refused up front
/// (a 250-byte stream name, a 6 kB correlation id set behind the builder's
/// back) or by the database (a duplicate id, found when the batch
/// transaction fails and the events are written again one by one).
#[tokio::test]
async fn one_bad_event_never_drops_the_rest_of_its_batch() {
    let sink = stream_from_attribute(sink!());
    let stream = common::stream("one-bad");
    let long = format!("{stream}/{}", "x".repeat(250));
    let stored = event_on(&stream, 0);
    sink.append(&stored).await.unwrap();
    let mut too_long = event_on(&stream, 0);
    too_long.correlation_id = Some(
        (0..200)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect(),
    );
    let bad = [event_on(&long, 0), too_long, stored.clone()];
    let mut total_refused = 0;
    for (which, bad) in bad.into_iter().enumerate() {
        let before = rows(&sink, &stream).await;
        let refused_before = sink.refused();
        let mut batch: Vec<_> = (1..=60).map(|n| event_on(&stream, n)).collect();
        batch.insert(17, bad);
        let err = sink.append_batch(&batch).await.unwrap_err();
        assert_eq!(err.written, 60, "case {which}: {err:?}");
        assert_eq!(err.refused.len(), 1, "case {which}");
        assert_eq!(err.refused[0].index, 17);
        assert_eq!(err.unwritten(batch.len()), 0);
        let expected = match which {
            0 => matches!(err.refused[0].source, AuditError::InvalidStream { .. }),
            1 => matches!(
                err.refused[0].source,
                AuditError::FieldTooLong {
                    field: "correlation_id",
                    max: 128
                }
            ),
            _ => matches!(err.refused[0].source, AuditError::Duplicate { id } if id == stored.id),
        };
        assert!(expected, "case {which}: {:?}", err.refused[0].source);
        assert_eq!(rows(&sink, &stream).await, before + 60, "case {which}");
        assert_eq!(sink.refused(), refused_before + 1);
        total_refused += 1;
    }
    assert_eq!(rows(&sink, &long).await, 0);
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact() && report.events == 181, "{report}");
    assert!(sink.refused() >= total_refused);
}

/// The same through the buffer that services put in front of the sink:
/// 60 events written, the bad one dropped and counted as refused.
#[tokio::test]
async fn a_buffer_over_postgres_writes_every_valid_event_of_a_batch() {
    let sink = stream_from_attribute(sink!());
    let stream = common::stream("buffered-one-bad");
    let buffer = BufferedSink::new(sink.clone(), 1_000);
    let mut batch: Vec<_> = (1..=60).map(|n| event_on(&stream, n)).collect();
    batch.insert(30, event_on(&"y".repeat(250), 0));
    // Queued at once, so the worker takes them as one batch of 61.
    buffer.append_batch(&batch).await.unwrap();
    buffer.flush().await.unwrap();
    assert_eq!(buffer.written(), 60);
    assert_eq!(buffer.dropped_by(DropReason::Refused), 1);
    assert_eq!(buffer.dropped(), 1);
    assert_eq!(rows(&sink, &stream).await, 60);
}

#[tokio::test]
async fn migrate_is_idempotent_concurrent_and_notices_edited_migrations() {
    let Some(pool) = common::pool(8).await else {
        return;
    };
    common::drop_stale_schemas(&pool).await;
    let schema = common::fresh_schema();
    let sink = PostgresSink::new(pool.clone())
        .with_schema(&schema)
        .unwrap();
    let runs = futures_util::future::join_all((0..4).map(|_| sink.migrate())).await;
    let mut applied = Vec::new();
    for r in runs {
        let r = r.unwrap();
        assert_eq!(r.version, 2);
        applied.extend(r.applied);
    }
    assert_eq!(applied, [1, 2], "exactly one run applies the migrations");
    assert!(sink.migrate().await.unwrap().applied.is_empty());

    let stream = common::stream("private");
    sink.append(&event(&stream, 1)).await.unwrap();
    assert!(sink.verify(&stream).await.unwrap().is_intact());
    assert_eq!(sink.next_stream(None).await.unwrap(), Some(stream.clone()));
    assert_eq!(sink.next_stream(Some(&stream)).await.unwrap(), None);

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".schema_migrations SET checksum = '\\x00'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let err = sink.migrate().await.unwrap_err();
    assert!(
        matches!(err, AuditError::MigrationChanged { version: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        sink.roles().unwrap(),
        idempotency_audit::postgres::AuditRoles::for_schema(&schema).unwrap()
    );
    common::drop_schema(&pool, &schema).await;

    assert!(matches!(
        PostgresSink::new(pool).with_schema("Bad-Name"),
        Err(AuditError::InvalidSchema { .. })
    ));
}

#[tokio::test]
async fn verify_all_reports_every_stream() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    let schema = common::fresh_schema();
    let sink = PostgresSink::new(pool.clone())
        .with_schema(&schema)
        .unwrap();
    sink.migrate().await.unwrap();
    append_n(&sink, "a", 3).await;
    append_n(&sink, "b", 2).await;
    common::tamper(
        &pool,
        &format!("DELETE FROM \"{schema}\".events WHERE stream = $1 AND seq = 1"),
        "b",
    )
    .await;
    let reports = sink.verify_all().await.unwrap();
    common::drop_schema(&pool, &schema).await;
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].stream, "a");
    assert!(reports[0].is_intact());
    assert_eq!(reports[1].stream, "b");
    assert_eq!(broken(&reports[1]), (1, BreakKind::Missing));
}
