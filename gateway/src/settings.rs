//! Typed settings: defaults, then an optional TOML file, then the environment.
//!
//! Environment names: `DATABASE_URL`, `REDIS_URL`, and `HUB_<KEY>` for top-level keys
//! (`HUB_LISTEN`, `HUB_JWT_SECRET`, `HUB_NODE_ID`, `HUB_DEV_MODE`) or `HUB_<SECTION>__<KEY>` for
//! nested ones (`HUB_HTTP__BODY_LIMIT_BYTES`). Secrets are `SecretString`: their `Debug` prints
//! `[REDACTED]`, so settings can be logged whole.

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The name of the environment variable naming a TOML settings file.
pub const CONFIG_ENV: &str = "HUB_CONFIG";

/// `HUB_*` variables that are not settings: the settings file's name and the ones `scripts/run`
/// reads (`HUB_DATA_DIR`, `HUB_PG_PORT`, `HUB_SANDBOX_LISTEN`).
const SCRIPT_VARIABLES: &[&str] = &["config", "data_dir", "pg_port", "sandbox_listen"];

/// The secret used when none is configured in dev mode; never accepted outside dev mode.
const DEV_JWT_SECRET: &str = "dev-mode-only-insecure-jwt-secret-change-me";

/// Everything a gateway node needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// PostgreSQL URL (`DATABASE_URL`). Required to serve.
    pub database_url: Option<SecretString>,
    /// Redis URL (`REDIS_URL`). Without it the node uses the in-process broker.
    pub redis_url: Option<SecretString>,
    /// Prefix of every Redis key this deployment writes (`HUB_REDIS_KEY_PREFIX`), so several
    /// deployments can share one Redis.
    pub redis_key_prefix: String,
    /// Address to listen on (`HUB_LISTEN`).
    pub listen: SocketAddr,
    /// HS256 secret for bearer tokens (`HUB_JWT_SECRET`), at least 32 bytes.
    pub jwt_secret: Option<SecretString>,
    /// Longest lifetime (`exp - iat`) a bearer token may have; longer ones are refused (401) and
    /// `gateway token` will not mint them (`HUB_MAX_TOKEN_TTL_SECS`).
    pub max_token_ttl_secs: u64,
    /// This node's name in logs, metrics and the realtime `node` field (`HUB_NODE_ID`).
    pub node_id: String,
    /// Dev mode (`HUB_DEV_MODE`): pretty logs, the dev login route, a default JWT secret.
    pub dev_mode: bool,
    /// HTTP server limits.
    pub http: HttpSettings,
    /// PostgreSQL pool.
    pub database: DatabaseSettings,
    /// Per-account ledger actors.
    pub ledger: LedgerSettings,
    /// Idempotency keys.
    pub idempotency: IdempotencySettings,
    /// Realtime sessions, channels and history.
    pub realtime: RealtimeSettings,
    /// WeChat Pay and WeChat QR login (`HUB_WECHAT__*`); unset: the payment and WeChat login
    /// routes answer 503 `payments_unavailable`.
    pub wechat: WechatSettings,
    /// Recharges (`HUB_PAYMENTS__*`).
    pub payments: PaymentsSettings,
    /// Recharge risk rules (`HUB_RISK__*`).
    pub risk: RiskSettings,
    /// Product events (`HUB_EVENTS__*`).
    pub events: EventsSettings,
}

/// Product events.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// Events waiting for the writer at most; beyond, they are dropped (and counted).
    pub queue_capacity: usize,
    /// Events per insert at most.
    pub batch_size: usize,
    /// The writer's pause between batches.
    pub flush_interval_ms: u64,
    /// Months of events kept (older monthly partitions are dropped).
    pub retention_months: u32,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            batch_size: 500,
            flush_interval_ms: 200,
            retention_months: 13,
        }
    }
}

