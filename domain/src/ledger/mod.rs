//! The credits ledger: operations on an account (charge, refund, adjustment, recharge, hold,
//! capture, release), applied in batches by the account's actor ([`actor::Ledger`]): the rules
//! in [`plan`] (pure), the batch's SQL in [`store`], the reads in [`queries`].

pub mod actor;
mod committer;
pub mod plan;
pub mod queries;
pub mod store;

use crate::DomainError;
use crate::audit::Actor;
use crate::idempotency::{Claimed, StoredResponse};
use crate::tasks::types::{TaskChange, TaskWrite};
use shared::credits::LedgerEntry;
use shared::session::Balance;
use std::fmt;
use uuid::Uuid;

pub use actor::{Ledger, LedgerConfig};

/// Reference written on the charge rows that repay a debt.
pub const DEBT_REPAYMENT: &str = "debt_repayment";

/// A balance-changing operation on one account.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Take `amount` (> 0) credits.
    Charge {
        /// Credits to take.
        amount: i64,
        /// Why.
        reason: String,
        /// The task charged for.
        task_id: Option<Uuid>,
        /// Free-form JSON.
        metadata: Option<serde_json::Value>,
    },
    /// Return `amount` of the charge `charge_entry_id`.
    Refund {
        /// The charge.
        charge_entry_id: i64,
        /// Credits to return.
        amount: i64,
        /// Why.
        reason: String,
    },
    /// A manual correction of either sign.
    Adjust {
        /// Credits to grant (> 0) or remove (< 0).
        amount: i64,
        /// Why.
        reason: String,
    },
    /// Credits bought: `amount` (the order's credits) for the verified payment of an order,
    /// which is marked paid in the same transaction (at most once: a paid order is refused with
    /// [`DomainError::AlreadyApplied`]).
    Recharge {
        /// Credits.
        amount: i64,
        /// The payment.
        payment: crate::payments::PaymentCredit,
    },
    /// Reserve `amount` for a task.
    Hold {
        /// The new hold's id.
        hold_id: Uuid,
        /// The task.
        task_id: Option<Uuid>,
        /// Credits reserved.
        amount: i64,
    },
    /// Settle a hold at the actual cost (supplementary deduction when above the hold).
    Capture {
        /// The hold.
        hold_id: Uuid,
        /// The actual cost.
        actual: i64,
    },
    /// Return a hold whole.
    Release {
        /// The hold.
        hold_id: Uuid,
    },
}

impl Operation {
    /// Short name for metrics and audit: `charge`, `refund`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Charge { .. } => "charge",
            Operation::Refund { .. } => "refund",
            Operation::Adjust { .. } => "adjustment",
            Operation::Recharge { .. } => "recharge",
            Operation::Hold { .. } => "hold",
            Operation::Capture { .. } => "capture",
            Operation::Release { .. } => "release",
        }
    }

    /// The credits the operation names (0 for a release, whose amount is the hold's).
    pub fn amount(&self) -> i64 {
        match self {
            Operation::Charge { amount, .. }
            | Operation::Refund { amount, .. }
            | Operation::Adjust { amount, .. }
            | Operation::Recharge { amount, .. }
            | Operation::Hold { amount, .. } => *amount,
            Operation::Capture { actual, .. } => *actual,
            Operation::Release { .. } => 0,
        }
    }

    /// The audit action of the operation, for the sensitive ones.
    pub fn audit_action(&self) -> Option<&'static str> {
        match self {
            Operation::Charge { .. } => Some("credits.charge"),
            Operation::Refund { .. } => Some("credits.refund"),
            Operation::Adjust { .. } => Some("credits.adjust"),
            Operation::Recharge { .. } => Some("credits.recharge"),
            Operation::Hold { .. } | Operation::Capture { .. } | Operation::Release { .. } => None,
        }
    }
}

/// Turns an operation's result into the HTTP response stored with its idempotency key. Supplied
/// by the gateway, which owns the mapping of errors to statuses and problem bodies.
pub type Render = crate::idempotency::Render<Applied>;

/// The idempotency key to complete in the operation's transaction, and how to render the answer.
#[derive(Clone)]
pub struct Completion {
    /// The claimed key; the operation is applied only while this claim still owns it.
    pub claim: Claimed,
    /// Renders the stored response.
    pub render: Render,
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// One operation as sent to an account's actor.
#[derive(Debug, Clone)]
pub struct LedgerRequest {
    /// The account.
    pub account_id: String,
    /// What to do.
    pub operation: Operation,
    /// Who asks (audit, ledger `actor_id`).
    pub actor: Actor,
    /// The idempotency key to complete with the answer, if any.
    pub completion: Option<Completion>,
    /// The task write to make in the same transaction: the creation of the task a `Hold` is for,
    /// or the terminal event a `Capture` or `Release` settles. Ignored by other operations.
    pub task: Option<TaskWrite>,
}

/// What an applied operation wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The operation's own ledger row.
    pub entry: LedgerEntry,
    /// Rows written with it (a debt repayment).
    pub related: Vec<LedgerEntry>,
    /// The account's balances after the operation.
    pub balance: Balance,
    /// The task write made with it, if the request carried one.
    pub task: Option<TaskChange>,
}

/// The answer to a [`LedgerRequest`].
#[derive(Debug)]
pub struct Outcome {
    /// Applied, or why not.
    pub result: Result<Applied, DomainError>,
    /// The response stored with the idempotency key, when the request had one.
    pub stored: Option<StoredResponse>,
}
