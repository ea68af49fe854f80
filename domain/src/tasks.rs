//! Tasks: creation with a credit hold, the state machine, the per-task event history
//! (`task_state_history`, numbered 1, 2, 3, ... per task) and `task_audit_logs`.
//!
//! PostgreSQL is the arbiter between nodes: every event locks the task row, checks the transition
//! against the stored status and takes the next sequence number in the same transaction. Events
//! that settle credits (a terminal status of a task with a hold) are written inside the account's
//! ledger transaction ([`TaskWrite`] carried by the [`LedgerRequest`]), so a task never ends
//! without its hold being captured or released, and is never created without its hold.

use crate::audit::Actor;
use crate::idempotency::{self, Claimed, StoredResponse};
use crate::ledger::{Completion, Ledger, LedgerRequest, Operation};
use crate::{DomainError, DomainResult};
use chrono::{DateTime, Utc};
use shared::session::Balance;
use shared::tasks::{Task, TaskEvent, TaskEventKind, TaskEventRequest, TaskStatus};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::sync::Arc;
use uuid::Uuid;

/// Largest serialized `params` or event `data`.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Longest event message or cancel reason.
pub const MAX_MESSAGE_CHARS: usize = 1000;

const TASK_COLUMNS: &str = "t.id, t.owner_id, t.account_id, t.task_type, t.units, t.params, \
     t.status, t.progress, t.seq, t.estimated_credits, t.actual_units, t.actual_cost, \
     t.created_at, t.updated_at, t.finished_at, \
     (select h.id from credit_holds h where h.task_id = t.id) as hold_id";

const EVENT_COLUMNS: &str = "task_id, seq, kind, from_status, to_status, progress, actual_units, \
     message, data, actor_id, created_at";

/// A task with what settling it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task.
    pub task: Task,
    /// Its credit hold (none when the estimate was zero).
    pub hold_id: Option<Uuid>,
}

impl TaskRecord {
    /// The task id as a UUID.
    pub fn id(&self) -> Uuid {
        Uuid::parse_str(&self.task.id).unwrap_or_default()
    }
}

/// A task to insert with its hold.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// New id.
    pub id: Uuid,
    /// The creator.
    pub owner_id: String,
    /// The account charged.
    pub account_id: String,
    /// Kind of work.
    pub task_type: String,
    /// Units ordered.
    pub units: i64,
    /// Parameters.
    pub params: serde_json::Value,
    /// Credits to hold.
    pub estimated_credits: i64,
}

/// A validated event to apply to a task.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    /// `progress` or `state`.
    pub kind: TaskEventKind,
    /// Target status of a state event.
    pub state: Option<TaskStatus>,
    /// Progress in percent.
    pub progress: Option<i16>,
    /// Units actually used (success only).
    pub actual_units: Option<i64>,
    /// Note.
    pub message: Option<String>,
    /// Free-form JSON.
    pub data: Option<serde_json::Value>,
}

impl EventInput {
    /// Checks a posted event's shape (not its transition, which needs the stored task).
    pub fn from_request(request: TaskEventRequest) -> DomainResult<Self> {
        let invalid = |detail: &str| Err(DomainError::Validation(detail.into()));
        match request.kind {
            TaskEventKind::Created => {
                return invalid(
                    "`created` events are written by the hub; post `progress` or `state`",
                );
            }
            TaskEventKind::Progress if request.state.is_some() => {
                return invalid("a `progress` event carries no `state`");
            }
            TaskEventKind::Progress if request.progress.is_none() => {
                return invalid("a `progress` event needs `progress` (0-100)");
            }
            TaskEventKind::State if request.state.is_none() => {
                return invalid("a `state` event needs `state`");
            }
            _ => {}
        }
        if request
            .progress
            .is_some_and(|progress| !(0..=100).contains(&progress))
        {
            return invalid("`progress` must be between 0 and 100");
        }
        if let Some(units) = request.actual_units {
            if request.state != Some(TaskStatus::Succeeded) {
                return invalid("`actual_units` is only reported with `state: succeeded`");
            }
            if !(0..=shared::limits::MAX_ACTUAL_UNITS).contains(&units) {
                return Err(DomainError::Validation(format!(
                    "`actual_units` must be between 0 and {}",
                    shared::limits::MAX_ACTUAL_UNITS
                )));
            }
        }
        check_message(request.message.as_deref())?;
        check_json(request.data.as_ref(), "data")?;
        Ok(Self {
            kind: request.kind,
            state: request.state,
            progress: request.progress,
            actual_units: request.actual_units,
            message: request.message,
            data: request.data,
        })
    }

