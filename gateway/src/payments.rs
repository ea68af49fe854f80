//! WeChat Pay recharges and WeChat QR login on a node: the clients built from the settings
//! (start-up errors name the setting at fault), crediting a verified payment exactly once through
//! the account's actor, and the query fallback and expiry job (one node at a time).

use crate::settings::{PaymentsSettings, WechatSettings};
use crate::state::AppState;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use domain::DomainError;
use domain::audit::Actor;
use domain::ledger::{LedgerRequest, Operation};
use domain::payments::{CreditSource, PaymentCredit, StoredOrder};
use domain::wechat::apiv3::{MerchantSigner, PlatformVerifier};
use domain::wechat::client::{PayConfig, PayError, Transaction, WechatPay};
use domain::wechat::login::{LoginConfig, WechatLogin};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use shared::Role;
use shared::payments::OrderStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The WeChat Pay side of a node.
#[derive(Debug)]
pub struct Pay {
    /// Signed calls to WeChat Pay.
    pub client: WechatPay,
    /// Checks notifications.
    pub verifier: PlatformVerifier,
    /// Decrypts notifications.
    pub apiv3_key: SecretString,
    /// Where WeChat sends notifications.
    pub notify_url: String,
    /// The merchant.
    pub mchid: String,
    /// The AppID bound to the merchant.
    pub appid: String,
}

/// What of WeChat this node may use: each part only when fully configured.
#[derive(Debug, Default)]
pub struct Wechat {
    /// WeChat Pay (recharges).
    pub pay: Option<Pay>,
    /// QR login.
    pub login: Option<WechatLogin>,
}

fn read_file(path: &std::path::Path, setting: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("{setting}: cannot read {}", path.display()))
}

impl Wechat {
    /// The clients the settings configure. A part with some of its settings missing, a key file
    /// that does not hold the right key, or an APIv3 key that is not 32 bytes is an error naming
    /// the setting.
    pub fn from_settings(settings: &WechatSettings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let login_parts = [
            ("HUB_WECHAT__LOGIN_APPID", settings.login_appid.is_some()),
            ("HUB_WECHAT__LOGIN_SECRET", settings.login_secret.is_some()),
            (
                "HUB_WECHAT__LOGIN_REDIRECT_URI",
                settings.login_redirect_uri.is_some(),
            ),
        ];
        let login = match complete(&login_parts)? {
            false => None,
            true => Some(
                WechatLogin::new(LoginConfig {
                    open_base: settings.open_base.trim_end_matches('/').to_owned(),
                    sns_base: settings.sns_base.trim_end_matches('/').to_owned(),
                    appid: settings.login_appid.clone().unwrap_or_default(),
                    secret: settings
                        .login_secret
                        .clone()
                        .unwrap_or_else(|| SecretString::from("")),
                    redirect_uri: settings.login_redirect_uri.clone().unwrap_or_default(),
                    timeout,
                })
                .map_err(|error| anyhow::anyhow!("WeChat login client: {error}"))?,
            ),
        };
        let pay_parts = [
            ("HUB_WECHAT__PAY_APPID", settings.pay_appid.is_some()),
            ("HUB_WECHAT__MCHID", settings.mchid.is_some()),
            (
                "HUB_WECHAT__MERCHANT_SERIAL_NO",
                settings.merchant_serial_no.is_some(),
            ),
            (
                "HUB_WECHAT__MERCHANT_PRIVATE_KEY_FILE",
                settings.merchant_private_key_file.is_some(),
            ),
            (
                "HUB_WECHAT__PLATFORM_PUBLIC_KEY_ID",
                settings.platform_public_key_id.is_some(),
            ),
            (
                "HUB_WECHAT__PLATFORM_PUBLIC_KEY_FILE",
                settings.platform_public_key_file.is_some(),
            ),
            ("HUB_WECHAT__APIV3_KEY", settings.apiv3_key.is_some()),
            ("HUB_WECHAT__NOTIFY_URL", settings.notify_url.is_some()),
        ];
        let pay = match complete(&pay_parts)? {
            false => None,
            true => Some(Self::pay(settings, timeout)?),
        };
        Ok(Self { pay, login })
    }

