//! Product events: accepted and stored in batches, refused by the registry, counted per hour,
//! dropped (and said so) when the queue is full, recorded by the node for its key acts, and old
//! monthly partitions dropped by the retention job.

use crate::helpers::{TestApp, assert_problem, flat_price, funded_user, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::time::Duration;

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect("count")
}

async fn until_stored(db: &PgPool, sql: &str, expected: i64) {
    for _ in 0..100 {
        if count(db, sql).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{sql}` never reached {expected}");
}

async fn send(app: &TestApp, token: &str, events: Value) -> reqwest::Response {
    app.send_json(
        Method::POST,
        "/api/v1/events",
        Some(token),
        &json!({ "events": events }),
    )
    .await
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn registered_events_are_stored_and_counted_and_anything_else_is_refused(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = app.token("clicker", &[Role::User]);
    let now = chrono::Utc::now();
    let accepted = send(
        &app,
        &token,
        json!([
            { "name": "page.viewed", "ts": now, "props": { "page": "/console/", "theme": "dark" } },
            { "name": "button.clicked", "ts": now, "props": { "page": "/console/", "button": "recharge" } },
            { "name": "page.viewed", "ts": now, "props": { "page": "/console/tasks" } },
        ]),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let body: Value = accepted.json().await.expect("body");
    assert_eq!(
        (body["accepted"].as_u64(), body["dropped"].as_u64()),
        (Some(3), Some(0))
    );
    until_stored(
        &db,
        "select count(*) from product_events where source = 'client'",
        3,
    )
    .await;
    assert_eq!(
        count(&db, "select count(*) from product_events where user_id = 'clicker' and props->>'page' = '/console/'").await,
        2
    );

    for (events, why) in [
        (json!([{ "name": "made.up", "ts": now }]), "unknown name"),
        (
            json!([{ "name": "page.viewed", "ts": now, "props": { "password": "x" } }]),
            "unknown prop",
        ),
        (
            json!([{ "name": "recharge.paid", "ts": now }]),
            "a server event",
        ),
        (
            json!([{ "name": "page.viewed", "ts": now - chrono::Duration::days(8) }]),
            "too old",
        ),
        (
            json!([{ "name": "page.viewed", "ts": now, "props": { "page": "x".repeat(300) } }]),
            "too long",
        ),
        (
            json!([{ "name": "page.viewed", "ts": now, "props": { "page": { "nested": 1 } } }]),
            "an object",
        ),
        (json!([]), "empty"),
        (
            json!([{ "name": "page.viewed", "ts": now }, { "name": "made.up", "ts": now }]),
            "one bad event spoils the batch",
        ),
    ] {
        let response = send(&app, &token, events).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    }
    let too_many: Vec<Value> = (0..101)
        .map(|_| json!({ "name": "page.viewed", "ts": now }))
        .collect();
    assert_eq!(
        send(&app, &token, json!(too_many)).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        count(
            &db,
            "select count(*) from product_events where source = 'client'"
        )
        .await,
        3
    );

    let ops = app.token("ops", &[Role::Operator]);
    let stats: Value = app
        .get(
            "/api/v1/stats/events?name=page.viewed&interval=hour",
            Some(&ops),
        )
        .await
        .json()
        .await
        .expect("stats");
    assert_eq!(stats[0]["count"], 2);
    assert_eq!(stats[0]["users"], 1);
    assert!(
        stats[0]["bucket"]
            .as_str()
            .is_some_and(|b| b.ends_with(":00:00+08:00"))
    );
    let daily: Value = app
        .get("/api/v1/stats/events", Some(&ops))
        .await
        .json()
        .await
        .expect("stats");
    let total: i64 = daily
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_i64().unwrap_or(0))
        .sum();
    assert!(total >= 3);
    let user = app.get("/api/v1/stats/events", Some(&token)).await;
    assert_problem(user, StatusCode::FORBIDDEN, "forbidden").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_full_queue_drops_and_says_so_without_failing_the_request(db: PgPool) {
    let app = spawn_app_with(db.clone(), |settings| {
        settings.events.queue_capacity = 3;
        // The writer takes one batch, then pauses long: the queue stays full.
        settings.events.flush_interval_ms = 60_000;
    })
    .await;
    let token = app.token("flooder", &[Role::User]);
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..20)
        .map(|_| json!({ "name": "page.viewed", "ts": now }))
        .collect();
    let response = send(&app, &token, json!(events)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("body");
    let (accepted, dropped) = (
        body["accepted"].as_u64().expect("accepted"),
        body["dropped"].as_u64().expect("dropped"),
    );
    assert_eq!(accepted + dropped, 20);
    assert!(dropped >= 16, "{body}");
    let metrics = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("events_dropped_total") && !line.ends_with(" 0")),
        "the drops are counted"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_node_records_its_own_events_for_key_acts(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = funded_user(&app, "actor", 1_000).await;
    flat_price(&db, "render", 1).await;
    let task: Value = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({ "task_type": "render", "units": 5 }),
        )
        .await
        .json()
        .await
        .expect("task");
    let service = app.token("svc", &[Role::Service]);
    let id = task["id"].as_str().expect("id");
    for event in [
        json!({ "kind": "state", "state": "running" }),
        json!({ "kind": "state", "state": "succeeded", "actual_units": 5 }),
    ] {
        app.send_json(
            Method::POST,
            &format!("/api/v1/tasks/{id}/events"),
            Some(&service),
            &event,
        )
        .await;
    }
    app.post_keyed(
        "/api/v1/credits/charge",
        &token,
        "k",
        &json!({ "amount": 3, "reason": "x" }),
    )
    .await;
    app.get(
        "/api/v1/licenses/check?resource=model:none&action=generate",
        Some(&token),
    )
    .await;
    for name in [
        "task.created",
        "task.finished",
        "credits.charged",
        "license.denied",
    ] {
        until_stored(
            &db,
            &format!("select count(*) from product_events where name = '{name}' and user_id = 'actor' and source = 'server'"),
            1,
        )
        .await;
    }
    assert_eq!(
        count(
            &db,
            "select (props->>'amount')::bigint from product_events where name = 'credits.charged'"
        )
        .await,
        3
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_retention_job_keeps_partitions_ahead_and_drops_old_months(db: PgPool) {
    let old = chrono::Utc::now() - chrono::Duration::days(150);
    let month = old.format("%Y%m").to_string();
    let start = format!("{}-01", old.format("%Y-%m"));
    sqlx::query(&format!(
        "create table product_events_{month} partition of product_events \
         for values from ('{start}') to (('{start}'::date + interval '1 month')::date)"
    ))
    .execute(&db)
    .await
    .expect("old partition");
    sqlx::query(
        "insert into product_events (name, source, ts) values ('page.viewed', 'client', $1)",
    )
    .bind(old)
    .execute(&db)
    .await
    .expect("old event");
    let summary = gateway::events::retention(&db, 3).await.expect("retention");
    assert!(summary.contains("1 dropped"), "{summary}");
    let exists: bool = sqlx::query_scalar(&format!(
        "select to_regclass('product_events_{month}') is not null"
    ))
    .fetch_one(&db)
    .await
    .expect("exists");
    assert!(!exists);
    let ahead = (chrono::Utc::now() + chrono::Duration::days(40))
        .format("%Y%m")
        .to_string();
    let exists: bool = sqlx::query_scalar(&format!(
        "select to_regclass('product_events_{ahead}') is not null"
    ))
    .fetch_one(&db)
    .await
    .expect("exists");
    assert!(exists, "next month's partition exists");
    assert_eq!(
        count(&db, "select count(*) from product_events_default").await,
        0
    );
}
