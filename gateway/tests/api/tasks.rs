//! `/tasks/*` over HTTP against real PostgreSQL: holds and settlement through the ledger, the state
//! machine, the numbered history, permissions, idempotency, two nodes, and the events pushed to a
//! real WebSocket client.

use crate::helpers::{
    TestApp, assert_problem, database_name, database_url_for, flat_price, funded_user, spawn_app,
};
use crate::realtime::Client;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::sync::Arc;

async fn create_task(app: &TestApp, token: &str, units: i64) -> Value {
    let response = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(token),
            &json!({ "task_type": "render", "units": units, "params": { "scene": "intro" } }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("task")
}

async fn post_event(app: &TestApp, task: &Value, body: Value) -> reqwest::Response {
    let service = app.token("renderer", &[Role::Service]);
    let path = format!("/api/v1/tasks/{}/events", task["id"].as_str().expect("id"));
    app.send_json(Method::POST, &path, Some(&service), &body)
        .await
}

async fn event_ok(app: &TestApp, task: &Value, body: Value) -> Value {
    let response = post_event(app, task, body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("applied")
}

async fn balance(app: &TestApp, token: &str) -> Value {
    let response = app.get("/api/v1/credits/balance", Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("balance")
}

fn balance_of(value: &Value) -> (i64, i64, i64) {
    (
        value["available"].as_i64().expect("available"),
        value["held"].as_i64().expect("held"),
        value["debt"].as_i64().expect("debt"),
    )
}

async fn ledger_kinds(db: &PgPool, task: &Value) -> Vec<(String, i64)> {
    sqlx::query_as("select kind, amount from credit_ledger where task_id = $1::uuid order by id")
        .bind(task["id"].as_str())
        .fetch_all(db)
        .await
        .expect("ledger")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn success_captures_the_actual_cost_with_the_supplementary_deduction_and_pushes_every_event(
    db: PgPool,
) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "alice", 1_000).await;
    let (mut client, _) = Client::connect(&app, &token).await;

    let task = create_task(&app, &token, 10).await;
    let held = balance(&app, &token).await;
    event_ok(&app, &task, json!({ "kind": "state", "state": "running" })).await;
    event_ok(
        &app,
        &task,
        json!({ "kind": "progress", "progress": 40, "message": "frames" }),
    )
    .await;
    let done = event_ok(
        &app,
        &task,
        json!({ "kind": "state", "state": "succeeded", "actual_units": 15 }),
    )
    .await;
    let settled = balance(&app, &token).await;
    let mut pushed = Vec::new();
    while pushed.len() < 6 {
        pushed.push(client.next().await["push"]["pub"]["data"].clone());
    }
    let history: Value = app
        .get(
            &format!(
                "/api/v1/tasks/{}/events?after_seq=1",
                task["id"].as_str().expect("present")
            ),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("events");

    assert_eq!(task["status"], "queued");
    assert_eq!(task["estimated_credits"], 100);
    assert_eq!(task["seq"], 1);
    assert_eq!(balance_of(&held), (900, 100, 0));
    assert_eq!(done["task"]["status"], "succeeded");
    assert_eq!(done["task"]["actual_units"], 15);
    assert_eq!(done["task"]["actual_cost"], 150);
    assert_eq!(done["task"]["progress"], 100);
    assert_eq!(done["task"]["seq"], 4);
    assert_eq!(done["event"]["from_status"], "running");
    assert_eq!(
        balance_of(&settled),
        (850, 0, 0),
        "150 taken: 100 held + 50 more"
    );
    assert_eq!(
        ledger_kinds(&app.db, &task).await,
        vec![("hold".into(), -100), ("capture".into(), -50)]
    );
    let types: Vec<(&str, Option<i64>)> = pushed
        .iter()
        .map(|data| {
            (
                data["type"].as_str().expect("present"),
                data["seq"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![
            ("task.created", Some(1)),
            ("balance.changed", None),
            ("task.state", Some(2)),
            ("task.progress", Some(3)),
            ("task.state", Some(4)),
            ("balance.changed", None),
        ]
    );
    assert_eq!(pushed[5]["available"], 850);
    assert_eq!(pushed[5]["held"], 0);
    assert!(pushed.iter().all(|data| data["ts"].as_i64().is_some()));
    let seqs: Vec<i64> = history["items"]
        .as_array()
        .expect("present")
        .iter()
        .map(|event| event["seq"].as_i64().expect("present"))
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(history["last_seq"], 4);
    assert_eq!(history["items"][1]["message"], "frames");
    let audited: i64 =
        sqlx::query_scalar("select count(*) from task_audit_logs where task_id = $1::uuid")
            .bind(task["id"].as_str())
            .fetch_one(&app.db)
            .await
            .expect("audit");
    assert_eq!(audited, 4);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_cost_beyond_what_the_account_has_succeeds_and_becomes_debt(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "bob", 100).await;
    let task = create_task(&app, &token, 10).await;
    event_ok(&app, &task, json!({ "kind": "state", "state": "running" })).await;

    let done = event_ok(
        &app,
        &task,
        json!({ "kind": "state", "state": "succeeded", "actual_units": 13 }),
    )
    .await;

    assert_eq!(done["task"]["actual_cost"], 130);
    assert_eq!(balance_of(&balance(&app, &token).await), (0, 0, 30));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn failure_and_cancel_release_the_hold(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "carol", 1_000).await;
    let failing = create_task(&app, &token, 10).await;
    let canceled = create_task(&app, &token, 20).await;
    assert_eq!(balance_of(&balance(&app, &token).await), (700, 300, 0));

    event_ok(
        &app,
        &failing,
        json!({ "kind": "state", "state": "running" }),
    )
    .await;
    let failed = event_ok(
        &app,
        &failing,
        json!({ "kind": "state", "state": "failed", "message": "GPU lost" }),
    )
    .await;
    let cancel_path = format!(
        "/api/v1/tasks/{}/cancel",
        canceled["id"].as_str().expect("present")
    );
    let cancel = app
        .send_json(
            Method::POST,
            &cancel_path,
            Some(&token),
            &json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(cancel.status(), StatusCode::OK);
    let cancel: Value = cancel.json().await.expect("cancel");
    let again = app
        .send_json(Method::POST, &cancel_path, Some(&token), &json!({}))
        .await;

    assert_eq!(failed["task"]["status"], "failed");
    assert_eq!(failed["task"]["actual_cost"], Value::Null);
    assert_eq!(cancel["task"]["status"], "canceled");
    assert_eq!(cancel["event"]["message"], "changed my mind");
    assert_eq!(balance_of(&balance(&app, &token).await), (1_000, 0, 0));
    assert_eq!(
        ledger_kinds(&app.db, &failing).await,
        vec![("hold".into(), -100), ("release".into(), 100)]
    );
    assert_eq!(
        ledger_kinds(&app.db, &canceled).await,
        vec![("hold".into(), -200), ("release".into(), 200)]
    );
    assert_problem(again, StatusCode::CONFLICT, "invalid_transition").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn invalid_transitions_and_bad_events_are_refused_and_change_nothing(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "dave", 1_000).await;
    let task = create_task(&app, &token, 1).await;

    let skip = post_event(
        &app,
        &task,
        json!({ "kind": "state", "state": "succeeded" }),
    )
    .await;
    assert_problem(skip, StatusCode::CONFLICT, "invalid_transition").await;
    let early = post_event(&app, &task, json!({ "kind": "progress", "progress": 5 })).await;
    assert_problem(early, StatusCode::CONFLICT, "invalid_transition").await;
    let back = post_event(&app, &task, json!({ "kind": "state", "state": "queued" })).await;
    assert_problem(back, StatusCode::CONFLICT, "invalid_transition").await;
    for (body, status, code) in [
        (
            json!({ "kind": "created" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "kind": "state" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "kind": "progress", "progress": 101 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "kind": "state", "state": "done" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "kind": "state", "state": "running", "actual_units": 3 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({ "kind": "state", "state": "running", "colour": "red" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "kind": "state", "state": "running", "data": [1] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ] {
        let response = post_event(&app, &task, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        assert_problem(response, status, code).await;
    }
    let service = app.token("renderer", &[Role::Service]);
    let unknown = app
        .send_json(
            Method::POST,
            &format!("/api/v1/tasks/{}/events", uuid::Uuid::now_v7()),
            Some(&service),
            &json!({ "kind": "state", "state": "running" }),
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let not_json = app
        .request(
            Method::POST,
            &format!(
                "/api/v1/tasks/{}/events",
                task["id"].as_str().expect("present")
            ),
            Some(&service),
        )
        .header("content-type", "application/json")
        .body("{kind")
        .send()
        .await
        .expect("request");
    assert_problem(not_json, StatusCode::BAD_REQUEST, "malformed_json").await;
    event_ok(&app, &task, json!({ "kind": "state", "state": "running" })).await;
    event_ok(&app, &task, json!({ "kind": "state", "state": "failed" })).await;
    let after = post_event(&app, &task, json!({ "kind": "state", "state": "running" })).await;
    assert_problem(after, StatusCode::CONFLICT, "invalid_transition").await;

    let stored: Value = app
        .get(
            &format!("/api/v1/tasks/{}", task["id"].as_str().expect("present")),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("task");
    assert_eq!(stored["seq"], 3, "only the two valid events were written");
    assert_eq!(stored["status"], "failed");
    let rows: i64 =
        sqlx::query_scalar("select count(*) from task_state_history where task_id = $1::uuid")
            .bind(task["id"].as_str())
            .fetch_one(&app.db)
            .await
            .expect("history");
    assert_eq!(rows, 3);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_task_the_account_cannot_cover_is_refused_with_402_and_nothing_is_written(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "erin", 50).await;

    let response = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({ "task_type": "render", "units": 10 }),
        )
        .await;
    assert_problem(
        response,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_credits",
    )
    .await;
    let unpriced = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({ "task_type": "sculpt", "units": 1 }),
        )
        .await;
    assert_problem(
        unpriced,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let zero = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({ "task_type": "render", "units": 0 }),
        )
        .await;
    assert_problem(zero, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(tasks, 0);
    assert_eq!(balance_of(&balance(&app, &token).await), (50, 0, 0));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_repeated_create_with_one_key_makes_one_task_and_one_hold(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "fay", 1_000).await;
    let body = json!({ "task_type": "render", "units": 3 });
    let send = || {
        app.request(Method::POST, "/api/v1/tasks", Some(&token))
            .header("idempotency-key", "create-once")
            .json(&body)
            .send()
    };

    let first = send().await.expect("first");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("task");
    let second = send().await.expect("second");
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.expect("task");

    assert_eq!(first["id"], second["id"]);
    assert_eq!(balance_of(&balance(&app, &token).await), (970, 30, 0));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn tasks_are_visible_to_their_owner_and_to_the_any_scopes_only(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 1).await;
    let alice = funded_user(&app, "alice", 100).await;
    let mallory = funded_user(&app, "mallory", 100).await;
    let operator = app.token("op-1", &[Role::Operator]);
    let task = create_task(&app, &alice, 1).await;
    create_task(&app, &mallory, 1).await;
    let path = format!("/api/v1/tasks/{}", task["id"].as_str().expect("present"));

    assert_problem(
        app.get(&path, Some(&mallory)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let foreign_events = app.get(&format!("{path}/events"), Some(&mallory)).await;
    assert_problem(foreign_events, StatusCode::NOT_FOUND, "not_found").await;
    let foreign_cancel = app
        .send_json(
            Method::POST,
            &format!("{path}/cancel"),
            Some(&mallory),
            &json!({}),
        )
        .await;
    assert_problem(foreign_cancel, StatusCode::NOT_FOUND, "not_found").await;
    let foreign_list = app
        .get("/api/v1/tasks?owner_id=alice", Some(&mallory))
        .await;
    assert_problem(foreign_list, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        app.get(&path, Some(&operator)).await.status(),
        StatusCode::OK
    );
    let own: Value = app
        .get("/api/v1/tasks", Some(&alice))
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(own["items"].as_array().expect("present").len(), 1);
    assert_eq!(own["items"][0]["id"], task["id"]);
    let all: Value = app
        .get("/api/v1/tasks?limit=1", Some(&operator))
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(all["items"].as_array().expect("present").len(), 1);
    let cursor = all["next_cursor"].as_str().expect("a second page");
    let rest: Value = app
        .get(
            &format!("/api/v1/tasks?limit=1&cursor={cursor}"),
            Some(&operator),
        )
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(rest["items"].as_array().expect("present").len(), 1);
    assert_ne!(rest["items"][0]["id"], all["items"][0]["id"]);
    assert_eq!(rest["next_cursor"], Value::Null);
    let queued: Value = app
        .get("/api/v1/tasks?status=canceled", Some(&operator))
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(queued["items"].as_array().expect("present").len(), 0);
    let bad_cursor = app.get("/api/v1/tasks?cursor=abc", Some(&alice)).await;
    assert_problem(bad_cursor, StatusCode::BAD_REQUEST, "invalid_query").await;
    let by_operator = app
        .send_json(
            Method::POST,
            &format!("{path}/cancel"),
            Some(&operator),
            &json!({}),
        )
        .await;
    assert_eq!(by_operator.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn two_nodes_posting_events_for_one_task_keep_one_history_and_settle_once(db: PgPool) {
    let node_a = Arc::new(spawn_app(db.clone()).await);
    let second_pool = PgPool::connect(&database_url_for(&database_name(&db)))
        .await
        .expect("second pool");
    let node_b = Arc::new(spawn_app(second_pool).await);
    flat_price(&node_a.db, "render", 10).await;
    let token = funded_user(&node_a, "gina", 1_000).await;
    let task = Arc::new(create_task(&node_a, &token, 10).await);
    event_ok(
        &node_b,
        &task,
        json!({ "kind": "state", "state": "running" }),
    )
    .await;

    let mut posts = Vec::new();
    for n in 0..40 {
        let node = if n % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        let task = task.clone();
        posts.push(tokio::spawn(async move {
            post_event(&node, &task, json!({ "kind": "progress", "progress": n }))
                .await
                .status()
        }));
    }
    for post in posts {
        assert_eq!(post.await.expect("join"), StatusCode::CREATED);
    }
    let mut finishes = Vec::new();
    for node in [
        node_a.clone(),
        node_b.clone(),
        node_a.clone(),
        node_b.clone(),
    ] {
        let task = task.clone();
        finishes.push(tokio::spawn(async move {
            post_event(
                &node,
                &task,
                json!({ "kind": "state", "state": "succeeded" }),
            )
            .await
            .status()
        }));
    }
    let mut statuses = Vec::new();
    for finish in finishes {
        statuses.push(finish.await.expect("join"));
    }

    let seqs: Vec<i64> = sqlx::query_scalar(
        "select seq from task_state_history where task_id = $1::uuid order by seq",
    )
    .bind(task["id"].as_str())
    .fetch_all(&node_a.db)
    .await
    .expect("history");
    assert_eq!(
        seqs,
        (1..=43).collect::<Vec<i64>>(),
        "contiguous, one per event"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::CONFLICT)
            .count(),
        3
    );
    assert_eq!(
        ledger_kinds(&node_a.db, &task).await,
        vec![("hold".into(), -100), ("capture".into(), 0)]
    );
    assert_eq!(balance_of(&balance(&node_a, &token).await), (900, 0, 0));
}
