//! Risk control for recharges (`shared/spec/payments.md`, "Risk control"): rules run before any
//! WeChat call, with PostgreSQL as the truth for money caps and pending orders and atomic Redis
//! counters for velocity (PostgreSQL counts without Redis). Every decision is stored
//! (`risk_decisions`); a refusal is 403 `risk_denied` or 429 `risk_rate_limited` with its
//! `reason_code`. After a payment, a payer paying for too many accounts flags their orders for
//! review.

use crate::error::ApiError;
use crate::settings::RiskSettings;
use crate::state::AppState;
use axum::http::StatusCode;
use chrono::Utc;
use shared::ErrorCode;
use std::net::IpAddr;
use uuid::Uuid;

/// What the rules decided for a recharge.
#[derive(Debug)]
pub enum Verdict {
    /// Place a new order.
    Allow,
    /// Answer with this pending order of the same amount instead of a new one.
    Reuse(Box<domain::payments::StoredOrder>),
}

/// A refusal with its rule's reason code.
fn deny(reason_code: &str, detail: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::RiskDenied, detail)
        .with_reason_code(reason_code)
}

fn rate_limited(reason_code: &str, detail: String) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RiskRateLimited,
        detail,
    )
    .with_reason_code(reason_code)
}

/// A recharge to judge.
#[derive(Debug, Clone)]
pub struct Recharge<'a> {
    /// Who pays.
    pub user_id: &'a str,
    /// From where.
    pub client_ip: Option<IpAddr>,
    /// How much, fen.
    pub amount_fen: i64,
}

/// Runs the rules in order (amount, blocks, new account, pending orders, caps, velocity) and
/// stores the decision. Velocity counts only orders the other rules let through.
pub async fn judge(state: &AppState, recharge: &Recharge<'_>) -> Result<Verdict, ApiError> {
    let verdict = rules(state, &state.settings.risk, recharge).await;
    let (outcome, rule, reason, order_id) = match &verdict {
        Ok(Verdict::Allow) => ("allow", "all", None, None),
        Ok(Verdict::Reuse(order)) => ("allow", "reuse_pending", None, Some(order.id())),
        Err(error) => (
            "deny",
            error.extras().reason_code.as_deref().unwrap_or("error"),
            error.extras().reason_code.clone(),
            None,
        ),
    };
    if error_is_transient(&verdict) {
        return verdict;
    }
    metrics::counter!("risk_decisions_total", "outcome" => outcome, "rule" => rule.to_owned())
        .increment(1);
    record(state, recharge, rule, outcome, reason.as_deref(), order_id).await;
    verdict
}

fn error_is_transient(verdict: &Result<Verdict, ApiError>) -> bool {
    matches!(verdict, Err(error) if error.extras().reason_code.is_none())
}

async fn record(
    state: &AppState,
    recharge: &Recharge<'_>,
    rule: &str,
    outcome: &str,
    reason_code: Option<&str>,
    order_id: Option<Uuid>,
) {
    let written = sqlx::query(
        "insert into risk_decisions (user_id, client_ip, order_id, amount_fen, rule, outcome, \
             reason_code) values ($1, $2::inet, $3, $4, $5, $6, $7)",
    )
    .bind(recharge.user_id)
    .bind(recharge.client_ip.map(|ip| ip.to_string()))
    .bind(order_id)
    .bind(recharge.amount_fen)
    .bind(rule)
    .bind(outcome)
    .bind(reason_code)
    .execute(&state.db)
    .await;
    if let Err(error) = written {
        tracing::warn!(%error, "cannot store a risk decision");
    }
}

