//! Least privilege against a real server: the owner, writer and reader
//! roles the migrations set up, what each may and may not do, the setup
//! when the migrating role may not create roles, and the upgrade of a
//! schema that still has the direct-INSERT grants of the first version.
#![cfg(feature = "postgres")]

mod common;

use idempotency_audit::postgres::sqlx::{self, PgPool};
use idempotency_audit::postgres::{AuditRoles, PostgresSink, StreamBy};
use idempotency_audit::{AuditError, AuditEvent, AuditSink, BreakKind};
use sha2::{Digest, Sha256};

fn event(n: u64) -> AuditEvent {
    AuditEvent::builder("test.appended", "/roles")
        .subject(format!("item-{n}"))
        .attribute("n", n)
        .build()
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

fn sql_state_of(e: &AuditError) -> Option<String> {
    match e {
        AuditError::Backend { source } => source.downcast_ref::<sqlx::Error>().and_then(sqlstate),
        _ => None,
    }
}

/// A sink on `pool` for `schema`, stream `orders`.
fn on(pool: &PgPool, schema: &str) -> PostgresSink {
    PostgresSink::new(pool.clone())
        .with_schema(schema)
        .unwrap()
        .with_stream(StreamBy::Fixed("orders".into()))
}

/// A private, migrated schema (with its derived roles) and its sink.
async fn private_sink(pool: &PgPool) -> (String, PostgresSink) {
    common::drop_stale_schemas(pool).await;
    let schema = common::fresh_schema();
    let sink = on(pool, &schema);
    let report = sink.migrate().await.unwrap();
    assert_eq!(report.applied, [1, 2]);
    (schema, sink)
}

/// What the writer role tries besides appending, each refused for want of
/// privilege (SQLSTATE 42501).
fn forbidden_to_the_writer(schema: &str, owner: &str) -> Vec<(&'static str, String)> {
    let s = format!("\"{schema}\"");
    vec![
        ("update", format!("UPDATE {s}.events SET outcome = 'x'")),
        ("delete", format!("DELETE FROM {s}.events")),
        ("truncate", format!("TRUNCATE {s}.events")),
        ("truncate heads", format!("TRUNCATE {s}.streams")),
        (
            "move a head",
            format!("UPDATE {s}.streams SET last_seq = 0"),
        ),
        (
            "forge a head",
            format!(
                "INSERT INTO {s}.streams VALUES ('forged', 0, decode(repeat('00', 32), 'hex'))"
            ),
        ),
        (
            "disable the triggers",
            format!("ALTER TABLE {s}.events DISABLE TRIGGER ALL"),
        ),
        (
            "disable one trigger",
            format!("ALTER TABLE {s}.events DISABLE TRIGGER events_append_only"),
        ),
        (
            "replication role",
            "SET session_replication_role = replica".to_owned(),
        ),
        (
            "insert a chosen seq and hash",
            format!(
                "INSERT INTO {s}.events (stream, seq, id, type, source, time, content, prev_hash, hash) \
                 VALUES ('orders', 4, gen_random_uuid(), 't', 's', now(), '{{}}', \
                 decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'))"
            ),
        ),
        ("read", format!("SELECT count(*) FROM {s}.events")),
        (
            "lock a head",
            format!("SELECT 1 FROM {s}.streams FOR UPDATE"),
        ),
        ("become the owner", format!("SET ROLE \"{owner}\"")),
        ("drop the table", format!("DROP TABLE {s}.events")),
    ]
}

/// Calls the append function directly with one event whose content is
/// `content`, as any writer can: returns its seq.
async fn append_raw(pool: &PgPool, schema: &str, content: &str) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "SELECT first_seq FROM \"{schema}\".append_events('orders', ARRAY[gen_random_uuid()], \
         ARRAY['t'], ARRAY['s'], ARRAY[NULL]::text[], ARRAY[0::bigint], ARRAY[NULL]::text[], \
         ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], \
         ARRAY[$1])"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(content)
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn the_writer_may_only_append_and_the_reader_only_read() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    let (schema, sink) = private_sink(&pool).await;
    let roles = sink.roles().unwrap();
    assert_eq!(roles, AuditRoles::for_schema(&schema).unwrap());
    let app = common::fresh_role("app");
    let auditor = common::fresh_role("auditor");
    common::login_role(&pool, &app, &[roles.writer()]).await;
    common::login_role(&pool, &auditor, &[roles.reader()]).await;
    let app_pool = common::pool_as(&app, 2).await;
    let auditor_pool = common::pool_as(&auditor, 2).await;
    let writer = on(&app_pool, &schema);
    let reader = on(&auditor_pool, &schema);

    // The writer appends, one by one and in batches, in its own
    // transactions and in the caller's.
    writer.append(&event(1)).await.unwrap();
    writer.append_batch(&[event(2), event(3)]).await.unwrap();
    let mut tx = app_pool.begin().await.unwrap();
    let appended = writer.append_in(&mut tx, &event(4)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(appended.seq, 4);

    let mut refused = Vec::new();
    for (what, sql) in forbidden_to_the_writer(&schema, roles.owner()) {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&app_pool)
            .await
        {
            Ok(_) => refused.push(format!("{what}: allowed")),
            Err(e) if sqlstate(&e).as_deref() == Some("42501") => {}
            Err(e) => refused.push(format!("{what}: {e}")),
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");

    // The reader verifies, and may do nothing else.
    let report = reader.verify("orders").await.unwrap();
    assert!(report.is_intact() && report.events == 4, "{report}");
    assert_eq!(reader.verify_all().await.unwrap().len(), 1);
    let err = reader.append(&event(5)).await.unwrap_err();
    assert_eq!(sql_state_of(&err).as_deref(), Some("42501"), "{err:?}");
    for sql in [
        format!("UPDATE \"{schema}\".events SET outcome = 'x'"),
        format!("DELETE FROM \"{schema}\".events"),
    ] {
        let e = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&auditor_pool)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    }
    // The writer cannot read the trail back, so cannot verify either.
    assert!(writer.verify("orders").await.is_err());

    app_pool.close().await;
    auditor_pool.close().await;
    common::drop_role(&pool, &app).await;
    common::drop_role(&pool, &auditor).await;
    common::drop_schema(&pool, &schema).await;
}

/// An insert-only role can append rows that are not events (`{}`); the
/// verifier reports them and still finds the tampering after them.
#[tokio::test]
async fn a_malformed_row_from_the_writer_does_not_hide_later_tampering() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    let (schema, sink) = private_sink(&pool).await;
    let app = common::fresh_role("app");
    common::login_role(&pool, &app, &[sink.roles().unwrap().writer()]).await;
    let app_pool = common::pool_as(&app, 2).await;
    let writer = on(&app_pool, &schema);
    for n in 1..=3 {
        writer.append(&event(n)).await.unwrap();
    }
    assert_eq!(append_raw(&app_pool, &schema, "{}").await.unwrap(), 4);
    // Not JSON at all: refused by the column type.
    let not_json = append_raw(&app_pool, &schema, "{").await.unwrap_err();
    assert_eq!(sqlstate(&not_json).as_deref(), Some("22P02"));
    // Arrays that do not line up, or no event at all: refused.
    for arrays in [
        "ARRAY[gen_random_uuid()], ARRAY['t', 't'], ARRAY['s']",
        "ARRAY[]::uuid[], ARRAY[]::text[], ARRAY[]::text[]",
    ] {
        let n = if arrays.contains("[]") {
            "ARRAY[]::"
        } else {
            "ARRAY[NULL]::"
        };
        let sql = format!(
            "SELECT first_seq FROM \"{schema}\".append_events('orders', {arrays}, \
             {n}text[], {t}, {n}text[], {n}text[], {n}text[], {n}text[], {n}text[], {c})",
            t = if n == "ARRAY[]::" {
                "ARRAY[]::bigint[]"
            } else {
                "ARRAY[0::bigint]"
            },
            c = if n == "ARRAY[]::" {
                "ARRAY[]::text[]"
            } else {
                "ARRAY['{}']"
            },
        );
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&app_pool)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{arrays}: {err}");
    }
    for n in 5..=8 {
        writer.append(&event(n)).await.unwrap();
    }
    // A superuser edits row 6 and deletes row 8, as in the issue.
    common::tamper(
        &pool,
        &format!(
            "UPDATE \"{schema}\".events SET content = replace(content::text, '\"n\":6', '\"n\":60')::json \
             WHERE stream = $1 AND seq = 6"
        ),
        "orders",
    )
    .await;
    common::tamper(
        &pool,
        &format!("DELETE FROM \"{schema}\".events WHERE stream = $1 AND seq = 8"),
        "orders",
    )
    .await;
    let report = sink.verify("orders").await.unwrap();
    let found: Vec<_> = report
        .breaks
        .iter()
        .map(|b| (b.seq, b.kind.clone()))
        .collect();
    assert_eq!(found.len(), 3, "{report}");
    assert!(
        matches!(found[0], (4, BreakKind::InvalidContent { .. })),
        "{report}"
    );
    assert_eq!(found[1], (6, BreakKind::HashMismatch), "{report}");
    assert_eq!(found[2], (8, BreakKind::Missing), "{report}");
    assert_eq!((report.events, report.last_seq), (7, 7));

    app_pool.close().await;
    common::drop_role(&pool, &app).await;
    common::drop_schema(&pool, &schema).await;
}

