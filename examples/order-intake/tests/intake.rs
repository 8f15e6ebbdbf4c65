//! Intake exactly once, across processes; the intake's HTTP semantics; the
//! domain rules the database enforces by itself; reading orders.

mod common;

use common::{Http, World, order, world};
use http::{Method, StatusCode};
use serde_json::json;

/// 50 concurrent `POST /orders` with one `externalOrderId`, 25 to each of
/// two processes → one order, one `ORDER_CREATED` event, one 201 and 49
/// replays of the same order, and one workflow execution as Temporal's own
/// visibility API lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_duplicates_over_two_processes_make_one_order_and_one_workflow() {
    let Some(w) = world().await else { return };
    // API and relay only: the workflow is started but not run, so its one
    // execution stays open while we count.
    let a = w.start(&[("OMS_RUN", "api,relay")]).await;
    let b = w.start(&[("OMS_RUN", "api,relay")]).await;
    let ext = format!("shop-{}", uuid::Uuid::new_v4());
    let body = order(Some(&ext), "US");
    let mut calls = Vec::new();
    for i in 0..50 {
        let http = if i % 2 == 0 {
            a.http.clone()
        } else {
            b.http.clone()
        };
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            http.post("/orders", body, &[]).await
        }));
    }
    let mut replies = Vec::new();
    for c in calls {
        replies.push(c.await.unwrap());
    }
    let created: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "{replies:?}");
    assert!(!created[0].is_replay());
    let id = created[0].json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created[0].headers["location"],
        format!("/orders/{id}").as_str()
    );
    for r in &replies {
        assert!(
            r.status == StatusCode::CREATED || (r.status == StatusCode::OK && r.is_replay()),
            "{r:?}"
        );
        assert_eq!(r.json()["id"], id.as_str());
    }
    let orders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE channel = 'SHOPIFY' AND external_order_id = $1",
    )
    .bind(&ext)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(orders, 1);
    assert_eq!(w.event_types(&id).await, vec!["ORDER_CREATED"]);
    let lines: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_lines WHERE order_id = $1::uuid")
            .bind(&id)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(lines, 2);
    let wf = format!("order-intake-{id}");
    assert_eq!(w.executions_once_visible(&wf).await, 1);
    let started: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(started_at) FROM workflow_starts WHERE order_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(started, (1, 1));
    // Once more, after all that: still one.
    assert_eq!(w.executions(&wf).await, 1);
    terminate_workflow(&w, &wf).await;
    drop((a, b));
    w.drop_schemas().await;
}

