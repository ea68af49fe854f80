//! Connection pool, embedded migrations and the migration status `/readyz` reports.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing.
    pub acquire_timeout: Duration,
}

/// Opens a pool without waiting for a first connection (so a node can start and report
/// PostgreSQL as down in `/readyz` instead of refusing to start).
pub fn connect_lazy(url: &str, options: &PoolOptions) -> Result<PgPool, sqlx::Error> {
    // Generic plans: every statement here is a keyed lookup or a fixed-shape write whose best
    // plan does not depend on the parameters, and re-planning the ledger's batch statement on
    // each execution (PostgreSQL's custom plans) costs a third of the database's CPU per charge.
    let connect = PgConnectOptions::from_str(url)?
        .application_name("hub-gateway")
        .options([("plan_cache_mode", "force_generic_plan")]);
    Ok(PgPoolOptions::new()
        // No ping before every checkout (a round trip per request): a dead connection fails its
        // query, which maps to 503, and the pool replaces it.
        .test_before_acquire(false)
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(connect))
}

/// Applies every pending migration (a no-op when all are applied). Concurrent callers are
/// serialized by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Versions of the embedded migrations that the database has not applied successfully.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let applied: Vec<i64> = match sqlx::query("select version from _sqlx_migrations where success")
        .fetch_all(pool)
        .await
    {
        Ok(rows) => rows.iter().map(|row| row.get::<i64, _>(0)).collect(),
        // 42P01: the table does not exist yet: nothing applied.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Vec::new(),
        Err(error) => return Err(error),
    };
    Ok(MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect())
}
