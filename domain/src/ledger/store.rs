//! The SQL of the ledger: one batch of operations on one account in one transaction.
//!
//! The account row is locked once (`for update`), so the balances read at the start stay true for
//! the whole batch, across nodes too. Then the rows the batch names are read (and locked where
//! they change: tasks, holds, orders) with one statement per kind, and [`plan`]
//! decides every request in memory against the running balances, so a request that lacks funds
//! fails alone and writes nothing while the others apply. The planned task and hold writes follow
//! in plan order; the ledger rows (with their planned balances), the idempotency answers and the
//! audit rows of the whole batch are written with one statement, whose trigger checks the rows
//! follow on from the locked balances and moves every account once; all inside the same
//! transaction: a commit has every charge together with its stored response.

use super::plan::{self, Facts, Planned, PlannedRow, SideWrite, Verdict};
use super::{Applied, LedgerRequest, Operation, Outcome};
use crate::audit::Outcome as AuditOutcome;
use crate::idempotency::StoredResponse;
use crate::tasks::store as task_store;
use crate::{DomainError, idempotency, payments};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use uuid::Uuid;

/// Applies `batch` (all for `account_id`) in one transaction and returns one outcome per request,
/// in order. A database failure fails the whole batch (nothing is committed); the actor then
/// applies its requests one by one, so one failing request fails alone.
///
/// Round trips per batch, whatever its size: BEGIN; lock the account and allocate ledger ids;
/// lock the requests' idempotency claims; one statement writing every ledger row, idempotency
/// answer and audit row; COMMIT. Batches naming charges, holds, tasks or orders add one read per
/// kind, and each planned task or hold write is one statement. A request whose claim on its key
/// has ended (released after its caller went away, or taken over by a retry) is not applied at
/// all.
pub async fn execute_batch(
    pool: &PgPool,
    account_id: &str,
    batch: &[LedgerRequest],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let outcomes = apply(&mut tx, account_id, batch).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Why a group transaction committed nothing.
#[derive(Debug)]
pub(crate) enum GroupFailure {
    /// The part of the account at this index failed (the others may be fine).
    Account(usize, sqlx::Error),
    /// The transaction itself failed (begin or commit).
    Group(sqlx::Error),
}

/// Applies the batches of several accounts in one transaction (group commit): `groups` must be in
/// account-id order, so concurrent groups, on this node or others, lock accounts in the same
/// order. All or nothing: any failure rolls the whole group back.
///
/// Set-based, whatever the number of accounts: one statement locks every account and allocates
/// the ledger ids, one locks every idempotency claim, one writes every ledger row, answer and
/// audit row; only batches naming charges, holds, tasks or orders add their reads and writes.
/// When that shared write fails, nothing tells which account caused it: the group is then applied
/// account by account, which does.
pub(crate) async fn execute_group(
    pool: &PgPool,
    groups: &[(&str, &[LedgerRequest])],
) -> Result<Vec<Vec<Outcome>>, GroupFailure> {
    if groups.len() < 2 {
        return one_by_one(pool, groups).await;
    }
    match together(pool, groups).await {
        Err(GroupFailure::Group(error))
            if matches!(error, sqlx::Error::Database(_) | sqlx::Error::Protocol(_)) =>
        {
            tracing::warn!(%error, accounts = groups.len(),
                "a group's shared write failed; applying its accounts one by one to find which");
            one_by_one(pool, groups).await
        }
        result => result,
    }
}

/// The group in one transaction, account by account (a failure names its account).
async fn one_by_one(
    pool: &PgPool,
    groups: &[(&str, &[LedgerRequest])],
) -> Result<Vec<Vec<Outcome>>, GroupFailure> {
    let mut tx = pool.begin().await.map_err(GroupFailure::Group)?;
    let mut outcomes = Vec::with_capacity(groups.len());
    for (index, (account_id, batch)) in groups.iter().enumerate() {
        let account = apply(&mut tx, account_id, batch)
            .await
            .map_err(|error| GroupFailure::Account(index, error))?;
        outcomes.push(account);
    }
    tx.commit().await.map_err(GroupFailure::Group)?;
    Ok(outcomes)
}

/// An account row of a group, locked, with its allocated ledger ids.
#[derive(Debug, sqlx::FromRow)]
struct GroupAccountRow {
    id: String,
    #[sqlx(flatten)]
    account: AccountRow,
}

/// One account's planned part of a group.
struct PlannedPart<'a> {
    outcomes: Vec<Outcome>,
    rows: Vec<PlannedRow>,
    paid_orders: Vec<(&'a crate::payments::PaymentCredit, i64)>,
}

/// The group with set-based statements (see [`execute_group`]).
async fn together(
    pool: &PgPool,
    groups: &[(&str, &[LedgerRequest])],
) -> Result<Vec<Vec<Outcome>>, GroupFailure> {
    let mut tx = pool.begin().await.map_err(GroupFailure::Group)?;
    let ids: Vec<&str> = groups.iter().map(|(account_id, _)| *account_id).collect();
    let needed: Vec<i32> = groups
        .iter()
        .map(|(_, batch)| plan::ids_needed(batch) as i32)
        .collect();
    // Locked in id order (the sort is below the lock), as every group and single batch does.
    let locked: Vec<GroupAccountRow> = sqlx::query_as(
        "select a.id, a.available, a.held, a.debt, now() as now, \
                array(select nextval(pg_get_serial_sequence('credit_ledger', 'id')) \
                        from generate_series(1, u.n)) as ids \
           from credit_accounts a join unnest($1::text[], $2::int[]) as u(id, n) on a.id = u.id \
          order by a.id for update of a",
    )
    .bind(&ids)
    .bind(&needed)
    .fetch_all(&mut *tx)
    .await
    .map_err(GroupFailure::Group)?;
    let mut accounts: HashMap<String, plan::Account> = locked
        .into_iter()
        .map(|row| (row.id, row.account.into()))
        .collect();
    let all: Vec<&LedgerRequest> = groups.iter().flat_map(|(_, batch)| batch.iter()).collect();
    let mut held = claims_held_of(&mut tx, &all)
        .await
        .map_err(GroupFailure::Group)?
        .into_iter();
    let mut parts = Vec::with_capacity(groups.len());
    for (index, (account_id, batch)) in groups.iter().enumerate() {
        let claims_held: Vec<bool> = held.by_ref().take(batch.len()).collect();
        let account = accounts.remove(*account_id);
        let part = plan_part(&mut tx, account_id, batch, account, claims_held)
            .await
            .map_err(|error| GroupFailure::Account(index, error))?;
        parts.push(part);
    }
    let written: Vec<Written<'_>> = groups
        .iter()
        .zip(&parts)
        .map(|((_, batch), part)| Written {
            batch,
            outcomes: &part.outcomes,
            rows: &part.rows,
        })
        .collect();
    write_batch(&mut tx, &written)
        .await
        .map_err(GroupFailure::Group)?;
    for part in &mut parts {
        for (credit, entry_id) in std::mem::take(&mut part.paid_orders) {
            payments::mark_paid(&mut tx, credit, entry_id)
                .await
                .map_err(GroupFailure::Group)?;
        }
    }
    tx.commit().await.map_err(GroupFailure::Group)?;
    Ok(parts.into_iter().map(|part| part.outcomes).collect())
}

/// One account of a group: its facts, its plan, its side writes; its rows are written later with
/// the group's.
async fn plan_part<'a>(
    tx: &mut PgConnection,
    account_id: &str,
    batch: &'a [LedgerRequest],
    account: Option<plan::Account>,
    claims_held: Vec<bool>,
) -> Result<PlannedPart<'a>, sqlx::Error> {
    let facts = match account {
        // Nothing to read for an account that does not exist: every request fails.
        None => Facts {
            claims_held,
            ..Facts::default()
        },
        Some(account) => {
            let needs = plan::needs(batch, &claims_held);
            read_facts(&mut *tx, account_id, &needs, account, claims_held).await?
        }
    };
    let Planned {
        mut verdicts,
        rows,
        writes,
        paid_orders,
    } = plan::plan(account_id, batch, facts)
        .map_err(|fault| sqlx::Error::Protocol(fault.to_string()))?;
    for write in &writes {
        side_write(&mut *tx, account_id, batch, write, &mut verdicts).await?;
    }
    Ok(PlannedPart {
        outcomes: outcomes_of(batch, verdicts),
        rows,
        paid_orders,
    })
}

