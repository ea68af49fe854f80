//! Several nodes linked by Redis, and a Redis that goes away and comes back: real nodes, a real
//! Redis (the shared one, or a private `redis-server` this test starts and restarts).

use crate::helpers::{
    TestApp, database_name, database_url_for, flat_price, funded_user, spawn_app, spawn_app_with,
};
use crate::realtime::Client;
use gateway::settings::BrokerKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::time::Duration;

/// Polls `check` every 50 ms until it holds; panics after 15 s (a bound, not a timing claim).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(app: &TestApp, channel: &str, data: Value) -> reqwest::Response {
    let service = app.token("publisher", &[Role::Service]);
    app.send_json(
        Method::POST,
        "/api/v1/publish",
        Some(&service),
        &json!({ "channel": channel, "data": data }),
    )
    .await
}

/// Nodes subscribed to `channel`'s topic in the Redis at `url`.
async fn topic_subscribers(url: &str, prefix: &str, channel: &str) -> i64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{prefix}:pub:{channel}"))
        .query_async(&mut connection)
        .await
        .expect("numsub");
    counts.first().map_or(0, |(_, count)| *count)
}

/// Connects asking to recover the personal channel from (`offset`, `epoch`), as the SDK does
/// when it reconnects; returns the client and the channel's part of the connect reply.
async fn reconnect_recovering(
    app: &TestApp,
    token: &str,
    offset: u64,
    epoch: &str,
) -> (Client, Value) {
    let mut client = Client::open(app).await;
    let id = client
        .command(
            "connect",
            json!({ "token": token, "subs": { "user:alice": { "recover": true, "offset": offset, "epoch": epoch } } }),
        )
        .await;
    let reply = client.reply(id).await;
    let personal = reply["connect"]["subs"]["user:alice"].clone();
    (client, personal)
}

async fn second_node(db: &PgPool) -> TestApp {
    let pool = PgPool::connect(&database_url_for(&database_name(db)))
        .await
        .expect("second pool");
    spawn_app(pool).await
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn events_published_through_one_node_reach_subscribers_on_another(db: PgPool) {
    let node_a = spawn_app(db.clone()).await;
    let node_b = second_node(&db).await;
    let url = "redis://127.0.0.1:6379";
    let prefix = node_a.state.settings.redis_key_prefix.clone();
    flat_price(&node_a.db, "render", 10).await;
    let token = funded_user(&node_a, "alice", 1_000).await;
    let task: Value = node_b
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({ "task_type": "render", "units": 1 }),
        )
        .await
        .json()
        .await
        .expect("task");
    let task_id = task["id"].as_str().expect("id").to_owned();
    let (mut client, _) = Client::connect(&node_a, &token).await;
    let id = client
        .command("subscribe", json!({ "channel": format!("task:{task_id}") }))
        .await;
    let subscribed = client.reply(id).await;
    assert!(subscribed.get("error").is_none(), "{subscribed}");

    let published = publish(&node_b, "user:alice", json!({ "type": "note", "n": 1 })).await;
    assert_eq!(published.status(), StatusCode::OK);
    let push = client.next().await;
    assert_eq!(push["push"]["channel"], "user:alice");
    assert_eq!(push["push"]["pub"]["data"]["n"], 1);
    let service = node_b.token("renderer", &[Role::Service]);
    let event = node_b
        .send_json(
            Method::POST,
            &format!("/api/v1/tasks/{task_id}/events"),
            Some(&service),
            &json!({ "kind": "state", "state": "running" }),
        )
        .await;
    assert_eq!(event.status(), StatusCode::CREATED);
    let mut task_pushes = Vec::new();
    while task_pushes.len() < 2 {
        task_pushes.push(client.next().await["push"].clone());
    }
    let channels: Vec<&str> = task_pushes
        .iter()
        .map(|push| push["channel"].as_str().expect("channel"))
        .collect();
    assert!(channels.contains(&format!("task:{task_id}").as_str()));
    assert!(channels.contains(&"user:alice"));
    assert!(
        task_pushes.iter().all(
            |push| push["pub"]["data"]["seq"] == 2 && push["pub"]["data"]["state"] == "running"
        )
    );

    assert_eq!(
        topic_subscribers(url, &prefix, "user:alice").await,
        1,
        "only node A, which has the subscriber, listens"
    );
    assert_eq!(topic_subscribers(url, &prefix, "user:nobody").await, 0);
    drop(client);
    eventually(
        "node A leaves the topics once its last subscriber left",
        || async {
            topic_subscribers(url, &prefix, "user:alice").await == 0
                && topic_subscribers(url, &prefix, &format!("task:{task_id}")).await == 0
        },
    )
    .await;
}

