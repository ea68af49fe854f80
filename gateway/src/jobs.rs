//! Periodic jobs run by one node at a time: one small scheduler for every job (the idempotency
//! purge, the payment query and expiry job, the daily reconciliation).
//!
//! A run holds the job's lock: a Redis key with a lease (`SET NX PX`), renewed while the run lasts
//! and released only by its holder; a PostgreSQL advisory lock on one pooled connection when no
//! Redis is configured. Each run gets a **fencing token** (a counter that only grows); the
//! `jobs` row remembers the newest, and a run's writes check theirs in their own transaction
//! ([`check_fence`]), so a holder whose lease ran out (a paused or partitioned node) cannot write
//! after another node took over. The row also keeps the schedule's next run, so a job due once a
//! day runs once a day whichever node gets the lock, and the last run's outcome for
//! `GET /api/v1/jobs` and the metrics.

use crate::state::AppState;
use chrono::{DateTime, NaiveTime, Utc};
use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, Postgres};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// When a job runs.
#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// Every so often.
    Every(Duration),
    /// Once a day at this Beijing time.
    DailyAt(NaiveTime),
}

impl Schedule {
    /// The run after one that started at `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(every) => {
                now + chrono::Duration::from_std(*every).unwrap_or(chrono::Duration::minutes(1))
            }
            Schedule::DailyAt(at) => {
                let Some(beijing) = chrono::FixedOffset::east_opt(8 * 3600) else {
                    return now + chrono::Duration::days(1);
                };
                let local = now.with_timezone(&beijing);
                let today = local.date_naive().and_time(*at);
                let candidate = today
                    .and_local_timezone(beijing)
                    .single()
                    .map(|at| at.with_timezone(&Utc))
                    .unwrap_or(now);
                if candidate > now {
                    candidate
                } else {
                    candidate + chrono::Duration::days(1)
                }
            }
        }
    }
}

/// The run's claim to write: check it in the transaction of every write ([`check_fence`]).
#[derive(Debug, Clone)]
pub struct Fence {
    /// The job.
    pub job: &'static str,
    /// This run's token.
    pub token: i64,
    /// Cancelled when the lock is lost (the lease could not be renewed): stop soon.
    pub lost: CancellationToken,
}

/// Whether `fence` is still the newest of its job; call inside the transaction that writes (it
/// holds a share lock on the job's row, so a newer holder cannot take over until it commits).
pub async fn check_fence(conn: &mut PgConnection, fence: &Fence) -> Result<bool, sqlx::Error> {
    let newest: Option<i64> =
        sqlx::query_scalar("select fence from jobs where name = $1 for share")
            .bind(fence.job)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(newest == Some(fence.token))
}

/// What a run reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// One line for `GET /api/v1/jobs` and the log.
    pub summary: String,
    /// Run again after this instead of at the next scheduled time (e.g. a bill still being made).
    pub retry_in: Option<Duration>,
}

impl Report {
    /// A report that keeps the schedule.
    pub fn done(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            retry_in: None,
        }
    }
}

/// The work of a job.
pub type JobFn =
    Arc<dyn Fn(AppState, Fence) -> BoxFuture<'static, anyhow::Result<Report>> + Send + Sync>;

/// A periodic job.
#[derive(Clone)]
pub struct Job {
    /// Its name (`jobs.name`).
    pub name: &'static str,
    /// When it runs.
    pub schedule: Schedule,
    /// Its lock's lease (renewed every third of it while running).
    pub lease: Duration,
    /// The work.
    pub run: JobFn,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// A held job lock. Dropped without [`JobLock::release`] (a run that panicked or was aborted),
/// it stops renewing (the Redis lease then runs out) and closes its PostgreSQL connection (the
/// advisory lock goes with the session) instead of handing it back to the pool.
pub struct JobLock {
    held: Option<Held>,
    fence: Fence,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if let Some(Held::Postgres { connection, .. }) = self.held.take() {
            drop(connection.detach());
        }
    }
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("fence", &self.fence)
            .finish_non_exhaustive()
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

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                         return redis.call('DEL', KEYS[1]) else return 0 end";

impl JobLock {
    /// Takes job `name`'s lock for `lease` (renewed while held), with a new fencing token; `None`
    /// when another node holds it.
    pub async fn acquire(
        state: &AppState,
        name: &'static str,
        lease: Duration,
    ) -> anyhow::Result<Option<JobLock>> {
        sqlx::query("insert into jobs (name) values ($1) on conflict (name) do nothing")
            .bind(name)
            .execute(&state.db)
            .await?;
        let lost = CancellationToken::new();
        if let Some(mut connection) = state.redis_connection().await? {
            let key = format!("{}:job:{name}", state.settings.redis_key_prefix);
            let token = format!("{}:{}", state.settings.node_id, uuid::Uuid::new_v4());
            let options = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::PX(lease.as_millis() as u64));
            let set: Option<String> = connection.set_options(&key, &token, options).await?;
            if set.is_none() {
                return Ok(None);
            }
            let counter: i64 = connection.incr(format!("{key}:fence"), 1).await?;
            // The counter may be behind the table (a Redis that lost its data): never go back.
            let fence: i64 = sqlx::query_scalar(
                "update jobs set fence = greatest(fence + 1, $2) where name = $1 returning fence",
            )
            .bind(name)
            .bind(counter)
            .fetch_one(&state.db)
            .await?;
            let renewal = tokio::spawn(renew(
                connection.clone(),
                key.clone(),
                token.clone(),
                lease,
                lost.clone(),
            ));
            return Ok(Some(JobLock {
                held: Some(Held::Redis {
                    connection,
                    key,
                    token,
                }),
                fence: Fence {
                    job: name,
                    token: fence,
                    lost,
                },
                renewal: Some(renewal),
            }));
        }
        let mut connection = state.db.acquire().await?;
        let id = advisory_id(name);
        let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(&mut *connection)
            .await?;
        if !locked {
            return Ok(None);
        }
        let fence: i64 =
            sqlx::query_scalar("update jobs set fence = fence + 1 where name = $1 returning fence")
                .bind(name)
                .fetch_one(&mut *connection)
                .await?;
        Ok(Some(JobLock {
            held: Some(Held::Postgres { connection, id }),
            fence: Fence {
                job: name,
                token: fence,
                lost,
            },
            renewal: None,
        }))
    }

