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
    /// Ramp mode, instead of one rate and the hot phase: open loops at `START:STEP:END` charges
    /// per second, `--ramp-step-seconds` each; per step the accepted rate, the P50/P95/P99 of the
    /// accepted charges and the outcome mix, so the knee of the curve shows.
    #[arg(long, value_name = "START:STEP:END")]
    ramp: Option<String>,
    /// Ramp mode: seconds per step.
    #[arg(long, default_value_t = 10)]
    ramp_step_seconds: u64,
    /// Ramp mode: draw the curve (accepted rate and latency against the offered rate) as SVG.
    #[arg(long, value_name = "FILE")]
    ramp_chart: Option<PathBuf>,
    /// Only provision and fund the accounts (so a measured run can start on a settled database).
    #[arg(long)]
    setup_only: bool,
}

/// `START:STEP:END` as the rates of a ramp.
fn ramp_rates(spec: &str) -> anyhow::Result<Vec<u64>> {
    let parts: Vec<u64> = spec
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--ramp is START:STEP:END in charges per second"))?;
    let [start, step, end] = parts[..] else {
        anyhow::bail!("--ramp is START:STEP:END in charges per second");
    };
    anyhow::ensure!(
        start > 0 && step > 0 && end >= start && (end - start) / step < 100,
        "--ramp needs 0 < START <= END and at most 100 steps"
    );
    Ok((0..=(end - start) / step)
        .map(|n| start + n * step)
        .collect())
}

