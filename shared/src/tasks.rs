//! Bodies of the `/tasks/*` routes and the task events published on `task:{id}` and `user:{owner}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Created, credits held, waiting for a worker.
    Queued,
    /// A worker reported it started.
    Running,
    /// Done; the hold was captured at the actual cost.
    Succeeded,
    /// The worker gave up; the hold was released.
    Failed,
    /// Canceled by its owner or an operator; the hold was released.
    Canceled,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Canceled,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }

    /// Parses a wire or database name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// Whether nothing may follow.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled
        )
    }

    /// The state machine: `queued → running → succeeded | failed | canceled`, `queued → canceled`.
    pub fn may_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (Queued, Running) | (Queued, Canceled) | (Running, Succeeded | Failed | Canceled)
        )
    }
}

/// A task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    /// Task id (UUID).
    pub id: String,
    /// The user who created it.
    pub owner_id: String,
    /// The account its credits are held on.
    pub account_id: String,
    /// Kind of work (priced by `price_rules`).
    pub task_type: String,
    /// Units ordered.
    pub units: i64,
    /// Free-form parameters given at creation.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Current status.
    pub status: TaskStatus,
    /// Progress in percent.
    pub progress: i16,
    /// Sequence number of the latest event (1 is the creation).
    pub seq: i64,
    /// Credits held at creation.
    pub estimated_credits: i64,
    /// Units actually used (known once succeeded).
    pub actual_units: Option<i64>,
    /// Credits actually taken (known once succeeded).
    pub actual_cost: Option<i64>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// `POST /tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// Kind of work; must have an active price rule.
    #[schema(pattern = "^[a-z][a-z0-9_.-]{0,63}$")]
    pub task_type: String,
    /// Units to order, 1 to 10^9.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub units: i64,
    /// Free-form parameters (a JSON object, at most 16 KiB).
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
}

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskEventKind {
    /// The creation (written by the hub, never posted).
    Created,
    /// Progress of a running task.
    Progress,
    /// A change of status.
    State,
}

impl TaskEventKind {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEventKind::Created => "created",
            TaskEventKind::Progress => "progress",
            TaskEventKind::State => "state",
        }
    }

    /// Parses a wire or database name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            TaskEventKind::Created,
            TaskEventKind::Progress,
            TaskEventKind::State,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// `POST /tasks/{id}/events` (services).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskEventRequest {
    /// `progress` or `state`.
    pub kind: TaskEventKind,
    /// The new status (`kind: state`).
    pub state: Option<TaskStatus>,
    /// Progress in percent, 0-100.
    #[schema(minimum = 0, maximum = 100)]
    pub progress: Option<i16>,
    /// Units actually used (`state: succeeded`; defaults to the units ordered). The actual cost is
    /// the estimate scaled by `actual_units / units`, rounded up; 0 to 10^9.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub actual_units: Option<i64>,
    /// A human-readable note (at most 1000 characters).
    #[schema(max_length = 1000)]
    pub message: Option<String>,
    /// Free-form JSON passed to subscribers (at most 16 KiB).
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

/// `POST /tasks/{id}/cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelTaskRequest {
    /// Why (at most 1000 characters).
    pub reason: Option<String>,
}

/// One stored event of a task (`task_state_history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEvent {
    /// The task.
    pub task_id: String,
    /// Per-task sequence number: 1, 2, 3, ...
    pub seq: i64,
    /// What happened.
    pub kind: TaskEventKind,
    /// Status before (state events).
    pub from_status: Option<TaskStatus>,
    /// Status after.
    pub status: TaskStatus,
    /// Progress after, when reported.
    pub progress: Option<i16>,
    /// Units actually used (success).
    pub actual_units: Option<i64>,
    /// The note.
    pub message: Option<String>,
    /// Free-form JSON.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// Who posted it.
    pub actor_id: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// What `POST /tasks/{id}/events` and `/cancel` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEventApplied {
    /// The task after the event.
    pub task: Task,
    /// The event as stored.
    pub event: TaskEvent,
}

/// `GET /tasks/{id}/events`: the stored history after a sequence number, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEvents {
    /// Events with `seq > after_seq`, ascending.
    pub items: Vec<TaskEvent>,
    /// The task's latest sequence number.
    pub last_seq: i64,
}
