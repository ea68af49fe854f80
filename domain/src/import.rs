//! The Phase 1 import (`gateway import-phase1 PATH`): a Phase 1 export, one JSON record per line
//! (`docs/phase1-import.md`), loaded into the Phase 2 schema. Users, then balances (as
//! `adjustment` ledger rows whose reason names the import), tasks with their history (timestamps
//! kept), licenses. Each record is applied in its own transaction; a re-run changes nothing
//! (records are keyed: ids, and one balance row per account); `dry_run` rolls every transaction
//! back and reports what would change; a bad record is reported with its line and skipped.

use crate::DomainError;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One record of the export.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A user (and its own credit account).
    User {
        /// Its id (becomes the JWT `sub`).
        id: String,
        /// Display name.
        display_name: String,
        /// Roles.
        roles: Vec<String>,
        /// When it was created in Phase 1.
        created_at: Option<DateTime<Utc>>,
    },
    /// A balance to carry over.
    Balance {
        /// The account (its user must exist).
        account_id: String,
        /// Credits, ≥ 0.
        credits: i64,
        /// The Phase 1 time the balance is from.
        as_of: DateTime<Utc>,
    },
    /// A finished or running task with its history.
    Task {
        /// Its id.
        id: Uuid,
        /// Its owner (whose account it ran on).
        owner_id: String,
        /// Its type.
        task_type: String,
        /// Units.
        units: i64,
        /// Its status now.
        status: String,
        /// What it was estimated to cost.
        estimated_credits: i64,
        /// Units used (succeeded).
        actual_units: Option<i64>,
        /// What it cost (succeeded).
        actual_cost: Option<i64>,
        /// When it was created.
        created_at: DateTime<Utc>,
        /// When it finished.
        finished_at: Option<DateTime<Utc>>,
        /// Its events, in order.
        history: Vec<HistoryEvent>,
    },
    /// A license.
    License {
        /// Its id.
        id: Uuid,
        /// Who holds it.
        subject_id: String,
        /// What it covers.
        resource: String,
        /// The actions it allows.
        actions: Vec<String>,
        /// Quota (none: unlimited).
        quota_total: Option<i64>,
        /// Quota used.
        quota_used: i64,
        /// Validity.
        valid_from: DateTime<Utc>,
        /// Validity end.
        valid_until: Option<DateTime<Utc>>,
        /// `active`, `suspended` or `revoked`.
        status: String,
        /// Who granted it.
        granted_by: String,
        /// When.
        created_at: DateTime<Utc>,
    },
}

/// One event of a task's history.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEvent {
    /// 1, 2, 3, …
    pub seq: i64,
    /// `created`, `progress` or `state`.
    pub kind: String,
    /// Status before.
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// Progress after.
    pub progress: Option<i16>,
    /// A note.
    pub message: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// What an import did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Records that changed something (or would).
    pub applied: u64,
    /// Records already there.
    pub unchanged: u64,
    /// Bad records: (line, reason).
    pub rejected: Vec<(u64, String)>,
}

