//! `GET /api/v1/sessions/me` and `PUT /api/v1/sessions/me/theme`.

use crate::auth::Caller;
use crate::error::{ApiResult, Json};
use crate::state::AppState;
use axum::extract::State;
use shared::Problem;
use shared::session::{SessionMe, Theme};

/// The caller: identity, roles, scopes, theme (stored or role default) and latest balance.
#[utoipa::path(get, path = "/api/v1/sessions/me", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, body = SessionMe),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<SessionMe>> {
    let principal = &caller.principal;
    let stored = domain::sessions::stored_theme(&state.db, &principal.user_id).await?;
    let theme_is_default = stored.is_none();
    let theme = stored.unwrap_or_else(|| domain::sessions::default_theme(&principal.roles));
    let balance = match &principal.account_id {
        Some(account) => Some(domain::sessions::balance(&state.db, account).await?),
        None => None,
    };
    Ok(Json(SessionMe {
        user_id: principal.user_id.clone(),
        account_id: principal.account_id.clone(),
        display_name: principal.display_name.clone(),
        roles: principal.roles.clone(),
        scopes: caller.scopes.iter().cloned().collect(),
        theme,
        theme_is_default,
        balance,
    }))
}

/// Stores the caller's theme preference and returns it.
#[utoipa::path(put, path = "/api/v1/sessions/me/theme", tag = "sessions", security(("bearer" = [])),
    request_body = Theme,
    responses(
        (status = 200, body = Theme),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_theme(
    State(state): State<AppState>,
    caller: Caller,
    Json(theme): Json<Theme>,
) -> ApiResult<Json<Theme>> {
    let stored =
        domain::sessions::store_theme(&state.db, &caller.principal.user_id, &theme).await?;
    Ok(Json(stored))
}