/// Recharge risk rules, run before any WeChat call.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskSettings {
    /// Smallest recharge, fen.
    pub min_amount_fen: i64,
    /// Largest recharge, fen.
    pub max_amount_fen: i64,
    /// Largest recharge of an account younger than `new_account_hours`, fen.
    pub new_account_max_fen: i64,
    /// How long an account counts as new, hours.
    pub new_account_hours: i64,
    /// Paid plus pending recharges per user per Beijing day, fen.
    pub daily_cap_fen: i64,
    /// Paid plus pending recharges per user per Beijing month, fen.
    pub monthly_cap_fen: i64,
    /// Orders a user may place per minute.
    pub user_per_minute: i64,
    /// Orders a user may place per hour.
    pub user_per_hour: i64,
    /// Orders one client IP may place per minute.
    pub ip_per_minute: i64,
    /// Pending orders a user may have at once.
    pub max_pending: i64,
    /// A payer openid paying for more accounts than this in 24 h flags their orders for review.
    pub payer_max_accounts: i64,
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            min_amount_fen: 100,
            max_amount_fen: 200_000,
            new_account_max_fen: 20_000,
            new_account_hours: 24,
            daily_cap_fen: 500_000,
            monthly_cap_fen: 2_000_000,
            user_per_minute: 3,
            user_per_hour: 20,
            ip_per_minute: 10,
            max_pending: 3,
            payer_max_accounts: 3,
        }
    }
}

/// WeChat Pay (APIv3, public-key mode) and the website QR login. Every field of a part must be
/// set for that part to run; a part half set is a start-up error naming what is missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatSettings {
    /// WeChat Pay API base.
    pub api_base: String,
    /// QR login page base.
    pub open_base: String,
    /// OAuth token/userinfo base.
    pub sns_base: String,
    /// The website application's AppID (QR login).
    #[serde(deserialize_with = "lenient_string")]
    pub login_appid: Option<String>,
    /// Its secret.
    pub login_secret: Option<SecretString>,
    /// Public URL of `/api/v1/auth/wechat/callback`.
    pub login_redirect_uri: Option<String>,
    /// The AppID bound to the merchant (not the login AppID).
    #[serde(deserialize_with = "lenient_string")]
    pub pay_appid: Option<String>,
    /// The merchant id (a string, even when all digits).
    #[serde(deserialize_with = "lenient_string")]
    pub mchid: Option<String>,
    /// The merchant API certificate's serial number.
    #[serde(deserialize_with = "lenient_string")]
    pub merchant_serial_no: Option<String>,
    /// The merchant's PKCS#8 PEM private key file.
    pub merchant_private_key_file: Option<std::path::PathBuf>,
    /// The WeChat Pay public key id (`PUB_KEY_ID_…`).
    #[serde(deserialize_with = "lenient_string")]
    pub platform_public_key_id: Option<String>,
    /// The WeChat Pay public key (SPKI PEM) file.
    pub platform_public_key_file: Option<std::path::PathBuf>,
    /// The 32-character APIv3 key.
    pub apiv3_key: Option<SecretString>,
    /// Public URL of `/api/v1/payments/wechat/notify` (no query string).
    pub notify_url: Option<String>,
    /// Longest wait for one WeChat answer.
    pub timeout_ms: u64,
    /// Extra attempts after a WeChat 5xx or a transport failure.
    pub retries: u32,
}

impl Default for WechatSettings {
    fn default() -> Self {
        Self {
            api_base: "https://api.mch.weixin.qq.com".into(),
            open_base: "https://open.weixin.qq.com".into(),
            sns_base: "https://api.weixin.qq.com".into(),
            login_appid: None,
            login_secret: None,
            login_redirect_uri: None,
            pay_appid: None,
            mchid: None,
            merchant_serial_no: None,
            merchant_private_key_file: None,
            platform_public_key_id: None,
            platform_public_key_file: None,
            apiv3_key: None,
            notify_url: None,
            timeout_ms: 5_000,
            retries: 2,
        }
    }
}

/// A string setting that may come as a number (`HUB_WECHAT__MCHID=1230000109` is read as one).
fn lenient_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(
        Option::<Lenient>::deserialize(deserializer)?.map(|value| match value {
            Lenient::Text(text) => text,
            Lenient::Unsigned(number) => number.to_string(),
            Lenient::Signed(number) => number.to_string(),
        }),
    )
}

