//! Faults the node must ride out, with processes the test starts itself: a private PostgreSQL
//! stopped (as by a crash) and started again under load; a node killed with SIGKILL while the
//! official `centrifuge` SDK follows a task through it.

use crate::helpers::{TestApp, funded_user, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A private PostgreSQL cluster on a free port, under a temporary directory; stopped and removed
/// on drop.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

fn as_pg_owner(program: &std::path::Path) -> std::process::Command {
    // initdb and postgres refuse to run as root; the tests may run as root (CI does).
    if std::env::var("USER").as_deref() == Ok("root") || is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl PrivatePostgres {
    fn init() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed under /usr/lib/postgresql (scripts/test installs it)")
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("hub-faults-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("data dir");
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let status = as_pg_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let cluster = Self { bin, dir, port };
        cluster.start();
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        as_pg_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    }

    fn start(&self) {
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let log = log.to_string_lossy();
        assert!(
            self.pg_ctl(&["-w", "-t", "60", "-l", &log, "-o", &options, "start"]),
            "PostgreSQL did not start"
        );
    }

    /// Stops at once, like a crash: no clean shutdown of the sessions.
    fn crash(&self) {
        assert!(self.pg_ctl(&["-m", "immediate", "-w", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn charge(app: &TestApp, token: &str, key: &str) -> (StatusCode, bool) {
    let response = app
        .request(Method::POST, "/api/v1/credits/charge", Some(token))
        .header("idempotency-key", key)
        .json(&json!({"amount": 1, "reason": "load"}))
        .send()
        .await
        .expect("request");
    (
        response.status(),
        response.headers().contains_key("retry-after"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_and_started_under_load_fails_fast_and_resumes_by_itself() {
    let postgres = PrivatePostgres::init();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_millis(1_000))
        .connect(&postgres.url())
        .await
        .expect("pool");
    domain::db::MIGRATOR.run(&pool).await.expect("migrate");
    let app = Arc::new(
        spawn_app_with(pool.clone(), |settings| {
            settings.redis_url = None;
            settings.realtime.broker = gateway::settings::BrokerKind::Memory;
        })
        .await,
    );
    let token = Arc::new(funded_user(&app, "alice", 1_000_000).await);

    // Load: one charge after another, each with its own key.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        async move {
            let mut answers: BTreeMap<String, (StatusCode, bool)> = BTreeMap::new();
            let mut n = 0;
            while !stop.is_cancelled() {
                let key = format!("load-{n:06}");
                let answer = charge(&app, &token, &key).await;
                answers.insert(key, answer);
                n += 1;
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    postgres.crash();
    let readiness = app.get("/readyz", None).await;
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = readiness.json().await.expect("problem");
    assert!(
        body["failing"]
            .as_array()
            .is_some_and(|failing| failing.contains(&json!("postgres"))),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.start();

    // Service resumes by itself: no restart of the node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut probe = 0;
    loop {
        probe += 1;
        let (status, _) = charge(&app, &token, &format!("probe-{probe}")).await;
        if status == StatusCode::CREATED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resumed: still {status}; pool size {} idle {}",
            pool.size(),
            pool.num_idle()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let answers = load.await.expect("join");

    let unavailable: Vec<&String> = answers
        .iter()
        .filter(|(_, (status, _))| *status == StatusCode::SERVICE_UNAVAILABLE)
        .map(|(key, _)| key)
        .collect();
    assert!(!unavailable.is_empty(), "the outage was seen");
    for (key, (status, retry_after)) in &answers {
        assert!(
            matches!(
                *status,
                StatusCode::CREATED | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{key}: {status} (only 201, or 503 while the database is away)"
        );
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry_after, "{key}: a 503 says when to retry");
        }
    }
    // Nothing half-written: each refused key, retried, is applied exactly once.
    for key in &unavailable {
        let (status, _) = charge(&app, &token, key).await;
        assert_eq!(status, StatusCode::CREATED, "{key} retried");
    }
    let keys = answers.len() as i64;
    let charged: i64 = sqlx::query_scalar(
        "select count(*) from credit_ledger where kind = 'charge' and reason = 'load'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    let probes: i64 = sqlx::query_scalar(
        "select count(*) from idempotency_keys where key like 'probe-%' and response_status = 201",
    )
    .fetch_one(&pool)
    .await
    .expect("probes");
    assert_eq!(
        charged,
        keys + probes,
        "one charge per key, none lost, none twice"
    );
    let broken: i64 = sqlx::query_scalar(
        "select count(*) from credit_accounts a where a.available <> (select coalesce(sum(amount), 0) \
           from credit_ledger l where l.account_id = a.id)",
    )
    .fetch_one(&pool)
    .await
    .expect("invariant");
    assert_eq!(broken, 0);
}
