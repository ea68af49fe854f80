//! Redis cache of license check decisions, shared by every node.
//!
//! Each (subject, resource) has a version counter in Redis; a decision is cached under the
//! version it was computed at. A change to a license bumps the version after its transaction
//! committed, so every node's next check misses and reads PostgreSQL: a revoke is seen at once
//! everywhere. A decision computed from old data is stored under the old version and never read.
//! Entries also expire at the next validity boundary (or after `MAX_TTL`). Without Redis, or when
//! it fails, checks go to PostgreSQL.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use shared::licenses::LicenseCheck;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Longest time a decision is cached.
const MAX_TTL: Duration = Duration::from_secs(30);
/// Longest time a cache call may take before the check falls back to PostgreSQL.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// The cache; inert without Redis.
#[derive(Clone, Default)]
pub struct LicenseCache {
    client: Option<redis::Client>,
    prefix: String,
    connection: std::sync::Arc<OnceCell<ConnectionManager>>,
}

impl std::fmt::Debug for LicenseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseCache")
            .field("enabled", &self.client.is_some())
            .finish()
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A cached decision.
    Hit(LicenseCheck),
    /// Nothing cached at this version; store the decision with it.
    Miss(i64),
    /// No cache (no Redis, or Redis failed).
    Off,
}

impl LicenseCache {
    /// A cache over `client` (none: disabled), its keys under `prefix`.
    pub fn new(client: Option<redis::Client>, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            connection: Default::default(),
        }
    }

    fn version_key(&self, subject: &str, resource: &str) -> String {
        format!(
            "{}:license:version:{subject}:{}:{resource}",
            self.prefix,
            resource.len()
        )
    }

    fn entry_prefix(&self, subject: &str, resource: &str, action: &str) -> String {
        format!(
            "{}:license:check:{subject}:{}:{resource}:{action}:",
            self.prefix,
            resource.len()
        )
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let client = self.client.as_ref()?;
        let connection = self
            .connection
            .get_or_try_init(|| async {
                tokio::time::timeout(CALL_TIMEOUT * 4, client.get_connection_manager())
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))
                    })?
            })
            .await;
        match connection {
            Ok(connection) => Some(connection.clone()),
            Err(error) => {
                tracing::warn!(%error, "license cache: Redis unavailable, checking PostgreSQL");
                None
            }
        }
    }

    /// Looks a decision up.
    pub async fn lookup(&self, subject: &str, resource: &str, action: &str) -> Lookup {
        let Some(mut connection) = self.connection().await else {
            return Lookup::Off;
        };
        let script = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) or '0' \
             return {v, redis.call('GET', KEYS[2] .. v)}",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.version_key(subject, resource))
            .key(self.entry_prefix(subject, resource, action));
        let call = invocation.invoke_async::<(String, Option<String>)>(&mut connection);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok((version, cached))) => {
                let version = version.parse().unwrap_or(0);
                match cached
                    .and_then(|json: String| serde_json::from_str::<LicenseCheck>(&json).ok())
                {
                    Some(check) => Lookup::Hit(check),
                    None => Lookup::Miss(version),
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "license cache lookup failed");
                Lookup::Off
            }
            Err(_) => Lookup::Off,
        }
    }

    /// Stores a decision computed at `version`, until `boundary` (capped at `MAX_TTL`).
    pub async fn store(
        &self,
        key: (&str, &str, &str),
        version: i64,
        check: &LicenseCheck,
        boundary: Option<DateTime<Utc>>,
    ) {
        let ttl = boundary
            .and_then(|boundary| (boundary - Utc::now()).to_std().ok())
            .map_or(MAX_TTL, |until| until.min(MAX_TTL));
        if ttl < Duration::from_millis(1) {
            return;
        }
        let Some(mut connection) = self.connection().await else {
            return;
        };
        let Ok(json) = serde_json::to_string(check) else {
            return;
        };
        let (subject, resource, action) = key;
        let entry = format!("{}{version}", self.entry_prefix(subject, resource, action));
        let mut command = redis::cmd("SET");
        command
            .arg(entry)
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let set = command.query_async::<()>(&mut connection);
        if let Ok(Err(error)) = tokio::time::timeout(CALL_TIMEOUT, set).await {
            tracing::warn!(%error, "license cache store failed");
        }
    }

    /// Makes every node's next check of (subject, resource) read PostgreSQL. Call after commit.
    pub async fn invalidate(&self, subject: &str, resource: &str) {
        let Some(mut connection) = self.connection().await else {
            return;
        };
        let mut command = redis::cmd("INCR");
        command.arg(self.version_key(subject, resource));
        let bump = command.query_async::<i64>(&mut connection);
        match tokio::time::timeout(CALL_TIMEOUT * 4, bump).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, subject, resource, "license cache invalidation failed; entries expire within 30 s")
            }
            Err(_) => tracing::error!(
                subject,
                resource,
                "license cache invalidation timed out; entries expire within 30 s"
            ),
        }
    }
}
