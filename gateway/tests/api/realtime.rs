//! The WebSocket transport speaking Centrifugo protocol v2 (JSON), with a real client socket.

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol client over a real socket.
pub(crate) struct Client {
    socket: Socket,
    pending: VecDeque<Value>,
    next_id: u32,
}

pub(crate) enum Received {
    Message(Value),
    Closed(u16),
}

impl Client {
    pub(crate) async fn open(app: &TestApp) -> Self {
        let url = format!(
            "{}/connection/websocket",
            app.address.replacen("http", "ws", 1)
        );
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket");
        Self {
            socket,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    pub(crate) async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a command with the next id; returns the id.
    pub(crate) async fn command(&mut self, kind: &str, body: Value) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.send_raw(&json!({ "id": id, kind: body }).to_string())
            .await;
        id
    }

    pub(crate) async fn receive(&mut self) -> Received {
        loop {
            if let Some(value) = self.pending.pop_front() {
                return Received::Message(value);
            }
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame within 10 s");
            match message {
                Some(Ok(Message::Text(text))) => {
                    for line in text.split('\n').filter(|line| !line.trim().is_empty()) {
                        self.pending
                            .push_back(serde_json::from_str(line).expect("JSON line"));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)).unwrap_or(0));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Received::Closed(0),
            }
        }
    }

    /// The next message that is not a ping (`{}`), answering pings on the way.
    pub(crate) async fn next(&mut self) -> Value {
        loop {
            match self.receive().await {
                Received::Message(value) if value == json!({}) => self.send_raw("{}").await,
                Received::Message(value) => return value,
                Received::Closed(code) => panic!("closed with {code} while waiting for a message"),
            }
        }
    }

    /// The reply to command `id`.
    pub(crate) async fn reply(&mut self, id: u32) -> Value {
        loop {
            let value = self.next().await;
            if value["id"] == id {
                return value;
            }
        }
    }

    /// Waits for the close code, skipping messages.
    pub(crate) async fn closed(&mut self) -> u16 {
        loop {
            if let Received::Closed(code) = self.receive().await {
                return code;
            }
        }
    }

    pub(crate) async fn connect(app: &TestApp, token: &str) -> (Self, Value) {
        let mut client = Self::open(app).await;
        let id = client
            .command("connect", json!({ "token": token, "name": "test" }))
            .await;
        let reply = client.reply(id).await;
        (client, reply)
    }
}

