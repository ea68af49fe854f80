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
    // Nothing half-written: each refused key, retried, is applied exactly once. A key whose
    // claim could not be given back while the database was away answers 409 in flight until
    // the node releases it; a client retries that shortly, as the API says.
    for key in &unavailable {
        let mut status = charge(&app, &token, key).await.0;
        for _ in 0..100 {
            if status != StatusCode::CONFLICT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            status = charge(&app, &token, key).await.0;
        }
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

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");
const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/centrifuge");

/// A `gateway serve` process on `port`, killed on drop.
fn node(database_url: &str, prefix: &str, port: u16, name: &str) -> tokio::process::Child {
    tokio::process::Command::new(BINARY)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env(
            "REDIS_URL",
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        )
        .env("HUB_REDIS_KEY_PREFIX", prefix)
        .env("HUB_REALTIME__BROKER", "redis")
        .env("HUB_JWT_SECRET", crate::helpers::SECRET)
        .env("HUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("HUB_NODE_ID", name)
        .env("HUB_DATABASE__MIGRATE_ON_START", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway serve")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == StatusCode::OK
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{base} never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP load balancer in front of `backends`: each connection goes to the first that accepts.
async fn balancer(backends: Vec<std::net::SocketAddr>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_node_killed_mid_task_loses_no_event_for_the_sdk_client_that_fails_over(db: PgPool) {
    assert!(
        std::path::Path::new(SDK_DIR)
            .join("node_modules/centrifuge")
            .exists(),
        "run `npm ci` in gateway/tests/centrifuge (scripts/test does)"
    );
    crate::helpers::flat_price(&db, "render", 2).await;
    let url = crate::helpers::database_url_for(&crate::helpers::database_name(&db));
    let prefix = format!("failover-{}", uuid::Uuid::new_v4().simple());
    let (port_a, port_b) = (free_port(), free_port());
    let mut node_a = node(&url, &prefix, port_a, "node-a");
    let _node_b = node(&url, &prefix, port_b, "node-b");
    let http = reqwest::Client::new();
    let (a, b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;
    let lb = balancer(vec![
        format!("127.0.0.1:{port_a}").parse().expect("a"),
        format!("127.0.0.1:{port_b}").parse().expect("b"),
    ])
    .await;

    let keys = gateway::auth::TokenKeys::new(
        &secrecy::SecretString::from(crate::helpers::SECRET),
        Duration::from_secs(86_400),
    );
    let token = |sub: &str, role: shared::Role| {
        keys.mint(&gateway::auth::TokenRequest {
            sub: sub.into(),
            roles: vec![role],
            account_id: None,
            name: None,
            ttl_seconds: 3_600,
        })
        .expect("mint")
        .0
    };
    let (alice, finance, service) = (
        token("alice", shared::Role::User),
        token("finance-1", shared::Role::Finance),
        token("renderer", shared::Role::Service),
    );
    let me = http
        .get(format!("{b}/api/v1/sessions/me"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
    let funded = http
        .post(format!("{b}/api/v1/credits/adjust"))
        .bearer_auth(&finance)
        .header("idempotency-key", "fund")
        .json(&json!({"account_id": "alice", "amount": 10_000, "reason": "fund"}))
        .send()
        .await
        .expect("fund");
    assert_eq!(funded.status(), StatusCode::CREATED);
    let task: serde_json::Value = http
        .post(format!("{b}/api/v1/tasks"))
        .bearer_auth(&alice)
        .json(&json!({"task_type": "render", "units": 10}))
        .send()
        .await
        .expect("task")
        .json()
        .await
        .expect("task json");
    let task_id = task["id"].as_str().expect("id").to_owned();

    let mut sdk = tokio::process::Command::new("node")
        .arg("failover.mjs")
        .current_dir(SDK_DIR)
        .env(
            "HUB_WS_URL",
            format!("ws://127.0.0.1:{lb}/connection/websocket"),
        )
        .env("HUB_HTTP_URL", &b)
        .env("HUB_TOKEN", &alice)
        .env("HUB_TASK", &task_id)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        sdk.stdout.take().expect("stdout"),
    ));
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|line: &serde_json::Value| line["event"] == "subscribed")
    {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the SDK subscribes")
            .expect("read")
            .expect("the SDK runs");
        seen.push(serde_json::from_str(&line).expect("json line"));
    }

    // A service posts the task's events through node B; node A, where the SDK is connected,
    // is killed with SIGKILL half-way.
    let post = |body: serde_json::Value| {
        let (http, b, service, task_id) =
            (http.clone(), b.clone(), service.clone(), task_id.clone());
        async move {
            let response = http
                .post(format!("{b}/api/v1/tasks/{task_id}/events"))
                .bearer_auth(&service)
                .json(&body)
                .send()
                .await
                .expect("event");
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    };
    post(json!({"kind": "state", "state": "running"})).await;
    for progress in 1..=20 {
        if progress == 8 {
            node_a.kill().await.expect("SIGKILL node A");
        }
        post(json!({"kind": "progress", "progress": progress * 4})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    post(json!({"kind": "state", "state": "succeeded"})).await;
    let last_seq = 1 + 1 + 20 + 1; // created, running, 20 progress, succeeded

    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
    {
        seen.push(serde_json::from_str(&line).expect("json line"));
    }
    let status = sdk.wait().await.expect("exit");
    let report = seen
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(status.success(), "the SDK client did not finish:\n{report}");
    assert!(
        !seen.iter().any(|line| line["event"] == "duplicate"),
        "a publication was delivered twice:\n{report}"
    );
    let mut learned: Vec<i64> = seen
        .iter()
        .filter(|line| line["event"] == "task_event")
        .map(|line| line["seq"].as_i64().expect("seq"))
        .collect();
    learned.sort_unstable();
    assert_eq!(
        learned,
        (1..=last_seq).collect::<Vec<_>>(),
        "every event, none missing:\n{report}"
    );
    // Live and recovered publications arrive in order, across the failover.
    let delivered: Vec<i64> = seen
        .iter()
        .filter(|line| line["event"] == "task_event" && line["via"] == "publication")
        .map(|line| line["seq"].as_i64().expect("seq"))
        .collect();
    assert!(
        delivered.windows(2).all(|pair| pair[0] < pair[1]),
        "publications out of order:\n{report}"
    );
    assert!(
        delivered.last() == Some(&last_seq),
        "the terminal event came as a publication after the failover:\n{report}"
    );
    let connections = seen
        .iter()
        .filter(|line| line["event"] == "connected")
        .count();
    assert!(
        connections >= 2,
        "the SDK reconnected after the kill:\n{report}"
    );
}
