//! The SQL of the ledger: one batch of operations on one account in one transaction.
//!
//! The account row is locked once (`for update`), so the balances read at the start stay true for
//! the whole batch, across nodes too. Each operation is validated against the running balances in
//! memory before anything is written, so a request that lacks funds fails alone and writes
//! nothing while the others apply. The ledger trigger applies each row to the account; the
//! idempotency keys and the audit rows of the whole batch are written with one statement each,
//! inside the same transaction: a commit has every charge together with its stored response.

use super::{Applied, DEBT_REPAYMENT, LedgerRequest, Operation, Outcome};
use crate::audit::{AuditEntry, Outcome as AuditOutcome};
use crate::idempotency::StoredResponse;
use crate::{DomainError, audit, idempotency};
use shared::credits::{EntryKind, LedgerEntry};
use shared::session::Balance;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// The account's balances, kept current through the batch.
#[derive(Debug, Clone, Copy)]
struct Balances {
    available: i64,
    held: i64,
    debt: i64,
}

impl Balances {
    fn after(entry: &LedgerEntry) -> Self {
        Self {
            available: entry.balance_after,
            held: entry.held_after,
            debt: entry.debt_after,
        }
    }

    fn public(self) -> Balance {
        Balance {
            available: self.available,
            held: self.held,
            total: self.available + self.held,
            debt: self.debt,
        }
    }
}

/// A row to insert into `credit_ledger`.
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

const ENTRY_COLUMNS: &str = "id, account_id, kind, amount, balance_after, held_after, debt_after, \
                             reference, reason, related_entry_id, task_id, created_at";

/// Maps a `credit_ledger` row (selected with [`ENTRY_COLUMNS`]).
pub fn entry_from_row(row: &PgRow) -> Result<LedgerEntry, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(LedgerEntry {
        entry_id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        kind: EntryKind::parse(&kind).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "kind".into(),
            source: format!("unknown ledger kind {kind}").into(),
        })?,
        amount: row.try_get("amount")?,
        balance_after: row.try_get("balance_after")?,
        held_after: row.try_get("held_after")?,
        debt_after: row.try_get("debt_after")?,
        reference: row.try_get("reference")?,
        reason: row.try_get("reason")?,
        related_entry_id: row.try_get("related_entry_id")?,
        task_id: row
            .try_get::<Option<Uuid>, _>("task_id")?
            .map(|id| id.to_string()),
        created_at: row.try_get("created_at")?,
    })
}

