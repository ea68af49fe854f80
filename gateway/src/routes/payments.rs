//! `/api/v1/payments/*`: recharges paid with WeChat Pay (Native): place an order (risk rules
//! first, then a signed order at WeChat, the `code_url` stored), read and list orders, close one,
//! and WeChat's notification callback, which credits a verified payment exactly once.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query, parse_json};
use crate::idempotency::{Keyed, Tx};
use crate::payments::{CreditError, Credited, Pay, timed};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::audit::{AuditEntry, Outcome};
use domain::payments::{CreditSource, NewOrder, StoredOrder};
use domain::wechat::apiv3::SignedHeaders;
use domain::wechat::client::{NativeOrder, PayError};
use domain::wechat::notify::NotifyError;
use secrecy::ExposeSecret;
use serde::Deserialize;
use shared::page::{DEFAULT_LIMIT, MAX_LIMIT, Page};
use shared::payments::{MAX_RECHARGE_FEN, OrderStatus, PaymentOrder, RechargeRequest};
use shared::{ErrorCode, Problem};
use uuid::Uuid;

/// Prefix of order-list cursors (versioned).
const CURSOR_PREFIX: &str = "o1.";

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::PaymentsUnavailable,
        "WeChat Pay is not configured on this node",
    )
}

fn pay(state: &AppState) -> ApiResult<&Pay> {
    state.wechat.pay.as_ref().ok_or_else(unavailable)
}

/// The answer to a failed WeChat call: 502 `wechat_error` with WeChat's code, or with
/// `reason: "signature"` when the answer was not WeChat's.
fn wechat_error(error: PayError) -> ApiError {
    let refused = ApiError::new(
        StatusCode::BAD_GATEWAY,
        ErrorCode::WechatError,
        "WeChat Pay refused or could not be reached",
    );
    match &error {
        PayError::Wechat { code, .. } => refused.with_errcode(code.clone()),
        PayError::Forged(_) => refused.with_reason("signature"),
        PayError::Transport(_) => refused.with_reason("unreachable"),
        PayError::Decode(_) | PayError::BillHash { .. } => refused.with_reason("answer"),
    }
    .with_source(error)
}