/// Recharges.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsSettings {
    /// Credits granted per fen paid, stored on each order.
    pub credits_per_fen: i64,
    /// An unpaid order's life (`time_expire`), seconds.
    pub order_ttl_secs: u64,
    /// When the daily reconciliation runs for the previous day, Beijing time (`HH:MM`).
    pub reconcile_at: String,
    /// A pending order with no notification is first queried this long after it was placed.
    pub query_after_secs: u64,
    /// How often the query fallback scans for due orders.
    pub query_scan_ms: u64,
    /// Shown in the payer's bill (≤ 127 characters).
    pub description: String,
}

impl Default for PaymentsSettings {
    fn default() -> Self {
        Self {
            credits_per_fen: 1,
            order_ttl_secs: 1_800,
            reconcile_at: "10:30".into(),
            query_after_secs: 60,
            query_scan_ms: 10_000,
            description: "Hub credits".into(),
        }
    }
}

/// Realtime sessions, channels and history.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSettings {
    /// Interval between server pings.
    pub ping_interval_ms: u64,
    /// How long a client has to answer a ping before 3012.
    pub pong_timeout_ms: u64,
    /// How long a client has to send `connect`.
    pub connect_timeout_ms: u64,
    /// Most subscriptions per session.
    pub max_subscriptions: usize,
    /// How long past its token's expiry a session may still refresh (3005 after).
    pub expiry_grace_ms: u64,
    /// Frames queued per session before the client counts as too slow (3008).
    pub outbound_queue: usize,
    /// Largest incoming frame (3506 beyond).
    pub max_frame_bytes: usize,
    /// Read buffer of each WebSocket connection (the largest part of a session's memory).
    pub ws_read_buffer_bytes: usize,
    /// Most connections per node (3504 beyond).
    pub max_connections: usize,
    /// Publications kept per channel for recovery.
    pub history_size: usize,
    /// Oldest publication kept per channel, seconds.
    pub history_ttl_secs: u64,
    /// On shutdown, sessions are closed with 3001 spread over this long, so they do not all
    /// reconnect at once.
    pub drain_spread_ms: u64,
    /// Where channel streams live: `auto` (Redis when `REDIS_URL` is set), `redis`, or `memory`
    /// (one node only).
    pub broker: BrokerKind,
    /// A task's actor stays this long after the task finished.
    pub task_linger_ms: u64,
    /// A task's actor without events stops after this long (it is rebuilt from PostgreSQL).
    pub task_idle_ms: u64,
    /// Longest a single write to a client's socket may take; a client that does not read is
    /// disconnected once a write has waited this long (its slot and queue are freed).
    pub write_timeout_ms: u64,
    /// Frames read from a WebSocket and not yet handled by its session; the transport stops
    /// reading (TCP backpressure) while this many wait.
    pub max_inflight_frames: usize,
    /// Commands a session may send per second, sustained (error 111 beyond).
    pub command_rate: u32,
    /// Commands above the rate a session may send at once; this many refused in a row: 3013.
    pub command_burst: u32,
    /// Errors a session may cause in a burst (one forgiven every 5 s); beyond: 3509.
    pub max_errors: u32,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            max_subscriptions: 128,
            expiry_grace_ms: 25_000,
            outbound_queue: 1_024,
            max_frame_bytes: 64 * 1024,
            ws_read_buffer_bytes: 1024,
            max_connections: 19_000,
            history_size: 100,
            history_ttl_secs: 300,
            drain_spread_ms: 3_000,
            broker: BrokerKind::Auto,
            task_linger_ms: 10_000,
            task_idle_ms: 300_000,
            write_timeout_ms: 10_000,
            max_inflight_frames: 8,
            command_rate: 50,
            command_burst: 100,
            max_errors: 20,
        }
    }
}

/// Which broker backend a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// Redis when configured, in-process otherwise.
    Auto,
    /// Redis (required).
    Redis,
    /// In-process: one node.
    Memory,
}

impl RealtimeSettings {
    /// Task actor timing.
    pub fn tasks(&self) -> hub::task::TaskConfig {
        hub::task::TaskConfig {
            linger: Duration::from_millis(self.task_linger_ms),
            idle: Duration::from_millis(self.task_idle_ms),
        }
    }

