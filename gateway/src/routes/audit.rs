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

/// Access audit rows, newest first.
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
    if too_long(&query.actor_id) || too_long(&query.action) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "actor_id and action are at most 255 bytes",
        ));
    }
    let filter = AuditFilter {
        actor_id: query.actor_id.clone(),
        action: query.action.clone(),
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