/// With `with_least_privilege`, a sink on a superuser's pool appends with
/// the writer's rights and verifies with the reader's, then gives the
/// connection its role back.
#[tokio::test]
async fn least_privilege_appends_as_the_writer_and_verifies_as_the_reader() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    let (schema, sink) = private_sink(&pool).await;
    let roles = sink.roles().unwrap();
    let narrow = sink.clone().with_least_privilege();
    narrow.append(&event(1)).await.unwrap();
    narrow.append_batch(&[event(2), event(3)]).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    narrow.append_in(&mut tx, &event(4)).await.unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(me, "postgres", "the caller's role is back after the append");
    let mut conn = pool.acquire().await.unwrap();
    narrow.append_in(&mut conn, &event(5)).await.unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(me, "postgres");
    assert!(narrow.verify("orders").await.unwrap().is_intact());

    // Take the writer's EXECUTE away: only the narrowed sink notices.
    let revoke = format!(
        "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA \"{schema}\" FROM \"{}\"",
        roles.writer()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(revoke))
        .execute(&pool)
        .await
        .unwrap();
    let err = narrow.append(&event(6)).await.unwrap_err();
    assert_eq!(sql_state_of(&err).as_deref(), Some("42501"), "{err:?}");
    let err = narrow
        .append_batch(&[event(6), event(7)])
        .await
        .unwrap_err();
    assert_eq!(err.written, 0);
    sink.append(&event(6)).await.unwrap();
    // And the reader's SELECT.
    let revoke = format!(
        "REVOKE SELECT ON ALL TABLES IN SCHEMA \"{schema}\" FROM \"{}\"",
        roles.reader()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(revoke))
        .execute(&pool)
        .await
        .unwrap();
    assert!(narrow.verify("orders").await.is_err());
    let report = sink.verify("orders").await.unwrap();
    assert!(report.is_intact() && report.events == 6, "{report}");

    common::drop_schema(&pool, &schema).await;
}

