//! Recharge orders (WeChat Pay Native): placed, shown as a QR code, then paid (credited once, by
//! the ledger, in the transaction that marks the order paid: see [`PaymentCredit`]), closed or
//! failed. The query fallback's schedule lives on the order (`next_query_at`).

use crate::{DomainError, DomainResult};
use chrono::{DateTime, Utc};
use shared::payments::{OrderStatus, PaymentOrder};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::net::IpAddr;
use uuid::Uuid;

const COLUMNS: &str = "id, out_trade_no, account_id, user_id, amount_fen, credits, status, \
    code_url, expires_at, paid_at, wechat_transaction_id, credited_entry_id, failure_code, \
    created_at, query_attempts";

/// How a payment was learnt of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditSource {
    /// WeChat's callback.
    Notification,
    /// The query fallback (or a close that found the order paid).
    Query,
    /// The T+1 reconciliation.
    Reconciliation,
}

impl CreditSource {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditSource::Notification => "notification",
            CreditSource::Query => "query",
            CreditSource::Reconciliation => "reconciliation",
        }
    }
}

/// A verified payment to credit: carried by a `recharge` ledger operation, which locks the order,
/// refuses one already paid ([`DomainError::AlreadyApplied`]), and marks it paid in its own
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCredit {
    /// The order.
    pub order_id: Uuid,
    /// WeChat's transaction id.
    pub transaction_id: String,
    /// When WeChat says it was paid.
    pub success_time: Option<DateTime<Utc>>,
    /// The payer (per payment AppID).
    pub payer_openid: Option<String>,
    /// The notification that reported it, if one did.
    pub notification_id: Option<String>,
    /// How it was learnt of.
    pub source: CreditSource,
}

/// A new order, as the recharge route places it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Its id.
    pub id: Uuid,
    /// The credited account.
    pub account_id: String,
    /// Who places it.
    pub user_id: String,
    /// In fen.
    pub amount_fen: i64,
    /// Credits per fen (the setting at this moment).
    pub credits_per_fen: i64,
    /// Shown in the payer's bill.
    pub description: String,
    /// The payer's address.
    pub payer_client_ip: Option<IpAddr>,
    /// When it closes unpaid.
    pub expires_at: DateTime<Utc>,
    /// The query fallback's first query.
    pub first_query_at: DateTime<Utc>,
}

/// The merchant order number of an order: its id's 32 hex digits (WeChat allows 6-32 of
/// `[0-9A-Za-z_-|*]`; hex needs no escaping in paths or signatures).
pub fn out_trade_no(id: Uuid) -> String {
    id.simple().to_string()
}

/// An order as stored, with what the query fallback needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    /// The order as the API shows it.
    pub order: PaymentOrder,
    /// Queries made so far by the fallback.
    pub query_attempts: i32,
}

impl StoredOrder {
    /// The order's id.
    pub fn id(&self) -> Uuid {
        self.order.order_id.parse().unwrap_or_default()
    }
}

fn order_from_row(row: &PgRow) -> DomainResult<StoredOrder> {
    let status: String = row.try_get("status")?;
    let id: Uuid = row.try_get("id")?;
    Ok(StoredOrder {
        order: PaymentOrder {
            order_id: id.to_string(),
            out_trade_no: row.try_get("out_trade_no")?,
            account_id: row.try_get("account_id")?,
            user_id: row.try_get("user_id")?,
            amount_fen: row.try_get("amount_fen")?,
            credits: row.try_get("credits")?,
            status: OrderStatus::parse(&status).ok_or_else(|| {
                DomainError::Database(sqlx::Error::Decode(
                    format!("unknown order status `{status}`").into(),
                ))
            })?,
            code_url: row.try_get("code_url")?,
            expires_at: row.try_get("expires_at")?,
            paid_at: row.try_get("paid_at")?,
            transaction_id: row.try_get("wechat_transaction_id")?,
            credited_entry_id: row.try_get("credited_entry_id")?,
            failure_code: row.try_get("failure_code")?,
            created_at: row.try_get("created_at")?,
        },
        query_attempts: row.try_get("query_attempts")?,
    })
}

