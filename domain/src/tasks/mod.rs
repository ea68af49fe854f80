//! Tasks: creation with a credit hold, the state machine, the per-task event history
//! (`task_state_history`, numbered 1, 2, 3, ... per task) and `task_audit_logs`.
//!
//! PostgreSQL is the arbiter between nodes: every event locks the task row, checks the transition
//! against the stored status and takes the next sequence number in the same transaction. Events
//! that settle credits (a terminal status of a task with a hold) are written inside the account's
//! ledger transaction ([`TaskWrite`] carried by the [`LedgerRequest`]), so a task never ends
//! without its hold being captured or released, and is never created without its hold.
//!
//! Layout: [`types`] holds the values the ledger shares (pure), `store` the task rows' SQL that
//! the ledger runs inside its transaction; this module holds the reads and the event pipeline,
//! and is the only one of the three that calls the ledger.

pub(crate) mod store;
pub mod types;

use crate::audit::Actor;
use crate::idempotency::{self, Claimed, StoredResponse};
use crate::ledger::{Completion, Ledger, LedgerRequest, Operation};
use crate::{DomainError, DomainResult};
use chrono::{DateTime, Utc};
use shared::session::Balance;
use shared::tasks::{Task, TaskEvent, TaskStatus};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use store::{EVENT_COLUMNS, EventRow, TASK_COLUMNS, TaskRow};
use uuid::Uuid;

pub use types::{
    EventInput, MAX_JSON_BYTES, MAX_MESSAGE_CHARS, NewTask, TaskChange, TaskRecord, TaskWrite,
    check_json,
};

/// The credits a succeeded task costs: the estimate scaled by the units actually used, rounded up.
/// A cost beyond [`shared::limits::MAX_AMOUNT`] is refused (never saturated): the event is
/// rejected and the task stays as it was.
pub fn actual_cost(estimated_credits: i64, units: i64, actual_units: i64) -> DomainResult<i64> {
    if units <= 0 {
        return Ok(estimated_credits);
    }
    let (numerator, units) = (
        i128::from(estimated_credits) * i128::from(actual_units),
        i128::from(units),
    );
    let cost = (numerator + units - 1) / units;
    i64::try_from(cost)
        .ok()
        .filter(|cost| *cost <= shared::limits::MAX_AMOUNT)
        .ok_or_else(|| {
            DomainError::Validation(format!(
                "`actual_units` {actual_units} would cost more than the largest amount, {}",
                shared::limits::MAX_AMOUNT
            ))
        })
}

/// Who writes an event, for `task_state_history` and `task_audit_logs`.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The caller.
    pub actor: Actor,
    /// This node's id.
    pub node_id: String,
}

/// What applying an event did, with the balance when credits moved.
#[derive(Debug, Clone, PartialEq)]
pub struct EventOutcome {
    /// The task and the event.
    pub change: TaskChange,
    /// The account after settlement (terminal events of tasks with a hold).
    pub balance: Option<Balance>,
    /// The answer stored with the event's idempotency key, in the event's own transaction.
    pub stored: Option<StoredResponse>,
}

/// Renders an applied event as the response stored with its idempotency key (supplied by the
/// gateway, which owns the wire shape and the error mapping).
pub type RenderEvent = idempotency::Render<TaskChange>;

/// The idempotency claim an event completes in its own transaction, and how to render it.
#[derive(Clone)]
pub struct EventCompletion {
    /// The claim; the event is applied only while it still owns its key.
    pub claim: Claimed,
    /// Renders the stored answer.
    pub render: RenderEvent,
}

impl std::fmt::Debug for EventCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCompletion")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl EventCompletion {
    /// The same claim as a ledger completion (a terminal event settles in the ledger's batch).
    fn for_ledger(self) -> Completion {
        let render = self.render;
        Completion {
            claim: self.claim,
            render: Arc::new(move |result| match result {
                Ok(applied) => match &applied.task {
                    Some(change) => render(Ok(change)),
                    None => render(Err(&DomainError::Conflict(
                        "the ledger settled a task without writing its event".into(),
                    ))),
                },
                Err(error) => render(Err(error)),
            }),
        }
    }
}

/// Loads a task.
pub async fn get(pool: &PgPool, task_id: Uuid) -> DomainResult<Option<TaskRecord>> {
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "select {TASK_COLUMNS} from tasks t where t.id = $1"
    ))
    .bind(task_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(TaskRecord::try_from).transpose()?)
}

/// Filters of `GET /tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this owner's tasks (users); `None` for any (operators, admins).
    pub owner_id: Option<String>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Keyset cursor: tasks strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// Tasks, newest first.
pub async fn list(pool: &PgPool, filter: &TaskFilter) -> DomainResult<Vec<Task>> {
    let rows: Vec<TaskRow> = sqlx::query_as(&format!(
        "select {TASK_COLUMNS} from tasks t \
          where ($1::text is null or t.owner_id = $1) \
            and ($2::text is null or t.status = $2) \
            and ($3::timestamptz is null or (t.created_at, t.id) < ($3, $4)) \
          order by t.created_at desc, t.id desc limit $5"
    ))
    .bind(filter.owner_id.as_deref())
    .bind(filter.status.map(TaskStatus::as_str))
    .bind(filter.before.map(|(at, _)| at))
    .bind(filter.before.map(|(_, id)| id))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| TaskRecord::try_from(row).map(|record| record.task))
        .collect::<Result<_, _>>()?)
}

