//! Bodies of the payment and WeChat login routes: recharge orders paid with WeChat Pay (Native,
//! a QR code of `code_url`), and the hub's token issued after a WeChat QR login.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Largest recharge accepted by validation, in fen (¥1,000,000); the risk rules cap lower.
pub const MAX_RECHARGE_FEN: i64 = 100_000_000;

/// `POST /api/v1/payments/recharge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RechargeRequest {
    /// What to pay, in fen (1 yuan = 100 fen). The credits granted follow from the server's
    /// `payments.credits_per_fen`, never from the client.
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub amount_fen: i64,
}

/// Where an order is: `pending → paid | closed | failed`; `paid → refunded` is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed; waiting for the payer.
    Pending,
    /// Paid and credited (once).
    Paid,
    /// Closed unpaid (expired, or closed by its owner).
    Closed,
    /// WeChat refused to place it (`failure_code`).
    Failed,
    /// Refunded (reserved).
    Refunded,
}

impl OrderStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Closed => "closed",
            OrderStatus::Failed => "failed",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// The status of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => OrderStatus::Pending,
            "paid" => OrderStatus::Paid,
            "closed" => OrderStatus::Closed,
            "failed" => OrderStatus::Failed,
            "refunded" => OrderStatus::Refunded,
            _ => return None,
        })
    }
}

/// A recharge order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentOrder {
    /// The hub's id (also sent to WeChat as `attach`).
    pub order_id: String,
    /// The merchant order number sent to WeChat.
    pub out_trade_no: String,
    /// The credited account.
    pub account_id: String,
    /// Who placed it.
    pub user_id: String,
    /// What the payer pays, in fen.
    pub amount_fen: i64,
    /// Credits granted when paid (fixed when the order was placed).
    pub credits: i64,
    /// Where the order is.
    pub status: OrderStatus,
    /// The `weixin://` URL to show as a QR code while pending.
    pub code_url: Option<String>,
    /// When an unpaid order closes.
    pub expires_at: DateTime<Utc>,
    /// When WeChat says it was paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// WeChat's transaction id, once paid.
    pub transaction_id: Option<String>,
    /// The ledger row that credited it.
    pub credited_entry_id: Option<i64>,
    /// WeChat's error code when placing it failed.
    pub failure_code: Option<String>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
}

/// `GET /api/v1/auth/wechat/qr`: where to send the browser (or what to render as a QR code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WechatQr {
    /// WeChat's QR login page for this attempt.
    pub authorize_url: String,
    /// The single-use state of this attempt (also bound to the browser by a cookie).
    pub state: String,
    /// When the attempt expires.
    pub expires_at: DateTime<Utc>,
}

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WechatUser {
    /// The hub's user id (also the account id).
    pub id: String,
    /// Display name (from the WeChat nickname when the user was created).
    pub display_name: String,
    /// Whether this login created the user.
    pub created: bool,
}

/// `GET /api/v1/auth/wechat/callback` with `Accept: application/json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WechatLogin {
    /// The hub's bearer token (the same kind the API and the realtime transports take).
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: i64,
    /// Who logged in.
    pub user: WechatUser,
}

/// How many orders fell in each class (or their sums in fen).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClassCounts {
    /// In the bill and credited here, same amount.
    pub matched: i64,
    /// Paid per the bill, not credited here (a lost notification): queried and credited once.
    pub missing_local: i64,
    /// Credited here, not in the bill (nor in the next day's): flagged.
    pub missing_remote: i64,
    /// In both with different amounts: flagged, never fixed automatically.
    pub amount_mismatch: i64,
}

/// One order of a reconciliation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReconciliationItem {
    /// `matched`, `missing_local`, `missing_remote` or `amount_mismatch`.
    pub class: String,
    /// The merchant order number.
    pub out_trade_no: String,
    /// The hub's order, when it knows it.
    pub order_id: Option<String>,
    /// WeChat's transaction id.
    pub transaction_id: Option<String>,
    /// The order's amount here, fen.
    pub local_amount_fen: Option<i64>,
    /// The bill's amount, fen.
    pub bill_amount_fen: Option<i64>,
    /// What was done: `none`, `credited` (missing_local, paid now), `already_credited` (by an
    /// earlier run), `next_day_bill` (found in the next day's bill), `flagged`.
    pub action: String,
    /// More about it (WeChat's answer to a query, …).
    pub detail: Option<serde_json::Value>,
}

/// A reconciliation of one Beijing day against WeChat's bill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reconciliation {
    /// The Beijing day (`YYYY-MM-DD`).
    pub date: chrono::NaiveDate,
    /// `balanced` (nothing flagged), `flagged`, or `failed` (the bill was refused: `error`).
    pub status: String,
    /// Orders per class.
    pub counts: ClassCounts,
    /// Fen per class.
    pub sums: ClassCounts,
    /// The bill's SHA-1 (none for a day without trades).
    pub bill_hash: Option<String>,
    /// Rows in the bill (payments and refunds).
    pub bill_rows: i32,
    /// Why the run failed.
    pub error: Option<String>,
    /// How many times the day was reconciled.
    pub runs: i32,
    /// When the last run started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// The items: all of them for one day, the flagged ones in a listing.
    pub items: Vec<ReconciliationItem>,
}

/// What a block list entry blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// A hub user id.
    User,
    /// A client IP address.
    Ip,
    /// A WeChat openid (the user's login identity, or a payer's: paid orders are flagged).
    Openid,
}

impl BlockKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::User => "user",
            BlockKind::Ip => "ip",
            BlockKind::Openid => "openid",
        }
    }
}

/// `POST /api/v1/risk/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRiskBlock {
    /// What is blocked.
    pub kind: BlockKind,
    /// The user id, IP address or openid.
    #[schema(min_length = 1, max_length = 128)]
    pub value: String,
    /// Why (kept with the block and in the audit trail).
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
    /// When the block ends by itself (none: until removed).
    pub expires_at: Option<DateTime<Utc>>,
}

/// A block list entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RiskBlock {
    /// Its id.
    pub id: String,
    /// What is blocked.
    pub kind: BlockKind,
    /// The user id, IP address or openid.
    pub value: String,
    /// Why.
    pub reason: String,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ends by itself.
    pub expires_at: Option<DateTime<Utc>>,
}