/// Places a recharge order: `amount_fen` (integer fen) → a pending order with the `code_url` to
/// show as a QR code. The risk rules run first (403 `risk_denied` / 429 `risk_rate_limited` with
/// `reason_code`, no WeChat call). A WeChat refusal leaves the order `failed` and answers 502
/// `wechat_error`. Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/payments/recharge", tag = "payments", security(("bearer" = [])),
    request_body = RechargeRequest,
    params(("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters")),
    responses(
        (status = 201, body = PaymentOrder),
        (status = 200, body = PaymentOrder, description = "A pending order of the same amount, reused"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn recharge(
    State(state): State<AppState>,
    caller: Caller,
    Keyed { guard, body }: Keyed,
) -> Response {
    let Ok(pay) = pay(&state) else {
        return guard.abandon(unavailable()).await;
    };
    let prepared = async {
        let request: RechargeRequest = parse_json(&body)?;
        if !(1..=MAX_RECHARGE_FEN).contains(&request.amount_fen) {
            return Err(ApiError::validation(format!(
                "amount_fen must be a positive integer of at most {MAX_RECHARGE_FEN}"
            )));
        }
        let account_id =
            caller.principal.account_id.clone().ok_or_else(|| {
                ApiError::validation("this caller has no credit account to recharge")
            })?;
        // One recharge of a user at a time from the rules to the stored order, so parallel
        // requests cannot pass a cap together. Never waited for (a waiting request would hold a
        // pooled connection): the others are told to retry (429). The lock ends with this
        // transaction.
        let mut user_lock = state
            .db
            .begin()
            .await
            .map_err(crate::error::database_error)?;
        let locked: bool = sqlx::query_scalar(
            "select pg_try_advisory_xact_lock(hashtextextended('recharge:' || $1, 0))",
        )
        .bind(&caller.principal.user_id)
        .fetch_one(&mut *user_lock)
        .await
        .map_err(crate::error::database_error)?;
        if !locked {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                "another recharge of yours is being placed; retry shortly",
            ));
        }
        let verdict = crate::risk::judge(
            &state,
            &crate::risk::Recharge {
                user_id: &caller.principal.user_id,
                client_ip: caller.client_ip,
                amount_fen: request.amount_fen,
            },
        )
        .await?;
        Ok((request, account_id, verdict, user_lock))
    }
    .await;
    let (request, account_id, mut user_lock) = match prepared {
        Ok((_, _, crate::risk::Verdict::Reuse(order), _)) => {
            // The same amount while one is pending: that order again (200), not a new one.
            let (response, _) = guard
                .run_tx(
                    StatusCode::OK,
                    |tx: Tx| async move { (tx, Ok(order.order)) },
                )
                .await;
            return response;
        }
        Ok((request, account_id, crate::risk::Verdict::Allow, user_lock)) => {
            (request, account_id, user_lock)
        }
        Err(error) => {
            let target = ("payment_order", None);
            crate::refusals::record_for(&state, &caller, "payments.recharge", target, &error).await;
            return guard.refuse(error).await;
        }
    };
    let settings = &state.settings.payments;
    let now = Utc::now();
    let new = NewOrder {
        id: Uuid::new_v4(),
        account_id,
        user_id: caller.principal.user_id.clone(),
        amount_fen: request.amount_fen,
        credits_per_fen: settings.credits_per_fen,
        description: settings.description.clone(),
        payer_client_ip: caller.client_ip,
        expires_at: now + chrono::Duration::seconds(settings.order_ttl_secs as i64),
        first_query_at: now + chrono::Duration::seconds(settings.query_after_secs as i64),
    };
    // Stored before WeChat is asked: a crash in between leaves an order the expiry job closes.
    let inserted = async {
        let order = domain::payments::insert(&mut user_lock, &new).await?;
        user_lock.commit().await?;
        Ok::<_, domain::DomainError>(order)
    }
    .await;
    let order = match inserted {
        Ok(order) => order,
        Err(error) => return guard.refuse(ApiError::from(error)).await,
    };
    let native = NativeOrder {
        description: settings.description.clone(),
        out_trade_no: order.order.out_trade_no.clone(),
        time_expire: domain::wechat::client::beijing_time(order.order.expires_at),
        attach: order.order.order_id.clone(),
        notify_url: pay.notify_url.clone(),
        amount_fen: order.order.amount_fen,
        payer_client_ip: caller.client_ip.map(|ip| ip.to_string()),
    };
    let code_url = match timed("native_order", pay.client.native_order(&native)).await {
        Ok(code_url) => code_url,
        Err(error) => {
            let code = crate::payments::error_code(&error);
            if let Err(store) = domain::payments::mark_failed(&state.db, new.id, &code).await {
                tracing::warn!(error = %store, "cannot mark an order failed; the job closes it");
            }
            metrics::counter!("payments_orders_total", "outcome" => "failed").increment(1);
            return guard.abandon(wechat_error(error)).await;
        }
    };
    let actor = caller.actor();
    let (response, placed) = guard
        .run_tx(StatusCode::CREATED, |mut tx: Tx| async move {
            let result = async {
                let order = domain::payments::set_code_url(&mut tx, new.id, &code_url).await?;
                domain::audit::record(
                    &mut tx,
                    &actor,
                    AuditEntry {
                        action: "payments.recharge",
                        target_type: Some("payment_order"),
                        target_id: Some(&order.order.order_id),
                        outcome: Outcome::Success,
                        detail: Some(serde_json::json!({
                            "amount_fen": order.order.amount_fen,
                            "credits": order.order.credits,
                            "out_trade_no": order.order.out_trade_no,
                        })),
                    },
                )
                .await?;
                Ok::<_, ApiError>(order.order)
            }
            .await;
            (tx, result)
        })
        .await;
    if placed.is_some() {
        metrics::counter!("payments_orders_total", "outcome" => "created").increment(1);
    }
    response
}

fn order_id(id: &str) -> ApiResult<Uuid> {
    id.parse()
        .map_err(|_| ApiError::not_found("payment order not found"))
}

/// The order if the caller may see it: its own, or any with `payments:read:any` (404 otherwise).
async fn visible_order(state: &AppState, caller: &Caller, id: &str) -> ApiResult<StoredOrder> {
    let order = domain::payments::get(&state.db, order_id(id)?)
        .await?
        .filter(|order| {
            order.order.user_id == caller.principal.user_id || caller.has_scope("payments:read:any")
        })
        .ok_or_else(|| ApiError::not_found("payment order not found"))?;
    Ok(order)
}

