//! Intake: uploads keyed by content, raced, reused keys recorded, files of
//! every kind, limits.

mod common;

use common::{app, app_with, invoice_data, slug, unique};
use serde_json::Value;

/// 30 concurrent uploads of one file by one user make one job; the same
/// client key with another file is 409 and one conflict row; another user
/// uploading the same file is another job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_racing_uploads_make_one_job_and_a_reused_key_is_recorded() {
    let Some(app) = app().await else { return };
    let vendor = unique("v");
    let file = invoice_data("INV-RACE", "250.00").to_string();
    let query = format!("vendor_id={vendor}&uploaded_by=ursula");
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (http, base, query, file) = (
                app.http.clone(),
                app.base.clone(),
                query.clone(),
                file.clone(),
            );
            tokio::spawn(async move {
                common::upload(&http, &base, &query, file.as_bytes(), "application/json").await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "{replies:?}");
    let id = created[0].json()["id"].clone();
    for r in &replies {
        assert!(r.status == 201 || r.status == 200, "{r:?}");
        assert_eq!(r.json()["id"], id);
        assert_eq!(r.is_replay(), r.status == 200);
    }
    assert_eq!(
        app.count("ingestion_jobs", &format!("vendor_id = '{vendor}'"))
            .await,
        1
    );
    assert_eq!(
        app.count("invoices", &format!("vendor_id = '{vendor}'"))
            .await,
        1
    );
    let first = created[0].json();
    assert_eq!(first["invoice"]["quality_score"], 100);
    assert_eq!(first["invoice"]["total_amount"], "250.00");
    assert_eq!(first["file_size"].as_u64(), Some(file.len() as u64));
    // Kept once, under its hash.
    let hash = first["file_hash"].as_str().unwrap();
    assert_eq!(
        std::fs::read(app.config.file_dir.join(hash)).unwrap(),
        file.as_bytes()
    );

    // Another user, the same file: another job.
    let other = app
        .upload(
            &format!("vendor_id={vendor}&uploaded_by=otto"),
            file.as_bytes(),
            "application/json",
        )
        .await;
    assert_eq!(other.status, 201, "{other:?}");
    assert_ne!(other.json()["id"], id);

    // A client key: the first file, then the same key with another file.
    let keyed = format!("vendor_id={vendor}&uploaded_by=ursula&idempotency_key=k-1");
    let a = app
        .upload(&keyed, b"vendor_name,invoice_number\nX,1\n", "text/csv")
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let again = app
        .upload(&keyed, b"vendor_name,invoice_number\nX,1\n", "text/csv")
        .await;
    assert_eq!((again.status.as_u16(), again.is_replay()), (200, true));
    let conflict = app
        .upload(&keyed, b"another file entirely", "application/pdf")
        .await;
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert_eq!(slug(&conflict), "idempotency-key-reused");
    assert_eq!(conflict.json()["existing_job_id"], a.json()["id"]);
    let job = a.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.count(
            "idempotency_conflicts",
            &format!("existing_job_id = '{job}'")
        )
        .await,
        1
    );
    assert_eq!(
        app.count("ingestion_jobs", &format!("vendor_id = '{vendor}'"))
            .await,
        3
    );
    // The conflict is on the job's audit trail.
    let events: Vec<Value> =
        sqlx::query_scalar::<_, sqlx::types::Json<Value>>(sqlx::AssertSqlSafe(format!(
            "SELECT content::jsonb FROM \"{}\".events WHERE stream = $1 ORDER BY seq",
            app.config.audit_schema
        )))
        .bind(format!("staging/ingestion/{job}"))
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.0)
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["staging.upload.ingested", "staging.upload.conflict"]
    );
    app.drop().await;
}

/// JSON and CSV are extracted and validated; anything else waits for
/// manual entry; bad parameters, a missing file and an oversized file are
/// refused, and nothing is stored for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_kind_and_refusals() {
    let Some(app) = app_with(|c| c.max_upload_bytes = 1024).await else {
        return;
    };
    let vendor = unique("v");
    let q = format!("vendor_id={vendor}&uploaded_by=u");
    let csv = "vendor_name,invoice_number,invoice_date,currency,description,amount\n\
               ACME,INV-7,2026-03-01,EUR,widgets,10.25\n,,,,bolts,5\n";
    let r = app.upload(&q, csv.as_bytes(), "text/csv").await;
    assert_eq!(r.status, 201, "{r:?}");
    let inv = &r.json()["invoice"];
    assert_eq!(
        (inv["total_amount"].as_str(), inv["quality_score"].as_i64()),
        (Some("15.25"), Some(100))
    );
    let bad = serde_json::json!({"vendor_name": "", "invoice_number": "X", "invoice_date": "2026-13-01",
                                 "currency": "EUR", "total_amount": "9.999"});
    let r = app
        .upload(&q, bad.to_string().as_bytes(), "application/json")
        .await;
    let inv = &r.json()["invoice"];
    assert_eq!(
        inv["validation_errors"].as_array().unwrap().len(),
        3,
        "{inv}"
    );
    assert_eq!(
        inv["validation_warnings"].as_array().unwrap().len(),
        1,
        "{inv}"
    );
    assert_eq!(inv["quality_score"], 35);
    let r = app.upload(&q, b"%PDF-1.7 binary", "application/pdf").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["status"], "AWAITING_MANUAL_ENTRY");
    assert_eq!(r.json()["invoice"]["quality_score"], 0);

    let r = app.upload(&q, &vec![b'x'; 2048], "application/pdf").await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (413, "upload-too-large")
    );
    let r = app.upload("uploaded_by=u", b"{}", "application/json").await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (422, "validation-failed")
    );
    assert_eq!(r.json()["errors"][0]["pointer"], "/query/vendor_id");
    let r = app
        .post(
            &format!("/api/v1/ingestion/upload?{q}"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (400, "invalid-upload")
    );
    assert_eq!(
        app.count("ingestion_jobs", &format!("vendor_id = '{vendor}'"))
            .await,
        3
    );
    let r = app.get("/api/v1/ingestion/jobs/not-a-uuid").await;
    assert_eq!((r.status.as_u16(), slug(&r).as_str()), (404, "not-found"));
    assert!(r.headers.contains_key("x-request-id"));
    app.drop().await;
}
