//! The SQL of the ledger: one batch of operations on one account in one transaction.
//!
//! The account row is locked once (`for update`), so the balances read at the start stay true for
//! the whole batch, across nodes too. Each operation is validated against the running balances in
//! memory before anything is written, so a request that lacks funds fails alone and writes
//! nothing while the others apply. The ledger trigger applies each row to the account; the
//! idempotency keys and the audit rows of the whole batch are written with one statement each,
//! inside the same transaction: a commit has every charge together with its stored response.

use super::{Applied, DEBT_REPAYMENT, LedgerRequest, Operation, Outcome};
use crate::audit::Outcome as AuditOutcome;
use crate::idempotency::StoredResponse;
use crate::{DomainError, audit, idempotency, tasks};
use chrono::{DateTime, Utc};
use shared::credits::{EntryKind, LedgerEntry};
use shared::limits::{MAX_AMOUNT, MAX_BALANCE};
use shared::session::Balance;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::HashMap;
use uuid::Uuid;

/// The account's balances, kept current through the batch.
#[derive(Debug, Clone, Copy)]
struct Balances {
    available: i64,
    held: i64,
    debt: i64,
}

impl Balances {
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

/// The batch being planned: balances as the trigger will leave them, ledger ids allocated up
/// front, and the rows to insert, in order.
struct Plan<'a> {
    account_id: &'a str,
    balances: Balances,
    now: DateTime<Utc>,
    ids: std::vec::IntoIter<i64>,
    rows: Vec<PlannedRow>,
    /// Refunds planned in this batch per charge (not yet in the table).
    refunded: HashMap<i64, i64>,
    /// Payment orders to mark paid once their recharge rows are written (the order references
    /// its row).
    paid_orders: Vec<(crate::payments::PaymentCredit, i64)>,
}

/// A ledger row to insert, with what the trigger must compute for it.
struct PlannedRow {
    entry: LedgerEntry,
    held_delta: i64,
    debt_delta: i64,
    hold_id: Option<Uuid>,
    task_id: Option<Uuid>,
    metadata: Option<serde_json::Value>,
    actor_id: String,
    request_id: Option<String>,
}

