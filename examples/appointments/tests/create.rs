//! Creating appointments: the story's AC1, AC2, AC5, the one-active-per-source
//! rule under races (two processes), replays, and every refusal.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

/// AC1: from an eligible estimate with no conflicts: created, linked,
/// assigned, the estimate SCHEDULED, Work Execution notified (its planned
/// view is written by the consumer from the event), audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac1_create_from_an_eligible_estimate() {
    let Some(app) = app().await else { return };
    let shop = app
        .shop(3, &["GENERAL_SERVICE_BAY"], &[(&["brakes"], true)])
        .await;
    let estimate = app.source("ESTIMATE", &shop, "APPROVED", &["brakes"]).await;
    let start = at(3, 10);
    let r = app
        .create(SCHEDULER, "k1", "ESTIMATE", &estimate, &start, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let a = r.json();
    let id = a["appointmentId"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["location"], format!("/appointments/{id}"));
    assert_eq!(a["estimateId"], estimate.as_str());
    assert_eq!(a["scheduledDateTime"], start.as_str());
    assert_eq!(a["assignedBay"], shop.bays[0].as_str());
    assert_eq!(a["assignedMechanic"], shop.mechanics[0].as_str());
    assert_eq!(a["assignmentStatus"], "ASSIGNED");
    assert_eq!(a["version"], 1);
    let e = app
        .http
        .get(&format!("/estimates/{estimate}"), SCHEDULER)
        .await;
    assert_eq!(e.json()["status"], "SCHEDULED");
    // The event, and Work Execution's copy of the planned time.
    let event: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM appointments.outbox WHERE aggregate_id = $1 AND event_type = 'AppointmentCreated'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event["version"], 1);
    assert_eq!(event["sourceId"], estimate.as_str());
    assert!(event["eventId"].is_string());
    let (planned_start, version) =
        eventually(std::time::Duration::from_secs(10), "planned", || {
            let pool = app.pool.clone();
            let id = id.clone();
            async move { planned(&pool, &id).await }
        })
        .await;
    assert_eq!((planned_start.as_str(), version), (start.as_str(), 1));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM appointments.audit_log WHERE appointment_id = $1 AND event_type = 'AppointmentCreated' AND actor_id = 'sam'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // Links to the source are immutable.
    let changed =
        sqlx::query("UPDATE appointments.appointments SET source_id = 'other' WHERE id = $1")
            .bind(&id)
            .execute(&app.pool)
            .await;
    assert!(changed.is_err(), "a link was changed");
    app.stop().await;
}

