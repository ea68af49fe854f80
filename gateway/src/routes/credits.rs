//! `/api/v1/credits/*`: charge, refund, adjust (idempotent, through the account's actor),
//! balance, ledger and estimate.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Query, parse_json};
use crate::idempotency::{Keyed, render_with};
use crate::pagination::{PageParams, cursor_after};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::ledger::{Applied, LedgerRequest, Operation};
use serde::Deserialize;
use shared::Problem;
use shared::credits::{
    AccountBalance, AdjustRequest, ChargeRequest, Estimate, EstimateRequest, LedgerEntry,
    RefundRequest,
};
use shared::page::Page;
use uuid::Uuid;

use shared::limits::{MAX_AMOUNT, MAX_UNITS};

/// What a validated money request does: an operation on an account.
struct Prepared {
    account_id: String,
    operation: Operation,
}

/// The money-route pipeline: idempotency key (required) claimed by the [`Guard`], parse and
/// validate (refusals are stored), the account's actor (which stores the answer in its
/// transaction while the claim still owns the key), the answer.
async fn run_money_route<F, Fut>(
    state: &AppState,
    caller: &Caller,
    Keyed { guard, body }: Keyed,
    action: &str,
    prepare: F,
) -> Response
where
    F: FnOnce(Bytes) -> Fut,
    Fut: Future<Output = Result<Prepared, ApiError>>,
{
    let prepared = match prepare(body).await {
        Ok(prepared) => prepared,
        Err(error) => {
            let target = ("credit_account", None);
            crate::refusals::record_for(state, caller, action, target, &error).await;
            return guard.refuse(error).await;
        }
    };
    let request = LedgerRequest {
        account_id: prepared.account_id,
        operation: prepared.operation,
        actor: caller.actor(),
        completion: None,
        task: None,
    };
    let render = render_with(
        guard.request_id(),
        StatusCode::CREATED,
        |applied: &Applied| serde_json::to_vec(&applied.entry).unwrap_or_default(),
    );
    let (response, applied) = guard.apply_ledger(request, render).await;
    if let Some(applied) = applied {
        if action == "credits.charge" {
            state.events.server(
                "credits.charged",
                Some(&caller.principal.user_id),
                serde_json::json!({ "amount": -applied.entry.amount, "task_id": applied.entry.task_id }),
            );
        }
        publish_balance(state, caller, &applied).await;
    }
    response
}

/// `balance.changed` on the account owner's channel after a charge, refund or adjustment (the
/// caller's own account needs no lookup). `entry_id` orders the balances of one account.
async fn publish_balance(state: &AppState, caller: &Caller, applied: &Applied) {
    let account_id = &applied.entry.account_id;
    let owner = if caller.principal.account_id.as_deref() == Some(account_id.as_str()) {
        Some(caller.principal.user_id.clone())
    } else {
        state.account_owner(account_id).await
    };
    let Some(owner) = owner else {
        return;
    };
    let balance = &applied.balance;
    state
        .realtime
        .broker
        .publish_or_keep(
            &format!("user:{owner}"),
            serde_json::json!({
                "type": "balance.changed",
                "ts": Utc::now().timestamp_millis(),
                "account_id": account_id,
                "available": balance.available,
                "held": balance.held,
                "total": balance.total,
                "debt": balance.debt,
                "entry_id": applied.entry.entry_id,
            }),
        )
        .await;
}

fn check_amount(amount: i64, allow_negative: bool) -> Result<(), ApiError> {
    let ok = if allow_negative {
        amount != 0
    } else {
        amount > 0
    };
    // `unsigned_abs`: `i64::MIN.abs()` overflows (and wraps to itself in an unchecked build).
    if !ok || amount.unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
        let rule = if allow_negative {
            "non-zero"
        } else {
            "positive"
        };
        return Err(ApiError::validation(format!(
            "amount must be {rule} and at most {MAX_AMOUNT} in size"
        )));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<String, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::validation(
            "reason is required: 1 to 500 characters",
        ));
    }
    Ok(reason.to_owned())
}

/// The account a caller acts on: its own by default; another needs `{scope}:any`.
fn target_account(
    caller: &Caller,
    requested: Option<&str>,
    scope: &str,
) -> Result<String, ApiError> {
    let own = caller.principal.account_id.as_deref();
    match (requested, own) {
        (None, Some(own)) => Ok(own.to_owned()),
        (None, None) => Err(ApiError::validation(
            "account_id is required: this caller has no account",
        )),
        (Some(requested), _) if !crate::auth::valid_id(requested) => {
            Err(ApiError::validation("account_id is not a valid id"))
        }
        (Some(requested), Some(own)) if requested == own => Ok(own.to_owned()),
        (Some(requested), _) => {
            let any = format!("{scope}:any");
            if caller.has_scope(&any) {
                Ok(requested.to_owned())
            } else {
                Err(ApiError::forbidden(format!(
                    "acting on another account needs the scope `{any}`"
                )))
            }
        }
    }
}

