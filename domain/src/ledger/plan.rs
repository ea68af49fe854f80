//! Planning a batch: each operation of one account's batch checked, in order, against the
//! running balances and the facts the store read beforehand (the locked account, the charges,
//! holds, tasks and orders the batch names), giving every request's result and the rows to write.
//! Pure: no SQL, no IO, so the rules are unit-tested without a database ([`store`] reads the
//! facts and writes the plan, balances included; the ledger's statement trigger then checks that
//! each account's rows follow on from its locked balances, and fails the batch if they do not).
//!
//! [`store`]: super::store

use super::{Applied, DEBT_REPAYMENT, LedgerRequest, Operation};
use crate::DomainError;
use crate::audit::Actor;
use crate::payments::{CreditableOrder, PaymentCredit};
use crate::tasks::types::{TaskState, TaskWrite};
use chrono::{DateTime, Utc};
use shared::credits::{EntryKind, LedgerEntry};
use shared::limits::{MAX_AMOUNT, MAX_BALANCE};
use shared::session::Balance;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// An account's balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balances {
    /// Credits available.
    pub available: i64,
    /// Credits held.
    pub held: i64,
    /// Credits owed.
    pub debt: i64,
}

impl Balances {
    /// The balances as the wire shows them.
    pub fn public(self) -> Balance {
        Balance {
            available: self.available,
            held: self.held,
            total: self.available + self.held,
            debt: self.debt,
        }
    }
}

/// The ledger ids a batch may use: a credit may write a second row (its debt repayment),
/// anything else writes one. Allocated with the account lock, before the plan.
pub fn ids_needed(batch: &[LedgerRequest]) -> usize {
    batch
        .iter()
        .map(|request| match request.operation {
            Operation::Refund { .. } | Operation::Adjust { .. } | Operation::Recharge { .. } => 2,
            _ => 1,
        })
        .sum()
}

/// The rows a batch names, which the store reads (and locks where said) before planning. Only
/// requests whose claim is held count: a request that will not be applied locks nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Ledger entries refunds name (read with what was refunded of them).
    pub charges: Vec<i64>,
    /// Holds captures and releases name (locked, when open and of the account).
    pub holds: Vec<Uuid>,
    /// Tasks charges name (read: do they exist on the account).
    pub charged_tasks: Vec<Uuid>,
    /// Tasks whose events a hold, capture or release carries (locked, with their state).
    pub task_events: Vec<Uuid>,
    /// Payment orders recharges credit (locked).
    pub orders: Vec<Uuid>,
}

/// What the rows of `batch` whose claim is `held` name, each list sorted and without repeats.
pub fn needs(batch: &[LedgerRequest], held: &[bool]) -> Needs {
    let mut needs = Needs::default();
    for (request, _) in batch.iter().zip(held).filter(|(_, held)| **held) {
        match &request.operation {
            Operation::Charge {
                task_id: Some(task_id),
                ..
            } => needs.charged_tasks.push(*task_id),
            Operation::Refund {
                charge_entry_id, ..
            } => needs.charges.push(*charge_entry_id),
            Operation::Recharge { payment, .. } => needs.orders.push(payment.order_id),
            Operation::Capture { hold_id, .. } | Operation::Release { hold_id } => {
                needs.holds.push(*hold_id)
            }
            _ => {}
        }
        if let (
            Operation::Hold { .. } | Operation::Capture { .. } | Operation::Release { .. },
            Some(TaskWrite::Event { task_id, .. }),
        ) = (&request.operation, &request.task)
        {
            needs.task_events.push(*task_id);
        }
    }
    for list in [
        &mut needs.holds,
        &mut needs.charged_tasks,
        &mut needs.task_events,
        &mut needs.orders,
    ] {
        list.sort_unstable();
        list.dedup();
    }
    needs.charges.sort_unstable();
    needs.charges.dedup();
    needs
}

/// The locked account row, with the clock and the ledger ids of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its balances at the start of the batch.
    pub balances: Balances,
    /// The transaction's time, written on every row.
    pub now: DateTime<Utc>,
    /// Ledger ids allocated for the batch ([`ids_needed`] of them), used in order.
    pub ids: Vec<i64>,
}

