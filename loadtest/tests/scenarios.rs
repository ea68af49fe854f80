//! Every scenario of the `loadtest` binary at a small scale against real nodes (the gateway's own
//! router on real sockets, real PostgreSQL and Redis), asserting what the harness reports: counts
//! add up, nothing is lost or duplicated on a healthy run, the report and chart files are written
//! and parse, and results reach a real Prometheus Pushgateway. No wall-clock assertion.

use gateway::settings::Settings;
use gateway::state::AppState;
use serde_json::Value;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "loadtest-scenario-secret-0123456789-abcdef";

/// A node serving the gateway on a free port, stopped on drop.
struct Node {
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn node(db: &PgPool, id: &str) -> Node {
    node_with(db, id, |_| {}).await
}

async fn node_with(db: &PgPool, id: &str, configure: impl FnOnce(&mut Settings)) -> Node {
    gateway::http_metrics::install().expect("metrics recorder");
    let name: String = sqlx::query_scalar("select current_database()::text || '-' || oid::text from pg_database where datname = current_database()")
        .fetch_one(db)
        .await
        .expect("database name");
    let pool = PgPool::connect(&database_url(db).await)
        .await
        .expect("pool");
    let settings = Settings {
        jwt_secret: Some(SECRET.into()),
        redis_url: Some(
            std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
                .into(),
        ),
        redis_key_prefix: format!("lt-{name}"),
        node_id: id.into(),
        ..Settings::default()
    };
    let mut settings = settings;
    // Exact outcome counts on a busy CI machine: no shedding, no adaptive limit (they have their
    // own gateway tests).
    settings.ledger.max_queue_ms = 10_000;
    settings.ledger.latency_target_ms = 0;
    configure(&mut settings);
    let state = AppState::with_pool(settings, pool).await.expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::serve(state, listener, shutdown.clone()));
    Node { url, shutdown }
}

/// The URL of the test's database (a second pool for a second node).
async fn database_url(db: &PgPool) -> String {
    let name: String = sqlx::query_scalar("select current_database()::text")
        .fetch_one(db)
        .await
        .expect("name");
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    format!("{server}/{name}")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Runs `loadtest ARGS --report FILE` and returns the parsed report.
async fn run(args: &[&str], report: &Path) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--report")
        .arg(report)
        .env("HUB_JWT_SECRET", SECRET)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the run ends")
        .expect("loadtest runs");
    assert!(
        output.status.success(),
        "loadtest {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(report).expect("the report is written");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn number(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {report}"))
}

