//! `/api/v1/tasks`: create (estimate and hold), read, list, post events (services, through the
//! task's actor), cancel, and the stored event history.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query, parse_json};
use crate::idempotency::{Guard, Keyed, Tx, render_with};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Datelike, Utc};
use domain::ledger::Applied;
use domain::tasks::{self, EventInput, TaskFilter, TaskRecord};
use serde::Deserialize;
use shared::limits::MAX_UNITS;
use shared::page::{DEFAULT_LIMIT, MAX_LIMIT, Page};
use shared::tasks::{
    CancelTaskRequest, CreateTaskRequest, Task, TaskEventApplied, TaskEventRequest, TaskEvents,
    TaskStatus,
};
use shared::{ErrorCode, Problem};
use uuid::Uuid;

/// Prefix of task-list cursors (versioned).
const CURSOR_PREFIX: &str = "t1.";

/// The task, if the caller may see it: its owner, or a holder of `tasks:read:any`. A foreign task
/// reads as 404, so ids do not leak.
async fn visible_task(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<TaskRecord> {
    let record = tasks::get(&state.db, id)
        .await?
        .filter(|record| {
            record.task.owner_id == caller.principal.user_id || caller.has_scope("tasks:read:any")
        })
        .ok_or_else(|| ApiError::not_found("task not found"))?;
    Ok(record)
}

/// Creates a task for the caller: prices it (`POST /credits/estimate`'s rules) and holds the
/// estimate on the caller's account in the same transaction (402 `insufficient_credits` when it
/// cannot be covered: nothing is written). Publishes `task.created` and `balance.changed` on the
/// owner's channel. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = [])),
    request_body = CreateTaskRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = Task),
        (status = 402, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Keyed { guard, body }: Keyed,
) -> Response {
    let prepared = async {
        let request: CreateTaskRequest = parse_json(&body)?;
        let account_id = caller.principal.account_id.as_deref().ok_or_else(|| {
            ApiError::validation("this caller has no credit account to hold the task's credits")
        })?;
        if !(1..=MAX_UNITS).contains(&request.units) {
            return Err(ApiError::validation(format!(
                "`units` must be between 1 and {MAX_UNITS}"
            )));
        }
        Ok::<_, ApiError>(
            tasks::prepare(
                &state.db,
                &caller.principal.user_id,
                account_id,
                &request.task_type,
                request.units,
                request.params,
            )
            .await?,
        )
    }
    .await;
    let task = match prepared {
        Ok(task) => task,
        Err(error) => return guard.refuse(error).await,
    };
    let Some(request) = tasks::hold_request(&task, caller.actor()) else {
        return create_free(&state, &caller, guard, task).await;
    };
    let render = render_with(
        guard.request_id(),
        StatusCode::CREATED,
        |applied: &Applied| {
            serde_json::to_vec(&applied.task.as_ref().map(|change| &change.task))
                .unwrap_or_default()
        },
    );
    let (response, applied) = guard.apply_ledger(request, render).await;
    if let Some(applied) = applied
        && let Some(change) = &applied.task
    {
        metrics::counter!("tasks_created_total").increment(1);
        crate::events::task_event(&state.events, "task.created", change);
        state.tasks.publish(change, Some(&applied.balance)).await;
    }
    response
}

/// A task whose estimate is zero: no hold, the task and the key's answer in one transaction.
async fn create_free(
    state: &AppState,
    caller: &Caller,
    guard: Guard,
    task: tasks::NewTask,
) -> Response {
    /// A created task as answered: the task alone.
    struct Created(tasks::TaskChange);
    impl serde::Serialize for Created {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.0.task.serialize(serializer)
        }
    }
    let actor = caller.actor();
    let (response, created) = guard
        .run_tx(StatusCode::CREATED, |mut tx: Tx| async move {
            let result = tasks::create_free(&mut tx, &task, &actor).await;
            (tx, result.map(Created).map_err(ApiError::from))
        })
        .await;
    if let Some(Created(change)) = created {
        metrics::counter!("tasks_created_total").increment(1);
        crate::events::task_event(&state.events, "task.created", &change);
        state.tasks.publish(&change, None).await;
    }
    response
}

/// One task: its owner, or callers with `tasks:read:any` (a foreign task reads as 404).
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, body = Task),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Task>> {
    Ok(Json(visible_task(&state, &caller, id).await?.task))
}

/// `?status=&owner_id=&limit=&cursor=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only this owner's tasks (another's needs `tasks:read:any`; without it, the caller's own).
    #[param(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub owner_id: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn invalid_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, detail)
}

fn task_cursor(task: &Task) -> String {
    format!(
        "{CURSOR_PREFIX}{}.{}",
        task.created_at.timestamp_micros(),
        task.id
    )
}

fn parse_task_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(micros, id)| {
            // Only times this server could have issued: PostgreSQL refuses years past 294276.
            let at = DateTime::from_timestamp_micros(micros.parse().ok()?)
                .filter(|at| (2000..=9999).contains(&at.year()))?;
            Some((at, Uuid::parse_str(id).ok()?))
        })
        .ok_or_else(|| invalid_query("cursor is not one this server issued"))
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        Some(limit) => Err(invalid_query(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        ))),
    }
}

