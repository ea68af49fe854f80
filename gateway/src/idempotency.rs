//! The HTTP side of idempotency (api.md §Idempotency): the `Idempotency-Key` header, claiming the
//! key before the work, replaying a stored response byte for byte with `Idempotent-Replayed:
//! true`, storing failures that changed nothing so a retry gets the same answer, and releasing
//! the key after a transient failure so a retry can run.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::idempotency::{self, Claim, KeyRef, StoredResponse};
use shared::problem::PROBLEM_JSON;
use shared::{ErrorCode, Problem};

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking a replay.
pub const REPLAYED: &str = "idempotent-replayed";

/// The key of this request, if it sent one; an error if it is malformed, or missing where
/// `required`.
pub fn key_from(
    headers: &HeaderMap,
    caller: &Caller,
    route: &str,
    required: bool,
) -> Result<Option<KeyRef>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return if required {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::IdempotencyKeyRequired,
                "this route needs an `Idempotency-Key` header (1-255 visible ASCII characters; a \
                 UUID is recommended)",
            ))
        } else {
            Ok(None)
        };
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| idempotency::valid_key(key))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidHeader,
                "`Idempotency-Key` must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(KeyRef {
        caller_id: caller.principal.user_id.clone(),
        route: route.to_owned(),
        key: key.to_owned(),
    }))
}

/// Claims `key` for `body`. `Ok(None)`: go ahead. `Ok(Some(response))`: answer with it (a
/// replay). `Err`: 409 in flight or 422 reused.
pub async fn claim(
    state: &AppState,
    key: &KeyRef,
    body: &[u8],
) -> Result<Option<Response>, ApiError> {
    let fingerprint = idempotency::fingerprint(body);
    match idempotency::claim(
        &state.db,
        key,
        &fingerprint,
        state.settings.idempotency.policy(),
    )
    .await?
    {
        Claim::Acquired => Ok(None),
        Claim::Replay(stored) => Ok(Some(stored_response(stored, true))),
        Claim::InFlight => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::IdempotencyKeyInFlight,
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )),
        Claim::Reused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request body",
        )),
    }
}

/// Answers a claimed request that failed: a failure that changed nothing and would fail again
/// (4xx) is stored for replays; a transient one (5xx, 429) releases the key so a retry can run.
pub async fn fail(state: &AppState, key: &KeyRef, error: ApiError, request_id: &str) -> Response {
    if error.status().is_server_error() || error.status() == StatusCode::TOO_MANY_REQUESTS {
        if let Err(release) = idempotency::release(&state.db, key).await {
            tracing::warn!(error = %release, "cannot release an idempotency key; its lease will expire");
        }
        return error.into_response();
    }
    let stored = render_problem(&error, request_id);
    match idempotency::complete(&state.db, key, &stored).await {
        Ok(()) => stored_response(stored, false),
        Err(store_error) => {
            tracing::warn!(error = %store_error, "cannot store a failed response; releasing the key");
            if let Err(release) = idempotency::release(&state.db, key).await {
                tracing::warn!(error = %release, "cannot release an idempotency key");
            }
            error.into_response()
        }
    }
}

/// Releases a key after an outcome that was not stored.
pub async fn release(state: &AppState, key: &KeyRef) {
    if let Err(error) = idempotency::release(&state.db, key).await {
        tracing::warn!(%error, "cannot release an idempotency key; its lease will expire");
    }
}

/// The exact bytes of the problem an `ApiError` becomes, for storing.
pub fn render_problem(error: &ApiError, request_id: &str) -> StoredResponse {
    let problem = Problem::new(
        error.status().as_u16(),
        error.code(),
        error.detail(),
        request_id,
    );
    StoredResponse {
        status: error.status().as_u16(),
        body: serde_json::to_vec(&problem).unwrap_or_default(),
    }
}

