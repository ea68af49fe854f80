//! Bodies of the `/credits/*` routes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The kind of a ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits taken for a use (negative). Also repays debt (`reference: debt_repayment`).
    Charge,
    /// Credits returned for a charge (positive).
    Refund,
    /// Credits bought (positive).
    Recharge,
    /// Credits reserved for a task (negative; moved to `held`).
    Hold,
    /// A hold settled at the task's actual cost: returns what the cost left of the hold, or takes
    /// the difference when the cost exceeds it (the supplementary deduction).
    Capture,
    /// A hold returned whole (positive).
    Release,
    /// A manual correction by finance (either sign).
    Adjustment,
}

impl EntryKind {
    /// The kind's wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Charge => "charge",
            EntryKind::Refund => "refund",
            EntryKind::Recharge => "recharge",
            EntryKind::Hold => "hold",
            EntryKind::Capture => "capture",
            EntryKind::Release => "release",
            EntryKind::Adjustment => "adjustment",
        }
    }

    /// Parses a database name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            EntryKind::Charge,
            EntryKind::Refund,
            EntryKind::Recharge,
            EntryKind::Hold,
            EntryKind::Capture,
            EntryKind::Release,
            EntryKind::Adjustment,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    /// Row id.
    pub entry_id: i64,
    /// The account.
    pub account_id: String,
    /// What the row did.
    pub kind: EntryKind,
    /// Signed change of the available balance.
    pub amount: i64,
    /// Available balance right after the row.
    pub balance_after: i64,
    /// Held credits right after the row.
    pub held_after: i64,
    /// Debt right after the row.
    pub debt_after: i64,
    /// What the row refers to (task id, order, `debt_repayment`, …).
    pub reference: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The charge a refund returns, or the credit a debt repayment came from.
    pub related_entry_id: Option<i64>,
    /// The task the row belongs to.
    pub task_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// `POST /credits/charge`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    /// The account to charge (default: the caller's own).
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub account_id: Option<String>,
    /// Credits to take, 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// Why (shown in the ledger), 1-500 characters.
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    pub reason: String,
    /// The task the charge is for.
    #[schema(format = Uuid)]
    pub task_id: Option<String>,
    /// Free-form JSON kept with the entry.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `POST /credits/refund`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The charge to refund.
    #[schema(minimum = 1)]
    pub charge_entry_id: i64,
    /// Credits to return, 1 to 10^12; all refunds of a charge never exceed it.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// Why, 1-500 characters (required).
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    pub reason: String,
}

/// `POST /credits/adjust`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustRequest {
    /// The account to adjust.
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub account_id: String,
    /// Credits to grant (> 0) or remove (< 0; never below zero), at most 10^12 in size, not 0.
    #[schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// Why, 1-500 characters (required).
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    pub reason: String,
}

/// `GET /credits/balance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountBalance {
    /// The account.
    pub account_id: String,
    /// Spendable credits.
    pub available: i64,
    /// Credits reserved by open holds.
    pub held: i64,
    /// available + held.
    pub total: i64,
    /// Shortfall of a supplementary deduction, repaid by the next credit.
    pub debt: i64,
}

/// `POST /credits/estimate`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateRequest {
    /// The task type priced.
    #[schema(pattern = "^[a-z][a-z0-9_.-]{0,63}$")]
    pub task_type: String,
    /// Units of work, 1 to 10^9.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub units: i64,
    /// Task parameters (kept for future pricing dimensions).
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Price as of this time (default: now); decides whether peak hours apply.
    pub at: Option<DateTime<Utc>>,
}

/// One line of an estimate's breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EstimateLine {
    /// `base`, `units`, `volume_discount`, `history`, `peak`.
    pub component: String,
    /// Credits this line contributes (0 for informational lines).
    pub credits: i64,
    /// Human-readable explanation.
    pub detail: String,
}

/// The answer of `POST /credits/estimate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Estimate {
    /// The estimate: what a task creation holds.
    pub estimated_credits: i64,
    /// Lower bound (history median or rule, whichever is lower).
    pub low: i64,
    /// Upper bound (history p90 or rule, whichever is higher).
    pub high: i64,
    /// How the estimate was made.
    pub breakdown: Vec<EstimateLine>,
    /// The price rule applied.
    pub pricing_rule_id: String,
    /// How many completed tasks informed the estimate (0: the rule alone).
    pub samples: i64,
}
