//! The one `AppState` every handler receives: cheap to clone, everything behind `Arc`s.

use crate::auth::TokenKeys;
use crate::error::{ApiError, database_error};
use crate::license_cache::LicenseCache;
use crate::permissions::PermissionMatrix;
use crate::realtime::Realtime;
use crate::realtime::authority::GatewayAuthority;
use crate::settings::{BrokerKind, Settings};
use anyhow::Context;
use dashmap::DashSet;
use domain::DomainError;
use domain::identity::Principal;
use domain::ledger::Ledger;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Upper bound of the provisioned-ids cache; past it the cache starts over (a miss only costs one
/// idempotent insert).
const PROVISIONED_CACHE_LIMIT: usize = 100_000;

/// Shared state of a gateway node.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Settings the node started with.
    pub settings: Arc<Settings>,
    /// PostgreSQL pool.
    pub db: PgPool,
    /// Redis client, when `REDIS_URL` is set.
    pub redis: Option<redis::Client>,
    /// Token signing and verification.
    pub tokens: Arc<TokenKeys>,
    /// The permission matrix.
    pub permissions: Arc<PermissionMatrix>,
    /// Per-account ledger actors.
    pub ledger: Ledger,
    /// License check cache (Redis; inert without it).
    pub license_cache: LicenseCache,
    /// Broker and sessions.
    pub realtime: Realtime,
    /// Task actors.
    pub tasks: hub::task::Tasks,
    /// What sessions ask the gateway.
    pub authority: Arc<GatewayAuthority>,
    /// Product events: where requests put them.
    pub events: crate::events::EventSink,
    /// WeChat Pay and WeChat login, where configured.
    pub wechat: crate::payments::SharedWechat,
    /// Invariant: false until shutdown starts, then true for good.
    pub draining: Arc<AtomicBool>,
    /// Admission control of money operations (`gateway::admission`).
    pub admission: Arc<crate::admission::Admission>,
    /// Idempotency-key claims, made together for concurrent requests.
    pub claims: domain::idempotency::Claimer,
    /// Invariant: every (user, account) pair in it has a `users` row and, unless the account is
    /// empty (a service), an account that user owns; pairs are only inserted after their
    /// provisioning transaction committed.
    provisioned: Arc<DashSet<(String, String)>>,
    /// Account id → owner (an account's owner never changes), for publishing balances on the
    /// owner's channel; bounded like `provisioned`.
    account_owners: Arc<dashmap::DashMap<String, String>>,
}

impl AppState {
    /// Builds the state: opens the pool (lazily) and the Redis client, reads the matrix.
    pub async fn new(settings: Settings) -> anyhow::Result<Self> {
        let db = domain::db::connect_lazy(
            settings.database_url()?,
            &domain::db::PoolOptions {
                max_connections: settings.database.max_connections,
                acquire_timeout: Duration::from_millis(settings.database.acquire_timeout_ms),
            },
        )
        .context("parsing DATABASE_URL")?;
        Self::with_pool(settings, db).await
    }

    /// Builds the state around an existing pool (tests pass the pool of their database).
    pub async fn with_pool(settings: Settings, db: PgPool) -> anyhow::Result<Self> {
        let redis = settings
            .redis_url
            .as_ref()
            .map(|url| redis::Client::open(url.expose_secret()))
            .transpose()
            .context("parsing REDIS_URL")?;
        let wechat = Arc::new(crate::payments::Wechat::from_settings(&settings.wechat)?);
        let (events, event_queue) = crate::events::EventSink::new(&settings.events)?;
        tokio::spawn(crate::events::run_writer(
            db.clone(),
            event_queue,
            settings.events.clone(),
        ));
        let tokens = Arc::new(TokenKeys::new(
            &settings.jwt_secret()?,
            settings.max_token_ttl(),
        ));
        let permissions = Arc::new(PermissionMatrix::builtin()?);
        let ledger = Ledger::start(db.clone(), settings.ledger.config()).await?;
        let license_cache = LicenseCache::new(redis.clone(), &settings.redis_key_prefix);
        let broker_redis = match settings.realtime.broker {
            BrokerKind::Memory => None,
            BrokerKind::Auto => redis.clone(),
            BrokerKind::Redis => Some(
                redis
                    .clone()
                    .context("realtime.broker = redis needs REDIS_URL")?,
            ),
        };
        let realtime =
            Realtime::start(&settings.realtime, broker_redis, &settings.redis_key_prefix).await?;
        let tasks = hub::task::Tasks::start(
            db.clone(),
            ledger.clone(),
            realtime.broker.clone(),
            settings.node_id.clone(),
            settings.realtime.tasks(),
        )
        .await?;
        let authority = Arc::new(GatewayAuthority {
            tokens: tokens.clone(),
            permissions: permissions.clone(),
            db: db.clone(),
            events: events.clone(),
        });
        let target = settings.ledger.latency_target_ms;
        let admission = Arc::new(crate::admission::Admission::new(
            settings.ledger.max_in_flight,
            Duration::from_millis(settings.ledger.max_queue_ms),
            (target > 0).then(|| Duration::from_millis(target)),
        ));
        let claims = domain::idempotency::Claimer::start(db.clone(), 2, 256);
        Ok(Self {
            claims,
            realtime,
            tasks,
            authority,
            ledger,
            license_cache,
            settings: Arc::new(settings),
            db,
            redis,
            tokens,
            permissions,
            wechat,
            events,
            draining: Arc::new(AtomicBool::new(false)),
            admission,
            provisioned: Arc::new(DashSet::new()),
            account_owners: Arc::default(),
        })
    }

    /// A connection to Redis within two seconds; `None` when no Redis is configured.
    pub async fn redis_connection(
        &self,
    ) -> Result<Option<redis::aio::MultiplexedConnection>, redis::RedisError> {
        let Some(client) = &self.redis else {
            return Ok(None);
        };
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))?
        .map(Some)
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Creates the caller's user and account the first time this node sees them.
    /// A token naming an account another user owns is refused (403): the `account_id` claim is
    /// honoured only for the user's own accounts.
    pub async fn provision(&self, principal: &Principal) -> Result<(), ApiError> {
        let cache_key = (
            principal.user_id.clone(),
            principal.account_id.clone().unwrap_or_default(),
        );
        if self.provisioned.contains(&cache_key) {
            return Ok(());
        }
        let owned = domain::identity::provision(&self.db, principal)
            .await
            .map_err(|error| match error {
                DomainError::Database(source) => database_error(source),
                other => ApiError::from(other),
            })?;
        if !owned {
            return Err(ApiError::forbidden(
                "the token's account_id names an account its user does not own",
            ));
        }
        if self.provisioned.len() >= PROVISIONED_CACHE_LIMIT {
            self.provisioned.clear();
        }
        self.provisioned.insert(cache_key);
        Ok(())
    }

    /// The user who owns `account_id` (`None`: no such account, or the database is away).
    pub async fn account_owner(&self, account_id: &str) -> Option<String> {
        if let Some(owner) = self.account_owners.get(account_id) {
            return Some(owner.clone());
        }
        let owner: String =
            sqlx::query_scalar("select owner_id from credit_accounts where id = $1")
                .bind(account_id)
                .fetch_optional(&self.db)
                .await
                .ok()??;
        if self.account_owners.len() >= PROVISIONED_CACHE_LIMIT {
            self.account_owners.clear();
        }
        self.account_owners
            .insert(account_id.to_owned(), owner.clone());
        Some(owner)
    }
}
