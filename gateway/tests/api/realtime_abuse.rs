//! The realtime hub against clients that misbehave on purpose, over real sockets: readers that
//! never read (WebSocket and SSE) lose their slot and session within the write deadline, floods
//! are refused (111, 3013) and error storms cut off (3509), `send` before `connect` is 3501.

use crate::helpers::{TestApp, spawn_app_with};
use crate::realtime::Client;
use futures_util::SinkExt;
use serde_json::json;
use shared::Role;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to the node whose receive buffer is tiny, so the server's writes back up.
async fn small_window_socket(app: &TestApp) -> TcpStream {
    let address = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(address).await.expect("connect")
}

/// Publishes `count` publications of about 4 KB to `channel` through the node's broker.
async fn flood_channel(app: &TestApp, channel: &str, count: usize) {
    let filler = "x".repeat(4_000);
    for n in 0..count {
        app.state
            .realtime
            .broker
            .publish(channel, json!({ "type": "bulk", "n": n, "filler": filler }))
            .await
            .expect("publish");
    }
}

/// Waits until the node has no realtime connection and no session left; how long that took.
async fn slot_and_session_freed(app: &TestApp, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let realtime = &app.state.realtime;
        if realtime.connections() == 0 && realtime.supervisor.get_children().is_empty() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Waits for alice's session, floods her channel, and expects her slot and session to be gone
/// within the deadline although her client never reads.
async fn bury_and_expect_freed(app: &TestApp, client: &str) {
    let started = Instant::now();
    while app.state.realtime.supervisor.get_children().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "no session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    flood_channel(app, "user:alice", 3_000).await;

    let freed = slot_and_session_freed(app, Duration::from_secs(10)).await;
    assert!(
        freed.is_some(),
        "{client} that never reads still holds its slot or session"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_websocket_client_that_never_reads_loses_its_slot_and_session_within_the_deadline(
    db: PgPool,
) {
    let app = spawn_app_with(db, |settings| {
        settings.realtime.write_timeout_ms = 1_000;
        settings.realtime.broker = gateway::settings::BrokerKind::Memory;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let stream = small_window_socket(&app).await;
    let url = format!(
        "{}/connection/websocket",
        app.address.replacen("http", "ws", 1)
    );
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("handshake");
    socket
        .send(Message::Text(
            json!({ "id": 1, "connect": { "token": token } })
                .to_string()
                .into(),
        ))
        .await
        .expect("connect");
    // Never read again.
    bury_and_expect_freed(&app, "a WebSocket client").await;
    drop(socket);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_sse_client_that_never_reads_loses_its_slot_and_session_within_the_deadline(db: PgPool) {
    let app = spawn_app_with(db, |settings| {
        settings.realtime.write_timeout_ms = 1_000;
        settings.realtime.broker = gateway::settings::BrokerKind::Memory;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let mut stream = small_window_socket(&app).await;
    stream
        .write_all(
            format!(
                "GET /connection/sse?token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    bury_and_expect_freed(&app, "an SSE client").await;
    drop(stream);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_client_flooding_commands_gets_111_then_3013(db: PgPool) {
    let app = spawn_app_with(db, |settings| {
        settings.realtime.command_rate = 10;
        settings.realtime.command_burst = 20;
    })
    .await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, _) = Client::connect(&app, &token).await;

    // 200 harmless commands at once, in one frame.
    let frame = (0..200)
        .map(|n| json!({ "id": n + 10, "unsubscribe": { "channel": "task:x" } }).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    client.send_raw(&frame).await;

    let mut accepted = 0;
    let mut refused = 0;
    let code = loop {
        match client.receive().await {
            crate::realtime::Received::Message(reply) => {
                if reply["error"]["code"] == 111 {
                    assert_eq!(reply["error"]["temporary"], true);
                    refused += 1;
                } else if reply.get("unsubscribe").is_some() {
                    accepted += 1;
                }
            }
            crate::realtime::Received::Closed(code) => break code,
        }
    };
    assert_eq!(code, 3013);
    // The burst (20, the connect included) and what the rate refilled meanwhile.
    assert!((18..=22).contains(&accepted), "{accepted} accepted");
    assert!(refused > 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_client_causing_error_after_error_is_cut_off_with_3509(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.max_errors = 5).await;
    let token = app.token("alice", &[Role::User]);
    let (mut client, _) = Client::connect(&app, &token).await;

    // Denied subscribes to tasks that are not alice's: each is an error.
    for n in 0..20 {
        client
            .command(
                "subscribe",
                json!({ "channel": format!("task:0190f1a2-0000-7000-8000-{n:012}") }),
            )
            .await;
    }
    let mut denied = 0;
    let code = loop {
        match client.receive().await {
            crate::realtime::Received::Message(reply) if reply["error"]["code"] == 103 => {
                denied += 1
            }
            crate::realtime::Received::Message(_) => {}
            crate::realtime::Received::Closed(code) => break code,
        }
    };
    assert_eq!(code, 3509);
    assert!(denied <= 6, "{denied} denials before the cut-off");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn send_before_connect_is_3501(db: PgPool) {
    let app = spawn_app_with(db, |_| {}).await;
    let mut client = Client::open(&app).await;
    client
        .send_raw(&json!({ "id": 1, "send": { "data": { "x": 1 } } }).to_string())
        .await;
    assert_eq!(client.closed().await, 3501);
}

/// A client that keeps flooding after it is cut off still reads why: the node sends its Close
/// frame, then reads (and drops) what the client still sends until the client's own Close,
/// instead of dropping the connection with the client's frames unread, which resets it and can
/// take the Close frame with it (the soak's floods saw code 0, no close frame, now and then).
#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_client_flooding_past_its_cut_off_still_reads_the_close_code(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.realtime.max_errors = 5).await;
    let token = app.token("alice", &[Role::User]);
    let url = format!(
        "{}/connection/websocket",
        app.address.replacen("http", "ws", 1)
    );
    for round in 0..5 {
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("websocket");
        let (mut sink, mut stream) = futures_util::StreamExt::split(socket);
        let connect = json!({ "id": 1, "connect": { "token": token } });
        sink.send(Message::Text(connect.to_string().into()))
            .await
            .expect("connect");
        // Frames of 100 denied subscribes each, sent without pause until the node stops taking
        // them (or 2,000 frames: the node must have cut the client off long before).
        let writer = tokio::spawn(async move {
            for frame in 0..2_000 {
                let text = (0..100)
                    .map(|n| {
                        json!({
                            "id": frame * 100 + n + 2,
                            "subscribe": {
                                "channel": format!("task:0190f1a2-0000-7000-8000-{:012}", frame * 100 + n)
                            },
                        })
                        .to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        let code = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match futures_util::StreamExt::next(&mut stream).await {
                    Some(Ok(Message::Close(frame))) => {
                        break frame.map_or(0, |frame| u16::from(frame.code));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break 0,
                }
            }
        })
        .await
        .expect("closed within 10 s");
        assert_eq!(
            code, 3509,
            "round {round}: the close code reached the client"
        );
        writer.abort();
    }
}
