//! The `audit-verify` binary against a real server, in a private schema.
#![cfg(feature = "postgres")]

mod common;

use std::process::{Command, Output};

use idempotency_audit::postgres::{PostgresSink, sqlx};
use idempotency_audit::{AuditEvent, AuditSink};

fn run(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audit-verify"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run audit-verify")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn verifies_streams_and_fails_on_a_broken_chain() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    common::drop_stale_schemas(&pool).await;
    let schema = common::fresh_schema();
    let sink = PostgresSink::new(pool.clone())
        .with_schema(&schema)
        .unwrap();
    sink.migrate().await.unwrap();
    for (stream, n) in [("orders", 3), ("payments", 2)] {
        for i in 0..n {
            sink.append(&AuditEvent::builder("t", stream).attribute("i", i).build())
                .await
                .unwrap();
        }
    }
    let url = common::database_url();

    let all = run(&url, &["--schema", &schema]);
    let out = stdout(&all);
    assert_eq!(all.status.code(), Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ok     stream=orders events=3 last_seq=3 head="));
    assert!(lines[1].starts_with("ok     stream=payments events=2 last_seq=2 head="));
    assert_eq!(lines[2], "verified 2 streams, 5 events: 0 broken, 0 breaks");

    let one = run(
        &url,
        &["--schema", &schema, "--stream", "payments", "--batch", "1"],
    );
    assert_eq!(one.status.code(), Some(0));
    assert_eq!(stdout(&one).lines().count(), 2);

    // Two breaks in one stream (a deleted row, an edited one after it),
    // one in the other (a malformed row appended through the function).
    for (stream, sql) in [
        (
            "orders",
            "DELETE FROM \"{schema}\".events WHERE stream = $1 AND seq = 1",
        ),
        (
            "orders",
            "UPDATE \"{schema}\".events SET content = replace(content::text, '\"i\":2', '\"i\":20')::json \
             WHERE stream = $1 AND seq = 3",
        ),
    ] {
        common::tamper(&pool, &sql.replace("{schema}", &schema), stream).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT \"{schema}\".append_events('payments', ARRAY[gen_random_uuid()], ARRAY['t'], \
         ARRAY['s'], ARRAY[NULL]::text[], ARRAY[0::bigint], ARRAY[NULL]::text[], ARRAY[NULL]::text[], \
         ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY['{{}}'])"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let broken = run(&url, &[&format!("--schema={schema}")]);
    let out = stdout(&broken);
    assert_eq!(broken.status.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "BROKEN stream=orders events=2 last_seq=3 breaks=2"
    );
    assert_eq!(lines[1], "  seq=1: row missing");
    assert_eq!(lines[2], "  seq=3: hash does not match the row's content");
    assert_eq!(
        lines[3],
        "BROKEN stream=payments events=3 last_seq=3 breaks=1"
    );
    assert!(
        lines[4].starts_with("  seq=3: content is not a valid event: missing field `id`"),
        "{out}"
    );
    assert_eq!(lines[5], "verified 2 streams, 5 events: 2 broken, 3 breaks");
    assert_eq!(lines.len(), 6, "{out}");

    // A stream that was never written is intact and empty.
    let absent = run(&url, &["--schema", &schema, "--stream", "nothing"]);
    assert_eq!(absent.status.code(), Some(0));
    assert!(stdout(&absent).starts_with("ok     stream=nothing events=0 last_seq=0 head=-"));

    common::drop_schema(&pool, &schema).await;
}

#[test]
fn usage_and_connection_errors_exit_2() {
    let url = common::database_url();
    let bad_flag = run(&url, &["--frobnicate"]);
    assert_eq!(bad_flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("unknown argument"));

    let bad_schema = run(&url, &["--schema", "Not-Valid"]);
    assert_eq!(bad_schema.status.code(), Some(2));

    let help = run(&url, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).starts_with("usage: audit-verify"));

    let down = run(
        "postgres://postgres@127.0.0.1:1/test",
        &["--connect-timeout", "1"],
    );
    assert_eq!(down.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));

    let no_url = Command::new(env!("CARGO_BIN_EXE_audit-verify"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(no_url.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_url.stderr).contains("DATABASE_URL is not set"));
}