/// Stores a new `pending` order (before WeChat is asked, so a crash leaves an order the expiry
/// job closes rather than a payment nobody knows of).
pub async fn insert(conn: &mut PgConnection, order: &NewOrder) -> DomainResult<StoredOrder> {
    let credits = order
        .amount_fen
        .checked_mul(order.credits_per_fen)
        .filter(|credits| *credits <= shared::limits::MAX_AMOUNT)
        .ok_or_else(|| {
            DomainError::Validation("the order would grant more credits than allowed".into())
        })?;
    let row = sqlx::query(&format!(
        "insert into payment_orders (id, out_trade_no, account_id, user_id, amount_fen, \
             credits, credits_per_fen, description, payer_client_ip, expires_at, next_query_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9::inet, $10, $11) returning {COLUMNS}"
    ))
    .bind(order.id)
    .bind(out_trade_no(order.id))
    .bind(&order.account_id)
    .bind(&order.user_id)
    .bind(order.amount_fen)
    .bind(credits)
    .bind(order.credits_per_fen)
    .bind(&order.description)
    .bind(order.payer_client_ip.map(|ip| ip.to_string()))
    .bind(order.expires_at)
    .bind(order.first_query_at)
    .fetch_one(&mut *conn)
    .await?;
    order_from_row(&row)
}