/// Tasks, newest first: the caller's own, or anyone's with `tasks:read:any`.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = Page<Task>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Page<Task>>> {
    let limit = page_limit(query.limit)?;
    if query
        .owner_id
        .as_deref()
        .is_some_and(|owner| !crate::auth::valid_id(owner))
    {
        return Err(invalid_query("owner_id is not a valid id"));
    }
    let any = caller.has_scope("tasks:read:any");
    let owner_id = match query.owner_id {
        Some(owner) if owner != caller.principal.user_id && !any => {
            return Err(ApiError::forbidden(
                "listing another user's tasks needs the scope `tasks:read:any`",
            ));
        }
        Some(owner) => Some(owner),
        None if any => None,
        None => Some(caller.principal.user_id.clone()),
    };
    let filter = TaskFilter {
        owner_id,
        status: query.status,
        before: query.cursor.as_deref().map(parse_task_cursor).transpose()?,
        limit: i64::from(limit) + 1,
    };
    let mut items = tasks::list(&state.db, &filter).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(task_cursor)
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Posts a task event (services): `progress` of a running task, or a `state` change along
/// `queued → running → succeeded | failed | canceled` (`queued → canceled` too); anything else is
/// 409 `invalid_transition`. A terminal state settles the hold (capture at the actual cost, with the
/// supplementary deduction above the hold; release on failure or cancel). The event is numbered,
/// stored, audited and published on `task:{id}` and `user:{owner}`. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/events", tag = "tasks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    request_body = TaskEventRequest,
    responses(
        (status = 201, body = TaskEventApplied),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Keyed { guard, body }: Keyed,
) -> Response {
    let input = parse_json::<TaskEventRequest>(&body)
        .and_then(|request| EventInput::from_request(request).map_err(ApiError::from));
    match input {
        Ok(input) => apply_event(&state, &caller, guard, id, input, StatusCode::CREATED).await,
        Err(error) => guard.refuse(error).await,
    }
}

/// Applies an event through the task's actor, which completes the guard's claim in the event's
/// own transaction; refusals are stored by the guard.
async fn apply_event(
    state: &AppState,
    caller: &Caller,
    guard: Guard,
    id: Uuid,
    input: EventInput,
    success: StatusCode,
) -> Response {
    let render = render_with(guard.request_id(), success, |change: &tasks::TaskChange| {
        serde_json::to_vec(&TaskEventApplied {
            task: change.task.clone(),
            event: change.event.clone(),
        })
        .unwrap_or_default()
    });
    let completion = guard.task_completion(render.clone());
    match state
        .tasks
        .apply(id, input, caller.actor(), completion)
        .await
    {
        Ok(outcome) => {
            if outcome.change.event.status.is_terminal() {
                crate::events::task_event(&state.events, "task.finished", &outcome.change);
            }
            let stored = outcome
                .stored
                .unwrap_or_else(|| render(Ok(&outcome.change)));
            guard.committed(stored)
        }
        Err(error) => guard.refuse(ApiError::from(error)).await,
    }
}

/// Cancels a queued or running task and releases its hold: its owner, or callers with
/// `tasks:cancel:any`. A finished task → 409 `invalid_transition`. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    request_body(content = Option<CancelTaskRequest>, description = "optional `{reason}`"),
    responses(
        (status = 200, body = TaskEventApplied),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Keyed { guard, body }: Keyed,
) -> Response {
    let checked = async {
        let request: CancelTaskRequest = if body.iter().all(u8::is_ascii_whitespace) {
            CancelTaskRequest::default()
        } else {
            parse_json(&body)?
        };
        let record = tasks::get(&state.db, id)
            .await?
            .ok_or_else(|| ApiError::not_found("task not found"))?;
        if record.task.owner_id != caller.principal.user_id {
            if !caller.has_scope("tasks:read:any") {
                return Err(ApiError::not_found("task not found"));
            }
            if !caller.has_scope("tasks:cancel:any") {
                return Err(ApiError::forbidden(
                    "canceling another user's task needs the scope `tasks:cancel:any`",
                ));
            }
        }
        Ok(EventInput::cancel(request.reason)?)
    }
    .await;
    match checked {
        Ok(input) => apply_event(&state, &caller, guard, id, input, StatusCode::OK).await,
        Err(error) => guard.refuse(error).await,
    }
}

/// `?after_seq=&limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this sequence number (default 0: from the start).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// At most this many, 1 to 500 (default 50); continue from the last `seq` while it is below
    /// `last_seq`.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A task's stored events after `after_seq`, oldest first: what a client that fell further behind
/// than the channel history reads to catch up.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/events", tag = "tasks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id"), EventsQuery),
    responses(
        (status = 200, body = TaskEvents),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Json<TaskEvents>> {
    let limit = page_limit(query.limit)?;
    let after_seq = query.after_seq.unwrap_or(0);
    if after_seq < 0 {
        return Err(invalid_query("after_seq must not be negative"));
    }
    let record = visible_task(&state, &caller, id).await?;
    let items = tasks::events(&state.db, id, after_seq, i64::from(limit)).await?;
    Ok(Json(TaskEvents {
        items,
        last_seq: record.task.seq,
    }))
}