/// One order: the caller's own, or any with `payments:read:any` (finance, operator, admin).
#[utoipa::path(get, path = "/api/v1/payments/orders/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = PaymentOrder),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PaymentOrder>> {
    Ok(Json(visible_order(&state, &caller, &id).await?.order))
}

/// `?status=&limit=&cursor=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn invalid_query(detail: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, detail)
}

fn parse_cursor(cursor: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    let forged = || invalid_query("cursor is not one this server issued");
    let bytes = cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|hex_part| hex::decode(hex_part).ok())
        .filter(|bytes| bytes.len() == 24)
        .ok_or_else(forged)?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| forged())?);
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(forged)?;
    let id = Uuid::from_slice(&bytes[8..]).map_err(|_| forged())?;
    Ok((at, id))
}

fn cursor_of(order: &PaymentOrder) -> Option<String> {
    let id: Uuid = order.order_id.parse().ok()?;
    let mut bytes = order.created_at.timestamp_micros().to_be_bytes().to_vec();
    bytes.extend_from_slice(id.as_bytes());
    Some(format!("{CURSOR_PREFIX}{}", hex::encode(bytes)))
}

/// Orders, newest first: the caller's own, or everyone's with `payments:read:any`.
#[utoipa::path(get, path = "/api/v1/payments/orders", tag = "payments", security(("bearer" = [])),
    params(OrdersQuery),
    responses(
        (status = 200, body = Page<PaymentOrder>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<OrdersQuery>,
) -> ApiResult<Json<Page<PaymentOrder>>> {
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
        Some(_) => return Err(invalid_query("limit must be between 1 and 500")),
    };
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let user = (!caller.has_scope("payments:read:any")).then_some(&caller.principal.user_id);
    let mut items = domain::payments::list(
        &state.db,
        user.map(String::as_str),
        query.status,
        after,
        i64::from(limit) + 1,
    )
    .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().and_then(cursor_of)
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Closes a pending order: at WeChat first, then re-queried (WeChat answers a close of an order
/// it does not know with 204 too), then here. A paid order is 409 `order_paid` (and is credited
/// if the query finds it paid and not yet credited). The owner, finance and admin may close.
#[utoipa::path(post, path = "/api/v1/payments/orders/{id}/close", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = PaymentOrder),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PaymentOrder>> {
    let pay = pay(&state)?;
    let order = domain::payments::get(&state.db, order_id(&id)?)
        .await?
        .filter(|order| {
            order.order.user_id == caller.principal.user_id
                || caller.has_scope("payments:close:any")
        })
        .ok_or_else(|| ApiError::not_found("payment order not found"))?;
    let paid = || {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::OrderPaid,
            "the order is paid; it cannot be closed",
        )
    };
    match order.order.status {
        OrderStatus::Paid | OrderStatus::Refunded => return Err(paid()),
        OrderStatus::Closed | OrderStatus::Failed => return Ok(Json(order.order)),
        OrderStatus::Pending => {}
    }
    let number = &order.order.out_trade_no;
    match timed("close", pay.client.close_order(number)).await {
        Ok(()) => {}
        Err(PayError::Wechat { code, .. }) if code == "ORDERPAID" || code == "ORDER_PAID" => {}
        Err(error) => return Err(wechat_error(error)),
    }
    let queried = timed("query", pay.client.query_order(number))
        .await
        .map_err(wechat_error)?;
    if let Some(transaction) = queried.filter(|t| t.trade_state == "SUCCESS") {
        let request_id = caller.request_id.clone();
        let credited = crate::payments::credit(
            &state,
            pay,
            &order,
            &transaction,
            CreditSource::Query,
            None,
            request_id,
        )
        .await;
        if let Err(error) = credited {
            tracing::warn!(order_id = %order.order.order_id, %error, "close found a payment it could not credit");
        }
        return Err(paid());
    }
    let closed = domain::payments::close(&state.db, order.id()).await?;
    metrics::counter!("payments_orders_total", "outcome" => "closed").increment(1);
    domain::audit::record_now(
        &state.db,
        &caller.actor(),
        AuditEntry {
            action: "payments.close",
            target_type: Some("payment_order"),
            target_id: Some(&closed.order.order_id),
            outcome: Outcome::Success,
            detail: None,
        },
    )
    .await?;
    Ok(Json(closed.order))
}

