//! The staging workflow end to end: a correction with its diff and reason,
//! a two-level approval, segregation of duties, a rejection, the quality
//! gate, expiry of a first approval, illegal transitions, batches, and the
//! audit trail of every transition.

mod common;

use std::time::Duration;

use common::{app, app_with, invoice_data, slug};
use serde_json::{Value, json};

/// Every transition event carries the before and after snapshots, and the
/// export's chain verifies.
async fn assert_trail(app: &common::App, id: &str, expected: &[&str]) {
    let events = app.audit_events(id).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected);
    for e in &events {
        let t = e["type"].as_str().unwrap();
        if t == "staging.export.approval_expired" {
            continue;
        }
        assert!(e["after"].is_object(), "{t} has no after snapshot: {e}");
        if t != "staging.export.prepared" {
            assert!(e["before"].is_object(), "{t} has no before snapshot: {e}");
            assert_eq!(e["before"]["status"], e["attributes"]["from"], "{e}");
            assert_eq!(e["after"]["status"], e["attributes"]["to"], "{e}");
        }
    }
    let r = app.get(&format!("/api/v1/staging/{id}/audit")).await;
    assert_eq!(r.status, 200);
    let chain = &r.json()["chain"];
    assert_eq!(chain["intact"], true, "{chain}");
    assert_eq!(chain["events"].as_u64(), Some(expected.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_a_two_level_approval_a_posting_and_its_rollback() {
    let Some(app) = app().await else { return };
    let data = invoice_data("INV-100", "12000.00");
    let invoice = app.invoice(&data).await;
    let stage = json!({"invoice_id": invoice, "export_format": "csv", "destination_system": "quickbooks",
                       "export_data": data, "prepared_by": "paula"});
    let r = app.post("/api/v1/staging/stage", stage.clone()).await;
    assert_eq!(r.status, 201, "{r:?}");
    let e = r.json();
    let id = e["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (e["status"].as_str(), e["required_approvals"].as_i64()),
        (Some("PREPARED"), Some(2))
    );
    assert_eq!(e["compliance_flags"], json!(["SOX", "GDPR", "FINANCIAL"]));
    // Staging the same invoice for the same destination and format again.
    let again = app.post("/api/v1/staging/stage", stage).await;
    assert_eq!((again.status.as_u16(), again.is_replay()), (200, true));
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(
        app.count("staged_exports", &format!("invoice_id = '{invoice}'"))
            .await,
        1
    );

    // Approving before review is an illegal transition naming both states.
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (409, "illegal-transition")
    );
    assert_eq!(
        (r.json()["from"].as_str(), r.json()["to"].as_str()),
        (Some("PREPARED"), Some("APPROVED"))
    );
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/review"),
            json!({"reviewer": "rita"}),
        )
        .await;
    assert_eq!(r.json()["status"], "UNDER_REVIEW");

    // Segregation of duties: the preparer cannot approve.
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "paula"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (403, "segregation-of-duties")
    );
    // A correction needs its reason.
    let mut corrected = invoice_data("INV-100", "12500.00");
    corrected["vendor_name"] = json!("ACME Corporation");
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice", "approved_data": corrected}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (422, "validation-failed")
    );
    assert_eq!(r.json()["errors"][0]["pointer"], "/change_reason");
    // First approval, with the correction: recorded, still under review.
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice", "approved_data": corrected, "change_reason": "Corrected vendor name and total",
                   "approval_comments": "ok otherwise"}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["status"], "UNDER_REVIEW");
    assert_eq!(r.json()["approvals"].as_array().unwrap().len(), 1);
    // The first approver cannot also be the second.
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (403, "segregation-of-duties")
    );
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "bob"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let approved = r.json();
    assert_eq!(approved["status"], "APPROVED");
    assert_eq!(approved["approved_by"], "bob");
    assert_eq!(approved["total_amount"], "12500.00");
    assert_eq!(approved["original_data"]["vendor_name"], "ACME Corp");
    assert_eq!(approved["approved_data"]["vendor_name"], "ACME Corporation");

    // The diff: every version, field-level changes and the reason.
    let d = app.get(&format!("/api/v1/staging/{id}/diff")).await.json();
    let versions = d["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{d}");
    assert_eq!(versions[1]["reason"], "Corrected vendor name and total");
    assert_eq!(versions[1]["changed_by"], "alice");
    let fields: Vec<&str> = versions[1]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["/lines/0/amount", "/total_amount", "/vendor_name"]);
    assert_eq!(d["field_changes"].as_array().unwrap().len(), 3);
    assert_eq!(
        versions[1]["changes"][2],
        json!({"field": "/vendor_name", "before": "ACME Corp", "after": "ACME Corporation"})
    );

    // Posting, then rolling back.
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/post"),
            json!({"posted_by": "pete", "external_reference": "QB-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "POSTED");
    let bookings = app.bookings(&id).await;
    assert_eq!(bookings.len(), 1);
    assert_eq!(bookings[0]["amount"], "12500.00");
    assert_eq!(r.json()["booking_id"], bookings[0]["booking_id"]);
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/rollback"),
            json!({"rolled_back_by": "rob", "reason": "wrong period"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "ROLLED_BACK");
    let again = app
        .post(
            &format!("/api/v1/staging/{id}/rollback"),
            json!({"rolled_back_by": "rob", "reason": "wrong period"}),
        )
        .await;
    assert_eq!((again.status.as_u16(), again.is_replay()), (200, true));
    let other = app
        .post(
            &format!("/api/v1/staging/{id}/rollback"),
            json!({"rolled_back_by": "ruth", "reason": "again"}),
        )
        .await;
    assert_eq!(other.json()["status"], "ROLLED_BACK");
    let bookings = app.bookings(&id).await;
    assert_eq!(bookings.len(), 1);
    assert_eq!(bookings[0]["reversal_id"], "RV-1");
    assert_eq!(
        app.destination.calls(),
        2,
        "one booking call, one reversal call"
    );
    // Nothing leaves ROLLED_BACK.
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/review"),
            json!({"reviewer": "rita"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (409, "illegal-transition")
    );
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/post"),
            json!({"posted_by": "pete2", "external_reference": "QB-1"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (409, "illegal-transition")
    );
    assert_trail(
        &app,
        &id,
        &[
            "staging.export.prepared",
            "staging.export.review_started",
            "staging.export.approval_recorded",
            "staging.export.approved",
            "staging.export.posted",
            "staging.export.rolled_back",
        ],
    )
    .await;
    let full = app.get(&format!("/api/v1/staging/{id}")).await.json();
    let approvers: Vec<&str> = full["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["alice", "bob"]);
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_the_quality_gate_and_an_expired_first_approval() {
    let Some(app) = app_with(|c| c.approval_timeout = Duration::from_secs(1)).await else {
        return;
    };
    // Rejected: nothing more can happen to it.
    let id = app.staged(invoice_data("INV-R", "50.00"), "paula").await;
    app.post(
        &format!("/api/v1/staging/{id}/review"),
        json!({"reviewer": "rita"}),
    )
    .await;
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/reject"),
            json!({"rejected_by": "rita"}),
        )
        .await;
    assert_eq!(r.status, 422, "the reason is required");
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/reject"),
            json!({"rejected_by": "rita", "reason": "duplicate invoice"}),
        )
        .await;
    assert_eq!(r.json()["status"], "REJECTED");
    assert_eq!(r.json()["rejection_reason"], "duplicate invoice");
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["from"].as_str()),
        (409, Some("REJECTED"))
    );
    assert_trail(
        &app,
        &id,
        &[
            "staging.export.prepared",
            "staging.export.review_started",
            "staging.export.rejected",
        ],
    )
    .await;

    // Under the threshold: kept with its errors, approvable once corrected.
    let mut bad = invoice_data("INV-Q", "80.00");
    bad["total_amount"] = json!("81.00");
    bad["currency"] = json!("usd");
    let id = app.staged(bad, "paula").await;
    let e = app.get(&format!("/api/v1/staging/{id}")).await.json();
    assert_eq!(e["quality_score"], 60);
    assert_eq!(e["validation_errors"].as_array().unwrap().len(), 2);
    app.post(
        &format!("/api/v1/staging/{id}/review"),
        json!({"reviewer": "rita"}),
    )
    .await;
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (409, "quality-below-threshold")
    );
    let r = app
        .put(&format!("/api/v1/staging/{id}/approve"),
             json!({"approved_by": "alice", "approved_data": invoice_data("INV-Q", "80.00"), "change_reason": "fixed total and currency"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (
            r.json()["quality_score"].as_i64(),
            r.json()["status"].as_str()
        ),
        (Some(100), Some("APPROVED"))
    );

    // Two levels, the first expires: the next approval starts the chain again.
    let id = app.staged(invoice_data("INV-X", "20000.00"), "paula").await;
    app.post(
        &format!("/api/v1/staging/{id}/review"),
        json!({"reviewer": "rita"}),
    )
    .await;
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "alice"}),
        )
        .await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "bob"}),
        )
        .await;
    assert_eq!(r.status, 202, "bob's is a new first approval: {r:?}");
    let statuses: Vec<(String, String)> = r.json()["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["approver"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("alice".into(), "EXPIRED".into()),
            ("bob".into(), "APPROVED".into())
        ]
    );
    let r = app
        .put(
            &format!("/api/v1/staging/{id}/approve"),
            json!({"approved_by": "carol"}),
        )
        .await;
    assert_eq!(r.json()["status"], "APPROVED");
    assert_trail(
        &app,
        &id,
        &[
            "staging.export.prepared",
            "staging.export.review_started",
            "staging.export.approval_recorded",
            "staging.export.approval_expired",
            "staging.export.approval_recorded",
            "staging.export.approved",
        ],
    )
    .await;
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmitted_batch_completes_without_duplicates() {
    let Some(app) = app().await else { return };
    let mut items = Vec::new();
    for n in 0..4 {
        let data = invoice_data(&format!("INV-B{n}"), if n == 3 { "bad" } else { "10.00" });
        let invoice = app
            .invoice(&invoice_data(&format!("INV-B{n}"), "10.00"))
            .await;
        items.push(
            json!({"invoice_id": invoice, "export_format": "json", "destination_system": "sap",
                          "export_data": data, "prepared_by": "paula"}),
        );
    }
    let batch = uuid::Uuid::new_v4();
    // Half of it first (as if the client died half-way), then all of it.
    let r = app
        .post(
            "/api/v1/staging/batch",
            json!({"batch_id": batch, "submitted_by": "paula", "items": items[..2]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["staged"], 2);
    let r = app
        .post(
            "/api/v1/staging/batch",
            json!({"batch_id": batch, "submitted_by": "paula", "items": items}),
        )
        .await;
    let created: Vec<bool> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["created"].as_bool().unwrap())
        .collect();
    assert_eq!(created, [false, false, true, true]);
    let p = app
        .get(&format!("/api/v1/staging/batches/{batch}"))
        .await
        .json();
    assert_eq!(
        (p["staged"].as_i64(), p["by_status"]["PREPARED"].as_i64()),
        (Some(4), Some(4))
    );
    assert_eq!(p["lowest_quality"], 60);
    assert_eq!(p["average_quality"], 90);
    assert_eq!(
        app.count("staged_exports", &format!("batch_id = '{batch}'"))
            .await,
        4
    );
    let too_many = app
        .post(
            "/api/v1/staging/batch",
            json!({"submitted_by": "paula", "items": []}),
        )
        .await;
    assert_eq!(too_many.status, 422);
    let r = app
        .get(&format!("/api/v1/staging/batches/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status, 404);
    let _: Value = p;
    app.drop().await;
}