fn describe(error: &DomainError) -> String {
    match error {
        DomainError::Database(sqlx::Error::Database(db)) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Applies one record on `conn`; whether it changed anything.
async fn apply(conn: &mut PgConnection, record: &Record) -> Result<bool, DomainError> {
    match record {
        Record::User {
            id,
            display_name,
            roles,
            created_at,
        } => {
            let inserted = sqlx::query(
                "insert into users (id, display_name, roles, created_at) \
                 values ($1, $2, $3, coalesce($4, now())) on conflict (id) do nothing",
            )
            .bind(id)
            .bind(display_name)
            .bind(roles)
            .bind(created_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            let account = sqlx::query(
                "insert into credit_accounts (id, owner_id) values ($1, $1) on conflict (id) do nothing",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(inserted + account > 0)
        }
        Record::Balance {
            account_id,
            credits,
            as_of,
        } => {
            if *credits < 0 || *credits > shared::limits::MAX_AMOUNT {
                return Err(DomainError::Validation(format!(
                    "credits must be between 0 and {}",
                    shared::limits::MAX_AMOUNT
                )));
            }
            let reference = format!("phase1-import:{account_id}");
            // Lock the account: one balance row per account, whatever runs at once.
            let exists: Option<String> =
                sqlx::query_scalar("select id from credit_accounts where id = $1 for update")
                    .bind(account_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            if exists.is_none() {
                return Err(DomainError::NotFound {
                    what: "account (import its user first)",
                });
            }
            let done: bool = sqlx::query_scalar(
                "select exists (select 1 from credit_ledger where account_id = $1 and reference = $2)",
            )
            .bind(account_id)
            .bind(&reference)
            .fetch_one(&mut *conn)
            .await?;
            if done || *credits == 0 {
                return Ok(false);
            }
            sqlx::query(
                "insert into credit_ledger (account_id, kind, amount, reference, reason, actor_id) \
                 values ($1, 'adjustment', $2, $3, $4, 'phase1-import')",
            )
            .bind(account_id)
            .bind(credits)
            .bind(&reference)
            .bind(format!(
                "Phase 1 import: balance as of {}",
                as_of.to_rfc3339()
            ))
            .execute(&mut *conn)
            .await?;
            Ok(true)
        }
        Record::Task {
            id,
            owner_id,
            task_type,
            units,
            status,
            estimated_credits,
            actual_units,
            actual_cost,
            created_at,
            finished_at,
            history,
        } => {
            let seq = history.iter().map(|event| event.seq).max().unwrap_or(0);
            let inserted = sqlx::query(
                "insert into tasks (id, owner_id, account_id, task_type, units, status, progress, \
                     seq, estimated_credits, actual_units, actual_cost, created_at, updated_at, \
                     finished_at) \
                 values ($1, $2, $2, $3, $4, $5, case when $5 = 'succeeded' then 100 else 0 end, \
                         $6, $7, $8, $9, $10, coalesce($11, $10), $11) \
                 on conflict (id) do nothing",
            )
            .bind(id)
            .bind(owner_id)
            .bind(task_type)
            .bind(units)
            .bind(status)
            .bind(seq)
            .bind(estimated_credits)
            .bind(actual_units)
            .bind(actual_cost)
            .bind(created_at)
            .bind(finished_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
            for event in history {
                sqlx::query(
                    "insert into task_state_history (task_id, seq, kind, from_status, to_status, \
                         progress, message, actor_id, created_at) \
                     values ($1, $2, $3, $4, $5, $6, $7, 'phase1-import', $8)",
                )
                .bind(id)
                .bind(event.seq)
                .bind(&event.kind)
                .bind(&event.from_status)
                .bind(&event.to_status)
                .bind(event.progress)
                .bind(&event.message)
                .bind(event.at)
                .execute(&mut *conn)
                .await?;
            }
            Ok(true)
        }
        Record::License {
            id,
            subject_id,
            resource,
            actions,
            quota_total,
            quota_used,
            valid_from,
            valid_until,
            status,
            granted_by,
            created_at,
        } => {
            let inserted = sqlx::query(
                "insert into authorizations (id, subject_id, resource, actions, quota_total, \
                     quota_used, valid_from, valid_until, status, granted_by, created_at) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) on conflict (id) do nothing",
            )
            .bind(id)
            .bind(subject_id)
            .bind(resource)
            .bind(actions)
            .bind(quota_total)
            .bind(quota_used)
            .bind(valid_from)
            .bind(valid_until)
            .bind(status)
            .bind(granted_by)
            .bind(created_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(inserted > 0)
        }
    }
}

/// Imports the records of `reader` (one JSON object per line; blank lines are skipped);
/// `progress` is told how many bytes were read after each line. A dry run applies everything in
/// one transaction (each record under a savepoint, so later records see earlier ones) and rolls
/// it back.
pub async fn import(
    pool: &PgPool,
    reader: impl std::io::BufRead,
    dry_run: bool,
    mut progress: impl FnMut(u64),
) -> Result<Report, DomainError> {
    use sqlx::Connection;
    let mut report = Report::default();
    let mut read: u64 = 0;
    let mut outer = if dry_run {
        Some(pool.begin().await?)
    } else {
        None
    };
    for (index, line) in reader.lines().enumerate() {
        let line_number = index as u64 + 1;
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                report
                    .rejected
                    .push((line_number, format!("cannot read the line: {error}")));
                continue;
            }
        };
        read += line.len() as u64 + 1;
        progress(read);
        if line.trim().is_empty() {
            continue;
        }
        report.records += 1;
        let record: Record = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(error) => {
                report
                    .rejected
                    .push((line_number, format!("not a record: {error}")));
                continue;
            }
        };
        let mut tx = match outer.as_mut() {
            Some(outer) => outer.begin().await?,
            None => pool.begin().await?,
        };
        match apply(&mut tx, &record).await {
            Ok(changed) => {
                tx.commit().await?;
                if changed {
                    report.applied += 1;
                } else {
                    report.unchanged += 1;
                }
            }
            Err(DomainError::Database(error)) if !matches!(error, sqlx::Error::Database(_)) => {
                return Err(DomainError::Database(error));
            }
            Err(error) => {
                tx.rollback().await?;
                report.rejected.push((line_number, describe(&error)));
            }
        }
    }
    if let Some(outer) = outer {
        outer.rollback().await?;
    }
    Ok(report)
}
