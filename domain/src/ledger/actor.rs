//! Per-account domain actors: every balance-changing operation of an account goes through that
//! account's actor on this node, which applies operations in arrival order and batches whatever
//! queued up while the previous batch was in PostgreSQL into one transaction (one lock, one
//! commit). Actors start on demand under a supervisor, stop when idle, and a failure reaches the
//! caller as an error, never as silence.
//!
//! How batching falls out of the mailbox: `Apply` only queues the request and, if no flush is
//! pending, sends the actor a `Flush`. While a flush awaits PostgreSQL, new `Apply` messages wait
//! in the mailbox; once it is done they are queued together and the next `Flush` takes them all
//! (up to `max_batch`). Under no load every batch holds one request; under load batches grow by
//! themselves: group commit.

use super::committer::{Committed, Committer};
use super::{LedgerRequest, Outcome};
use crate::DomainError;
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent};
use sqlx::PgPool;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tuning of the account actors.
#[derive(Debug, Clone, Copy)]
pub struct LedgerConfig {
    /// Most operations in one transaction; 1 turns batching off (the naive baseline).
    pub max_batch: usize,
    /// Most operations waiting for one account before new ones are refused as busy.
    pub max_pending: usize,
    /// An actor with nothing to do for this long stops.
    pub idle_timeout: Duration,
    /// Most accounts whose batches one transaction applies (group commit); 1 turns it off.
    pub max_group: usize,
    /// Transactions applying account batches at once (each holds a pooled connection).
    pub committers: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            max_batch: 128,
            max_pending: 10_000,
            idle_timeout: Duration::from_secs(30),
            max_group: 64,
            committers: 3,
        }
    }
}

/// A live account actor as the registry knows it.
#[derive(Debug, Clone)]
struct AccountHandle {
    actor: ActorRef<AccountMsg>,
    /// Invariant: operations handed to `actor` that it has not received yet. Incremented only
    /// while holding the registry entry (read lock), so the idle stop, which removes the entry
    /// under the write lock only when this is zero, never drops a message.
    in_mailbox: Arc<AtomicUsize>,
    /// Invariant: operations sent to `actor` whose outcome has not been replied yet.
    outstanding: Arc<AtomicUsize>,
}

/// Account id → its live actor on this node.
type Registry = Arc<DashMap<String, AccountHandle>>;

/// The entry point: routes operations to account actors, starting them on demand.
#[derive(Debug, Clone)]
pub struct Ledger {
    committer: Committer,
    config: LedgerConfig,
    registry: Registry,
    supervisor: ActorRef<()>,
}

