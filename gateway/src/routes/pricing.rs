//! `/api/v1/pricing/rules`: price rules managed through the API (admin; operators read). Every
//! creation and change is validated, kept in the rule's history and audited; a change prices
//! only new estimates and tasks.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::idempotency::{Keyed, Tx};
use crate::pagination::PageParams;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use shared::Problem;
use shared::page::Page;
use shared::pricing::{CreatePriceRule, PriceRule, UpdatePriceRule, valid_rule_id};

/// Prefix of rule-list cursors (versioned).
const CURSOR_PREFIX: &str = "p1.";

/// `?task_type=&limit=&cursor=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RulesQuery {
    /// Only the rules of this task type.
    pub task_type: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn rule_id(id: &str) -> ApiResult<()> {
    if valid_rule_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found("price rule not found"))
    }
}

/// Price rules by id, active and retired.
#[utoipa::path(get, path = "/api/v1/pricing/rules", tag = "pricing", security(("bearer" = [])),
    params(RulesQuery),
    responses(
        (status = 200, body = Page<PriceRule>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<RulesQuery>,
) -> ApiResult<Json<Page<PriceRule>>> {
    let limit = PageParams {
        limit: query.limit,
        cursor: None,
    }
    .limit()?;
    let after = match &query.cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .strip_prefix(CURSOR_PREFIX)
                .filter(|id| valid_rule_id(id))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        shared::ErrorCode::InvalidQuery,
                        "cursor is not one this server issued",
                    )
                })?,
        ),
    };
    let mut items = domain::price_rules::list(
        &state.db,
        query.task_type.as_deref(),
        after,
        i64::from(limit) + 1,
    )
    .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|rule| format!("{CURSOR_PREFIX}{}", rule.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// One price rule.
#[utoipa::path(get, path = "/api/v1/pricing/rules/{id}", tag = "pricing", security(("bearer" = [])),
    params(("id" = String, Path, description = "Rule id", pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")),
    responses(
        (status = 200, body = PriceRule),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PriceRule>> {
    rule_id(&id)?;
    Ok(Json(domain::price_rules::get(&state.db, &id).await?))
}

/// Creates a price rule with its volume tiers (admin). One active rule per task type (409
/// otherwise). Audited `pricing.create`. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/pricing/rules", tag = "pricing", security(("bearer" = [])),
    request_body = CreatePriceRule,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = PriceRule),
        (status = 409, body = Problem, content_type = "application/problem+json"),
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
                let request: CreatePriceRule = crate::error::parse_json(&body)?;
                domain::price_rules::create(&mut tx, &actor, request)
                    .await
                    .map_err(ApiError::from)
            }
            .await;
            if let Err(error) = &result {
                let target = ("price_rule", None);
                crate::refusals::record(state_ref, &actor, "pricing.create", target, error).await;
            }
            (tx, result)
        })
        .await
        .0
}

/// Changes a price rule (admin): prices, peak window, history weighting, tiers, or retires it
/// (`active: false`). Only estimates and tasks after the change use it. Audited `pricing.update`.
#[utoipa::path(patch, path = "/api/v1/pricing/rules/{id}", tag = "pricing", security(("bearer" = [])),
    params(("id" = String, Path, description = "Rule id", pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")),
    request_body = UpdatePriceRule,
    responses(
        (status = 200, body = PriceRule),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(change): Json<UpdatePriceRule>,
) -> ApiResult<Json<PriceRule>> {
    let updated = async {
        rule_id(&id)?;
        let mut tx = state
            .db
            .begin()
            .await
            .map_err(crate::error::database_error)?;
        let rule = domain::price_rules::update(&mut tx, &caller.actor(), &id, change).await?;
        tx.commit().await.map_err(crate::error::database_error)?;
        Ok::<_, ApiError>(rule)
    }
    .await;
    match updated {
        Ok(rule) => Ok(Json(rule)),
        Err(error) => {
            let target = ("price_rule", Some(id.as_str()));
            crate::refusals::record_for(&state, &caller, "pricing.update", target, &error).await;
            Err(error)
        }
    }
}