    /// Session timing and limits.
    pub fn session(&self) -> hub::session::SessionConfig {
        hub::session::SessionConfig {
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            pong_timeout: Duration::from_millis(self.pong_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_subscriptions: self.max_subscriptions,
            expiry_grace: Duration::from_millis(self.expiry_grace_ms),
            command_rate: self.command_rate,
            command_burst: self.command_burst,
            max_errors: self.max_errors,
            permission_cache: 256,
        }
    }

    /// The socket write deadline.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// History limits per channel.
    pub fn history(&self) -> hub::history::HistoryLimits {
        hub::history::HistoryLimits {
            max_size: self.history_size,
            ttl: Duration::from_secs(self.history_ttl_secs),
        }
    }
}

/// The per-account ledger actors.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSettings {
    /// Most operations per transaction; 1 turns batching off (the naive baseline).
    pub max_batch: usize,
    /// Most operations waiting for one account before 429s.
    pub max_pending: usize,
    /// An account actor idle this long stops.
    pub idle_timeout_ms: u64,
    /// Most accounts whose batches one transaction applies (group commit); 1 turns it off.
    pub max_group: usize,
    /// Group transactions at once (each holds a pooled connection while it runs).
    pub committers: usize,
    /// Money operations (charges, refunds, adjustments, task creation) in flight on the node;
    /// beyond, a request waits at most `max_queue_ms` for a place, then 503.
    pub max_in_flight: usize,
    /// The longest a money operation may queue: longer waits are refused at once with 503 and
    /// `Retry-After` (admission control, `gateway::admission`).
    pub max_queue_ms: u64,
    /// The latency (admission to answer) the admitted money operations are held to: while more
    /// than 5 % take longer, fewer are admitted at once (between 8 and `max_in_flight`); 0 keeps
    /// the limit at `max_in_flight`.
    pub latency_target_ms: u64,
}

/// Idempotency keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long a key and its stored response are kept (at least 24 h by contract).
    pub ttl_hours: u64,
    /// How long an unfinished request holds its key before a retry may take it over.
    pub lease_ms: u64,
    /// How often expired keys are purged.
    pub purge_interval_ms: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        let defaults = domain::ledger::LedgerConfig::default();
        Self {
            max_batch: defaults.max_batch,
            max_pending: defaults.max_pending,
            idle_timeout_ms: defaults.idle_timeout.as_millis() as u64,
            max_group: defaults.max_group,
            committers: defaults.committers,
            max_in_flight: 512,
            max_queue_ms: 50,
            latency_target_ms: 50,
        }
    }
}

impl LedgerSettings {
    /// The actor configuration.
    pub fn config(&self) -> domain::ledger::LedgerConfig {
        domain::ledger::LedgerConfig {
            max_batch: self.max_batch,
            max_pending: self.max_pending,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_group: self.max_group,
            committers: self.committers,
        }
    }
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl_hours: 24,
            lease_ms: 30_000,
            purge_interval_ms: 600_000,
        }
    }
}

impl IdempotencySettings {
    /// The key policy.
    pub fn policy(&self) -> domain::idempotency::KeyPolicy {
        domain::idempotency::KeyPolicy {
            ttl: Duration::from_secs(self.ttl_hours * 3600),
            lease: Duration::from_millis(self.lease_ms),
        }
    }
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Longest time an API request may take before a 408.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests and connections to finish.
    pub shutdown_grace_ms: u64,
    /// Time a client has to send a complete request head, counted from when the connection
    /// waits for a request: a half-sent header (slowloris) and a keep-alive connection idle this
    /// long are both closed.
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte was read or written for this long is closed (a stalled
    /// response to a client that stopped reading, a request body that trickles). WebSocket
    /// connections have their own pings and write deadline.
    pub idle_timeout_ms: u64,
    /// Most TCP connections the node serves at once (WebSocket ones included); beyond, new
    /// connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Proxies whose `X-Forwarded-For` is believed (the client IP of risk rules and audit);
    /// from anyone else the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The PostgreSQL pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Upper bound of pooled connections.
    pub max_connections: u32,
    /// How long a request waits for a connection.
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            redis_url: None,
            redis_key_prefix: "hub".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: None,
            max_token_ttl_secs: 30 * 86_400,
            node_id: default_node_id(),
            dev_mode: false,
            http: HttpSettings::default(),
            database: DatabaseSettings::default(),
            ledger: LedgerSettings::default(),
            idempotency: IdempotencySettings::default(),
            realtime: RealtimeSettings::default(),
            wechat: WechatSettings::default(),
            payments: PaymentsSettings::default(),
            risk: RiskSettings::default(),
            events: EventsSettings::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 20_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: 32,
            acquire_timeout_ms: 3_000,
            migrate_on_start: true,
        }
    }
}

fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

impl Settings {
    /// Loads defaults, then `file` (or `$HUB_CONFIG`) when given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(Into::into));
        let mut figment = Figment::new();
        if let Some(file) = &file {
            if !file.exists() {
                bail!("settings file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("HUB_").ignore(SCRIPT_VARIABLES).split("__"))
            .merge(Env::raw().only(&["database_url", "redis_url"]))
            .extract()
            .context("reading settings (defaults, settings file, HUB_* environment)")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects settings that cannot work, with a message naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(secret) = &self.jwt_secret
            && secret.expose_secret().len() < 32
        {
            bail!("HUB_JWT_SECRET must be at least 32 bytes long");
        }
        if self.http.body_limit_bytes == 0 || self.http.request_timeout_ms == 0 {
            bail!("http.body_limit_bytes and http.request_timeout_ms must be positive");
        }
        if self.http.header_read_timeout_ms == 0
            || self.http.idle_timeout_ms == 0
            || self.http.max_connections == 0
        {
            bail!(
                "http.header_read_timeout_ms, http.idle_timeout_ms and http.max_connections must be positive"
            );
        }
        let realtime = &self.realtime;
        if realtime.write_timeout_ms == 0
            || realtime.max_inflight_frames == 0
            || realtime.command_rate == 0
            || realtime.command_burst == 0
            || realtime.max_errors == 0
        {
            bail!(
                "realtime.write_timeout_ms, max_inflight_frames, command_rate, command_burst and \
                 max_errors must be positive"
            );
        }
        if self.max_token_ttl_secs == 0 {
            bail!("HUB_MAX_TOKEN_TTL_SECS must be positive");
        }
        // A live request's claim must never be taken over: the lease outlasts the request timeout
        // (a timed-out request releases its claim at once; the lease only matters when a node
        // dies with claims in flight).
        if self.idempotency.lease_ms <= self.http.request_timeout_ms {
            bail!(
                "idempotency.lease_ms ({}) must exceed http.request_timeout_ms ({})",
                self.idempotency.lease_ms,
                self.http.request_timeout_ms
            );
        }
        if self.database.max_connections == 0 {
            bail!("database.max_connections must be positive");
        }
        if self.ledger.max_batch == 0
            || self.ledger.max_pending == 0
            || self.ledger.max_group == 0
            || self.ledger.committers == 0
            || self.ledger.max_in_flight == 0
            || self.ledger.max_queue_ms == 0
        {
            bail!(
                "ledger.max_batch, ledger.max_pending, ledger.max_group, ledger.committers, \
                 ledger.max_in_flight and ledger.max_queue_ms must be positive"
            );
        }
        if self.idempotency.ttl_hours < 24 {
            bail!("idempotency.ttl_hours must be at least 24 (the API promises 24 h)");
        }
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(char::is_whitespace) {
            bail!("HUB_REDIS_KEY_PREFIX must be non-empty without whitespace");
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            bail!("HUB_NODE_ID must be 1 to 64 characters");
        }
        let payments = &self.payments;
        if !(1..=1_000_000).contains(&payments.credits_per_fen) {
            bail!("HUB_PAYMENTS__CREDITS_PER_FEN must be between 1 and 1000000");
        }
        if !(60..=7 * 86_400).contains(&payments.order_ttl_secs) {
            bail!("HUB_PAYMENTS__ORDER_TTL_SECS must be between 60 and 604800");
        }
        if payments.query_scan_ms == 0 || payments.query_after_secs == 0 {
            bail!(
                "HUB_PAYMENTS__QUERY_SCAN_MS and HUB_PAYMENTS__QUERY_AFTER_SECS must be positive"
            );
        }
        if payments.description.is_empty() || payments.description.chars().count() > 127 {
            bail!("HUB_PAYMENTS__DESCRIPTION must be 1 to 127 characters");
        }
        if self.risk.min_amount_fen < 1
            || self.risk.max_amount_fen < self.risk.min_amount_fen
            || self.risk.max_amount_fen > shared::payments::MAX_RECHARGE_FEN
        {
            bail!(
                "HUB_RISK__MIN_AMOUNT_FEN and HUB_RISK__MAX_AMOUNT_FEN must satisfy 1 ≤ min ≤ max ≤ 100000000"
            );
        }
        if chrono::NaiveTime::parse_from_str(&payments.reconcile_at, "%H:%M").is_err() {
            bail!("HUB_PAYMENTS__RECONCILE_AT must be HH:MM (Beijing time)");
        }
        Ok(())
    }

    /// The JWT secret: the configured one, the dev default in dev mode, an error otherwise.
    pub fn jwt_secret(&self) -> anyhow::Result<SecretString> {
        match (&self.jwt_secret, self.dev_mode) {
            (Some(secret), _) => Ok(secret.clone()),
            (None, true) => Ok(SecretString::from(DEV_JWT_SECRET)),
            (None, false) => {
                bail!("HUB_JWT_SECRET is required (at least 32 bytes) outside dev mode")
            }
        }
    }

    /// The PostgreSQL URL, or an error saying how to set it.
    pub fn database_url(&self) -> anyhow::Result<&str> {
        self.database_url
            .as_ref()
            .map(|url| url.expose_secret())
            .context("DATABASE_URL is required (e.g. postgres://postgres@127.0.0.1:5432/hub)")
    }

    /// The longest token lifetime accepted.
    pub fn max_token_ttl(&self) -> Duration {
        Duration::from_secs(self.max_token_ttl_secs)
    }

    /// The API request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http.request_timeout_ms)
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.http.shutdown_grace_ms)
    }
}