    /// Stops renewing and forgets the lock without releasing it, as a node that died mid-run
    /// would (the lease then runs out; for tests of the takeover).
    pub fn abandon(self) {
        // Drop does it: no renewal, and a dead node's session ends with its advisory lock.
        drop(self);
    }

    /// This run's fence.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Gives the lock back (only if still ours).
    pub async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        match self.held.take() {
            None => {}
            Some(Held::Redis {
                mut connection,
                key,
                token,
            }) => {
                let released: Result<i64, _> = redis::Script::new(RELEASE)
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut connection)
                    .await;
                if let Err(error) = released {
                    tracing::warn!(%error, key, "cannot release a job lock; its lease will end");
                }
            }
            Some(Held::Postgres { mut connection, id }) => {
                let query = sqlx::query("select pg_advisory_unlock($1)").bind(id);
                if let Err(error) = connection.execute(query).await {
                    tracing::warn!(%error, "cannot release an advisory lock; closing its connection");
                    connection.detach();
                }
            }
        }
    }
}

/// Renews the lease every third of it; cancels `lost` when the key is no longer ours.
async fn renew(
    mut connection: redis::aio::MultiplexedConnection,
    key: String,
    token: String,
    lease: Duration,
    lost: CancellationToken,
) {
    let script = redis::Script::new(RENEW);
    loop {
        tokio::time::sleep(lease / 3).await;
        let renewed: Result<i64, _> = script
            .key(&key)
            .arg(&token)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut connection)
            .await;
        if !matches!(renewed, Ok(1)) {
            tracing::warn!(
                key,
                "a job lost its lock (lease not renewed); it stops writing"
            );
            lost.cancel();
            return;
        }
    }
}

/// What happened to one attempt to run a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Another node holds the lock.
    Locked,
    /// Not due yet (another node ran it): the next run.
    NotDue(DateTime<Utc>),
    /// Ran: its summary.
    Ran(String),
    /// Ran and failed.
    Failed(String),
}

/// Runs `job` once if this node gets its lock and it is due (or `force`).
pub async fn run_once(state: &AppState, job: &Job, force: bool) -> anyhow::Result<Attempt> {
    let Some(lock) = JobLock::acquire(state, job.name, job.lease).await? else {
        metrics::counter!("jobs_runs_total", "job" => job.name, "outcome" => "locked").increment(1);
        return Ok(Attempt::Locked);
    };
    let attempt = run_locked(state, job, &lock, force).await;
    lock.release().await;
    attempt
}

