//! The `audit-verify` binary against a real server, in a private schema.
#![cfg(feature = "postgres")]

mod common;

use std::process::{Command, Output};

use idempotency_audit::postgres::PostgresSink;
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
    assert_eq!(lines[2], "verified 2 streams, 5 events: 0 broken");

    let one = run(
        &url,
        &["--schema", &schema, "--stream", "payments", "--batch", "1"],
    );
    assert_eq!(one.status.code(), Some(0));
    assert_eq!(stdout(&one).lines().count(), 2);

    common::tamper(
        &pool,
        &format!("DELETE FROM \"{schema}\".events WHERE stream = $1 AND seq = 2"),
        "orders",
    )
    .await;
    let broken = run(&url, &[&format!("--schema={schema}")]);
    let out = stdout(&broken);
    assert_eq!(broken.status.code(), Some(1), "{out}");
    assert!(out.contains("BROKEN stream=orders seq=2"), "{out}");
    assert!(out.contains("ok     stream=payments"), "{out}");
    assert!(
        out.ends_with("verified 2 streams, 3 events: 1 broken\n"),
        "{out}"
    );

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