/// A ledger entry a refund names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Its account.
    pub account_id: String,
    /// Its kind (`charge`, `refund`, ...).
    pub kind: String,
    /// Its amount (negative for a charge).
    pub amount: i64,
    /// Its reference ([`DEBT_REPAYMENT`] for a debt repayment, which is not refundable).
    pub reference: Option<String>,
    /// What the table already holds of refunds of it.
    pub refunded: i64,
}

/// An open hold of the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenHold {
    /// Credits held.
    pub amount: i64,
    /// Its task.
    pub task_id: Option<Uuid>,
}

/// What the store read for the batch, in its transaction, after locking the account.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// The locked account; `None` when it does not exist.
    pub account: Option<Account>,
    /// Per request, in order: whether its idempotency claim is still held (always, without a key).
    pub claims_held: Vec<bool>,
    /// [`Needs::charges`] found, by entry id.
    pub charges: HashMap<i64, Charge>,
    /// [`Needs::holds`] that are open holds of the account, by hold id.
    pub open_holds: HashMap<Uuid, OpenHold>,
    /// [`Needs::charged_tasks`] that exist on the account.
    pub account_tasks: HashSet<Uuid>,
    /// [`Needs::task_events`] found, with their stored state.
    pub tasks: HashMap<Uuid, TaskState>,
    /// [`Needs::orders`] found, by order id.
    pub orders: HashMap<Uuid, CreditableOrder>,
}

/// What the plan decided for one request.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every verdict is the large variant: boxing it would only add an allocation"
)]
pub enum Verdict {
    /// Its idempotency claim ended before it could be applied: nothing is written for it, not
    /// even its answer (the key belongs to someone else now, or to nobody).
    ClaimLost,
    /// Applied (its `task` is filled in by the store once the task write is made), or refused
    /// with nothing written.
    Decided(Result<Applied, DomainError>),
}

/// A ledger row to insert, with the balances it leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRow {
    /// The row as it will read once written (its balances are the plan's, checked by the
    /// statement trigger against the account's).
    pub entry: LedgerEntry,
    /// Change of the held balance.
    pub held_delta: i64,
    /// Change of the debt.
    pub debt_delta: i64,
    /// The hold it moves.
    pub hold_id: Option<Uuid>,
    /// Its task.
    pub task_id: Option<Uuid>,
    /// Free-form JSON.
    pub metadata: Option<serde_json::Value>,
    /// Who asked.
    pub actor_id: String,
    /// The request id.
    pub request_id: Option<String>,
}

/// A write besides the ledger rows, made in plan order before them (a hold row before the ledger
/// row naming it, a task before its hold).
#[derive(Debug, Clone, PartialEq)]
pub enum SideWrite<'a> {
    /// The task write request number `request` carries; what it did goes into that request's
    /// [`Applied::task`].
    Task {
        /// Index of the request in the batch.
        request: usize,
        /// The write (made as the request's actor).
        write: &'a TaskWrite,
        /// The capture's actual cost, for a success.
        settled: Option<i64>,
    },
    /// Insert an open hold on the account.
    OpenHold {
        /// The new hold.
        hold_id: Uuid,
        /// Its task.
        task_id: Option<Uuid>,
        /// Credits held.
        amount: i64,
    },
    /// Mark a hold captured at `actual`.
    CaptureHold {
        /// The hold.
        hold_id: Uuid,
        /// The actual cost.
        actual: i64,
    },
    /// Mark a hold released.
    ReleaseHold {
        /// The hold.
        hold_id: Uuid,
    },
}

/// The plan of a batch.
#[derive(Debug)]
pub struct Planned<'a> {
    /// One per request, in order.
    pub verdicts: Vec<Verdict>,
    /// Ledger rows to insert, in order.
    pub rows: Vec<PlannedRow>,
    /// Other writes, in order, made before the ledger rows.
    pub writes: Vec<SideWrite<'a>>,
    /// Payment orders to mark paid once their recharge rows are written (the order references
    /// its row).
    pub paid_orders: Vec<(&'a PaymentCredit, i64)>,
}

