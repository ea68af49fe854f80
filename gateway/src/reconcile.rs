//! T+1 reconciliation of one Beijing day against WeChat Pay's ALL bill (`shared/spec/payments.md`,
//! "Reconciliation"): the bill is applied for, downloaded from the API host only, gunzipped,
//! SHA-1 checked, parsed by header name and checked against its summary; its payments are matched
//! by `out_trade_no` with the orders paid that day. Classes: `matched`; `missing_local` (paid per
//! the bill, not credited here: queried, and a verified SUCCESS credited once); `missing_remote`
//! (credited here, not in the bill: the next day's bill is checked for payments near midnight,
//! WeChat is queried, the item flagged); `amount_mismatch` (flagged, never fixed). The run and its
//! items are stored (re-running a day replaces them), audited, counted and logged.

use crate::jobs::{Fence, Report};
use crate::payments::{CreditError, Credited, Pay, timed};
use crate::state::AppState;
use chrono::{NaiveDate, Utc};
use domain::audit::{AuditEntry, Outcome};
use domain::payments::CreditSource;
use domain::wechat::bill::{self, BillRow};
use domain::wechat::client::{BillFile, PayError};
use serde_json::json;
use shared::payments::{ClassCounts, OrderStatus, Reconciliation, ReconciliationItem};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Why a day could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// WeChat is still making the bill: try again later.
    #[error("WeChat is still making the bill of {0}; try again later")]
    Creating(NaiveDate),
    /// The bill was refused (hash or summary mismatch, unreadable) or WeChat failed.
    #[error("cannot reconcile {date}: {reason}")]
    Failed {
        /// The day.
        date: NaiveDate,
        /// Why.
        reason: String,
    },
    /// Another run holds the lock.
    #[error("another run holds the reconciliation lock")]
    Locked,
    /// This run lost its lock before it could store its result.
    #[error("the reconciliation lost its lock; the newer run's result stands")]
    Fenced,
}

/// Today in Beijing.
pub fn beijing_today() -> NaiveDate {
    let offset = chrono::FixedOffset::east_opt(8 * 3600);
    match offset {
        Some(offset) => Utc::now().with_timezone(&offset).date_naive(),
        None => Utc::now().date_naive(),
    }
}

/// The payment rows of a day's bill, or none for a day without trades.
async fn bill_of(
    pay: &Pay,
    date: NaiveDate,
) -> Result<Option<(String, Vec<BillRow>)>, ReconcileError> {
    let failed = |reason: String| ReconcileError::Failed { date, reason };
    match timed("trade_bill", pay.client.trade_bill(date)).await {
        Ok(BillFile::Ready { bytes, hash_value }) => {
            let parsed =
                bill::parse(&bytes).map_err(|error| failed(format!("bill refused: {error}")))?;
            Ok(Some((hash_value, parsed.rows)))
        }
        Ok(BillFile::NoStatement) => Ok(None),
        Ok(BillFile::Creating) => Err(ReconcileError::Creating(date)),
        Err(error @ PayError::BillHash { .. }) => Err(failed(format!("bill refused: {error}"))),
        Err(error) => Err(failed(format!("WeChat Pay: {error}"))),
    }
}

fn item(class: &str, out_trade_no: &str, action: &str) -> ReconciliationItem {
    ReconciliationItem {
        class: class.into(),
        out_trade_no: out_trade_no.into(),
        order_id: None,
        transaction_id: None,
        local_amount_fen: None,
        bill_amount_fen: None,
        action: action.into(),
        detail: None,
    }
}

