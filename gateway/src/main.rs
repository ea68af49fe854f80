//! The `gateway` binary: parses the command line and settings, starts telemetry, and calls the
//! library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::auth::{TokenKeys, TokenRequest};
use gateway::settings::Settings;
use shared::Role;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Realtime push and session hub: HTTP API, WebSocket/SSE transports and credit ledger.
///
/// Settings come from defaults, then the TOML file given by --config (or HUB_CONFIG), then the
/// environment: DATABASE_URL, REDIS_URL, HUB_LISTEN, HUB_JWT_SECRET, HUB_NODE_ID, HUB_DEV_MODE and
/// HUB_<SECTION>__<KEY> for nested settings.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    /// TOML settings file (overrides defaults; the environment overrides it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API, /metrics, /healthz and /readyz on HUB_LISTEN until SIGTERM or Ctrl-C.
    ///
    /// Applies pending migrations first (unless database.migrate_on_start is false), then drains
    /// in-flight requests for at most http.shutdown_grace_ms on shutdown.
    Serve,
    /// Apply pending database migrations to DATABASE_URL and exit (a no-op when up to date).
    Migrate,
    /// Load demo data (idempotent): users with funded accounts, price rules with task history, and
    /// licenses, so every endpoint can be tried right away. Users: demo (user+creator), alice,
    /// bob, studio (creator), ops (operator), fin (finance), audit (auditor), admin.
    Seed,
    /// Run the WeChat sandbox: a fake WeChat (Pay APIv3, QR login) speaking WeChat's real
    /// protocol with its own keys, generated in DIR on first start. Writes DIR/hub.env, the
    /// settings that point a hub at it (`source` it before `gateway serve`).
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Where the keys, ids and hub.env live.
        #[arg(long, default_value = "target/wechat-sandbox", value_name = "DIR")]
        dir: PathBuf,
        /// The hub's public base URL (for the login redirect and the notify URL).
        #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
        hub: String,
        /// Multiplies WeChat's notification retry schedule (15 s … 6 h); 1 is WeChat's.
        #[arg(long, default_value_t = 1.0)]
        retry_scale: f64,
    },
    /// Play the backend service for a demo node: run every queued task through the public API
    /// (running, progress in steps, succeeded), so tasks created in the console progress live.
    /// Started by `scripts/run`; not for production.
    DemoWorker {
        /// The hub's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
        api: String,
        /// A service token (`gateway token --sub renderer --role service`).
        #[arg(long, env = "DEMO_WORKER_TOKEN", hide_env_values = true)]
        token: String,
        /// Milliseconds between two progress events of a task.
        #[arg(long, default_value_t = 800)]
        step_ms: u64,
    },
    /// Reconcile one Beijing day against WeChat Pay's trade bill (T+1), as the daily job does.
    ///
    /// Exits 0 when the run completed (flagged items are reported, not errors), 0 with a line
    /// saying so when another node holds the reconciliation lock, and 1 when it could not
    /// reconcile (WeChat unreachable, the bill refused or still being made).
    Reconcile {
        /// The Beijing day, YYYY-MM-DD (up to today).
        #[arg(long)]
        date: chrono::NaiveDate,
    },
    /// Import a Phase 1 export (users, balances, tasks with history, licenses; one JSON record
    /// per line, docs/phase1-import.md) into the database. Re-running changes nothing; bad records
    /// are reported with their line and skipped. Exits 1 when a record was rejected.
    ImportPhase1 {
        /// The export file.
        path: PathBuf,
        /// Report what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a signed bearer token (HS256, HUB_JWT_SECRET) for ops and tests.
    Token {
        /// The user or service id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// A role: user, creator, operator, finance, auditor, admin or service. Repeat for more.
        #[arg(long = "role", required = true, value_name = "ROLE")]
        roles: Vec<Role>,
        /// The credit account the token acts on (`account_id` claim; default: the sub).
        #[arg(long, value_name = "ID")]
        account: Option<String>,
        /// Display name used when the user is first provisioned.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        ttl: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(settings).await,
        Command::Sandbox {
            listen,
            dir,
            hub,
            retry_scale,
        } => {
            gateway::telemetry::init(false);
            let config = gateway::wechat_sandbox::prepare(
                &dir,
                &format!("http://{listen}"),
                &hub,
                retry_scale,
            )?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!(
                "WeChat sandbox on http://{listen}; hub settings in {}",
                dir.join("hub.env").display()
            );
            axum::serve(listener, gateway::wechat_sandbox::router(config))
                .with_graceful_shutdown(gateway::shutdown::shutdown_signal())
                .await
                .context("serving the sandbox")
        }
        Command::DemoWorker {
            api,
            token,
            step_ms,
        } => {
            gateway::telemetry::init(false);
            gateway::demo_worker::run(api, token, std::time::Duration::from_millis(step_ms)).await
        }
        Command::ImportPhase1 { path, dry_run } => import_phase1(&settings, &path, dry_run).await,
        Command::Reconcile { date } => {
            gateway::telemetry::init(!settings.dev_mode);
            reconcile(settings, date).await
        }
        Command::Migrate => {
            gateway::telemetry::init(!settings.dev_mode);
            migrated_pool(&settings).await?;
            println!(
                "migrations applied: {} known",
                domain::db::MIGRATOR.iter().count()
            );
            Ok(())
        }
        Command::Seed => {
            let pool = migrated_pool(&settings).await?;
            let report = domain::seed::seed(&pool)
                .await
                .context("seeding demo data")?;
            println!(
                "seeded: {} users ({} funded now), {} price rules, {} historical tasks, {} licenses",
                report.users, report.funded, report.price_rules, report.history, report.licenses
            );
            Ok(())
        }
        Command::Token {
            sub,
            roles,
            account,
            name,
            ttl,
        } => {
            let keys = TokenKeys::new(&settings.jwt_secret()?, settings.max_token_ttl());
            let request = TokenRequest {
                sub,
                roles,
                account_id: account,
                name,
                ttl_seconds: ttl,
            };
            let (token, _) = keys.mint(&request)?;
            println!("{token}");
            Ok(())
        }
    }
}

