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
    fn as_str(self) -> &'static str {
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