/// Ends a workflow no worker of the test will run.
pub async fn terminate_workflow(w: &World, wf: &str) {
    let handle = w
        .temporal
        .get_workflow_handle::<example_order_intake::workflow::OrderIntakeWorkflow>(wf);
    let _ = handle
        .terminate(temporalio_client::WorkflowTerminateOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_by_idempotency_key_and_its_problems() {
    let Some(w) = world().await else { return };
    let p = w.start(&[("OMS_RUN", "api")]).await;
    let http = &p.http;
    // Neither externalOrderId nor Idempotency-Key: 400.
    let r = http.post("/orders", order(None, "US"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.problem_slug(), "idempotency-key-required");
    // A key that is no key: 400.
    let r = http
        .post("/orders", order(None, "US"), &[("idempotency-key", "\"\"")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_slug(), "invalid-idempotency-key");
    // First → 201; again → 200, the same order, replayed.
    let key = uuid::Uuid::new_v4().to_string();
    let first = http
        .post("/orders", order(None, "US"), &[("idempotency-key", &key)])
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(first.json()["lines"][1]["unitPrice"], "3.50");
    assert_eq!(first.json()["status"], "CREATED");
    let again = http
        .post("/orders", order(None, "US"), &[("idempotency-key", &key)])
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.is_replay());
    assert_eq!(again.json()["id"], id.as_str());
    // The same key with another order → 422, nothing written.
    let r = http
        .post("/orders", order(None, "CA"), &[("idempotency-key", &key)])
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.problem_slug(), "idempotency-key-reused");
    // The same (channel, externalOrderId) with another order → 422.
    let ext = format!("ext-{}", uuid::Uuid::new_v4());
    let r = http.post("/orders", order(Some(&ext), "US"), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = http.post("/orders", order(Some(&ext), "GB"), &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.problem_slug(), "idempotency-key-reused");
    // Another channel, the same externalOrderId: another order.
    let mut manual = order(Some(&ext), "US");
    manual["channel"] = json!("MANUAL");
    assert_eq!(
        http.post("/orders", manual, &[]).await.status,
        StatusCode::CREATED
    );
    // Malformed JSON → 400; invalid → 422 with pointers.
    let r = http
        .raw(Method::POST, "/orders", Some("{\"channel\":".into()), &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_slug(), "invalid-json");
    let mut bad = order(Some("x"), "US");
    bad["lines"][0]["quantity"] = json!(0);
    bad["lines"][1]["unitPrice"] = json!(3.5);
    let r = http.post("/orders", bad, &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.problem_slug(), "validation-failed");
    let pointers: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pointers, vec!["/lines/0/quantity", "/lines/1/unitPrice"]);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(orders, 3);
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_events WHERE type = 'ORDER_CREATED'")
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(created, 3);
    drop(p);
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_enforces_the_domain_by_itself() {
    let Some(w) = world().await else { return };
    let p = w.start(&[("OMS_RUN", "api")]).await;
    let r = p
        .http
        .post("/orders", order(Some("db-rules"), "US"), &[])
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let refused = |sql: &'static str| {
        let (pool, id) = (w.pool.clone(), id.clone());
        async move {
            let e = sqlx::query(sql)
                .bind(&id)
                .execute(&pool)
                .await
                .expect_err(sql);
            e.to_string()
        }
    };
    // Append-only events: UPDATE, DELETE, TRUNCATE refused.
    for sql in [
        "UPDATE order_events SET payload = '{}' WHERE order_id = $1::uuid",
        "DELETE FROM order_events WHERE order_id = $1::uuid",
    ] {
        assert!(refused(sql).await.contains("append-only"), "{sql}");
    }
    let e = sqlx::query("TRUNCATE order_events CASCADE")
        .execute(&w.pool)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    // A second ORDER_CREATED for the order: refused.
    let e = refused(
        "INSERT INTO order_events (order_id, type, payload) VALUES ($1::uuid, 'ORDER_CREATED', '{}')",
    )
    .await;
    assert!(e.contains("order_events_order_type_key"), "{e}");
    // A status outside the enum, and an edge outside the lifecycle.
    let e = refused("UPDATE orders SET status = 'LOST' WHERE id = $1::uuid").await;
    assert!(e.contains("order_status"), "{e}");
    let e =
        refused("UPDATE orders SET status = 'SHIPPED', tracking_number = 'T' WHERE id = $1::uuid")
            .await;
    assert!(
        e.contains("illegal order transition from CREATED to SHIPPED"),
        "{e}"
    );
    // A line of zero, and a float's worth of cents.
    let e = refused(
        "INSERT INTO order_lines (id, order_id, line_no, sku, quantity, unit_price) \
         VALUES (gen_random_uuid(), $1::uuid, 9, 'X', 0, 1)",
    )
    .await;
    assert!(e.contains("quantity"), "{e}");
    let price: String = sqlx::query_scalar(
        "SELECT unit_price::text FROM order_lines WHERE order_id = $1::uuid AND line_no = 1",
    )
    .bind(&id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(price, "19.99");
    assert_eq!(w.event_types(&id).await, vec!["ORDER_CREATED"]);
    drop(p);
    w.drop_schemas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_read_by_id_by_status_with_a_cursor_and_with_their_events() {
    let Some(w) = world().await else { return };
    let p = w.start(&[("OMS_RUN", "api")]).await;
    let http: &Http = &p.http;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = http
            .post("/orders", order(Some(&format!("page-{i}")), "US"), &[])
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let one = http.get(&format!("/orders/{}", ids[0])).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["lines"].as_array().unwrap().len(), 2);
    assert_eq!(one.json()["shipTo"]["country"], "US");
    assert_eq!(one.json()["workflowId"], format!("order-intake-{}", ids[0]));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/orders?status=CREATED&limit=2&cursor={c}"),
            None => "/orders?status=CREATED&limit=2".to_owned(),
        };
        let page = http.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let body = page.json();
        for o in body["items"].as_array().unwrap() {
            assert_eq!(o["lines"].as_array().unwrap().len(), 2);
            seen.push(o["id"].as_str().unwrap().to_owned());
        }
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every order once, oldest first");
    let none = http.get("/orders?status=SHIPPED").await.json();
    assert_eq!(none["items"], json!([]));
    for bad in [
        "/orders",
        "/orders?status=LOST",
        "/orders?status=CREATED&limit=101",
        "/orders?status=CREATED&cursor=x",
    ] {
        let r = http.get(bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.problem_slug(), "invalid-parameter");
    }
    let events = http.get(&format!("/orders/{}/events", ids[0])).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.json()[0]["type"], "ORDER_CREATED");
    for missing in [
        format!("/orders/{}", uuid::Uuid::now_v7()),
        "/orders/not-a-uuid".to_owned(),
        format!("/orders/{}/events", uuid::Uuid::now_v7()),
    ] {
        let r = http.get(&missing).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(r.problem_slug(), "not-found");
    }
    drop(p);
    w.drop_schemas().await;
}
