//! `/healthz` (the process answers) and `/readyz` (it can serve: PostgreSQL reachable, migrations
//! applied, Redis reachable when configured, not draining).

use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::problem::PROBLEM_JSON;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Body of `/healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
    /// This node.
    pub node: String,
}

/// Body of `/readyz`: the outcome of each check (`ok` or what failed).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// This node.
    pub node: String,
    /// Check name → `ok` or the failure.
    pub checks: BTreeMap<&'static str, String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        node: state.settings.node_id.clone(),
    })
}

/// The node can serve traffic.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every dependency is ready", body = Readiness),
        (status = 503, description = "A dependency failed; `detail` names it",
            content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut checks = BTreeMap::new();
    let postgres = check_postgres(&state).await;
    let migrations = match &postgres {
        Ok(()) => check_migrations(&state).await,
        Err(_) => Err("not checked: postgres is down".to_owned()),
    };
    checks.insert("postgres", outcome(postgres));
    checks.insert("migrations", outcome(migrations));
    if state.redis.is_some() {
        checks.insert("redis", outcome(check_redis(&state).await));
    }
    if state.realtime.broker.uses_redis() {
        let linked = if state.realtime.broker.is_linked() {
            Ok(())
        } else {
            Err("the pub/sub link to Redis is down (reconnecting)".to_owned())
        };
        checks.insert("broker", outcome(linked));
    }
    checks.insert(
        "draining",
        outcome(if state.is_draining() {
            Err("shutting down".into())
        } else {
            Ok(())
        }),
    );
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, result)| *result != "ok")
        .map(|(name, _)| *name)
        .collect();
    let node = state.settings.node_id.clone();
    if failing.is_empty() {
        return axum::Json(Readiness {
            status: "ready",
            node,
            checks,
        })
        .into_response();
    }
    tracing::warn!(?checks, "not ready");
    let request_id = headers
        .get(crate::problem::REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let detail = failing
        .iter()
        .map(|name| format!("{name}: {}", checks[name]))
        .collect::<Vec<_>>()
        .join("; ");
    let body = serde_json::json!({
        "type": "urn:hub:problem:service_unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": format!("not ready: {detail}"),
        "code": "service_unavailable",
        "request_id": request_id,
        "node": node,
        "failing": failing,
        "checks": checks,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body.to_string(),
    )
        .into_response()
}

fn outcome(result: Result<(), String>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(error) => error,
    }
}

async fn check_postgres(state: &AppState) -> Result<(), String> {
    let query = sqlx::query("select 1").execute(&state.db);
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            // The driver's words go to the log; the public body names the part only.
            tracing::warn!(%error, "readiness: PostgreSQL unreachable");
            Err("unreachable".into())
        }
        Err(_) => Err("timed out".into()),
    }
}

async fn check_migrations(state: &AppState) -> Result<(), String> {
    match domain::db::pending_migrations(&state.db).await {
        Ok(pending) if pending.is_empty() => Ok(()),
        Ok(pending) => {
            tracing::warn!(?pending, "readiness: migrations pending");
            Err(format!("{} pending", pending.len()))
        }
        Err(error) => {
            tracing::warn!(%error, "readiness: cannot read the applied migrations");
            Err("cannot read".into())
        }
    }
}

async fn check_redis(state: &AppState) -> Result<(), String> {
    let Some(client) = &state.redis else {
        return Ok(());
    };
    let ping = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: Redis unreachable");
            Err("unreachable".into())
        }
        Err(_) => Err("timed out".into()),
    }
}
