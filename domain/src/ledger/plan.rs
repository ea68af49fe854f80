//! Planning a batch: each operation of one account's batch checked, in order, against the
//! running balances and the facts the store read beforehand (the locked account, the charges,
//! holds, tasks and orders the batch names), giving every request's result and the rows to write.
//! Pure: no SQL, no IO, so the rules are unit-tested without a database ([`store`] reads the
//! facts and writes the plan; the ledger trigger then recomputes every balance, and the store
//! refuses the batch if the trigger disagrees).
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

/// A ledger row to insert, with what the trigger must compute for it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRow {
    /// The row as it will read once written (its balances are the plan's, checked against the
    /// trigger's).
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

/// The batch being planned: balances as the trigger will leave them, the facts as the writes
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
    /// Plans one row: assigns its id and moves the balances as the trigger will.
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
mod tests {
    use super::*;
    use crate::payments::CreditSource;
    use crate::tasks::types::{EventInput, NewTask};
    use shared::tasks::{TaskEventKind, TaskStatus};

    const ACCOUNT: &str = "alice";

    fn actor() -> Actor {
        Actor {
            id: "tester".into(),
            roles: Vec::new(),
            request_id: Some("req-1".into()),
            client_ip: None,
        }
    }

    fn request(operation: Operation) -> LedgerRequest {
        LedgerRequest {
            account_id: ACCOUNT.into(),
            operation,
            actor: actor(),
            completion: None,
            task: None,
        }
    }

    fn with_task(operation: Operation, task: TaskWrite) -> LedgerRequest {
        LedgerRequest {
            task: Some(task),
            ..request(operation)
        }
    }

    fn charge(amount: i64) -> Operation {
        Operation::Charge {
            amount,
            reason: "test".into(),
            task_id: None,
            metadata: None,
        }
    }

    fn adjust(amount: i64) -> Operation {
        Operation::Adjust {
            amount,
            reason: "test".into(),
        }
    }

    fn refund(charge_entry_id: i64, amount: i64) -> Operation {
        Operation::Refund {
            charge_entry_id,
            amount,
            reason: "test".into(),
        }
    }

    fn recharge(order_id: Uuid, amount: i64) -> Operation {
        Operation::Recharge {
            amount,
            payment: PaymentCredit {
                order_id,
                transaction_id: "wx-1".into(),
                success_time: None,
                payer_openid: None,
                notification_id: None,
                source: CreditSource::Notification,
            },
        }
    }

    fn hold(hold_id: Uuid, amount: i64) -> Operation {
        Operation::Hold {
            hold_id,
            task_id: None,
            amount,
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn new_task(task_id: Uuid) -> NewTask {
        NewTask {
            id: task_id,
            owner_id: "tester".into(),
            account_id: ACCOUNT.into(),
            task_type: "render".into(),
            units: 10,
            params: serde_json::json!({}),
            estimated_credits: 100,
        }
    }

    fn event(task_id: Uuid, state: TaskStatus) -> TaskWrite {
        TaskWrite::Event {
            task_id,
            input: EventInput {
                kind: TaskEventKind::State,
                state: Some(state),
                progress: None,
                actual_units: None,
                message: None,
                data: None,
            },
            node_id: "node-1".into(),
        }
    }

    /// Facts for an account with these balances, every claim held, ids 1, 2, 3, ...
    fn account(available: i64, held: i64, debt: i64) -> Facts {
        Facts {
            account: Some(Account {
                balances: Balances {
                    available,
                    held,
                    debt,
                },
                now: DateTime::<Utc>::UNIX_EPOCH,
                ids: (1..=64).collect(),
            }),
            ..Facts::default()
        }
    }

    /// Plans `batch`; claims are held unless `facts` says otherwise.
    fn run<'a>(mut facts: Facts, batch: &'a [LedgerRequest]) -> Planned<'a> {
        if facts.claims_held.is_empty() {
            facts.claims_held = vec![true; batch.len()];
        }
        plan(ACCOUNT, batch, facts).expect("no fault")
    }

    fn applied(verdict: &Verdict) -> &Applied {
        match verdict {
            Verdict::Decided(Ok(applied)) => applied,
            other => panic!("expected an applied request, got {other:?}"),
        }
    }

    fn refused(verdict: &Verdict) -> &DomainError {
        match verdict {
            Verdict::Decided(Err(error)) => error,
            other => panic!("expected a refused request, got {other:?}"),
        }
    }

