//! The HTTP side of idempotency (api.md §Idempotency), in one type every keyed route goes
//! through: [`Guard`]. It reads the `Idempotency-Key` header, claims the key (with an owner token)
//! before the work, replays a stored response byte for byte with `Idempotent-Replayed: true`,
//! stores failures that changed nothing so a retry gets the same answer, and releases the claim
//! after a transient failure, or when the request is abandoned (a timeout drops the handler), so
//! a retry can run.
//!
//! Exactly one commit per key: the work's own transaction completes the key only while this
//! request's claim still owns it (see `domain::idempotency`); the guard hands that claim to the
//! transaction ([`Guard::run_tx`]), to the account's ledger actor ([`Guard::completion`]) or to
//! the task's actor ([`Guard::task_completion`]).

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::DomainError;
use domain::idempotency::{self, Claim, Claimed, KeyRef, StoredResponse};
use shared::problem::PROBLEM_JSON;
use shared::{ErrorCode, Problem};
use std::sync::Arc;

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking a replay.
pub const REPLAYED: &str = "idempotent-replayed";

/// The body of a keyed route with its claimed key: the extractor every keyed route takes (last,
/// since it reads the body). It derives the key's scope from the matched route and the caller,
/// and whether the key is required from [`key_rule`]; a replay, a conflict or a malformed key is
/// answered before the handler runs.
#[derive(Debug)]
pub struct Keyed {
    /// The claim, held until the answer is stored.
    pub guard: Guard,
    /// The raw body (fingerprinted; parse it with `crate::error::parse_json`).
    pub body: axum::body::Bytes,
}

/// Whether the route demands an `Idempotency-Key`: the money routes do, the others accept one.
pub fn key_rule(method: &axum::http::Method, path: &str) -> KeyRule {
    match (method.as_str(), path) {
        (
            "POST",
            "/api/v1/credits/charge"
            | "/api/v1/credits/refund"
            | "/api/v1/credits/adjust"
            | "/api/v1/payments/recharge",
        ) => KeyRule::Required,
        _ => KeyRule::Optional,
    }
}

/// Whether a route's work goes through the ledger (admission control applies).
fn ledger_route(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && matches!(
            path,
            "/api/v1/credits/charge"
                | "/api/v1/credits/refund"
                | "/api/v1/credits/adjust"
                | "/api/v1/tasks"
                | "/api/v1/tasks/{id}/events"
                | "/api/v1/tasks/{id}/cancel"
        )
}

impl axum::extract::FromRequest<AppState> for Keyed {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!(
                    "a keyed route without an authenticated caller"
                ))
                .into_response()
            })?;
        let path = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|matched| matched.as_str().to_owned())
            .unwrap_or_else(|| request.uri().path().to_owned());
        let method = request.method().clone();
        let route = format!("{method} {path}");
        let headers = request.headers().clone();
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let code = match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                    _ => ErrorCode::HttpError,
                };
                ApiError::new(rejection.status(), code, rejection.body_text()).into_response()
            })?;
        let rule = key_rule(&method, &path);
        // Ledger work only while the node can do it soon: refused before the key is claimed.
        let admitted = if ledger_route(&method, &path) {
            let admitted = state.admission.admit(&state.ledger).await;
            Some(admitted.map_err(IntoResponse::into_response)?)
        } else {
            None
        };
        let mut guard = Guard::begin(state, &caller, &headers, &route, &body, rule).await?;
        guard.admitted = admitted;
        Ok(Keyed { guard, body })
    }
}

/// Whether a route demands a key or merely accepts one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// 400 `idempotency_key_required` without one (money routes).
    Required,
    /// Without one the request simply runs once.
    Optional,
}

/// A transaction owned by a unit of work (handed in and back, so the work's future needs no
/// borrow).
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// The idempotency guard of one request: holds its claim from [`Guard::begin`] until the answer
/// is committed with the key ([`Guard::committed`]), stored as a refusal ([`Guard::refuse`]) or
/// given up ([`Guard::abandon`]). Dropped unfinished (the request timed out or its client left),
/// it releases the claim, which is safe while the work may still run: work that has not locked
/// its claim yet then does not apply, work that has commits first.
#[derive(Debug)]
pub struct Guard {
    state: AppState,
    /// The key this request owns; `None` when an optional key was not sent.
    claim: Option<Claimed>,
    request_id: String,
    /// Invariant: true once the claim was completed or released on purpose.
    finished: bool,
    /// The request's place among the money operations in flight (admission control).
    admitted: Option<crate::admission::Admitted>,
}