/// Applies `batch` (all for `account_id`) in one transaction and returns one outcome per request,
/// in order. A database failure fails the whole batch (nothing is committed).
pub async fn execute_batch(
    pool: &PgPool,
    account_id: &str,
    batch: &[LedgerRequest],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked =
        sqlx::query("select available, held, debt from credit_accounts where id = $1 for update")
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
    let mut results = Vec::with_capacity(batch.len());
    match locked {
        None => {
            for _ in batch {
                results.push(Err(DomainError::NotFound {
                    what: "credit account (accounts are created on their owner's first request)",
                }));
            }
        }
        Some(row) => {
            let mut balances = Balances {
                available: row.try_get("available")?,
                held: row.try_get("held")?,
                debt: row.try_get("debt")?,
            };
            for request in batch {
                results.push(apply_one(&mut tx, account_id, request, &mut balances).await?);
            }
        }
    }

    let mut outcomes = Vec::with_capacity(batch.len());
    let mut audit_rows = Vec::new();
    for (request, result) in batch.iter().zip(results) {
        let stored = request
            .completion
            .as_ref()
            .map(|completion| (completion.render)(&result));
        if let Some(action) = request.operation.audit_action() {
            audit_rows.push((request, action, audit_detail(request, &result)));
        }
        outcomes.push(Outcome { result, stored });
    }
    let completions: Vec<(&idempotency::KeyRef, &StoredResponse)> = batch
        .iter()
        .zip(&outcomes)
        .filter_map(|(request, outcome)| {
            Some((&request.completion.as_ref()?.key, outcome.stored.as_ref()?))
        })
        .collect();
    idempotency::complete_many(&mut tx, &completions)
        .await
        .map_err(into_sqlx)?;
    let entries: Vec<(&audit::Actor, AuditEntry<'_>)> = audit_rows
        .iter()
        .map(|(request, action, (outcome, detail))| {
            (
                &request.actor,
                AuditEntry {
                    action,
                    target_type: Some("credit_account"),
                    target_id: Some(account_id),
                    outcome: *outcome,
                    detail: Some(detail.clone()),
                },
            )
        })
        .collect();
    audit::record_many(&mut tx, &entries)
        .await
        .map_err(into_sqlx)?;
    tx.commit().await?;
    Ok(outcomes)
}

fn into_sqlx(error: DomainError) -> sqlx::Error {
    match error {
        DomainError::Database(error) => error,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

fn audit_detail(
    request: &LedgerRequest,
    result: &Result<Applied, DomainError>,
) -> (AuditOutcome, serde_json::Value) {
    let mut detail = match &request.operation {
        Operation::Charge {
            amount,
            reason,
            task_id,
            ..
        } => {
            serde_json::json!({ "amount": amount, "reason": reason, "task_id": task_id })
        }
        Operation::Refund {
            charge_entry_id,
            amount,
            reason,
        } => serde_json::json!({
            "charge_entry_id": charge_entry_id, "amount": amount, "reason": reason,
        }),
        Operation::Adjust { amount, reason } => {
            serde_json::json!({ "amount": amount, "reason": reason })
        }
        Operation::Recharge { amount, reference } => {
            serde_json::json!({ "amount": amount, "reference": reference })
        }
        other => serde_json::json!({ "operation": other.kind() }),
    };
    let outcome = match result {
        Ok(applied) => {
            detail["entry_id"] = applied.entry.entry_id.into();
            AuditOutcome::Success
        }
        Err(error) => {
            detail["error"] = error.to_string().into();
            AuditOutcome::Failure
        }
    };
    (outcome, detail)
}

/// Applies one operation: business failures are the inner `Err` (nothing written), database
/// failures the outer one.
async fn apply_one(
    conn: &mut PgConnection,
    account_id: &str,
    request: &LedgerRequest,
    balances: &mut Balances,
) -> Result<Result<Applied, DomainError>, sqlx::Error> {
    let actor = &request.actor;
    let insufficient = |requested: i64, balances: &Balances| DomainError::InsufficientCredits {
        available: balances.available,
        requested,
    };
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
            if balances.available < *amount {
                return Ok(Err(insufficient(*amount, balances)));
            }
            if let Some(task_id) = task_id
                && !task_exists(conn, *task_id, account_id).await?
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
            insert_entry(conn, account_id, EntryKind::Charge, actor, new).await?
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
            let charge = sqlx::query(
                "select account_id, kind, amount, reference from credit_ledger where id = $1",
            )
            .bind(charge_entry_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(charge) = charge else {
                return Ok(Err(DomainError::NotFound {
                    what: "charge entry",
                }));
            };
            if charge.try_get::<String, _>("account_id")? != account_id {
                return Ok(Err(DomainError::NotFound {
                    what: "charge entry",
                }));
            }
            if charge.try_get::<String, _>("kind")? != "charge"
                || charge.try_get::<Option<String>, _>("reference")?.as_deref()
                    == Some(DEBT_REPAYMENT)
            {
                return Ok(Err(DomainError::Validation(format!(
                    "entry {charge_entry_id} is not a charge"
                ))));
            }
            let refunded: i64 = sqlx::query_scalar(
                "select coalesce(sum(amount), 0)::bigint from credit_ledger \
                 where related_entry_id = $1 and kind = 'refund'",
            )
            .bind(charge_entry_id)
            .fetch_one(&mut *conn)
            .await?;
            let remaining = -charge.try_get::<i64, _>("amount")? - refunded;
            if *amount > remaining {
                return Ok(Err(DomainError::RefundExceedsCharge { remaining }));
            }
            let new = NewEntry {
                amount: *amount,
                related_entry_id: Some(*charge_entry_id),
                reason: Some(reason),
                ..NewEntry::default()
            };
            let entry = insert_entry(conn, account_id, EntryKind::Refund, actor, new).await?;
            related.extend(repay_debt(conn, account_id, actor, &entry).await?);
            entry
        }
        Operation::Adjust { amount, reason } => {
            if *amount == 0 {
                return Ok(Err(DomainError::Validation(
                    "amount must not be zero".into(),
                )));
            }
            if *amount < 0 && balances.available < -amount {
                return Ok(Err(insufficient(-amount, balances)));
            }
            let new = NewEntry {
                amount: *amount,
                reason: Some(reason),
                ..NewEntry::default()
            };
            let entry = insert_entry(conn, account_id, EntryKind::Adjustment, actor, new).await?;
            if *amount > 0 {
                related.extend(repay_debt(conn, account_id, actor, &entry).await?);
            }
            entry
        }
        Operation::Recharge { amount, reference } => {
            if *amount <= 0 {
                return Ok(Err(DomainError::Validation(
                    "amount must be positive".into(),
                )));
            }
            let new = NewEntry {
                amount: *amount,
                reference: Some(reference),
                ..NewEntry::default()
            };
            let entry = insert_entry(conn, account_id, EntryKind::Recharge, actor, new).await?;
            related.extend(repay_debt(conn, account_id, actor, &entry).await?);
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
            if balances.available < *amount {
                return Ok(Err(insufficient(*amount, balances)));
            }
            sqlx::query("insert into credit_holds (id, account_id, task_id, amount) values ($1, $2, $3, $4)")
                .bind(hold_id)
                .bind(account_id)
                .bind(task_id)
                .bind(amount)
                .execute(&mut *conn)
                .await?;
            let new = NewEntry {
                amount: -amount,
                held_delta: *amount,
                hold_id: Some(*hold_id),
                task_id: *task_id,
                reference: Some("hold"),
                ..NewEntry::default()
            };
            insert_entry(conn, account_id, EntryKind::Hold, actor, new).await?
        }
        Operation::Capture { hold_id, actual } => {
            if *actual < 0 {
                return Ok(Err(DomainError::Validation(
                    "the actual cost must not be negative".into(),
                )));
            }
            let Some((held, task_id)) = open_hold(conn, *hold_id, account_id).await? else {
                return Ok(Err(DomainError::Conflict(format!(
                    "hold {hold_id} is not open"
                ))));
            };
            // Within the hold: the rest goes back. Beyond it: take the difference from what is
            // available (the supplementary deduction) and record what is missing as debt.
            let extra = actual - held;
            let (amount, debt_delta) = if extra <= 0 {
                (-extra, 0)
            } else {
                let taken = extra.min(balances.available);
                (-taken, extra - taken)
            };
            let new = NewEntry {
                amount,
                held_delta: -held,
                debt_delta,
                hold_id: Some(*hold_id),
                task_id,
                reference: Some("capture"),
                ..NewEntry::default()
            };
            let entry = insert_entry(conn, account_id, EntryKind::Capture, actor, new).await?;
            sqlx::query(
                "update credit_holds set status = 'captured', captured_amount = $2, settled_at = now() \
                 where id = $1",
            )
            .bind(hold_id)
            .bind(actual)
            .execute(&mut *conn)
            .await?;
            entry
        }
        Operation::Release { hold_id } => {
            let Some((held, task_id)) = open_hold(conn, *hold_id, account_id).await? else {
                return Ok(Err(DomainError::Conflict(format!(
                    "hold {hold_id} is not open"
                ))));
            };
            let new = NewEntry {
                amount: held,
                held_delta: -held,
                hold_id: Some(*hold_id),
                task_id,
                reference: Some("release"),
                ..NewEntry::default()
            };
            let entry = insert_entry(conn, account_id, EntryKind::Release, actor, new).await?;
            sqlx::query(
                "update credit_holds set status = 'released', settled_at = now() where id = $1",
            )
            .bind(hold_id)
            .execute(&mut *conn)
            .await?;
            entry
        }
    };
    *balances = Balances::after(related.last().unwrap_or(&entry));
    Ok(Ok(Applied {
        entry,
        related,
        balance: balances.public(),
    }))
}

async fn task_exists(
    conn: &mut PgConnection,
    task_id: Uuid,
    account_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("select 1 from tasks where id = $1 and account_id = $2")
            .bind(task_id)
            .bind(account_id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// The amount and task of an open hold of the account, locked.
async fn open_hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    account_id: &str,
) -> Result<Option<(i64, Option<Uuid>)>, sqlx::Error> {
    let row = sqlx::query(
        "select amount, task_id from credit_holds \
         where id = $1 and account_id = $2 and status = 'open' for update",
    )
    .bind(hold_id)
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| Ok((row.try_get("amount")?, row.try_get("task_id")?)))
        .transpose()
}

/// After a credit, repays what it can of the debt with a charge row referring to the credit.
async fn repay_debt(
    conn: &mut PgConnection,
    account_id: &str,
    actor: &audit::Actor,
    credit: &LedgerEntry,
) -> Result<Option<LedgerEntry>, sqlx::Error> {
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
    Ok(Some(
        insert_entry(conn, account_id, EntryKind::Charge, actor, new).await?,
    ))
}

async fn insert_entry(
    conn: &mut PgConnection,
    account_id: &str,
    kind: EntryKind,
    actor: &audit::Actor,
    new: NewEntry<'_>,
) -> Result<LedgerEntry, sqlx::Error> {
    let row = sqlx::query(&format!(
        "insert into credit_ledger (account_id, kind, amount, held_delta, debt_delta, reference, \
           related_entry_id, hold_id, task_id, reason, metadata, actor_id, request_id) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         returning {ENTRY_COLUMNS}"
    ))
    .bind(account_id)
    .bind(kind.as_str())
    .bind(new.amount)
    .bind(new.held_delta)
    .bind(new.debt_delta)
    .bind(new.reference)
    .bind(new.related_entry_id)
    .bind(new.hold_id)
    .bind(new.task_id)
    .bind(new.reason)
    .bind(new.metadata)
    .bind(&actor.id)
    .bind(&actor.request_id)
    .fetch_one(conn)
    .await?;
    entry_from_row(&row)
}

/// Filters of a ledger listing.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    /// From this time (inclusive).
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Up to this time (exclusive).
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only entries with an id below this (the cursor).
    pub before_id: Option<i64>,
}

/// The account's entries, newest first, at most `limit`.
pub async fn list_entries(
    pool: &PgPool,
    account_id: &str,
    filter: &LedgerFilter,
    limit: i64,
) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "select {ENTRY_COLUMNS} from credit_ledger where account_id = $1 \
           and ($2::timestamptz is null or created_at >= $2) \
           and ($3::timestamptz is null or created_at < $3) \
           and ($4::bigint is null or id < $4) \
         order by id desc limit $5"
    ))
    .bind(account_id)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.before_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(entry_from_row).collect()
}

/// The account a ledger entry belongs to (refunds are routed to the charge's account).
pub async fn entry_account(pool: &PgPool, entry_id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select account_id from credit_ledger where id = $1")
        .bind(entry_id)
        .fetch_optional(pool)
        .await
}
