//! The task rows' SQL: mapping `tasks` and `task_state_history` rows, and the writes made inside
//! another transaction (the ledger's): inserting a task with its `created` event, locking tasks
//! for their events and writing an event. A leaf: it knows nothing of the ledger, which uses it.

use super::types::{EventInput, NewTask, TaskChange, TaskRecord, TaskState, TaskWrite};
use crate::audit::Actor;
use crate::{DomainError, DomainResult};
use chrono::{DateTime, Utc};
use shared::tasks::{Task, TaskEvent, TaskEventKind, TaskStatus};
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// The columns of a [`TaskRow`], selected from `tasks t`.
pub(crate) const TASK_COLUMNS: &str = "t.id, t.owner_id, t.account_id, t.task_type, t.units, \
     t.params, t.status, t.progress, t.seq, t.estimated_credits, t.actual_units, t.actual_cost, \
     t.created_at, t.updated_at, t.finished_at, \
     (select h.id from credit_holds h where h.task_id = t.id) as hold_id";

/// The columns of an [`EventRow`], selected from `task_state_history`.
pub(crate) const EVENT_COLUMNS: &str = "task_id, seq, kind, from_status, to_status, progress, \
     actual_units, message, data, actor_id, created_at";

/// A `tasks` row with its hold (selected with [`TASK_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskRow {
    id: Uuid,
    owner_id: String,
    account_id: String,
    task_type: String,
    units: i64,
    params: serde_json::Value,
    status: String,
    progress: i16,
    seq: i64,
    estimated_credits: i64,
    actual_units: Option<i64>,
    actual_cost: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    hold_id: Option<Uuid>,
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = sqlx::Error;

    fn try_from(row: TaskRow) -> Result<Self, sqlx::Error> {
        Ok(TaskRecord {
            task: Task {
                id: row.id.to_string(),
                owner_id: row.owner_id,
                account_id: row.account_id,
                task_type: row.task_type,
                units: row.units,
                params: row.params,
                status: status(&row.status)?,
                progress: row.progress,
                seq: row.seq,
                estimated_credits: row.estimated_credits,
                actual_units: row.actual_units,
                actual_cost: row.actual_cost,
                created_at: row.created_at,
                updated_at: row.updated_at,
                finished_at: row.finished_at,
            },
            hold_id: row.hold_id,
        })
    }
}

/// A `task_state_history` row (selected with [`EVENT_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    task_id: Uuid,
    seq: i64,
    kind: String,
    from_status: Option<String>,
    to_status: String,
    progress: Option<i16>,
    actual_units: Option<i64>,
    message: Option<String>,
    data: Option<serde_json::Value>,
    actor_id: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for TaskEvent {
    type Error = sqlx::Error;

    fn try_from(row: EventRow) -> Result<Self, sqlx::Error> {
        Ok(TaskEvent {
            task_id: row.task_id.to_string(),
            seq: row.seq,
            kind: TaskEventKind::parse(&row.kind).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown event kind `{}`", row.kind).into())
            })?,
            from_status: row.from_status.as_deref().and_then(TaskStatus::parse),
            status: status(&row.to_status)?,
            progress: row.progress,
            actual_units: row.actual_units,
            message: row.message,
            data: row.data,
            actor_id: row.actor_id,
            created_at: row.created_at,
        })
    }
}

fn status(name: &str) -> Result<TaskStatus, sqlx::Error> {
    TaskStatus::parse(name)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown task status `{name}`").into()))
}

/// The state machine's view of a locked `tasks` row.
#[derive(Debug, sqlx::FromRow)]
struct StateRow {
    id: Uuid,
    status: String,
    units: i64,
}

impl StateRow {
    fn state(&self) -> Result<TaskState, sqlx::Error> {
        Ok(TaskState {
            status: status(&self.status)?,
            units: self.units,
        })
    }
}

/// Locks the tasks `ids` (in id order, so two transactions never wait on each other) and returns
/// the state of those that exist.
pub(crate) async fn lock_states(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, TaskState>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StateRow> = sqlx::query_as(
        "select id, status, units from tasks where id = any($1) order by id for update",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| Ok((row.id, row.state()?))).collect()
}

/// Which of the tasks `ids` exist and belong to `account_id` (not locked).
pub(crate) async fn of_account(
    conn: &mut PgConnection,
    ids: &[Uuid],
    account_id: &str,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<Uuid> =
        sqlx::query_scalar("select id from tasks where id = any($1) and account_id = $2")
            .bind(ids)
            .bind(account_id)
            .fetch_all(conn)
            .await?;
    Ok(found.into_iter().collect())
}

/// Runs a [`TaskWrite`] inside the caller's transaction (the ledger's). `settled` is the
/// capture's actual cost for a success. Business refusals are the inner `Err` (nothing written).
pub(crate) async fn write(
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

/// The row `insert` returns: the task and when its `created` event was written.
#[derive(Debug, sqlx::FromRow)]
struct InsertedRow {
    #[sqlx(flatten)]
    task: TaskRow,
    event_at: DateTime<Utc>,
}

/// Inserts a task with its `created` event and audit row.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    task: &NewTask,
    actor: &Actor,
) -> DomainResult<TaskChange> {
    let row: InsertedRow = sqlx::query_as(
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
    let record = TaskRecord::try_from(row.task)?;
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
        created_at: row.event_at,
    };
    Ok(TaskChange {
        task: record.task,
        event,
    })
}

/// The row `transition` returns: the event written and the task afterwards (its columns renamed
/// where they clash with the event's).
#[derive(Debug, sqlx::FromRow)]
struct TransitionRow {
    #[sqlx(flatten)]
    event: EventRow,
    owner_id: String,
    account_id: String,
    task_type: String,
    units: i64,
    params: serde_json::Value,
    status: String,
    task_progress: i16,
    task_seq: i64,
    estimated_credits: i64,
    task_actual_units: Option<i64>,
    actual_cost: Option<i64>,
    task_created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// Locks the task, checks the event against its stored status, and writes it.
pub(crate) async fn transition(
    conn: &mut PgConnection,
    task_id: Uuid,
    input: &EventInput,
    actor: &Actor,
    node_id: &str,
    settled: Option<i64>,
) -> Result<Result<TaskChange, DomainError>, sqlx::Error> {
    let Some(state) = lock_states(conn, &[task_id]).await?.remove(&task_id) else {
        return Ok(Err(DomainError::NotFound { what: "task" }));
    };
    let (from, to, ordered) = match state.admit(input) {
        Ok(transition) => (transition.from, transition.to, transition.ordered),
        Err(error) => return Ok(Err(error)),
    };
    let progress = match (to, input.progress) {
        (TaskStatus::Succeeded, None) => Some(100),
        (_, progress) => progress,
    };
    let actual_units = (to == TaskStatus::Succeeded).then(|| input.actual_units.unwrap_or(ordered));
    let from_status = (input.kind == TaskEventKind::State).then_some(from.as_str());
    let row: TransitionRow = sqlx::query_as(&format!(
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
    let task = Task {
        id: task_id.to_string(),
        owner_id: row.owner_id,
        account_id: row.account_id,
        task_type: row.task_type,
        units: row.units,
        params: row.params,
        status: status(&row.status)?,
        progress: row.task_progress,
        seq: row.task_seq,
        estimated_credits: row.estimated_credits,
        actual_units: row.task_actual_units,
        actual_cost: row.actual_cost,
        created_at: row.task_created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    };
    let event = TaskEvent::try_from(row.event)?;
    Ok(Ok(TaskChange { task, event }))
}
