//! Rescheduling: the story's AC1, AC3, AC4, AC5, AC6, AC9, AC10, a retried
//! reschedule, and the gateway's retry rules.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// A shop (capacity 3, a general and a lift bay, one mechanic with a phone),
/// a work order needing `brakes`, and its appointment on day 3 at 10:00.
async fn scheduled(app: &App) -> (Shop, String, String) {
    let shop = app
        .shop(
            3,
            &["GENERAL_SERVICE_BAY", "LIFT_BAY"],
            &[(&["brakes"], true)],
        )
        .await;
    let wo = app.source("WORK_ORDER", &shop, "OPEN", &["brakes"]).await;
    let r = app
        .create(
            SCHEDULER,
            &format!("c-{wo}"),
            "WORK_ORDER",
            &wo,
            &at(3, 10),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.json()["assignmentStatus"], "ASSIGNED");
    (
        shop,
        wo,
        r.json()["appointmentId"].as_str().unwrap().to_owned(),
    )
}

async fn count(pool: &PgPool, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `(channel, recipient_type, kind, status, attempts)` of an appointment's notifications.
async fn notifications(pool: &PgPool, id: &str) -> Vec<(String, String, String, String, i32)> {
    sqlx::query_as(
        "SELECT channel, recipient_type, kind, status, attempts FROM appointments.notifications \
         WHERE appointment_id = $1 ORDER BY recipient_type, channel",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn settled(pool: &PgPool, id: &str) -> Vec<(String, String, String, String, i32)> {
    eventually(Duration::from_secs(15), "notifications settled", || {
        let pool = pool.clone();
        let id = id.to_owned();
        async move {
            let n = notifications(&pool, &id).await;
            (!n.is_empty() && n.iter().all(|r| r.3 != "PENDING")).then_some(n)
        }
    })
    .await
}

fn body(start: &str, reason: &str) -> Value {
    json!({"newStart": start, "reason": reason})
}

/// AC1, AC5, AC10 and a retried reschedule: updated, links kept, the
/// assignment preserved (bay and mechanic free), the event out, Work
/// Execution's planned time updated, customer (SMS, e-mail) and mechanic
/// notified; the same key again is one history row, one event, one set of
/// notifications, each sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac1_ac5_ac10_reschedule_once_with_notifications() {
    let Some(app) = app().await else { return };
    let (shop, wo, id) = scheduled(&app).await;
    let new_start = at(4, 13);
    let r = app
        .reschedule(SCHEDULER, "r1", &id, body(&new_start, "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let a = r.json();
    assert_eq!(a["scheduledDateTime"], new_start.as_str());
    assert_eq!(a["workOrderId"], wo.as_str());
    assert_eq!(a["version"], 2);
    assert_eq!(a["assignedBay"], shop.bays[0].as_str());
    assert_eq!(a["assignedMechanic"], shop.mechanics[0].as_str());
    assert_eq!(
        a["history"][0]["previousScheduledDateTime"],
        at(3, 10).as_str()
    );
    assert_eq!(a["history"][0]["assignmentStatus"], "PRESERVED");
    let again = app
        .reschedule(SCHEDULER, "r1", &id, body(&new_start, "CUSTOMER_REQUEST"))
        .await;
    assert!(again.is_replay(), "{again:?}");
    assert_eq!(again.body, r.body);

    let history = count(
        &app.pool,
        "SELECT count(*) FROM appointments.history WHERE appointment_id = $1",
        &id,
    )
    .await;
    let events = count(&app.pool, "SELECT count(*) FROM appointments.outbox WHERE aggregate_id = $1 AND event_type = 'AppointmentRescheduled'", &id).await;
    assert_eq!((history, events), (1, 1));
    let sent = settled(&app.pool, &id).await;
    let kinds: Vec<(&str, &str, &str, &str)> = sent
        .iter()
        .map(|n| (n.0.as_str(), n.1.as_str(), n.2.as_str(), n.3.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("EMAIL", "CUSTOMER", "RESCHEDULED", "SENT"),
            ("SMS", "CUSTOMER", "RESCHEDULED", "SENT"),
            ("SMS", "MECHANIC", "TIME_CHANGED", "SENT"),
        ]
    );
    assert_eq!(app.gateway.delivered().len(), 3);
    assert!(app.gateway.attempts().values().all(|n| *n == 1));

    // AC10: Work Execution's view follows the event.
    let planned = eventually(Duration::from_secs(10), "the planned time", || {
        let http = app.http.clone();
        let wo = wo.clone();
        let start = new_start.clone();
        async move {
            let p = http
                .get(&format!("/work-orders/{wo}/planned"), SCHEDULER)
                .await
                .json();
            (p["planned"][0]["plannedStart"] == start.as_str()).then_some(p)
        }
    })
    .await;
    assert_eq!(planned["planned"][0]["version"], 2);
    app.stop().await;
}

/// AC3 and AC9: a hard conflict blocks; the override needs
/// `OVERRIDE_SCHEDULING_CONFLICT` and notes, and the audit entry says who,
/// why, which conflicts, the override and the previous and new values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac3_ac9_override_and_audit() {
    let Some(app) = app().await else { return };
    let shop = app.shop(1, &["GENERAL_SERVICE_BAY"], &[]).await;
    let (a, b) = (
        app.source("WORK_ORDER", &shop, "OPEN", &[]).await,
        app.source("WORK_ORDER", &shop, "OPEN", &[]).await,
    );
    assert_eq!(
        app.create(SCHEDULER, "a", "WORK_ORDER", &a, &at(3, 10), json!({}))
            .await
            .status,
        StatusCode::CREATED
    );
    let r = app
        .create(SCHEDULER, "b", "WORK_ORDER", &b, &at(3, 14), json!({}))
        .await;
    let id = r.json()["appointmentId"].as_str().unwrap().to_owned();
    let target = at(3, 10);
    let r = app
        .reschedule(SCHEDULER, "1", &id, body(&target, "SHOP_CAPACITY"))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::CONFLICT, "scheduling-conflict".into())
    );
    assert!(
        !r.json()["suggestedAlternatives"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let overriding = json!({"newStart": target, "reason": "MANAGER_DISCRETION", "override": true,
                            "notes": "fleet customer, two techs on it"});
    let r = app
        .reschedule(SCHEDULER, "2", &id, overriding.clone())
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let r = app
        .reschedule(
            DISPATCHER,
            "3",
            &id,
            json!({"newStart": target, "reason": "MANAGER_DISCRETION", "override": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let r = app.reschedule(DISPATCHER, "4", &id, overriding).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["history"][0]["conflictOverridden"], true);
    let (actor, role, reason, previous, new, conflicts, meta): (
        String,
        String,
        String,
        Value,
        Value,
        Value,
        Value,
    ) = sqlx::query_as(
        "SELECT actor_id, actor_role, reason, previous_values, new_values, conflicts, override \
             FROM appointments.audit_log WHERE appointment_id = $1 AND action = 'RESCHEDULE'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), role.as_str(), reason.as_str()),
        ("dana", "DISPATCHER", "MANAGER_DISCRETION")
    );
    assert_eq!(previous["scheduledStart"], at(3, 14).as_str());
    assert_eq!(new["scheduledStart"], target.as_str());
    let detected: Vec<&str> = conflicts["detected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert!(detected.contains(&"CAPACITY_EXCEEDED"), "{detected:?}");
    assert_eq!(conflicts["notes"], "fleet customer, two techs on it");
    assert_eq!(meta["approvedBy"], "dana");
    assert_eq!(meta["reason"], "fleet customer, two techs on it");
    app.stop().await;
}

/// AC4: the mechanic is busy at the new time: the mechanic is cleared and
/// the appointment flagged for reassignment (the free bay is kept), and the
/// mechanic is told of the unassignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac4_unavailable_mechanic_is_cleared_and_notified() {
    let Some(app) = app().await else { return };
    let (shop, _, id) = scheduled(&app).await;
    // Another job holds the mechanic (in the lift bay) on day 4 at 10:00.
    let other = app.source("WORK_ORDER", &shop, "OPEN", &["brakes"]).await;
    let r = app
        .create(
            SCHEDULER,
            "o",
            "WORK_ORDER",
            &other,
            &at(4, 10),
            json!({"bayTypePreference": "LIFT_BAY"}),
        )
        .await;
    assert_eq!(
        r.json()["assignedMechanic"],
        shop.mechanics[0].as_str(),
        "{r:?}"
    );
    let r = app
        .reschedule(SCHEDULER, "x", &id, body(&at(4, 10), "EQUIPMENT_ISSUE"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let a = r.json();
    assert!(a["assignedMechanic"].is_null());
    assert_eq!(a["assignedBay"], shop.bays[0].as_str());
    assert_eq!(a["assignment"]["needsReassignment"], true);
    assert_eq!(a["history"][0]["assignmentStatus"], "CLEARED");
    let sent = settled(&app.pool, &id).await;
    assert!(
        sent.iter()
            .any(|n| n.1 == "MECHANIC" && n.2 == "UNASSIGNED" && n.3 == "SENT"),
        "{sent:?}"
    );
    app.stop().await;
}

/// AC6, the reschedule limit and the eligible states: within 24 hours needs
/// `APPROVE_RESCHEDULE`; a third reschedule too; an in-progress appointment
/// is not reschedulable; bad bodies are 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac6_notice_limit_and_states() {
    let Some(app) = app().await else { return };
    let (_, _, id) = scheduled(&app).await;
    let soon = body::format_soon();
    let r = app
        .reschedule(SCHEDULER, "n1", &id, body(&soon, "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::FORBIDDEN, "minimum-notice".into())
    );
    let r = app
        .reschedule(
            MANAGER,
            "n2",
            &id,
            json!({"newStart": soon, "reason": "EMERGENCY",
            "override": true, "notes": "tow-in, manager approved"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app
        .reschedule(SCHEDULER, "n3", &id, body(&at(5, 10), "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app
        .reschedule(SCHEDULER, "n4", &id, body(&at(6, 10), "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::FORBIDDEN, "reschedule-limit".into())
    );
    let r = app
        .reschedule(MANAGER, "n5", &id, body(&at(6, 10), "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["rescheduleCount"], 3);
    for bad in [
        body("someday", "CUSTOMER_REQUEST"),
        body(&at(7, 10), "BORED"),
        body(&at(7, 10), "OTHER"),
        json!({"newStart": at(7, 10), "reason": "WEATHER", "colour": "red"}),
    ] {
        let r = app.reschedule(MANAGER, "v", &id, bad.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {r:?}");
    }
    sqlx::query("UPDATE appointments.appointments SET status = 'IN_PROGRESS' WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .reschedule(MANAGER, "s", &id, body(&at(8, 10), "WEATHER"))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::CONFLICT, "not-reschedulable".into())
    );
    let r = app
        .reschedule(MANAGER, "s2", "APT-none", body(&at(8, 10), "WEATHER"))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::NOT_FOUND, "not-found".into())
    );
    app.stop().await;
}

/// The gateway failing: SMS is retried once and e-mail twice, then each is
/// `FAILED`, flagged for a manual follow-up, and `NotificationFailed` goes
/// out; a send that fails once is retried and sent, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_failures_follow_the_retry_rules() {
    let Some(app) = app().await else { return };
    let (_, _, id) = scheduled(&app).await;
    app.gateway.fail_next("SMS", 100);
    app.gateway.fail_next("EMAIL", 100);
    let r = app
        .reschedule(SCHEDULER, "g1", &id, body(&at(4, 13), "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let n = settled(&app.pool, &id).await;
    let summary: Vec<(&str, &str, &str, i32)> = n
        .iter()
        .map(|n| (n.0.as_str(), n.1.as_str(), n.3.as_str(), n.4))
        .collect();
    assert_eq!(
        summary,
        [
            ("EMAIL", "CUSTOMER", "FAILED", 3),
            ("SMS", "CUSTOMER", "FAILED", 2),
            ("SMS", "MECHANIC", "FAILED", 2)
        ]
    );
    let follow_up = count(&app.pool, "SELECT count(*) FROM appointments.notifications WHERE appointment_id = $1 AND manual_follow_up", &id).await;
    let failed_events = count(&app.pool, "SELECT count(*) FROM appointments.outbox WHERE aggregate_id = $1 AND event_type = 'NotificationFailed'", &id).await;
    assert_eq!((follow_up, failed_events), (3, 3));
    let mut attempts: Vec<u32> = app.gateway.attempts().values().copied().collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [2, 2, 3]);
    assert!(app.gateway.delivered().is_empty());

    // One failure each: retried, then sent once.
    app.gateway.fail_next("SMS", 1);
    app.gateway.fail_next("EMAIL", 1);
    let r = app
        .reschedule(SCHEDULER, "g2", &id, body(&at(5, 13), "CUSTOMER_REQUEST"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let n = eventually(Duration::from_secs(15), "the second set sent", || {
        let pool = app.pool.clone();
        let id = id.clone();
        async move {
            let n = notifications(&pool, &id).await;
            (n.iter().filter(|r| r.3 == "SENT").count() == 3).then_some(n)
        }
    })
    .await;
    assert!(
        n.iter().filter(|r| r.3 == "SENT").any(|r| r.4 == 2),
        "{n:?}"
    );
    assert_eq!(app.gateway.delivered().len(), 3);
    app.stop().await;
}

mod body {
    /// Three hours from now, to the second, RFC 3339.
    pub(super) fn format_soon() -> String {
        let t = time::OffsetDateTime::now_utc() + time::Duration::hours(3);
        example_appointments::body::format_time(t)
    }
}
