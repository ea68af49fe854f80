//! The task values shared by the task module and the ledger (which writes tasks inside its
//! transaction): a new task, an event, the write carried by a ledger request and what it did, and
//! the state machine's check of an event against a task's stored status. Pure: no SQL, no IO.

use crate::{DomainError, DomainResult};
use shared::tasks::{Task, TaskEvent, TaskEventKind, TaskEventRequest, TaskStatus};
use uuid::Uuid;

/// Largest serialized `params` or event `data`.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Longest event message or cancel reason.
pub const MAX_MESSAGE_CHARS: usize = 1000;

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

/// What the state machine needs of a stored task, read from its locked row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    /// The stored status.
    pub status: TaskStatus,
    /// Units ordered.
    pub units: i64,
}

/// What an event does to a task, as checked against its stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The status before.
    pub from: TaskStatus,
    /// The status after (the same for a progress event).
    pub to: TaskStatus,
    /// Units ordered (a success without `actual_units` used them all).
    pub ordered: i64,
}

impl TaskState {
    /// The state of a task just created (its `created` event).
    pub fn created(task: &NewTask) -> Self {
        Self {
            status: TaskStatus::Queued,
            units: task.units,
        }
    }

    /// Checks `input` against this state: what it does, or why the state machine refuses it.
    pub fn admit(&self, input: &EventInput) -> Result<Transition, DomainError> {
        let from = self.status;
        let to = match input.kind {
            TaskEventKind::Progress if from == TaskStatus::Running => from,
            TaskEventKind::Progress => {
                return Err(DomainError::InvalidTransition(format!(
                    "progress is reported only while a task is running; this one is {}",
                    from.as_str()
                )));
            }
            _ => {
                let to = input.state.unwrap_or(from);
                if !from.may_become(to) {
                    return Err(DomainError::InvalidTransition(format!(
                        "a {} task cannot become {}",
                        from.as_str(),
                        to.as_str()
                    )));
                }
                to
            }
        };
        Ok(Transition {
            from,
            to,
            ordered: self.units,
        })
    }

    /// The state after `transition`.
    pub fn after(self, transition: Transition) -> Self {
        Self {
            status: transition.to,
            ..self
        }
    }
}
