//! The log output, read as an auditor would: the real `gateway` binaries (a node and the WeChat
//! sandbox), a scenario that touches tokens, secrets, a WeChat openid, a phone number and a
//! client IP, and the node's whole log captured. Nothing sensitive may appear unmasked, and the
//! masked forms must appear (so the values did reach the log and the check can fail).

use crate::helpers::{SECRET, database_name, database_url_for};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");

fn hub_env(dir: &std::path::Path) -> HashMap<String, String> {
    std::fs::read_to_string(dir.join("hub.env"))
        .expect("hub.env")
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.trim_matches('\'').to_owned()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_nodes_log_shows_no_token_secret_openid_phone_or_client_ip_unmasked(db: PgPool) {
    let dir = std::env::temp_dir().join(format!("hub-log-audit-{}", rand::random::<u64>()));
    let (sandbox_port, hub_port) = (free_port(), free_port());
    let (sandbox, hub) = (
        format!("127.0.0.1:{sandbox_port}"),
        format!("127.0.0.1:{hub_port}"),
    );
    let mut sandbox_process = Command::new(BINARY)
        .args([
            "sandbox",
            "--listen",
            &sandbox,
            "--hub",
            &format!("http://{hub}"),
            "--dir",
        ])
        .arg(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sandbox");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let sandbox_base = format!("http://{sandbox}");
    for _ in 0..300 {
        if http
            .get(format!("{sandbox_base}/sandbox/deliveries"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env = hub_env(&dir);
    let mut node = Command::new(BINARY);
    node.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url_for(&database_name(&db)))
        .env("HUB_JWT_SECRET", SECRET)
        .env("HUB_LISTEN", &hub)
        .env("HUB_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]")
        .env(
            "RUST_LOG",
            "debug,sqlx=warn,hyper=info,hyper_util=info,h2=info,reqwest=info,tower_http=debug",
        )
        .envs(&env)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = node.spawn().expect("serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let base = format!("http://{hub}");
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            first.clear();
            stdout.read_line(&mut first).await.expect("log");
            if first.contains("listening") {
                return;
            }
        }
    })
    .await
    .expect("the node starts");
    let collected = tokio::spawn(async move {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest).await;
        rest
    });

    // The scenario.
    let token = {
        let output = std::process::Command::new(BINARY)
            .args(["token", "--sub", "alice", "--role", "user"])
            .env("HUB_JWT_SECRET", SECRET)
            .output()
            .expect("token");
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let phone = "13812345678";
    let client_ip = "203.0.113.77";
    let me = http
        .get(format!("{base}/api/v1/sessions/me"))
        .bearer_auth(&token)
        .header("x-request-id", phone)
        .header("x-forwarded-for", client_ip)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
    let bad = http
        .get(format!("{base}/api/v1/sessions/me"))
        .header("authorization", format!("Bearer {token}x"))
        .header("cookie", "session=supersecretcookievalue")
        .send()
        .await
        .expect("bad token");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    // A WeChat login: the node logs the login with the openid.
    let openid = "oAuditOpenId0000000000000001";
    let qr = http
        .get(format!("{base}/api/v1/auth/wechat/qr"))
        .send()
        .await
        .expect("qr");
    let cookie = qr.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let qr: Value = qr.json().await.expect("qr");
    let approved = http
        .get(format!("{sandbox_base}/sandbox/login/approve"))
        .query(&[
            (
                "redirect_uri",
                format!("{base}/api/v1/auth/wechat/callback").as_str(),
            ),
            ("state", qr["state"].as_str().expect("state")),
            ("openid", openid),
            ("nickname", "Auditor"),
        ])
        .send()
        .await
        .expect("approve");
    let location = approved.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let login = http
        .get(&location)
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .send()
        .await
        .expect("callback");
    assert_eq!(login.status(), StatusCode::OK);
    let issued: Value = login.json().await.expect("login");
    let issued_token = issued["token"].as_str().expect("token").to_owned();

    // Stop the node and read everything it logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let log = format!("{first}{}", collected.await.expect("log"));
    let _ = sandbox_process.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    for (what, raw) in [
        ("the caller's token", token.as_str()),
        ("the issued token", issued_token.as_str()),
        ("a phone number", phone),
        ("a client IP", client_ip),
        ("an openid", openid),
        ("the APIv3 key", env["HUB_WECHAT__APIV3_KEY"].as_str()),
        ("the login secret", env["HUB_WECHAT__LOGIN_SECRET"].as_str()),
        ("the JWT secret", SECRET),
        ("a cookie", "supersecretcookievalue"),
    ] {
        assert!(!log.contains(raw), "{what} appears unmasked in the log");
    }
    for masked in ["138****5678", "203.0.113.0/24", "oAud****"] {
        assert!(
            log.contains(masked),
            "`{masked}` never reached the log:\n{log}"
        );
    }
}
