//! The realtime scenarios: `connections`, `push`, `fanout` and `reconnect-storm`. Each ramps
//! simulated sessions ([`crate::session`]) over one or more nodes, drives publications through
//! `POST /api/v1/publish`, and reports what the sessions saw: a terminal table, a JSON report, an
//! SVG chart, and optionally Prometheus metrics pushed to a Pushgateway.

use crate::report::{self, Latency};
use crate::session::{self, Spec};
use crate::tally::{Observed, Tally};
use crate::tokens::Minter;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Options every realtime scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Node base URL sessions connect to; repeat to spread them over several nodes.
    #[arg(long = "target", required = true, value_name = "URL")]
    pub targets: Vec<String>,
    /// The nodes' JWT secret, to sign the simulated users' and the publisher's tokens.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions opened per second during the ramp.
    #[arg(long, default_value_t = 500)]
    pub ramp_rate: u64,
    /// Loopback source addresses to spread sessions over (127.0.0.1 … 127.0.0.N), so ephemeral
    /// ports never run out.
    #[arg(long, default_value_t = 16)]
    pub sources: usize,
    /// Prefix of the simulated users' ids.
    #[arg(long, default_value = "lt")]
    pub prefix: String,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the SVG chart (latency percentiles and live sessions over time) here.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Push the results to this Prometheus Pushgateway (`http://host:9091`).
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
}

/// Transports the `connections` scenario can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `/connection/websocket`.
    Ws,
    /// `/connection/sse`.
    Sse,
}

/// `connections`: ramp sessions, hold them, measure connect errors and server memory per session.
#[derive(Debug, clap::Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    common: Common,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Seconds to hold the sessions once ramped.
    #[arg(long, default_value_t = 10)]
    hold: u64,
}

/// `push`: sessions subscribed to their channels on some nodes, publications at a fixed rate
/// through another.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    common: Common,
    /// Node the publications go through (default: the first target).
    #[arg(long, value_name = "URL")]
    publish_target: Option<String>,
    /// Publications per second, spread round-robin over the sessions' channels.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Shared task channels each session subscribes to besides its personal channel
    /// (`task:{prefix}-t0` …); publications go to them too.
    #[arg(long, default_value_t = 0)]
    channels_per_session: usize,
}

/// `fanout`: one channel, many subscribers; time from publish to the last delivery.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Node the publications go through (default: the first target).
    #[arg(long, value_name = "URL")]
    publish_target: Option<String>,
    /// Publications to send.
    #[arg(long, default_value_t = 20)]
    publications: u64,
    /// Milliseconds between publications.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
}

/// `reconnect-storm`: every session drops its socket at once and comes back recovering, while
/// publications keep flowing.
#[derive(Debug, clap::Args)]
pub struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Node the publications go through (default: the first target).
    #[arg(long, value_name = "URL")]
    publish_target: Option<String>,
    /// Publications per second over the sessions' channels, before, during and after the storm.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds of publishing before the storm.
    #[arg(long, default_value_t = 5)]
    before: u64,
    /// Seconds of publishing after the storm.
    #[arg(long, default_value_t = 10)]
    after: u64,
}

/// Publications the publisher made.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Published {
    /// Accepted (200).
    pub accepted: u64,
    /// Refused or failed.
    pub failed: u64,
    /// Deliveries the accepted ones owe: Σ accepted × subscribers of the channel.
    pub expected_deliveries: u64,
}

/// The server's memory, from its `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Resident memory of the nodes before the ramp (bytes).
    pub rss_before: u64,
    /// Resident memory of the nodes with every session connected (bytes).
    pub rss_after: u64,
    /// (after - before) / sessions connected.
    pub per_session_bytes: u64,
}

/// A realtime scenario's report.
#[derive(Debug, Serialize)]
pub struct RealtimeReport {
    scenario: &'static str,
    started_at: String,
    targets: Vec<String>,
    publish_target: Option<String>,
    sessions_planned: usize,
    sessions_connected: i64,
    ramp_seconds: f64,
    run_seconds: f64,
    observed: Observed,
    published: Option<Published>,
    /// Deliveries owed and not made (expected - delivered).
    lost: Option<u64>,
    memory: Option<Memory>,
    /// Fan-out: time from publish to the last subscriber's delivery.
    time_to_last_delivery: Option<Latency>,
    /// Storm: time until every session was back.
    all_back_seconds: Option<f64>,
    transport: Option<Transport>,
}