impl Plan<'_> {
    /// Plans one row: assigns its id and moves the balances as the trigger will.
    fn entry(
        &mut self,
        kind: EntryKind,
        actor: &audit::Actor,
        new: NewEntry<'_>,
    ) -> Result<LedgerEntry, sqlx::Error> {
        let entry_id = self
            .ids
            .next()
            .ok_or_else(|| sqlx::Error::Protocol("ledger batch ran out of allocated ids".into()))?;
        // Checked, never wrapping or saturating: the edge bounds every amount and credits keep
        // balances under MAX_BALANCE, so an overflow here means a bug; it fails the batch.
        let overflow = || sqlx::Error::Protocol("ledger arithmetic overflow".into());
        self.balances = Balances {
            available: self
                .balances
                .available
                .checked_add(new.amount)
                .ok_or_else(overflow)?,
            held: self
                .balances
                .held
                .checked_add(new.held_delta)
                .ok_or_else(overflow)?,
            debt: self
                .balances
                .debt
                .checked_add(new.debt_delta)
                .ok_or_else(overflow)?,
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
        self.rows.push(PlannedRow {
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
}

/// Applies `batch` (all for `account_id`) in one transaction and returns one outcome per request,
/// in order. A database failure fails the whole batch (nothing is committed); the actor then
/// applies its requests one by one, so one failing request fails alone.
///
/// Round trips per batch, whatever its size: BEGIN; lock the account and allocate ledger ids;
/// lock the requests' idempotency claims; one statement writing every ledger row, idempotency
/// answer and audit row; COMMIT. (Refunds and holds add their own reads and hold-row writes.)
/// Each operation is validated against the running balances in memory first, so a request that
/// lacks funds fails alone. A request whose claim on its key has ended (released after its
/// caller went away, or taken over by a retry) is not applied at all.
pub async fn execute_batch(
    pool: &PgPool,
    account_id: &str,
    batch: &[LedgerRequest],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // A credit may write a second row (its debt repayment); anything else writes one.
    let ids_needed: usize = batch
        .iter()
        .map(|request| match request.operation {
            Operation::Refund { .. } | Operation::Adjust { .. } | Operation::Recharge { .. } => 2,
            _ => 1,
        })
        .sum();
    let locked = sqlx::query(
        "select available, held, debt, now() as now, \
                array(select nextval(pg_get_serial_sequence('credit_ledger', 'id')) \
                        from generate_series(1, $2)) as ids \
           from credit_accounts where id = $1 for update",
    )
    .bind(account_id)
    .bind(ids_needed as i32)
    .fetch_optional(&mut *tx)
    .await?;
    let held = claims_held(&mut tx, batch).await?;
    let render = |request: &LedgerRequest, result: &Result<Applied, DomainError>| {
        request
            .completion
            .as_ref()
            .map(|completion| (completion.render)(result.as_ref()))
    };
    let Some(row) = locked else {
        let outcomes: Vec<Outcome> = batch
            .iter()
            .zip(&held)
            .map(|(request, held)| {
                if !held {
                    return lost_claim();
                }
                let result = Err(DomainError::NotFound {
                    what: "credit account (accounts are created on their owner's first request)",
                });
                let stored = render(request, &result);
                Outcome { result, stored }
            })
            .collect();
        write_batch(&mut tx, account_id, batch, &outcomes, &[]).await?;
        tx.commit().await?;
        return Ok(outcomes);
    };
    let mut plan = Plan {
        account_id,
        balances: Balances {
            available: row.try_get("available")?,
            held: row.try_get("held")?,
            debt: row.try_get("debt")?,
        },
        now: row.try_get("now")?,
        ids: row.try_get::<Vec<i64>, _>("ids")?.into_iter(),
        rows: Vec::new(),
        refunded: HashMap::new(),
        paid_orders: Vec::new(),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for (request, held) in batch.iter().zip(held) {
        if !held {
            outcomes.push(lost_claim());
            continue;
        }
        let result = apply_one(&mut tx, request, &mut plan).await?;
        let stored = render(request, &result);
        outcomes.push(Outcome { result, stored });
    }
    write_batch(&mut tx, account_id, batch, &outcomes, &plan.rows).await?;
    for (credit, entry_id) in &plan.paid_orders {
        crate::payments::mark_paid(&mut tx, credit, *entry_id).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Locks the batch's idempotency claims; whether each request's claim is still held (a request
/// without a key always is).
async fn claims_held(
    conn: &mut PgConnection,
    batch: &[LedgerRequest],
) -> Result<Vec<bool>, sqlx::Error> {
    let claims: Vec<&idempotency::Claimed> = batch
        .iter()
        .filter_map(|request| Some(&request.completion.as_ref()?.claim))
        .collect();
    let mut held = idempotency::lock_claims(conn, &claims)
        .await
        .map_err(|error| match error {
            DomainError::Database(error) => error,
            other => sqlx::Error::Protocol(other.to_string()),
        })?
        .into_iter();
    Ok(batch
        .iter()
        .map(|request| request.completion.is_none() || held.next().unwrap_or(false))
        .collect())
}

/// The outcome of a request whose claim ended before it could be applied: nothing is written
/// for it, not even its answer (the key belongs to someone else now, or to nobody).
fn lost_claim() -> Outcome {
    Outcome {
        result: Err(idempotency::claim_lost()),
        stored: None,
    }
}

/// The batch's one write: ledger rows (the trigger applies each and computes its balances, which
/// must equal the planned ones), idempotency answers, audit rows.
async fn write_batch(
    conn: &mut PgConnection,
    account_id: &str,
    batch: &[LedgerRequest],
    outcomes: &[Outcome],
    rows: &[PlannedRow],
) -> Result<(), sqlx::Error> {
    let completions: Vec<(&idempotency::Claimed, &StoredResponse)> = batch
        .iter()
        .zip(outcomes)
        .filter_map(|(request, outcome)| {
            Some((
                &request.completion.as_ref()?.claim,
                outcome.stored.as_ref()?,
            ))
        })
        .collect();
    let audits: Vec<(&LedgerRequest, &str, (AuditOutcome, serde_json::Value))> = batch
        .iter()
        .zip(outcomes)
        .filter_map(|(request, outcome)| {
            let action = request.operation.audit_action()?;
            Some((request, action, audit_detail(request, &outcome.result)))
        })
        .collect();
    let numbers = |f: fn(&PlannedRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let texts = |f: fn(&PlannedRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let roles = |request: &LedgerRequest| {
        request
            .actor
            .roles
            .iter()
            .map(|role| role.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let written = sqlx::query(
        "with entries as ( \
           insert into credit_ledger (id, account_id, kind, amount, held_delta, debt_delta, \
               reference, related_entry_id, hold_id, task_id, reason, metadata, actor_id, \
               request_id, created_at) \
           overriding system value \
           select id, $2, kind, amount, held_delta, debt_delta, reference, related, hold_id, \
                  task_id, reason, metadata, actor_id, request_id, $3 \
             from unnest($1::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], \
                         $8::text[], $9::bigint[], $10::uuid[], $11::uuid[], $12::text[], \
                         $13::jsonb[], $14::text[], $15::text[]) with ordinality \
                  as r(id, kind, amount, held_delta, debt_delta, reference, related, hold_id, \
                       task_id, reason, metadata, actor_id, request_id, ord) \
            order by ord \
           returning id, balance_after, held_after, debt_after), \
         answers as ( \
           update idempotency_keys k \
              set status = 'completed', response_status = u.status, response_body = u.body, \
                  completed_at = now() \
             from unnest($16::text[], $28::text[], $17::text[], $18::text[], $29::uuid[], \
                         $19::int2[], $20::bytea[]) \
                  as u(caller_id, account_id, route, key, token, status, body) \
            where k.caller_id = u.caller_id and k.account_id = u.account_id \
              and k.route = u.route and k.key = u.key \
              and k.owner_token = u.token and k.status = 'in_flight' \
           returning 1), \
         audit as ( \
           insert into audit_access_log (actor_id, actor_roles, action, target_type, target_id, \
               outcome, request_id, client_ip, detail) \
           select actor_id, string_to_array(roles, ','), action, 'credit_account', $2, outcome, \
                  request_id, ip::inet, detail \
             from unnest($21::text[], $22::text[], $23::text[], $24::text[], $25::text[], \
                         $26::text[], $27::jsonb[]) \
                  as a(actor_id, roles, action, outcome, request_id, ip, detail) \
           returning 1) \
         select e.id, e.balance_after, e.held_after, e.debt_after, \
                (select count(*) from answers) as answered \
           from (select 1) as one left join entries e on true",
    )
    .bind(numbers(|row| row.entry.entry_id))
    .bind(account_id)
    .bind(rows.first().map(|row| row.entry.created_at))
    .bind(
        rows.iter()
            .map(|row| row.entry.kind.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(numbers(|row| row.entry.amount))
    .bind(numbers(|row| row.held_delta))
    .bind(numbers(|row| row.debt_delta))
    .bind(texts(|row| row.entry.reference.clone()))
    .bind(
        rows.iter()
            .map(|row| row.entry.related_entry_id)
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.hold_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.task_id).collect::<Vec<_>>())
    .bind(texts(|row| row.entry.reason.clone()))
    .bind(
        rows.iter()
            .map(|row| row.metadata.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|row| row.actor_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(texts(|row| row.request_id.clone()))
    .bind(
        completions
            .iter()
            .map(|(claim, _)| claim.key.caller_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        completions
            .iter()
            .map(|(claim, _)| claim.key.route.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        completions
            .iter()
            .map(|(claim, _)| claim.key.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        completions
            .iter()
            .map(|(_, stored)| stored.status as i16)
            .collect::<Vec<_>>(),
    )
    .bind(
        completions
            .iter()
            .map(|(_, stored)| stored.body.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(request, ..)| request.actor.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(request, ..)| roles(request))
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(_, action, _)| *action)
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(_, _, (outcome, _))| outcome.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(request, ..)| request.actor.request_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(request, ..)| request.actor.client_ip.map(|ip| ip.to_string()))
            .collect::<Vec<_>>(),
    )
    .bind(
        audits
            .iter()
            .map(|(_, _, (_, detail))| detail.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        completions
            .iter()
            .map(|(claim, _)| claim.key.account_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        completions
            .iter()
            .map(|(claim, _)| claim.token)
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    // The trigger is the authority on balances: the plan must agree with it, row for row.
    let planned: HashMap<i64, &LedgerEntry> = rows
        .iter()
        .map(|row| (row.entry.entry_id, &row.entry))
        .collect();
    let answered: i64 = match written.first() {
        Some(row) => row.try_get("answered")?,
        None => 0,
    };
    if answered != completions.len() as i64 {
        // Cannot happen while the claims are locked; if it did, roll everything back.
        return Err(sqlx::Error::Protocol(
            "an idempotency claim of the batch was not held at completion".into(),
        ));
    }
    let mut entries = 0;
    for row in &written {
        let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
            continue;
        };
        entries += 1;
        let actual: (i64, i64, i64) = (
            row.try_get("balance_after")?,
            row.try_get("held_after")?,
            row.try_get("debt_after")?,
        );
        let agrees = planned.get(&id).is_some_and(|entry| {
            (entry.balance_after, entry.held_after, entry.debt_after) == actual
        });
        if !agrees {
            return Err(sqlx::Error::Protocol(format!(
                "ledger entry {id}: planned balances differ from the database's {actual:?}"
            )));
        }
    }
    if entries != rows.len() {
        return Err(sqlx::Error::Protocol(
            "the ledger batch wrote other rows than planned".into(),
        ));
    }
    Ok(())
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
        Operation::Recharge { amount, payment } => serde_json::json!({
            "amount": amount,
            "order_id": payment.order_id,
            "transaction_id": payment.transaction_id,
            "source": payment.source.as_str(),
        }),
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
    request: &LedgerRequest,
    plan: &mut Plan<'_>,
) -> Result<Result<Applied, DomainError>, sqlx::Error> {
    let account_id = plan.account_id;
    let actor = &request.actor;
    let insufficient = |requested: i64, balances: &Balances| DomainError::InsufficientCredits {
        available: balances.available,
        requested,
    };
    if request.operation.amount().unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
        return Ok(Err(DomainError::Validation(format!(
            "amounts are at most {MAX_AMOUNT} in size"
        ))));
    }
    let mut related = Vec::new();
    let mut task = None;
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
            if plan.balances.available < *amount {
                return Ok(Err(insufficient(*amount, &plan.balances)));
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
            plan.entry(EntryKind::Charge, actor, new)?
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
            if let Some(refused) = exceeds_balance(plan, *amount) {
                return Ok(Err(refused));
            }
            let in_batch = plan.refunded.get(charge_entry_id).copied().unwrap_or(0);
            let remaining = -charge.try_get::<i64, _>("amount")? - refunded - in_batch;
            if *amount > remaining {
                return Ok(Err(DomainError::RefundExceedsCharge { remaining }));
            }
            let new = NewEntry {
                amount: *amount,
                related_entry_id: Some(*charge_entry_id),
                reason: Some(reason),
                ..NewEntry::default()
            };
            let entry = plan.entry(EntryKind::Refund, actor, new)?;
            *plan.refunded.entry(*charge_entry_id).or_default() += amount;
            related.extend(repay_debt(plan, actor, &entry)?);
            entry
        }
        Operation::Adjust { amount, reason } => {
            if *amount == 0 {
                return Ok(Err(DomainError::Validation(
                    "amount must not be zero".into(),
                )));
            }
            if *amount < 0 && plan.balances.available < -amount {
                return Ok(Err(insufficient(-amount, &plan.balances)));
            }
            if let Some(refused) = exceeds_balance(plan, *amount) {
                return Ok(Err(refused));
            }
            let new = NewEntry {
                amount: *amount,
                reason: Some(reason),
                ..NewEntry::default()
            };
            let entry = plan.entry(EntryKind::Adjustment, actor, new)?;
            if *amount > 0 {
                related.extend(repay_debt(plan, actor, &entry)?);
            }
            entry
        }
        Operation::Recharge { amount, payment } => {
            if *amount <= 0 {
                return Ok(Err(DomainError::Validation(
                    "amount must be positive".into(),
                )));
            }
            if let Some(refused) = exceeds_balance(plan, *amount) {
                return Ok(Err(refused));
            }
            // A second recharge of one order in this batch is refused like one in the table.
            if plan
                .paid_orders
                .iter()
                .any(|(paid, _)| paid.order_id == payment.order_id)
            {
                return Ok(Err(DomainError::AlreadyApplied(
                    "the order is already credited".into(),
                )));
            }
            if let Err(refused) =
                crate::payments::lock_for_credit(conn, payment, account_id, *amount).await?
            {
                return Ok(Err(refused));
            }
            let reference = payment.order_id.to_string();
            let new = NewEntry {
                amount: *amount,
                reference: Some(&reference),
                ..NewEntry::default()
            };
            let entry = plan.entry(EntryKind::Recharge, actor, new)?;
            plan.paid_orders.push((payment.clone(), entry.entry_id));
            related.extend(repay_debt(plan, actor, &entry)?);
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
            if plan.balances.available < *amount {
                return Ok(Err(insufficient(*amount, &plan.balances)));
            }
            if let Some(write) = &request.task {
                match tasks::write(conn, write, actor, None).await? {
                    Ok(change) => task = Some(change),
                    Err(error) => return Ok(Err(error)),
                }
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
            plan.entry(EntryKind::Hold, actor, new)?
        }
        Operation::Capture { hold_id, actual } => {
            if *actual < 0 {
                return Ok(Err(DomainError::Validation(
                    "the actual cost must not be negative".into(),
                )));
            }
            if let Some(write) = &request.task
                && let Err(error) = tasks::check(conn, write).await?
            {
                return Ok(Err(error));
            }
            let Some((held, task_id)) = open_hold(conn, *hold_id, account_id).await? else {
                return Ok(Err(DomainError::Conflict(format!(
                    "hold {hold_id} is not open"
                ))));
            };
            if *actual > MAX_AMOUNT {
                return Ok(Err(DomainError::Validation(format!(
                    "the actual cost {actual} exceeds the largest amount, {MAX_AMOUNT}"
                ))));
            }
            // Within the hold: the rest goes back. Beyond it: take the difference from what is
            // available (the supplementary deduction) and record what is missing as debt.
            if let Some(write) = &request.task {
                match tasks::write(conn, write, actor, Some(*actual)).await? {
                    Ok(change) => task = Some(change),
                    Err(error) => return Ok(Err(error)),
                }
            }
            let extra = actual - held;
            let (amount, debt_delta) = if extra <= 0 {
                (-extra, 0)
            } else {
                let taken = extra.min(plan.balances.available);
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
            let entry = plan.entry(EntryKind::Capture, actor, new)?;
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
            if let Some(write) = &request.task
                && let Err(error) = tasks::check(conn, write).await?
            {
                return Ok(Err(error));
            }
            let Some((held, task_id)) = open_hold(conn, *hold_id, account_id).await? else {
                return Ok(Err(DomainError::Conflict(format!(
                    "hold {hold_id} is not open"
                ))));
            };
            if let Some(write) = &request.task {
                match tasks::write(conn, write, actor, None).await? {
                    Ok(change) => task = Some(change),
                    Err(error) => return Ok(Err(error)),
                }
            }
            let new = NewEntry {
                amount: held,
                held_delta: -held,
                hold_id: Some(*hold_id),
                task_id,
                reference: Some("release"),
                ..NewEntry::default()
            };
            let entry = plan.entry(EntryKind::Release, actor, new)?;
            sqlx::query(
                "update credit_holds set status = 'released', settled_at = now() where id = $1",
            )
            .bind(hold_id)
            .execute(&mut *conn)
            .await?;
            entry
        }
    };
    Ok(Ok(Applied {
        entry,
        related,
        balance: plan.balances.public(),
        task,
    }))
}

/// A refusal when crediting `amount` would take the account past [`MAX_BALANCE`].
fn exceeds_balance(plan: &Plan<'_>, amount: i64) -> Option<DomainError> {
    let after = i128::from(plan.balances.available)
        + i128::from(plan.balances.held)
        + i128::from(amount.max(0));
    (after > i128::from(MAX_BALANCE)).then(|| {
        DomainError::Validation(format!(
            "this credit would take the account past the largest balance, {MAX_BALANCE}"
        ))
    })
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
fn repay_debt(
    plan: &mut Plan<'_>,
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
    Ok(Some(plan.entry(EntryKind::Charge, actor, new)?))
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
