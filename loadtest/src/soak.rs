//! The `soak` scenario: a steady population of sessions with connection churn (sessions closed
//! and reopened, so subscribe and unsubscribe keep happening), publications at a fixed rate, and,
//! mixed in, readers that never read and clients that flood commands; for a set duration. Every
//! few seconds it scrapes the nodes' `/metrics` for resident memory, open descriptors, live actors
//! and queue depths, and reports them over time (JSON, SVG chart, Pushgateway), with the figures
//! after everything closed, so a leak shows as a climb that does not come back down.

use crate::chart::{self, SoakPoint};
use crate::realtime::Publisher;
use crate::report;
use crate::session::{self, Spec};
use crate::tally::Tally;
use crate::tokens::Minter;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// `soak`: churn, publishing, slow readers and floods for a set duration.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Node base URL; repeat to spread sessions over several nodes.
    #[arg(long = "target", required = true, value_name = "URL")]
    targets: Vec<String>,
    /// The nodes' JWT secret.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 1800)]
    duration: u64,
    /// Sessions kept open (each slot is closed and reopened by the churn).
    #[arg(long, default_value_t = 500)]
    sessions: usize,
    /// Sessions closed and reopened per second.
    #[arg(long, default_value_t = 10)]
    churn: u64,
    /// Publications per second over the sessions' personal channels.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds between two readers that connect, then never read while their channel is flooded.
    #[arg(long, default_value_t = 20)]
    slow_reader_every: u64,
    /// Seconds between two clients that flood the node with subscribe commands.
    #[arg(long, default_value_t = 30)]
    flood_every: u64,
    /// Seconds to wait after everything closed before the last scrape (past the nodes'
    /// header-read timeout, so idle keep-alive connections are gone too).
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// Seconds between two scrapes of the nodes' metrics.
    #[arg(long, default_value_t = 5)]
    sample_every: u64,
    /// Loopback source addresses to spread sessions over.
    #[arg(long, default_value_t = 16)]
    sources: usize,
    /// Prefix of the simulated users' ids.
    #[arg(long, default_value = "soak")]
    prefix: String,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the SVG chart here.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Push the results to this Prometheus Pushgateway.
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
}

/// The nodes' figures at one moment (summed over the nodes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub second: f64,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: f64,
    /// `process_open_fds`.
    pub open_fds: f64,
    /// `hub_sessions`: live session actors.
    pub sessions: f64,
    /// `hub_subscriptions`.
    pub subscriptions: f64,
    /// `hub_task_actors`.
    pub task_actors: f64,
    /// `ledger_account_actors`.
    pub account_actors: f64,
    /// `http_connections`: open TCP connections.
    pub http_connections: f64,
    /// `ledger_mailbox_depth`.
    pub mailbox_depth: f64,
}

/// What the abusive clients met.
#[derive(Debug, Default, Serialize)]
struct Abuse {
    slow_readers: u64,
    floods: u64,
    /// Close code → floods it ended.
    flood_closes: BTreeMap<u16, u64>,
}

#[derive(Debug, Serialize)]
struct SoakReport {
    scenario: &'static str,
    started_at: String,
    targets: Vec<String>,
    duration_seconds: f64,
    sessions: usize,
    churn_per_second: u64,
    publish_rate: u64,
    publications_accepted: u64,
    publications_failed: u64,
    sessions_opened: u64,
    connect_errors: u64,
    abuse: Abuse,
    /// Before any load.
    baseline: Sample,
    /// After every client closed and the nodes settled.
    after: Sample,
    samples: Vec<Sample>,
    rss_max_bytes: f64,
    open_fds_max: f64,
}

/// Scrapes and sums the soak's metrics over `targets`.
pub async fn scrape(client: &reqwest::Client, targets: &[String], second: f64) -> Sample {
    let mut sample = Sample {
        second,
        ..Sample::default()
    };
    for target in targets {
        let Ok(response) = client
            .get(format!("{}/metrics", target.trim_end_matches('/')))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            let slot = match name {
                "process_resident_memory_bytes" => &mut sample.rss_bytes,
                "process_open_fds" => &mut sample.open_fds,
                "hub_sessions" => &mut sample.sessions,
                "hub_subscriptions" => &mut sample.subscriptions,
                "hub_task_actors" => &mut sample.task_actors,
                "ledger_account_actors" => &mut sample.account_actors,
                "http_connections" => &mut sample.http_connections,
                "ledger_mailbox_depth" => &mut sample.mailbox_depth,
                _ => continue,
            };
            *slot += value;
        }
    }
    sample
}

