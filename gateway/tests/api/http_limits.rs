//! The HTTP server under abuse, over raw sockets: half-sent request heads (slowloris) and idle
//! keep-alive connections are closed after the header-read timeout, the connection cap holds new
//! connections back until one closes, and random methods cannot grow the metrics.

use crate::helpers::spawn_app_with;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn socket_address(app: &crate::helpers::TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes; returns how long that took (None: still open at `limit`).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0_u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn half_sent_request_heads_are_closed_after_the_header_read_timeout(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.http.header_read_timeout_ms = 500).await;
    let address = socket_address(&app);
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(stream);
    }
    for stream in &mut slow {
        let closed = closed_within(stream, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a half-sent head is still open after 5 s");
    }
    // The node still serves everyone else.
    let response = reqwest::get(format!("{}/healthz", app.address))
        .await
        .expect("healthz");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_idle_keep_alive_connection_is_closed(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.http.header_read_timeout_ms = 500).await;
    let mut stream = TcpStream::connect(socket_address(&app))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = vec![0_u8; 4096];
    let read = stream.read(&mut buffer).await.expect("response");
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));

    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the idle keep-alive connection is still open"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn beyond_the_connection_cap_new_connections_wait_until_one_closes(db: PgPool) {
    let app = spawn_app_with(db, |settings| {
        settings.http.max_connections = 3;
        settings.http.header_read_timeout_ms = 30_000;
    })
    .await;
    let address = socket_address(&app);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&address).await.expect("connect"));
    }
    // Let the node accept the three.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut waiting = TcpStream::connect(&address).await.expect("backlog");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = vec![0_u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "a fourth connection was served past a cap of three"
    );

    drop(held.pop());
    let read = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buffer))
        .await
        .expect("served once a slot is free")
        .expect("read");
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn random_methods_collapse_to_one_metrics_label(db: PgPool) {
    let app = spawn_app_with(db, |_| {}).await;
    let client = reqwest::Client::new();
    for n in 0..50 {
        let method = reqwest::Method::from_bytes(format!("BREW{n}X").as_bytes()).expect("method");
        let _ = client
            .request(method, format!("{}/api/v1/nowhere-{n}", app.address))
            .send()
            .await
            .expect("request");
    }
    let metrics = client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !metrics.contains("BREW"),
        "a client's method became a label"
    );
    assert!(
        !metrics.contains("nowhere-"),
        "a client's path became a label"
    );
    assert!(metrics.contains(r#"method="other""#));
}
