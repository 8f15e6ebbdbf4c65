//! The Work Execution consumer on a real JetStream: exactly once across
//! `kill -9` (after the transaction and before the ack, and before the
//! transaction), re-published events, and versions delivered out of order.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Waits until the durable consumer has nothing pending or unacknowledged,
/// and returns its info.
async fn drained(
    nats: &async_nats::Client,
    instance: &str,
    durable: &str,
) -> jetstream::consumer::Info {
    let js = jetstream::new(nats.clone());
    eventually(Duration::from_secs(20), "the consumer to drain", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream(instance).await.ok()?;
            let info = stream.consumer_info(durable).await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0)
                .then_some(info)
        }
    })
    .await
}

/// Fixtures and one appointment through `http`: its id and work order.
async fn appointment(http: &Http) -> (String, String) {
    let shop = http
        .post(
            "/shops",
            json!({"opensAt": "06:00", "closesAt": "22:00", "capacity": 5}),
            &[],
        )
        .await
        .json()["shopId"]
        .as_str()
        .unwrap()
        .to_owned();
    let wo = http
        .post(
            "/work-orders",
            json!({"shopId": shop, "customerId": "C", "vehicleId": "V", "status": "OPEN",
            "serviceDescription": "x", "durationMinutes": 30}),
            &[],
        )
        .await
        .json()["sourceId"]
        .as_str()
        .unwrap()
        .to_owned();
    http.post(
        &format!("/shops/{shop}/bays"),
        json!({"bayType": "GENERAL_SERVICE_BAY", "name": "B"}),
        &[],
    )
    .await;
    let r = http
        .post(
            "/appointments",
            json!({"sourceType": "WORK_ORDER", "sourceId": wo, "scheduledStart": at(3, 10)}),
            &[
                ("authorization", SCHEDULER),
                ("idempotency-key", &uuid::Uuid::new_v4().to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    (r.json()["appointmentId"].as_str().unwrap().to_owned(), wo)
}

async fn count_applied(pool: &PgPool, appointment: &str) -> usize {
    applied(pool, appointment).await.len()
}

fn env<'a>(instance: &'a str, pause: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut e = vec![
        ("APPOINTMENTS_INSTANCE", instance),
        ("APPOINTMENTS_ACK_WAIT_MS", "1000"),
        ("APPOINTMENTS_NAK_DELAY_MS", "100"),
    ];
    if let Some(p) = pause {
        e.push(("APPOINTMENTS_PAUSE", p));
    }
    e
}

/// `kill -9` after the consumer's transaction committed and before its ack:
/// JetStream redelivers, the inbox says duplicate, the event stays applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_commit_before_ack_applies_once() {
    let Some((pool, nats)) = services().await else {
        return;
    };
    let instance = instance();
    let durable = format!("{instance}-work-execution");
    let mut first = Process::start(&env(&instance, Some("consumer-after-commit")));
    let (id, _) = appointment(&Http::new(&first.base)).await;
    first.wait_for_line("PAUSED consumer-after-commit", Duration::from_secs(20));
    assert_eq!(
        count_applied(&pool, &id).await,
        1,
        "committed before the pause"
    );
    first.kill9();
    let second = Process::start(&env(&instance, None));
    let info = drained(&nats, &instance, &durable).await;
    assert!(
        info.delivered.consumer_sequence >= 2,
        "redelivered: {info:?}"
    );
    assert_eq!(count_applied(&pool, &id).await, 1);
    assert_eq!(planned(&pool, &id).await.map(|p| p.1), Some(1));
    drop(second);
    let _ = jetstream::new(nats).delete_stream(&instance).await;
}

/// `kill -9` inside the consumer's transaction, before the commit: nothing
/// is applied; after the restart the redelivery applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_commit_applies_once_after_restart() {
    let Some((pool, nats)) = services().await else {
        return;
    };
    let instance = instance();
    let durable = format!("{instance}-work-execution");
    let mut first = Process::start(&env(&instance, Some("consumer-before-commit")));
    let (id, _) = appointment(&Http::new(&first.base)).await;
    first.wait_for_line("PAUSED consumer-before-commit", Duration::from_secs(20));
    assert_eq!(
        count_applied(&pool, &id).await,
        0,
        "nothing visible before the commit"
    );
    first.kill9();
    let second = Process::start(&env(&instance, None));
    drained(&nats, &instance, &durable).await;
    eventually(Duration::from_secs(10), "the event applied", || {
        let pool = pool.clone();
        let id = id.clone();
        async move { (count_applied(&pool, &id).await > 0).then_some(()) }
    })
    .await;
    assert_eq!(count_applied(&pool, &id).await, 1);
    assert_eq!(planned(&pool, &id).await.map(|p| p.1), Some(1));
    drop(second);
    let _ = jetstream::new(nats).delete_stream(&instance).await;
}