/// Reconciles `date`, storing the run (a refused bill is stored as a `failed` run). `fence`: the
/// job lock's, checked in the transaction that stores the result.
pub async fn reconcile_day(
    state: &AppState,
    pay: &Pay,
    date: NaiveDate,
    fence: &Fence,
) -> Result<Reconciliation, ReconcileError> {
    let started_at = Utc::now();
    let fail = |reason: String| ReconcileError::Failed { date, reason };
    let bill = match bill_of(pay, date).await {
        Ok(bill) => bill,
        Err(ReconcileError::Failed { reason, .. }) => {
            let run = Reconciliation {
                date,
                status: "failed".into(),
                counts: ClassCounts::default(),
                sums: ClassCounts::default(),
                bill_hash: None,
                bill_rows: 0,
                error: Some(reason.chars().take(1000).collect()),
                runs: 1,
                started_at,
                finished_at: Utc::now(),
                items: Vec::new(),
            };
            tracing::error!(%date, error = %reason,
                "reconciliation refused the bill: nothing matched; check WeChat's bill and rerun `gateway reconcile --date`");
            metrics::counter!("reconciliation_runs_total", "status" => "failed").increment(1);
            store(state, &run, fence).await?;
            return Err(fail(reason));
        }
        Err(other) => return Err(other),
    };
    let (bill_hash, rows) = match bill {
        Some((hash, rows)) => (Some(hash), rows),
        None => (None, Vec::new()),
    };
    let bill_rows = rows.len() as i32;
    let payments: Vec<&BillRow> = rows
        .iter()
        .filter(|row| row.trade_state == "SUCCESS")
        .collect();
    let in_bill: HashSet<&str> = payments
        .iter()
        .map(|row| row.out_trade_no.as_str())
        .collect();
    let mut items = Vec::new();
    for row in &payments {
        items.push(
            match_bill_row(state, pay, row)
                .await
                .map_err(|e| fail(format!("{e:#}")))?,
        );
    }
    let local = domain::reconciliation::paid_in_day(&state.db, date)
        .await
        .map_err(|error| fail(format!("reading orders: {error}")))?;
    let mut next_day: Option<HashMap<String, i64>> = None;
    for order in local
        .iter()
        .filter(|order| !in_bill.contains(order.out_trade_no.as_str()))
    {
        let mut entry = item("missing_remote", &order.out_trade_no, "flagged");
        entry.order_id = Some(order.id.to_string());
        entry.transaction_id = order.transaction_id.clone();
        entry.local_amount_fen = Some(order.amount_fen);
        // A payment near midnight may be dated into the next day's bill.
        let tomorrow = date.succ_opt().unwrap_or(date);
        if next_day.is_none() && tomorrow <= beijing_today() {
            next_day = Some(match bill_of(pay, tomorrow).await {
                Ok(Some((_, rows))) => rows
                    .into_iter()
                    .filter(|row| row.trade_state == "SUCCESS")
                    .map(|row| (row.out_trade_no, row.order_fen))
                    .collect(),
                _ => HashMap::new(),
            });
        }
        if let Some(amount) = next_day
            .as_ref()
            .and_then(|rows| rows.get(&order.out_trade_no))
        {
            entry.class = if *amount == order.amount_fen {
                "matched".into()
            } else {
                "amount_mismatch".into()
            };
            entry.action = if *amount == order.amount_fen {
                "next_day_bill".into()
            } else {
                "flagged".into()
            };
            entry.bill_amount_fen = Some(*amount);
            entry.detail = Some(json!({ "bill_date": tomorrow }));
        } else {
            let queried = timed("query", pay.client.query_order(&order.out_trade_no)).await;
            entry.detail = Some(match queried {
                Ok(Some(transaction)) => json!({ "trade_state": transaction.trade_state }),
                Ok(None) => json!({ "trade_state": "ORDER_NOT_EXIST" }),
                Err(error) => json!({ "query_error": error.to_string() }),
            });
        }
        items.push(entry);
    }
    let mut counts = ClassCounts::default();
    let mut sums = ClassCounts::default();
    for entry in &items {
        let amount = entry
            .local_amount_fen
            .or(entry.bill_amount_fen)
            .unwrap_or(0);
        let (count, sum) = match entry.class.as_str() {
            "matched" => (&mut counts.matched, &mut sums.matched),
            "missing_local" => (&mut counts.missing_local, &mut sums.missing_local),
            "missing_remote" => (&mut counts.missing_remote, &mut sums.missing_remote),
            _ => (&mut counts.amount_mismatch, &mut sums.amount_mismatch),
        };
        *count += 1;
        *sum += amount;
        metrics::counter!("reconciliation_items_total", "class" => entry.class.clone())
            .increment(1);
        if entry.class != "matched" {
            tracing::warn!(%date, class = %entry.class, out_trade_no = %entry.out_trade_no,
                order_id = ?entry.order_id, action = %entry.action, local_fen = ?entry.local_amount_fen,
                bill_fen = ?entry.bill_amount_fen, detail = ?entry.detail,
                "reconciliation flagged an order: see docs/payments.md (reconciliation runbook)");
        }
    }
    let flagged = items.iter().any(|entry| entry.class != "matched");
    let run = Reconciliation {
        date,
        status: if flagged { "flagged" } else { "balanced" }.into(),
        counts,
        sums,
        bill_hash,
        bill_rows,
        error: None,
        runs: 1,
        started_at,
        finished_at: Utc::now(),
        items,
    };
    metrics::counter!("reconciliation_runs_total", "status" => run.status.clone()).increment(1);
    store(state, &run, fence).await?;
    Ok(run)
}