/// Each request's outcome, with its stored answer rendered.
fn outcomes_of(batch: &[LedgerRequest], verdicts: Vec<Verdict>) -> Vec<Outcome> {
    batch
        .iter()
        .zip(verdicts)
        .map(|(request, verdict)| match verdict {
            Verdict::ClaimLost => lost_claim(),
            Verdict::Decided(result) => {
                let stored = request
                    .completion
                    .as_ref()
                    .map(|completion| (completion.render)(result.as_ref()));
                Outcome { result, stored }
            }
        })
        .collect()
}

/// One account's batch inside the caller's transaction: lock, read, plan, write.
async fn apply(
    tx: &mut PgConnection,
    account_id: &str,
    batch: &[LedgerRequest],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let account = lock_account(&mut *tx, account_id, plan::ids_needed(batch)).await?;
    let claims_held = claims_held(&mut *tx, batch).await?;
    let part = plan_part(&mut *tx, account_id, batch, account, claims_held).await?;
    let written = Written {
        batch,
        outcomes: &part.outcomes,
        rows: &part.rows,
    };
    write_batch(&mut *tx, &[written]).await?;
    for (credit, entry_id) in part.paid_orders {
        payments::mark_paid(&mut *tx, credit, entry_id).await?;
    }
    Ok(part.outcomes)
}