/// A fault that fails the whole batch: it means a bug, never a request's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The batch wrote more rows than [`ids_needed`] allocated.
    #[error("ledger batch ran out of allocated ids")]
    OutOfIds,
    /// A balance left the `i64` range: the edge bounds every amount and credits keep balances
    /// under [`MAX_BALANCE`], so this is never wrapped or saturated.
    #[error("ledger arithmetic overflow")]
    Overflow,
}

/// Plans `batch` (all for `account_id`) against `facts`: each request is checked against the
/// running balances in order, so a request that lacks funds fails alone and writes nothing while
/// the others apply.
pub fn plan<'a>(
    account_id: &str,
    batch: &'a [LedgerRequest],
    facts: Facts,
) -> Result<Planned<'a>, Fault> {
    let Facts {
        account,
        claims_held,
        charges,
        open_holds,
        account_tasks,
        tasks,
        orders,
    } = facts;
    let held = |index: usize| claims_held.get(index).copied().unwrap_or(false);
    let Some(account) = account else {
        let verdicts = (0..batch.len())
            .map(|index| {
                if !held(index) {
                    return Verdict::ClaimLost;
                }
                Verdict::Decided(Err(DomainError::NotFound {
                    what: "credit account (accounts are created on their owner's first request)",
                }))
            })
            .collect();
        return Ok(Planned {
            verdicts,
            rows: Vec::new(),
            writes: Vec::new(),
            paid_orders: Vec::new(),
        });
    };
    let mut planner = Planner {
        account_id,
        balances: account.balances,
        now: account.now,
        ids: account.ids.into_iter(),
        charges,
        open_holds,
        account_tasks,
        tasks,
        orders,
        refunded: HashMap::new(),
        planned: Planned {
            verdicts: Vec::with_capacity(batch.len()),
            rows: Vec::new(),
            writes: Vec::new(),
            paid_orders: Vec::new(),
        },
    };
    for (index, request) in batch.iter().enumerate() {
        let verdict = if held(index) {
            Verdict::Decided(planner.apply(index, request)?)
        } else {
            Verdict::ClaimLost
        };
        planner.planned.verdicts.push(verdict);
    }
    Ok(planner.planned)
}

/// A row's amounts and references, before the plan gives it an id and balances.
#[derive(Debug, Default)]
struct NewEntry<'a> {
    amount: i64,
    held_delta: i64,
    debt_delta: i64,
    reference: Option<&'a str>,
    related_entry_id: Option<i64>,
    hold_id: Option<Uuid>,
    task_id: Option<Uuid>,
    reason: Option<&'a str>,
    metadata: Option<&'a serde_json::Value>,
}

/// The batch being planned: balances as the rows so far leave them, the facts as the writes
/// planned so far leave them, and the plan.
#[derive(Debug)]
struct Planner<'a, 'b> {
    account_id: &'b str,
    balances: Balances,
    now: DateTime<Utc>,
    ids: std::vec::IntoIter<i64>,
    charges: HashMap<i64, Charge>,
    /// Open holds: those read, plus holds opened in this batch, minus those settled in it.
    open_holds: HashMap<Uuid, OpenHold>,
    /// Tasks of the account: those read, plus tasks created in this batch.
    account_tasks: HashSet<Uuid>,
    /// Task states: those read, as this batch's task writes leave them.
    tasks: HashMap<Uuid, TaskState>,
    orders: HashMap<Uuid, CreditableOrder>,
    /// Refunds planned in this batch per charge (not yet in the table).
    refunded: HashMap<i64, i64>,
    planned: Planned<'a>,
}