/// The relay publishing an event again (its stamp lost, as after a crash
/// between publish and stamp) is dropped by JetStream's duplicate window;
/// a copy under another message id reaches the consumer and the inbox
/// skips it. Applied once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_event_is_applied_once() {
    let Some(app) = app().await else { return };
    let (id, _) = appointment(&app.http).await;
    let instance = app.config.instance.clone();
    let durable = app.config.consumer.durable.clone();
    drained(&app.nats, &instance, &durable).await;
    assert_eq!(count_applied(&app.pool, &id).await, 1);
    let js = jetstream::new(app.nats.clone());
    let messages = || async {
        js.get_stream(&instance)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages
    };
    // The creation, and its notice (no mechanic has the skills): both
    // published before counting.
    eventually(Duration::from_secs(10), "the outbox relayed", || {
        let pool = app.pool.clone();
        let id = id.clone();
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM appointments.outbox WHERE aggregate_id = $1 AND published_at IS NULL",
            )
            .bind(&id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    let before = messages().await;
    assert_eq!(before, 2);
    let (event_id, subject, payload): (uuid::Uuid, String, Value) = sqlx::query_as(
        "UPDATE appointments.outbox SET published_at = NULL WHERE aggregate_id = $1 \
         AND event_type = 'AppointmentCreated' RETURNING event_id, subject, payload",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the relay to publish again",
        || {
            let pool = app.pool.clone();
            async move {
                let stamped: bool = sqlx::query_scalar(
                    "SELECT published_at IS NOT NULL FROM appointments.outbox WHERE event_id = $1",
                )
                .bind(event_id)
                .fetch_one(&pool)
                .await
                .ok()?;
                stamped.then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        messages().await,
        before,
        "the duplicate window dropped the re-publish"
    );
    // Outside the window (another message id): it reaches the consumer.
    example_appointments::relay::publish(&js, &subject, uuid::Uuid::now_v7(), &payload)
        .await
        .unwrap();
    assert_eq!(messages().await, before + 1);
    let info = drained(&app.nats, &instance, &durable).await;
    assert_eq!(info.delivered.stream_sequence, before + 1);
    assert_eq!(count_applied(&app.pool, &id).await, 1);
    app.stop().await;
}

fn event(kind: &str, id: &str, version: u64, start: &str, appointment: &str) -> Value {
    let mut e = json!({"eventId": id, "eventType": kind, "appointmentId": appointment,
        "version": version, "sourceType": "WORK_ORDER", "sourceId": "WO-synthetic",
        "durationMinutes": 60});
    let field = if kind == "AppointmentCreated" {
        "scheduledDateTime"
    } else {
        "newScheduledDateTime"
    };
    e[field] = json!(start);
    e
}

/// Version 3 delivered before version 2: it waits (nak with delay) until 2
/// is applied, then applies; the planned time ends at version 3's, and
/// version 2 never overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_3_before_version_2() {
    let Some(app) = app().await else { return };
    let instance = app.config.instance.clone();
    let js = jetstream::new(app.nats.clone());
    let appointment = format!("APT-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let (t1, t2, t3) = (at(3, 9), at(4, 9), at(5, 9));
    let created = format!("{instance}.appointment.state.created");
    let rescheduled = format!("{instance}.appointment.state.rescheduled");
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    let publish = |subject: String, e: Value, id: uuid::Uuid| {
        let js = js.clone();
        async move {
            example_appointments::relay::publish(&js, &subject, id, &e)
                .await
                .unwrap()
        }
    };
    publish(
        created,
        event(
            "AppointmentCreated",
            &ids[0].to_string(),
            1,
            &t1,
            &appointment,
        ),
        ids[0],
    )
    .await;
    publish(
        rescheduled.clone(),
        event(
            "AppointmentRescheduled",
            &ids[2].to_string(),
            3,
            &t3,
            &appointment,
        ),
        ids[2],
    )
    .await;
    // Version 3 arrives and waits for version 2.
    eventually(Duration::from_secs(10), "version 1 applied", || {
        let pool = app.pool.clone();
        let a = appointment.clone();
        async move { (planned(&pool, &a).await?.1 == 1).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        planned(&app.pool, &appointment).await.map(|p| p.1),
        Some(1),
        "v3 not applied before v2"
    );
    publish(
        rescheduled,
        event(
            "AppointmentRescheduled",
            &ids[1].to_string(),
            2,
            &t2,
            &appointment,
        ),
        ids[1],
    )
    .await;
    let (start, version) = eventually(Duration::from_secs(10), "version 3 applied", || {
        let pool = app.pool.clone();
        let a = appointment.clone();
        async move { planned(&pool, &a).await.filter(|p| p.1 == 3) }
    })
    .await;
    assert_eq!((start.as_str(), version), (t3.as_str(), 3));
    let info = drained(&app.nats, &instance, &app.config.consumer.durable).await;
    assert!(
        info.num_redelivered >= 1 || info.delivered.consumer_sequence > 3,
        "{info:?}"
    );
    let order: Vec<i64> = applied(&app.pool, &appointment)
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(order, [1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(planned(&app.pool, &appointment).await, Some((t3, 3)));
    app.stop().await;
}