/// The body WeChat Pay expects with a refusal of its notification (it retries on any 4xx/5xx).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WechatReply {
    /// Always `FAIL`.
    pub code: String,
    /// Why.
    pub message: String,
}

/// WeChat's reply to a refused notification: `{"code":"FAIL","message":…}` with the status that
/// makes WeChat retry.
fn fail(status: StatusCode, message: &str) -> Response {
    let reply = WechatReply {
        code: "FAIL".into(),
        message: message.into(),
    };
    let body = serde_json::to_string(&reply).unwrap_or_default();
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    response.extensions_mut().insert(crate::problem::Verbatim);
    response
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Audits a notification's outcome on its own connection (never fails the reply).
async fn audit_notification(
    state: &AppState,
    request_id: Option<String>,
    verdict: &str,
    order_id: Option<&str>,
    detail: serde_json::Value,
) {
    metrics::counter!("payments_notifications_total", "verdict" => verdict.to_owned()).increment(1);
    let outcome = match verdict {
        "credited" | "duplicate" | "ignored" => Outcome::Success,
        "bad_signature" => Outcome::Denied,
        _ => Outcome::Failure,
    };
    let actor = crate::payments::wechat_actor(request_id);
    let written = domain::audit::record_now(
        &state.db,
        &actor,
        AuditEntry {
            action: "payments.notification",
            target_type: Some("payment_order"),
            target_id: order_id,
            outcome,
            detail: Some(serde_json::json!({ "verdict": verdict, "detail": detail })),
        },
    )
    .await;
    if let Err(error) = written {
        tracing::warn!(%error, verdict, "cannot audit a payment notification");
    }
}

/// WeChat Pay's payment notification (public; WeChat calls it). The signature over the raw body
/// is verified first (headers present, serial = the configured key id, timestamp within 300 s,
/// probes refused), then the resource is decrypted, then checked against its order, then the
/// order is credited once. 204 when processed or already processed; 401 `{"code":"FAIL"}` for a
/// bad signature, serial or timestamp; 400 for a body that does not decrypt or does not match
/// its order; 500 for a transient failure (WeChat retries).
#[utoipa::path(post, path = "/api/v1/payments/wechat/notify", tag = "payments",
    request_body(content = String, content_type = "application/json",
        description = "WeChat Pay's signed notification envelope"),
    responses(
        (status = 204, description = "Processed (or processed before)"),
        (status = 400, body = WechatReply, content_type = "application/json",
            description = "Undecryptable, or not matching its order"),
        (status = 401, body = WechatReply, content_type = "application/json",
            description = "Not signed by WeChat Pay (bad signature, serial or timestamp; probes)"),
        (status = 500, body = WechatReply, content_type = "application/json",
            description = "Transient failure; WeChat retries"),
        (status = 503, body = WechatReply, content_type = "application/json",
            description = "WeChat Pay not configured")))]