/// AC2: conflicts are surfaced with alternatives; an override needs the
/// permission and a reason, and is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac2_conflicts_alternatives_and_override() {
    let Some(app) = app().await else { return };
    let shop = app.shop(1, &["GENERAL_SERVICE_BAY"], &[(&[], false)]).await;
    let first = app.source("WORK_ORDER", &shop, "OPEN", &[]).await;
    let second = app.source("WORK_ORDER", &shop, "OPEN", &[]).await;
    let start = at(4, 10);
    let r = app
        .create(SCHEDULER, "a", "WORK_ORDER", &first, &start, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");

    let r = app
        .create(SCHEDULER, "b", "WORK_ORDER", &second, &start, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert_eq!(r.problem_slug(), "scheduling-conflict");
    let kinds: Vec<String> = r.json()["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"BAY_UNAVAILABLE".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"CAPACITY_EXCEEDED".to_owned()), "{kinds:?}");
    assert_eq!(r.json()["suggestedAlternatives"][0], at(4, 11).as_str());

    let late = app
        .create(SCHEDULER, "c", "WORK_ORDER", &second, &at(4, 23), json!({}))
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert!(
        late.body.windows(18).any(|w| w == b"OUTSIDE_SHOP_HOURS"),
        "{late:?}"
    );

    let overriding = json!({"overrideConflict": true, "overrideReason": "customer waits on site"});
    let r = app
        .create(
            SCHEDULER,
            "d",
            "WORK_ORDER",
            &second,
            &start,
            overriding.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.problem_slug(), "forbidden");
    let r = app
        .create(
            DISPATCHER,
            "e",
            "WORK_ORDER",
            &second,
            &start,
            json!({"overrideConflict": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let r = app
        .create(DISPATCHER, "f", "WORK_ORDER", &second, &start, overriding)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json()["appointmentId"].as_str().unwrap().to_owned();
    let (actor, reason, meta): (String, String, serde_json::Value) = sqlx::query_as(
        "SELECT actor_id, reason, override FROM appointments.audit_log \
         WHERE appointment_id = $1 AND event_type = 'ConflictOverridden'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), reason.as_str()),
        ("dana", "customer waits on site")
    );
    assert_eq!(meta["approvedBy"], "dana");
    app.stop().await;
}

/// AC5: no mechanic has the required skills: created, awaiting skill
/// fulfilment, and `AppointmentNeedsSkillResolution` emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac5_no_skilled_mechanic() {
    let Some(app) = app().await else { return };
    let shop = app.shop(2, &["LIFT_BAY"], &[(&["tires"], false)]).await;
    let wo = app
        .source("WORK_ORDER", &shop, "OPEN", &["hybrid-drivetrain"])
        .await;
    let r = app
        .create(
            SCHEDULER,
            "k",
            "WORK_ORDER",
            &wo,
            &at(5, 9),
            json!({"bayTypePreference": "LIFT_BAY"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let a = r.json();
    assert_eq!(a["assignmentStatus"], "AWAITING_SKILL_FULFILLMENT");
    assert!(a["assignedMechanic"].is_null());
    assert_eq!(a["assignedBay"], shop.bays[0].as_str());
    let notices: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM appointments.outbox WHERE aggregate_id = $1 \
         AND event_type = 'AppointmentNeedsSkillResolution'",
    )
    .bind(a["appointmentId"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(notices, 1);
    app.stop().await;
}

/// The same key replays the first answer; another key for a scheduled
/// source is 409 with a link to the existing appointment; refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_refusals() {
    let Some(app) = app().await else { return };
    let shop = app.shop(3, &["GENERAL_SERVICE_BAY"], &[]).await;
    let estimate = app.source("ESTIMATE", &shop, "QUOTED", &[]).await;
    let start = at(6, 12);
    let first = app
        .create(SCHEDULER, "same", "ESTIMATE", &estimate, &start, json!({}))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app
        .create(SCHEDULER, "same", "ESTIMATE", &estimate, &start, json!({}))
        .await;
    assert!(again.is_replay(), "{again:?}");
    assert_eq!(again.body, first.body);
    let id = first.json()["appointmentId"].as_str().unwrap().to_owned();
    let other = app
        .create(SCHEDULER, "other", "ESTIMATE", &estimate, &start, json!({}))
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.problem_slug(), "source-already-scheduled");
    assert_eq!(other.headers["location"], format!("/appointments/{id}"));
    assert_eq!(other.json()["appointmentId"], id.as_str());
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM appointments.appointments WHERE source_id = $1")
            .bind(&estimate)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(count, 1);

    let draft = app.source("ESTIMATE", &shop, "DRAFT", &[]).await;
    let r = app
        .create(SCHEDULER, "d", "ESTIMATE", &draft, &start, json!({}))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::CONFLICT, "source-not-eligible".into())
    );
    let done = app.source("WORK_ORDER", &shop, "COMPLETED", &[]).await;
    let r = app
        .create(SCHEDULER, "w", "WORK_ORDER", &done, &start, json!({}))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::CONFLICT, "source-not-eligible".into())
    );
    let r = app
        .create(SCHEDULER, "n", "ESTIMATE", "E-missing", &start, json!({}))
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::NOT_FOUND, "not-found".into())
    );
    let r = app
        .create(
            "Bearer mo:MECHANIC",
            "m",
            "ESTIMATE",
            &draft,
            &start,
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let r = app
        .http
        .post("/appointments", json!({}), &[("idempotency-key", "x")])
        .await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let r = app
        .http
        .post(
            "/appointments",
            json!({"sourceType": "ESTIMATE"}),
            &[("authorization", SCHEDULER)],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a key is required: {r:?}"
    );
    // One key for every bad body: a refused body does not keep its key.
    let key = format!("{}-v", app.config.instance);
    for bad in [
        json!({"sourceType": "INVOICE", "sourceId": "E-1", "scheduledStart": start}),
        json!({"sourceType": "ESTIMATE", "sourceId": "E 1", "scheduledStart": start}),
        json!({"sourceType": "ESTIMATE", "sourceId": "E-1", "scheduledStart": "soon"}),
        json!({"sourceType": "ESTIMATE", "sourceId": "E-1", "scheduledStart": at(120, 10)}),
        json!({"sourceType": "ESTIMATE", "sourceId": "E-1", "scheduledStart": start, "durationMinutes": 5}),
        json!({"sourceType": "ESTIMATE", "sourceId": "E-1", "scheduledStart": start, "colour": "red"}),
    ] {
        let r = app
            .http
            .post(
                "/appointments",
                bad.clone(),
                &[("authorization", SCHEDULER), ("idempotency-key", &key)],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {r:?}");
        assert_eq!(r.problem_slug(), "validation-failed");
    }
    let r = app.http.get("/appointments/APT-nothing", SCHEDULER).await;
    assert_eq!(
        (r.status, r.problem_slug()),
        (StatusCode::NOT_FOUND, "not-found".into())
    );
    let list = app
        .http
        .get(&format!("/appointments?sourceId={estimate}"), SCHEDULER)
        .await;
    assert_eq!(list.json()["appointments"].as_array().unwrap().len(), 1);
    app.stop().await;
}

/// Twenty concurrent creations for one source with different keys, sent to
/// two processes: one appointment, nineteen 409 `source-already-scheduled`;
/// then five concurrent sends of one key over both: one appointment, replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_creations_over_two_processes() {
    let Some((pool, _nats)) = services().await else {
        return;
    };
    let instance = instance();
    let env = [
        ("APPOINTMENTS_INSTANCE", instance.as_str()),
        ("APPOINTMENTS_RUN", "api"),
    ];
    let (a, b) = (Process::start(&env), Process::start(&env));
    let (ha, hb) = (Http::new(&a.base), Http::new(&b.base));
    let shop = ha
        .post(
            "/shops",
            json!({"opensAt": "06:00", "closesAt": "22:00", "capacity": 50}),
            &[],
        )
        .await
        .json()["shopId"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        ha.post(
            &format!("/shops/{shop}/bays"),
            json!({"bayType": "GENERAL_SERVICE_BAY", "name": format!("B{i}")}),
            &[],
        )
        .await;
    }
    let new_source = |h: Http| {
        let shop = shop.clone();
        async move {
            h.post(
                "/estimates",
                json!({"shopId": shop, "customerId": "C", "vehicleId": "V",
                "status": "APPROVED", "serviceDescription": "x", "durationMinutes": 30}),
                &[],
            )
            .await
            .json()["sourceId"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let estimate = new_source(ha.clone()).await;
    let start = at(7, 9);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let h = if i % 2 == 0 { ha.clone() } else { hb.clone() };
            let body =
                json!({"sourceType": "ESTIMATE", "sourceId": estimate, "scheduledStart": start});
            let instance = instance.clone();
            tokio::spawn(async move {
                let key = format!("{instance}-race-{i}");
                h.post(
                    "/appointments",
                    body,
                    &[("authorization", SCHEDULER), ("idempotency-key", &key)],
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    let mut conflicts = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(r.problem_slug(), "source-already-scheduled");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert_eq!((created, conflicts), (1, 19));
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM appointments.appointments WHERE source_id = $1")
            .bind(&estimate)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, 1);

    let estimate = new_source(ha.clone()).await;
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let h = if i % 2 == 0 { ha.clone() } else { hb.clone() };
            let body =
                json!({"sourceType": "ESTIMATE", "sourceId": estimate, "scheduledStart": start});
            let key = format!("{instance}-one-key");
            tokio::spawn(async move {
                h.post(
                    "/appointments",
                    body,
                    &[("authorization", SCHEDULER), ("idempotency-key", &key)],
                )
                .await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        bodies.push(r.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every answer is the first one"
    );
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM appointments.appointments WHERE source_id = $1")
            .bind(&estimate)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    drop((a, b));
    let js = async_nats::jetstream::new(_nats);
    let _ = js.delete_stream(&instance).await;
}
