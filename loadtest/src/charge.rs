//! The `charge` scenario: `POST /api/v1/credits/charge` under an open-loop load over many
//! accounts, then a hot account hammered by a closed loop, on a batching node and a naive one.

use crate::report::{self, Latency, Outcomes};
use crate::tokens::Minter;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Options of the charge scenario.
#[derive(Debug, clap::Args)]
pub struct ChargeArgs {
    /// Node base URL; repeat to spread the open-loop load over several nodes.
    #[arg(long = "target", required = true, value_name = "URL")]
    targets: Vec<String>,
    /// A node with batching off (HUB_LEDGER__MAX_BATCH=1): the hot phase runs on it too, for the
    /// batched/naive ratio.
    #[arg(long, value_name = "URL")]
    naive_target: Option<String>,
    /// The nodes' JWT secret, to sign the simulated users' tokens.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Open loop: charges per second (arrivals do not wait for answers).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Open loop: seconds of load.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Accounts the open-loop charges are spread over.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Credits each account is funded with during setup (once: the funding is idempotent).
    #[arg(long, default_value_t = 1_000_000)]
    fund: i64,
    /// Credits per charge.
    #[arg(long, default_value_t = 1)]
    amount: i64,
    /// Hot phase: seconds per node (0 skips the phase).
    #[arg(long, default_value_t = 15)]
    hot_duration: u64,
    /// Hot phase: concurrent clients charging the one hot account.
    #[arg(long, default_value_t = 128)]
    hot_concurrency: usize,
    /// Prefix of the simulated users' ids (`{prefix}-{n}`, `{prefix}-hot`).
    #[arg(long, default_value = "lt")]
    prefix: String,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Push the results to this Prometheus Pushgateway (`http://host:9091`).
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
}

#[derive(Debug, Serialize)]
struct OpenLoopReport {
    targets: Vec<String>,
    rate_per_second: u64,
    planned: u64,
    sent: u64,
    seconds: f64,
    accounts: usize,
    latency: Latency,
    outcomes: Outcomes,
}

#[derive(Debug, Serialize)]
struct HotReport {
    label: String,
    target: String,
    concurrency: usize,
    seconds: f64,
    charges_applied: u64,
    charges_per_second: f64,
    latency: Latency,
    outcomes: Outcomes,
}

#[derive(Debug, Serialize)]
struct ChargeReport {
    scenario: &'static str,
    started_at: String,
    open_loop: Option<OpenLoopReport>,
    hot: Vec<HotReport>,
    batched_over_naive: Option<f64>,
}

fn bar(length: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message.to_owned());
    bar
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One charge; returns its outcome label.
async fn charge(
    client: &reqwest::Client,
    target: &str,
    token: &str,
    key: &str,
    amount: i64,
) -> String {
    let body = serde_json::json!({"amount": amount, "reason": "loadtest"});
    match client
        .post(format!("{target}/api/v1/credits/charge"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            // Drain the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            if status >= 500 {
                "5xx".to_owned()
            } else {
                status.to_string()
            }
        }
        Err(error) if error.is_timeout() => "error: timeout".to_owned(),
        Err(error) if error.is_connect() => "error: connect".to_owned(),
        Err(_) => "error: other".to_owned(),
    }
}