    fn pay(settings: &WechatSettings, timeout: Duration) -> anyhow::Result<Pay> {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let (mchid, appid) = (text(&settings.mchid), text(&settings.pay_appid));
        let key_path = settings
            .merchant_private_key_file
            .clone()
            .unwrap_or_default();
        let signer = MerchantSigner::from_pem(
            &mchid,
            &text(&settings.merchant_serial_no),
            &read_file(&key_path, "HUB_WECHAT__MERCHANT_PRIVATE_KEY_FILE")?,
        )
        .map_err(|error| {
            anyhow::anyhow!(
                "HUB_WECHAT__MERCHANT_PRIVATE_KEY_FILE ({}): {error}",
                key_path.display()
            )
        })?;
        let public_path = settings
            .platform_public_key_file
            .clone()
            .unwrap_or_default();
        let public_pem = read_file(&public_path, "HUB_WECHAT__PLATFORM_PUBLIC_KEY_FILE")?;
        let key_id = text(&settings.platform_public_key_id);
        let verifier = |what: &str| {
            PlatformVerifier::from_pem(&key_id, &public_pem).map_err(|error| {
                anyhow::anyhow!(
                    "HUB_WECHAT__PLATFORM_PUBLIC_KEY_FILE ({}): {error} ({what})",
                    public_path.display()
                )
            })
        };
        let apiv3_key = settings.apiv3_key.clone().unwrap_or_default();
        if apiv3_key.expose_secret().len() != 32 {
            bail!("HUB_WECHAT__APIV3_KEY must be exactly 32 bytes");
        }
        let notify_url = text(&settings.notify_url);
        if !(notify_url.starts_with("https://") || notify_url.starts_with("http://"))
            || notify_url.contains('?')
            || notify_url.len() > 255
        {
            bail!("HUB_WECHAT__NOTIFY_URL must be an absolute URL without a query, ≤ 255 bytes");
        }
        if mchid.is_empty() || mchid.len() > 32 || appid.is_empty() || appid.len() > 32 {
            bail!("HUB_WECHAT__MCHID and HUB_WECHAT__PAY_APPID must be 1 to 32 characters");
        }
        let client = WechatPay::new(PayConfig {
            api_base: settings.api_base.trim_end_matches('/').to_owned(),
            mchid: mchid.clone(),
            appid: appid.clone(),
            signer,
            verifier: verifier("answers")?,
            timeout,
            retries: settings.retries,
        })
        .map_err(|error| anyhow::anyhow!("WeChat Pay client: {error}"))?;
        Ok(Pay {
            client,
            verifier: verifier("notifications")?,
            apiv3_key,
            notify_url,
            mchid,
            appid,
        })
    }
}

/// Whether every part is set; an error naming the missing ones when only some are.
fn complete(parts: &[(&str, bool)]) -> anyhow::Result<bool> {
    let missing: Vec<&str> = parts
        .iter()
        .filter(|(_, set)| !set)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    if missing.len() == parts.len() {
        return Ok(false);
    }
    bail!(
        "WeChat is partly configured: {} missing",
        missing.join(", ")
    )
}

/// Times a WeChat call and counts its errors.
pub async fn timed<T, F>(call: &'static str, work: F) -> Result<T, PayError>
where
    F: Future<Output = Result<T, PayError>>,
{
    let started = Instant::now();
    let result = work.await;
    metrics::histogram!("wechat_call_duration_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &result {
        metrics::counter!("wechat_call_errors_total", "call" => call, "code" => error_code(error))
            .increment(1);
    }
    result
}

/// A bounded label for a WeChat failure.
pub fn error_code(error: &PayError) -> String {
    match error {
        PayError::Transport(_) => "transport".into(),
        PayError::Forged(_) => "signature".into(),
        PayError::Decode(_) => "decode".into(),
        PayError::BillHash { .. } => "bill_hash".into(),
        PayError::Wechat { code, .. } => code.chars().take(32).collect(),
    }
}

/// The actor of payment credits in the ledger and the audit trail.
pub fn wechat_actor(request_id: Option<String>) -> Actor {
    Actor {
        id: "wechatpay".into(),
        roles: vec![Role::Service],
        request_id,
        client_ip: None,
    }
}

/// Why a verified transaction was not credited.
#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    /// It does not match its order (merchant, AppID, number, amount), or is not a payment.
    #[error("{0}")]
    Mismatch(String),
    /// The ledger or the database failed: try again later.
    #[error("{0}")]
    Transient(String),
}

/// What crediting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credited {
    /// This call credited it.
    Now,
    /// It was credited before (a duplicate notification, a second node, a query).
    Before,
}

