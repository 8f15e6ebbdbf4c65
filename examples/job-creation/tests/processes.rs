//! Running binaries on one database: 100 concurrent completions of one
//! assessment split over two processes; graceful degradation and recovery
//! across a restart; a worker killed with SIGKILL mid-stage and restarted;
//! SIGTERM with a job in hand; a missing `DATABASE_URL`.

mod common;

use common::JobReply;

use std::sync::Arc;
use std::time::Duration;

use common::{
    HttpClient, Server, assessment_on, audit_events, client, config, counter, eventually, job,
    jobs, pool, send, spawn, stage_outputs,
};
use example_job_creation::Config;
use example_job_creation::worker::STAGES;
use http::{Method, StatusCode};
use tokio::sync::Barrier;
use uuid::Uuid;

/// How the 100 completions name their correlation.
#[derive(Debug, Clone, Copy)]
enum Headers {
    SameCorrelation,
    DifferentRequestIds,
    None,
}

async fn hundred_completions(
    client: &HttpClient,
    servers: &[Arc<Server>; 2],
    assessment: Uuid,
    headers: Headers,
) -> Vec<common::Reply> {
    const CALLS: usize = 100;
    let barrier = Arc::new(Barrier::new(CALLS));
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let (client, server, barrier) = (client.clone(), servers[i % 2].clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let url = server.url(&format!(
                "/api/funnels/stress/assessments/{assessment}/complete"
            ));
            let rid = format!("req-{i}");
            let h: Vec<(&str, &str)> = match headers {
                Headers::SameCorrelation => vec![("x-correlation-id", "corr-same")],
                Headers::DifferentRequestIds => vec![("x-request-id", rid.as_str())],
                Headers::None => vec![],
            };
            barrier.wait().await;
            send(&client, Method::POST, &url, None, &h).await.unwrap()
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_completions_over_two_processes_make_one_job() {
    let Some(pool) = pool(4).await else { return };
    let config = config();
    let servers = [
        Arc::new(spawn(&config, &[]).await),
        Arc::new(spawn(&config, &[("JOB_CREATION_ISOLATION", "serializable")]).await),
    ];
    let client = client();
    for headers in [
        Headers::SameCorrelation,
        Headers::DifferentRequestIds,
        Headers::None,
    ] {
        let assessment = assessment_on(&client, &servers[0], "stress").await;
        let replies = hundred_completions(&client, &servers, assessment, headers).await;
        let mut ids = Vec::new();
        let mut correlations = Vec::new();
        let mut already = 0;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK, "{headers:?}: {r:?}");
            ids.push(
                r.job_id()
                    .unwrap_or_else(|| panic!("{headers:?}: no job in {r:?}")),
            );
            correlations.push(r.correlation());
            already += usize::from(r.json()["data"].get("message").is_some());
        }
        ids.sort();
        ids.dedup();
        correlations.sort();
        correlations.dedup();
        assert_eq!(ids.len(), 1, "{headers:?}: every answer has the same job");
        assert_eq!(correlations.len(), 1, "{headers:?}");
        assert_eq!(
            already, 99,
            "{headers:?}: one completion, 99 already completed"
        );
        let rows = jobs(&pool, &config.schema, assessment).await;
        assert_eq!(rows.len(), 1, "{headers:?}: exactly one job row");
        assert_eq!(rows[0].id, ids[0]);
        assert_eq!(rows[0].correlation_id, correlations[0]);
        if let Headers::SameCorrelation = headers {
            assert_eq!(correlations[0], "corr-same");
        }
    }
    // One creation event per assessment, written by whichever process created the job.
    for server in &servers {
        server.signal("TERM");
    }
    for server in servers {
        let mut server = Arc::into_inner(server).unwrap();
        assert!(server.wait_exit(Duration::from_secs(10)).success());
    }
    let events: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".events WHERE type = 'processing_job.create'",
        config.audit_schema
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, 3);
    common::drop_schemas(&pool, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_with_the_insert_fault_then_recovery_after_a_restart() {
    let Some(pool) = pool(4).await else { return };
    let config = config();
    let client = client();
    let mut faulty = spawn(&config, &[("JOB_CREATION_FAULT", "insert")]).await;
    let assessment = assessment_on(&client, &faulty, "stress").await;
    let url = format!("/api/funnels/stress/assessments/{assessment}/complete");
    let r = send(
        &client,
        Method::POST,
        &faulty.url(&url),
        None,
        &[("x-correlation-id", "corr-deg")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.json()["data"].get("processingJob").is_none(), "{r:?}");
    assert_eq!(r.json()["data"]["status"], "completed");
    let metrics = send(&client, Method::GET, &faulty.url("/metrics"), None, &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(
        counter(&text, "processing_job_creation_failed_total"),
        1,
        "{text}"
    );
    assert!(jobs(&pool, &config.schema, assessment).await.is_empty());
    faulty.signal("TERM");
    assert!(faulty.wait_exit(Duration::from_secs(10)).success());
    // The error was logged with the assessment and correlation ids.
    let log = faulty.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("processing job not created"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&assessment.to_string()) && line.contains("corr-deg"),
        "{line}"
    );
    drop(faulty);

    let mut healthy = spawn(&config, &[]).await;
    let r = send(&client, Method::POST, &healthy.url(&url), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let rows = jobs(&pool, &config.schema, assessment).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].correlation_id, "corr-deg");
    assert_eq!(r.job_id(), Some(rows[0].id));
    let metrics = send(&client, Method::GET, &healthy.url("/metrics"), None, &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("processing_job_creation_failed_total 0"),
        "{text}"
    );
    assert_eq!(counter(&text, "processing_jobs_created_total"), 1);
    // SIGTERM: the audit buffer writes what it holds before the exit.
    healthy.signal("TERM");
    assert!(healthy.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        audit_events(&pool, &config.audit_schema, assessment)
            .await
            .len(),
        1
    );
    common::drop_schemas(&pool, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stage_and_restarted_runs_each_stage_once() {
    let Some(pool) = pool(4).await else { return };
    let config = Config {
        worker: true,
        stage_time: Duration::from_millis(600),
        lease: Duration::from_millis(1000),
        ..config()
    };
    let client = client();
    let mut first = spawn(&config, &[]).await;
    let assessment = assessment_on(&client, &first, "stress").await;
    let url = format!("/api/funnels/stress/assessments/{assessment}/complete");
    let r = send(&client, Method::POST, &first.url(&url), None, &[])
        .await
        .unwrap();
    let job_id = r.job_id().unwrap();
    // The first stage is done; the second is running.
    let (p, s) = (pool.clone(), config.schema.clone());
    eventually(Duration::from_secs(10), "the first stage's output", || {
        let (p, s) = (p.clone(), s.clone());
        async move { !stage_outputs(&p, &s, job_id).await.is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    // Killed inside a stage: the job is held, its stage has no output yet
    // (or, killed in the instant after the stage committed, has it).
    let at_kill = job(&pool, &config.schema, job_id).await;
    assert_eq!(at_kill.status, "in_progress", "{at_kill:?}");
    let running = STAGES
        .iter()
        .position(|s| *s == at_kill.stage)
        .unwrap_or_else(|| panic!("not inside a stage: {at_kill:?}"));
    let outputs = stage_outputs(&pool, &config.schema, job_id).await;
    assert!(
        outputs.len() == running || outputs.len() == running + 1,
        "{at_kill:?}: {outputs:?}"
    );
    assert!(outputs.iter().all(|(_, n)| *n == 1), "{outputs:?}");
    drop(first);

    let second = spawn(&config, &[("RUST_LOG", "info")]).await;
    eventually(
        Duration::from_secs(15),
        "the job completes after the restart",
        || {
            let (p, s) = (p.clone(), s.clone());
            async move { job(&p, &s, job_id).await.status == "completed" }
        },
    )
    .await;
    let done = job(&pool, &config.schema, job_id).await;
    assert_eq!(
        (done.stage.as_str(), done.attempt),
        ("done", 2),
        "{done:?}\n{}",
        second.log_text()
    );
    let once: Vec<(String, i64)> = STAGES.iter().map(|s| ((*s).to_owned(), 1)).collect();
    assert_eq!(stage_outputs(&pool, &config.schema, job_id).await, once);
    common::drop_schemas(&pool, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_worker_finish_its_job_then_exits_zero() {
    let Some(pool) = pool(4).await else { return };
    let config = Config {
        worker: true,
        stage_time: Duration::from_millis(300),
        ..config()
    };
    let client = client();
    let mut server = spawn(&config, &[]).await;
    let assessment = assessment_on(&client, &server, "stress").await;
    let url = format!("/api/funnels/stress/assessments/{assessment}/complete");
    let r = send(&client, Method::POST, &server.url(&url), None, &[])
        .await
        .unwrap();
    let job_id = r.job_id().unwrap();
    let (p, s) = (pool.clone(), config.schema.clone());
    eventually(Duration::from_secs(10), "the first stage's output", || {
        let (p, s) = (p.clone(), s.clone());
        async move { !stage_outputs(&p, &s, job_id).await.is_empty() }
    })
    .await;
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    // The job in hand was finished before the exit, in its one attempt.
    let done = job(&pool, &config.schema, job_id).await;
    assert_eq!(
        (done.status.as_str(), done.stage.as_str(), done.attempt),
        ("completed", "done", 1),
        "{done:?}"
    );
    let once: Vec<(String, i64)> = STAGES.iter().map(|s| ((*s).to_owned(), 1)).collect();
    assert_eq!(stage_outputs(&pool, &config.schema, job_id).await, once);
    drop(server);
    assert_eq!(
        audit_events(&pool, &config.audit_schema, assessment)
            .await
            .len(),
        1
    );
    common::drop_schemas(&pool, &config).await;
}

#[tokio::test]
async fn without_a_database_url_one_line_names_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_example-job-creation"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_example-job-creation"))
        .env("DATABASE_URL", "postgres://x@127.0.0.1/x")
        .env("JOB_CREATION_LEASE_MS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JOB_CREATION_LEASE_MS") && err.lines().count() == 1,
        "{err}"
    );
}
