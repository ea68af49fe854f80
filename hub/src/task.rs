//! Task actors: one per live task on this node, under a task supervisor. A task's actor applies
//! the task's events one at a time, in arrival order (PostgreSQL checks each transition and numbers
//! it, so two nodes receiving events for one task stay consistent), and publishes each applied
//! event on `task:{id}` and `user:{owner}`, with `balance.changed` on the owner's channel when the
//! event settled credits. It is rebuilt from PostgreSQL when an event arrives for a task it does
//! not hold, and stops a while after a terminal state, or after a longer silence.

use crate::broker::Broker;
use crate::channel::Channel;
use dashmap::DashMap;
use domain::audit::Actor as Caller;
use domain::ledger::Ledger;
use domain::tasks::{
    self, EventCompletion, EventInput, EventOutcome, TaskChange, TaskRecord, Writer,
};
use domain::{DomainError, DomainResult};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::{Value, json};
use shared::session::Balance;
use shared::tasks::{TaskEventKind, TaskStatus};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Timing of task actors.
#[derive(Debug, Clone, Copy)]
pub struct TaskConfig {
    /// How long an actor stays after its task's terminal state (late events get their 409 fast).
    pub linger: Duration,
    /// How long an actor without events stays.
    pub idle: Duration,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        }
    }
}

/// What task actors share.
#[derive(Debug)]
struct Shared {
    pool: PgPool,
    ledger: Ledger,
    broker: Arc<Broker>,
    node_id: String,
    config: TaskConfig,
    /// Task id → its live actor on this node.
    registry: DashMap<Uuid, ActorRef<TaskMsg>>,
    /// Serializes actor starts so one task never gets two actors on a node.
    starting: tokio::sync::Mutex<()>,
}

/// The entry point: routes events to task actors, starting them on demand.
#[derive(Debug, Clone)]
pub struct Tasks {
    shared: Arc<Shared>,
    supervisor: ActorRef<()>,
}

/// A message to a task actor.
#[derive(Debug)]
pub enum TaskMsg {
    /// Apply an event and answer with what it did.
    Event {
        /// The validated event.
        input: EventInput,
        /// Who posted it.
        caller: Caller,
        /// The idempotency claim to complete with the event, if the request had a key (boxed:
        /// it is large and most events carry none).
        completion: Option<Box<EventCompletion>>,
        /// The answer.
        reply: RpcReplyPort<DomainResult<EventOutcome>>,
    },
    /// Stop if nothing happened since the timer with this generation was set.
    Idle(u64),
}

