//! `loadtest`: drives hub nodes over the network and reports latency percentiles and outcome
//! mixes. Ctrl-C stops a run early and still prints what was measured.

mod charge;
mod report;
mod tokens;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Load harness for the realtime hub and its credits ledger. It talks to nodes over HTTP and
/// WebSocket only, like any client.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Credit charges: an open-loop phase at a fixed arrival rate over many accounts (latency
    /// p50/p95/p99 and the outcome mix), then a closed-loop hot-account phase measuring charges/s
    /// on a batching node and, with --naive-target, on a node with batching off.
    Charge(charge::ChargeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("open files limit: {limit}");
    }
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nCtrl-C: stopping, reporting what was measured");
            trigger.cancel();
        }
    });
    match cli.scenario {
        Scenario::Charge(args) => charge::run(args, stop).await,
    }
}