/// The account row with the transaction's clock and the batch's ledger ids.
#[derive(Debug, sqlx::FromRow)]
struct AccountRow {
    available: i64,
    held: i64,
    debt: i64,
    now: DateTime<Utc>,
    ids: Vec<i64>,
}

/// Locks the account row and allocates `ids` ledger ids; `None` when the account does not exist.
async fn lock_account(
    conn: &mut PgConnection,
    account_id: &str,
    ids: usize,
) -> Result<Option<plan::Account>, sqlx::Error> {
    let row: Option<AccountRow> = sqlx::query_as(
        "select available, held, debt, now() as now, \
                array(select nextval(pg_get_serial_sequence('credit_ledger', 'id')) \
                        from generate_series(1, $2)) as ids \
           from credit_accounts where id = $1 for update",
    )
    .bind(account_id)
    .bind(ids as i32)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(plan::Account::from))
}

impl From<AccountRow> for plan::Account {
    fn from(row: AccountRow) -> Self {
        Self {
            balances: plan::Balances {
                available: row.available,
                held: row.held,
                debt: row.debt,
            },
            now: row.now,
            ids: row.ids,
        }
    }
}

/// Locks the batch's idempotency claims; whether each request's claim is still held (a request
/// without a key always is).
async fn claims_held(
    conn: &mut PgConnection,
    batch: &[LedgerRequest],
) -> Result<Vec<bool>, sqlx::Error> {
    let requests: Vec<&LedgerRequest> = batch.iter().collect();
    claims_held_of(conn, &requests).await
}

/// [`claims_held`] of requests of any accounts (one statement).
async fn claims_held_of(
    conn: &mut PgConnection,
    batch: &[&LedgerRequest],
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

/// A ledger entry a refund names, with what was refunded of it.
#[derive(Debug, sqlx::FromRow)]
struct ChargeRow {
    id: i64,
    account_id: String,
    kind: String,
    amount: i64,
    reference: Option<String>,
    refunded: i64,
}

/// An open hold, locked.
#[derive(Debug, sqlx::FromRow)]
struct HoldRow {
    id: Uuid,
    amount: i64,
    task_id: Option<Uuid>,
}

/// Reads what the plan needs, after the account lock: the tasks whose events are written, the
/// open holds settled and the orders credited are locked (in that order, each in id order); the
/// charges refunded and the tasks charged for are only read (the account lock keeps the
/// refunds of its charges stable).
async fn read_facts(
    conn: &mut PgConnection,
    account_id: &str,
    needs: &plan::Needs,
    account: plan::Account,
    claims_held: Vec<bool>,
) -> Result<Facts, sqlx::Error> {
    let tasks = task_store::lock_states(conn, &needs.task_events).await?;
    let open_holds = if needs.holds.is_empty() {
        HashMap::new()
    } else {
        let rows: Vec<HoldRow> = sqlx::query_as(
            "select id, amount, task_id from credit_holds \
              where id = any($1) and account_id = $2 and status = 'open' \
              order by id for update",
        )
        .bind(&needs.holds)
        .bind(account_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|row| {
                let hold = plan::OpenHold {
                    amount: row.amount,
                    task_id: row.task_id,
                };
                (row.id, hold)
            })
            .collect()
    };
    let orders = payments::lock_for_credit(conn, &needs.orders).await?;
    let charges = if needs.charges.is_empty() {
        HashMap::new()
    } else {
        let rows: Vec<ChargeRow> = sqlx::query_as(
            "select l.id, l.account_id, l.kind, l.amount, l.reference, \
                    (select coalesce(sum(r.amount), 0)::bigint from credit_ledger r \
                      where r.related_entry_id = l.id and r.kind = 'refund') as refunded \
               from credit_ledger l where l.id = any($1)",
        )
        .bind(&needs.charges)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|row| {
                let charge = plan::Charge {
                    account_id: row.account_id,
                    kind: row.kind,
                    amount: row.amount,
                    reference: row.reference,
                    refunded: row.refunded,
                };
                (row.id, charge)
            })
            .collect()
    };
    let account_tasks = task_store::of_account(conn, &needs.charged_tasks, account_id).await?;
    Ok(Facts {
        account: Some(account),
        claims_held,
        charges,
        open_holds,
        account_tasks,
        tasks,
        orders,
    })
}