/// A private `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    process: tokio::process::Child,
}

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        let process = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        eventually("the private Redis answers", || async {
            match redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
            {
                Ok(mut connection) => redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
        Self { process }
    }

    async fn stop(mut self) {
        self.process.kill().await.expect("kill redis");
    }

    /// Sends the process `signal` (`STOP` hangs it without closing its sockets, `CONT` resumes).
    async fn signal(&self, signal: &str) {
        let pid = self.process.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .await
            .expect("kill");
        assert!(status.success());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

async fn ready(app: &TestApp) -> (StatusCode, Value) {
    let response = app.get("/readyz", None).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn after_a_redis_restart_delivery_resumes_in_a_new_epoch_and_readyz_said_so_meanwhile(
    db: PgPool,
) {
    let port = free_port();
    let redis = PrivateRedis::start(port).await;
    let app = spawn_app_with(db, |settings| {
        settings.redis_url = Some(format!("redis://127.0.0.1:{port}").into());
        settings.realtime.broker = BrokerKind::Redis;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, connected) = Client::connect(&app, &token).await;
    let first_epoch = connected["connect"]["subs"]["user:alice"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    assert_eq!(
        publish(&app, "user:alice", json!({ "type": "note", "n": 1 }))
            .await
            .status(),
        StatusCode::OK
    );
    let before = client.next().await;
    assert_eq!(before["push"]["pub"]["offset"], 1);

    redis.stop().await;
    eventually("/readyz turns 503 naming the broker", || async {
        let (status, body) = ready(&app).await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["failing"]
                .as_array()
                .is_some_and(|failing| failing.contains(&json!("broker")))
    })
    .await;
    let refused = publish(&app, "user:alice", json!({ "type": "note", "n": 2 })).await;
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a publish that cannot reach the other nodes is refused, not lost"
    );
    let _redis = PrivateRedis::start(port).await;
    eventually("/readyz is 200 again", || async {
        ready(&app).await.0 == StatusCode::OK
    })
    .await;
    let code = client.closed().await;
    let (mut again, personal) = reconnect_recovering(&app, &token, 1, &first_epoch).await;
    assert_eq!(
        publish(&app, "user:alice", json!({ "type": "note", "n": 3 }))
            .await
            .status(),
        StatusCode::OK
    );
    let after = again.next().await;

    assert_eq!(code, 3010, "told to reconnect and recover");
    assert_eq!(personal["was_recovering"], true);
    assert_ne!(
        personal["recovered"], true,
        "never told it recovered across lost history"
    );
    assert_ne!(personal["epoch"], json!(first_epoch), "the epoch changed");
    assert_eq!(after["push"]["pub"]["data"]["n"], 3);
    assert_eq!(after["push"]["pub"]["offset"], 1, "a new stream");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_in_process_broker_serves_a_node_without_redis(db: PgPool) {
    let app = spawn_app_with(db, |settings| {
        settings.realtime.broker = BrokerKind::Memory;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, connected) = Client::connect(&app, &token).await;
    let epoch = connected["connect"]["subs"]["user:alice"]["epoch"].clone();
    publish(&app, "user:alice", json!({ "type": "note", "n": 1 })).await;
    assert_eq!(client.next().await["push"]["pub"]["offset"], 1);
    drop(client);
    publish(&app, "user:alice", json!({ "type": "note", "n": 2 })).await;

    let epoch = epoch.as_str().expect("epoch");
    let (_again, personal) = reconnect_recovering(&app, &token, 1, epoch).await;

    assert_eq!(ready(&app).await.1["checks"].get("broker"), None);
    assert_eq!(personal["recovered"], true);
    assert_eq!(personal["publications"][0]["data"]["n"], 2);
    assert_eq!(personal["publications"][0]["offset"], 2);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_redis_link_stays_up_across_its_keepalive_pings(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, _) = Client::connect(&app, &token).await;

    // Longer than the link's ping interval (5 s): a ping answered in subscribed mode must not
    // count as a dead link (that would resync every subscriber with 3010).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        publish(&app, "user:alice", json!({ "type": "note", "n": 1 }))
            .await
            .status(),
        StatusCode::OK
    );

    assert_eq!(client.next().await["push"]["pub"]["data"]["n"], 1);
    assert_eq!(ready(&app).await.0, StatusCode::OK);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_hung_redis_is_noticed_publishes_are_refused_and_delivery_resumes_after_it(db: PgPool) {
    let port = free_port();
    let redis = PrivateRedis::start(port).await;
    let app = spawn_app_with(db, |settings| {
        settings.redis_url = Some(format!("redis://127.0.0.1:{port}").into());
        settings.realtime.broker = BrokerKind::Redis;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, connected) = Client::connect(&app, &token).await;
    let epoch = connected["connect"]["subs"]["user:alice"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    publish(&app, "user:alice", json!({ "type": "note", "n": 1 })).await;
    assert_eq!(client.next().await["push"]["pub"]["offset"], 1);

    // A hung Redis: its sockets stay open, it answers nothing.
    redis.signal("STOP").await;
    eventually("/readyz turns 503 naming the broker", || async {
        let (status, body) = ready(&app).await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["failing"]
                .as_array()
                .is_some_and(|failing| failing.contains(&json!("broker")))
    })
    .await;
    let refused = publish(&app, "user:alice", json!({ "type": "note", "n": 2 })).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));

    redis.signal("CONT").await;
    eventually("/readyz is 200 again", || async {
        ready(&app).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        publish(&app, "user:alice", json!({ "type": "note", "n": 3 }))
            .await
            .status(),
        StatusCode::OK
    );
    // Redis kept its streams through the hang, so the subscriber either just goes on (nothing was
    // missed: n = 2 was refused, not lost) or, if the node could not tell, is told to reconnect
    // and recovers from where it was. Either way it gets n = 3 once, right after n = 1.
    let after = loop {
        match client.receive().await {
            crate::realtime::Received::Message(value) if value == json!({}) => {
                client.send_raw("{}").await;
            }
            crate::realtime::Received::Message(value) => break value["push"]["pub"].clone(),
            crate::realtime::Received::Closed(code) => {
                assert_eq!(code, 3010, "told to reconnect and recover");
                let (_again, personal) = reconnect_recovering(&app, &token, 1, &epoch).await;
                assert_eq!(personal["recovered"], true, "{personal}");
                break personal["publications"][0].clone();
            }
        }
    };
    assert_eq!(after["data"]["n"], 3, "delivery resumed: {after}");
    assert_eq!(
        after["offset"], 2,
        "the same stream, nothing lost or repeated"
    );
    drop(redis);
}