impl Guard {
    /// Reads and claims the request's key. `Err` is the response to send at once: 415 for a body
    /// not declared JSON (every keyed route takes JSON), a replay of the stored answer, 400 for a
    /// missing or malformed key, 409 in flight, 422 reused.
    pub async fn begin(
        state: &AppState,
        caller: &Caller,
        headers: &HeaderMap,
        route: &str,
        body: &[u8],
        rule: KeyRule,
    ) -> Result<Guard, Response> {
        crate::error::require_json(headers, body).map_err(IntoResponse::into_response)?;
        let request_id = caller.request_id.clone().unwrap_or_default();
        let mut guard = Guard {
            state: state.clone(),
            claim: None,
            request_id,
            finished: false,
            admitted: None,
        };
        let Some(key) =
            key_from(headers, caller, route, rule).map_err(IntoResponse::into_response)?
        else {
            return Ok(guard);
        };
        let fingerprint = idempotency::fingerprint(body);
        let claim = state
            .claims
            .claim(&key, &fingerprint, state.settings.idempotency.policy())
            .await
            .map_err(|error| ApiError::from(error).into_response())?;
        match claim {
            Claim::Acquired(claimed) => {
                guard.claim = Some(claimed);
                Ok(guard)
            }
            Claim::Replay(stored) => Err(stored_response(stored, true)),
            Claim::InFlight => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyInFlight,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .into_response()),
            Claim::Reused => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body",
            )
            .into_response()),
        }
    }

    /// The request id, for rendering stored problems.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The claim to complete in the ledger's transaction, with how to render the answer; `None`
    /// when the request sent no key.
    pub fn completion(&self, render: domain::ledger::Render) -> Option<domain::ledger::Completion> {
        self.claim
            .clone()
            .map(|claim| domain::ledger::Completion { claim, render })
    }

    /// The claim to complete in a task event's transaction, rendering the event's answer.
    pub fn task_completion(
        &self,
        render: domain::tasks::RenderEvent,
    ) -> Option<domain::tasks::EventCompletion> {
        self.claim
            .clone()
            .map(|claim| domain::tasks::EventCompletion { claim, render })
    }

    /// The work committed its answer with the key (or there was no key): send it.
    pub fn committed(mut self, stored: StoredResponse) -> Response {
        self.finished = true;
        stored_response(stored, false)
    }

    /// The work refused the request before changing anything: a refusal that would come again
    /// (4xx) is stored for replays; a transient one (5xx, 429) releases the key so a retry can run.
    pub async fn refuse(mut self, error: ApiError) -> Response {
        self.finished = true;
        let Some(claim) = self.claim.take() else {
            return error.into_response();
        };
        if transient(&error) {
            release(&self.state, &claim).await;
            return error.into_response();
        }
        let stored = render_problem(&error, &self.request_id);
        match idempotency::complete(&self.state.db, &claim, &stored).await {
            Ok(()) => stored_response(stored, false),
            // The act's own transaction already stored this refusal (a ledger batch does).
            Err(_) if let Ok(Some(own)) = idempotency::stored_by(&self.state.db, &claim).await => {
                stored_response(own, false)
            }
            Err(store_error) => {
                tracing::warn!(error = %store_error, "cannot store a refusal; releasing the key");
                release(&self.state, &claim).await;
                error.into_response()
            }
        }
    }

    /// The work failed without committing anything: release the key so a retry can run.
    pub async fn abandon(mut self, error: ApiError) -> Response {
        self.finished = true;
        if let Some(claim) = self.claim.take() {
            release(&self.state, &claim).await;
        }
        error.into_response()
    }

    /// Runs `work` in one transaction and stores its answer (success, or a 4xx refusal) with the
    /// key in that same transaction; a 5xx or 429 rolls back and releases the key. Refusals commit
    /// too, so what the work logged about them persists. Returns the response and, when the work
    /// succeeded and committed, its value (for after-commit effects such as cache invalidation).
    pub async fn run_tx<T, F, Fut>(self, success: StatusCode, work: F) -> (Response, Option<T>)
    where
        T: serde::Serialize,
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = (Tx, Result<T, ApiError>)>,
    {
        let tx = match self.state.db.begin().await {
            Ok(tx) => tx,
            Err(error) => {
                return (
                    self.abandon(crate::error::database_error(error)).await,
                    None,
                );
            }
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
                Err(error) => return (self.abandon(ApiError::internal(error)).await, None),
            },
            Err(error) if transient(&error) => {
                drop(tx);
                return (self.abandon(error).await, None);
            }
            Err(error) => (render_problem(&error, &self.request_id), None),
        };
        if let Some(claim) = &self.claim
            && let Err(error) = idempotency::complete_many(&mut tx, &[(claim, &stored)]).await
        {
            drop(tx);
            return (self.abandon(ApiError::from(error)).await, None);
        }
        if let Err(error) = tx.commit().await {
            return (
                self.abandon(crate::error::database_error(error)).await,
                None,
            );
        }
        (self.committed(stored), value)
    }

    /// Sends `request` to the account's actor with this claim to complete in the ledger's
    /// transaction, and answers with what was stored (or rendered, without a key).
    pub async fn apply_ledger(
        self,
        mut request: domain::ledger::LedgerRequest,
        render: domain::ledger::Render,
    ) -> (Response, Option<domain::ledger::Applied>) {
        request.completion = self.completion(render.clone());
        let outcome = match self.state.ledger.apply(request).await {
            Ok(outcome) => outcome,
            // Never sent, or the actor died: a committed batch completed the key (releasing is
            // then a no-op); an uncommitted one wrote nothing, so a retry may run.
            Err(error) => return (self.abandon(ApiError::from(error)).await, None),
        };
        match (outcome.stored, outcome.result) {
            (Some(stored), result) => (self.committed(stored), result.ok()),
            // No key: the answer is rendered here.
            (None, result) if self.claim.is_none() => {
                let stored = render(result.as_ref());
                (self.committed(stored), result.ok())
            }
            // Nothing was written (the batch failed, or the claim was lost): a retry may run.
            (None, Err(error)) => (self.abandon(ApiError::from(error)).await, None),
            (None, Ok(_)) => {
                let error = anyhow::anyhow!("outcome without a stored response");
                (self.abandon(ApiError::internal(error)).await, None)
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(claim) = self.claim.take() else {
            return;
        };
        // The handler was dropped mid-way (request timeout, client gone): give the key back so
        // the retry does not wait for the lease. Safe whatever the work is doing (see the type).
        let state = self.state.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&state, &claim).await });
        }
    }
}

