//! The checkpoint and proof subcommands of `audit-verify` against a real
//! server, in a private schema; `verify-proof` runs without any database.
#![cfg(feature = "postgres")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use idempotency_audit::postgres::PostgresSink;
use idempotency_audit::{AuditEvent, AuditSink};

fn run(url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-verify"));
    cmd.args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run audit-verify")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn keygen_checkpoint_prove_verify_export_and_catch_tampering() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    common::drop_stale_schemas(&pool).await;
    let schema = common::fresh_schema();
    let sink = PostgresSink::new(pool.clone())
        .with_schema(&schema)
        .unwrap();
    sink.migrate().await.unwrap();
    for (stream, n) in [("orders", 5), ("payments", 2)] {
        for i in 0..n {
            sink.append(&AuditEvent::builder("t", stream).attribute("i", i).build())
                .await
                .unwrap();
        }
    }
    let url = common::database_url();
    let url = Some(url.as_str());
    let tmp: PathBuf = std::env::temp_dir().join(format!("audit-tlog-bin-{schema}"));
    std::fs::create_dir_all(&tmp).unwrap();
    let (prefix, dir) = (tmp.join("log"), tmp.join("checkpoints"));
    let (key, public) = (tmp.join("log.key"), tmp.join("log.pub"));

    let keys = run(
        None,
        &[
            "keygen",
            "--name",
            "audit.test.example",
            "--out",
            p(&prefix),
        ],
    );
    assert_eq!(keys.status.code(), Some(0), "{}", out(&keys));
    let vkey = std::fs::read_to_string(&public).unwrap();
    assert!(vkey.starts_with("audit.test.example+"), "{vkey}");
    assert_eq!(String::from_utf8_lossy(&keys.stdout), vkey);
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("PRIVATE+KEY+audit.test.example+")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Never overwrites a key.
    assert_eq!(
        run(None, &["keygen", "--name", "x", "--out", p(&prefix)])
            .status
            .code(),
        Some(2)
    );

    let db = ["--schema", schema.as_str(), "--dir", p(&dir)];
    let cp = run(url, &[&["checkpoint", "--key", p(&key)][..], &db].concat());
    let text = out(&cp);
    assert_eq!(cp.status.code(), Some(0), "{text}");
    assert!(
        text.contains("signed    stream=orders size=5 root="),
        "{text}"
    );
    assert!(
        text.contains("signed    stream=payments size=2 root="),
        "{text}"
    );
    assert!(text.contains("checkpointed 2 streams: 0 refused"), "{text}");

    let check = run(
        url,
        &[&["checkpoint", "--check", "--pub", p(&public)][..], &db].concat(),
    );
    assert_eq!(check.status.code(), Some(0), "{}", out(&check));
    assert!(out(&check).contains("ok        stream=orders size=5"));

    let (proof, event) = (tmp.join("proof.json"), tmp.join("event.json"));
    let prove = run(
        url,
        &[
            &[
                "prove",
                "--pub",
                p(&public),
                "--stream",
                "orders",
                "--seq",
                "3",
                "--out",
                p(&proof),
                "--event-out",
                p(&event),
            ][..],
            &db,
        ]
        .concat(),
    );
    assert_eq!(prove.status.code(), Some(0), "{}", out(&prove));
    // Offline: no DATABASE_URL.
    let verify = |proof: &Path, event: Option<&Path>| {
        let mut args = vec!["verify-proof", "--pub", p(&public), "--proof", p(proof)];
        if let Some(e) = event {
            args.extend(["--event", p(e)]);
        }
        run(None, &args)
    };
    let ok = verify(&proof, Some(&event));
    assert_eq!(ok.status.code(), Some(0), "{}", out(&ok));
    assert!(out(&ok).starts_with("ok inclusion stream=orders seq=3 size=5 root="));
    // An edited event fails with status 1.
    let edited = tmp.join("edited.json");
    let original = std::fs::read_to_string(&event).unwrap();
    std::fs::write(&edited, original.replace("\"i\":2", "\"i\":20")).unwrap();
    assert_ne!(std::fs::read_to_string(&edited).unwrap(), original);
    let bad = verify(&proof, Some(&edited));
    assert_eq!(bad.status.code(), Some(1), "{}", out(&bad));
    // Another key: status 1.
    let other = tmp.join("other");
    run(
        None,
        &["keygen", "--name", "audit.test.example", "--out", p(&other)],
    );
    let wrong_key = run(
        None,
        &[
            "verify-proof",
            "--pub",
            &format!("{}.pub", p(&other)),
            "--proof",
            p(&proof),
            "--event",
            p(&event),
        ],
    );
    assert_eq!(wrong_key.status.code(), Some(1), "{}", out(&wrong_key));

    // The log grows; a consistency proof from 5 to 7.
    for i in 5..7 {
        sink.append(&AuditEvent::builder("t", "orders").attribute("i", i).build())
            .await
            .unwrap();
    }
    let cp = run(
        url,
        &[
            &["checkpoint", "--key", p(&key), "--stream", "orders"][..],
            &db,
        ]
        .concat(),
    );
    assert!(
        out(&cp).contains("signed    stream=orders size=7"),
        "{}",
        out(&cp)
    );
    let consistency = tmp.join("consistency.json");
    let prove = run(
        url,
        &[
            &[
                "prove",
                "--pub",
                p(&public),
                "--stream",
                "orders",
                "--consistency",
                "5",
                "--out",
                p(&consistency),
            ][..],
            &db,
        ]
        .concat(),
    );
    assert_eq!(prove.status.code(), Some(0), "{}", out(&prove));
    let ok = verify(&consistency, None);
    assert_eq!(ok.status.code(), Some(0), "{}", out(&ok));
    assert!(out(&ok).starts_with("ok consistency stream=orders old_size=5 new_size=7"));

    // Export with proofs, checked offline line by line.
    let export = tmp.join("export.jsonl");
    let ex = run(
        url,
        &[
            &[
                "export",
                "--pub",
                p(&public),
                "--since",
                "2000-01-01T00:00:00Z",
                "--out",
                p(&export),
            ][..],
            &db,
        ]
        .concat(),
    );
    assert_eq!(ex.status.code(), Some(0), "{}", out(&ex));
    assert!(
        out(&ex).contains("exported 9 events; 0 newer"),
        "{}",
        out(&ex)
    );
    let lines = std::fs::read_to_string(&export).unwrap();
    assert_eq!(lines.lines().count(), 9);
    let ok = run(
        None,
        &["verify-proof", "--pub", p(&public), "--export", p(&export)],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", out(&ok));
    assert!(out(&ok).contains("verified 9 lines: 0 failed"));
    let tampered = tmp.join("tampered.jsonl");
    std::fs::write(&tampered, lines.replacen("\"i\":1", "\"i\":11", 1)).unwrap();
    let bad = run(
        None,
        &[
            "verify-proof",
            "--pub",
            p(&public),
            "--export",
            p(&tampered),
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", out(&bad));
    assert!(
        out(&bad).contains("verified 9 lines: 1 failed"),
        "{}",
        out(&bad)
    );

    // The superuser truncates and rolls the head back: the next checkpoint is refused.
    common::tamper(
        &pool,
        &format!("DELETE FROM \"{schema}\".events WHERE stream = $1 AND seq > 4"),
        "orders",
    )
    .await;
    common::tamper(
        &pool,
        &format!(
            "UPDATE \"{schema}\".streams SET last_seq = 4, last_hash = \
             (SELECT hash FROM \"{schema}\".events WHERE stream = $1 AND seq = 4) WHERE stream = $1"
        ),
        "orders",
    )
    .await;
    let refused = run(url, &[&["checkpoint", "--key", p(&key)][..], &db].concat());
    let text = out(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("REFUSED   stream=orders"), "{text}");
    assert!(text.contains("unchanged stream=payments size=2"), "{text}");
    assert!(text.contains("checkpointed 2 streams: 1 refused"), "{text}");
    let check = run(
        url,
        &[&["checkpoint", "--check", "--pub", p(&public)][..], &db].concat(),
    );
    assert_eq!(check.status.code(), Some(1), "{}", out(&check));
    assert!(
        out(&check).contains("BROKEN    stream=orders"),
        "{}",
        out(&check)
    );
    // The proof taken before still verifies offline: the evidence outlives the rows.
    assert_eq!(verify(&proof, Some(&event)).status.code(), Some(0));

    // Usage errors: status 2.
    for args in [
        &["prove", "--pub", p(&public)][..],
        &[
            "verify-proof",
            "--pub",
            p(&public),
            "--proof",
            "/nonexistent",
        ],
        &["verify-proof", "--pub", p(&event), "--proof", p(&proof)],
        &["checkpoint", "--bogus"],
        &[
            "export",
            "--pub",
            p(&public),
            "--dir",
            p(&dir),
            "--since",
            "yesterday",
        ],
    ] {
        let o = run(url, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out(&o));
    }
    assert_eq!(run(None, &["prove", "--help"]).status.code(), Some(0));
    common::drop_schema(&pool, &schema).await;
    std::fs::remove_dir_all(&tmp).unwrap();
}