fn parse_success_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// Credits `order` for a verified SUCCESS `transaction`, exactly once: checks the transaction
/// against the order, then one `recharge` ledger row through the account's actor in the
/// transaction that marks the order paid; publishes `payment.succeeded` and `balance.changed` on
/// the owner's channel.
pub async fn credit(
    state: &AppState,
    pay: &Pay,
    order: &StoredOrder,
    transaction: &Transaction,
    source: CreditSource,
    notification_id: Option<&str>,
    request_id: Option<String>,
) -> Result<Credited, CreditError> {
    let order_view = &order.order;
    let mismatch = |what: &str| Err(CreditError::Mismatch(format!("{what} does not match")));
    if transaction.mchid != pay.mchid {
        return mismatch("mchid");
    }
    if transaction.appid != pay.appid {
        return mismatch("appid");
    }
    if transaction.out_trade_no != order_view.out_trade_no {
        return mismatch("out_trade_no");
    }
    if transaction.amount.total != order_view.amount_fen {
        return mismatch("amount");
    }
    if transaction.trade_state != "SUCCESS" {
        return Err(CreditError::Mismatch(format!(
            "trade_state is {}, not SUCCESS",
            transaction.trade_state
        )));
    }
    let Some(transaction_id) = transaction.transaction_id.clone() else {
        return mismatch("transaction_id");
    };
    if matches!(order_view.status, OrderStatus::Paid | OrderStatus::Refunded) {
        return Ok(Credited::Before);
    }
    if order_view.status != OrderStatus::Pending {
        // Paid at WeChat after it was closed or failed here: the money arrived, so it counts.
        tracing::warn!(order_id = %order_view.order_id, status = order_view.status.as_str(),
            "a payment arrived for an order that is not pending; crediting it");
    }
    let request = LedgerRequest {
        account_id: order_view.account_id.clone(),
        operation: Operation::Recharge {
            amount: order_view.credits,
            payment: PaymentCredit {
                order_id: order.id(),
                transaction_id,
                success_time: parse_success_time(transaction.success_time.as_deref()),
                payer_openid: transaction.payer.as_ref().map(|payer| payer.openid.clone()),
                notification_id: notification_id.map(str::to_owned),
                source,
            },
        },
        actor: wechat_actor(request_id),
        completion: None,
        task: None,
    };
    let outcome = state
        .ledger
        .apply(request)
        .await
        .map_err(|error| CreditError::Transient(error.to_string()))?;
    match outcome.result {
        Ok(applied) => {
            metrics::counter!("payments_orders_total", "outcome" => "paid").increment(1);
            tracing::info!(order_id = %order_view.order_id, credits = order_view.credits,
                source = source.as_str(), "payment credited");
            let user = format!("user:{}", order_view.user_id);
            let broker = &state.realtime.broker;
            broker
                .publish_or_keep(
                    &user,
                    json!({
                        "type": "payment.succeeded",
                        "ts": Utc::now().timestamp_millis(),
                        "order_id": order_view.order_id,
                        "out_trade_no": order_view.out_trade_no,
                        "amount_fen": order_view.amount_fen,
                        "credits": order_view.credits,
                        "account_id": order_view.account_id,
                    }),
                )
                .await;
            broker
                .publish_or_keep(
                    &user,
                    json!({
                        "type": "balance.changed",
                        "ts": Utc::now().timestamp_millis(),
                        "account_id": order_view.account_id,
                        "available": applied.balance.available,
                        "held": applied.balance.held,
                        "total": applied.balance.total,
                        "debt": applied.balance.debt,
                        "order_id": order_view.order_id,
                    }),
                )
                .await;
            crate::risk::review_payer(state, order.id()).await;
            state.events.server(
                "recharge.paid",
                Some(&order_view.user_id),
                json!({
                    "order_id": order_view.order_id, "amount_fen": order_view.amount_fen,
                    "credits": order_view.credits,
                }),
            );
            Ok(Credited::Now)
        }
        Err(DomainError::AlreadyApplied(_)) => Ok(Credited::Before),
        Err(error @ (DomainError::Validation(_) | DomainError::NotFound { .. })) => {
            Err(CreditError::Mismatch(error.to_string()))
        }
        Err(error) => Err(CreditError::Transient(error.to_string())),
    }
}