pub async fn notify(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let request_id = header(&headers, crate::problem::REQUEST_ID);
    let Some(pay) = state.wechat.pay.as_ref() else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "not configured");
    };
    let signed = SignedHeaders {
        timestamp: header(&headers, "wechatpay-timestamp"),
        nonce: header(&headers, "wechatpay-nonce"),
        signature: header(&headers, "wechatpay-signature"),
        serial: header(&headers, "wechatpay-serial"),
    };
    let read = domain::wechat::notify::read(
        &pay.verifier,
        pay.apiv3_key.expose_secret(),
        &signed,
        &body,
        Utc::now().timestamp(),
    );
    let notification = match read {
        Ok(notification) => notification,
        Err(NotifyError::Forged(error)) => {
            // The error may quote an attacker's header: bounded.
            let reason: String = error.to_string().chars().take(120).collect();
            let detail = serde_json::json!({ "error": reason });
            audit_notification(&state, request_id, "bad_signature", None, detail).await;
            return fail(StatusCode::UNAUTHORIZED, "signature verification failed");
        }
        Err(error) => {
            let reason: String = error.to_string().chars().take(120).collect();
            tracing::warn!(error = %reason, "payment notification does not decrypt");
            let detail = serde_json::json!({ "error": reason });
            audit_notification(&state, request_id, "malformed", None, detail).await;
            return fail(StatusCode::BAD_REQUEST, "the resource does not decrypt");
        }
    };
    if notification.event_type != "TRANSACTION.SUCCESS" {
        let detail = serde_json::json!({ "event_type": notification.event_type });
        audit_notification(&state, request_id, "ignored", None, detail).await;
        return StatusCode::NO_CONTENT.into_response();
    }
    let transaction = &notification.transaction;
    let order = match domain::payments::by_out_trade_no(&state.db, &transaction.out_trade_no).await
    {
        Ok(Some(order)) => order,
        Ok(None) => {
            tracing::warn!(out_trade_no = %transaction.out_trade_no,
                "payment notification for an unknown order");
            let detail = serde_json::json!({ "out_trade_no": transaction.out_trade_no });
            audit_notification(&state, request_id, "unknown_order", None, detail).await;
            return fail(StatusCode::BAD_REQUEST, "unknown out_trade_no");
        }
        Err(error) => {
            tracing::error!(%error, "payment notification: cannot read the order");
            return fail(StatusCode::INTERNAL_SERVER_ERROR, "try again");
        }
    };
    let order_id = order.order.order_id.clone();
    let credited = crate::payments::credit(
        &state,
        pay,
        &order,
        transaction,
        CreditSource::Notification,
        Some(&notification.id),
        request_id.clone(),
    )
    .await;
    let detail = serde_json::json!({ "notification_id": notification.id });
    match credited {
        Ok(Credited::Now) => {
            audit_notification(&state, request_id, "credited", Some(&order_id), detail).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Credited::Before) => {
            audit_notification(&state, request_id, "duplicate", Some(&order_id), detail).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(CreditError::Mismatch(why)) => {
            tracing::warn!(%order_id, %why, "payment notification does not match its order");
            let detail = serde_json::json!({ "notification_id": notification.id, "why": why });
            audit_notification(&state, request_id, "mismatch", Some(&order_id), detail).await;
            fail(StatusCode::BAD_REQUEST, "does not match the order")
        }
        Err(CreditError::Transient(why)) => {
            tracing::error!(%order_id, %why, "payment notification: credit failed; WeChat retries");
            metrics::counter!("payments_notifications_total", "verdict" => "transient")
                .increment(1);
            fail(StatusCode::INTERNAL_SERVER_ERROR, "try again")
        }
    }
}

/// `?from=&to=` (Beijing days, at most 366 apart; default: the last 30 days).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReconciliationsQuery {
    /// First day (`YYYY-MM-DD`).
    pub from: Option<chrono::NaiveDate>,
    /// Last day (`YYYY-MM-DD`).
    pub to: Option<chrono::NaiveDate>,
}

/// Reconciliation runs of a range of Beijing days, newest first, each with its flagged items
/// (finance, admin, auditor).
#[utoipa::path(get, path = "/api/v1/payments/reconciliations", tag = "payments", security(("bearer" = [])),
    params(ReconciliationsQuery),
    responses(
        (status = 200, body = Vec<shared::payments::Reconciliation>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn reconciliations(
    State(state): State<AppState>,
    Query(query): Query<ReconciliationsQuery>,
) -> ApiResult<Json<Vec<shared::payments::Reconciliation>>> {
    let to = query.to.unwrap_or_else(crate::reconcile::beijing_today);
    let from = query
        .from
        .unwrap_or_else(|| to.checked_sub_days(chrono::Days::new(30)).unwrap_or(to));
    if from > to || (to - from).num_days() > 366 {
        return Err(invalid_query(
            "from must not be after to, at most 366 days apart",
        ));
    }
    Ok(Json(
        domain::reconciliation::list(&state.db, from, to).await?,
    ))
}

/// One Beijing day's reconciliation with every item (finance, admin, auditor); 404 before its
/// first run.
#[utoipa::path(get, path = "/api/v1/payments/reconciliations/{date}", tag = "payments", security(("bearer" = [])),
    params(("date" = chrono::NaiveDate, Path, description = "Beijing day, YYYY-MM-DD")),
    responses(
        (status = 200, body = shared::payments::Reconciliation),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn reconciliation(
    State(state): State<AppState>,
    Path(date): Path<String>,
) -> ApiResult<Json<shared::payments::Reconciliation>> {
    let date = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .map_err(|_| ApiError::not_found("no reconciliation of that day"))?;
    domain::reconciliation::get(&state.db, date)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no reconciliation of that day"))
}
