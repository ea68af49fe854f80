//! Dev mode only: `POST /api/v1/dev/login` mints a token for anyone (the console's "dev login").

use crate::auth::{TokenRequest, valid_id};
use crate::error::{ApiError, ApiResult, Json};
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use domain::audit::{Actor, AuditEntry, Outcome};
use serde::{Deserialize, Serialize};
use shared::{Problem, Role};
use std::net::SocketAddr;

/// Longest lifetime a dev token may ask for: one day.
const MAX_TTL_SECONDS: u64 = 86_400;

/// Who to sign in as.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevLogin {
    /// User or service id.
    pub sub: String,
    /// Roles, at least one.
    pub roles: Vec<Role>,
    /// Credit account (default: `sub`).
    pub account_id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Token lifetime in seconds (default 3600, at most 86400).
    pub ttl_seconds: Option<u64>,
}

/// A freshly minted token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DevToken {
    /// The bearer token.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// Dev mode only: signs a token for the given identity, audited as `session.dev_login`.
#[utoipa::path(post, path = "/api/v1/dev/login", tag = "sessions", request_body = DevLogin,
    responses(
        (status = 201, body = DevToken),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<DevLogin>,
) -> ApiResult<(StatusCode, Json<DevToken>)> {
    if !valid_id(&body.sub) {
        return Err(ApiError::validation(
            "sub must be 1-128 of A-Z a-z 0-9 _ . @ -",
        ));
    }
    if body.roles.is_empty() {
        return Err(ApiError::validation("roles needs at least one role"));
    }
    if body
        .account_id
        .as_deref()
        .is_some_and(|account| !valid_id(account))
    {
        return Err(ApiError::validation(
            "account_id must be 1-128 of A-Z a-z 0-9 _ . @ -",
        ));
    }
    let ttl_seconds = body.ttl_seconds.unwrap_or(3600);
    if !(1..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
        return Err(ApiError::validation(
            "ttl_seconds must be between 1 and 86400",
        ));
    }
    let request = TokenRequest {
        sub: body.sub.clone(),
        roles: body.roles.clone(),
        account_id: body.account_id,
        name: body.name,
        ttl_seconds,
    };
    let (token, claims) = state.tokens.mint(&request).map_err(ApiError::internal)?;
    let actor = Actor {
        id: body.sub.clone(),
        roles: body.roles,
        request_id: headers
            .get(crate::problem::REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        client_ip: Some(peer.ip()),
    };
    domain::audit::record_now(
        &state.db,
        &actor,
        AuditEntry {
            action: "session.dev_login",
            target_type: Some("user"),
            target_id: Some(&body.sub),
            outcome: Outcome::Success,
            detail: Some(serde_json::json!({ "ttl_seconds": ttl_seconds })),
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(DevToken {
            token,
            token_type: "Bearer",
            expires_at: claims.exp,
        }),
    ))
}