    /// A cancel by the owner or an operator.
    pub fn cancel(reason: Option<String>) -> DomainResult<Self> {
        check_message(reason.as_deref())?;
        Ok(Self {
            kind: TaskEventKind::State,
            state: Some(TaskStatus::Canceled),
            progress: None,
            actual_units: None,
            message: reason,
            data: None,
        })
    }

    /// The terminal status this event moves to, if any.
    pub fn terminal(&self) -> Option<TaskStatus> {
        self.state.filter(|state| state.is_terminal())
    }
}

fn check_message(message: Option<&str>) -> DomainResult<()> {
    if message.is_some_and(|message| message.chars().count() > MAX_MESSAGE_CHARS) {
        return Err(DomainError::Validation(format!(
            "`message` is longer than {MAX_MESSAGE_CHARS} characters"
        )));
    }
    Ok(())
}

/// Checks a free-form JSON field: an object, at most [`MAX_JSON_BYTES`] serialized.
pub fn check_json(value: Option<&serde_json::Value>, field: &str) -> DomainResult<()> {
    match value {
        None => Ok(()),
        Some(serde_json::Value::Object(_)) => {
            let size = serde_json::to_vec(&value)
                .map(|bytes| bytes.len())
                .unwrap_or(usize::MAX);
            if size > MAX_JSON_BYTES {
                Err(DomainError::Validation(format!(
                    "`{field}` is larger than {MAX_JSON_BYTES} bytes"
                )))
            } else {
                Ok(())
            }
        }
        Some(_) => Err(DomainError::Validation(format!(
            "`{field}` must be a JSON object"
        ))),
    }
}

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

/// A task write done inside another transaction (the ledger's).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskWrite {
    /// Insert the task and its `created` event (with its hold).
    Create(NewTask),
    /// Apply an event to the task (with its settlement).
    Event {
        /// The task.
        task_id: Uuid,
        /// The event.
        input: EventInput,
        /// The node writing it.
        node_id: String,
    },
}

/// What a task write did.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskChange {
    /// The task afterwards.
    pub task: Task,
    /// The event written.
    pub event: TaskEvent,
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

fn status(row: &PgRow, column: &str) -> Result<TaskStatus, sqlx::Error> {
    let name: String = row.try_get(column)?;
    TaskStatus::parse(&name)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown task status `{name}`").into()))
}

fn task_from_row(row: &PgRow) -> Result<TaskRecord, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    Ok(TaskRecord {
        task: Task {
            id: id.to_string(),
            owner_id: row.try_get("owner_id")?,
            account_id: row.try_get("account_id")?,
            task_type: row.try_get("task_type")?,
            units: row.try_get("units")?,
            params: row.try_get("params")?,
            status: status(row, "status")?,
            progress: row.try_get("progress")?,
            seq: row.try_get("seq")?,
            estimated_credits: row.try_get("estimated_credits")?,
            actual_units: row.try_get("actual_units")?,
            actual_cost: row.try_get("actual_cost")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
        },
        hold_id: row.try_get("hold_id")?,
    })
}

