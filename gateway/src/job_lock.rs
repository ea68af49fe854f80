//! A lock that lets one node at a time run a periodic job: a Redis key with a lease (`SET NX PX`,
//! released only by its holder) when Redis is configured, a PostgreSQL advisory lock held on one
//! pooled connection otherwise. A node that dies mid-run frees the Redis lock when the lease ends
//! and the advisory lock when its connection drops.

use crate::state::AppState;
use redis::AsyncCommands;
use sqlx::pool::PoolConnection;
use sqlx::{Executor, Postgres};
use std::time::Duration;

/// A held job lock; [`JobLock::release`] it when the run ends.
pub struct JobLock {
    held: Held,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.held {
            Held::Redis { .. } => "redis",
            Held::Postgres { .. } => "postgres",
        };
        f.debug_struct("JobLock").field("kind", &kind).finish()
    }
}

enum Held {
    Redis {
        connection: redis::aio::MultiplexedConnection,
        key: String,
        token: String,
    },
    Postgres {
        connection: PoolConnection<Postgres>,
        id: i64,
    },
}

/// The advisory lock id of a job name (stable across nodes and builds: FNV-1a).
fn advisory_id(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl JobLock {
    /// Takes the lock of job `name` for at most `lease`, or `None` when another node holds it.
    pub async fn acquire(
        state: &AppState,
        name: &str,
        lease: Duration,
    ) -> anyhow::Result<Option<JobLock>> {
        if let Some(client) = &state.redis {
            let mut connection = tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection(),
            )
            .await??;
            let key = format!("{}:job:{name}", state.settings.redis_key_prefix);
            let token = format!("{}:{}", state.settings.node_id, uuid::Uuid::new_v4());
            let options = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::PX(lease.as_millis() as u64));
            let set: Option<String> = connection.set_options(&key, &token, options).await?;
            return Ok(set.map(|_| JobLock {
                held: Held::Redis {
                    connection,
                    key,
                    token,
                },
            }));
        }
        let mut connection = state.db.acquire().await?;
        let id = advisory_id(name);
        let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(&mut *connection)
            .await?;
        Ok(locked.then_some(JobLock {
            held: Held::Postgres { connection, id },
        }))
    }

    /// Gives the lock back (only if still ours: a lease that ran out may belong to another node).
    pub async fn release(self) {
        match self.held {
            Held::Redis {
                mut connection,
                key,
                token,
            } => {
                let script = redis::Script::new(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) else return 0 end",
                );
                let released: Result<i64, _> = script
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut connection)
                    .await;
                if let Err(error) = released {
                    tracing::warn!(%error, key, "cannot release a job lock; its lease will end");
                }
            }
            Held::Postgres { mut connection, id } => {
                let query = sqlx::query("select pg_advisory_unlock($1)").bind(id);
                if let Err(error) = connection.execute(query).await {
                    tracing::warn!(%error, "cannot release an advisory lock; closing its connection");
                    connection.detach();
                }
            }
        }
    }
}