    fn balance(applied: &Applied) -> (i64, i64, i64) {
        (
            applied.balance.available,
            applied.balance.held,
            applied.balance.debt,
        )
    }

    #[test]
    fn a_charge_takes_from_available_and_plans_one_row_with_the_balances_after() {
        let batch = [request(charge(300))];

        let planned = run(account(1_000, 0, 0), &batch);

        let applied = applied(&planned.verdicts[0]);
        assert_eq!(balance(applied), (700, 0, 0));
        assert_eq!(applied.entry.amount, -300);
        assert_eq!(applied.entry.kind, EntryKind::Charge);
        assert_eq!(applied.entry.entry_id, 1);
        assert_eq!(planned.rows.len(), 1);
        assert_eq!(planned.rows[0].entry, applied.entry);
        assert_eq!(planned.rows[0].actor_id, "tester");
        assert_eq!(planned.rows[0].request_id.as_deref(), Some("req-1"));
        assert!(planned.writes.is_empty());
    }

    #[test]
    fn a_charge_beyond_the_available_balance_is_refused_and_plans_nothing() {
        let batch = [request(charge(1_001))];

        let planned = run(account(1_000, 500, 0), &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::InsufficientCredits {
                available: 1_000,
                requested: 1_001
            }
        ));
        assert!(planned.rows.is_empty());
    }

    #[test]
    fn in_one_batch_the_request_without_funds_fails_alone_and_the_others_apply_in_order() {
        let batch = [
            request(charge(600)),
            request(charge(600)),
            request(charge(300)),
        ];

        let planned = run(account(1_000, 0, 0), &batch);

        assert_eq!(balance(applied(&planned.verdicts[0])), (400, 0, 0));
        assert!(matches!(
            refused(&planned.verdicts[1]),
            DomainError::InsufficientCredits {
                available: 400,
                requested: 600
            }
        ));
        let last = applied(&planned.verdicts[2]);
        assert_eq!(balance(last), (100, 0, 0));
        // The refused request used no id: the next row takes the next one.
        assert_eq!(last.entry.entry_id, 2);
        assert_eq!(planned.rows.len(), 2);
    }

    #[test]
    fn charges_and_credits_of_zero_or_the_wrong_sign_are_refused() {
        let batch = [
            request(charge(0)),
            request(charge(-5)),
            request(adjust(0)),
            request(refund(7, 0)),
            request(recharge(id(1), 0)),
            request(hold(id(2), 0)),
            request(Operation::Capture {
                hold_id: id(3),
                actual: -1,
            }),
        ];

        let planned = run(account(1_000, 0, 0), &batch);

        for verdict in &planned.verdicts {
            assert!(matches!(refused(verdict), DomainError::Validation(_)));
        }
        assert!(planned.rows.is_empty());
        assert!(planned.writes.is_empty());
    }

    #[test]
    fn amounts_beyond_the_largest_amount_are_refused_whatever_their_sign() {
        let batch = [
            request(charge(MAX_AMOUNT + 1)),
            request(adjust(i64::MIN)),
            request(adjust(i64::MAX)),
            request(Operation::Capture {
                hold_id: id(1),
                actual: i64::MAX,
            }),
            request(charge(MAX_AMOUNT)),
        ];

        let planned = run(account(MAX_AMOUNT, 0, 0), &batch);

        for verdict in &planned.verdicts[..4] {
            let DomainError::Validation(message) = refused(verdict) else {
                panic!("expected a validation error");
            };
            assert!(message.contains("amounts are at most"), "{message}");
        }
        assert_eq!(balance(applied(&planned.verdicts[4])), (0, 0, 0));
    }

    #[test]
    fn a_charge_for_a_task_must_name_a_task_of_the_account() {
        let (known, unknown) = (id(1), id(2));
        let for_task = |task_id| Operation::Charge {
            amount: 10,
            reason: "test".into(),
            task_id: Some(task_id),
            metadata: Some(serde_json::json!({"k": "v"})),
        };
        let batch = [request(for_task(unknown)), request(for_task(known))];
        let mut facts = account(100, 0, 0);
        facts.account_tasks.insert(known);

        let planned = run(facts, &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::NotFound { what: "task" }
        ));
        let applied = applied(&planned.verdicts[1]);
        assert_eq!(applied.entry.task_id, Some(known.to_string()));
        assert_eq!(planned.rows[0].task_id, Some(known));
        assert_eq!(
            planned.rows[0].metadata,
            Some(serde_json::json!({"k": "v"}))
        );
    }

    #[test]
    fn a_task_created_earlier_in_the_batch_can_be_charged_for() {
        let task_id = id(9);
        let batch = [
            request(Operation::Charge {
                amount: 10,
                reason: "too early".into(),
                task_id: Some(task_id),
                metadata: None,
            }),
            with_task(hold(id(1), 100), TaskWrite::Create(new_task(task_id))),
            request(Operation::Charge {
                amount: 10,
                reason: "test".into(),
                task_id: Some(task_id),
                metadata: None,
            }),
        ];

        let planned = run(account(1_000, 0, 0), &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::NotFound { what: "task" }
        ));
        applied(&planned.verdicts[1]);
        assert_eq!(balance(applied(&planned.verdicts[2])), (890, 100, 0));
    }

    fn charge_fact(amount: i64, refunded: i64) -> Charge {
        Charge {
            account_id: ACCOUNT.into(),
            kind: "charge".into(),
            amount: -amount,
            reference: None,
            refunded,
        }
    }

    #[test]
    fn refunds_of_a_charge_never_exceed_it_across_the_table_and_the_batch() {
        let batch = [
            request(refund(7, 50)),
            request(refund(7, 21)),
            request(refund(7, 20)),
            request(refund(7, 1)),
        ];
        let mut facts = account(0, 0, 0);
        facts.charges.insert(7, charge_fact(100, 30));

        let planned = run(facts, &batch);

        let first = applied(&planned.verdicts[0]);
        assert_eq!(first.entry.kind, EntryKind::Refund);
        assert_eq!(first.entry.related_entry_id, Some(7));
        assert_eq!(balance(first), (50, 0, 0));
        assert!(matches!(
            refused(&planned.verdicts[1]),
            DomainError::RefundExceedsCharge { remaining: 20 }
        ));
        assert_eq!(balance(applied(&planned.verdicts[2])), (70, 0, 0));
        assert!(matches!(
            refused(&planned.verdicts[3]),
            DomainError::RefundExceedsCharge { remaining: 0 }
        ));
    }

    #[test]
    fn a_refund_must_name_a_charge_of_the_account() {
        let batch = [
            request(refund(1, 10)),
            request(refund(2, 10)),
            request(refund(3, 10)),
            request(refund(4, 10)),
        ];
        let mut facts = account(0, 0, 0);
        facts.charges.insert(
            2,
            Charge {
                account_id: "bob".into(),
                ..charge_fact(100, 0)
            },
        );
        facts.charges.insert(
            3,
            Charge {
                kind: "adjustment".into(),
                ..charge_fact(100, 0)
            },
        );
        facts.charges.insert(
            4,
            Charge {
                reference: Some(DEBT_REPAYMENT.into()),
                ..charge_fact(100, 0)
            },
        );

        let planned = run(facts, &batch);

        for verdict in &planned.verdicts[..2] {
            assert!(matches!(
                refused(verdict),
                DomainError::NotFound {
                    what: "charge entry"
                }
            ));
        }
        for (verdict, entry) in planned.verdicts[2..].iter().zip([3, 4]) {
            let DomainError::Validation(message) = refused(verdict) else {
                panic!("expected a validation error");
            };
            assert_eq!(message, &format!("entry {entry} is not a charge"));
        }
        assert!(planned.rows.is_empty());
    }

    #[test]
    fn every_credit_repays_the_debt_first_with_a_charge_row_naming_it() {
        let order = id(5);
        let batch = [
            request(adjust(30)),
            request(refund(7, 30)),
            request(recharge(order, 100)),
        ];
        let mut facts = account(0, 0, 80);
        facts.charges.insert(7, charge_fact(100, 0));
        facts.orders.insert(
            order,
            CreditableOrder {
                account_id: ACCOUNT.into(),
                status: "pending".into(),
                credits: 100,
            },
        );

        let planned = run(facts, &batch);

        let adjusted = applied(&planned.verdicts[0]);
        assert_eq!(balance(adjusted), (0, 0, 50));
        assert_eq!(adjusted.related.len(), 1);
        let repayment = &adjusted.related[0];
        assert_eq!(repayment.kind, EntryKind::Charge);
        assert_eq!(repayment.amount, -30);
        assert_eq!(repayment.reference.as_deref(), Some(DEBT_REPAYMENT));
        assert_eq!(repayment.related_entry_id, Some(adjusted.entry.entry_id));
        assert_eq!(balance(applied(&planned.verdicts[1])), (0, 0, 20));
        let recharged = applied(&planned.verdicts[2]);
        assert_eq!(balance(recharged), (80, 0, 0));
        assert_eq!(recharged.related[0].amount, -20);
        assert_eq!(recharged.entry.reference, Some(order.to_string()));
        // Three credits and three repayments, in order, each repayment after its credit.
        let kinds: Vec<_> = planned.rows.iter().map(|row| row.entry.kind).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Adjustment,
                EntryKind::Charge,
                EntryKind::Refund,
                EntryKind::Charge,
                EntryKind::Recharge,
                EntryKind::Charge
            ]
        );
        assert_eq!(planned.rows[1].debt_delta, -30);
        assert_eq!(planned.paid_orders.len(), 1);
        assert_eq!(planned.paid_orders[0].1, recharged.entry.entry_id);
    }

    #[test]
    fn a_negative_adjustment_needs_the_funds_and_repays_nothing() {
        let batch = [request(adjust(-101)), request(adjust(-100))];

        let planned = run(account(100, 0, 40), &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::InsufficientCredits {
                available: 100,
                requested: 101
            }
        ));
        let applied = applied(&planned.verdicts[1]);
        assert_eq!(balance(applied), (0, 0, 40));
        assert!(applied.related.is_empty());
    }

    #[test]
    fn a_credit_past_the_largest_balance_is_refused_counting_what_is_held() {
        let order = id(5);
        let batch = [
            request(adjust(11)),
            request(refund(7, 11)),
            request(recharge(order, 11)),
            request(adjust(10)),
        ];
        let mut facts = account(MAX_BALANCE - 20, 10, 0);
        facts.charges.insert(7, charge_fact(100, 0));
        facts.orders.insert(
            order,
            CreditableOrder {
                account_id: ACCOUNT.into(),
                status: "pending".into(),
                credits: 11,
            },
        );

        let planned = run(facts, &batch);

        for verdict in &planned.verdicts[..3] {
            let DomainError::Validation(message) = refused(verdict) else {
                panic!("expected a validation error");
            };
            assert!(message.contains("largest balance"), "{message}");
        }
        assert_eq!(
            balance(applied(&planned.verdicts[3])),
            (MAX_BALANCE - 10, 10, 0)
        );
        assert!(planned.paid_orders.is_empty());
    }

    #[test]
    fn a_recharge_credits_its_order_once_and_only_as_ordered() {
        let (missing, paid, elsewhere, pending) = (id(1), id(2), id(3), id(4));
        let order = |account_id: &str, status: &str| CreditableOrder {
            account_id: account_id.into(),
            status: status.into(),
            credits: 100,
        };
        let batch = [
            request(recharge(missing, 100)),
            request(recharge(paid, 100)),
            request(recharge(elsewhere, 100)),
            request(recharge(pending, 99)),
            request(recharge(pending, 100)),
            request(recharge(pending, 100)),
        ];
        let mut facts = account(0, 0, 0);
        facts.orders.insert(paid, order(ACCOUNT, "paid"));
        facts.orders.insert(elsewhere, order("bob", "pending"));
        facts.orders.insert(pending, order(ACCOUNT, "pending"));

        let planned = run(facts, &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::NotFound {
                what: "payment order"
            }
        ));
        assert!(matches!(
            refused(&planned.verdicts[1]),
            DomainError::AlreadyApplied(_)
        ));
        assert!(matches!(
            refused(&planned.verdicts[2]),
            DomainError::Validation(_)
        ));
        assert!(matches!(
            refused(&planned.verdicts[3]),
            DomainError::Validation(_)
        ));
        let credited = applied(&planned.verdicts[4]);
        assert_eq!(balance(credited), (100, 0, 0));
        // The same order again in the batch is refused like one already paid in the table.
        assert!(matches!(
            refused(&planned.verdicts[5]),
            DomainError::AlreadyApplied(_)
        ));
        assert_eq!(planned.paid_orders.len(), 1);
        assert_eq!(planned.paid_orders[0].0.order_id, pending);
        assert_eq!(planned.paid_orders[0].1, credited.entry.entry_id);
    }

    #[test]
    fn a_hold_moves_credits_from_available_to_held_and_opens_the_hold() {
        let batch = [request(hold(id(1), 300)), request(hold(id(2), 800))];

        let planned = run(account(1_000, 0, 0), &batch);

        let held = applied(&planned.verdicts[0]);
        assert_eq!(balance(held), (700, 300, 0));
        assert_eq!(held.entry.kind, EntryKind::Hold);
        assert_eq!(held.entry.reference.as_deref(), Some("hold"));
        assert_eq!(planned.rows[0].held_delta, 300);
        assert_eq!(planned.rows[0].hold_id, Some(id(1)));
        assert!(matches!(
            refused(&planned.verdicts[1]),
            DomainError::InsufficientCredits {
                available: 700,
                requested: 800
            }
        ));
        assert_eq!(
            planned.writes,
            [SideWrite::OpenHold {
                hold_id: id(1),
                task_id: None,
                amount: 300
            }]
        );
    }

    #[test]
    fn a_hold_for_a_new_task_creates_the_task_before_the_hold() {
        let task_id = id(9);
        let create = TaskWrite::Create(new_task(task_id));
        let batch = [with_task(
            Operation::Hold {
                hold_id: id(1),
                task_id: Some(task_id),
                amount: 100,
            },
            create.clone(),
        )];

        let planned = run(account(1_000, 0, 0), &batch);

        let applied = applied(&planned.verdicts[0]);
        assert_eq!(applied.task, None, "filled in by the store once written");
        assert_eq!(planned.rows[0].task_id, Some(task_id));
        assert_eq!(
            planned.writes,
            [
                SideWrite::Task {
                    request: 0,
                    write: &create,
                    settled: None
                },
                SideWrite::OpenHold {
                    hold_id: id(1),
                    task_id: Some(task_id),
                    amount: 100
                }
            ]
        );
    }

    fn open(amount: i64, task_id: Option<Uuid>) -> OpenHold {
        OpenHold { amount, task_id }
    }

    #[test]
    fn a_capture_below_the_hold_returns_the_rest() {
        let batch = [request(Operation::Capture {
            hold_id: id(1),
            actual: 60,
        })];
        let mut facts = account(900, 100, 0);
        facts.open_holds.insert(id(1), open(100, Some(id(9))));

        let planned = run(facts, &batch);

        let captured = applied(&planned.verdicts[0]);
        assert_eq!(balance(captured), (940, 0, 0));
        assert_eq!(captured.entry.kind, EntryKind::Capture);
        assert_eq!(captured.entry.amount, 40);
        assert_eq!(captured.entry.task_id, Some(id(9).to_string()));
        assert_eq!(planned.rows[0].held_delta, -100);
        assert_eq!(
            planned.writes,
            [SideWrite::CaptureHold {
                hold_id: id(1),
                actual: 60
            }]
        );
    }

    #[test]
    fn a_capture_above_the_hold_takes_the_difference_and_records_what_is_missing_as_debt() {
        let batch = [
            request(Operation::Capture {
                hold_id: id(1),
                actual: 130,
            }),
            request(Operation::Capture {
                hold_id: id(2),
                actual: 200,
            }),
        ];
        let mut facts = account(50, 200, 0);
        facts.open_holds.insert(id(1), open(100, None));
        facts.open_holds.insert(id(2), open(100, None));

        let planned = run(facts, &batch);

        let within = applied(&planned.verdicts[0]);
        assert_eq!(within.entry.amount, -30);
        assert_eq!(balance(within), (20, 100, 0));
        let beyond = applied(&planned.verdicts[1]);
        assert_eq!(beyond.entry.amount, -20);
        assert_eq!(planned.rows[1].debt_delta, 80);
        assert_eq!(balance(beyond), (0, 0, 80));
    }

    #[test]
    fn a_release_returns_the_hold_whole_and_a_hold_settles_only_once() {
        let batch = [
            request(Operation::Release { hold_id: id(1) }),
            request(Operation::Release { hold_id: id(1) }),
            request(Operation::Capture {
                hold_id: id(1),
                actual: 10,
            }),
            request(Operation::Release { hold_id: id(2) }),
        ];
        let mut facts = account(0, 100, 0);
        facts.open_holds.insert(id(1), open(100, None));

        let planned = run(facts, &batch);

        let released = applied(&planned.verdicts[0]);
        assert_eq!(balance(released), (100, 0, 0));
        assert_eq!(released.entry.kind, EntryKind::Release);
        for verdict in &planned.verdicts[1..] {
            assert!(matches!(refused(verdict), DomainError::Conflict(_)));
        }
        assert_eq!(planned.writes, [SideWrite::ReleaseHold { hold_id: id(1) }]);
    }

    #[test]
    fn a_hold_opened_in_the_batch_can_be_captured_in_it() {
        let batch = [
            request(hold(id(1), 100)),
            request(Operation::Capture {
                hold_id: id(1),
                actual: 100,
            }),
        ];

        let planned = run(account(100, 0, 0), &batch);

        assert_eq!(balance(applied(&planned.verdicts[1])), (0, 0, 0));
        assert_eq!(planned.writes.len(), 2);
    }

    #[test]
    fn a_settling_event_the_state_machine_refuses_leaves_the_hold_open() {
        let task_id = id(9);
        let batch = [
            // A queued task cannot succeed: the capture is refused and writes nothing.
            with_task(
                Operation::Capture {
                    hold_id: id(1),
                    actual: 10,
                },
                event(task_id, TaskStatus::Succeeded),
            ),
            // A queued task can be canceled: the release applies.
            with_task(
                Operation::Release { hold_id: id(1) },
                event(task_id, TaskStatus::Canceled),
            ),
            // Now canceled, it cannot be canceled again, and the hold is gone anyway.
            with_task(
                Operation::Release { hold_id: id(1) },
                event(task_id, TaskStatus::Canceled),
            ),
            with_task(
                Operation::Release { hold_id: id(2) },
                event(id(404), TaskStatus::Canceled),
            ),
        ];
        let mut facts = account(0, 100, 0);
        facts.open_holds.insert(id(1), open(100, Some(task_id)));
        facts.tasks.insert(
            task_id,
            TaskState {
                status: TaskStatus::Queued,
                units: 10,
            },
        );

        let planned = run(facts, &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::InvalidTransition(_)
        ));
        assert_eq!(balance(applied(&planned.verdicts[1])), (100, 0, 0));
        assert!(matches!(
            refused(&planned.verdicts[2]),
            DomainError::InvalidTransition(_)
        ));
        assert!(matches!(
            refused(&planned.verdicts[3]),
            DomainError::NotFound { what: "task" }
        ));
        assert_eq!(
            planned.writes,
            [
                SideWrite::Task {
                    request: 1,
                    write: batch[1].task.as_ref().expect("task"),
                    settled: None
                },
                SideWrite::ReleaseHold { hold_id: id(1) }
            ]
        );
    }

    #[test]
    fn a_capture_writes_its_task_event_with_the_actual_cost() {
        let task_id = id(9);
        let batch = [with_task(
            Operation::Capture {
                hold_id: id(1),
                actual: 70,
            },
            event(task_id, TaskStatus::Succeeded),
        )];
        let mut facts = account(0, 100, 0);
        facts.open_holds.insert(id(1), open(100, Some(task_id)));
        facts.tasks.insert(
            task_id,
            TaskState {
                status: TaskStatus::Running,
                units: 10,
            },
        );

        let planned = run(facts, &batch);

        assert_eq!(balance(applied(&planned.verdicts[0])), (30, 0, 0));
        assert!(matches!(
            planned.writes[0],
            SideWrite::Task {
                request: 0,
                settled: Some(70),
                ..
            }
        ));
        assert_eq!(
            planned.writes[1],
            SideWrite::CaptureHold {
                hold_id: id(1),
                actual: 70
            }
        );
    }

    #[test]
    fn a_request_whose_claim_ended_is_not_applied_and_its_neighbours_are() {
        let batch = [
            request(charge(100)),
            request(charge(100)),
            request(charge(100)),
        ];
        let mut facts = account(1_000, 0, 0);
        facts.claims_held = vec![true, false, true];

        let planned = run(facts, &batch);

        assert_eq!(balance(applied(&planned.verdicts[0])), (900, 0, 0));
        assert!(matches!(planned.verdicts[1], Verdict::ClaimLost));
        assert_eq!(balance(applied(&planned.verdicts[2])), (800, 0, 0));
        assert_eq!(planned.rows.len(), 2);
    }

    #[test]
    fn every_request_for_a_missing_account_is_refused_and_nothing_is_planned() {
        let batch = [request(charge(1)), request(adjust(5)), request(charge(1))];
        let facts = Facts {
            claims_held: vec![true, true, false],
            ..Facts::default()
        };

        let planned = run(facts, &batch);

        for verdict in &planned.verdicts[..2] {
            assert!(matches!(refused(verdict), DomainError::NotFound { .. }));
        }
        assert!(matches!(planned.verdicts[2], Verdict::ClaimLost));
        assert!(planned.rows.is_empty() && planned.writes.is_empty());
    }

    #[test]
    fn a_balance_leaving_the_i64_range_faults_the_batch_instead_of_wrapping() {
        // Debt at the edge: a capture whose difference is missing overflows the debt.
        let mut facts = account(0, 1, i64::MAX - 10);
        facts.claims_held = vec![true];
        facts.open_holds.insert(id(1), open(1, None));
        let batch = [request(Operation::Capture {
            hold_id: id(1),
            actual: MAX_AMOUNT,
        })];
        assert_eq!(
            plan(ACCOUNT, &batch, facts)
                .map(|_| ())
                .expect_err("a fault"),
            Fault::Overflow
        );

        // Held at the edge: one more held credit overflows it.
        let mut facts = account(10, i64::MAX, 0);
        facts.claims_held = vec![true];
        let batch = [request(hold(id(2), 1))];
        assert_eq!(
            plan(ACCOUNT, &batch, facts)
                .map(|_| ())
                .expect_err("a fault"),
            Fault::Overflow
        );
    }

    #[test]
    fn the_largest_amounts_on_the_largest_balance_are_refused_without_overflow() {
        let batch = [request(adjust(MAX_AMOUNT)), request(charge(MAX_AMOUNT))];

        let planned = run(account(MAX_BALANCE, 0, 0), &batch);

        assert!(matches!(
            refused(&planned.verdicts[0]),
            DomainError::Validation(_)
        ));
        assert_eq!(
            balance(applied(&planned.verdicts[1])),
            (MAX_BALANCE - MAX_AMOUNT, 0, 0)
        );
    }

    #[test]
    fn a_batch_that_outgrows_its_allocated_ids_faults() {
        let mut facts = account(1_000, 0, 0);
        if let Some(account) = &mut facts.account {
            account.ids = vec![41];
        }
        facts.claims_held = vec![true, true];
        let batch = [request(charge(1)), request(charge(1))];

        assert_eq!(
            plan(ACCOUNT, &batch, facts)
                .map(|_| ())
                .expect_err("a fault"),
            Fault::OutOfIds
        );
    }

    #[test]
    fn ids_are_allocated_for_a_debt_repayment_after_every_credit() {
        let batch = [
            request(charge(1)),
            request(adjust(1)),
            request(refund(1, 1)),
            request(recharge(id(1), 1)),
            request(hold(id(1), 1)),
            request(Operation::Release { hold_id: id(1) }),
        ];

        assert_eq!(ids_needed(&batch), 1 + 2 + 2 + 2 + 1 + 1);
    }

    #[test]
    fn needs_name_the_rows_of_held_requests_only_sorted_without_repeats() {
        let batch = [
            request(Operation::Charge {
                amount: 1,
                reason: "test".into(),
                task_id: Some(id(30)),
                metadata: None,
            }),
            request(refund(9, 1)),
            request(refund(3, 1)),
            request(refund(9, 1)),
            request(recharge(id(20), 1)),
            with_task(
                Operation::Capture {
                    hold_id: id(11),
                    actual: 1,
                },
                event(id(41), TaskStatus::Succeeded),
            ),
            with_task(
                Operation::Release { hold_id: id(10) },
                event(id(40), TaskStatus::Canceled),
            ),
            // A task write on an operation that ignores it names nothing.
            with_task(charge(1), event(id(42), TaskStatus::Canceled)),
            // Not held: names nothing.
            request(refund(99, 1)),
        ];
        let mut held = vec![true; batch.len()];
        held[8] = false;

        let needs = needs(&batch, &held);

        assert_eq!(
            needs,
            Needs {
                charges: vec![3, 9],
                holds: vec![id(10), id(11)],
                charged_tasks: vec![id(30)],
                task_events: vec![id(40), id(41)],
                orders: vec![id(20)],
            }
        );
    }
}