/// Charges an account. `amount` > 0; 402 `insufficient_credits` writes nothing. A user charges
/// only itself; service, operator and admin any account. Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/credits/charge", tag = "credits", security(("bearer" = [])),
    request_body = ChargeRequest,
    params(("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = LedgerEntry),
        (status = 402, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn charge(State(state): State<AppState>, caller: Caller, keyed: Keyed) -> Response {
    let (state, caller) = (&state, &caller);
    run_money_route(state, caller, keyed, "credits.charge", |body| async move {
        let request: ChargeRequest = parse_json(&body)?;
        check_amount(request.amount, false)?;
        let reason = check_reason(&request.reason)?;
        let task_id = request
            .task_id
            .as_deref()
            .map(|id| {
                Uuid::parse_str(id).map_err(|_| ApiError::validation("task_id must be a UUID"))
            })
            .transpose()?;
        let account_id = target_account(caller, request.account_id.as_deref(), "credits:charge")?;
        Ok(Prepared {
            account_id,
            operation: Operation::Charge {
                amount: request.amount,
                reason,
                task_id,
                metadata: request.metadata,
            },
        })
    })
    .await
}

/// Refunds (part of) a charge to its account. Finance and admin only; `reason` required; all
/// refunds of a charge never exceed it (409 `refund_exceeds_charge`). Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/credits/refund", tag = "credits", security(("bearer" = [])),
    request_body = RefundRequest,
    params(("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = LedgerEntry),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn refund(State(state): State<AppState>, caller: Caller, keyed: Keyed) -> Response {
    let (state, caller) = (&state, &caller);
    run_money_route(state, caller, keyed, "credits.refund", |body| async move {
        let request: RefundRequest = parse_json(&body)?;
        check_amount(request.amount, false)?;
        let reason = check_reason(&request.reason)?;
        let account_id = domain::ledger::queries::entry_account(&state.db, request.charge_entry_id)
            .await
            .map_err(crate::error::database_error)?
            .ok_or_else(|| ApiError::not_found("charge entry not found"))?;
        Ok(Prepared {
            account_id,
            operation: Operation::Refund {
                charge_entry_id: request.charge_entry_id,
                amount: request.amount,
                reason,
            },
        })
    })
    .await
}

/// A manual adjustment: positive grants credits, negative removes them (never below zero).
/// Finance and admin only; `reason` required. Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/credits/adjust", tag = "credits", security(("bearer" = [])),
    request_body = AdjustRequest,
    params(("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = LedgerEntry),
        (status = 402, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn adjust(State(state): State<AppState>, caller: Caller, keyed: Keyed) -> Response {
    let (state, caller) = (&state, &caller);
    run_money_route(state, caller, keyed, "credits.adjust", |body| async move {
        let request: AdjustRequest = parse_json(&body)?;
        check_amount(request.amount, true)?;
        let reason = check_reason(&request.reason)?;
        if !crate::auth::valid_id(&request.account_id) {
            return Err(ApiError::validation("account_id is not a valid id"));
        }
        Ok(Prepared {
            account_id: request.account_id,
            operation: Operation::Adjust {
                amount: request.amount,
                reason,
            },
        })
    })
    .await
}

/// `?account_id=` (default: the caller's own).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BalanceQuery {
    /// The account; another's needs `credits:read:any`.
    #[param(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub account_id: Option<String>,
}

/// An account's balances.
#[utoipa::path(get, path = "/api/v1/credits/balance", tag = "credits", security(("bearer" = [])),
    params(BalanceQuery),
    responses(
        (status = 200, body = AccountBalance),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<BalanceQuery>,
) -> ApiResult<Json<AccountBalance>> {
    let account_id = target_account(&caller, query.account_id.as_deref(), "credits:read")?;
    let balance = domain::sessions::balance(&state.db, &account_id).await?;
    Ok(Json(AccountBalance {
        account_id,
        available: balance.available,
        held: balance.held,
        total: balance.total,
        debt: balance.debt,
    }))
}

/// `?account_id=&from=&to=&limit=&cursor=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// The account; another's needs `credits:read:any`.
    #[param(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub account_id: Option<String>,
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

/// An account's ledger entries, newest first.
#[utoipa::path(get, path = "/api/v1/credits/ledger", tag = "credits", security(("bearer" = [])),
    params(LedgerQuery),
    responses(
        (status = 200, body = Page<LedgerEntry>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn ledger(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<LedgerQuery>,
) -> ApiResult<Json<Page<LedgerEntry>>> {
    let account_id = target_account(&caller, query.account_id.as_deref(), "credits:read")?;
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = page.limit()?;
    let filter = domain::ledger::queries::LedgerFilter {
        from: query.from,
        to: query.to,
        before_id: page.before_id()?,
    };
    let mut items = domain::ledger::queries::list_entries(
        &state.db,
        &account_id,
        &filter,
        i64::from(limit) + 1,
    )
    .await
    .map_err(crate::error::database_error)?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| cursor_after(last.entry_id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Estimates a task's cost: the task type's price rule combined with the actual cost per unit of
/// recent completed tasks of that type.
#[utoipa::path(post, path = "/api/v1/credits/estimate", tag = "credits", security(("bearer" = [])),
    request_body = EstimateRequest,
    responses(
        (status = 200, body = Estimate),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn estimate(
    State(state): State<AppState>,
    Json(request): Json<EstimateRequest>,
) -> ApiResult<Json<Estimate>> {
    if !(1..=MAX_UNITS).contains(&request.units) {
        return Err(ApiError::validation(format!(
            "units must be between 1 and {MAX_UNITS}"
        )));
    }
    domain::tasks::check_json(request.params.as_ref(), "params")?;
    let at = request.at.unwrap_or_else(Utc::now);
    let estimate =
        domain::pricing::estimate(&state.db, &request.task_type, request.units, at).await?;
    Ok(Json(estimate))
}