/// Makes one planned write besides the ledger rows; a task write's result goes into its
/// request's [`Applied`].
async fn side_write(
    conn: &mut PgConnection,
    account_id: &str,
    batch: &[LedgerRequest],
    write: &SideWrite<'_>,
    verdicts: &mut [Verdict],
) -> Result<(), sqlx::Error> {
    match write {
        SideWrite::Task {
            request,
            write,
            settled,
        } => {
            let actor = &batch
                .get(*request)
                .ok_or_else(|| sqlx::Error::Protocol("a task write of no request".into()))?
                .actor;
            // The tasks are locked and the plan checked the write against them: a refusal here
            // means the plan and the database disagree, so nothing of the batch may commit.
            let change = task_store::write(conn, write, actor, *settled)
                .await?
                .map_err(|refused| {
                    sqlx::Error::Protocol(format!(
                        "the database refused a task write the plan admitted: {refused}"
                    ))
                })?;
            let Some(Verdict::Decided(Ok(Applied { task, .. }))) = verdicts.get_mut(*request)
            else {
                return Err(sqlx::Error::Protocol(
                    "a task write planned for a request that was not applied".into(),
                ));
            };
            *task = Some(change);
        }
        SideWrite::OpenHold {
            hold_id,
            task_id,
            amount,
        } => {
            sqlx::query(
                "insert into credit_holds (id, account_id, task_id, amount) values ($1, $2, $3, $4)",
            )
            .bind(hold_id)
            .bind(account_id)
            .bind(task_id)
            .bind(amount)
            .execute(&mut *conn)
            .await?;
        }
        SideWrite::CaptureHold { hold_id, actual } => {
            sqlx::query(
                "update credit_holds set status = 'captured', captured_amount = $2, \
                        settled_at = now() \
                  where id = $1",
            )
            .bind(hold_id)
            .bind(actual)
            .execute(&mut *conn)
            .await?;
        }
        SideWrite::ReleaseHold { hold_id } => {
            sqlx::query(
                "update credit_holds set status = 'released', settled_at = now() where id = $1",
            )
            .bind(hold_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The batch's ledger rows, one array per column (`unnest` arguments `$1`, `$4`-`$15`,
/// `$31`-`$33`).
#[derive(Debug)]
struct EntryColumns<'a> {
    id: Vec<i64>,
    account_id: Vec<&'a str>,
    kind: Vec<&'static str>,
    amount: Vec<i64>,
    held_delta: Vec<i64>,
    debt_delta: Vec<i64>,
    balance_after: Vec<i64>,
    held_after: Vec<i64>,
    debt_after: Vec<i64>,
    reference: Vec<Option<&'a str>>,
    related_entry_id: Vec<Option<i64>>,
    hold_id: Vec<Option<Uuid>>,
    task_id: Vec<Option<Uuid>>,
    reason: Vec<Option<&'a str>>,
    metadata: Vec<Option<serde_json::Value>>,
    actor_id: Vec<&'a str>,
    request_id: Vec<Option<&'a str>>,
}

impl<'a> EntryColumns<'a> {
    fn of(rows: &[&'a PlannedRow]) -> Self {
        Self {
            id: rows.iter().map(|row| row.entry.entry_id).collect(),
            account_id: rows
                .iter()
                .map(|row| row.entry.account_id.as_str())
                .collect(),
            kind: rows.iter().map(|row| row.entry.kind.as_str()).collect(),
            amount: rows.iter().map(|row| row.entry.amount).collect(),
            held_delta: rows.iter().map(|row| row.held_delta).collect(),
            debt_delta: rows.iter().map(|row| row.debt_delta).collect(),
            balance_after: rows.iter().map(|row| row.entry.balance_after).collect(),
            held_after: rows.iter().map(|row| row.entry.held_after).collect(),
            debt_after: rows.iter().map(|row| row.entry.debt_after).collect(),
            reference: rows
                .iter()
                .map(|row| row.entry.reference.as_deref())
                .collect(),
            related_entry_id: rows.iter().map(|row| row.entry.related_entry_id).collect(),
            hold_id: rows.iter().map(|row| row.hold_id).collect(),
            task_id: rows.iter().map(|row| row.task_id).collect(),
            reason: rows.iter().map(|row| row.entry.reason.as_deref()).collect(),
            metadata: rows.iter().map(|row| row.metadata.clone()).collect(),
            actor_id: rows.iter().map(|row| row.actor_id.as_str()).collect(),
            request_id: rows.iter().map(|row| row.request_id.as_deref()).collect(),
        }
    }
}

/// The idempotency answers of the batch, one array per column (`$16`-`$22`).
#[derive(Debug)]
struct AnswerColumns<'a> {
    caller_id: Vec<&'a str>,
    account_id: Vec<&'a str>,
    route: Vec<&'a str>,
    key: Vec<&'a str>,
    token: Vec<Uuid>,
    status: Vec<i16>,
    body: Vec<&'a [u8]>,
}

impl<'a> AnswerColumns<'a> {
    fn of(completions: &[(&'a idempotency::Claimed, &'a StoredResponse)]) -> Self {
        Self {
            caller_id: completions
                .iter()
                .map(|(c, _)| c.key.caller_id.as_str())
                .collect(),
            account_id: completions
                .iter()
                .map(|(c, _)| c.key.account_id.as_str())
                .collect(),
            route: completions
                .iter()
                .map(|(c, _)| c.key.route.as_str())
                .collect(),
            key: completions
                .iter()
                .map(|(c, _)| c.key.key.as_str())
                .collect(),
            token: completions.iter().map(|(c, _)| c.token).collect(),
            status: completions.iter().map(|(_, s)| s.status as i16).collect(),
            body: completions.iter().map(|(_, s)| s.body.as_slice()).collect(),
        }
    }
}

/// The audit rows of the batch, one array per column (`$23`-`$29`).
#[derive(Debug, Default)]
struct AuditColumns<'a> {
    target: Vec<&'a str>,
    actor_id: Vec<&'a str>,
    roles: Vec<String>,
    action: Vec<&'static str>,
    outcome: Vec<&'static str>,
    request_id: Vec<Option<&'a str>>,
    client_ip: Vec<Option<String>>,
    detail: Vec<serde_json::Value>,
}

impl<'a> AuditColumns<'a> {
    /// Adds the audit rows of one account's batch.
    fn add(&mut self, batch: &'a [LedgerRequest], outcomes: &[Outcome]) {
        let columns = self;
        for (request, outcome) in batch.iter().zip(outcomes) {
            let Some(action) = request.operation.audit_action() else {
                continue;
            };
            let (audit_outcome, detail) = audit_detail(request, &outcome.result);
            let actor = &request.actor;
            columns.target.push(&request.account_id);
            columns.actor_id.push(&actor.id);
            let roles: Vec<&str> = actor.roles.iter().map(|role| role.as_str()).collect();
            columns.roles.push(roles.join(","));
            columns.action.push(action);
            columns.outcome.push(audit_outcome.as_str());
            columns.request_id.push(actor.request_id.as_deref());
            columns
                .client_ip
                .push(actor.client_ip.map(|ip| ip.to_string()));
            columns.detail.push(detail);
        }
    }
}

/// One account's part of a write: its requests, their outcomes, its planned ledger rows.
struct Written<'a> {
    batch: &'a [LedgerRequest],
    outcomes: &'a [Outcome],
    rows: &'a [PlannedRow],
}

/// What the batch's statement returns: how many ledger rows it wrote and answers it stored.
#[derive(Debug, sqlx::FromRow)]
struct WrittenCounts {
    entries: i64,
    answered: i64,
}

/// The batch's one write: ledger rows with their planned balances (the statement trigger
/// `credit_ledger_settle` checks they follow on from each account's locked balances and moves the
/// accounts, or fails the statement), idempotency answers, audit rows.
async fn write_batch(conn: &mut PgConnection, parts: &[Written<'_>]) -> Result<(), sqlx::Error> {
    let completions: Vec<(&idempotency::Claimed, &StoredResponse)> = parts
        .iter()
        .flat_map(|part| part.batch.iter().zip(part.outcomes))
        .filter_map(|(request, outcome)| {
            Some((
                &request.completion.as_ref()?.claim,
                outcome.stored.as_ref()?,
            ))
        })
        .collect();
    let rows: Vec<&PlannedRow> = parts.iter().flat_map(|part| part.rows.iter()).collect();
    let entries = EntryColumns::of(&rows);
    let answers = AnswerColumns::of(&completions);
    let mut audits = AuditColumns::default();
    for part in parts {
        audits.add(part.batch, part.outcomes);
    }
    let written: WrittenCounts = sqlx::query_as(
        "with entries as ( \
           insert into credit_ledger (id, account_id, kind, amount, held_delta, debt_delta, \
               reference, related_entry_id, hold_id, task_id, reason, metadata, actor_id, \
               request_id, created_at, balance_after, held_after, debt_after) \
           overriding system value \
           select id, account_id, kind, amount, held_delta, debt_delta, reference, related, \
                  hold_id, task_id, reason, metadata, actor_id, request_id, $3, \
                  balance_after, held_after, debt_after \
             from unnest($1::bigint[], $2::text[], $4::text[], $5::bigint[], $6::bigint[], \
                         $7::bigint[], $8::text[], $9::bigint[], $10::uuid[], $11::uuid[], \
                         $12::text[], $13::jsonb[], $14::text[], $15::text[], $31::bigint[], \
                         $32::bigint[], $33::bigint[]) with ordinality \
                  as r(id, account_id, kind, amount, held_delta, debt_delta, reference, related, \
                       hold_id, task_id, reason, metadata, actor_id, request_id, balance_after, \
                       held_after, debt_after, ord) \
            order by ord \
           returning id), \
         answers as ( \
           update idempotency_keys k \
              set status = 'completed', response_status = u.status, response_body = u.body, \
                  completed_at = now() \
             from unnest($16::text[], $17::text[], $18::text[], $19::text[], $20::uuid[], \
                         $21::int2[], $22::bytea[]) \
                  as u(caller_id, account_id, route, key, token, status, body) \
            where k.caller_id = u.caller_id and k.account_id = u.account_id \
              and k.route = u.route and k.key = u.key \
              and k.owner_token = u.token and k.status = 'in_flight' \
           returning 1), \
         audit as ( \
           insert into audit_access_log (actor_id, actor_roles, action, target_type, target_id, \
               outcome, request_id, client_ip, detail) \
           select actor_id, string_to_array(roles, ','), action, 'credit_account', target, \
                  outcome, request_id, ip::inet, detail \
             from unnest($23::text[], $24::text[], $25::text[], $26::text[], $27::text[], \
                         $28::text[], $29::jsonb[], $30::text[]) \
                  as a(actor_id, roles, action, outcome, request_id, ip, detail, target) \
           returning 1) \
         select (select count(*) from entries) as entries, \
                (select count(*) from answers) as answered",
    )
    .bind(&entries.id)
    .bind(&entries.account_id)
    .bind(rows.first().map(|row| row.entry.created_at))
    .bind(&entries.kind)
    .bind(&entries.amount)
    .bind(&entries.held_delta)
    .bind(&entries.debt_delta)
    .bind(&entries.reference)
    .bind(&entries.related_entry_id)
    .bind(&entries.hold_id)
    .bind(&entries.task_id)
    .bind(&entries.reason)
    .bind(&entries.metadata)
    .bind(&entries.actor_id)
    .bind(&entries.request_id)
    .bind(&answers.caller_id)
    .bind(&answers.account_id)
    .bind(&answers.route)
    .bind(&answers.key)
    .bind(&answers.token)
    .bind(&answers.status)
    .bind(&answers.body)
    .bind(&audits.actor_id)
    .bind(&audits.roles)
    .bind(&audits.action)
    .bind(&audits.outcome)
    .bind(&audits.request_id)
    .bind(&audits.client_ip)
    .bind(&audits.detail)
    .bind(&audits.target)
    .bind(&entries.balance_after)
    .bind(&entries.held_after)
    .bind(&entries.debt_after)
    .fetch_one(&mut *conn)
    .await?;
    if written.answered != completions.len() as i64 {
        // Cannot happen while the claims are locked; if it did, roll everything back.
        return Err(sqlx::Error::Protocol(
            "an idempotency claim of the batch was not held at completion".into(),
        ));
    }
    if written.entries != rows.len() as i64 {
        return Err(sqlx::Error::Protocol(
            "the ledger batch wrote other rows than planned".into(),
        ));
    }
    Ok(())
}

/// The audit row's outcome and detail for a request.
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