fn event_from_row(row: &PgRow) -> Result<TaskEvent, sqlx::Error> {
    let task_id: Uuid = row.try_get("task_id")?;
    let kind: String = row.try_get("kind")?;
    let from: Option<String> = row.try_get("from_status")?;
    Ok(TaskEvent {
        task_id: task_id.to_string(),
        seq: row.try_get("seq")?,
        kind: TaskEventKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown event kind `{kind}`").into()))?,
        from_status: from.as_deref().and_then(TaskStatus::parse),
        status: status(row, "to_status")?,
        progress: row.try_get("progress")?,
        actual_units: row.try_get("actual_units")?,
        message: row.try_get("message")?,
        data: row.try_get("data")?,
        actor_id: row.try_get("actor_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Loads a task.
pub async fn get(pool: &PgPool, task_id: Uuid) -> DomainResult<Option<TaskRecord>> {
    let row = sqlx::query(&format!(
        "select {TASK_COLUMNS} from tasks t where t.id = $1"
    ))
    .bind(task_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(task_from_row).transpose()?)
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
    let rows = sqlx::query(&format!(
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
        .iter()
        .map(|row| task_from_row(row).map(|record| record.task))
        .collect::<Result<_, _>>()?)
}

/// A task's stored events with `seq > after_seq`, oldest first, at most `limit`.
pub async fn events(
    pool: &PgPool,
    task_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> DomainResult<Vec<TaskEvent>> {
    let rows = sqlx::query(&format!(
        "select {EVENT_COLUMNS} from task_state_history \
          where task_id = $1 and seq > $2 order by seq limit $3"
    ))
    .bind(task_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
}

/// A task's audit trail, oldest first.
pub async fn audit_trail(pool: &PgPool, task_id: Uuid) -> DomainResult<Vec<serde_json::Value>> {
    let rows = sqlx::query(
        "select jsonb_build_object('id', id, 'seq', seq, 'action', action, 'actor_id', actor_id, \
                'detail', detail, 'request_id', request_id, 'created_at', created_at) as entry \
           from task_audit_logs where task_id = $1 order by id",
    )
    .bind(task_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|row| row.get("entry")).collect())
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
    insert(conn, task, actor).await
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
    let change = transition(
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

/// Runs a [`TaskWrite`] inside the ledger's transaction. `settled` is the capture's actual cost
/// for a success. Business refusals are the inner `Err` (nothing written).
pub async fn write(
    conn: &mut PgConnection,
    write: &TaskWrite,
    actor: &Actor,
    settled: Option<i64>,
) -> Result<Result<TaskChange, DomainError>, sqlx::Error> {
    match write {
        TaskWrite::Create(task) => match insert(conn, task, actor).await {
            Ok(change) => Ok(Ok(change)),
            Err(DomainError::Database(error)) => Err(error),
            Err(other) => Ok(Err(other)),
        },
        TaskWrite::Event {
            task_id,
            input,
            node_id,
        } => transition(conn, *task_id, input, actor, node_id, settled).await,
    }
}

async fn insert(
    conn: &mut PgConnection,
    task: &NewTask,
    actor: &Actor,
) -> DomainResult<TaskChange> {
    let row = sqlx::query(
        "with t as ( \
           insert into tasks (id, owner_id, account_id, task_type, units, params, seq, \
                              estimated_credits) \
           values ($1, $2, $3, $4, $5, $6, 1, $7) \
           returning *, null::uuid as hold_id), \
         h as ( \
           insert into task_state_history (task_id, seq, kind, to_status, progress, actor_id, \
                                           node_id, request_id) \
           values ($1, 1, 'created', 'queued', 0, $8, $9, $10)), \
         a as ( \
           insert into task_audit_logs (task_id, seq, action, actor_id, detail, request_id) \
           values ($1, 1, 'task.created', $8, $11, $10)) \
         select *, now() as event_at from t",
    )
    .bind(task.id)
    .bind(&task.owner_id)
    .bind(&task.account_id)
    .bind(&task.task_type)
    .bind(task.units)
    .bind(&task.params)
    .bind(task.estimated_credits)
    .bind(&actor.id)
    .bind(None::<String>)
    .bind(actor.request_id.as_deref())
    .bind(serde_json::json!({
        "task_type": task.task_type, "units": task.units,
        "estimated_credits": task.estimated_credits,
    }))
    .fetch_one(&mut *conn)
    .await?;
    let record = task_from_row(&row)?;
    let event = TaskEvent {
        task_id: task.id.to_string(),
        seq: 1,
        kind: TaskEventKind::Created,
        from_status: None,
        status: TaskStatus::Queued,
        progress: Some(0),
        actual_units: None,
        message: None,
        data: None,
        actor_id: actor.id.clone(),
        created_at: row.try_get("event_at")?,
    };
    Ok(TaskChange {
        task: record.task,
        event,
    })
}

/// What an event does to a task, as checked against its locked row.
#[derive(Debug, Clone, Copy)]
struct Checked {
    from: TaskStatus,
    to: TaskStatus,
    ordered: i64,
}

/// Locks the task row and checks `input` against its stored status, writing nothing: the ledger
/// calls it before touching the hold, so a refused event leaves the hold alone.
pub async fn check(
    conn: &mut PgConnection,
    write: &TaskWrite,
) -> Result<Result<(), DomainError>, sqlx::Error> {
    match write {
        TaskWrite::Create(_) => Ok(Ok(())),
        TaskWrite::Event { task_id, input, .. } => {
            Ok(check_event(conn, *task_id, input).await?.map(|_| ()))
        }
    }
}

async fn check_event(
    conn: &mut PgConnection,
    task_id: Uuid,
    input: &EventInput,
) -> Result<Result<Checked, DomainError>, sqlx::Error> {
    let current = sqlx::query("select status, units from tasks where id = $1 for update")
        .bind(task_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(current) = current else {
        return Ok(Err(DomainError::NotFound { what: "task" }));
    };
    let from = status(&current, "status")?;
    let ordered: i64 = current.try_get("units")?;
    let to = match input.kind {
        TaskEventKind::Progress if from == TaskStatus::Running => from,
        TaskEventKind::Progress => {
            return Ok(Err(DomainError::InvalidTransition(format!(
                "progress is reported only while a task is running; this one is {}",
                from.as_str()
            ))));
        }
        _ => {
            let to = input.state.unwrap_or(from);
            if !from.may_become(to) {
                return Ok(Err(DomainError::InvalidTransition(format!(
                    "a {} task cannot become {}",
                    from.as_str(),
                    to.as_str()
                ))));
            }
            to
        }
    };
    Ok(Ok(Checked { from, to, ordered }))
}

/// Locks the task, checks the event against its stored status, and writes it.
async fn transition(
    conn: &mut PgConnection,
    task_id: Uuid,
    input: &EventInput,
    actor: &Actor,
    node_id: &str,
    settled: Option<i64>,
) -> Result<Result<TaskChange, DomainError>, sqlx::Error> {
    let Checked { from, to, ordered } = match check_event(conn, task_id, input).await? {
        Ok(checked) => checked,
        Err(error) => return Ok(Err(error)),
    };
    let progress = match (to, input.progress) {
        (TaskStatus::Succeeded, None) => Some(100),
        (_, progress) => progress,
    };
    let actual_units = (to == TaskStatus::Succeeded).then(|| input.actual_units.unwrap_or(ordered));
    let from_status = (input.kind == TaskEventKind::State).then_some(from.as_str());
    let row = sqlx::query(&format!(
        "with t as ( \
           update tasks set status = $2, progress = coalesce($3, progress), seq = seq + 1, \
                  actual_units = coalesce($4, actual_units), actual_cost = coalesce($5, actual_cost), \
                  finished_at = case when $6 then now() else finished_at end \
            where id = $1 \
           returning *), \
         h as ( \
           insert into task_state_history (task_id, seq, kind, from_status, to_status, progress, \
                                           actual_units, message, data, actor_id, node_id, \
                                           request_id) \
           select $1, t.seq, $7, $8, $2, $3, $4, $9, $10, $11, $12, $13 from t \
           returning {EVENT_COLUMNS}), \
         a as ( \
           insert into task_audit_logs (task_id, seq, action, actor_id, detail, request_id) \
           select $1, t.seq, $14, $11, $15, $13 from t) \
         select h.*, t.id, t.owner_id, t.account_id, t.task_type, t.units, t.params, t.status, \
                t.progress as task_progress, t.seq as task_seq, t.estimated_credits, \
                t.actual_units as task_actual_units, t.actual_cost, t.created_at as task_created_at, \
                t.updated_at, t.finished_at \
           from h, t"
    ))
    .bind(task_id)
    .bind(to.as_str())
    .bind(progress)
    .bind(actual_units)
    .bind((to == TaskStatus::Succeeded).then(|| settled.unwrap_or(0)))
    .bind(to.is_terminal())
    .bind(input.kind.as_str())
    .bind(from_status)
    .bind(input.message.as_deref())
    .bind(input.data.as_ref())
    .bind(&actor.id)
    .bind(node_id)
    .bind(actor.request_id.as_deref())
    .bind(match input.kind {
        TaskEventKind::Progress => "task.progress".to_owned(),
        _ => format!("task.{}", to.as_str()),
    })
    .bind(serde_json::json!({
        "from": from.as_str(), "to": to.as_str(), "progress": progress,
        "actual_units": actual_units, "actual_cost": settled,
    }))
    .fetch_one(&mut *conn)
    .await?;
    let event = event_from_row(&row)?;
    let task = Task {
        id: task_id.to_string(),
        owner_id: row.try_get("owner_id")?,
        account_id: row.try_get("account_id")?,
        task_type: row.try_get("task_type")?,
        units: row.try_get("units")?,
        params: row.try_get("params")?,
        status: status(&row, "status")?,
        progress: row.try_get("task_progress")?,
        seq: row.try_get("task_seq")?,
        estimated_credits: row.try_get("estimated_credits")?,
        actual_units: row.try_get("task_actual_units")?,
        actual_cost: row.try_get("actual_cost")?,
        created_at: row.try_get("task_created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    };
    Ok(Ok(TaskChange { task, event }))
}