/// Classifies one payment of the bill (crediting a lost one).
async fn match_bill_row(
    state: &AppState,
    pay: &Pay,
    row: &BillRow,
) -> anyhow::Result<ReconciliationItem> {
    let mut entry = item("matched", &row.out_trade_no, "none");
    entry.transaction_id = Some(row.transaction_id.clone());
    entry.bill_amount_fen = Some(row.order_fen);
    let Some(order) = domain::payments::by_out_trade_no(&state.db, &row.out_trade_no).await? else {
        entry.class = "missing_local".into();
        entry.action = "flagged".into();
        entry.detail = Some(json!({ "reason": "no such order here" }));
        return Ok(entry);
    };
    entry.order_id = Some(order.order.order_id.clone());
    entry.local_amount_fen = Some(order.order.amount_fen);
    if order.order.amount_fen != row.order_fen {
        entry.class = "amount_mismatch".into();
        entry.action = "flagged".into();
        return Ok(entry);
    }
    if matches!(
        order.order.status,
        OrderStatus::Paid | OrderStatus::Refunded
    ) {
        let by_reconciliation: Option<String> =
            sqlx::query_scalar("select credited_by from payment_orders where id = $1")
                .bind(order.id())
                .fetch_one(&state.db)
                .await?;
        if by_reconciliation.as_deref() == Some("reconciliation") {
            // Credited by an earlier run of this reconciliation: the same report again.
            entry.class = "missing_local".into();
            entry.action = "already_credited".into();
        }
        return Ok(entry);
    }
    // Paid per the bill, not here: the lost notification. Only a verified SUCCESS credits.
    entry.class = "missing_local".into();
    entry.action = "flagged".into();
    match timed("query", pay.client.query_order(&row.out_trade_no)).await {
        Ok(Some(transaction)) if transaction.trade_state == "SUCCESS" => {
            let credited = crate::payments::credit(
                state,
                pay,
                &order,
                &transaction,
                CreditSource::Reconciliation,
                None,
                None,
            )
            .await;
            match credited {
                Ok(Credited::Now) => entry.action = "credited".into(),
                Ok(Credited::Before) => entry.action = "already_credited".into(),
                Err(CreditError::Mismatch(why)) => entry.detail = Some(json!({ "refused": why })),
                Err(CreditError::Transient(why)) => {
                    entry.detail = Some(json!({ "credit_failed": why }));
                }
            }
        }
        Ok(Some(transaction)) => {
            entry.detail = Some(json!({ "trade_state": transaction.trade_state }));
        }
        Ok(None) => entry.detail = Some(json!({ "trade_state": "ORDER_NOT_EXIST" })),
        Err(error) => entry.detail = Some(json!({ "query_error": error.to_string() })),
    }
    Ok(entry)
}