/// The query fallback and expiry job (every `payments.query_scan_ms`, one node at a time):
/// queries pending orders whose query is due (first a minute after they were placed, then with
/// backoff) and credits a verified SUCCESS like a notification; closes orders past their expiry
/// at WeChat and here.
pub fn query_job(settings: &PaymentsSettings) -> crate::jobs::Job {
    crate::jobs::Job {
        name: "payments.query",
        schedule: crate::jobs::Schedule::Every(Duration::from_millis(settings.query_scan_ms)),
        lease: Duration::from_secs(60),
        run: Arc::new(|state, _fence| {
            Box::pin(async move {
                let looked_at = query_due_orders(&state).await?;
                Ok(crate::jobs::Report::done(format!(
                    "{looked_at} orders queried"
                )))
            })
        }),
    }
}

/// The daily reconciliation of the previous Beijing day at `payments.reconcile_at`.
pub fn reconcile_job(settings: &PaymentsSettings) -> crate::jobs::Job {
    let at = chrono::NaiveTime::parse_from_str(&settings.reconcile_at, "%H:%M")
        .unwrap_or(chrono::NaiveTime::MIN);
    crate::jobs::Job {
        name: crate::reconcile::JOB,
        schedule: crate::jobs::Schedule::DailyAt(at),
        lease: Duration::from_secs(120),
        run: Arc::new(|state, fence| Box::pin(crate::reconcile::daily(state, fence))),
    }
}

/// Most orders one run looks at.
const JOB_BATCH: i64 = 50;

/// One pass of the query fallback: how many due orders it looked at.
pub async fn query_due_orders(state: &AppState) -> anyhow::Result<usize> {
    let Some(pay) = state.wechat.pay.as_ref() else {
        return Ok(0);
    };
    query_due(state, pay, &state.settings.payments).await
}

async fn query_due(
    state: &AppState,
    pay: &Pay,
    settings: &PaymentsSettings,
) -> anyhow::Result<usize> {
    let now = Utc::now();
    let due = domain::payments::due_for_query(&state.db, now, JOB_BATCH).await?;
    for order in &due {
        if let Err(error) = settle_one(state, pay, order, settings).await {
            tracing::warn!(order_id = %order.order.order_id, error = %format!("{error:#}"),
                "payment job: order left for a later run");
            // Back off like an unpaid order, so failing orders cannot starve the others.
            let after = Duration::from_secs(settings.query_after_secs);
            let next = Utc::now() + next_query(after, order.query_attempts);
            domain::payments::queried(&state.db, order.id(), next).await?;
        }
    }
    Ok(due.len())
}

/// Backoff of the query fallback after a query found the order unpaid: 2, 4, 8, … times the
/// first delay, at most 10 minutes.
fn next_query(after: Duration, attempts: i32) -> chrono::Duration {
    let factor = 2u32 << attempts.clamp(0, 4);
    let delay = (after * factor).min(Duration::from_secs(600));
    chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::minutes(10))
}

/// Queries one due order and acts on the answer.
async fn settle_one(
    state: &AppState,
    pay: &Pay,
    order: &StoredOrder,
    settings: &PaymentsSettings,
) -> anyhow::Result<()> {
    let number = &order.order.out_trade_no;
    let expired = order.order.expires_at <= Utc::now();
    if expired {
        // Close first so the payer cannot pay between the query and the close.
        match timed("close", pay.client.close_order(number)).await {
            Ok(()) | Err(PayError::Wechat { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let queried = timed("query", pay.client.query_order(number)).await?;
    match queried {
        Some(transaction) if transaction.trade_state == "SUCCESS" => {
            credit(
                state,
                pay,
                order,
                &transaction,
                CreditSource::Query,
                None,
                None,
            )
            .await
            .map_err(|error| anyhow::anyhow!("crediting: {error}"))?;
        }
        Some(transaction) if transaction.trade_state == "CLOSED" || expired => {
            let _ = transaction;
            close_here(state, order).await?;
        }
        None if expired => close_here(state, order).await?,
        _ => {
            let after = Duration::from_secs(settings.query_after_secs);
            let next = Utc::now() + next_query(after, order.query_attempts);
            domain::payments::queried(&state.db, order.id(), next).await?;
        }
    }
    Ok(())
}

async fn close_here(state: &AppState, order: &StoredOrder) -> anyhow::Result<()> {
    match domain::payments::close(&state.db, order.id()).await {
        Ok(_) => {
            metrics::counter!("payments_orders_total", "outcome" => "closed").increment(1);
            Ok(())
        }
        Err(DomainError::AlreadyApplied(_)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The node's WeChat clients, shared.
pub type SharedWechat = Arc<Wechat>;
