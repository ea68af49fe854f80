//! The official `centrifuge` npm SDK (v5), run by Node, against the real server: it connects
//! with a token, gets its personal channel, subscribes to a task and receives that task's events
//! in order with offsets. The Node script only reports; this test asserts.

use crate::helpers::{flat_price, funded_user, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/centrifuge");

async fn next_event(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the SDK reports within 20 s")
        .expect("read")
        .expect("the SDK client is still running");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not an event line: {line}"))
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_centrifuge_sdk_connects_subscribes_and_receives_task_events_in_order(db: PgPool) {
    assert!(
        std::path::Path::new(SDK_DIR)
            .join("node_modules/centrifuge")
            .exists(),
        "run `npm ci` in gateway/tests/centrifuge (scripts/test does)"
    );
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 10).await;
    let token = funded_user(&app, "alice", 1_000).await;
    let created = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({ "task_type": "render", "units": 2 }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let task = created.json::<Value>().await.expect("task")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let channel = format!("task:{task}");
    let mut node = tokio::process::Command::new("node")
        .arg("client.mjs")
        .current_dir(SDK_DIR)
        .env(
            "HUB_WS_URL",
            format!(
                "{}/connection/websocket",
                app.address.replacen("http", "ws", 1)
            ),
        )
        .env("HUB_TOKEN", &token)
        .env("HUB_CHANNEL", &channel)
        .env("HUB_EXPECT", "7")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();

    let mut seen = Vec::new();
    while !(seen.iter().any(|e: &Value| e["event"] == "connected")
        && seen.iter().any(|e| e["event"] == "subscribed"))
    {
        seen.push(next_event(&mut lines).await);
    }
    let service = app.token("renderer", &[Role::Service]);
    for (n, event) in [
        json!({ "kind": "state", "state": "running" }),
        json!({ "kind": "progress", "progress": 60 }),
        json!({ "kind": "state", "state": "succeeded" }),
    ]
    .into_iter()
    .enumerate()
    {
        let response = app
            .send_json(
                Method::POST,
                &format!("/api/v1/tasks/{task}/events"),
                Some(&service),
                &event,
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "event {n}");
    }
    let mut publications = Vec::new();
    while publications.len() < 7 {
        let event = next_event(&mut lines).await;
        assert_ne!(event["event"], "timeout");
        if event["event"] == "publication" {
            publications.push(event);
        } else {
            seen.push(event);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait())
        .await
        .expect("exits")
        .expect("wait");

    assert!(
        seen.iter()
            .any(|e| e["event"] == "server_subscribed" && e["channel"] == "user:alice"),
        "{seen:?}"
    );
    // Offset 1 of the task channel is `task.created`, published before the SDK subscribed.
    let task_events: Vec<(Value, Value)> = publications
        .iter()
        .filter(|p| p["channel"] == channel.as_str())
        .map(|p| (p["offset"].clone(), p["data"]["seq"].clone()))
        .collect();
    assert_eq!(
        task_events,
        vec![
            (json!(2), json!(2)),
            (json!(3), json!(3)),
            (json!(4), json!(4))
        ]
    );
    assert!(
        publications
            .iter()
            .any(|p| p["channel"] == "user:alice" && p["data"]["type"] == "balance.changed")
    );
    assert!(status.success(), "the SDK client exited with {status}");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_console_serves_the_same_sdk_the_tests_run(db: PgPool) {
    let app = spawn_app(db).await;

    let page = app.get("/console/", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.expect("html");
    let start = html.find("/console/assets/").expect("versioned assets");
    let sdk_path = format!(
        "{}/centrifuge.js",
        &html[start..start + "/console/assets/".len() + 16]
    );
    assert!(html.contains(&format!("src=\"{sdk_path}\"")), "{html}");
    let sdk = app.get(&sdk_path, None).await;
    assert_eq!(sdk.status(), StatusCode::OK);
    assert_eq!(
        sdk.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let served = sdk.bytes().await.expect("js");
    let tested = std::fs::read(
        std::path::Path::new(SDK_DIR).join("node_modules/centrifuge/dist/centrifuge.js"),
    )
    .expect("the SDK the Node test runs");
    assert!(
        served == tested,
        "the console serves the SDK the Node tests run"
    );
    let realtime = app
        .get(&sdk_path.replace("centrifuge.js", "realtime.js"), None)
        .await
        .text()
        .await
        .expect("js");
    assert!(
        realtime.contains("globalThis.Centrifuge") && realtime.contains("/connection/websocket")
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_sdk_refreshes_an_expiring_token_and_its_session_lives_on(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.expiry_grace_ms = 1_500).await;
    let now = chrono::Utc::now().timestamp();
    let short = app.sign(&gateway::auth::Claims {
        sub: "alice".into(),
        roles: vec!["user".into()],
        exp: now + 3,
        iat: now,
        nbf: None,
        account_id: None,
        name: None,
    });
    let mut node = tokio::process::Command::new("node")
        .arg("client.mjs")
        .current_dir(SDK_DIR)
        .env(
            "HUB_WS_URL",
            format!(
                "{}/connection/websocket",
                app.address.replacen("http", "ws", 1)
            ),
        )
        .env("HUB_TOKEN", &short)
        .env("HUB_NEXT_TOKEN", app.token("alice", &[Role::User]))
        .env("HUB_EXPECT", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["event"] == "get_token") {
        seen.push(next_event(&mut lines).await);
    }
    // Past the old token's expiry and the grace: a session that had not refreshed is gone.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let service = app.token("publisher", &[Role::Service]);
    let body = json!({ "channel": "user:alice", "data": { "type": "note", "n": 1 } });
    let published = app
        .send_json(Method::POST, "/api/v1/publish", Some(&service), &body)
        .await;
    assert_eq!(published.status(), StatusCode::OK);
    let publication = loop {
        let event = next_event(&mut lines).await;
        if event["event"] == "publication" {
            break event;
        }
        seen.push(event);
    };

    assert_eq!(publication["data"]["n"], 1);
    assert!(
        !seen.iter().any(|e| e["event"] == "disconnected"),
        "the session lived on: {seen:?}"
    );
}