async fn rules(
    state: &AppState,
    risk: &RiskSettings,
    recharge: &Recharge<'_>,
) -> Result<Verdict, ApiError> {
    let db = &state.db;
    let amount = recharge.amount_fen;
    if amount < risk.min_amount_fen || amount > risk.max_amount_fen {
        return Err(deny(
            "amount_out_of_range",
            format!(
                "a recharge is between {} and {} fen",
                risk.min_amount_fen, risk.max_amount_fen
            ),
        ));
    }
    // Blocks: the user, the address, the user's WeChat identity.
    let blocked: Option<String> = sqlx::query_scalar(
        "select b.kind from risk_blocks b \
          where b.removed_at is null and (b.expires_at is null or b.expires_at > now()) \
            and ((b.kind = 'user' and b.value = $1) \
              or (b.kind = 'ip' and b.value = $2) \
              or (b.kind = 'openid' and b.value in \
                    (select u.wechat_openid from users u where u.id = $1 and u.wechat_openid is not null \
                     union select p.payer_openid from payment_orders p \
                      where p.user_id = $1 and p.payer_openid is not null))) \
          limit 1",
    )
    .bind(recharge.user_id)
    .bind(recharge.client_ip.map(|ip| ip.to_string()).unwrap_or_default())
    .fetch_optional(db)
    .await
    .map_err(crate::error::database_error)?;
    if let Some(kind) = blocked {
        return Err(deny(
            "blocked",
            format!("recharges are blocked for this {kind}"),
        ));
    }
    let age_hours: Option<f64> = sqlx::query_scalar(
        "select extract(epoch from now() - created_at)::float8 / 3600 from users where id = $1",
    )
    .bind(recharge.user_id)
    .fetch_optional(db)
    .await
    .map_err(crate::error::database_error)?;
    if age_hours.is_some_and(|hours| hours < risk.new_account_hours as f64)
        && amount > risk.new_account_max_fen
    {
        return Err(deny(
            "new_account_limit",
            format!(
                "accounts younger than {} h recharge at most {} fen at a time",
                risk.new_account_hours, risk.new_account_max_fen
            ),
        ));
    }
    // Pending orders: the same amount again reuses one (a double click, a reload).
    let pending = domain::payments::pending_of(db, recharge.user_id)
        .await
        .map_err(ApiError::from)?;
    let soon = Utc::now() + chrono::Duration::seconds(60);
    if let Some(order) = pending.iter().find(|order| {
        order.order.amount_fen == amount
            && order.order.code_url.is_some()
            && order.order.expires_at > soon
    }) {
        return Ok(Verdict::Reuse(Box::new(order.clone())));
    }
    if pending.len() as i64 >= risk.max_pending {
        return Err(deny(
            "too_many_pending",
            format!(
                "at most {} unpaid orders at a time: pay or close one",
                risk.max_pending
            ),
        ));
    }
    // Caps count what is paid and what is pending, in Beijing days and months.
    let (day, month): (i64, i64) = sqlx::query_as(
        "select coalesce(sum(amount_fen) filter (where created_at >= \
                    date_trunc('day', now() at time zone 'Asia/Shanghai') at time zone 'Asia/Shanghai'), 0)::bigint, \
                coalesce(sum(amount_fen), 0)::bigint \
           from payment_orders \
          where user_id = $1 and status in ('pending', 'paid', 'refunded') \
            and created_at >= date_trunc('month', now() at time zone 'Asia/Shanghai') at time zone 'Asia/Shanghai'",
    )
    .bind(recharge.user_id)
    .fetch_one(db)
    .await
    .map_err(crate::error::database_error)?;
    if day + amount > risk.daily_cap_fen {
        return Err(deny(
            "daily_cap",
            format!("at most {} fen a day (Beijing time)", risk.daily_cap_fen),
        ));
    }
    if month + amount > risk.monthly_cap_fen {
        return Err(deny(
            "monthly_cap",
            format!(
                "at most {} fen a month (Beijing time)",
                risk.monthly_cap_fen
            ),
        ));
    }
    velocity(state, risk, recharge).await?;
    Ok(Verdict::Allow)
}

/// Counts the order against the user's and the address's windows, atomically: all counters are
/// checked and, only when none is full, all incremented.
const VELOCITY: &str = "\
for i = 1, #KEYS do \
  local count = tonumber(redis.call('GET', KEYS[i]) or '0') \
  if count >= tonumber(ARGV[i * 2 - 1]) then return i end \
end \
for i = 1, #KEYS do \
  redis.call('INCR', KEYS[i]) \
  redis.call('EXPIRE', KEYS[i], ARGV[i * 2]) \
end \
return 0";