fn ws_url(target: &str) -> String {
    format!(
        "{}/connection/websocket",
        target.trim_end_matches('/').replacen("http", "ws", 1)
    )
}

fn address_of(target: &str) -> anyhow::Result<std::net::SocketAddr> {
    let host = target
        .split("//")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow::anyhow!("bad target {target}"))?;
    host.parse()
        .map_err(|error| anyhow::anyhow!("target {target} is not host:port: {error}"))
}

/// A reader that connects, subscribes (its personal channel) and never reads again, with a tiny
/// receive window, while `burst` publications of 2 KB go to its channel; held until `until`.
async fn slow_reader(
    target: String,
    token: String,
    channel: String,
    publisher: Arc<Publisher>,
    burst: usize,
    until: CancellationToken,
) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(address_of(&target)?).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url(&target), stream).await?;
    let connect = serde_json::json!({ "id": 1, "connect": { "token": token } });
    ws.send(Message::Text(connect.to_string().into())).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut publications = JoinSet::new();
    for _ in 0..burst {
        publisher.spawn_one_with(channel.clone(), 2_000, &mut publications);
        while publications.len() > 64 {
            publications.join_next().await;
        }
    }
    while publications.join_next().await.is_some() {}
    until.cancelled().await;
    drop(ws);
    Ok(())
}

/// A client that connects, then sends `commands` subscribes to random task channels as fast as
/// it can; returns the close code the node ended it with (0: none within 30 s).
async fn flood(target: String, token: String, commands: usize) -> anyhow::Result<u16> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&target)).await?;
    let connect = serde_json::json!({ "id": 1, "connect": { "token": token } });
    ws.send(Message::Text(connect.to_string().into())).await?;
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map_or(0, |frame| u16::from(frame.code));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return 0,
            }
        }
    });
    for chunk in (0..commands).collect::<Vec<_>>().chunks(100) {
        let frame = chunk
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n + 2,
                    "subscribe": { "channel": format!("task:{}", uuid_like(*n)) },
                })
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n");
        if sink.send(Message::Text(frame.into())).await.is_err() {
            break;
        }
    }
    Ok(reader.await.unwrap_or(0))
}