impl Ledger {
    /// Starts the supervisor. Account actors start on demand.
    pub async fn start(pool: PgPool, config: LedgerConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_batch >= 1, "ledger max_batch must be at least 1");
        anyhow::ensure!(
            config.max_pending >= 1,
            "ledger max_pending must be at least 1"
        );
        anyhow::ensure!(
            config.max_group >= 1 && config.committers >= 1,
            "ledger max_group and committers must be at least 1"
        );
        let committer = Committer::start(pool, config.committers, config.max_group);
        let registry: Registry = Arc::new(DashMap::new());
        let (supervisor, _) = Actor::spawn(None, LedgerSupervisor, registry.clone()).await?;
        metrics::describe_histogram!(
            "ledger_batch_size",
            "Operations applied per ledger transaction"
        );
        metrics::describe_histogram!(
            "ledger_operation_duration_seconds",
            metrics::Unit::Seconds,
            "Time from handing an operation to its account actor to its outcome"
        );
        metrics::describe_counter!(
            "ledger_operations_total",
            "Ledger operations by kind and outcome"
        );
        metrics::describe_gauge!("ledger_account_actors", "Live account actors on this node");
        metrics::describe_gauge!(
            "ledger_mailbox_depth",
            "Operations sent to account actors and not answered yet, on this node"
        );
        Ok(Self {
            committer,
            config,
            registry,
            supervisor,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> LedgerConfig {
        self.config
    }

    /// Live account actors on this node.
    pub fn live_actors(&self) -> usize {
        self.registry.len()
    }

    /// Account batches waiting for a committer on this node.
    pub fn commit_queue(&self) -> usize {
        self.committer.depth()
    }

    /// How long an operation handed in now can expect its batch to wait for a committer: the
    /// wait of the latest group's oldest batch while recent, and with batches waiting at least
    /// the time since a committer last started one. Admission control sheds on it.
    pub fn queue_delay(&self) -> Duration {
        self.committer.queue_delay()
    }

    /// Applies one operation through its account's actor and waits for the outcome.
    pub async fn apply(&self, request: LedgerRequest) -> Result<Outcome, DomainError> {
        let started = Instant::now();
        let kind = request.operation.kind();
        let account_id = request.account_id.clone();
        let mut request = Some(request);
        // A send can only fail if the actor died between lookup and send (a crash: idle stops
        // cannot race a send); the request then comes back untouched and goes to a new actor.
        for _ in 0..3 {
            let handle = self.handle_for(&account_id).await?;
            let Some(message) = request.take() else { break };
            handle.outstanding.fetch_add(1, Ordering::AcqRel);
            metrics::gauge!("ledger_mailbox_depth").increment(1.0);
            let sent = handle
                .actor
                .call(|reply| AccountMsg::Apply(Box::new(message), reply), None)
                .await;
            handle.outstanding.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!("ledger_mailbox_depth").decrement(1.0);
            match sent {
                Ok(CallResult::Success(outcome)) => {
                    let label = outcome_label(&outcome.result);
                    metrics::counter!("ledger_operations_total", "kind" => kind, "outcome" => label)
                        .increment(1);
                    metrics::histogram!("ledger_operation_duration_seconds", "kind" => kind)
                        .record(started.elapsed().as_secs_f64());
                    return Ok(outcome);
                }
                Ok(CallResult::SenderError | CallResult::Timeout) => {
                    metrics::counter!("ledger_operations_total", "kind" => kind, "outcome" => "lost")
                        .increment(1);
                    return Err(DomainError::Unavailable(
                        "the account's ledger actor stopped before answering; the operation may or \
                         may not have been applied: retry with the same Idempotency-Key"
                            .into(),
                    ));
                }
                Err(MessagingErr::SendErr(AccountMsg::Apply(message, _))) => {
                    handle.in_mailbox.fetch_sub(1, Ordering::AcqRel);
                    self.registry.remove_if(&account_id, |_, current| {
                        current.actor.get_id() == handle.actor.get_id()
                    });
                    request = Some(*message);
                }
                Err(error) => {
                    handle.in_mailbox.fetch_sub(1, Ordering::AcqRel);
                    tracing::error!(%error, account = %account_id, "ledger actor unreachable");
                    return Err(DomainError::Unavailable(
                        "the account's ledger actor is unreachable; retry with the same Idempotency-Key"
                            .into(),
                    ));
                }
            }
        }
        Err(DomainError::Unavailable(
            "no ledger actor could take the operation".into(),
        ))
    }

    /// The account's actor, started if needed, with one more message counted in its mailbox.
    async fn handle_for(&self, account_id: &str) -> Result<AccountHandle, DomainError> {
        loop {
            if let Some(handle) = self.registry.get(account_id) {
                if handle.outstanding.load(Ordering::Acquire) >= self.config.max_pending {
                    return Err(DomainError::Busy(format!(
                        "{} operations are already waiting for account {account_id}; retry later",
                        self.config.max_pending
                    )));
                }
                handle.in_mailbox.fetch_add(1, Ordering::AcqRel);
                return Ok(handle.clone());
            }
            let in_mailbox = Arc::new(AtomicUsize::new(0));
            let arguments = AccountArgs {
                account_id: account_id.to_owned(),
                committer: self.committer.clone(),
                config: self.config,
                registry: self.registry.clone(),
                in_mailbox: in_mailbox.clone(),
            };
            let (actor, _) =
                Actor::spawn_linked(None, AccountActor, arguments, self.supervisor.get_cell())
                    .await
                    .map_err(|error| {
                        tracing::error!(%error, "cannot start a ledger actor");
                        DomainError::Unavailable(
                            "cannot start the account's ledger actor; retry".into(),
                        )
                    })?;
            let handle = AccountHandle {
                actor,
                in_mailbox,
                outstanding: Arc::new(AtomicUsize::new(0)),
            };
            match self.registry.entry(account_id.to_owned()) {
                dashmap::Entry::Occupied(_) => {
                    handle.actor.stop(Some("lost the start race".into()))
                }
                dashmap::Entry::Vacant(vacant) => {
                    vacant.insert(handle);
                    metrics::gauge!("ledger_account_actors").set(self.registry.len() as f64);
                }
            }
        }
    }

    /// Stops every actor (shutdown); batches in flight finish first.
    pub fn stop(&self) {
        self.supervisor.stop(Some("shutdown".into()));
    }
}

fn outcome_label(result: &Result<super::Applied, DomainError>) -> &'static str {
    match result {
        Ok(_) => "applied",
        Err(DomainError::InsufficientCredits { .. }) => "insufficient_credits",
        Err(DomainError::RefundExceedsCharge { .. }) => "refund_exceeds_charge",
        Err(DomainError::NotFound { .. }) => "not_found",
        Err(DomainError::Validation(_)) => "invalid",
        Err(DomainError::Conflict(_)) => "conflict",
        Err(_) => "error",
    }
}

/// Supervises the account actors. Unlike ractor's default it keeps running when a child ends:
/// a failed account actor is forgotten and the next operation for the account starts a new one.
#[derive(Debug)]
struct LedgerSupervisor;

impl Actor for LedgerSupervisor {
    type Msg = ();
    type State = Registry;
    type Arguments = Registry;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        registry: Registry,
    ) -> Result<Registry, ActorProcessingErr> {
        Ok(registry)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        registry: &mut Registry,
    ) -> Result<(), ActorProcessingErr> {
        let ended = match &event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(actor = %cell.get_id(), %error, "ledger account actor failed");
                metrics::counter!("ledger_actor_failures_total").increment(1);
                Some(cell.get_id())
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => Some(cell.get_id()),
            _ => None,
        };
        if let Some(id) = ended {
            registry.retain(|_, handle| handle.actor.get_id() != id);
            metrics::gauge!("ledger_account_actors").set(registry.len() as f64);
        }
        Ok(())
    }
}

