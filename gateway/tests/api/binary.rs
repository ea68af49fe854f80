//! The real `gateway` binary: `migrate` (twice), `token`, `serve` on port 0, SIGTERM.

use crate::helpers::{SECRET, database_name, database_url_for};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");

fn gateway(database_url: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("HUB_JWT_SECRET", SECRET)
        .env("HUB_LISTEN", "127.0.0.1:0")
        .env("HUB_NODE_ID", "binary-test")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    command
}

async fn run(command: &mut Command) -> String {
    let output = command.output().await.expect("run gateway");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[sqlx::test(migrations = false)]
async fn the_binary_migrates_mints_tokens_serves_and_stops_on_sigterm(db: PgPool) {
    let url = database_url_for(&database_name(&db));
    run(gateway(&url).arg("migrate")).await;
    run(gateway(&url).arg("migrate")).await;
    assert!(
        domain::db::pending_migrations(&db)
            .await
            .expect("read")
            .is_empty()
    );
    let token = run(gateway(&url).args([
        "token", "--sub", "bin-user", "--role", "creator", "--ttl", "300",
    ]))
    .await
    .trim()
    .to_owned();

    let mut child = gateway(&url)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let address = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                return event["address"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the server logs `listening`")
    .expect("with its address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let base = format!("http://{address}");
    let client = reqwest::Client::new();

    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
    let me: Value = client
        .get(format!("{base}/api/v1/sessions/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["user_id"], "bin-user");
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let refused = client
        .get(format!("{base}/api/v1/sessions/me"))
        .bearer_auth(&tampered)
        .send()
        .await
        .expect("tampered");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["code"], "token_invalid");

    let pid = child.id().expect("pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}