/// A migrating role without CREATEROLE gets a clear error and the SQL to
/// hand to an administrator; after it ran, the migration goes through.
#[tokio::test]
async fn a_role_that_may_not_create_roles_is_told_what_to_run() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    common::drop_stale_schemas(&pool).await;
    let schema = common::fresh_schema();
    let deployer = common::fresh_role("deployer");
    common::login_role(&pool, &deployer, &[]).await;
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{} GRANT CREATE ON DATABASE \"{db}\" TO \"{deployer}\"",
        common::DATABASE_ACL_LOCK
    )))
    .execute(&pool)
    .await
    .unwrap();
    let deployer_pool = common::pool_as(&deployer, 2).await;
    let sink = PostgresSink::new(deployer_pool.clone())
        .with_schema(&schema)
        .unwrap();
    let roles = sink.roles().unwrap();

    let err = sink.migrate().await.unwrap_err();
    match &err {
        AuditError::RolesMissing { missing, user } => {
            assert_eq!(missing, &[roles.owner(), roles.writer(), roles.reader()]);
            assert_eq!(user, &deployer);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("roles_sql"), "{err}");
    // Nothing was created.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!exists);

    // The roles exist but the deployer is not a member of the owner yet.
    let partial = format!(
        "CREATE ROLE \"{}\" NOLOGIN; CREATE ROLE \"{}\" NOLOGIN; CREATE ROLE \"{}\" NOLOGIN;",
        roles.owner(),
        roles.writer(),
        roles.reader()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(partial))
        .execute(&pool)
        .await
        .unwrap();
    match sink.migrate().await.unwrap_err() {
        AuditError::RolesMissing { missing, .. } => {
            assert_eq!(missing, [format!("member of {}", roles.owner())]);
        }
        other => panic!("unexpected {other:?}"),
    }
    for role in [roles.owner(), roles.writer(), roles.reader()] {
        common::drop_role(&pool, role).await;
    }

    // The administrator runs the script; the deployer migrates.
    sqlx::raw_sql(sqlx::AssertSqlSafe(sink.roles_sql(&deployer).unwrap()))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(sink.migrate().await.unwrap().applied, [1, 2]);
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = 'events'",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owner, roles.owner());
    let app = common::fresh_role("app");
    common::login_role(&pool, &app, &[roles.writer()]).await;
    let app_pool = common::pool_as(&app, 1).await;
    let writer = PostgresSink::new(app_pool.clone())
        .with_schema(&schema)
        .unwrap();
    writer.append(&event(1)).await.unwrap();
    assert!(sink.verify("/roles").await.unwrap().is_intact());

    app_pool.close().await;
    deployer_pool.close().await;
    common::drop_schema(&pool, &schema).await;
    common::drop_role(&pool, &app).await;
    common::drop_role(&pool, &deployer).await;
}

