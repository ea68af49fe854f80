//! `GET /api/v1/audit/access-logs` and `GET /api/v1/audit/access-logs/{id}`: reading the access
//! audit trail. Reading it is itself a sensitive act and is audited (`audit.read`).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query, database_error};
use crate::pagination::{PageParams, cursor_after};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use domain::audit::{AuditEntry, AuditFilter, AuditRecord, Outcome};
use serde::Deserialize;
use shared::page::Page;
use shared::{ErrorCode, Problem};

/// Filters of the audit listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor.
    #[param(max_length = 255)]
    pub actor_id: Option<String>,
    /// Only this action (e.g. `credits.refund`).
    #[param(max_length = 255)]
    pub action: Option<String>,
    /// Only this kind of target (e.g. `credit_account`, `task`, `payment_order`).
    #[param(max_length = 64)]
    pub target_type: Option<String>,
    /// Only this target.
    #[param(max_length = 255)]
    pub target_id: Option<String>,
    /// Only this outcome: `success`, `denied` or `failure`.
    pub outcome: Option<AuditOutcome>,
    /// From this time, RFC 3339 (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Up to this time, RFC 3339 (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// An audit row's outcome, as a filter.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// The act was carried out.
    Success,
    /// The caller was not allowed.
    Denied,
    /// The act was attempted and failed.
    Failure,
}

/// Access audit rows, newest first, filtered by actor, action, target, outcome and time.
#[utoipa::path(get, path = "/api/v1/audit/access-logs", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, body = Page<serde_json::Value>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<Page<AuditRecord>>> {
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let limit = page.limit()?;
    let too_long = |value: &Option<String>| value.as_ref().is_some_and(|value| value.len() > 255);
    if too_long(&query.actor_id)
        || too_long(&query.action)
        || too_long(&query.target_id)
        || query
            .target_type
            .as_ref()
            .is_some_and(|value| value.len() > 64)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "actor_id, action and target_id are at most 255 bytes, target_type 64",
        ));
    }
    let filter = AuditFilter {
        actor_id: query.actor_id.clone(),
        action: query.action.clone(),
        target_type: query.target_type.clone(),
        target_id: query.target_id.clone(),
        outcome: query.outcome.map(|outcome| {
            match outcome {
                AuditOutcome::Success => "success",
                AuditOutcome::Denied => "denied",
                AuditOutcome::Failure => "failure",
            }
            .to_owned()
        }),
        from: query.from,
        to: query.to,
        before_id: page.before_id()?,
    };
    let mut tx = state.db.begin().await.map_err(database_error)?;
    let mut items = domain::audit::list(&mut tx, &filter, i64::from(limit) + 1).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| cursor_after(last.id))
    } else {
        None
    };
    let detail = serde_json::json!({
        "actor_id": query.actor_id, "action": query.action, "returned": items.len(),
    });
    domain::audit::record(
        &mut tx,
        &caller.actor(),
        AuditEntry {
            action: "audit.read",
            target_type: Some("audit_access_log"),
            target_id: None,
            outcome: Outcome::Success,
            detail: Some(detail),
        },
    )
    .await?;
    tx.commit().await.map_err(database_error)?;
    Ok(Json(Page { items, next_cursor }))
}

/// One access audit row.
#[utoipa::path(get, path = "/api/v1/audit/access-logs/{id}", tag = "audit", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Audit row id", minimum = 1)),
    responses(
        (status = 200, body = serde_json::Value),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<AuditRecord>> {
    let mut tx = state.db.begin().await.map_err(database_error)?;
    let record = domain::audit::get(&mut tx, id).await?;
    let target = id.to_string();
    domain::audit::record(
        &mut tx,
        &caller.actor(),
        AuditEntry {
            action: "audit.read",
            target_type: Some("audit_access_log"),
            target_id: Some(&target),
            outcome: Outcome::Success,
            detail: None,
        },
    )
    .await?;
    tx.commit().await.map_err(database_error)?;
    Ok(Json(record))
}

/// Records an `audit.read` of `target` in `tx`.
async fn audited_read(
    tx: &mut sqlx::PgConnection,
    caller: &Caller,
    target: (&str, &str),
) -> ApiResult<()> {
    domain::audit::record(
        tx,
        &caller.actor(),
        AuditEntry {
            action: "audit.read",
            target_type: Some(target.0),
            target_id: Some(target.1),
            outcome: Outcome::Success,
            detail: None,
        },
    )
    .await?;
    Ok(())
}

/// A task's trail.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TaskTrail {
    /// The task as stored.
    pub task: serde_json::Value,
    /// Its state history, task audit rows, ledger rows and access-log rows, in time order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<domain::audit::TrailEntry>,
}

/// Everything recorded about a task, in time order: state history, task audit rows, ledger rows
/// (hold, capture, release, refunds of its charges) and the access-log rows that touched it.
/// Audited `audit.read`.
#[utoipa::path(get, path = "/api/v1/audit/tasks/{id}/trail", tag = "audit", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, body = TaskTrail),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn task_trail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskTrail>> {
    let task_id: uuid::Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("task not found"))?;
    let mut tx = state.db.begin().await.map_err(database_error)?;
    let (task, events) = domain::audit::task_trail(&mut tx, task_id)
        .await?
        .ok_or_else(|| ApiError::not_found("task not found"))?;
    audited_read(&mut tx, &caller, ("task", &id)).await?;
    tx.commit().await.map_err(database_error)?;
    Ok(Json(TaskTrail { task, events }))
}

/// `?from=&to=` of an account trail (default: the last 30 days).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrailQuery {
    /// From this time, RFC 3339 (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Up to this time, RFC 3339 (exclusive).
    pub to: Option<DateTime<Utc>>,
}

/// An account's trail.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AccountTrail {
    /// The account.
    pub account_id: String,
    /// Its ledger rows, payment orders and access-log rows, in time order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<domain::audit::TrailEntry>,
}

/// An account's money over a range, in time order: ledger rows (charges, refunds, adjustments,
/// recharges, holds), payment orders and the access-log rows that targeted it, each with who did
/// it and the request id. Audited `audit.read`.
#[utoipa::path(get, path = "/api/v1/audit/accounts/{id}/trail", tag = "audit", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id"), TrailQuery),
    responses(
        (status = 200, body = AccountTrail),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn account_trail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<TrailQuery>,
) -> ApiResult<Json<AccountTrail>> {
    if !crate::auth::valid_id(&id) {
        return Err(ApiError::not_found("account not found"));
    }
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or_else(|| {
        to.checked_sub_signed(chrono::Duration::days(30))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    if from >= to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "from must be before to",
        ));
    }
    let mut tx = state.db.begin().await.map_err(database_error)?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from credit_accounts where id = $1)")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .map_err(database_error)?;
    if !exists {
        return Err(ApiError::not_found("account not found"));
    }
    let events = domain::audit::account_trail(&mut tx, &id, from, to).await?;
    audited_read(&mut tx, &caller, ("credit_account", &id)).await?;
    tx.commit().await.map_err(database_error)?;
    Ok(Json(AccountTrail {
        account_id: id,
        events,
    }))
}
