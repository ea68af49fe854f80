//! `/api/v1/risk/blocks`: the recharge block lists (user, IP, openid), managed by admins, each
//! entry with a reason and an optional expiry; additions and removals audited.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::idempotency::{Keyed, Tx};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::audit::{AuditEntry, Outcome};
use shared::Problem;
use shared::payments::{BlockKind, CreateRiskBlock, RiskBlock};
use uuid::Uuid;

type BlockRow = (
    Uuid,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn block_of((id, kind, value, reason, created_by, created_at, expires_at): BlockRow) -> RiskBlock {
    RiskBlock {
        id: id.to_string(),
        kind: match kind.as_str() {
            "user" => BlockKind::User,
            "ip" => BlockKind::Ip,
            _ => BlockKind::Openid,
        },
        value,
        reason,
        created_by,
        created_at,
        expires_at,
    }
}

/// The blocks in force (not removed, not expired), newest first.
#[utoipa::path(get, path = "/api/v1/risk/blocks", tag = "payments", security(("bearer" = [])),
    responses((status = 200, body = Vec<RiskBlock>)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<RiskBlock>>> {
    let rows: Vec<BlockRow> = sqlx::query_as(
        "select id, kind, value, reason, created_by, created_at, expires_at from risk_blocks \
          where removed_at is null and (expires_at is null or expires_at > now()) \
          order by created_at desc limit 1000",
    )
    .fetch_all(&state.db)
    .await
    .map_err(crate::error::database_error)?;
    Ok(Json(rows.into_iter().map(block_of).collect()))
}

fn validate(request: &CreateRiskBlock) -> ApiResult<()> {
    let value = request.value.trim();
    if value.is_empty() || value.chars().count() > 128 {
        return Err(ApiError::validation("value must be 1 to 128 characters"));
    }
    if request.kind == BlockKind::Ip && value.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiError::validation("value must be an IP address"));
    }
    if request.kind == BlockKind::User && !crate::auth::valid_id(value) {
        return Err(ApiError::validation("value must be a user id"));
    }
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::validation("reason must be 1 to 500 characters"));
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::validation("expires_at must be in the future"));
    }
    Ok(())
}

/// Blocks recharges of a user, from an IP address, or of a WeChat openid (admin). Audited
/// `risk.block`. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/risk/blocks", tag = "payments", security(("bearer" = [])),
    request_body = CreateRiskBlock,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = RiskBlock),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Keyed { guard, body }: Keyed,
) -> Response {
    let (actor, state_ref) = (caller.actor(), &state);
    guard
        .run_tx(StatusCode::CREATED, |mut tx: Tx| async move {
            let result = async {
                let request: CreateRiskBlock = crate::error::parse_json(&body)?;
                validate(&request)?;
                let row: BlockRow = sqlx::query_as(
                    "insert into risk_blocks (id, kind, value, reason, created_by, expires_at) \
                     values ($1, $2, $3, $4, $5, $6) \
                     returning id, kind, value, reason, created_by, created_at, expires_at",
                )
                .bind(Uuid::new_v4())
                .bind(request.kind.as_str())
                .bind(request.value.trim())
                .bind(request.reason.trim())
                .bind(&actor.id)
                .bind(request.expires_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(crate::error::database_error)?;
                let block = block_of(row);
                domain::audit::record(
                    &mut tx,
                    &actor,
                    AuditEntry {
                        action: "risk.block",
                        target_type: Some("risk_block"),
                        target_id: Some(&block.id),
                        outcome: Outcome::Success,
                        detail: Some(serde_json::json!({
                            "kind": block.kind, "value": block.value, "reason": block.reason,
                            "expires_at": block.expires_at,
                        })),
                    },
                )
                .await?;
                Ok::<_, ApiError>(block)
            }
            .await;
            if let Err(error) = &result {
                crate::refusals::record(
                    state_ref,
                    &actor,
                    "risk.block",
                    ("risk_block", None),
                    error,
                )
                .await;
            }
            (tx, result)
        })
        .await
        .0
}

/// Removes a block (admin). Audited `risk.unblock`.
#[utoipa::path(delete, path = "/api/v1/risk/blocks/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Block id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("block not found"))?;
    let mut tx = state
        .db
        .begin()
        .await
        .map_err(crate::error::database_error)?;
    let removed = sqlx::query(
        "update risk_blocks set removed_at = now(), removed_by = $2 \
          where id = $1 and removed_at is null",
    )
    .bind(id)
    .bind(&caller.principal.user_id)
    .execute(&mut *tx)
    .await
    .map_err(crate::error::database_error)?;
    if removed.rows_affected() == 0 {
        return Err(ApiError::not_found("block not found"));
    }
    let target = id.to_string();
    domain::audit::record(
        &mut tx,
        &caller.actor(),
        AuditEntry {
            action: "risk.unblock",
            target_type: Some("risk_block"),
            target_id: Some(&target),
            outcome: Outcome::Success,
            detail: None,
        },
    )
    .await?;
    tx.commit().await.map_err(crate::error::database_error)?;
    Ok(StatusCode::NO_CONTENT)
}