/// A task's stored events with `seq > after_seq`, oldest first, at most `limit`.
pub async fn events(
    pool: &PgPool,
    task_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> DomainResult<Vec<TaskEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "select {EVENT_COLUMNS} from task_state_history \
          where task_id = $1 and seq > $2 order by seq limit $3"
    ))
    .bind(task_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(TaskEvent::try_from)
        .collect::<Result<_, _>>()?)
}

/// A task's audit trail, oldest first.
pub async fn audit_trail(pool: &PgPool, task_id: Uuid) -> DomainResult<Vec<serde_json::Value>> {
    Ok(sqlx::query_scalar(
        "select jsonb_build_object('id', id, 'seq', seq, 'action', action, 'actor_id', actor_id, \
                'detail', detail, 'request_id', request_id, 'created_at', created_at) as entry \
           from task_audit_logs where task_id = $1 order by id",
    )
    .bind(task_id)
    .fetch_all(pool)
    .await?)
}

/// Prices a new task: the estimate of its units as of now.
pub async fn prepare(
    pool: &PgPool,
    owner_id: &str,
    account_id: &str,
    task_type: &str,
    units: i64,
    params: Option<serde_json::Value>,
) -> DomainResult<NewTask> {
    if units <= 0 {
        return Err(DomainError::Validation("`units` must be positive".into()));
    }
    check_json(params.as_ref(), "params")?;
    let estimate = crate::pricing::estimate(pool, task_type, units, Utc::now()).await?;
    Ok(NewTask {
        id: Uuid::now_v7(),
        owner_id: owner_id.to_owned(),
        account_id: account_id.to_owned(),
        task_type: task_type.to_owned(),
        units,
        params: params.unwrap_or_else(|| serde_json::json!({})),
        estimated_credits: estimate.estimated_credits,
    })
}

/// The ledger request creating `task` with a hold of its estimate (`None`: nothing to hold).
pub fn hold_request(task: &NewTask, actor: Actor) -> Option<LedgerRequest> {
    (task.estimated_credits > 0).then(|| LedgerRequest {
        account_id: task.account_id.clone(),
        operation: Operation::Hold {
            hold_id: Uuid::now_v7(),
            task_id: Some(task.id),
            amount: task.estimated_credits,
        },
        actor,
        completion: None,
        task: Some(TaskWrite::Create(task.clone())),
    })
}

/// Creates a task that holds nothing (a zero estimate), in the caller's transaction.
pub async fn create_free(
    conn: &mut PgConnection,
    task: &NewTask,
    actor: &Actor,
) -> DomainResult<TaskChange> {
    store::insert(conn, task, actor).await
}

/// Applies an event to a task: in the account's ledger transaction when it settles a hold,
/// in its own transaction otherwise.
pub async fn apply_event(
    pool: &PgPool,
    ledger: &Ledger,
    record: &TaskRecord,
    input: EventInput,
    writer: &Writer,
    completion: Option<EventCompletion>,
) -> DomainResult<EventOutcome> {
    let task_id = record.id();
    if let (Some(target), Some(hold_id)) = (input.terminal(), record.hold_id) {
        let operation = if target == TaskStatus::Succeeded {
            let units = input.actual_units.unwrap_or(record.task.units);
            Operation::Capture {
                hold_id,
                actual: actual_cost(record.task.estimated_credits, record.task.units, units)?,
            }
        } else {
            Operation::Release { hold_id }
        };
        let outcome = ledger
            .apply(LedgerRequest {
                account_id: record.task.account_id.clone(),
                operation,
                actor: writer.actor.clone(),
                completion: completion.map(EventCompletion::for_ledger),
                task: Some(TaskWrite::Event {
                    task_id,
                    input,
                    node_id: writer.node_id.clone(),
                }),
            })
            .await?;
        let applied = outcome.result?;
        let change = applied.task.ok_or_else(|| {
            DomainError::Database(sqlx::Error::Protocol(
                "the ledger settled a task without writing its event".into(),
            ))
        })?;
        return Ok(EventOutcome {
            change,
            balance: Some(applied.balance),
            stored: outcome.stored,
        });
    }
    let mut tx = pool.begin().await?;
    let change = store::transition(
        &mut tx,
        task_id,
        &input,
        &writer.actor,
        &writer.node_id,
        None,
    )
    .await??;
    let stored = match &completion {
        Some(completion) => {
            let stored = (completion.render)(Ok(&change));
            // Fails (and rolls the event back) when the claim ended meanwhile.
            idempotency::complete_many(&mut tx, &[(&completion.claim, &stored)]).await?;
            Some(stored)
        }
        None => None,
    };
    tx.commit().await?;
    Ok(EventOutcome {
        change,
        balance: None,
        stored,
    })
}