/// Stores the `code_url` WeChat gave a pending order.
pub async fn set_code_url(
    conn: &mut PgConnection,
    id: Uuid,
    code_url: &str,
) -> DomainResult<StoredOrder> {
    let row = sqlx::query(&format!(
        "update payment_orders set code_url = $2 where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(code_url)
    .fetch_one(&mut *conn)
    .await?;
    order_from_row(&row)
}

/// Marks a pending order `failed` with WeChat's code (placing it failed).
pub async fn mark_failed(pool: &PgPool, id: Uuid, code: &str) -> DomainResult<()> {
    sqlx::query(
        "update payment_orders set status = 'failed', failure_code = left($2, 64), \
             next_query_at = null \
         where id = $1 and status = 'pending'",
    )
    .bind(id)
    .bind(code)
    .execute(pool)
    .await?;
    Ok(())
}

/// One order by id.
pub async fn get(pool: &PgPool, id: Uuid) -> DomainResult<Option<StoredOrder>> {
    let row = sqlx::query(&format!(
        "select {COLUMNS} from payment_orders where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(order_from_row).transpose()
}

/// One order by its merchant order number.
pub async fn by_out_trade_no(pool: &PgPool, number: &str) -> DomainResult<Option<StoredOrder>> {
    let row = sqlx::query(&format!(
        "select {COLUMNS} from payment_orders where out_trade_no = $1"
    ))
    .bind(number)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(order_from_row).transpose()
}

/// Orders newest first: a user's (`user_id`) or everyone's, optionally of one status, after the
/// cursor `(created_at, id)`.
pub async fn list(
    pool: &PgPool,
    user_id: Option<&str>,
    status: Option<OrderStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> DomainResult<Vec<PaymentOrder>> {
    let rows = sqlx::query(&format!(
        "select {COLUMNS} from payment_orders \
          where ($1::text is null or user_id = $1) and ($2::text is null or status = $2) \
            and ($3::timestamptz is null or (created_at, id) < ($3, $4)) \
          order by created_at desc, id desc limit $5"
    ))
    .bind(user_id)
    .bind(status.map(OrderStatus::as_str))
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| order_from_row(row).map(|stored| stored.order))
        .collect()
}

/// Closes a pending order here (after WeChat closed it or never knew it). A paid one is refused
/// (`AlreadyApplied`); a closed or failed one is returned as it is.
pub async fn close(pool: &PgPool, id: Uuid) -> DomainResult<StoredOrder> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "select {COLUMNS} from payment_orders where id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DomainError::NotFound {
        what: "payment order",
    })?;
    let order = order_from_row(&row)?;
    match order.order.status {
        OrderStatus::Paid | OrderStatus::Refunded => {
            return Err(DomainError::AlreadyApplied("the order is paid".into()));
        }
        OrderStatus::Closed | OrderStatus::Failed => return Ok(order),
        OrderStatus::Pending => {}
    }
    let row = sqlx::query(&format!(
        "update payment_orders set status = 'closed', closed_at = now(), next_query_at = null \
          where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    order_from_row(&row)
}

/// Pending orders whose query is due at `now`, oldest due first.
pub async fn due_for_query(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> DomainResult<Vec<StoredOrder>> {
    let rows = sqlx::query(&format!(
        "select {COLUMNS} from payment_orders \
          where status = 'pending' and next_query_at <= $1 \
          order by next_query_at limit $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(order_from_row).collect()
}

/// Records a query of a still pending order and when to ask next.
pub async fn queried(pool: &PgPool, id: Uuid, next: DateTime<Utc>) -> DomainResult<()> {
    sqlx::query(
        "update payment_orders set query_attempts = query_attempts + 1, next_query_at = $2 \
          where id = $1 and status = 'pending'",
    )
    .bind(id)
    .bind(next)
    .execute(pool)
    .await?;
    Ok(())
}

/// What the ledger checks of a payment order before crediting it, read from its locked row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CreditableOrder {
    /// The account the order credits.
    pub account_id: String,
    /// The stored status (`pending`, `paid`, `refunded`, ...).
    pub status: String,
    /// The credits the order buys.
    pub credits: i64,
}

impl CreditableOrder {
    /// Whether this order may be credited with `credits` on `account_id`: once only, and only as
    /// it was ordered.
    pub fn admit_credit(&self, account_id: &str, credits: i64) -> Result<(), DomainError> {
        if self.status == "paid" || self.status == "refunded" {
            return Err(DomainError::AlreadyApplied(
                "the order is already credited".into(),
            ));
        }
        if self.account_id != account_id || self.credits != credits {
            return Err(DomainError::Validation(
                "the recharge does not match its order".into(),
            ));
        }
        Ok(())
    }
}

/// A locked order row, keyed by its id.
#[derive(Debug, sqlx::FromRow)]
struct LockedOrder {
    id: Uuid,
    #[sqlx(flatten)]
    order: CreditableOrder,
}

/// Locks the orders `ids` (in id order) and returns those that exist; called by the ledger
/// inside its transaction, after the account row is locked, before it checks the recharges.
pub(crate) async fn lock_for_credit(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, CreditableOrder>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<LockedOrder> = sqlx::query_as(
        "select id, account_id, status, credits from payment_orders \
          where id = any($1) order by id for update",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.order)).collect())
}

/// Marks the order paid with the ledger row that credited it; in the ledger's transaction, after
/// the row is written (the order references it).
pub(crate) async fn mark_paid(
    conn: &mut PgConnection,
    credit: &PaymentCredit,
    entry_id: i64,
) -> Result<(), sqlx::Error> {
    let updated = sqlx::query(
        "update payment_orders set status = 'paid', paid_at = coalesce($2, now()), \
             success_time = $2, wechat_transaction_id = $3, credited_entry_id = $4, \
             notification_id = $5, credited_by = $6, payer_openid = $7, next_query_at = null \
          where id = $1 and status not in ('paid', 'refunded')",
    )
    .bind(credit.order_id)
    .bind(credit.success_time)
    .bind(&credit.transaction_id)
    .bind(entry_id)
    .bind(&credit.notification_id)
    .bind(credit.source.as_str())
    .bind(&credit.payer_openid)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(sqlx::Error::Protocol(
            "a payment order changed while its credit was being written".into(),
        ));
    }
    Ok(())
}

/// A user's pending orders, newest first.
pub async fn pending_of(pool: &PgPool, user_id: &str) -> DomainResult<Vec<StoredOrder>> {
    let rows = sqlx::query(&format!(
        "select {COLUMNS} from payment_orders where user_id = $1 and status = 'pending' \
          order by created_at desc"
    ))
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(order_from_row).collect()
}