async fn velocity(
    state: &AppState,
    risk: &RiskSettings,
    recharge: &Recharge<'_>,
) -> Result<(), ApiError> {
    let now = Utc::now().timestamp();
    let (minute, hour) = (now / 60, now / 3600);
    let prefix = &state.settings.redis_key_prefix;
    let user = recharge.user_id;
    let mut windows = vec![
        (
            format!("{prefix}:risk:user:{user}:m:{minute}"),
            risk.user_per_minute,
            120,
            "user_rate",
        ),
        (
            format!("{prefix}:risk:user:{user}:h:{hour}"),
            risk.user_per_hour,
            7200,
            "user_rate",
        ),
    ];
    if let Some(ip) = recharge.client_ip {
        windows.push((
            format!("{prefix}:risk:ip:{ip}:m:{minute}"),
            risk.ip_per_minute,
            120,
            "ip_rate",
        ));
    }
    let connection = state
        .redis_connection()
        .await
        .map_err(|error| ApiError::unavailable("Redis is unavailable", error))?;
    let full = match connection {
        Some(mut connection) => {
            let script = redis::Script::new(VELOCITY);
            let mut invocation = script.prepare_invoke();
            for (key, limit, ttl, _) in &windows {
                invocation.key(key).arg(*limit).arg(*ttl);
            }
            let full: usize = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|error| ApiError::unavailable("Redis is unavailable", error))?;
            full
        }
        // Without Redis: the orders themselves are the counters.
        None => {
            let (per_minute, per_hour, ip_minute): (i64, i64, i64) = sqlx::query_as(
                "select count(*) filter (where user_id = $1 and created_at > now() - interval '1 minute'), \
                        count(*) filter (where user_id = $1), \
                        count(*) filter (where payer_client_ip = $2::inet \
                                           and created_at > now() - interval '1 minute') \
                   from payment_orders where created_at > now() - interval '1 hour' \
                    and (user_id = $1 or payer_client_ip = $2::inet)",
            )
            .bind(user)
            .bind(recharge.client_ip.map(|ip| ip.to_string()))
            .fetch_one(&state.db)
            .await
            .map_err(crate::error::database_error)?;
            if per_minute >= risk.user_per_minute {
                1
            } else if per_hour >= risk.user_per_hour {
                2
            } else if recharge.client_ip.is_some() && ip_minute >= risk.ip_per_minute {
                3
            } else {
                0
            }
        }
    };
    match full.checked_sub(1).and_then(|index| windows.get(index)) {
        None => Ok(()),
        Some((_, limit, ttl, reason)) => Err(rate_limited(
            reason,
            format!(
                "at most {limit} recharges per {}; try again later",
                if *ttl > 120 { "hour" } else { "minute" }
            ),
        )),
    }
}

/// After a payment: a payer openid seen paying for more than `payer_max_accounts` accounts in
/// 24 h, or a blocked one, flags its orders for review (the money is in; a person decides).
pub async fn review_payer(state: &AppState, order_id: Uuid) {
    let risk = &state.settings.risk;
    let reviewed = async {
        let flagged: Vec<(Uuid, String, String)> = sqlx::query_as(
            "with this as (select payer_openid from payment_orders where id = $1 and payer_openid is not null), \
                  recent as (select o.id, o.account_id, o.user_id from payment_orders o, this \
                              where o.payer_openid = this.payer_openid \
                                and o.paid_at > now() - interval '24 hours'), \
                  blocked as (select 1 from risk_blocks b, this where b.kind = 'openid' \
                                and b.value = this.payer_openid and b.removed_at is null \
                                and (b.expires_at is null or b.expires_at > now())) \
             update payment_orders o set review_reason = case when exists (select 1 from blocked) \
                        then 'blocked_payer' else 'payer_many_accounts' end \
               from recent \
              where o.id = recent.id and o.review_reason is null \
                and ((select count(distinct account_id) from recent) > $2 \
                     or exists (select 1 from blocked)) \
             returning o.id, o.user_id, o.review_reason",
        )
        .bind(order_id)
        .bind(risk.payer_max_accounts)
        .fetch_all(&state.db)
        .await?;
        for (id, user_id, reason) in &flagged {
            sqlx::query(
                "insert into risk_decisions (user_id, order_id, rule, outcome, reason_code) \
                 values ($1, $2, 'payer_accounts', 'review', $3)",
            )
            .bind(user_id)
            .bind(id)
            .bind(reason)
            .execute(&state.db)
            .await?;
            metrics::counter!("risk_decisions_total", "outcome" => "review", "rule" => "payer_accounts")
                .increment(1);
            tracing::warn!(order_id = %id, %reason, "a paid order is flagged for review");
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(error) = reviewed {
        tracing::warn!(%error, "cannot review a payer");
    }
}
