//! The `idempotency-admin` binary run as a process against real stores:
//! every command on PostgreSQL (a fresh schema) and on Redis (a fresh
//! prefix), their refusals and their exit codes.

mod common;

use std::time::Duration;

use common::{Target, admin, key};
use idempotency_core::{
    Claim, ClaimKind, IdempotencyKey, IdempotencyStore, KeySpec, StorageKey, StoreError,
};

/// Runs each case on both stores, as `postgres::<case>` and `redis::<case>`.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(target) = crate::common::Target::postgres().await else { return };
                    super::$case(&target).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(target) = crate::common::Target::redis().await else { return };
                    super::$case(&target).await;
                }
            )*
        }
    };
}

on_both_stores!(
    inspect_by_storage_key_and_by_its_parts,
    list_puts_corrupted_and_stuck_records_first,
    release_is_refused_while_the_lease_is_live_and_a_forced_one_fences_the_owner,
    release_frees_a_stuck_record_and_refuses_other_states,
    resolve_turns_a_corrupted_record_into_a_failure_or_nothing,
    purge_deletes_expired_records_in_batches,
    an_unreachable_audit_trail_stops_a_change_before_it_is_made,
);

fn hex(k: &StorageKey) -> String {
    k.to_hex()
}

async fn inspect_by_storage_key_and_by_its_parts(t: &Target) {
    let client = IdempotencyKey::new("order-42").unwrap();
    let k = KeySpec::new("shop")
        .scope("tenant-1")
        .client_key(&client)
        .storage_key();
    let lease = t.completed(k).await;

    let by_hex = t.run(&["inspect", &hex(&k), "--json"]);
    let v = by_hex.assert_code(0).json();
    assert_eq!(v["key"], hex(&k));
    assert_eq!(v["state"], "COMPLETED");
    assert_eq!(v["fence"], lease.fence);
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["outcome"]["status"], 201);
    assert_eq!(v["outcome"]["body_bytes"], 8);
    assert_eq!(
        v["outcome"]["headers"][0],
        serde_json::json!(["location", "/orders/7"])
    );
    assert_eq!(v["resource"], "/orders/7");
    assert_eq!(v["expired"], false);
    assert!(v.get("body").is_none(), "the body only with --body");

    // The same record from what the layer hashes, the header value quoted.
    let by_parts = t.run(&[
        "inspect",
        "--namespace",
        "shop",
        "--scope",
        "tenant-1",
        "--key",
        "\"order-42\"",
        "--body",
        "--json",
    ]);
    let v = by_parts.assert_code(0).json();
    assert_eq!(v["key"], hex(&k));
    assert_eq!(v["body"]["data"], "{\"id\":7}");
    assert_eq!(v["body"]["encoding"], "utf-8");

    // Text output.
    let text = t.run(&["inspect", &hex(&k), "--body"]);
    let out = &text.assert_code(0).stdout;
    for want in [
        "COMPLETED",
        "location: /orders/7",
        "replays 201 (8 bytes)",
        "{\"id\":7}",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }

    // A derived key: method and route template count.
    let derived = KeySpec::new("promotion")
        .method("POST")
        .route("/estimates/{id}/promote")
        .derived(["E-1", "3"])
        .storage_key();
    t.stuck(derived).await;
    let v = t
        .run(&[
            "inspect",
            "--namespace",
            "promotion",
            "--derived",
            "E-1",
            "--derived",
            "3",
            "--route",
            "/estimates/{id}/promote",
            "--json",
        ])
        .assert_code(0)
        .json();
    assert_eq!(v["key"], hex(&derived));
    assert_eq!(v["state"], "PENDING");
    assert_eq!(v["stuck"], true);
    assert_eq!(v["lease"]["live"], false);

    // Nothing there: exit 1, and with --json an error document.
    let missing = t.run(&["inspect", &hex(&key()), "--json"]);
    assert_eq!(missing.assert_code(1).json()["error"]["code"], 1);
    let other_scope = t.run(&[
        "inspect",
        "--namespace",
        "shop",
        "--scope",
        "tenant-2",
        "--key",
        "order-42",
    ]);
    other_scope.assert_code(1);
}