/// Asserts a healthy run: every owed delivery made once, no join errors.
fn assert_no_loss(report: &Value) {
    let owed = number(report, "/published/expected_deliveries");
    assert!(owed > 0, "something was published: {report}");
    assert_eq!(number(report, "/published/failed"), 0);
    assert_eq!(number(report, "/observed/delivered"), owed);
    assert_eq!(number(report, "/lost"), 0);
    assert_eq!(number(report, "/observed/duplicated"), 0);
    assert_eq!(number(report, "/observed/connect_errors"), 0);
    assert_eq!(
        number(report, "/observed/latency/count"),
        owed - number(report, "/observed/recovered"),
        "every live delivery has a latency"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn connections_over_websocket_and_sse_all_join_and_memory_is_measured(db: PgPool) {
    let node = node(&db, "a").await;
    let (report, chart) = (scratch("connections.json"), scratch("connections.svg"));

    let ws = run(
        &[
            "connections",
            "--target",
            &node.url,
            "--sessions",
            "50",
            "--ramp-rate",
            "500",
            "--hold",
            "1",
            "--sources",
            "4",
            "--chart",
            chart.to_str().expect("path"),
        ],
        &report,
    )
    .await;
    let sse = run(
        &[
            "connections",
            "--transport",
            "sse",
            "--target",
            &node.url,
            "--sessions",
            "20",
            "--hold",
            "1",
            "--prefix",
            "sse",
        ],
        &scratch("connections-sse.json"),
    )
    .await;

    for (report, sessions) in [(&ws, 50), (&sse, 20)] {
        assert_eq!(number(report, "/sessions_connected"), sessions, "{report}");
        assert_eq!(number(report, "/observed/joins"), sessions);
        assert_eq!(number(report, "/observed/connect_errors"), 0);
        assert!(
            report["memory"]["rss_after"]
                .as_u64()
                .is_some_and(|rss| rss > 0)
        );
    }
    assert_eq!(ws["transport"], "ws");
    assert_eq!(sse["transport"], "sse");
    let svg = std::fs::read_to_string(&chart).expect("the chart is written");
    assert!(svg.starts_with("<svg") && svg.contains("live sessions"));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn push_across_two_nodes_delivers_every_publication_once(db: PgPool) {
    let (a, b) = (node(&db, "a").await, node(&db, "b").await);

    let report = run(
        &[
            "push",
            "--target",
            &a.url,
            "--publish-target",
            &b.url,
            "--sessions",
            "40",
            "--rate",
            "100",
            "--duration",
            "2",
            "--channels-per-session",
            "1",
        ],
        &scratch("push.json"),
    )
    .await;

    assert_eq!(number(&report, "/published/accepted"), 200);
    // Personal channels have one subscriber; the shared task channel has all 40.
    let shared = 200 / 41 + u64::from(200 % 41 > 40);
    assert_eq!(
        number(&report, "/published/expected_deliveries"),
        (200 - shared) + shared * 40
    );
    assert_no_loss(&report);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn fanout_reaches_every_subscriber_and_times_each_last_delivery(db: PgPool) {
    let node = node(&db, "a").await;

    let report = run(
        &[
            "fanout",
            "--target",
            &node.url,
            "--sessions",
            "30",
            "--publications",
            "5",
            "--interval-ms",
            "50",
        ],
        &scratch("fanout.json"),
    )
    .await;

    assert_eq!(number(&report, "/published/expected_deliveries"), 150);
    assert_no_loss(&report);
    assert_eq!(number(&report, "/time_to_last_delivery/count"), 5);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_reconnect_storm_brings_every_session_back_without_loss_and_pushes_its_results(
    db: PgPool,
) {
    let node = node(&db, "a").await;
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("address")
        .port();
    let pushgateway_url = format!("http://127.0.0.1:{gateway_port}");
    let _pushgateway = tokio::process::Command::new("prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{gateway_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus-pushgateway runs (scripts/test installs it)");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{pushgateway_url}/-/ready"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report = run(
        &[
            "reconnect-storm",
            "--target",
            &node.url,
            "--sessions",
            "40",
            "--rate",
            "50",
            "--before",
            "1",
            "--after",
            "2",
            "--pushgateway",
            &pushgateway_url,
        ],
        &scratch("storm.json"),
    )
    .await;

    assert_no_loss(&report);
    assert_eq!(number(&report, "/sessions_connected"), 40);
    assert_eq!(
        number(&report, "/observed/joins"),
        80,
        "every session joined twice"
    );
    assert_eq!(number(&report, "/observed/rejoin/count"), 40);
    assert!(report["all_back_seconds"].as_f64().is_some(), "{report}");
    let pushed = client
        .get(format!("{pushgateway_url}/metrics"))
        .send()
        .await
        .expect("pushgateway metrics")
        .text()
        .await
        .expect("text");
    let line = pushed
        .lines()
        .find(|line| line.starts_with("loadtest_lost_total{"))
        .unwrap_or_else(|| panic!("pushed metrics:\n{pushed}"));
    assert!(
        line.contains("scenario=\"reconnect-storm\"") && line.ends_with(" 0"),
        "{line}"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn charge_applies_every_open_loop_charge_and_compares_the_batched_and_naive_nodes(
    db: PgPool,
) {
    let batched = node(&db, "batched").await;
    let naive = node_with(&db, "naive", |settings| {
        settings.ledger.max_batch = 1;
        settings.ledger.max_group = 1;
    })
    .await;

    let report = run(
        &[
            "charge",
            "--target",
            &batched.url,
            "--naive-target",
            &naive.url,
            "--rate",
            "50",
            "--duration",
            "2",
            "--accounts",
            "20",
            "--fund",
            "1000",
            "--hot-duration",
            "1",
            "--hot-concurrency",
            "4",
        ],
        &scratch("charge.json"),
    )
    .await;

    assert_eq!(number(&report, "/open_loop/planned"), 100);
    assert_eq!(number(&report, "/open_loop/sent"), 100);
    assert_eq!(number(&report, "/open_loop/outcomes/201"), 100, "{report}");
    assert_eq!(number(&report, "/open_loop/latency/count"), 100);
    let hot = report["hot"].as_array().expect("hot phases");
    assert_eq!(hot.len(), 2);
    for phase in hot {
        assert_eq!(
            number(phase, "/charges_applied"),
            number(phase, "/outcomes/201"),
            "every applied charge was answered 201: {phase}"
        );
        assert!(number(phase, "/charges_applied") > 0);
    }
    assert!(report["batched_over_naive"].as_f64().is_some());
    let applied: i64 = sqlx::query_scalar(
        "select count(*) from credit_ledger where kind = 'charge' and reason = 'loadtest'",
    )
    .fetch_one(&db)
    .await
    .expect("ledger");
    let hot_total: u64 = hot
        .iter()
        .map(|phase| number(phase, "/charges_applied"))
        .sum();
    assert_eq!(
        applied as u64,
        100 + hot_total,
        "the ledger agrees with the report"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_charge_ramp_reports_every_step_and_draws_the_knee(db: PgPool) {
    let node = node(&db, "ramp").await;
    let chart = scratch("charge-ramp.svg");
    let report = run(
        &[
            "charge",
            "--target",
            &node.url,
            "--accounts",
            "10",
            "--fund",
            "1000",
            "--ramp",
            "20:20:60",
            "--ramp-step-seconds",
            "1",
            "--ramp-chart",
            chart.to_str().expect("path"),
        ],
        &scratch("charge-ramp.json"),
    )
    .await;
    let steps = report["ramp"].as_array().expect("ramp steps");
    let offered: Vec<u64> = steps
        .iter()
        .map(|step| number(step, "/rate_per_second"))
        .collect();
    assert_eq!(offered, [20, 40, 60]);
    for step in steps {
        let answered: u64 = step["outcomes"]
            .as_object()
            .expect("outcomes")
            .values()
            .map(|count| count.as_u64().expect("count"))
            .sum();
        assert_eq!(answered, number(step, "/sent"), "{step}");
        assert_eq!(
            number(step, "/accepted_latency/count"),
            number(step, "/outcomes/201")
        );
        // Every charge's send lag is measured, and it is part of that charge's latency.
        assert_eq!(number(step, "/send_lag/count"), number(step, "/sent"));
        let (lag, latency) = (&step["send_lag"]["max_ms"], &step["latency"]["max_ms"]);
        assert!(
            lag.as_f64().expect("lag") <= latency.as_f64().expect("latency"),
            "{step}"
        );
    }
    assert!(report["open_loop"].is_null() && report["hot"].as_array().is_some_and(Vec::is_empty));
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(
        svg.contains("<svg") && svg.contains("accepted"),
        "the chart"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_short_soak_mixes_churn_publishing_slow_readers_and_floods_and_reports_over_time(
    db: PgPool,
) {
    let node = node(&db, "soak").await;
    let report_path = scratch("soak.json");
    let chart_path = scratch("soak.svg");
    let report = run(
        &[
            "soak",
            "--target",
            &node.url,
            "--duration",
            "10",
            "--sessions",
            "30",
            "--churn",
            "4",
            "--rate",
            "30",
            "--slow-reader-every",
            "3",
            "--flood-every",
            "4",
            "--sample-every",
            "2",
            "--settle",
            "1",
            "--sources",
            "4",
            "--prefix",
            "soak-test",
            "--chart",
            chart_path.to_str().expect("path"),
        ],
        &report_path,
    )
    .await;

    assert_eq!(number(&report, "/connect_errors"), 0, "{report}");
    assert!(
        number(&report, "/sessions_opened") > 30,
        "churn reopened sessions"
    );
    assert!(number(&report, "/publications_accepted") > 0);
    assert_eq!(number(&report, "/publications_failed"), 0);
    assert!(number(&report, "/abuse/slow_readers") >= 2);
    let floods = number(&report, "/abuse/floods");
    assert!(floods >= 2);
    // Every flood was cut off by the node (3013 too many requests or 3509 too many errors).
    let closes = report["abuse"]["flood_closes"]
        .as_object()
        .expect("flood closes");
    let cut: u64 = ["3013", "3509"]
        .iter()
        .filter_map(|code| closes.get(*code).and_then(Value::as_u64))
        .sum();
    assert_eq!(cut, floods, "{report}");
    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 4, "sampled over time: {report}");
    assert!(
        samples
            .iter()
            .all(|sample| sample["rss_bytes"].as_f64() > Some(0.0))
    );
    let chart = std::fs::read_to_string(&chart_path).expect("chart");
    assert!(chart.contains("<svg") && chart.contains("open fds"));
}
