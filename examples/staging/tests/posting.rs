//! Posting exactly once, counted at the destination: a destination that
//! fails twice, one that books but drops its answer, twenty concurrent
//! posts, a destination that fails every call and a later retry, and
//! rollback refusals.

mod common;

use common::{app, app_with, invoice_data, slug};
use example_staging::destination::Faults;
use example_staging::posting::destination_key;
use serde_json::json;

fn post_body(by: &str) -> serde_json::Value {
    json!({"posted_by": by, "external_reference": "QB-9", "export_filename": "export_001.csv"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_failing_twice_then_booking_gets_one_booking() {
    let Some(app) = app().await else { return };
    let id = app.approved(invoice_data("INV-F2", "100.00")).await;
    app.faults(Faults {
        fail_next: 2,
        ..Faults::default()
    });
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "POSTED");
    assert_eq!(r.json()["retry_count"], 2);
    let bookings = app.bookings(&id).await;
    assert_eq!(bookings.len(), 1);
    // The same key on every call: the export's, derived from the record.
    let key = destination_key(id.parse().unwrap(), "posting");
    assert_eq!(bookings[0]["idempotency_key"], key.as_str());
    assert_eq!(r.json()["destination_key"], key.as_str());
    assert_eq!(app.destination.calls(), 3);
    // A double click: replayed, no call.
    let again = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!((again.status.as_u16(), again.is_replay()), (200, true));
    assert_eq!(again.json()["booking_id"], r.json()["booking_id"]);
    // The same user with other values: refused.
    let other = app
        .post(
            &format!("/api/v1/staging/{id}/post"),
            json!({"posted_by": "pete", "external_reference": "QB-10"}),
        )
        .await;
    assert_eq!(
        (other.status.as_u16(), slug(&other).as_str()),
        (422, "action-mismatch")
    );
    assert_eq!(app.destination.calls(), 3);
    let posted = app
        .audit_events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "staging.export.posted")
        .count();
    assert_eq!(posted, 1);
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_whose_answer_was_dropped_is_found_again_not_booked_again() {
    let Some(app) = app().await else { return };
    let id = app.approved(invoice_data("INV-DROP", "75.50")).await;
    app.faults(Faults {
        drop_next: 1,
        ..Faults::default()
    });
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "POSTED");
    let bookings = app.bookings(&id).await;
    assert_eq!(bookings.len(), 1, "{bookings:?}");
    assert_eq!(r.json()["booking_id"], bookings[0]["booking_id"]);
    assert_eq!(
        app.destination.calls(),
        2,
        "the dropped call and its retry with the same key"
    );
    // Also when every call of a post times out after booking: FAILED, and
    // the later post finds the booking by the same key.
    let id = app.approved(invoice_data("INV-DROP2", "10.00")).await;
    app.faults(Faults {
        drop_next: 3,
        ..Faults::default()
    });
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (502, "destination-failed")
    );
    assert_eq!(r.json()["error_code"], "TIMEOUT");
    let e = app.get(&format!("/api/v1/staging/{id}")).await.json();
    assert_eq!(
        (e["status"].as_str(), e["error_code"].as_str()),
        (Some("FAILED"), Some("TIMEOUT"))
    );
    assert_eq!(
        app.bookings(&id).await.len(),
        1,
        "booked once, answers lost"
    );
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("quinn"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.bookings(&id).await.len(), 1);
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_posts_and_other_users_make_one_booking_and_one_transition() {
    let Some(app) = app().await else { return };
    let id = app.approved(invoice_data("INV-20", "990.00")).await;
    // A slow destination, so the posts overlap.
    app.faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    let tasks: Vec<_> = (0..23)
        .map(|n| {
            let (http, url) = (
                app.http.clone(),
                format!("{}/api/v1/staging/{id}/post", app.base),
            );
            let by = if n < 20 {
                "pete".to_owned()
            } else {
                format!("user-{n}")
            };
            tokio::spawn(async move {
                let body = post_body(&by).to_string();
                example_support::testing::send(&http, http::Method::POST, &url, Some(&body), &[])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let booking = app.bookings(&id).await;
    assert_eq!(booking.len(), 1, "{booking:?}");
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["status"], "POSTED");
        assert_eq!(r.json()["booking_id"], booking[0]["booking_id"]);
    }
    let executed = replies[..20].iter().filter(|r| !r.is_replay()).count();
    assert_eq!(
        executed, 1,
        "one of pete's twenty executed, the others replayed"
    );
    let posted = app
        .audit_events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "staging.export.posted")
        .count();
    assert_eq!(posted, 1);
    assert_eq!(
        app.count(
            "staged_exports",
            &format!("id = '{id}' AND status = 'POSTED'")
        )
        .await,
        1
    );
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_failing_every_call_leaves_failed_and_a_later_post_succeeds() {
    let Some(app) = app().await else { return };
    let id = app.approved(invoice_data("INV-FAIL", "40.00")).await;
    app.faults(Faults {
        fail_next: 3,
        ..Faults::default()
    });
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (502, "destination-failed")
    );
    assert_eq!(r.json()["error_code"], "DEST_UNAVAILABLE");
    let e = app.get(&format!("/api/v1/staging/{id}")).await.json();
    assert_eq!(
        (
            e["status"].as_str(),
            e["error_code"].as_str(),
            e["retry_count"].as_i64()
        ),
        (Some("FAILED"), Some("DEST_UNAVAILABLE"), Some(3))
    );
    assert!(app.bookings(&id).await.is_empty());
    // Rolling back what is not posted is illegal.
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/rollback"),
            json!({"rolled_back_by": "rob", "reason": "x"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["from"].as_str()),
        (409, Some("FAILED"))
    );
    // The same user's later post runs again (its record failed retryably).
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "POSTED");
    assert_eq!(app.bookings(&id).await.len(), 1);
    let types: Vec<String> = app
        .audit_events(&id)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &types[types.len() - 2..],
        ["staging.export.post_failed", "staging.export.posted"]
    );
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_disabled_and_posting_what_is_not_approved() {
    let Some(app) = app_with(|c| c.rollback = false).await else {
        return;
    };
    let id = app.staged(invoice_data("INV-NA", "5.00"), "paula").await;
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.json()["from"].as_str(),
            r.json()["to"].as_str()
        ),
        (409, Some("PREPARED"), Some("POSTED"))
    );
    assert_eq!(app.destination.calls(), 0);
    let r = app
        .post(
            &format!("/api/v1/staging/{id}/rollback"),
            json!({"rolled_back_by": "rob", "reason": "x"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (403, "rollback-disabled")
    );
    let r = app
        .post(
            &format!("/api/v1/staging/{}/post", uuid::Uuid::new_v4()),
            post_body("pete"),
        )
        .await;
    assert_eq!(r.status, 404);
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reversal_leaves_posted_and_a_later_rollback_reverses_once() {
    let Some(app) = app().await else { return };
    let id = app.approved(invoice_data("INV-RV", "12.00")).await;
    let r = app
        .post(&format!("/api/v1/staging/{id}/post"), post_body("pete"))
        .await;
    assert_eq!(r.json()["status"], "POSTED");
    app.faults(Faults {
        fail_next: 3,
        ..Faults::default()
    });
    let body = json!({"rolled_back_by": "rob", "reason": "wrong vendor"});
    let r = app
        .post(&format!("/api/v1/staging/{id}/rollback"), body.clone())
        .await;
    assert_eq!(
        (r.status.as_u16(), slug(&r).as_str()),
        (502, "destination-failed")
    );
    let e = app.get(&format!("/api/v1/staging/{id}")).await.json();
    assert_eq!(
        (e["status"].as_str(), e["reversal_id"].as_str()),
        (Some("POSTED"), None)
    );
    assert!(app.bookings(&id).await[0]["reversal_id"].is_null());
    let r = app
        .post(&format!("/api/v1/staging/{id}/rollback"), body)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "ROLLED_BACK");
    let bookings = app.bookings(&id).await;
    assert_eq!(
        (bookings.len(), bookings[0]["reversal_id"].as_str()),
        (1, Some("RV-1"))
    );
    // One booking call, three failed reversal calls, one reversal.
    assert_eq!(app.destination.calls(), 5);
    let types: Vec<String> = app
        .audit_events(&id)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "staging.export.rolled_back")
            .count(),
        1
    );
    app.drop().await;
}
