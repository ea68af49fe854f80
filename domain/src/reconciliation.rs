//! Reconciliation runs as stored: one row per Beijing day (re-running a day replaces its items
//! and counts the run), the items per order. The matching itself is the gateway's (it needs
//! WeChat and the ledger); the orders it matches against come from [`paid_in_day`].

use crate::DomainResult;
use chrono::{DateTime, NaiveDate, Utc};
use shared::payments::{ClassCounts, Reconciliation, ReconciliationItem};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// An order credited here, as reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOrder {
    /// The order.
    pub id: Uuid,
    /// Its merchant number.
    pub out_trade_no: String,
    /// Fen.
    pub amount_fen: i64,
    /// WeChat's transaction id.
    pub transaction_id: Option<String>,
    /// WeChat's success time.
    pub success_time: Option<DateTime<Utc>>,
    /// How it was credited (`notification`, `query`, `reconciliation`).
    pub credited_by: Option<String>,
}

/// Orders paid (per WeChat's `success_time`, falling back to `paid_at`) in Beijing day `date`.
pub async fn paid_in_day(pool: &PgPool, date: NaiveDate) -> DomainResult<Vec<PaidOrder>> {
    let rows = sqlx::query(
        "select id, out_trade_no, amount_fen, wechat_transaction_id, success_time, credited_by \
           from payment_orders \
          where status in ('paid', 'refunded') \
            and coalesce(success_time, paid_at) >= ($1::date::timestamp at time zone 'Asia/Shanghai') \
            and coalesce(success_time, paid_at) < (($1::date + 1)::timestamp at time zone 'Asia/Shanghai') \
          order by out_trade_no",
    )
    .bind(date)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(PaidOrder {
                id: row.try_get("id")?,
                out_trade_no: row.try_get("out_trade_no")?,
                amount_fen: row.try_get("amount_fen")?,
                transaction_id: row.try_get("wechat_transaction_id")?,
                success_time: row.try_get("success_time")?,
                credited_by: row.try_get("credited_by")?,
            })
        })
        .collect()
}

/// Stores a run of `run.date` with its items (replacing an earlier run's), in `conn`'s
/// transaction.
pub async fn store(conn: &mut PgConnection, run: &Reconciliation) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into reconciliation_runs (bill_date, status, bill_hash, bill_rows, counts, sums, \
             error, runs, started_at, finished_at) \
         values ($1, $2, $3, $4, $5, $6, $7, 1, $8, now()) \
         on conflict (bill_date) do update set status = excluded.status, \
             bill_hash = excluded.bill_hash, bill_rows = excluded.bill_rows, \
             counts = excluded.counts, sums = excluded.sums, error = excluded.error, \
             runs = reconciliation_runs.runs + 1, started_at = excluded.started_at, \
             finished_at = now()",
    )
    .bind(run.date)
    .bind(&run.status)
    .bind(&run.bill_hash)
    .bind(run.bill_rows)
    .bind(serde_json::to_value(&run.counts).unwrap_or_default())
    .bind(serde_json::to_value(&run.sums).unwrap_or_default())
    .bind(&run.error)
    .bind(run.started_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("delete from reconciliation_items where bill_date = $1")
        .bind(run.date)
        .execute(&mut *conn)
        .await?;
    for item in &run.items {
        sqlx::query(
            "insert into reconciliation_items (bill_date, class, out_trade_no, order_id, \
                 transaction_id, local_amount_fen, bill_amount_fen, action, detail) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(run.date)
        .bind(&item.class)
        .bind(&item.out_trade_no)
        .bind(
            item.order_id
                .as_deref()
                .and_then(|id| id.parse::<Uuid>().ok()),
        )
        .bind(&item.transaction_id)
        .bind(item.local_amount_fen)
        .bind(item.bill_amount_fen)
        .bind(&item.action)
        .bind(&item.detail)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn run_from_row(row: &sqlx::postgres::PgRow) -> DomainResult<Reconciliation> {
    let counts: serde_json::Value = row.try_get("counts")?;
    let sums: serde_json::Value = row.try_get("sums")?;
    Ok(Reconciliation {
        date: row.try_get("bill_date")?,
        status: row.try_get("status")?,
        counts: serde_json::from_value::<ClassCounts>(counts).unwrap_or_default(),
        sums: serde_json::from_value::<ClassCounts>(sums).unwrap_or_default(),
        bill_hash: row.try_get("bill_hash")?,
        bill_rows: row.try_get("bill_rows")?,
        error: row.try_get("error")?,
        runs: row.try_get("runs")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        items: Vec::new(),
    })
}

async fn items(
    pool: &PgPool,
    date: NaiveDate,
    flagged_only: bool,
) -> DomainResult<Vec<ReconciliationItem>> {
    let rows = sqlx::query(
        "select class, out_trade_no, order_id, transaction_id, local_amount_fen, \
                bill_amount_fen, action, detail \
           from reconciliation_items \
          where bill_date = $1 and (not $2 or class <> 'matched') order by id",
    )
    .bind(date)
    .bind(flagged_only)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ReconciliationItem {
                class: row.try_get("class")?,
                out_trade_no: row.try_get("out_trade_no")?,
                order_id: row
                    .try_get::<Option<Uuid>, _>("order_id")?
                    .map(|id| id.to_string()),
                transaction_id: row.try_get("transaction_id")?,
                local_amount_fen: row.try_get("local_amount_fen")?,
                bill_amount_fen: row.try_get("bill_amount_fen")?,
                action: row.try_get("action")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
}

/// One day's run with all its items.
pub async fn get(pool: &PgPool, date: NaiveDate) -> DomainResult<Option<Reconciliation>> {
    let row = sqlx::query("select * from reconciliation_runs where bill_date = $1")
        .bind(date)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut run = run_from_row(&row)?;
    run.items = items(pool, date, false).await?;
    Ok(Some(run))
}

/// The runs of `from..=to`, newest first, each with its flagged items.
pub async fn list(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> DomainResult<Vec<Reconciliation>> {
    let rows = sqlx::query(
        "select * from reconciliation_runs where bill_date between $1 and $2 \
          order by bill_date desc",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut run = run_from_row(row)?;
        run.items = items(pool, run.date, true).await?;
        runs.push(run);
    }
    Ok(runs)
}