async fn run_locked(
    state: &AppState,
    job: &Job,
    lock: &JobLock,
    force: bool,
) -> anyhow::Result<Attempt> {
    let now = Utc::now();
    let next: Option<DateTime<Utc>> =
        sqlx::query_scalar("select next_run_at from jobs where name = $1")
            .bind(job.name)
            .fetch_one(&state.db)
            .await?;
    if let Some(next) = next
        && next > now
        && !force
    {
        return Ok(Attempt::NotDue(next));
    }
    sqlx::query(
        "update jobs set running_on = $2, last_started_at = now() where name = $1 and fence = $3",
    )
    .bind(job.name)
    .bind(&state.settings.node_id)
    .bind(lock.fence.token)
    .execute(&state.db)
    .await?;
    let started = Instant::now();
    let result = (job.run)(state.clone(), lock.fence()).await;
    let elapsed = started.elapsed();
    metrics::histogram!("jobs_run_duration_seconds", "job" => job.name)
        .record(elapsed.as_secs_f64());
    let (outcome, summary, next_run) = match &result {
        Ok(report) => (
            "succeeded",
            report.summary.clone(),
            match report.retry_in {
                Some(retry) => now + chrono::Duration::from_std(retry).unwrap_or_default(),
                None => job.schedule.next_after(now),
            },
        ),
        Err(error) => (
            "failed",
            format!("{error:#}"),
            // A failed run is tried again soon, not a day later.
            now + chrono::Duration::minutes(1).min(job.schedule.next_after(now) - now),
        ),
    };
    metrics::counter!("jobs_runs_total", "job" => job.name, "outcome" => outcome).increment(1);
    if outcome == "failed" {
        tracing::warn!(job = job.name, error = %summary, "job failed");
    }
    sqlx::query(
        "update jobs set running_on = null, last_finished_at = now(), last_outcome = $3, \
             last_duration_ms = $4, last_summary = left($5, 1000), next_run_at = $6, \
             runs = runs + 1, failures = failures + ($3 = 'failed')::int \
          where name = $1 and fence = $2",
    )
    .bind(job.name)
    .bind(lock.fence.token)
    .bind(outcome)
    .bind(elapsed.as_millis() as i64)
    .bind(&summary)
    .bind(next_run)
    .execute(&state.db)
    .await?;
    Ok(match result {
        Ok(_) => Attempt::Ran(summary),
        Err(_) => Attempt::Failed(summary),
    })
}

/// Runs `jobs` until shutdown: each is tried when this node believes it due (the `jobs` row,
/// read under the lock, decides), at most one run per job on this node at a time. A job locked by
/// another node is looked at again a few seconds later; one not due when its row says.
pub async fn run_scheduler(state: AppState, jobs: Vec<Job>, shutdown: CancellationToken) {
    let mut due: HashMap<&'static str, DateTime<Utc>> = HashMap::new();
    let mut running: HashMap<&'static str, tokio::task::JoinHandle<DateTime<Utc>>> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                for (_, handle) in running.drain() {
                    handle.abort();
                }
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let finished: Vec<&'static str> = running
            .iter()
            .filter(|(_, handle)| handle.is_finished())
            .map(|(name, _)| *name)
            .collect();
        for name in finished {
            if let Some(handle) = running.remove(name) {
                let next = handle
                    .await
                    .unwrap_or_else(|_| Utc::now() + chrono::Duration::seconds(5));
                due.insert(name, next);
            }
        }
        let now = Utc::now();
        for job in &jobs {
            if running.contains_key(job.name) || due.get(job.name).is_some_and(|at| *at > now) {
                continue;
            }
            let (state, job) = (state.clone(), job.clone());
            let name = job.name;
            running.insert(
                name,
                tokio::spawn(async move {
                    let now = Utc::now();
                    let soon =
                        now + chrono::Duration::seconds(5).min(job.schedule.next_after(now) - now);
                    match run_once(&state, &job, false).await {
                        Ok(Attempt::NotDue(next)) => next,
                        Ok(Attempt::Locked) => soon,
                        // The row now holds the next run; the next look reads it.
                        Ok(Attempt::Ran(_) | Attempt::Failed(_)) => {
                            now + chrono::Duration::seconds(1)
                        }
                        Err(error) => {
                            tracing::warn!(job = job.name, error = %format!("{error:#}"),
                                "cannot run a job");
                            soon
                        }
                    }
                }),
            );
        }
    }
}

/// A job's row as `GET /api/v1/jobs` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct JobStatus {
    /// The job.
    pub name: String,
    /// When it runs next.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The node running it now, if one is.
    pub running_on: Option<String>,
    /// The last run's start.
    pub last_started_at: Option<DateTime<Utc>>,
    /// The last run's end.
    pub last_finished_at: Option<DateTime<Utc>>,
    /// `succeeded` or `failed`.
    pub last_outcome: Option<String>,
    /// How long the last run took.
    pub last_duration_ms: Option<i64>,
    /// What the last run did (or why it failed).
    pub last_summary: Option<String>,
    /// Runs so far.
    pub runs: i64,
    /// Failed runs so far.
    pub failures: i64,
}

/// Every job's row.
pub async fn statuses(db: &sqlx::PgPool) -> Result<Vec<JobStatus>, sqlx::Error> {
    sqlx::query_as::<_, JobStatus>(
        "select name, next_run_at, running_on, last_started_at, last_finished_at, last_outcome, \
                last_duration_ms, last_summary, runs, failures from jobs order by name",
    )
    .fetch_all(db)
    .await
}