#[cfg(test)]
// figment::Jail's closures return figment::Error, which is large by figment's design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let settings = Settings {
            database_url: Some("postgres://app:hunter2@db/hub".into()),
            jwt_secret: Some("an-extremely-secret-signing-key-0123456789".into()),
            ..Settings::default()
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("extremely-secret"), "{debug}");
    }

    #[test]
    fn a_short_jwt_secret_is_rejected() {
        let settings = Settings {
            jwt_secret: Some("short".into()),
            ..Settings::default()
        };
        assert!(settings.validate().is_err());
    }

    #[test]
    fn outside_dev_mode_a_jwt_secret_is_required() {
        assert!(Settings::default().jwt_secret().is_err());
        let dev = Settings {
            dev_mode: true,
            ..Settings::default()
        };
        assert!(dev.jwt_secret().is_ok());
    }

    #[test]
    fn toml_file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "hub.toml",
                "node_id = \"from-file\"\nlisten = \"127.0.0.1:9000\"\n[http]\nbody_limit_bytes = 1024\n",
            )?;
            jail.set_env("HUB_NODE_ID", "from-env");
            jail.set_env("HUB_HTTP__REQUEST_TIMEOUT_MS", "500");
            jail.set_env("DATABASE_URL", "postgres://x@y/z");
            let settings =
                Settings::load(Some(Path::new("hub.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.node_id, "from-env");
            assert_eq!(settings.listen.port(), 9000);
            assert_eq!(settings.http.body_limit_bytes, 1024);
            assert_eq!(settings.http.request_timeout_ms, 500);
            assert_eq!(settings.database_url().ok(), Some("postgres://x@y/z"));
            Ok(())
        });
    }

    #[test]
    fn the_scripts_variables_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HUB_DATA_DIR", "/tmp/data");
            jail.set_env("HUB_PG_PORT", "54329");
            jail.set_env("HUB_SANDBOX_LISTEN", "127.0.0.1:8090");
            jail.set_env("HUB_WECHAT__MCHID", "1230000109");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.wechat.mchid.as_deref(), Some("1230000109"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_setting_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hub.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            assert!(Settings::load(Some(Path::new("hub.toml"))).is_err());
            Ok(())
        });
    }
}