impl Tasks {
    /// Starts the task supervisor; task actors start on demand.
    pub async fn start(
        pool: PgPool,
        ledger: Ledger,
        broker: Arc<Broker>,
        node_id: String,
        config: TaskConfig,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            pool,
            ledger,
            broker,
            node_id,
            config,
            registry: DashMap::new(),
            starting: tokio::sync::Mutex::new(()),
        });
        let (supervisor, _) = Actor::spawn(None, TaskSupervisor, shared.clone()).await?;
        Ok(Self { shared, supervisor })
    }

    /// Live task actors on this node.
    pub fn live_actors(&self) -> usize {
        self.shared.registry.len()
    }

    /// Applies `input` to the task through its actor. `NotFound` when the task does not exist.
    pub async fn apply(
        &self,
        task_id: Uuid,
        input: EventInput,
        caller: Caller,
        completion: Option<EventCompletion>,
    ) -> DomainResult<EventOutcome> {
        // An actor that stopped between lookup and delivery drops the message unprocessed, so a
        // second attempt (on a fresh actor) is safe.
        for _ in 0..3 {
            let actor = self.actor(task_id).await?;
            let result = actor
                .call(
                    |reply| TaskMsg::Event {
                        input: input.clone(),
                        caller: caller.clone(),
                        completion: completion.clone().map(Box::new),
                        reply,
                    },
                    None,
                )
                .await;
            match result {
                Ok(CallResult::Success(outcome)) => return outcome,
                Ok(CallResult::Timeout) => {
                    return Err(DomainError::Unavailable(
                        "the task actor did not answer".into(),
                    ));
                }
                Ok(CallResult::SenderError) | Err(_) => {
                    self.shared
                        .registry
                        .remove_if(&task_id, |_, live| live.get_id() == actor.get_id());
                }
            }
        }
        Err(DomainError::Unavailable(
            "the task actor kept stopping; retry".into(),
        ))
    }

    /// The task's live actor, started (from PostgreSQL) when there is none.
    async fn actor(&self, task_id: Uuid) -> DomainResult<ActorRef<TaskMsg>> {
        if let Some(actor) = self.shared.registry.get(&task_id) {
            return Ok(actor.clone());
        }
        let record = tasks::get(&self.shared.pool, task_id)
            .await?
            .ok_or(DomainError::NotFound { what: "task" })?;
        let _starting = self.shared.starting.lock().await;
        if let Some(actor) = self.shared.registry.get(&task_id) {
            return Ok(actor.clone());
        }
        let (actor, _) = Actor::spawn_linked(
            None,
            TaskActor,
            (record, self.shared.clone()),
            self.supervisor.get_cell(),
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, %task_id, "cannot start a task actor");
            DomainError::Unavailable("cannot start the task's actor; retry".into())
        })?;
        self.shared.registry.insert(task_id, actor.clone());
        metrics::gauge!("hub_task_actors").set(self.shared.registry.len() as f64);
        Ok(actor)
    }

    /// Publishes a task change made outside an actor (a creation).
    pub async fn publish(&self, change: &TaskChange, balance: Option<&Balance>) {
        publish_change(&self.shared.broker, change, balance).await;
    }

    /// Stops every task actor (shutdown); events in flight finish first.
    pub fn stop(&self) {
        self.supervisor.stop_children(Some("shutdown".into()));
        self.supervisor.stop(None);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// The publication `data` of a task event.
pub fn event_data(change: &TaskChange) -> Value {
    let (task, event) = (&change.task, &change.event);
    let kind = match event.kind {
        TaskEventKind::Created => "task.created",
        TaskEventKind::Progress => "task.progress",
        TaskEventKind::State => "task.state",
    };
    let mut data = json!({
        "type": kind,
        "ts": now_ms(),
        "task_id": task.id,
        "seq": event.seq,
        "state": event.status,
        "progress": task.progress,
    });
    let fields = [
        ("from", event.from_status.map(|from| json!(from))),
        ("message", event.message.clone().map(Value::from)),
        ("data", event.data.clone()),
        ("task_type", Some(json!(task.task_type))),
        ("estimated_credits", Some(json!(task.estimated_credits))),
        ("actual_units", task.actual_units.map(Value::from)),
        ("actual_cost", task.actual_cost.map(Value::from)),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            data[name] = value;
        }
    }
    data
}

/// Publishes a task change on `task:{id}` and `user:{owner}`, and the balance on the owner's
/// channel when it moved. The change is committed: while Redis is away the publications are kept
/// and published once it is back.
pub async fn publish_change(broker: &Broker, change: &TaskChange, balance: Option<&Balance>) {
    let data = event_data(change);
    let user = Channel::User(change.task.owner_id.clone()).name();
    broker
        .publish_or_keep(&Channel::Task(change.task.id.clone()).name(), data.clone())
        .await;
    broker.publish_or_keep(&user, data).await;
    if let Some(balance) = balance {
        let data = json!({
            "type": "balance.changed",
            "ts": now_ms(),
            "account_id": change.task.account_id,
            "available": balance.available,
            "held": balance.held,
            "total": balance.total,
            "debt": balance.debt,
            "task_id": change.task.id,
        });
        broker.publish_or_keep(&user, data).await;
    }
}

