//! `loadtest`: drives hub nodes over the network and reports latency percentiles and outcome
//! mixes. Ctrl-C stops a run early and still prints what was measured.

mod charge;
mod chart;
mod pushgateway;
mod realtime;
mod report;
mod session;
mod soak;
mod tally;
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
    /// Realtime sessions: ramp N WebSocket or SSE sessions at a set rate over the targets (from
    /// 127.0.0.1 … 127.0.0.N source addresses), hold them, and report join errors and the
    /// servers' resident memory per session (from their /metrics before and after).
    Connections(realtime::ConnectionsArgs),
    /// Push latency: N sessions on the targets, each on its personal channel (and optionally
    /// shared task channels); a publisher posts at a fixed rate through --publish-target (another
    /// node, to cross Redis). Latency from each publication's `ts`: p50/p95/p99/max, lost and
    /// duplicated counts.
    Push(realtime::PushArgs),
    /// Fan-out: one channel with M subscribers; time from each publish to its last delivery.
    Fanout(realtime::FanoutArgs),
    /// Reconnect storm: all sessions drop their sockets at once and reconnect recovering while
    /// publications continue; lost and duplicated events, and the time until every session is back.
    ReconnectStorm(realtime::StormArgs),
    /// Soak: connection churn, publishing, slow readers and command floods for a set duration;
    /// the nodes' memory, descriptors, actors and queue depths over time.
    Soak(soak::SoakArgs),
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
        Scenario::Connections(args) => realtime::connections(args, stop).await,
        Scenario::Push(args) => realtime::push(args, stop).await,
        Scenario::Fanout(args) => realtime::fanout(args, stop).await,
        Scenario::ReconnectStorm(args) => realtime::reconnect_storm(args, stop).await,
        Scenario::Soak(args) => soak::run(args, stop).await,
    }
}