/// Provisions `users` (their first request) and funds each once (the key makes reruns no-ops).
async fn setup(
    client: &reqwest::Client,
    target: &str,
    minter: &Minter,
    users: &[(String, String)],
    fund: i64,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let finance = Arc::new(minter.token("loadtest-finance", &["finance"])?);
    let progress = bar(users.len() as u64, "setup");
    let limiter = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for (user, token) in users {
        if stop.is_cancelled() {
            break;
        }
        let (user, token) = (user.clone(), token.clone());
        let permit = limiter.clone().acquire_owned().await?;
        let (client, target, finance, progress) = (
            client.clone(),
            target.to_owned(),
            finance.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let me = client.get(format!("{target}/api/v1/sessions/me")).bearer_auth(&token).send().await?;
            anyhow::ensure!(me.status().is_success(), "provisioning {user}: {}", me.status());
            let body = serde_json::json!({"account_id": user, "amount": fund, "reason": "loadtest funding"});
            let funded = client
                .post(format!("{target}/api/v1/credits/adjust"))
                .bearer_auth(finance.as_str())
                .header("idempotency-key", format!("loadtest-fund-{user}"))
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(funded.status().is_success(), "funding {user}: {}", funded.status());
            progress.inc(1);
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    progress.finish();
    Ok(())
}

/// Open loop: request n is sent at start + n/rate whatever happened to the others; its latency
/// counts from that planned instant, so a stalled server cannot hide its queueing delay.
async fn open_loop(
    args: &ChargeArgs,
    client: &reqwest::Client,
    users: &[(String, String)],
    run: &str,
    stop: &CancellationToken,
) -> OpenLoopReport {
    let planned = args.rate * args.duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let histogram = Arc::new(Mutex::new(report::histogram()));
    let outcomes = Arc::new(Mutex::new(Outcomes::new()));
    let progress = bar(planned, "open loop");
    let started = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let mut sent = 0;
    for n in 0..planned {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(scheduled) => {}
        }
        let (user_index, target) = (
            (n as usize * 7919) % users.len(),
            &args.targets[n as usize % args.targets.len()],
        );
        let token = users[user_index].1.clone();
        let (client, target, key) = (client.clone(), target.clone(), format!("{run}-{n}"));
        let (histogram, outcomes, progress) =
            (histogram.clone(), outcomes.clone(), progress.clone());
        let amount = args.amount;
        tasks.spawn(async move {
            let outcome = charge(&client, &target, &token, &key, amount).await;
            let latency = scheduled.elapsed();
            if let Ok(mut histogram) = histogram.lock() {
                report::record(&mut histogram, latency);
            }
            if let Ok(mut outcomes) = outcomes.lock() {
                *outcomes.entry(outcome).or_default() += 1;
            }
            progress.inc(1);
        });
        sent += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let latency = histogram
        .lock()
        .map(|h| Latency::of(&h))
        .unwrap_or_else(|_| Latency::of(&report::histogram()));
    OpenLoopReport {
        targets: args.targets.clone(),
        rate_per_second: args.rate,
        planned,
        sent,
        seconds,
        accounts: users.len(),
        latency,
        outcomes: outcomes.lock().map(|o| o.clone()).unwrap_or_default(),
    }
}

/// Closed loop on one account: `concurrency` clients each send the next charge as soon as the
/// previous one is answered.
async fn hot_account(
    args: &ChargeArgs,
    client: &reqwest::Client,
    label: &str,
    target: &str,
    token: &str,
    run: &str,
    stop: &CancellationToken,
) -> HotReport {
    let deadline = Instant::now() + Duration::from_secs(args.hot_duration);
    let progress = ProgressBar::new_spinner();
    progress.set_message(format!("hot account on {label} node"));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..args.hot_concurrency {
        let (client, target, token, run, stop) = (
            client.clone(),
            target.to_owned(),
            token.to_owned(),
            format!("{run}-{label}"),
            stop.clone(),
        );
        let (amount, progress) = (args.amount, progress.clone());
        tasks.spawn(async move {
            let mut histogram: Histogram<u64> = report::histogram();
            let mut outcomes = Outcomes::new();
            let mut n = 0u64;
            while Instant::now() < deadline && !stop.is_cancelled() {
                let sent = Instant::now();
                let outcome = charge(
                    &client,
                    &target,
                    &token,
                    &format!("{run}-{worker}-{n}"),
                    amount,
                )
                .await;
                report::record(&mut histogram, sent.elapsed());
                *outcomes.entry(outcome).or_default() += 1;
                n += 1;
                progress.inc(1);
            }
            (histogram, outcomes)
        });
    }
    let mut histogram = report::histogram();
    let mut outcomes = Outcomes::new();
    while let Some(Ok((worker_histogram, worker_outcomes))) = tasks.join_next().await {
        let _ = histogram.add(&worker_histogram);
        for (outcome, count) in worker_outcomes {
            *outcomes.entry(outcome).or_default() += count;
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let applied = outcomes.get("201").copied().unwrap_or(0);
    HotReport {
        label: label.to_owned(),
        target: target.to_owned(),
        concurrency: args.hot_concurrency,
        seconds,
        charges_applied: applied,
        charges_per_second: applied as f64 / seconds.max(f64::EPSILON),
        latency: Latency::of(&histogram),
        outcomes,
    }
}

/// Runs the scenario and prints and writes its report.
pub async fn run(args: ChargeArgs, stop: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.accounts > 0 && args.rate > 0,
        "--accounts and --rate must be positive"
    );
    let minter = Minter::new(&args.jwt_secret, 6 * 3600)?;
    let client = client()?;
    let run = format!("{}-{}", args.prefix, chrono::Utc::now().timestamp_millis());
    let users: Vec<(String, String)> = (0..args.accounts)
        .map(|n| {
            let user = format!("{}-{n}", args.prefix);
            minter.token(&user, &["user"]).map(|token| (user, token))
        })
        .collect::<Result<_, _>>()?;
    let started_at = chrono::Utc::now().to_rfc3339();

    setup(&client, &args.targets[0], &minter, &users, args.fund, &stop).await?;
    let open = if args.duration > 0 && !stop.is_cancelled() {
        Some(open_loop(&args, &client, &users, &run, &stop).await)
    } else {
        None
    };

    let mut hot = Vec::new();
    if args.hot_duration > 0 {
        let hot_user = format!("{}-hot", args.prefix);
        let token = minter.token(&hot_user, &["user"])?;
        let hot_users = [(hot_user, token.clone())];
        setup(
            &client,
            &args.targets[0],
            &minter,
            &hot_users,
            1_000_000_000_000,
            &stop,
        )
        .await?;
        let mut nodes = vec![("batched", args.targets[0].clone())];
        if let Some(naive) = &args.naive_target {
            nodes.push(("naive", naive.clone()));
        }
        for (label, target) in nodes {
            if stop.is_cancelled() {
                break;
            }
            hot.push(hot_account(&args, &client, label, &target, &token, &run, &stop).await);
        }
    }
    let ratio = match hot.as_slice() {
        [batched, naive] if naive.charges_per_second > 0.0 => {
            Some(batched.charges_per_second / naive.charges_per_second)
        }
        _ => None,
    };
    let report = ChargeReport {
        scenario: "charge",
        started_at,
        open_loop: open,
        hot,
        batched_over_naive: ratio,
    };
    print(&report);
    if let Some(path) = &args.report {
        report::write_json(path, &report)?;
    }
    if let Some(url) = &args.pushgateway {
        crate::pushgateway::push(url, "charge", &metrics(&report)).await?;
    }
    Ok(())
}

/// The report as Prometheus samples.
fn metrics(report: &ChargeReport) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    if let Some(open) = &report.open_loop {
        samples.push(("loadtest_charge_sent_total".to_owned(), open.sent as f64));
        for (outcome, count) in &open.outcomes {
            samples.push((
                format!("loadtest_charge_outcomes_total{{outcome=\"{outcome}\"}}"),
                *count as f64,
            ));
        }
        samples.extend(open.latency.samples("loadtest_charge_latency_ms"));
    }
    for hot in &report.hot {
        samples.push((
            format!("loadtest_hot_charges_per_second{{node=\"{}\"}}", hot.label),
            hot.charges_per_second,
        ));
    }
    if let Some(ratio) = report.batched_over_naive {
        samples.push(("loadtest_hot_batched_over_naive".to_owned(), ratio));
    }
    samples
}

fn print(report: &ChargeReport) {
    if let Some(open) = &report.open_loop {
        let mut rows = vec![
            ("targets".to_owned(), open.targets.join(", ")),
            (
                "arrival rate".to_owned(),
                format!("{}/s over {} accounts", open.rate_per_second, open.accounts),
            ),
            (
                "sent".to_owned(),
                format!("{} of {} in {:.1} s", open.sent, open.planned, open.seconds),
            ),
            (
                "latency p50".to_owned(),
                format!("{:.2} ms", open.latency.p50_ms),
            ),
            (
                "latency p95".to_owned(),
                format!("{:.2} ms", open.latency.p95_ms),
            ),
            (
                "latency p99".to_owned(),
                format!("{:.2} ms", open.latency.p99_ms),
            ),
            (
                "latency max".to_owned(),
                format!("{:.2} ms", open.latency.max_ms),
            ),
        ];
        rows.extend(
            open.outcomes
                .iter()
                .map(|(outcome, count)| (format!("outcome {outcome}"), count.to_string())),
        );
        report::table("charge: open loop", &rows);
    }
    for hot in &report.hot {
        let mut rows = vec![
            ("target".to_owned(), hot.target.clone()),
            ("clients".to_owned(), hot.concurrency.to_string()),
            (
                "charges/s".to_owned(),
                format!(
                    "{:.0} ({} in {:.1} s)",
                    hot.charges_per_second, hot.charges_applied, hot.seconds
                ),
            ),
            (
                "latency p50".to_owned(),
                format!("{:.2} ms", hot.latency.p50_ms),
            ),
            (
                "latency p99".to_owned(),
                format!("{:.2} ms", hot.latency.p99_ms),
            ),
        ];
        rows.extend(
            hot.outcomes
                .iter()
                .map(|(outcome, count)| (format!("outcome {outcome}"), count.to_string())),
        );
        report::table(&format!("charge: hot account, {} node", hot.label), &rows);
    }
    if let Some(ratio) = report.batched_over_naive {
        println!("\nhot account, batched / naive: {ratio:.1}x");
    }
}