/// One task's actor.
#[derive(Debug)]
struct TaskActor;

/// A task actor's state.
#[derive(Debug)]
struct TaskState {
    record: TaskRecord,
    shared: Arc<Shared>,
    /// Bumped by every event; an `Idle` timer of an older generation is stale.
    generation: u64,
}

impl TaskState {
    fn arm_timer(&mut self, myself: &ActorRef<TaskMsg>) {
        self.generation += 1;
        let generation = self.generation;
        let wait = if self.record.task.status.is_terminal() {
            self.shared.config.linger
        } else {
            self.shared.config.idle
        };
        myself.send_after(wait, move || TaskMsg::Idle(generation));
    }
}

impl Actor for TaskActor {
    type Msg = TaskMsg;
    type State = TaskState;
    type Arguments = (TaskRecord, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<TaskMsg>,
        (record, shared): Self::Arguments,
    ) -> Result<TaskState, ActorProcessingErr> {
        let mut state = TaskState {
            record,
            shared,
            generation: 0,
        };
        state.arm_timer(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<TaskMsg>,
        message: TaskMsg,
        state: &mut TaskState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TaskMsg::Event {
                input,
                caller,
                completion,
                reply,
            } => {
                let kind = input.kind.as_str();
                if reply.is_closed() {
                    // The caller is gone (timed out): nobody would learn the outcome, and its
                    // key is being released for a retry. Drop the event unapplied.
                    metrics::counter!("hub_task_events_total", "kind" => kind, "outcome" => "abandoned")
                        .increment(1);
                    state.arm_timer(&myself);
                    return Ok(());
                }
                let writer = Writer {
                    actor: caller,
                    node_id: state.shared.node_id.clone(),
                };
                let result = tasks::apply_event(
                    &state.shared.pool,
                    &state.shared.ledger,
                    &state.record,
                    input,
                    &writer,
                    completion.map(|completion| *completion),
                )
                .await;
                let outcome = match &result {
                    Ok(applied) => {
                        state.record.task = applied.change.task.clone();
                        publish_change(
                            &state.shared.broker,
                            &applied.change,
                            applied.balance.as_ref(),
                        )
                        .await;
                        "applied"
                    }
                    Err(DomainError::InvalidTransition(_)) => "invalid_transition",
                    Err(DomainError::Database(_) | DomainError::Unavailable(_)) => "error",
                    Err(_) => "refused",
                };
                metrics::counter!("hub_task_events_total", "kind" => kind, "outcome" => outcome)
                    .increment(1);
                let _ = reply.send(result);
                state.arm_timer(&myself);
            }
            TaskMsg::Idle(generation) if generation == state.generation => {
                myself.stop(Some(
                    if state.record.task.status == TaskStatus::Queued
                        || state.record.task.status == TaskStatus::Running
                    {
                        "idle"
                    } else {
                        "finished"
                    }
                    .into(),
                ));
            }
            TaskMsg::Idle(_) => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TaskMsg>,
        state: &mut TaskState,
    ) -> Result<(), ActorProcessingErr> {
        let id = state.record.id();
        state
            .shared
            .registry
            .remove_if(&id, |_, live| live.get_id() == myself.get_id());
        metrics::gauge!("hub_task_actors").set(state.shared.registry.len() as f64);
        Ok(())
    }
}

/// Parent of the task actors: outlives them, forgets failed ones.
#[derive(Debug)]
struct TaskSupervisor;

impl Actor for TaskSupervisor {
    type Msg = ();
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        shared: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, failure) = event {
            tracing::error!(actor = %cell.get_id(), %failure, "task actor failed");
            metrics::counter!("hub_task_actor_failures_total").increment(1);
            shared
                .registry
                .retain(|_, live| live.get_id() != cell.get_id());
            metrics::gauge!("hub_task_actors").set(shared.registry.len() as f64);
        }
        Ok(())
    }
}
