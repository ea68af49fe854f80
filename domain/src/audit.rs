//! The access audit trail: one `audit_access_log` row per sensitive act, written in the same
//! transaction as the act so neither can exist without the other.

use crate::DomainResult;
use shared::Role;
use sqlx::PgConnection;
use std::net::IpAddr;

/// How a sensitive act ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The act was carried out.
    Success,
    /// The caller was not allowed.
    Denied,
    /// The act was attempted and failed.
    Failure,
}

impl Outcome {
    /// The database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// Who acted, from where, under which request.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The caller's `sub`.
    pub id: String,
    /// The caller's roles at the time.
    pub roles: Vec<Role>,
    /// The request id (`X-Request-Id`).
    pub request_id: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<IpAddr>,
}

/// One audit row.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// A dotted action name, e.g. `credits.charge`.
    pub action: &'a str,
    /// The kind of thing acted on, e.g. `credit_account`.
    pub target_type: Option<&'a str>,
    /// Its id.
    pub target_id: Option<&'a str>,
    /// How it ended.
    pub outcome: Outcome,
    /// Anything else worth keeping (amounts, reasons), as JSON.
    pub detail: Option<serde_json::Value>,
}

/// Writes one audit row on `conn`, which should be the transaction of the act itself.
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    entry: AuditEntry<'_>,
) -> DomainResult<i64> {
    let roles: Vec<&str> = actor.roles.iter().map(|role| role.as_str()).collect();
    let id = sqlx::query_scalar(
        "insert into audit_access_log \
           (actor_id, actor_roles, action, target_type, target_id, outcome, request_id, client_ip, detail) \
         values ($1, $2, $3, $4, $5, $6, $7, $8::text::inet, $9) returning id",
    )
    .bind(&actor.id)
    .bind(&roles)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(entry.target_id)
    .bind(entry.outcome.as_str())
    .bind(&actor.request_id)
    .bind(actor.client_ip.map(|ip| ip.to_string()))
    .bind(entry.detail)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// Writes one audit row on its own (an audit of something that has no transaction of its own:
/// a login, a read, a refusal, a notification's verdict).
pub async fn record_now(
    pool: &sqlx::PgPool,
    actor: &Actor,
    entry: AuditEntry<'_>,
) -> DomainResult<i64> {
    let mut conn = pool.acquire().await?;
    record(&mut conn, actor, entry).await
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    /// Row id (increasing).
    pub id: i64,
    /// Who acted.
    pub actor_id: String,
    /// Their roles at the time.
    pub actor_roles: Vec<String>,
    /// What they did.
    pub action: String,
    /// Kind of target.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// success, denied or failure.
    pub outcome: String,
    /// Request id.
    pub request_id: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Extra detail.
    pub detail: Option<serde_json::Value>,
    /// When.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Filters of an audit listing; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor_id: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this kind of target.
    pub target_type: Option<String>,
    /// Only this target.
    pub target_id: Option<String>,
    /// Only this outcome (`success`, `denied`, `failure`).
    pub outcome: Option<String>,
    /// From this time (inclusive).
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Up to this time (exclusive).
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only rows with an id below this (the cursor).
    pub before_id: Option<i64>,
}

const RECORD_COLUMNS: &str = "id, actor_id, actor_roles, action, target_type, target_id, outcome, \
                              request_id, host(client_ip) as client_ip, detail, created_at";

/// Audit rows matching `filter`, newest first, at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    filter: &AuditFilter,
    limit: i64,
) -> DomainResult<Vec<AuditRecord>> {
    let rows = sqlx::query_as::<_, AuditRecord>(&format!(
        "select {RECORD_COLUMNS} from audit_access_log \
         where ($1::text is null or actor_id = $1) and ($2::text is null or action = $2) \
           and ($3::timestamptz is null or created_at >= $3) \
           and ($4::timestamptz is null or created_at < $4) \
           and ($5::bigint is null or id < $5) \
           and ($7::text is null or target_type = $7) and ($8::text is null or target_id = $8) \
           and ($9::text is null or outcome = $9) \
         order by id desc limit $6"
    ))
    .bind(&filter.actor_id)
    .bind(&filter.action)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.before_id)
    .bind(limit)
    .bind(&filter.target_type)
    .bind(&filter.target_id)
    .bind(&filter.outcome)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// One audit row by id.
pub async fn get(conn: &mut PgConnection, id: i64) -> DomainResult<AuditRecord> {
    sqlx::query_as::<_, AuditRecord>(&format!(
        "select {RECORD_COLUMNS} from audit_access_log where id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(crate::DomainError::NotFound {
        what: "audit entry",
    })
}

/// One entry of a trail: when, from which record, the record itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct TrailEntry {
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
    /// `state` (task_state_history), `task_audit`, `ledger`, `payment` or `access`
    /// (audit_access_log).
    pub source: String,
    /// The record, as stored (who did it and the request id included).
    pub data: serde_json::Value,
}

/// Everything recorded about a task, in time order: its state history, its task audit rows, its
/// ledger rows (the hold, capture or release, charges naming it, and refunds of those), and the
/// access-log rows that touched it. `None` when there is no such task.
pub async fn task_trail(
    conn: &mut PgConnection,
    task_id: uuid::Uuid,
) -> DomainResult<Option<(serde_json::Value, Vec<TrailEntry>)>> {
    let task: Option<serde_json::Value> =
        sqlx::query_scalar("select to_jsonb(t) from tasks t where id = $1")
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(task) = task else {
        return Ok(None);
    };
    let entries = sqlx::query_as::<_, TrailEntry>(
        "with ledger as ( \
           select * from credit_ledger \
            where task_id = $1 or hold_id in (select id from credit_holds where task_id = $1)), \
         related as ( \
           select * from ledger \
           union select l.* from credit_ledger l where l.related_entry_id in (select id from ledger)) \
         select created_at as at, 'state' as source, to_jsonb(h) as data \
           from task_state_history h where task_id = $1 \
         union all \
         select created_at, 'task_audit', to_jsonb(a) from task_audit_logs a where task_id = $1 \
         union all \
         select created_at, 'ledger', to_jsonb(r) from related r \
         union all \
         select created_at, 'access', \
                to_jsonb(x) - 'client_ip' || jsonb_build_object('client_ip', host(x.client_ip)) \
           from audit_access_log x \
          where (target_type = 'task' and target_id = $1::text) or detail->>'task_id' = $1::text \
         order by at, source",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some((task, entries)))
}

/// An account's money trail over `[from, to)`: its ledger rows (charges, refunds, adjustments,
/// recharges, holds…), its payment orders, and the access-log rows that targeted it, each with
/// who did it and the request id, in time order.
pub async fn account_trail(
    conn: &mut PgConnection,
    account_id: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> DomainResult<Vec<TrailEntry>> {
    let entries = sqlx::query_as::<_, TrailEntry>(
        "select created_at as at, 'ledger' as source, to_jsonb(l) as data from credit_ledger l \
          where account_id = $1 and created_at >= $2 and created_at < $3 \
         union all \
         select created_at, 'payment', to_jsonb(p) - 'code_url' - 'payer_client_ip' \
           from payment_orders p where account_id = $1 and created_at >= $2 and created_at < $3 \
         union all \
         select created_at, 'access', \
                to_jsonb(x) - 'client_ip' || jsonb_build_object('client_ip', host(x.client_ip)) \
           from audit_access_log x \
          where target_type = 'credit_account' and target_id = $1 \
            and created_at >= $2 and created_at < $3 \
         order by at, source \
         limit 100000",
    )
    .bind(account_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    Ok(entries)
}