fn bar(length: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message.to_owned());
    bar
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// Sessions under way.
struct Fleet {
    stop: CancellationToken,
    storm: watch::Sender<u64>,
    tasks: JoinSet<()>,
    ramp_seconds: f64,
}

impl Fleet {
    /// Opens `specs` at `rate` per second; returns once every session joined or gave up (or on
    /// `stop`).
    async fn ramp(
        specs: Vec<Spec>,
        rate: u64,
        tally: Arc<Tally>,
        stop: &CancellationToken,
    ) -> Self {
        let started = Instant::now();
        let total = specs.len() as u64;
        let progress = bar(total, "ramp");
        let (storm, _) = watch::channel(0u64);
        let fleet_stop = stop.child_token();
        let mut tasks = JoinSet::new();
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        for (n, spec) in specs.into_iter().enumerate() {
            if stop.is_cancelled() {
                break;
            }
            let due = started + interval * n as u32;
            tokio::time::sleep_until(due.into()).await;
            tasks.spawn(session::run(
                spec,
                tally.clone(),
                fleet_stop.clone(),
                storm.subscribe(),
            ));
            progress.set_position(tally.joins() + tally.connect_errors());
        }
        while tally.joins() + failed_sessions(&tally) < total && !stop.is_cancelled() {
            progress.set_position(tally.joins() + failed_sessions(&tally));
            if tasks.len() as u64 + tally.joins() < total && tasks.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(30) + interval * total as u32 {
                break;
            }
        }
        progress.set_position(tally.joins());
        progress.finish();
        Self {
            stop: fleet_stop,
            storm,
            tasks,
            ramp_seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Closes every session.
    async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sessions that gave up joining (three failed attempts each).
fn failed_sessions(tally: &Tally) -> u64 {
    tally.connect_errors() / 3
}

fn user(common: &Common, n: usize) -> String {
    format!("{}-{n}", common.prefix)
}

fn specs(
    common: &Common,
    minter: &Minter,
    roles: &[&str],
    channels: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<Vec<Spec>> {
    (0..common.sessions)
        .map(|n| {
            Ok(Spec {
                target: common.targets[n % common.targets.len()].clone(),
                source: session::source(n, common.sources),
                token: minter.token(&user(common, n), roles)?,
                channels: channels(n),
            })
        })
        .collect()
}

/// Publishes `{type, seq, ts}` on channels chosen by `channel(n)` at `rate` per second for
/// `duration` (open loop); `accepted[channel]` counts the 200s.
pub(crate) struct Publisher {
    client: reqwest::Client,
    target: String,
    token: String,
    accepted: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    failed: Arc<AtomicU64>,
    next_seq: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

impl Publisher {
    pub(crate) fn new(target: &str, minter: &Minter) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .build()?,
            target: target.trim_end_matches('/').to_owned(),
            token: minter.token("loadtest-publisher", &["service"])?,
            accepted: Arc::default(),
            failed: Arc::default(),
            next_seq: Arc::default(),
        })
    }

    /// Publishes one; the sequence number is per channel, from 1.
    pub(crate) fn spawn_one(&self, channel: String, tasks: &mut JoinSet<()>) {
        self.spawn_one_with(channel, 0, tasks);
    }

    /// [`Publisher::spawn_one`] with `filler` bytes of padding in the data (to fill queues).
    pub(crate) fn spawn_one_with(&self, channel: String, filler: usize, tasks: &mut JoinSet<()>) {
        let seq = {
            let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
            let seq = next.entry(channel.clone()).or_insert(0);
            *seq += 1;
            *seq
        };
        let (client, url, token) = (
            self.client.clone(),
            format!("{}/api/v1/publish", self.target),
            self.token.clone(),
        );
        let (accepted, failed) = (self.accepted.clone(), self.failed.clone());
        tasks.spawn(async move {
            let mut body = serde_json::json!({
                "channel": channel,
                "data": { "type": "loadtest", "seq": seq, "ts": now_ms() },
            });
            if filler > 0 {
                body["data"]["filler"] = "x".repeat(filler).into();
            }
            let ok = match client.post(url).bearer_auth(token).json(&body).send().await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    let _ = response.bytes().await;
                    ok
                }
                Err(_) => false,
            };
            if ok {
                *accepted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(channel)
                    .or_default() += 1;
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Open loop at `rate` for `duration`, channels round-robin.
    async fn run(
        &self,
        channels: &[String],
        rate: u64,
        duration: Duration,
        stop: &CancellationToken,
    ) {
        if channels.is_empty() || rate == 0 {
            return;
        }
        let total = (rate as f64 * duration.as_secs_f64()) as u64;
        let progress = bar(total, "publish");
        let started = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let mut tasks = JoinSet::new();
        for n in 0..total {
            if stop.is_cancelled() {
                break;
            }
            tokio::time::sleep_until((started + interval * n as u32).into()).await;
            self.spawn_one(channels[n as usize % channels.len()].clone(), &mut tasks);
            progress.inc(1);
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        progress.finish();
    }

    pub(crate) fn published(&self, subscribers: impl Fn(&str) -> u64) -> Published {
        let accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        Published {
            accepted: accepted.values().sum(),
            failed: self.failed.load(Ordering::Relaxed),
            expected_deliveries: accepted
                .iter()
                .map(|(channel, count)| count * subscribers(channel))
                .sum(),
        }
    }
}

/// Resident memory of the nodes, from their `/metrics` (`process_resident_memory_bytes`).
async fn rss(targets: &[String]) -> Option<u64> {
    let client = reqwest::Client::new();
    let mut total = 0;
    for target in targets {
        let text = client
            .get(format!("{}/metrics", target.trim_end_matches('/')))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = text.lines().find_map(|line| {
            line.strip_prefix("process_resident_memory_bytes ")
                .and_then(|value| value.trim().parse::<f64>().ok())
        })?;
        total += value as u64;
    }
    Some(total)
}

/// Waits until `delivered` stops growing for a second (at most `limit`): deliveries in flight land.
async fn settle(tally: &Tally, expected: u64, limit: Duration) {
    let started = Instant::now();
    let mut last = tally.delivered();
    while started.elapsed() < limit && tally.delivered() < expected {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = tally.delivered();
        if now == last && started.elapsed() > Duration::from_secs(2) {
            break;
        }
        last = now;
    }
}

fn started_at() -> String {
    chrono::Utc::now().to_rfc3339()
}

impl RealtimeReport {
    fn new(scenario: &'static str, common: &Common) -> Self {
        Self {
            scenario,
            started_at: started_at(),
            targets: common.targets.clone(),
            publish_target: None,
            sessions_planned: common.sessions,
            sessions_connected: 0,
            ramp_seconds: 0.0,
            run_seconds: 0.0,
            observed: Tally::new(false).summary(),
            published: None,
            lost: None,
            memory: None,
            time_to_last_delivery: None,
            all_back_seconds: None,
            transport: None,
        }
    }

    /// Prints the table and writes the files the options ask for.
    async fn finish(self, common: &Common) -> anyhow::Result<()> {
        let observed = &self.observed;
        let mut rows = vec![
            ("targets".into(), self.targets.join(", ")),
            (
                "sessions".into(),
                format!(
                    "{} planned, {} connected at the end, {} joins, {} join errors",
                    self.sessions_planned,
                    self.sessions_connected,
                    observed.joins,
                    observed.connect_errors
                ),
            ),
            ("ramp".into(), format!("{:.1} s", self.ramp_seconds)),
        ];
        if let Some(published) = &self.published {
            rows.push((
                "publications".into(),
                format!(
                    "{} accepted, {} failed; {} deliveries owed",
                    published.accepted, published.failed, published.expected_deliveries
                ),
            ));
            rows.push((
                "delivered".into(),
                format!(
                    "{} unique ({} recovered), {} duplicated, {} lost",
                    observed.delivered,
                    observed.recovered,
                    observed.duplicated,
                    self.lost.unwrap_or(0)
                ),
            ));
            rows.push(("latency".into(), latency_row(&observed.latency)));
        }
        if let Some(spread) = &self.time_to_last_delivery {
            rows.push(("to last delivery".into(), latency_row(spread)));
        }
        if let Some(seconds) = self.all_back_seconds {
            rows.push(("all back after".into(), format!("{seconds:.2} s")));
            rows.push(("rejoin".into(), latency_row(&observed.rejoin)));
        }
        if let Some(memory) = &self.memory {
            rows.push((
                "server memory".into(),
                format!(
                    "{} KiB per session ({} MiB before, {} MiB after)",
                    memory.per_session_bytes / 1024,
                    memory.rss_before >> 20,
                    memory.rss_after >> 20
                ),
            ));
        }
        if !observed.disconnects.is_empty() {
            rows.push((
                "server closes".into(),
                format!("{:?}", observed.disconnects),
            ));
        }
        if !observed.errors.is_empty() {
            rows.push(("join errors".into(), format!("{:?}", observed.errors)));
        }
        report::table(&format!("{} scenario", self.scenario), &rows);
        if let Some(path) = &common.report {
            report::write_json(path, &self)?;
        }
        if let Some(path) = &common.chart {
            crate::chart::write(path, self.scenario, &observed.timeline)?;
        }
        if let Some(url) = &common.pushgateway {
            crate::pushgateway::push(url, self.scenario, &self.metrics()).await?;
        }
        Ok(())
    }

    /// The report as Prometheus samples (name, value).
    fn metrics(&self) -> Vec<(String, f64)> {
        let observed = &self.observed;
        let mut samples = vec![
            (
                "loadtest_sessions_planned".into(),
                self.sessions_planned as f64,
            ),
            (
                "loadtest_sessions_connected".into(),
                self.sessions_connected as f64,
            ),
            ("loadtest_joins_total".into(), observed.joins as f64),
            (
                "loadtest_join_errors_total".into(),
                observed.connect_errors as f64,
            ),
            ("loadtest_delivered_total".into(), observed.delivered as f64),
            (
                "loadtest_duplicated_total".into(),
                observed.duplicated as f64,
            ),
            ("loadtest_lost_total".into(), self.lost.unwrap_or(0) as f64),
            ("loadtest_ramp_seconds".into(), self.ramp_seconds),
        ];
        samples.extend(observed.latency.samples("loadtest_delivery_latency_ms"));
        if let Some(memory) = &self.memory {
            samples.push((
                "loadtest_server_bytes_per_session".into(),
                memory.per_session_bytes as f64,
            ));
        }
        if let Some(seconds) = self.all_back_seconds {
            samples.push(("loadtest_all_back_seconds".into(), seconds));
        }
        if let Some(spread) = &self.time_to_last_delivery {
            samples.push((
                "loadtest_time_to_last_delivery_p99_ms".into(),
                spread.p99_ms,
            ));
        }
        samples
    }
}

fn latency_row(latency: &Latency) -> String {
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms, latency.count
    )
}

/// `connections`.
pub async fn connections(args: ConnectionsArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let common = &args.common;
    let minter = Minter::new(&common.jwt_secret, 24 * 3600)?;
    let mut report = RealtimeReport::new("connections", common);
    report.transport = Some(args.transport);
    let before = rss(&common.targets).await;
    let tally = Tally::new(false);
    tally.sample_every_second(stop.clone());
    let started = Instant::now();
    let closing: Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()>>>> =
        match args.transport {
            Transport::Ws => {
                let specs = specs(common, &minter, &["user"], |_| Vec::new())?;
                let fleet = Fleet::ramp(specs, common.ramp_rate, tally.clone(), &stop).await;
                report.ramp_seconds = fleet.ramp_seconds;
                Box::new(move || Box::pin(fleet.close()))
            }
            Transport::Sse => {
                let (seconds, fleet) = sse_ramp(common, &minter, tally.clone(), &stop).await?;
                report.ramp_seconds = seconds;
                Box::new(move || {
                    Box::pin(async move {
                        fleet.0.cancel();
                        let mut tasks = fleet.1;
                        while tasks.join_next().await.is_some() {}
                    })
                })
            }
        };
    let hold = bar(args.hold, "hold");
    for _ in 0..args.hold {
        if stop.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        hold.inc(1);
    }
    hold.finish();
    report.sessions_connected = tally.live();
    let after = rss(&common.targets).await;
    if let (Some(before), Some(after)) = (before, after) {
        report.memory = Some(Memory {
            rss_before: before,
            rss_after: after,
            per_session_bytes: after.saturating_sub(before)
                / report.sessions_connected.max(1) as u64,
        });
    }
    closing().await;
    report.run_seconds = started.elapsed().as_secs_f64();
    tally.sample();
    report.observed = tally.summary();
    report.finish(common).await
}

/// SSE sessions: `GET /connection/sse?token=` held open, from the chosen source addresses.
async fn sse_ramp(
    common: &Common,
    minter: &Minter,
    tally: Arc<Tally>,
    stop: &CancellationToken,
) -> anyhow::Result<(f64, (CancellationToken, JoinSet<()>))> {
    let clients: Vec<reqwest::Client> = (0..common.sources.clamp(1, 250))
        .map(|n| {
            reqwest::Client::builder()
                .local_address(session::source(n, common.sources))
                .pool_max_idle_per_host(0)
                .build()
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let progress = bar(common.sessions as u64, "ramp");
    let fleet_stop = stop.child_token();
    let mut tasks = JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / common.ramp_rate.max(1) as f64);
    for n in 0..common.sessions {
        if stop.is_cancelled() {
            break;
        }
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let client = clients[n % clients.len()].clone();
        let url = format!(
            "{}/connection/sse?token={}",
            common.targets[n % common.targets.len()].trim_end_matches('/'),
            minter.token(&user(common, n), &["user"])?
        );
        let (tally, stop, progress) = (tally.clone(), fleet_stop.clone(), progress.clone());
        tasks.spawn(async move {
            let response = match client.get(url).send().await {
                Ok(response) if response.status().is_success() => response,
                Ok(response) => return tally.connect_error(&format!("HTTP {}", response.status())),
                Err(error) => return tally.connect_error(&error.to_string()),
            };
            tally.joined(None);
            progress.inc(1);
            let mut response = response;
            let code = loop {
                tokio::select! {
                    () = stop.cancelled() => break None,
                    chunk = response.chunk() => match chunk {
                        Ok(Some(_)) => {}
                        _ => break Some(0),
                    },
                }
            };
            tally.left(code);
        });
    }
    progress.finish();
    Ok((started.elapsed().as_secs_f64(), (fleet_stop, tasks)))
}

/// `push`.
pub async fn push(args: PushArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let common = &args.common;
    let minter = Minter::new(&common.jwt_secret, 24 * 3600)?;
    let publish_target = args
        .publish_target
        .clone()
        .unwrap_or_else(|| common.targets[0].clone());
    let mut report = RealtimeReport::new("push", common);
    report.publish_target = Some(publish_target.clone());
    let shared: Vec<String> = (0..args.channels_per_session)
        .map(|n| format!("task:{}-t{n}", common.prefix))
        .collect();
    let roles: &[&str] = if shared.is_empty() {
        &["user"]
    } else {
        &["operator"]
    };
    let specs = specs(common, &minter, roles, |_| shared.clone())?;
    let tally = Tally::new(false);
    tally.sample_every_second(stop.clone());
    let fleet = Fleet::ramp(specs, common.ramp_rate, tally.clone(), &stop).await;
    report.ramp_seconds = fleet.ramp_seconds;
    let connected = tally.live();
    let mut channels: Vec<String> = (0..common.sessions)
        .map(|n| format!("user:{}", user(common, n)))
        .collect();
    channels.extend(shared.iter().cloned());
    let publisher = Publisher::new(&publish_target, &minter)?;
    let started = Instant::now();
    publisher
        .run(
            &channels,
            args.rate,
            Duration::from_secs(args.duration),
            &stop,
        )
        .await;
    let sessions = common.sessions as u64;
    let published = publisher.published(|channel| {
        if channel.starts_with("task:") {
            sessions
        } else {
            1
        }
    });
    settle(
        &tally,
        published.expected_deliveries,
        Duration::from_secs(10),
    )
    .await;
    report.run_seconds = started.elapsed().as_secs_f64();
    report.sessions_connected = connected;
    fleet.close().await;
    tally.sample();
    report.observed = tally.summary();
    report.lost = Some(
        published
            .expected_deliveries
            .saturating_sub(report.observed.delivered),
    );
    report.published = Some(published);
    report.finish(common).await
}

/// `fanout`.
pub async fn fanout(args: FanoutArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let common = &args.common;
    let minter = Minter::new(&common.jwt_secret, 24 * 3600)?;
    let publish_target = args
        .publish_target
        .clone()
        .unwrap_or_else(|| common.targets[0].clone());
    let mut report = RealtimeReport::new("fanout", common);
    report.publish_target = Some(publish_target.clone());
    let channel = format!("task:{}-fanout", common.prefix);
    let specs = specs(common, &minter, &["operator"], |_| vec![channel.clone()])?;
    let tally = Tally::new(true);
    tally.sample_every_second(stop.clone());
    let fleet = Fleet::ramp(specs, common.ramp_rate, tally.clone(), &stop).await;
    report.ramp_seconds = fleet.ramp_seconds;
    let connected = tally.live();
    let publisher = Publisher::new(&publish_target, &minter)?;
    let started = Instant::now();
    let progress = bar(args.publications, "publish");
    let mut sent: BTreeMap<u64, i64> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for n in 1..=args.publications {
        if stop.is_cancelled() {
            break;
        }
        sent.insert(n, now_ms());
        publisher.spawn_one(channel.clone(), &mut tasks);
        progress.inc(1);
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    while tasks.join_next().await.is_some() {}
    progress.finish();
    let published = publisher.published(|_| connected.max(0) as u64);
    settle(
        &tally,
        published.expected_deliveries,
        Duration::from_secs(10),
    )
    .await;
    report.run_seconds = started.elapsed().as_secs_f64();
    report.sessions_connected = connected;
    fleet.close().await;
    let mut spread = report::histogram();
    for (seq, spreads) in tally.spreads() {
        if let Some(sent_ms) = sent.get(&seq) {
            let micros = (spreads.last_us - sent_ms * 1000).max(1) as u64;
            report::record(&mut spread, Duration::from_micros(micros));
        }
    }
    report.time_to_last_delivery = Some(Latency::of(&spread));
    tally.sample();
    report.observed = tally.summary();
    report.lost = Some(
        published
            .expected_deliveries
            .saturating_sub(report.observed.delivered),
    );
    report.published = Some(published);
    report.finish(common).await
}

/// `reconnect-storm`.
pub async fn reconnect_storm(args: StormArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let common = &args.common;
    let minter = Minter::new(&common.jwt_secret, 24 * 3600)?;
    let publish_target = args
        .publish_target
        .clone()
        .unwrap_or_else(|| common.targets[0].clone());
    let mut report = RealtimeReport::new("reconnect-storm", common);
    report.publish_target = Some(publish_target.clone());
    let specs = specs(common, &minter, &["user"], |_| Vec::new())?;
    let tally = Tally::new(false);
    tally.sample_every_second(stop.clone());
    let fleet = Fleet::ramp(specs, common.ramp_rate, tally.clone(), &stop).await;
    report.ramp_seconds = fleet.ramp_seconds;
    let connected = tally.live();
    let channels: Vec<String> = (0..common.sessions)
        .map(|n| format!("user:{}", user(common, n)))
        .collect();
    let publisher = Arc::new(Publisher::new(&publish_target, &minter)?);
    let started = Instant::now();
    let total = Duration::from_secs(args.before + args.after);
    let publishing = {
        let (publisher, channels, stop, rate) =
            (publisher.clone(), channels.clone(), stop.clone(), args.rate);
        tokio::spawn(async move { publisher.run(&channels, rate, total, &stop).await })
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(args.before)) => {}
    }
    let joins_before = tally.joins();
    let storm_at = Instant::now();
    fleet.storm.send_modify(|generation| *generation += 1);
    let mut back = None;
    while !stop.is_cancelled() && storm_at.elapsed() < Duration::from_secs(60) {
        if tally.joins() >= joins_before + connected.max(0) as u64 && tally.live() >= connected {
            back = Some(storm_at.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.all_back_seconds = back;
    let _ = publishing.await;
    let published = publisher.published(|_| 1);
    settle(
        &tally,
        published.expected_deliveries,
        Duration::from_secs(10),
    )
    .await;
    report.run_seconds = started.elapsed().as_secs_f64();
    report.sessions_connected = tally.live();
    fleet.close().await;
    tally.sample();
    report.observed = tally.summary();
    report.lost = Some(
        published
            .expected_deliveries
            .saturating_sub(report.observed.delivered),
    );
    report.published = Some(published);
    report.finish(common).await
}