fn uuid_like(n: usize) -> String {
    let random: u64 = rand_u64();
    format!(
        "{:08x}-0000-7000-8000-{:012x}",
        n as u32,
        random & 0xffff_ffff_ffff
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Runs the soak.
pub async fn run(args: SoakArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let minter = Minter::new(&args.jwt_secret, args.duration as i64 + 3_600)?;
    let metrics_client = reqwest::Client::new();
    let started = Instant::now();
    let baseline = scrape(&metrics_client, &args.targets, 0.0).await;
    let tally = Tally::new(false);
    let (_storm, storm_rx) = watch::channel(0u64);
    let spec = |slot: usize| -> anyhow::Result<Spec> {
        Ok(Spec {
            target: args.targets[slot % args.targets.len()].clone(),
            source: session::source(slot, args.sources),
            token: minter.token(&format!("{}-{slot}", args.prefix), &["user"])?,
            channels: Vec::new(),
        })
    };

    // The steady population: one task per slot, each with its own stop for the churn.
    let mut sessions = JoinSet::new();
    let mut stops: Vec<CancellationToken> = Vec::with_capacity(args.sessions);
    let run_stop = stop.child_token();
    for slot in 0..args.sessions {
        let token = run_stop.child_token();
        sessions.spawn(session::run(
            spec(slot)?,
            tally.clone(),
            token.clone(),
            storm_rx.clone(),
        ));
        stops.push(token);
        if slot % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut opened = args.sessions as u64;

    let publisher = Arc::new(Publisher::new(&args.targets[0], &minter)?);
    let channels: Vec<String> = (0..args.sessions)
        .map(|slot| format!("user:{}-{slot}", args.prefix))
        .collect();
    let mut publications = JoinSet::new();
    let mut abusers = JoinSet::new();
    let mut abuse = Abuse::default();
    let mut slow_holds: Vec<CancellationToken> = Vec::new();
    let mut samples = vec![baseline.clone()];

    let duration = Duration::from_secs(args.duration);
    let tick = Duration::from_millis(100);
    let mut next_churn = Instant::now();
    let churn_interval = Duration::from_secs_f64(1.0 / args.churn.max(1) as f64);
    let publish_interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut next_publish = Instant::now();
    let mut next_slow = Instant::now() + Duration::from_secs(args.slow_reader_every);
    let mut next_flood = Instant::now() + Duration::from_secs(args.flood_every);
    let mut next_sample = Instant::now() + Duration::from_secs(args.sample_every);
    let mut published = 0usize;
    let mut churned = 0usize;
    while started.elapsed() < duration && !stop.is_cancelled() {
        let now = Instant::now();
        while args.churn > 0 && next_churn <= now {
            let slot = churned % args.sessions.max(1);
            stops[slot].cancel();
            let token = run_stop.child_token();
            sessions.spawn(session::run(
                spec(slot)?,
                tally.clone(),
                token.clone(),
                storm_rx.clone(),
            ));
            stops[slot] = token;
            churned += 1;
            opened += 1;
            next_churn += churn_interval;
        }
        while args.rate > 0 && next_publish <= now && !channels.is_empty() {
            publisher.spawn_one(
                channels[published % channels.len()].clone(),
                &mut publications,
            );
            published += 1;
            next_publish += publish_interval;
        }
        if next_slow <= now {
            let hold = CancellationToken::new();
            let slot = abuse.slow_readers as usize;
            abusers.spawn({
                let (target, publisher, hold) = (
                    args.targets[slot % args.targets.len()].clone(),
                    publisher.clone(),
                    hold.clone(),
                );
                let token = minter.token(&format!("{}-slow-{slot}", args.prefix), &["user"])?;
                let channel = format!("user:{}-slow-{slot}", args.prefix);
                async move {
                    let _ = slow_reader(target, token, channel, publisher, 1_500, hold).await;
                    None
                }
            });
            slow_holds.push(hold);
            // Each slow reader is held a while, then its client goes away.
            if slow_holds.len() > 3 {
                slow_holds.remove(0).cancel();
            }
            abuse.slow_readers += 1;
            next_slow += Duration::from_secs(args.slow_reader_every);
        }
        if next_flood <= now {
            let slot = abuse.floods as usize;
            let target = args.targets[slot % args.targets.len()].clone();
            let token = minter.token(&format!("{}-flood-{slot}", args.prefix), &["user"])?;
            abusers.spawn(async move { flood(target, token, 5_000).await.ok() });
            abuse.floods += 1;
            next_flood += Duration::from_secs(args.flood_every);
        }
        if next_sample <= now {
            let sample = scrape(
                &metrics_client,
                &args.targets,
                started.elapsed().as_secs_f64(),
            )
            .await;
            eprintln!(
                "{:>6.0}s rss {:>7.1} MiB  fds {:>6}  sessions {:>6}  subscriptions {:>6}  mailbox {:>4}",
                sample.second,
                sample.rss_bytes / 1_048_576.0,
                sample.open_fds,
                sample.sessions,
                sample.subscriptions,
                sample.mailbox_depth
            );
            samples.push(sample);
            next_sample += Duration::from_secs(args.sample_every);
        }
        while let Some(result) = abusers.try_join_next() {
            if let Ok(Some(code)) = result {
                *abuse.flood_closes.entry(code).or_default() += 1;
            }
        }
        while publications.try_join_next().is_some() {}
        while sessions.try_join_next().is_some() {}
        tokio::time::sleep(tick).await;
    }

    // Everything closes; the nodes should come back to their baseline.
    run_stop.cancel();
    for hold in slow_holds {
        hold.cancel();
    }
    while sessions.join_next().await.is_some() {}
    while publications.join_next().await.is_some() {}
    while let Some(result) = abusers.join_next().await {
        if let Ok(Some(code)) = result {
            *abuse.flood_closes.entry(code).or_default() += 1;
        }
    }
    // Past the nodes' header-read timeout (10 s by default), idle keep-alive connections of the
    // publisher are closed too: what remains open is the nodes' own (pools, Redis).
    let delivered = publisher.published(|_| 1);
    drop(publisher);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = scrape(
        &metrics_client,
        &args.targets,
        started.elapsed().as_secs_f64(),
    )
    .await;
    samples.push(after.clone());

    let report = SoakReport {
        scenario: "soak",
        started_at: chrono::Utc::now().to_rfc3339(),
        targets: args.targets.clone(),
        duration_seconds: started.elapsed().as_secs_f64(),
        sessions: args.sessions,
        churn_per_second: args.churn,
        publish_rate: args.rate,
        publications_accepted: delivered.accepted,
        publications_failed: delivered.failed,
        sessions_opened: opened,
        connect_errors: tally.connect_errors(),
        abuse,
        rss_max_bytes: samples.iter().map(|s| s.rss_bytes).fold(0.0, f64::max),
        open_fds_max: samples.iter().map(|s| s.open_fds).fold(0.0, f64::max),
        baseline,
        after,
        samples,
    };
    let mib = |bytes: f64| format!("{:.1} MiB", bytes / 1_048_576.0);
    report::table(
        "soak",
        &[
            (
                "duration".into(),
                format!("{:.0} s", report.duration_seconds),
            ),
            (
                "sessions kept / opened".into(),
                format!("{} / {}", report.sessions, report.sessions_opened),
            ),
            ("connect errors".into(), report.connect_errors.to_string()),
            (
                "publications accepted / failed".into(),
                format!(
                    "{} / {}",
                    report.publications_accepted, report.publications_failed
                ),
            ),
            (
                "slow readers / floods".into(),
                format!("{} / {}", report.abuse.slow_readers, report.abuse.floods),
            ),
            (
                "flood closes".into(),
                format!("{:?}", report.abuse.flood_closes),
            ),
            (
                "RSS baseline / max / after".into(),
                format!(
                    "{} / {} / {}",
                    mib(report.baseline.rss_bytes),
                    mib(report.rss_max_bytes),
                    mib(report.after.rss_bytes)
                ),
            ),
            (
                "open fds baseline / max / after".into(),
                format!(
                    "{} / {} / {}",
                    report.baseline.open_fds, report.open_fds_max, report.after.open_fds
                ),
            ),
            (
                "sessions / task / account actors after".into(),
                format!(
                    "{} / {} / {}",
                    report.after.sessions, report.after.task_actors, report.after.account_actors
                ),
            ),
        ],
    );
    if let Some(path) = &args.report {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.chart {
        let points: Vec<SoakPoint> = report
            .samples
            .iter()
            .map(|sample| SoakPoint {
                second: sample.second,
                rss_mib: sample.rss_bytes / 1_048_576.0,
                open_fds: sample.open_fds,
                sessions: sample.sessions,
                other_actors: sample.task_actors + sample.account_actors,
                mailbox_depth: sample.mailbox_depth,
            })
            .collect();
        chart::write_soak(path, &points)?;
    }
    if let Some(url) = &args.pushgateway {
        let values = [
            (
                "loadtest_soak_rss_baseline_bytes",
                report.baseline.rss_bytes,
            ),
            ("loadtest_soak_rss_max_bytes", report.rss_max_bytes),
            ("loadtest_soak_rss_after_bytes", report.after.rss_bytes),
            ("loadtest_soak_open_fds_baseline", report.baseline.open_fds),
            ("loadtest_soak_open_fds_after", report.after.open_fds),
            ("loadtest_soak_sessions_after", report.after.sessions),
            ("loadtest_soak_connect_errors", report.connect_errors as f64),
        ];
        let samples: Vec<(String, f64)> = values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect();
        crate::pushgateway::push(url, "soak", &samples).await?;
    }
    Ok(())
}
