//! Group commit across accounts. An account actor hands its ready batch to the committer and
//! waits; a few committer tasks each take every batch that is waiting (up to `max_group`
//! accounts), apply them in one transaction, in account-id order (so two nodes lock accounts in
//! the same order and cannot deadlock), and commit once: one WAL flush for many accounts instead
//! of one per account. Each account keeps its own outcome: when the database refuses one
//! account's part, the transaction is rolled back, that account alone is answered with the error
//! (its actor then applies its requests one by one) and the others are applied again without it.
//!
//! Per-account order is the actor's: an actor has at most one batch here at a time.

use super::store::{self, GroupFailure};
use super::{LedgerRequest, Outcome};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc, oneshot};

/// One account's ready batch, waiting for a committer.
struct Job {
    account_id: String,
    batch: Vec<LedgerRequest>,
    queued_at: Instant,
    reply: oneshot::Sender<Committed>,
}

/// A batch back from the committer with its result (the requests come back for the actor's
/// one-by-one retry).
pub(crate) struct Committed {
    /// The batch, as handed in.
    pub batch: Vec<LedgerRequest>,
    /// One outcome per request, or why nothing of the batch was committed.
    pub result: Result<Vec<Outcome>, sqlx::Error>,
}

/// The batch was lost with its committer (a panic): nothing of it is known to be committed.
#[derive(Debug)]
pub(crate) struct Lost;

/// The committer tasks and their queue.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<Job>,
    depth: Arc<AtomicUsize>,
    delay: Arc<Delay>,
}

/// How long batches wait for a committer, as last seen: the wait of the oldest batch of the
/// latest group and when that group started (microseconds since `base`), and how many committers
/// are applying a group now.
#[derive(Debug)]
struct Delay {
    base: Instant,
    committers: usize,
    busy: AtomicUsize,
    last_wait_us: AtomicU64,
    last_start_us: AtomicU64,
}

/// A wait seen longer ago than this says nothing about now.
const FRESH: Duration = Duration::from_millis(100);

impl Delay {
    fn new(committers: usize) -> Self {
        Self {
            base: Instant::now(),
            committers,
            busy: AtomicUsize::new(0),
            last_wait_us: AtomicU64::new(0),
            last_start_us: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// A committer took a group whose oldest batch waited `waited`.
    fn started(&self, waited: Duration) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.last_wait_us
            .store(waited.as_micros() as u64, Ordering::Release);
        self.last_start_us.store(self.now_us(), Ordering::Release);
    }

    /// A committer finished its group.
    fn finished(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// The queueing delay now: the last group's wait while fresh; when batches wait and every
    /// committer is busy, at least the time since the last one started (none is free since).
    fn current(&self, depth: usize) -> Duration {
        let since_start = Duration::from_micros(
            self.now_us()
                .saturating_sub(self.last_start_us.load(Ordering::Acquire)),
        );
        let last_wait = Duration::from_micros(self.last_wait_us.load(Ordering::Acquire));
        let fresh = if since_start <= FRESH {
            last_wait
        } else {
            Duration::ZERO
        };
        let blocked = depth > 0 && self.busy.load(Ordering::Acquire) >= self.committers;
        if blocked {
            fresh.max(since_start)
        } else {
            fresh
        }
    }
}

impl Committer {
    /// Starts `committers` tasks taking up to `max_group` accounts per transaction.
    pub(crate) fn start(pool: PgPool, committers: usize, max_group: usize) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let depth = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(Delay::new(committers.max(1)));
        for _ in 0..committers.max(1) {
            tokio::spawn(run(
                pool.clone(),
                receiver.clone(),
                max_group.max(1),
                depth.clone(),
                delay.clone(),
            ));
        }
        Self {
            queue,
            depth,
            delay,
        }
    }

    /// How long a batch handed in now can expect to wait for a committer (see [`Delay`]).
    pub(crate) fn queue_delay(&self) -> Duration {
        self.delay.current(self.depth())
    }

    /// Batches waiting for a committer.
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Applies `batch` (all for `account_id`) in a group transaction and returns it with its
    /// outcomes.
    pub(crate) async fn commit(
        &self,
        account_id: &str,
        batch: Vec<LedgerRequest>,
    ) -> Result<Committed, Lost> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            account_id: account_id.to_owned(),
            batch,
            queued_at: Instant::now(),
            reply,
        };
        self.depth.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(job)) = self.queue.send(job) {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Ok(Committed {
                batch: job.batch,
                result: Err(sqlx::Error::PoolClosed),
            });
        }
        answer.await.map_err(|_| Lost)
    }
}