/// Messages of an account actor.
#[derive(Debug)]
pub enum AccountMsg {
    /// Apply an operation; the outcome goes to the reply port.
    Apply(Box<LedgerRequest>, RpcReplyPort<Outcome>),
    /// Run a batch of what is queued.
    Flush,
    /// Stop if idle long enough.
    IdleCheck,
}

struct AccountArgs {
    account_id: String,
    committer: Committer,
    config: LedgerConfig,
    registry: Registry,
    in_mailbox: Arc<AtomicUsize>,
}

/// State of an account actor.
struct AccountState {
    account_id: String,
    committer: Committer,
    config: LedgerConfig,
    registry: Registry,
    in_mailbox: Arc<AtomicUsize>,
    /// Received, not yet applied, in arrival order.
    queue: VecDeque<(LedgerRequest, RpcReplyPort<Outcome>)>,
    /// Invariant: true exactly when a `Flush` is in the mailbox.
    flush_pending: bool,
    last_activity: Instant,
}

/// One account's actor.
#[derive(Debug)]
struct AccountActor;

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountState;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<AccountState, ActorProcessingErr> {
        let check_every = (args.config.idle_timeout / 2).max(Duration::from_millis(10));
        // The interval task ends by itself once the actor is gone (its sends fail).
        myself.send_interval(check_every, || AccountMsg::IdleCheck);
        Ok(AccountState {
            account_id: args.account_id,
            committer: args.committer,
            config: args.config,
            registry: args.registry,
            in_mailbox: args.in_mailbox,
            queue: VecDeque::new(),
            flush_pending: false,
            last_activity: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        message: AccountMsg,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AccountMsg::Apply(request, reply) => {
                state.in_mailbox.fetch_sub(1, Ordering::AcqRel);
                state.last_activity = Instant::now();
                state.queue.push_back((*request, reply));
                if !state.flush_pending {
                    state.flush_pending = true;
                    myself.cast(AccountMsg::Flush)?;
                }
            }
            AccountMsg::Flush => {
                state.flush_pending = false;
                let take = state.queue.len().min(state.config.max_batch);
                let batch: Vec<_> = state.queue.drain(..take).collect();
                if !batch.is_empty() {
                    flush(state, batch).await;
                }
                state.last_activity = Instant::now();
                if !state.queue.is_empty() {
                    state.flush_pending = true;
                    myself.cast(AccountMsg::Flush)?;
                }
            }
            AccountMsg::IdleCheck => {
                let idle = state.queue.is_empty()
                    && !state.flush_pending
                    && state.last_activity.elapsed() >= state.config.idle_timeout;
                let me = myself.get_id();
                if idle
                    && state
                        .registry
                        .remove_if(&state.account_id, |_, handle| {
                            handle.actor.get_id() == me
                                && handle.in_mailbox.load(Ordering::Acquire) == 0
                        })
                        .is_some()
                {
                    metrics::gauge!("ledger_account_actors").set(state.registry.len() as f64);
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

/// Applies one batch and answers every request in it. An operation whose caller is gone (its
/// request timed out or its client went away) is dropped before it is applied: nobody would
/// learn its outcome, and its key is being released for a retry. When the batch fails in the
/// database as a whole, its requests are applied one by one, so a request that fails there fails
/// alone and its neighbours still apply.
async fn flush(state: &AccountState, batch: Vec<(LedgerRequest, RpcReplyPort<Outcome>)>) {
    let (batch, abandoned): (Vec<_>, Vec<_>) =
        batch.into_iter().partition(|(_, reply)| !reply.is_closed());
    for (request, _) in &abandoned {
        tracing::info!(account = %state.account_id, kind = request.operation.kind(),
            "dropping a ledger operation whose caller is gone");
        metrics::counter!("ledger_operations_total", "kind" => request.operation.kind(), "outcome" => "abandoned")
            .increment(1);
    }
    if batch.is_empty() {
        return;
    }
    metrics::histogram!("ledger_batch_size").record(batch.len() as f64);
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let Ok(Committed {
        batch: requests,
        result,
    }) = state.committer.commit(&state.account_id, requests).await
    else {
        tracing::error!(account = %state.account_id, "a ledger batch was lost with its committer");
        for reply in replies {
            let _ = reply.send(Outcome {
                result: Err(DomainError::Unavailable(
                    "the ledger could not finish the operation; it may or may not have been \
                     applied: retry with the same Idempotency-Key"
                        .into(),
                )),
                stored: None,
            });
        }
        return;
    };
    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up waiting has dropped its port: nothing to tell it.
                let _ = reply.send(outcome);
            }
        }
        Err(error) if requests.len() > 1 && matches!(error, sqlx::Error::Database(_)) => {
            tracing::warn!(account = %state.account_id, %error, size = requests.len(),
                "ledger batch failed in the database; applying its requests one by one");
            for (request, reply) in requests.into_iter().zip(replies) {
                Box::pin(flush(state, vec![(request, reply)])).await;
            }
        }
        Err(error) => {
            tracing::error!(account = %state.account_id, %error, size = requests.len(), "ledger batch failed");
            // Nothing of the batch was committed: every caller learns it failed.
            let unreachable = matches!(
                error,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            );
            for reply in replies {
                // The cause is in the log above; the caller gets no database text.
                let result = if unreachable {
                    Err(DomainError::Unavailable(
                        "the database is unavailable; retry with the same Idempotency-Key".into(),
                    ))
                } else {
                    Err(DomainError::Database(sqlx::Error::Protocol(
                        "ledger batch failed".into(),
                    )))
                };
                let _ = reply.send(Outcome {
                    result,
                    stored: None,
                });
            }
        }
    }
}