async fn list_puts_corrupted_and_stuck_records_first(t: &Target) {
    let done = key();
    t.completed(done).await;
    let live = key();
    t.claim(live, Duration::from_secs(60)).await;
    let stuck = key();
    t.stuck(stuck).await;
    let corrupted = key();
    t.corrupted(corrupted).await;

    let v = t.run(&["list", "--json"]).assert_code(0).json();
    let keys: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [hex(&corrupted), hex(&stuck), hex(&live), hex(&done)]);
    assert_eq!(v["matched"], 4);
    assert_eq!(v["records"][0]["corruption"]["detail"], "the order is gone");

    let v = t
        .run(&["list", "--state", "pending", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(v["matched"], 2);
    assert_eq!(v["records"][0]["key"], hex(&stuck));

    let v = t
        .run(&["list", "--limit", "1", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(
        (v["shown"].clone(), v["matched"].clone()),
        (1.into(), 4.into())
    );

    // Nothing that old: exit 1, an empty listing.
    let old = t.run(&["list", "--older-than", "1h", "--json"]);
    let v = old.assert_code(1).json();
    assert_eq!(v["matched"], 0);

    let table = t.run(&["list"]);
    let out = &table.assert_code(0).stdout;
    assert!(out.starts_with("KEY"), "{out}");
    assert!(out.contains("stuck: lease ran out"), "{out}");
    assert!(out.contains("4 of 4 matching records"), "{out}");
}

async fn release_is_refused_while_the_lease_is_live_and_a_forced_one_fences_the_owner(t: &Target) {
    let k = key();
    let owner = t.claim(k, Duration::from_secs(60)).await;
    let h = hex(&k);

    let refused = t.run(&["release", &h, "--reason", "looks stuck", "--yes"]);
    assert!(
        refused.assert_code(4).stderr.contains("lease of key"),
        "{refused:?}"
    );
    // Not confirmed: stdin is not a terminal and there is no --yes.
    let unconfirmed = t.run(&["release", &h, "--reason", "hung", "--force"]);
    assert!(unconfirmed.assert_code(4).stderr.contains("pass --yes"));
    let still = t.run(&["inspect", &h, "--json"]).assert_code(0).json();
    assert_eq!(
        (still["state"].clone(), still["fence"].clone()),
        ("PENDING".into(), owner.fence.into())
    );
    assert!(refused.audit_events().is_empty() && unconfirmed.audit_events().is_empty());

    let forced = t.run(&[
        "release",
        &h,
        "--reason",
        "owner hung on a dead socket",
        "--force",
        "--yes",
        "--actor",
        "alice",
        "--json",
    ]);
    let v = forced.assert_code(0).json();
    assert_eq!(v["action"], "release");
    assert_eq!(v["forced"], true);
    assert_eq!(v["lease_live"], true);
    assert_eq!(v["before"]["fence"], owner.fence);
    assert_eq!(v["after"]["state"], "ABSENT");
    let events = forced.audit_events();
    assert_eq!(events.len(), 1, "{forced:?}");
    let e = &events[0];
    assert_eq!(e["type"], "idempotency.operator.release");
    assert_eq!(e["source"], "/idempotency-admin");
    assert_eq!(e["subject"], h);
    assert_eq!(e["key_hash"], h);
    assert_eq!(e["actor"]["id"], "alice");
    assert_eq!(e["reason"], "owner hung on a dead socket");
    assert_eq!(e["outcome"], "released");
    assert_eq!(e["attributes"]["forced"], true);
    assert_eq!(e["attributes"]["location"]["store"], t.kind);
    assert_eq!(e["before"]["state"], "PENDING");
    assert_eq!(v["audit_event"]["id"], e["id"]);

    // The live owner is fenced off: its late completion is refused...
    let late = t.store.complete(&owner, common::response()).await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    // ...and the next claim runs afresh with a greater fence.
    match t
        .store
        .claim(&common::request(k, Duration::from_secs(60)))
        .await
    {
        Ok(Claim::Acquired { lease, kind }) => {
            assert!(
                lease.fence > owner.fence,
                "{} > {}",
                lease.fence,
                owner.fence
            );
            assert_eq!(kind, ClaimKind::New);
            assert_eq!(lease.attempt, 1);
        }
        other => panic!("expected a fresh claim, got {other:?}"),
    }
}

async fn release_frees_a_stuck_record_and_refuses_other_states(t: &Target) {
    let k = key();
    let crashed = t.stuck(k).await;
    let h = hex(&k);
    // Every change needs a reason.
    t.run(&["release", &h, "--yes"]).assert_code(2);
    t.run(&["release", &h, "--yes", "--reason", "  "])
        .assert_code(2);
    let run = t.run(&["release", &h, "--yes", "--reason", "worker crashed"]);
    let out = &run.assert_code(0).stdout;
    assert!(out.contains(&format!("released {h}")), "{out}");
    let e = &run.audit_events()[0];
    assert_eq!(e["actor"]["id"], "test-operator", "the OS user");
    assert_eq!(e["attributes"]["forced"], false);
    assert_eq!(e["attributes"]["lease_live"], false);
    t.run(&["inspect", &h]).assert_code(1);
    let late = t.store.complete(&crashed, common::response()).await;
    assert!(matches!(late, Err(StoreError::LeaseLost)));
    // Released again: nothing there.
    t.run(&["release", &h, "--yes", "--reason", "again"])
        .assert_code(1);

    let done = key();
    t.completed(done).await;
    let run = t.run(&["release", &hex(&done), "--yes", "--reason", "r"]);
    assert!(run.assert_code(4).stderr.contains("is COMPLETED"));
    let corrupted = key();
    t.corrupted(corrupted).await;
    let run = t.run(&["release", &hex(&corrupted), "--yes", "--reason", "r"]);
    assert!(run.assert_code(4).stderr.contains("resolve"));
    t.run(&["inspect", &hex(&done)]).assert_code(0);
    t.run(&["inspect", &hex(&corrupted)]).assert_code(0);
}

async fn resolve_turns_a_corrupted_record_into_a_failure_or_nothing(t: &Target) {
    let a = key();
    t.corrupted(a).await;
    let run = t.run(&[
        "resolve",
        &hex(&a),
        "--to",
        "failed",
        "--reason",
        "order 7 was deleted",
        "--yes",
        "--json",
    ]);
    let v = run.assert_code(0).json();
    assert_eq!(v["before"]["state"], "CORRUPTED");
    assert_eq!(v["after"]["state"], "FAILED");
    let e = &run.audit_events()[0];
    assert_eq!(e["type"], "idempotency.operator.resolve");
    assert_eq!(e["outcome"], "updated");
    assert_eq!(e["attributes"]["to"], "FAILED (terminal)");
    let now = t
        .run(&["inspect", &hex(&a), "--json"])
        .assert_code(0)
        .json();
    assert_eq!(now["state"], "FAILED");
    assert_eq!(now["failure"]["retryable"], false);
    assert_eq!(
        now["failure"]["reason"],
        "resolved by an operator: order 7 was deleted"
    );
    // A retry now gets the failure replayed, never a new execution.
    let again = t
        .store
        .claim(&common::request(a, Duration::from_secs(60)))
        .await;
    assert!(matches!(again, Ok(Claim::Failed(_))), "{again:?}");

    let b = key();
    let old = t.corrupted(b).await;
    let run = t.run(&[
        "resolve",
        &hex(&b),
        "--to",
        "absent",
        "--reason",
        "stale",
        "--yes",
    ]);
    run.assert_code(0);
    assert_eq!(run.audit_events()[0]["outcome"], "deleted");
    t.run(&["inspect", &hex(&b)]).assert_code(1);
    match t
        .store
        .claim(&common::request(b, Duration::from_secs(60)))
        .await
    {
        Ok(Claim::Acquired { lease, .. }) => assert!(lease.fence > old.fence),
        other => panic!("expected a fresh claim, got {other:?}"),
    }

    let c = key();
    t.corrupted(c).await;
    let retryable = t.run(&[
        "resolve",
        &hex(&c),
        "--to",
        "failed",
        "--retryable",
        "--reason",
        "transient",
        "--yes",
        "--json",
    ]);
    assert_eq!(retryable.assert_code(0).json()["after"]["retryable"], true);
    match t
        .store
        .claim(&common::request(c, Duration::from_secs(60)))
        .await
    {
        Ok(Claim::Acquired { kind, .. }) => assert_eq!(kind, ClaimKind::Retry),
        other => panic!("a retryable failure runs again, got {other:?}"),
    }

    // Refusals: a pending record (use release), a completed one, bad arguments.
    let pending = key();
    t.claim(pending, Duration::from_secs(60)).await;
    let run = t.run(&[
        "resolve",
        &hex(&pending),
        "--to",
        "absent",
        "--reason",
        "r",
        "--yes",
    ]);
    assert!(run.assert_code(4).stderr.contains("use `release`"));
    let done = key();
    t.completed(done).await;
    t.run(&[
        "resolve",
        &hex(&done),
        "--to",
        "absent",
        "--reason",
        "r",
        "--yes",
    ])
    .assert_code(4);
    t.run(&[
        "resolve",
        &hex(&done),
        "--to",
        "absent",
        "--retryable",
        "--reason",
        "r",
    ])
    .assert_code(2);
    t.run(&["resolve", &hex(&done), "--to", "gone", "--reason", "r"])
        .assert_code(2);
    t.run(&[
        "resolve",
        &hex(&key()),
        "--to",
        "absent",
        "--reason",
        "r",
        "--yes",
    ])
    .assert_code(1);
}

async fn purge_deletes_expired_records_in_batches(t: &Target) {
    let mut expired = Vec::new();
    for _ in 0..3 {
        let k = key();
        t.completed(k).await;
        t.expire(&k).await;
        expired.push(k);
    }
    let live = key();
    t.completed(live).await;

    let dry = t.run(&["purge", "--expired", "--dry-run", "--json"]);
    let v = dry.assert_code(0).json();
    assert_eq!(
        (v["dry_run"].clone(), v["expired"].clone()),
        (true.into(), 3.into())
    );
    assert!(dry.audit_events().is_empty(), "a dry run changes nothing");
    t.run(&["purge", "--expired", "--reason", "weekly"])
        .assert_code(4);
    t.run(&["purge", "--dry-run"]).assert_code(2);
    t.run(&["purge", "--expired", "--yes"]).assert_code(2);

    let run = t.run(&[
        "purge",
        "--expired",
        "--batch",
        "2",
        "--yes",
        "--reason",
        "weekly clean-up",
        "--json",
    ]);
    let v = run.assert_code(0).json();
    assert_eq!(v["deleted"], 3);
    assert_eq!(v["batches"], 2);
    let e = &run.audit_events()[0];
    assert_eq!(e["type"], "idempotency.operator.purge");
    assert_eq!(e["attributes"]["deleted"], 3);
    for k in &expired {
        t.run(&["inspect", &hex(k)]).assert_code(1);
    }
    t.run(&["inspect", &hex(&live)]).assert_code(0);
    t.run(&["purge", "--expired", "--dry-run"]).assert_code(1);
    t.run(&["purge", "--expired", "--yes", "--reason", "again"])
        .assert_code(1);
}

async fn an_unreachable_audit_trail_stops_a_change_before_it_is_made(t: &Target) {
    let k = key();
    t.stuck(k).await;
    let run = t.run(&[
        "--audit-database-url",
        "postgres://postgres@127.0.0.1:1/audit",
        "--connect-timeout",
        "1s",
        "release",
        &hex(&k),
        "--yes",
        "--reason",
        "r",
    ]);
    assert!(
        run.assert_code(3).stderr.contains("nothing was changed"),
        "{run:?}"
    );
    assert_eq!(
        t.run(&["inspect", &hex(&k), "--json"]).json()["state"],
        "PENDING"
    );
}

/// Closed ports: every command that needs the store exits 3.
#[test]
fn an_unreachable_store_exits_3() {
    let h = "00".repeat(32);
    for store in [
        &[
            "--store",
            "postgres",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
        ][..],
        &[
            "--store",
            "redis",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--prefix",
            "p",
        ][..],
    ] {
        for cmd in [
            vec!["list"],
            vec!["inspect", h.as_str()],
            vec!["release", h.as_str(), "--reason", "r", "--yes"],
            vec!["purge", "--expired", "--dry-run"],
        ] {
            let mut args: Vec<&str> = store.to_vec();
            args.extend(["--connect-timeout", "1s", "--json"]);
            args.extend(cmd);
            let run = admin(&args);
            assert_eq!(run.assert_code(3).json()["error"]["code"], 3);
        }
    }
    let run = admin(&[
        "--audit-database-url",
        "postgres://postgres@127.0.0.1:1/test",
        "--connect-timeout",
        "1s",
        "audit",
        "verify",
    ]);
    run.assert_code(3);
}

/// Argument errors exit 2, before anything is read.
#[test]
fn bad_arguments_exit_2() {
    let pg = [
        "--store",
        "postgres",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test",
    ];
    let cases: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["--store", "postgres", "list"],
        vec!["--store", "redis", "list"],
        vec!["--store", "mysql", "list"],
        vec!["frobnicate"],
        vec![],
        [&pg[..], &["inspect"]].concat(),
        [&pg[..], &["inspect", "abc"]].concat(),
        [&pg[..], &["inspect", "--namespace", "n"]].concat(),
        [&pg[..], &["inspect", "--namespace", "n", "--derived", "x"]].concat(),
        [&pg[..], &["inspect", "--namespace", "n", "--key", ""]].concat(),
        [&pg[..], &["list", "--older-than", "10x"]].concat(),
        [&pg[..], &["list", "--limit", "0"]].concat(),
        [&pg[..], &["list", "--state", "stuck"]].concat(),
        [&pg[..], &["release"]].concat(),
        [&pg[..], &["--schema", "Bad-Name", "list"]].concat(),
        vec!["--store", "postgres", "--database-url", "not a url", "list"],
        vec![
            "--store",
            "redis",
            "--redis-url",
            "redis://a:1,redis://b:2",
            "list",
        ],
        vec![
            "--store",
            "redis",
            "--redis-url",
            "redis://a:1",
            "--prefix",
            "{x}",
            "list",
        ],
        vec!["audit", "verify"],
    ];
    for args in cases {
        let run = admin(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
    }
    admin(&["--help"]).assert_code(0);
    admin(&["--version"]).assert_code(0);
    let json = admin(&["--json", "list"]);
    assert_eq!(json.assert_code(2).json()["error"]["code"], 2);
}

/// Changes go to the PostgreSQL audit trail too, which `audit verify`
/// checks: intact, an unknown stream (exit 1), a tampered row (exit 5).
#[tokio::test]
async fn changes_land_in_the_audit_trail_and_verify() {
    let Some(t) = Target::postgres().await else {
        return;
    };
    let url = idempotency_core::conformance::support::database_url();
    let schema = format!(
        "adm_audit_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let trail = [
        "--audit-database-url",
        url.as_str(),
        "--audit-schema",
        schema.as_str(),
    ];
    let k = key();
    t.stuck(k).await;
    let mut args = trail.to_vec();
    let h = hex(&k);
    args.extend([
        "--audit-migrate",
        "release",
        h.as_str(),
        "--yes",
        "--reason",
        "crashed",
        "--json",
    ]);
    let v = t.run(&args).assert_code(0).json();
    let written = &v["audit_event"]["written"]["postgres"];
    assert_eq!(written["stream"], "/idempotency-admin");
    assert_eq!(written["seq"], 1);
    assert_eq!(written["schema"], schema.as_str());

    let c = key();
    t.corrupted(c).await;
    let mut args = trail.to_vec();
    let hc = hex(&c);
    args.extend([
        "resolve",
        hc.as_str(),
        "--to",
        "absent",
        "--yes",
        "--reason",
        "gone",
    ]);
    t.run(&args).assert_code(0);

    let mut args = trail.to_vec();
    args.extend(["audit", "verify", "--json"]);
    let v = admin(&args).assert_code(0).json();
    assert_eq!(v["intact"], true);
    assert_eq!(v["events"], 2);
    assert_eq!(v["streams"][0]["stream"], "/idempotency-admin");

    let pool = common::pool().await.expect("database");
    let types: Vec<String> =
        idempotency_postgres::sqlx::query_scalar(idempotency_postgres::sqlx::AssertSqlSafe(
            format!("SELECT type FROM \"{schema}\".events ORDER BY seq"),
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        types,
        [
            "idempotency.operator.release",
            "idempotency.operator.resolve"
        ]
    );

    // A trail without its tables (no --audit-migrate): refused before the change.
    let s = key();
    t.stuck(s).await;
    let missing = format!(
        "adm_missing_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let hs = hex(&s);
    let run = t.run(&[
        "--audit-database-url",
        url.as_str(),
        "--audit-schema",
        missing.as_str(),
        "release",
        hs.as_str(),
        "--yes",
        "--reason",
        "r",
    ]);
    assert!(
        run.assert_code(3).stderr.contains("nothing was changed"),
        "{run:?}"
    );
    assert!(run.audit_events().is_empty());
    t.run(&["inspect", &hs]).assert_code(0);

    let mut args = trail.to_vec();
    args.extend(["audit", "verify", "--stream", "/nothing-here"]);
    admin(&args).assert_code(1);

    // A signed checkpoint of the intact trail, in a directory of its own.
    let dir = std::env::temp_dir().join(format!("adm-cp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("signing.key");
    let signer = idempotency_audit::tlog::NoteSigner::generate("admin.test").unwrap();
    std::fs::write(&key_file, signer.to_secret_text().as_bytes()).unwrap();
    let checkpoints = dir.join("checkpoints");
    let (key_arg, dir_arg) = (
        key_file.display().to_string(),
        checkpoints.display().to_string(),
    );
    let mut args = trail.to_vec();
    args.extend([
        "audit",
        "checkpoint",
        "--key",
        key_arg.as_str(),
        "--dir",
        dir_arg.as_str(),
        "--json",
    ]);
    let v = admin(&args).assert_code(0).json();
    assert_eq!(v["refused"], 0);
    assert_eq!(v["streams"][0]["stream"], "/idempotency-admin");
    assert_eq!(v["streams"][0]["size"], 2);
    assert_eq!(v["streams"][0]["signed"], true);
    assert!(
        std::fs::read_dir(&checkpoints).unwrap().count() > 0,
        "a checkpoint file is written"
    );
    // Again, with nothing new: the stored checkpoint stands.
    let v = admin(&args).assert_code(0).json();
    assert_eq!(v["streams"][0]["signed"], false);
    let mut bad_key = trail.to_vec();
    let missing_key = dir.join("no-such.key").display().to_string();
    bad_key.extend([
        "audit",
        "checkpoint",
        "--key",
        missing_key.as_str(),
        "--dir",
        dir_arg.as_str(),
    ]);
    admin(&bad_key).assert_code(2);

    // A row changed behind the triggers' back breaks the chain: exit 5.
    let mut conn = pool.acquire().await.unwrap();
    idempotency_postgres::sqlx::raw_sql(idempotency_postgres::sqlx::AssertSqlSafe(format!(
        "SET session_replication_role = replica; \
         UPDATE \"{schema}\".events SET content = replace(content::text, 'crashed', 'CRASHED')::json \
         WHERE seq = 1; SET session_replication_role = origin"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let mut args = trail.to_vec();
    args.extend(["audit", "verify"]);
    let run = admin(&args);
    assert!(run.assert_code(5).stdout.contains("BROKEN"), "{run:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    common::drop_schema(&schema).await;
}

/// On a terminal the change is asked for: `y` confirms, anything else
/// refuses (exit 4). The terminal is a pseudo-terminal from `script(1)`.
#[tokio::test]
async fn a_terminal_is_asked_to_confirm() {
    let script_available = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !script_available {
        assert!(
            !idempotency_core::conformance::support::in_ci(),
            "script(1) is needed under CI"
        );
        println!("skipping: script(1) unavailable");
        return;
    }
    let Some(t) = Target::postgres().await else {
        return;
    };
    let on_tty = |k: &StorageKey, answer: &str| {
        let mut line = format!("'{}'", env!("CARGO_BIN_EXE_idempotency-admin"));
        for a in &t.args {
            line.push_str(&format!(" '{a}'"));
        }
        line.push_str(&format!(" release {} --reason crashed", k.to_hex()));
        let mut child = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("USER", "test-operator")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script runs");
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let k = key();
    t.stuck(k).await;
    let (code, out) = on_tty(&k, "n\n");
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("[y/N]") && out.contains("not confirmed"),
        "{out}"
    );
    t.run(&["inspect", &k.to_hex()]).assert_code(0);
    let (code, out) = on_tty(&k, "y\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("released {}", k.to_hex())), "{out}");
    t.run(&["inspect", &k.to_hex()]).assert_code(1);
}