/// A role with CREATEROLE (not a superuser) sets everything up alone.
#[tokio::test]
async fn a_createrole_deployer_creates_the_roles_and_hands_the_tables_over() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    common::drop_stale_schemas(&pool).await;
    let schema = common::fresh_schema();
    let deployer = common::fresh_role("deployer");
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{} CREATE ROLE \"{deployer}\" LOGIN CREATEROLE; GRANT CREATE ON DATABASE \"{db}\" TO \"{deployer}\";",
        common::DATABASE_ACL_LOCK
    )))
    .execute(&pool)
    .await
    .unwrap();
    let deployer_pool = common::pool_as(&deployer, 2).await;
    let sink = PostgresSink::new(deployer_pool.clone())
        .with_schema(&schema)
        .unwrap()
        .with_roles(
            AuditRoles::new(
                &format!("{schema}_o"),
                &format!("{schema}_w"),
                &format!("{schema}_r"),
            )
            .unwrap(),
        );
    assert_eq!(sink.migrate().await.unwrap().applied, [1, 2]);
    assert!(sink.migrate().await.unwrap().applied.is_empty());
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename <> 'schema_migrations'",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(owners, [format!("{schema}_o")]);
    let definer: String = sqlx::query_scalar(
        "SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'append_events' AND pronamespace = $1::regnamespace",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        definer,
        format!("{schema}_o"),
        "the append function runs as the owner"
    );
    sink.append(&event(1)).await.unwrap();
    assert!(sink.verify("/roles").await.unwrap().is_intact());

    deployer_pool.close().await;
    common::drop_schema(&pool, &schema).await;
    for r in ["o", "w", "r"] {
        common::drop_role(&pool, &format!("{schema}_{r}")).await;
    }
    common::drop_role(&pool, &deployer).await;
}