/// One committer: takes what is waiting, applies it in one transaction, answers, again.
async fn run(
    pool: PgPool,
    receiver: crate::queue::Shared<Job>,
    max_group: usize,
    depth: Arc<AtomicUsize>,
    delay: Arc<Delay>,
) {
    while let Some(jobs) = crate::queue::take_batch(&receiver, max_group).await {
        depth.fetch_sub(jobs.len(), Ordering::AcqRel);
        metrics::histogram!("ledger_group_accounts").record(jobs.len() as f64);
        if let Some(first) = jobs.first() {
            let waited = first.queued_at.elapsed();
            delay.started(waited);
            metrics::histogram!("ledger_commit_wait_seconds").record(waited.as_secs_f64());
        }
        // A panic ends that task only: its batches' actors learn they were lost.
        let outcome = tokio::spawn(commit_group(pool.clone(), jobs)).await;
        delay.finished();
        if let Err(error) = outcome {
            tracing::error!(%error, "a ledger committer's group panicked");
            metrics::counter!("ledger_actor_failures_total").increment(1);
        }
    }
}

/// Applies the jobs in one transaction (in account-id order) and answers each.
async fn commit_group(pool: PgPool, mut jobs: Vec<Job>) {
    jobs.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    loop {
        let groups: Vec<(&str, &[LedgerRequest])> = jobs
            .iter()
            .map(|job| (job.account_id.as_str(), job.batch.as_slice()))
            .collect();
        let failure = match store::execute_group(&pool, &groups).await {
            Ok(outcomes) => {
                for (job, outcomes) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Committed {
                        batch: job.batch,
                        result: Ok(outcomes),
                    });
                }
                return;
            }
            Err(failure) => failure,
        };
        match failure {
            // One account's part failed: it alone gets the error, the others go again.
            GroupFailure::Account(index, error) if jobs.len() > 1 && !unavailable(&error) => {
                let job = jobs.remove(index);
                tracing::warn!(account = %job.account_id, %error, others = jobs.len(),
                    "an account's batch failed in a group transaction; applying the others without it");
                let _ = job.reply.send(Committed {
                    batch: job.batch,
                    result: Err(error),
                });
            }
            GroupFailure::Account(_, error) | GroupFailure::Group(error) => {
                // Nothing was committed: every account learns it, with the error's kind.
                let mut jobs = jobs.into_iter();
                if let Some(job) = jobs.next() {
                    for other in jobs {
                        let _ = other.reply.send(Committed {
                            batch: other.batch,
                            result: Err(copy(&error)),
                        });
                    }
                    let _ = job.reply.send(Committed {
                        batch: job.batch,
                        result: Err(error),
                    });
                }
                return;
            }
        }
    }
}

/// The database is away (not this account's fault): the whole group fails.
fn unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

/// The same failure for another account of the group (`sqlx::Error` is not `Clone`): database
/// unavailability keeps its kind, anything else becomes a protocol error with its text.
fn copy(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_committer_means_no_queueing_delay_whatever_waited_long_ago() {
        let delay = Delay::new(2);
        // Long idle, then a burst: batches wait, but a committer is free.
        std::thread::sleep(FRESH + Duration::from_millis(20));
        assert_eq!(delay.current(5), Duration::ZERO);
        // One committer busy out of two: still one free.
        delay.started(Duration::from_millis(1));
        assert!(delay.current(5) < Duration::from_millis(5));
    }

    #[test]
    fn every_committer_busy_with_batches_waiting_counts_the_time_since_the_last_start() {
        let delay = Delay::new(2);
        delay.started(Duration::from_millis(3));
        delay.started(Duration::from_millis(4));
        std::thread::sleep(Duration::from_millis(30));
        assert!(delay.current(3) >= Duration::from_millis(30));
        // Nothing waits: only the last group's (fresh) wait.
        assert_eq!(delay.current(0), Duration::from_millis(4));
        delay.finished();
        assert!(
            delay.current(3) < Duration::from_millis(30),
            "a committer is free again"
        );
    }
}