/// A refusal that may not come again: released, not stored.
fn transient(error: &ApiError) -> bool {
    error.status().is_server_error() || error.status() == StatusCode::TOO_MANY_REQUESTS
}

/// The key of this request, if it sent one; an error if it is malformed, or missing where
/// required. Its scope is the caller, the account the caller's token acts as, and the route.
fn key_from(
    headers: &HeaderMap,
    caller: &Caller,
    route: &str,
    rule: KeyRule,
) -> Result<Option<KeyRef>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return match rule {
            KeyRule::Required => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::IdempotencyKeyRequired,
                "this route needs an `Idempotency-Key` header (1-255 visible ASCII characters; a \
                 UUID is recommended)",
            )),
            KeyRule::Optional => Ok(None),
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
        account_id: caller.principal.account_id.clone().unwrap_or_default(),
        route: route.to_owned(),
        key: key.to_owned(),
    }))
}

/// Gives a claim back. When the database cannot be reached (the usual reason a request failed
/// with 503), keeps trying in the background for a while, so a retry after the database is back
/// finds the key free instead of waiting for the lease.
async fn release(state: &AppState, claim: &Claimed) {
    if idempotency::release(&state.db, claim).await.is_ok() {
        return;
    }
    let (db, claim) = (state.db.clone(), claim.clone());
    tokio::spawn(async move {
        for _ in 0..120 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if idempotency::release(&db, &claim).await.is_ok() {
                return;
            }
        }
        tracing::warn!("cannot release an idempotency key; its lease will expire");
    });
}

/// The exact bytes of the problem an `ApiError` becomes, for storing.
pub fn render_problem(error: &ApiError, request_id: &str) -> StoredResponse {
    let problem = Problem::new(
        error.status().as_u16(),
        error.code(),
        error.detail(),
        request_id,
    )
    .with(error.extras().clone());
    StoredResponse {
        status: error.status().as_u16(),
        body: serde_json::to_vec(&problem).unwrap_or_default(),
    }
}

/// Renders an operation's result as the response stored with its key: `status` and `body` on
/// success, the problem otherwise.
pub fn render_with<T: 'static>(
    request_id: &str,
    status: StatusCode,
    body: fn(&T) -> Vec<u8>,
) -> idempotency::Render<T> {
    let request_id = request_id.to_owned();
    Arc::new(move |result: Result<&T, &DomainError>| match result {
        Ok(value) => StoredResponse {
            status: status.as_u16(),
            body: body(value),
        },
        Err(error) => render_problem(&ApiError::from_domain(error), &request_id),
    })
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