/// A schema migrated by the first version, with the application role the
/// first README described (INSERT and SELECT on the events table): the
/// upgrade makes that role a writer, takes its INSERT away, and the chain
/// written before and after verifies as one.
#[tokio::test]
async fn upgrading_a_first_version_schema_keeps_its_chain_and_its_application() {
    let Some(pool) = common::pool(4).await else {
        return;
    };
    common::drop_stale_schemas(&pool).await;
    let schema = common::fresh_schema();
    let legacy = common::fresh_role("legacy");
    let v1 = include_str!("../migrations/0001_events.sql");
    let setup = format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".schema_migrations (
             version bigint PRIMARY KEY, name text NOT NULL, checksum bytea NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());
         {}
         CREATE ROLE \"{legacy}\" LOGIN;
         GRANT USAGE ON SCHEMA \"{schema}\" TO \"{legacy}\";
         GRANT INSERT, SELECT ON \"{schema}\".events TO \"{legacy}\";",
        v1.replace("{{schema}}", &format!("\"{schema}\""))
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".schema_migrations (version, name, checksum) VALUES (1, 'events', $1)"
    )))
    .bind(Sha256::digest(v1.as_bytes()).to_vec())
    .execute(&pool)
    .await
    .unwrap();
    // The first version's application inserted directly; the trigger chained.
    let legacy_pool = common::pool_as(&legacy, 1).await;
    for n in 1..=3 {
        let e = event(n);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".events (stream, id, type, source, subject, time, content) \
             VALUES ('orders', $1, $2, $3, $4, timestamptz 'epoch' + $5 * interval '1 microsecond', $6::json)"
        )))
        .bind(e.id)
        .bind(&e.event_type)
        .bind(&e.source)
        .bind(&e.subject)
        .bind(e.time.unix_micros())
        .bind(e.canonical_json())
        .execute(&legacy_pool)
        .await
        .unwrap();
    }
    let sink = on(&pool, &schema);
    let before = sink.verify("orders").await.unwrap();
    assert!(before.is_intact() && before.events == 3, "{before}");

    assert_eq!(sink.migrate().await.unwrap().applied, [2]);
    let roles = sink.roles().unwrap();
    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, $2, 'MEMBER')")
        .bind(&legacy)
        .bind(roles.writer())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(member, "the old application role is now a writer");
    let direct = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".events (stream, id, type, source, time, content) \
         VALUES ('orders', gen_random_uuid(), 't', 's', now(), '{{}}')"
    )))
    .execute(&legacy_pool)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&direct).as_deref(), Some("42501"));
    on(&legacy_pool, &schema).append(&event(4)).await.unwrap();
    let after = sink.verify("orders").await.unwrap();
    assert!(after.is_intact() && after.events == 4, "{after}");
    assert_eq!(after.first_break(), None);

    legacy_pool.close().await;
    common::drop_schema(&pool, &schema).await;
    common::drop_role(&pool, &legacy).await;
}

#[tokio::test]
async fn long_schema_names_need_named_roles() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/x")
        .unwrap();
    let long = "s".repeat(60);
    let sink = PostgresSink::new(pool).with_schema(&long).unwrap();
    assert!(matches!(sink.roles(), Err(AuditError::InvalidRole { .. })));
    let named = sink.with_roles(AuditRoles::new("a_owner", "a_writer", "a_reader").unwrap());
    assert_eq!(named.roles().unwrap().writer(), "a_writer");
    assert!(
        named
            .roles_sql("deployer")
            .unwrap()
            .contains("CREATE ROLE \"a_writer\" NOLOGIN;")
    );
}
