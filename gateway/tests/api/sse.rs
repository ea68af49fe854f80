//! `/connection/sse` for plain `EventSource` clients.

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::time::Duration;

/// One server-sent event.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

pub struct SseClient {
    pub response: reqwest::Response,
    pub buffer: String,
}

impl SseClient {
    pub async fn open(
        app: &TestApp,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = app.request(Method::GET, &format!("/connection/sse?{query}"), None);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.expect("request")
    }

    /// The next event with data (comments and the retry hint are skipped).
    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event.event = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        event.data.push_str(value.trim_start());
                    }
                }
                if !event.data.is_empty() {
                    return event;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream")
                .expect("the stream is open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn publish(app: &TestApp, channel: &str, data: Value) {
    let service = app.token("publisher", &[Role::Service]);
    let response = app
        .send_json(
            Method::POST,
            "/api/v1/publish",
            Some(&service),
            &json!({ "channel": channel, "data": data }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).expect("JSON data")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_event_source_receives_publications_as_pub_events_with_cursors(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);

    let response = SseClient::open(&app, &format!("token={token}"), None).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut client = SseClient {
        response,
        buffer: String::new(),
    };
    publish(&app, "user:alice", json!({ "type": "balance.changed" })).await;
    let event = client.next().await;
    assert_eq!(event.event.as_deref(), Some("pub"));
    assert!(
        event.id.as_deref().is_some_and(|id| !id.is_empty()),
        "a cursor"
    );
    let body = data(&event);
    assert_eq!(
        (body["channel"].as_str(), body["offset"].as_u64()),
        (Some("user:alice"), Some(1))
    );
    assert_eq!(body["data"]["type"], "balance.changed");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_reconnecting_event_source_resumes_every_channel_from_last_event_id_and_misses_nothing(
    db: PgPool,
) {
    let app = spawn_app(db).await;
    let token = app.token("ops", &[Role::Operator]);
    let channel = "task:0b6f3c2e-8f7a-4c55-9a55-1d2a3b4c5d6e";
    let query = format!("token={token}&channel={channel}");
    let mut first = SseClient {
        response: SseClient::open(&app, &query, None).await,
        buffer: String::new(),
    };
    publish(&app, channel, json!({ "type": "task.progress", "n": 0 })).await;
    let seen = first.next().await;
    drop(first);
    for n in 1..=3 {
        publish(&app, channel, json!({ "type": "task.progress", "n": n })).await;
    }
    publish(&app, "user:ops", json!({ "type": "balance.changed" })).await;

    let response = SseClient::open(&app, &query, seen.id.as_deref()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut again = SseClient {
        response,
        buffer: String::new(),
    };
    let mut received = Vec::new();
    for _ in 0..4 {
        let body = data(&again.next().await);
        received.push((
            body["channel"].as_str().unwrap_or_default().to_owned(),
            body["offset"].as_u64().unwrap_or(0),
        ));
    }
    publish(&app, channel, json!({ "type": "task.progress", "n": 4 })).await;
    let live = data(&again.next().await);

    let task: Vec<u64> = received
        .iter()
        .filter(|(c, _)| c == channel)
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(
        task,
        vec![2, 3, 4],
        "exactly the missed task events, once, in order"
    );
    assert!(
        received.contains(&("user:ops".to_owned(), 1)),
        "the personal channel resumed too"
    );
    assert_eq!(
        (live["channel"].as_str(), live["offset"].as_u64()),
        (Some(channel), Some(5))
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn channels_whose_history_was_lost_are_named_in_an_unrecovered_event(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.history_size = 1).await;
    let token = app.token("alice", &[Role::User]);
    let mut first = SseClient {
        response: SseClient::open(&app, &format!("token={token}"), None).await,
        buffer: String::new(),
    };
    publish(&app, "user:alice", json!({ "type": "a" })).await;
    let seen = first.next().await;
    drop(first);
    for _ in 0..3 {
        publish(&app, "user:alice", json!({ "type": "b" })).await;
    }

    let response = SseClient::open(&app, &format!("token={token}"), seen.id.as_deref()).await;
    let mut again = SseClient {
        response,
        buffer: String::new(),
    };
    let event = again.next().await;

    assert_eq!(event.event.as_deref(), Some("unrecovered"));
    assert_eq!(data(&event)["channels"], json!(["user:alice"]));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn errors_before_the_stream_are_problem_json(db: PgPool) {
    let app = spawn_app(db).await;
    let bob = app.token("bob", &[Role::User]);

    assert_problem(
        SseClient::open(&app, "", None).await,
        StatusCode::UNAUTHORIZED,
        "token_missing",
    )
    .await;
    assert_problem(
        SseClient::open(&app, "token=garbage", None).await,
        StatusCode::UNAUTHORIZED,
        "token_invalid",
    )
    .await;
    let foreign = SseClient::open(&app, &format!("token={bob}&channel=user:alice"), None).await;
    assert_problem(foreign, StatusCode::FORBIDDEN, "forbidden").await;
    let unknown = SseClient::open(&app, &format!("token={bob}&channel=chat:lobby"), None).await;
    assert_problem(unknown, StatusCode::BAD_REQUEST, "invalid_query").await;
    let forged = SseClient::open(&app, &format!("token={bob}"), Some("not-a-cursor!")).await;
    assert_problem(forged, StatusCode::BAD_REQUEST, "invalid_header").await;
}
