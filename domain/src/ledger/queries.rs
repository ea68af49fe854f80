//! The ledger's reads: an account's entries, the account of an entry. Writes go through the
//! account's actor and [`super::store`].

use chrono::{DateTime, Utc};
use shared::credits::{EntryKind, LedgerEntry};
use sqlx::PgPool;
use uuid::Uuid;

/// The columns of an [`EntryRow`], selected from `credit_ledger`.
const ENTRY_COLUMNS: &str = "id, account_id, kind, amount, balance_after, held_after, debt_after, \
                             reference, reason, related_entry_id, task_id, created_at";

/// A `credit_ledger` row (selected with [`ENTRY_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
struct EntryRow {
    id: i64,
    account_id: String,
    kind: String,
    amount: i64,
    balance_after: i64,
    held_after: i64,
    debt_after: i64,
    reference: Option<String>,
    reason: Option<String>,
    related_entry_id: Option<i64>,
    task_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

impl TryFrom<EntryRow> for LedgerEntry {
    type Error = sqlx::Error;

    fn try_from(row: EntryRow) -> Result<Self, sqlx::Error> {
        Ok(LedgerEntry {
            entry_id: row.id,
            account_id: row.account_id,
            kind: EntryKind::parse(&row.kind).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "kind".into(),
                source: format!("unknown ledger kind {}", row.kind).into(),
            })?,
            amount: row.amount,
            balance_after: row.balance_after,
            held_after: row.held_after,
            debt_after: row.debt_after,
            reference: row.reference,
            reason: row.reason,
            related_entry_id: row.related_entry_id,
            task_id: row.task_id.map(|id| id.to_string()),
            created_at: row.created_at,
        })
    }
}

/// Filters of a ledger listing.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    /// From this time (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Up to this time (exclusive).
    pub to: Option<DateTime<Utc>>,
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
    let rows: Vec<EntryRow> = sqlx::query_as(&format!(
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
    rows.into_iter().map(LedgerEntry::try_from).collect()
}

/// The account a ledger entry belongs to (refunds are routed to the charge's account).
pub async fn entry_account(pool: &PgPool, entry_id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select account_id from credit_ledger where id = $1")
        .bind(entry_id)
        .fetch_optional(pool)
        .await
}