/// Stores the run and its audit row in one transaction, if the fence still holds.
async fn store(
    state: &AppState,
    run: &Reconciliation,
    fence: &Fence,
) -> Result<(), ReconcileError> {
    let failed = |error: sqlx::Error| ReconcileError::Failed {
        date: run.date,
        reason: format!("storing the run: {error}"),
    };
    let mut tx = state.db.begin().await.map_err(failed)?;
    if !crate::jobs::check_fence(&mut tx, fence)
        .await
        .map_err(failed)?
    {
        return Err(ReconcileError::Fenced);
    }
    domain::reconciliation::store(&mut tx, run)
        .await
        .map_err(failed)?;
    let actor = crate::payments::wechat_actor(None);
    let actor = domain::audit::Actor {
        id: "reconciler".into(),
        ..actor
    };
    let date = run.date.to_string();
    domain::audit::record(
        &mut tx,
        &actor,
        AuditEntry {
            action: "payments.reconcile",
            target_type: Some("reconciliation"),
            target_id: Some(&date),
            outcome: if run.status == "failed" {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            detail: Some(json!({
                "status": run.status, "counts": run.counts, "bill_hash": run.bill_hash,
                "error": run.error,
                "credited": run.items.iter().filter(|i| i.action == "credited").count(),
            })),
        },
    )
    .await
    .map_err(|error| ReconcileError::Failed {
        date: run.date,
        reason: format!("auditing the run: {error}"),
    })?;
    tx.commit().await.map_err(failed)?;
    Ok(())
}

/// Reconciles `date` holding the reconciliation job's lock (as the daily job and
/// `gateway reconcile` do).
pub async fn reconcile_locked(
    state: &AppState,
    date: NaiveDate,
) -> Result<Reconciliation, ReconcileError> {
    let Some(pay) = state.wechat.pay.as_ref() else {
        return Err(ReconcileError::Failed {
            date,
            reason: "WeChat Pay is not configured".into(),
        });
    };
    let lock = crate::jobs::JobLock::acquire(state, JOB, Duration::from_secs(120))
        .await
        .map_err(|error| ReconcileError::Failed {
            date,
            reason: format!("taking the lock: {error:#}"),
        })?
        .ok_or(ReconcileError::Locked)?;
    let result = reconcile_day(state, pay, date, &lock.fence()).await;
    lock.release().await;
    result
}

/// The reconciliation job's name.
pub const JOB: &str = "payments.reconcile";

/// The daily job: reconciles the previous Beijing day at `payments.reconcile_at`; a bill still
/// being made is tried again in 30 minutes.
pub async fn daily(state: AppState, fence: Fence) -> anyhow::Result<Report> {
    let Some(pay) = state.wechat.pay.as_ref() else {
        return Ok(Report::done("WeChat Pay not configured"));
    };
    let yesterday = beijing_today().pred_opt().unwrap_or_else(beijing_today);
    match reconcile_day(&state, pay, yesterday, &fence).await {
        Ok(run) => Ok(Report::done(format!(
            "{yesterday}: {} (matched {}, missing_local {}, missing_remote {}, amount_mismatch {})",
            run.status,
            run.counts.matched,
            run.counts.missing_local,
            run.counts.missing_remote,
            run.counts.amount_mismatch
        ))),
        Err(ReconcileError::Creating(_)) => Ok(Report {
            summary: format!("{yesterday}: the bill is being made; retrying in 30 minutes"),
            retry_in: Some(Duration::from_secs(1800)),
        }),
        Err(error) => Err(error.into()),
    }
}
