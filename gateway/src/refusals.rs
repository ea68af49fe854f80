//! The audit trail of refused sensitive acts: a 403 from the permission check on a sensitive
//! route, and a refund, adjustment, charge, grant, license change or price rule change refused
//! before it could apply. Each is one `audit_access_log` row with outcome `denied` (not allowed)
//! or `failure` (refused), written on its own connection, so it stays even when the act's own
//! transaction rolls back.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use axum::http::{Method, StatusCode};
use domain::audit::{Actor, AuditEntry, Outcome};

/// The audit action of a sensitive route (as the router writes its path), if it is one.
pub fn sensitive_action(method: &Method, path: &str) -> Option<&'static str> {
    Some(match (method.as_str(), path) {
        ("POST", "/api/v1/credits/charge") => "credits.charge",
        ("POST", "/api/v1/credits/refund") => "credits.refund",
        ("POST", "/api/v1/credits/adjust") => "credits.adjust",
        ("POST", "/api/v1/licenses") => "license.grant",
        ("PATCH", "/api/v1/licenses/{id}") => "license.update",
        ("GET", "/api/v1/audit/access-logs" | "/api/v1/audit/access-logs/{id}") => "audit.read",
        ("POST", "/api/v1/pricing/rules") => "pricing.create",
        ("PATCH", "/api/v1/pricing/rules/{id}") => "pricing.update",
        ("POST", "/api/v1/payments/orders/{id}/close") => "payments.close",
        ("POST", "/api/v1/risk/blocks") => "risk.block",
        ("DELETE", "/api/v1/risk/blocks/{id}") => "risk.unblock",
        _ => return None,
    })
}

/// Records that `actor` was refused `action` on `target` with `error`. Never fails the request:
/// a row that cannot be written is logged.
pub async fn record(
    state: &AppState,
    actor: &Actor,
    action: &str,
    target: (&str, Option<&str>),
    error: &ApiError,
) {
    let outcome = if matches!(
        error.status(),
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
    ) {
        Outcome::Denied
    } else {
        Outcome::Failure
    };
    let detail = serde_json::json!({
        "status": error.status().as_u16(),
        "code": error.code().as_str(),
        "error": error.detail(),
    });
    let entry = AuditEntry {
        action,
        target_type: Some(target.0),
        target_id: target.1,
        outcome,
        detail: Some(detail),
    };
    let written = domain::audit::record_now(&state.db, actor, entry).await;
    if let Err(failure) = written {
        tracing::error!(error = %failure, action, "cannot write the audit row of a refusal");
    }
}

/// [`record`] for a caller.
pub async fn record_for(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: (&str, Option<&str>),
    error: &ApiError,
) {
    record(state, &caller.actor(), action, target, error).await;
}