async fn publish(app: &TestApp, channel: &str, data: Value) -> Value {
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
    response.json().await.expect("published")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_client_connects_gets_its_personal_channel_and_receives_its_events(db: PgPool) {
    let app = spawn_app(db).await;
    let (mut client, reply) = Client::connect(&app, &app.token("alice", &[Role::User])).await;

    let result = &reply["connect"];
    assert_eq!(result["pong"], true);
    assert!(result["ping"].as_u64().is_some_and(|ping| ping > 0));
    assert_eq!(result["expires"], true);
    assert_eq!(result["node"], "test-node");
    assert_eq!(result["subs"]["user:alice"]["recoverable"], true);
    let published = publish(
        &app,
        "user:alice",
        json!({ "type": "balance.changed", "available": 5 }),
    )
    .await;
    let push = client.next().await;

    assert_eq!(push["push"]["channel"], "user:alice");
    assert_eq!(push["push"]["pub"]["offset"], published["offset"]);
    assert_eq!(push["push"]["pub"]["data"]["type"], "balance.changed");
    assert!(
        push["push"]["pub"]["data"]["ts"].as_i64().is_some(),
        "ts added by the hub"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn subscriptions_follow_the_channel_permissions(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);
    app.get("/api/v1/sessions/me", Some(&token)).await;
    let task: uuid::Uuid = sqlx::query_scalar(
        "insert into tasks (id, owner_id, account_id, task_type, units, estimated_credits) \
         values (gen_random_uuid(), 'alice', 'alice', 'render', 1, 1) returning id",
    )
    .fetch_one(&app.db)
    .await
    .expect("task");
    let (mut alice, _) = Client::connect(&app, &token).await;
    let (mut bob, _) = Client::connect(&app, &app.token("bob", &[Role::User])).await;
    let (mut operator, _) = Client::connect(&app, &app.token("olga", &[Role::Operator])).await;

    let own = alice
        .command(
            "subscribe",
            json!({ "channel": format!("task:{task}"), "flag": 1 }),
        )
        .await;
    assert_eq!(alice.reply(own).await["subscribe"]["recoverable"], true);
    let again = alice
        .command("subscribe", json!({ "channel": format!("task:{task}") }))
        .await;
    assert_eq!(alice.reply(again).await["error"]["code"], 105);
    let foreign_task = bob
        .command("subscribe", json!({ "channel": format!("task:{task}") }))
        .await;
    assert_eq!(bob.reply(foreign_task).await["error"]["code"], 103);
    let foreign_user = bob
        .command("subscribe", json!({ "channel": "user:alice" }))
        .await;
    assert_eq!(bob.reply(foreign_user).await["error"]["code"], 103);
    let unknown = bob
        .command("subscribe", json!({ "channel": "chat:lobby" }))
        .await;
    assert_eq!(bob.reply(unknown).await["error"]["code"], 102);
    let any = operator
        .command("subscribe", json!({ "channel": format!("task:{task}") }))
        .await;
    assert!(operator.reply(any).await["subscribe"].is_object());
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn protocol_errors_get_their_codes_and_the_server_keeps_serving(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, _) = Client::connect(&app, &token).await;

    let publish_attempt = client
        .command("publish", json!({ "channel": "user:alice", "data": {} }))
        .await;
    assert_eq!(client.reply(publish_attempt).await["error"]["code"], 103);
    let ping = client.command("ping", json!({})).await;
    assert_eq!(client.reply(ping).await["error"]["code"], 108);
    client.send_raw(r#"{"id":99,"teleport":{}}"#).await;
    assert_eq!(client.reply(99).await["error"]["code"], 104);

    let mut early = Client::open(&app).await;
    early
        .command("subscribe", json!({ "channel": "user:alice" }))
        .await;
    assert_eq!(early.closed().await, 3501, "a command before connect");
    let mut garbled = Client::open(&app).await;
    garbled.send_raw("{not json").await;
    assert_eq!(garbled.closed().await, 3501, "a malformed frame");
    let mut forger = Client::open(&app).await;
    forger
        .command("connect", json!({ "token": "not.a.token" }))
        .await;
    assert_eq!(forger.closed().await, 3500, "an invalid token");

    publish(&app, "user:alice", json!({ "type": "still.alive" })).await;
    assert_eq!(
        client.next().await["push"]["pub"]["data"]["type"],
        "still.alive",
        "the first client is unaffected"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_expired_token_gets_error_109_so_the_client_can_refresh(db: PgPool) {
    let app = spawn_app(db).await;
    let now = chrono::Utc::now().timestamp();
    let expired = app.sign(&gateway::auth::Claims {
        sub: "alice".into(),
        roles: vec!["user".into()],
        exp: now - 5,
        iat: now - 60,
        nbf: None,
        account_id: None,
        name: None,
    });

    let (mut client, reply) = Client::connect(&app, &expired).await;
    assert_eq!(reply["error"]["code"], 109);

    let id = client
        .command(
            "connect",
            json!({ "token": app.token("alice", &[Role::User]) }),
        )
        .await;
    assert!(
        client.reply(id).await["connect"].is_object(),
        "a fresh token connects on the same socket"
    );
    let refresh = client
        .command(
            "refresh",
            json!({ "token": app.token("alice", &[Role::User]) }),
        )
        .await;
    assert_eq!(client.reply(refresh).await["refresh"]["expires"], true);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_session_whose_token_expires_without_refresh_is_closed_with_3005(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.expiry_grace_ms = 0).await;
    let now = chrono::Utc::now().timestamp();
    let short = app.sign(&gateway::auth::Claims {
        sub: "alice".into(),
        roles: vec!["user".into()],
        exp: now + 2,
        iat: now,
        nbf: None,
        account_id: None,
        name: None,
    });

    let (mut client, reply) = Client::connect(&app, &short).await;

    assert_eq!(reply["connect"]["expires"], true);
    assert!(reply["connect"]["ttl"].as_u64().is_some_and(|ttl| ttl <= 2));
    assert_eq!(client.closed().await, 3005);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_returning_client_recovers_each_missed_event_exactly_once(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);
    publish(&app, "user:alice", json!({ "type": "before" })).await;
    let (first, reply) = Client::connect(&app, &token).await;
    let position = reply["connect"]["subs"]["user:alice"].clone();
    drop(first);
    for n in 0..3 {
        publish(&app, "user:alice", json!({ "type": "missed", "n": n })).await;
    }

    let mut client = Client::open(&app).await;
    let subs = json!({ "user:alice": { "recover": true, "offset": position["offset"], "epoch": position["epoch"] } });
    let id = client
        .command("connect", json!({ "token": token, "subs": subs }))
        .await;
    let sub = client.reply(id).await["connect"]["subs"]["user:alice"].clone();

    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["was_recovering"], true);
    let missed: Vec<Value> = sub["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"]["n"].clone())
        .collect();
    assert_eq!(missed, vec![json!(0), json!(1), json!(2)]);
    publish(&app, "user:alice", json!({ "type": "live" })).await;
    assert_eq!(
        client.next().await["push"]["pub"]["data"]["type"],
        "live",
        "nothing replayed twice"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn past_the_history_limit_the_client_is_told_it_did_not_recover(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.history_size = 2).await;
    let token = app.token("alice", &[Role::User]);
    let (first, reply) = Client::connect(&app, &token).await;
    let position = reply["connect"]["subs"]["user:alice"].clone();
    drop(first);
    for n in 0..5 {
        publish(&app, "user:alice", json!({ "type": "missed", "n": n })).await;
    }

    let mut client = Client::open(&app).await;
    let offset = position["offset"].as_u64().unwrap_or(0); // 0 is omitted on the wire
    let subs =
        json!({ "user:alice": { "recover": true, "offset": offset, "epoch": position["epoch"] } });
    let id = client
        .command("connect", json!({ "token": token, "subs": subs }))
        .await;
    let sub = client.reply(id).await["connect"]["subs"]["user:alice"].clone();

    assert_eq!(
        sub["recovered"],
        Value::Null,
        "recovered: false is omitted on the wire"
    );
    assert!(sub["publications"].is_null());
    assert_eq!(
        sub["offset"], 5,
        "the client is told the top to continue from"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_client_that_stops_answering_pings_is_closed_with_3012(db: PgPool) {
    let app = spawn_app_with(db, |settings| {
        settings.realtime.ping_interval_ms = 200;
        settings.realtime.pong_timeout_ms = 200;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let (mut silent, _) = Client::connect(&app, &token).await;
    let (mut polite, _) = Client::connect(&app, &token).await;
    // The polite client reads (and so answers every ping) in the background.
    let (pushes, mut inbox) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let value = polite.next().await;
            if pushes.send(value).is_err() {
                return;
            }
        }
    });

    assert_eq!(silent.closed().await, 3012);
    tokio::time::sleep(Duration::from_millis(600)).await;
    publish(&app, "user:alice", json!({ "type": "still.here" })).await;
    let push = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("a push")
        .expect("open");
    assert_eq!(
        push["push"]["pub"]["data"]["type"], "still.here",
        "answering pings keeps a client"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_client_that_stops_reading_is_closed_with_3008_and_its_neighbour_keeps_receiving(
    db: PgPool,
) {
    let app = spawn_app_with(db, |settings| settings.realtime.outbound_queue = 4).await;
    let token = app.token("alice", &[Role::User]);
    let (mut stalled, _) = Client::connect(&app, &token).await;
    let (mut reader, _) = Client::connect(&app, &token).await;
    let filler = "x".repeat(60_000);

    let mut received = 0;
    for n in 0..200 {
        publish(
            &app,
            "user:alice",
            json!({ "type": "bulk", "n": n, "filler": filler }),
        )
        .await;
        if reader.next().await["push"]["pub"]["data"]["n"] == n {
            received += 1;
        }
    }

    assert_eq!(
        received, 200,
        "the reading neighbour got everything, in order"
    );
    assert_eq!(stalled.closed().await, 3008);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn on_shutdown_every_session_is_closed_with_3001(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.drain_spread_ms = 200).await;
    let token = app.token("alice", &[Role::User]);
    let (mut first, _) = Client::connect(&app, &token).await;
    let (mut second, _) = Client::connect(&app, &token).await;

    app.shutdown();

    assert_eq!(first.closed().await, 3001);
    assert_eq!(second.closed().await, 3001);
}