/// A stored response as sent: JSON or problem+json by status, `Idempotent-Replayed` on replays.
pub fn stored_response(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_client_error() || status.is_server_error() {
        PROBLEM_JSON
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// A PostgreSQL transaction owned by a unit of work (handed in and back, so the work's future
/// needs no borrow).
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Runs `work` in one transaction with optional idempotency (POSTs that accept a key): a replay
/// is answered from the store; the answer (success or a 4xx that changed nothing) is stored in
/// the work's own transaction; a 5xx or 429 rolls back and releases the key. Business refusals
/// commit too, so what the work logged about them persists. Returns the response and, when the
/// work succeeded and committed, its value (for after-commit effects such as cache invalidation).
pub async fn run_tx<T, F, Fut>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    success: StatusCode,
    work: F,
) -> (Response, Option<T>)
where
    T: serde::Serialize,
    F: FnOnce(Tx) -> Fut,
    Fut: Future<Output = (Tx, Result<T, ApiError>)>,
{
    let request_id = caller.request_id.clone().unwrap_or_default();
    let key = match key_from(headers, caller, route, false) {
        Ok(key) => key,
        Err(error) => return (error.into_response(), None),
    };
    if let Some(key) = &key {
        match claim(state, key, body).await {
            Ok(None) => {}
            Ok(Some(replay)) => return (replay, None),
            Err(error) => return (error.into_response(), None),
        }
    }
    let release_then = |error: ApiError| async {
        if let Some(key) = &key {
            release(state, key).await;
        }
        (error.into_response(), None)
    };
    let tx = match state.db.begin().await {
        Ok(tx) => tx,
        Err(error) => return release_then(crate::error::database_error(error)).await,
    };
    let (mut tx, result) = work(tx).await;
    let (stored, value) = match result {
        Ok(value) => match serde_json::to_vec(&value) {
            Ok(body) => (
                StoredResponse {
                    status: success.as_u16(),
                    body,
                },
                Some(value),
            ),
            Err(error) => return release_then(ApiError::internal(error)).await,
        },
        Err(error)
            if error.status().is_server_error()
                || error.status() == StatusCode::TOO_MANY_REQUESTS =>
        {
            drop(tx);
            return release_then(error).await;
        }
        Err(error) => (render_problem(&error, &request_id), None),
    };
    if let Some(key) = &key
        && let Err(error) = idempotency::complete_many(&mut tx, &[(key, &stored)]).await
    {
        drop(tx);
        return release_then(ApiError::from(error)).await;
    }
    if let Err(error) = tx.commit().await {
        return release_then(crate::error::database_error(error)).await;
    }
    (stored_response(stored, false), value)
}

/// The pipeline of a POST whose `Idempotency-Key` is optional and whose work is not a database
/// transaction of the route's own (a task event goes through the task's actor): claim the key,
/// run `work` (its refusals are stored like its answers), store the answer. Replaying is safe
/// even if the node stops between the work and the store: the key's lease expires and the retry
/// meets the work's own guard (a task event is checked against the stored state machine).
pub async fn run_keyed<T, F, Fut>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    success: StatusCode,
    work: F,
) -> (Response, Option<T>)
where
    T: serde::Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let request_id = caller.request_id.clone().unwrap_or_default();
    let key = match key_from(headers, caller, route, false) {
        Ok(key) => key,
        Err(error) => return (error.into_response(), None),
    };
    if let Some(key) = &key {
        match claim(state, key, body).await {
            Ok(None) => {}
            Ok(Some(replay)) => return (replay, None),
            Err(error) => return (error.into_response(), None),
        }
    }
    let value = match work().await {
        Ok(value) => value,
        Err(error) => {
            let response = match &key {
                Some(key) => fail(state, key, error, &request_id).await,
                None => error.into_response(),
            };
            return (response, None);
        }
    };
    let stored = match serde_json::to_vec(&value) {
        Ok(body) => StoredResponse {
            status: success.as_u16(),
            body,
        },
        Err(error) => return (ApiError::internal(error).into_response(), None),
    };
    if let Some(key) = &key
        && let Err(error) = idempotency::complete(&state.db, key, &stored).await
    {
        tracing::warn!(%error, "cannot store an answer with its idempotency key; releasing it");
        release(state, key).await;
    }
    (stored_response(stored, false), Some(value))
}