impl<'a> Planner<'a, '_> {
    /// Plans one row: assigns its id and moves the running balances.
    fn entry(
        &mut self,
        kind: EntryKind,
        actor: &Actor,
        new: NewEntry<'_>,
    ) -> Result<LedgerEntry, Fault> {
        let entry_id = self.ids.next().ok_or(Fault::OutOfIds)?;
        // Checked, never wrapping or saturating: an overflow here means a bug; it fails the batch.
        self.balances = Balances {
            available: self
                .balances
                .available
                .checked_add(new.amount)
                .ok_or(Fault::Overflow)?,
            held: self
                .balances
                .held
                .checked_add(new.held_delta)
                .ok_or(Fault::Overflow)?,
            debt: self
                .balances
                .debt
                .checked_add(new.debt_delta)
                .ok_or(Fault::Overflow)?,
        };
        let entry = LedgerEntry {
            entry_id,
            account_id: self.account_id.to_owned(),
            kind,
            amount: new.amount,
            balance_after: self.balances.available,
            held_after: self.balances.held,
            debt_after: self.balances.debt,
            reference: new.reference.map(str::to_owned),
            reason: new.reason.map(str::to_owned),
            related_entry_id: new.related_entry_id,
            task_id: new.task_id.map(|id| id.to_string()),
            created_at: self.now,
        };
        self.planned.rows.push(PlannedRow {
            entry: entry.clone(),
            held_delta: new.held_delta,
            debt_delta: new.debt_delta,
            hold_id: new.hold_id,
            task_id: new.task_id,
            metadata: new.metadata.cloned(),
            actor_id: actor.id.clone(),
            request_id: actor.request_id.clone(),
        });
        Ok(entry)
    }

    /// After a credit, repays what it can of the debt with a charge row referring to the credit.
    fn repay_debt(
        &mut self,
        actor: &Actor,
        credit: &LedgerEntry,
    ) -> Result<Option<LedgerEntry>, Fault> {
        let repay = credit.debt_after.min(credit.amount);
        if repay <= 0 {
            return Ok(None);
        }
        let new = NewEntry {
            amount: -repay,
            debt_delta: -repay,
            reference: Some(DEBT_REPAYMENT),
            related_entry_id: Some(credit.entry_id),
            reason: Some("debt repayment"),
            ..NewEntry::default()
        };
        Ok(Some(self.entry(EntryKind::Charge, actor, new)?))
    }

    /// A refusal when crediting `amount` would take the account past [`MAX_BALANCE`].
    fn exceeds_balance(&self, amount: i64) -> Option<DomainError> {
        let after = i128::from(self.balances.available)
            + i128::from(self.balances.held)
            + i128::from(amount.max(0));
        (after > i128::from(MAX_BALANCE)).then(|| {
            DomainError::Validation(format!(
                "this credit would take the account past the largest balance, {MAX_BALANCE}"
            ))
        })
    }

    fn insufficient(&self, requested: i64) -> DomainError {
        DomainError::InsufficientCredits {
            available: self.balances.available,
            requested,
        }
    }

    /// Checks a task write against the tasks as the batch leaves them: the state the task will
    /// have after it, or why the state machine refuses it. Nothing is recorded.
    fn admit_task(&self, write: &TaskWrite) -> Result<(Uuid, TaskState), DomainError> {
        match write {
            TaskWrite::Create(task) => Ok((task.id, TaskState::created(task))),
            TaskWrite::Event { task_id, input, .. } => {
                let state = self
                    .tasks
                    .get(task_id)
                    .ok_or(DomainError::NotFound { what: "task" })?;
                Ok((*task_id, state.after(state.admit(input)?)))
            }
        }
    }

    /// Records an admitted task write: the write to make, and the task's state after it.
    fn record_task(
        &mut self,
        request: usize,
        write: &'a TaskWrite,
        settled: Option<i64>,
        (task_id, state): (Uuid, TaskState),
    ) {
        if let TaskWrite::Create(task) = write
            && task.account_id == self.account_id
        {
            self.account_tasks.insert(task_id);
        }
        self.tasks.insert(task_id, state);
        self.planned.writes.push(SideWrite::Task {
            request,
            write,
            settled,
        });
    }

    /// Plans one request: a business refusal is the inner `Err` (nothing planned for it), a
    /// fault the outer one.
    fn apply(
        &mut self,
        index: usize,
        request: &'a LedgerRequest,
    ) -> Result<Result<Applied, DomainError>, Fault> {
        let actor = &request.actor;
        if request.operation.amount().unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
            return Ok(Err(DomainError::Validation(format!(
                "amounts are at most {MAX_AMOUNT} in size"
            ))));
        }
        let mut related = Vec::new();
        let entry = match &request.operation {
            Operation::Charge {
                amount,
                reason,
                task_id,
                metadata,
            } => {
                if *amount <= 0 {
                    return Ok(Err(DomainError::Validation(
                        "amount must be positive".into(),
                    )));
                }
                if self.balances.available < *amount {
                    return Ok(Err(self.insufficient(*amount)));
                }
                if let Some(task_id) = task_id
                    && !self.account_tasks.contains(task_id)
                {
                    return Ok(Err(DomainError::NotFound { what: "task" }));
                }
                let new = NewEntry {
                    amount: -amount,
                    reason: Some(reason),
                    task_id: *task_id,
                    metadata: metadata.as_ref(),
                    ..NewEntry::default()
                };
                self.entry(EntryKind::Charge, actor, new)?
            }
            Operation::Refund {
                charge_entry_id,
                amount,
                reason,
            } => {
                if *amount <= 0 {
                    return Ok(Err(DomainError::Validation(
                        "amount must be positive".into(),
                    )));
                }
                let Some(charge) = self
                    .charges
                    .get(charge_entry_id)
                    .filter(|charge| charge.account_id == self.account_id)
                else {
                    return Ok(Err(DomainError::NotFound {
                        what: "charge entry",
                    }));
                };
                if charge.kind != "charge" || charge.reference.as_deref() == Some(DEBT_REPAYMENT) {
                    return Ok(Err(DomainError::Validation(format!(
                        "entry {charge_entry_id} is not a charge"
                    ))));
                }
                let (charged, refunded) = (charge.amount, charge.refunded);
                if let Some(refused) = self.exceeds_balance(*amount) {
                    return Ok(Err(refused));
                }
                let in_batch = self.refunded.get(charge_entry_id).copied().unwrap_or(0);
                let remaining = -charged - refunded - in_batch;
                if *amount > remaining {
                    return Ok(Err(DomainError::RefundExceedsCharge { remaining }));
                }
                let new = NewEntry {
                    amount: *amount,
                    related_entry_id: Some(*charge_entry_id),
                    reason: Some(reason),
                    ..NewEntry::default()
                };
                let entry = self.entry(EntryKind::Refund, actor, new)?;
                *self.refunded.entry(*charge_entry_id).or_default() += amount;
                related.extend(self.repay_debt(actor, &entry)?);
                entry
            }
            Operation::Adjust { amount, reason } => {
                if *amount == 0 {
                    return Ok(Err(DomainError::Validation(
                        "amount must not be zero".into(),
                    )));
                }
                if *amount < 0 && self.balances.available < -amount {
                    return Ok(Err(self.insufficient(-amount)));
                }
                if let Some(refused) = self.exceeds_balance(*amount) {
                    return Ok(Err(refused));
                }
                let new = NewEntry {
                    amount: *amount,
                    reason: Some(reason),
                    ..NewEntry::default()
                };
                let entry = self.entry(EntryKind::Adjustment, actor, new)?;
                if *amount > 0 {
                    related.extend(self.repay_debt(actor, &entry)?);
                }
                entry
            }
            Operation::Recharge { amount, payment } => {
                if *amount <= 0 {
                    return Ok(Err(DomainError::Validation(
                        "amount must be positive".into(),
                    )));
                }
                if let Some(refused) = self.exceeds_balance(*amount) {
                    return Ok(Err(refused));
                }
                // A second recharge of one order in this batch is refused like one in the table.
                if self
                    .planned
                    .paid_orders
                    .iter()
                    .any(|(paid, _)| paid.order_id == payment.order_id)
                {
                    return Ok(Err(DomainError::AlreadyApplied(
                        "the order is already credited".into(),
                    )));
                }
                let Some(order) = self.orders.get(&payment.order_id) else {
                    return Ok(Err(DomainError::NotFound {
                        what: "payment order",
                    }));
                };
                if let Err(refused) = order.admit_credit(self.account_id, *amount) {
                    return Ok(Err(refused));
                }
                let reference = payment.order_id.to_string();
                let new = NewEntry {
                    amount: *amount,
                    reference: Some(&reference),
                    ..NewEntry::default()
                };
                let entry = self.entry(EntryKind::Recharge, actor, new)?;
                self.planned.paid_orders.push((payment, entry.entry_id));
                related.extend(self.repay_debt(actor, &entry)?);
                entry
            }
            Operation::Hold {
                hold_id,
                task_id,
                amount,
            } => {
                if *amount <= 0 {
                    return Ok(Err(DomainError::Validation(
                        "a hold must be positive".into(),
                    )));
                }
                if self.balances.available < *amount {
                    return Ok(Err(self.insufficient(*amount)));
                }
                if let Some(write) = &request.task {
                    match self.admit_task(write) {
                        Ok(after) => self.record_task(index, write, None, after),
                        Err(refused) => return Ok(Err(refused)),
                    }
                }
                self.planned.writes.push(SideWrite::OpenHold {
                    hold_id: *hold_id,
                    task_id: *task_id,
                    amount: *amount,
                });
                self.open_holds.insert(
                    *hold_id,
                    OpenHold {
                        amount: *amount,
                        task_id: *task_id,
                    },
                );
                let new = NewEntry {
                    amount: -amount,
                    held_delta: *amount,
                    hold_id: Some(*hold_id),
                    task_id: *task_id,
                    reference: Some("hold"),
                    ..NewEntry::default()
                };
                self.entry(EntryKind::Hold, actor, new)?
            }
            Operation::Capture { hold_id, actual } => {
                if *actual < 0 {
                    return Ok(Err(DomainError::Validation(
                        "the actual cost must not be negative".into(),
                    )));
                }
                let task = match &request.task {
                    Some(write) => match self.admit_task(write) {
                        Ok(after) => Some((write, after)),
                        Err(refused) => return Ok(Err(refused)),
                    },
                    None => None,
                };
                let Some(hold) = self.open_holds.get(hold_id).copied() else {
                    return Ok(Err(DomainError::Conflict(format!(
                        "hold {hold_id} is not open"
                    ))));
                };
                if *actual > MAX_AMOUNT {
                    return Ok(Err(DomainError::Validation(format!(
                        "the actual cost {actual} exceeds the largest amount, {MAX_AMOUNT}"
                    ))));
                }
                if let Some((write, after)) = task {
                    self.record_task(index, write, Some(*actual), after);
                }
                // Within the hold: the rest goes back. Beyond it: take the difference from what
                // is available (the supplementary deduction) and record what is missing as debt.
                let extra = actual - hold.amount;
                let (amount, debt_delta) = if extra <= 0 {
                    (-extra, 0)
                } else {
                    let taken = extra.min(self.balances.available);
                    (-taken, extra - taken)
                };
                let new = NewEntry {
                    amount,
                    held_delta: -hold.amount,
                    debt_delta,
                    hold_id: Some(*hold_id),
                    task_id: hold.task_id,
                    reference: Some("capture"),
                    ..NewEntry::default()
                };
                let entry = self.entry(EntryKind::Capture, actor, new)?;
                self.planned.writes.push(SideWrite::CaptureHold {
                    hold_id: *hold_id,
                    actual: *actual,
                });
                self.open_holds.remove(hold_id);
                entry
            }
            Operation::Release { hold_id } => {
                let task = match &request.task {
                    Some(write) => match self.admit_task(write) {
                        Ok(after) => Some((write, after)),
                        Err(refused) => return Ok(Err(refused)),
                    },
                    None => None,
                };
                let Some(hold) = self.open_holds.get(hold_id).copied() else {
                    return Ok(Err(DomainError::Conflict(format!(
                        "hold {hold_id} is not open"
                    ))));
                };
                if let Some((write, after)) = task {
                    self.record_task(index, write, None, after);
                }
                let new = NewEntry {
                    amount: hold.amount,
                    held_delta: -hold.amount,
                    hold_id: Some(*hold_id),
                    task_id: hold.task_id,
                    reference: Some("release"),
                    ..NewEntry::default()
                };
                let entry = self.entry(EntryKind::Release, actor, new)?;
                self.planned
                    .writes
                    .push(SideWrite::ReleaseHold { hold_id: *hold_id });
                self.open_holds.remove(hold_id);
                entry
            }
        };
        Ok(Ok(Applied {
            entry,
            related,
            balance: self.balances.public(),
            task: None,
        }))
    }
}

#[cfg(test)]
mod tests;