/// A small pool for the one-shot commands, with every migration applied.
async fn migrated_pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let options = domain::db::PoolOptions {
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(10),
    };
    let pool = domain::db::connect_lazy(settings.database_url()?, &options)?;
    domain::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    Ok(pool)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    gateway::telemetry::init(!settings.dev_mode);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
    tracing::info!(?settings, "starting");
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        gateway::shutdown::shutdown_signal().await;
        trigger.cancel();
    });
    gateway::launch(settings, listener, shutdown).await
}

async fn reconcile(settings: Settings, date: chrono::NaiveDate) -> anyhow::Result<()> {
    use gateway::reconcile::ReconcileError;
    if date > gateway::reconcile::beijing_today() {
        anyhow::bail!("{date} has not happened yet in Beijing");
    }
    let pool = migrated_pool(&settings).await?;
    let state = gateway::state::AppState::with_pool(settings, pool).await?;
    let result = gateway::reconcile::reconcile_locked(&state, date).await;
    state.ledger.stop();
    match result {
        Ok(run) => {
            println!(
                "{date}: {} (matched {}, missing_local {}, missing_remote {}, amount_mismatch {}; {} bill rows)",
                run.status,
                run.counts.matched,
                run.counts.missing_local,
                run.counts.missing_remote,
                run.counts.amount_mismatch,
                run.bill_rows
            );
            for item in run.items.iter().filter(|item| item.class != "matched") {
                println!(
                    "  {} {} order {} here {:?} fen, bill {:?} fen: {}",
                    item.class,
                    item.out_trade_no,
                    item.order_id.as_deref().unwrap_or("-"),
                    item.local_amount_fen,
                    item.bill_amount_fen,
                    item.action
                );
            }
            Ok(())
        }
        Err(ReconcileError::Locked) => {
            println!("{date}: another node holds the reconciliation lock; nothing done here");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

async fn import_phase1(
    settings: &Settings,
    path: &std::path::Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let pool = migrated_pool(settings).await?;
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Only a terminal gets the bar (indicatif hides it otherwise).
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let report = domain::import::import(&pool, std::io::BufReader::new(file), dry_run, |read| {
        bar.set_position(read)
    })
    .await
    .context("importing")?;
    bar.finish_and_clear();
    let verb = if dry_run { "would apply" } else { "applied" };
    println!(
        "{} records: {verb} {}, unchanged {}, rejected {}",
        report.records,
        report.applied,
        report.unchanged,
        report.rejected.len()
    );
    for (line, reason) in &report.rejected {
        println!("  line {line}: {reason}");
    }
    if report.rejected.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} records rejected", report.rejected.len())
    }
}