#[derive(Debug, Serialize)]
struct OpenLoopReport {
    targets: Vec<String>,
    rate_per_second: u64,
    planned: u64,
    sent: u64,
    seconds: f64,
    accounts: usize,
    /// Every answer's latency (from its scheduled send).
    latency: Latency,
    /// The latency of the charges accepted (2xx).
    accepted_latency: Latency,
    /// How late each charge left the generator (from its scheduled send to the start of its
    /// request): the part of the latency that is the generator's own, when it is short of CPU.
    send_lag: Latency,
    /// Charges accepted (2xx) per second of the step.
    accepted_per_second: f64,
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
    /// Ramp mode: one open loop per offered rate.
    ramp: Vec<OpenLoopReport>,
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
            // 503 is the node shedding load (nothing done, retry later), not a failure.
            if status >= 500 && status != 503 {
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

/// Sends a request again while the node sheds load (503, 429), after its `Retry-After` (at most
/// 2 s), up to 60 times, as a well-behaved client does; the same idempotency key makes it safe.
async fn until_admitted<F, Fut>(send: F) -> anyhow::Result<reqwest::Response>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    for _ in 0..60 {
        let response = send().await?;
        let status = response.status().as_u16();
        if status != 503 && status != 429 {
            return Ok(response);
        }
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1)
            .min(2);
        let _ = response.bytes().await;
        tokio::time::sleep(Duration::from_millis(200 + wait * 300)).await;
    }
    anyhow::bail!("the node kept shedding load")
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
            let me = until_admitted(|| {
                client
                    .get(format!("{target}/api/v1/sessions/me"))
                    .bearer_auth(&token)
                    .send()
            })
            .await?;
            anyhow::ensure!(me.status().is_success(), "provisioning {user}: {}", me.status());
            let body = serde_json::json!({"account_id": user, "amount": fund, "reason": "loadtest funding"});
            let funded = until_admitted(|| {
                client
                    .post(format!("{target}/api/v1/credits/adjust"))
                    .bearer_auth(finance.as_str())
                    .header("idempotency-key", format!("loadtest-fund-{user}"))
                    .json(&body)
                    .send()
            })
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
    (rate, duration): (u64, u64),
    client: &reqwest::Client,
    users: &[(String, String)],
    run: &str,
    stop: &CancellationToken,
) -> OpenLoopReport {
    let planned = rate * duration;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let histogram = Arc::new(Mutex::new(report::histogram()));
    let accepted = Arc::new(Mutex::new(report::histogram()));
    let lag = Arc::new(Mutex::new(report::histogram()));
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
        let (histogram, accepted, lag, outcomes, progress) = (
            histogram.clone(),
            accepted.clone(),
            lag.clone(),
            outcomes.clone(),
            progress.clone(),
        );
        let amount = args.amount;
        tasks.spawn(async move {
            if let Ok(mut lag) = lag.lock() {
                report::record(&mut lag, scheduled.elapsed());
            }
            let outcome = charge(&client, &target, &token, &key, amount).await;
            let latency = scheduled.elapsed();
            if let Ok(mut histogram) = histogram.lock() {
                report::record(&mut histogram, latency);
            }
            if outcome.starts_with('2')
                && let Ok(mut accepted) = accepted.lock()
            {
                report::record(&mut accepted, latency);
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
    let latency_of = |histogram: &Mutex<Histogram<u64>>| {
        histogram
            .lock()
            .map(|h| Latency::of(&h))
            .unwrap_or_else(|_| Latency::of(&report::histogram()))
    };
    let accepted_latency = latency_of(&accepted);
    OpenLoopReport {
        targets: args.targets.clone(),
        rate_per_second: rate,
        planned,
        sent,
        seconds,
        accounts: users.len(),
        latency: latency_of(&histogram),
        accepted_per_second: accepted_latency.count as f64 / seconds.max(0.001),
        accepted_latency,
        send_lag: latency_of(&lag),
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
    if args.setup_only {
        let hot_user = format!("{}-hot", args.prefix);
        let hot_users = [(hot_user.clone(), minter.token(&hot_user, &["user"])?)];
        setup(
            &client,
            &args.targets[0],
            &minter,
            &hot_users,
            1_000_000_000_000,
            &stop,
        )
        .await?;
        println!("set up {} accounts and the hot account", users.len());
        return Ok(());
    }
    let mut ramp = Vec::new();
    if let Some(spec) = &args.ramp {
        for rate in ramp_rates(spec)? {
            if stop.is_cancelled() {
                break;
            }
            let step_run = format!("{run}-r{rate}");
            let step = (rate, args.ramp_step_seconds);
            ramp.push(open_loop(&args, step, &client, &users, &step_run, &stop).await);
        }
        if let Some(path) = &args.ramp_chart {
            crate::chart::write_ramp(path, &ramp_points(&ramp))?;
        }
    }
    let open = if args.ramp.is_none() && args.duration > 0 && !stop.is_cancelled() {
        let step = (args.rate, args.duration);
        Some(open_loop(&args, step, &client, &users, &run, &stop).await)
    } else {
        None
    };

    let mut hot = Vec::new();
    if args.ramp.is_none() && args.hot_duration > 0 {
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
        ramp,
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

/// The ramp's steps as chart points.
fn ramp_points(steps: &[OpenLoopReport]) -> Vec<crate::chart::RampPoint> {
    steps
        .iter()
        .map(|step| {
            let count = |pick: &dyn Fn(&str) -> bool| {
                step.outcomes
                    .iter()
                    .filter(|(outcome, _)| pick(outcome))
                    .map(|(_, n)| *n)
                    .sum::<u64>() as f64
                    / step.seconds.max(0.001)
            };
            crate::chart::RampPoint {
                offered: step.rate_per_second as f64,
                accepted: step.accepted_per_second,
                shed: count(&|outcome| outcome == "503" || outcome == "429"),
                failed: count(&|outcome| outcome == "5xx" || outcome.starts_with("error")),
                p50_ms: step.accepted_latency.p50_ms,
                p95_ms: step.accepted_latency.p95_ms,
                p99_ms: step.accepted_latency.p99_ms,
            }
        })
        .collect()
}

/// The report as Prometheus samples.
fn metrics(report: &ChargeReport) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for step in &report.ramp {
        let rate = step.rate_per_second;
        samples.push((
            format!("loadtest_charge_ramp_accepted_per_second{{offered=\"{rate}\"}}"),
            step.accepted_per_second,
        ));
        samples.push((
            format!("loadtest_charge_ramp_p95_ms{{offered=\"{rate}\"}}"),
            step.accepted_latency.p95_ms,
        ));
    }
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
            (
                "send lag p95".to_owned(),
                format!(
                    "{:.2} ms (the generator's own lateness)",
                    open.send_lag.p95_ms
                ),
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
    if !report.ramp.is_empty() {
        println!("\ncharge: ramp (latency of accepted charges, from their scheduled send)");
        println!(
            "{:>9} {:>10} {:>9} {:>9} {:>9} {:>12}  outcomes",
            "offered/s", "accepted/s", "p50 ms", "p95 ms", "p99 ms", "send lag p95"
        );
        for step in &report.ramp {
            let mix: Vec<String> = step
                .outcomes
                .iter()
                .map(|(outcome, count)| format!("{outcome}: {count}"))
                .collect();
            println!(
                "{:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>12.2}  {}",
                step.rate_per_second,
                step.accepted_per_second,
                step.accepted_latency.p50_ms,
                step.accepted_latency.p95_ms,
                step.accepted_latency.p99_ms,
                step.send_lag.p95_ms,
                mix.join(", ")
            );
        }
    }
}
