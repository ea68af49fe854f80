//! `/api/v1/licenses`: check (cached in Redis, every check logged), consume (atomic), grant,
//! read, and change (suspend, resume, revoke, quota, validity).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::idempotency::{Keyed, Tx};
use crate::license_cache::Lookup;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use shared::licenses::{ConsumeLicense, GrantLicense, License, LicenseCheck, UpdateLicense};
use shared::{ErrorCode, Problem};
use uuid::Uuid;

/// `?resource=&action=&subject_id=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// The resource, e.g. `model:portrait-v2`.
    #[param(min_length = 1, max_length = 255)]
    pub resource: String,
    /// The action, e.g. `generate`.
    #[param(pattern = "^[a-z0-9_.:-]{1,64}$")]
    pub action: String,
    /// Whose license (default: the caller); another's needs `licenses:check:any`.
    #[param(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub subject_id: Option<String>,
}

fn subject_for(
    caller: &Caller,
    requested: Option<&str>,
    any_scope: &str,
) -> Result<String, ApiError> {
    match requested {
        None => Ok(caller.principal.user_id.clone()),
        Some(subject) if subject == caller.principal.user_id => Ok(subject.to_owned()),
        Some(subject) if !crate::auth::valid_id(subject) => {
            Err(ApiError::validation("subject_id is not a valid id"))
        }
        Some(subject) if caller.has_scope(any_scope) => Ok(subject.to_owned()),
        Some(_) => Err(ApiError::forbidden(format!(
            "another subject's licenses need the scope `{any_scope}`"
        ))),
    }
}

/// May the subject perform the action on the resource now? Always 200 with `allowed` and, when
/// not, a `violation_code`. Every check is logged in `authorization_logs`.
#[utoipa::path(get, path = "/api/v1/licenses/check", tag = "licenses", security(("bearer" = [])),
    params(CheckQuery),
    responses(
        (status = 200, body = LicenseCheck),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<CheckQuery>,
) -> ApiResult<Json<LicenseCheck>> {
    let subject = subject_for(&caller, query.subject_id.as_deref(), "licenses:check:any")?;
    let action_ok = (1..=64).contains(&query.action.len())
        && query
            .action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-:".contains(&b));
    if query.resource.is_empty() || query.resource.len() > 255 || !action_ok {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "resource (1-255 bytes) and action (1-64 of a-z 0-9 _ . - :) are required",
        ));
    }
    let (resource, action) = (query.resource.as_str(), query.action.as_str());
    let (decision, cache) = match state.license_cache.lookup(&subject, resource, action).await {
        Lookup::Hit(check) => (check, "hit"),
        lookup => {
            let (check, boundary) =
                domain::licenses::decide(&state.db, &subject, resource, action, Utc::now()).await?;
            if let Lookup::Miss(version) = lookup {
                state
                    .license_cache
                    .store((&subject, resource, action), version, &check, boundary)
                    .await;
                (check, "miss")
            } else {
                (check, "off")
            }
        }
    };
    domain::licenses::log_check(
        &state.db,
        &caller.actor(),
        &subject,
        resource,
        action,
        &decision,
    )
    .await?;
    let outcome = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    metrics::counter!("license_checks_total", "outcome" => outcome, "cache" => cache).increment(1);
    if !decision.allowed {
        state.events.server(
            "license.denied",
            Some(&subject),
            serde_json::json!({
                "resource": resource, "action": action,
                "violation": decision.violation_code.map(|violation| violation.as_str()),
            }),
        );
    }
    Ok(Json(decision))
}

/// One license: its subject may read it; others need `licenses:check:any`.
#[utoipa::path(get, path = "/api/v1/licenses/{id}", tag = "licenses", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "License id")),
    responses(
        (status = 200, body = License),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<License>> {
    let mut conn = state
        .db
        .acquire()
        .await
        .map_err(crate::error::database_error)?;
    let license = domain::licenses::get(&mut conn, id).await?;
    if license.subject_id != caller.principal.user_id && !caller.has_scope("licenses:check:any") {
        return Err(ApiError::not_found("license not found"));
    }
    Ok(Json(license))
}

/// Uses quota atomically: of 100 concurrent consumers of a quota of 10, exactly 10 succeed; the
/// rest get 409 `quota_exhausted`. Consuming another subject's license needs
/// `licenses:consume:any`. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/licenses/{id}/consume", tag = "licenses", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "License id")),
    request_body = ConsumeLicense,
    responses(
        (status = 200, body = License),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn consume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Keyed { guard, body }: Keyed,
) -> Response {
    let actor = caller.actor();
    let caller_ref = &caller;
    let (response, consumed) = guard
        .run_tx(StatusCode::OK, |mut tx: Tx| async move {
            let result = async {
                let request: ConsumeLicense = crate::error::parse_json(&body)?;
                if !(1..=shared::limits::MAX_UNITS).contains(&request.units) {
                    return Err(ApiError::validation(format!(
                        "units must be between 1 and {}",
                        shared::limits::MAX_UNITS
                    )));
                }
                let license = domain::licenses::get(&mut tx, id).await?;
                if license.subject_id != caller_ref.principal.user_id
                    && !caller_ref.has_scope("licenses:consume:any")
                {
                    // Like reading it: another subject's license does not exist for this caller.
                    return Err(ApiError::not_found("license not found"));
                }
                domain::licenses::consume(&mut tx, &actor, id, request.units)
                    .await
                    .map_err(ApiError::from)
            }
            .await;
            (tx, result)
        })
        .await;
    if let Some(license) = consumed {
        state
            .license_cache
            .invalidate(&license.subject_id, &license.resource)
            .await;
    }
    response
}

/// Grants a license (admin). Logged, audited (`license.grant`). Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/licenses", tag = "licenses", security(("bearer" = [])),
    request_body = GrantLicense,
    responses(
        (status = 201, body = License),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    Keyed { guard, body }: Keyed,
) -> Response {
    let actor = caller.actor();
    let state_ref = &state;
    let (response, granted) = guard
        .run_tx(StatusCode::CREATED, |mut tx: Tx| async move {
            let result = async {
                let request: GrantLicense = crate::error::parse_json(&body)?;
                if !crate::auth::valid_id(&request.subject_id) {
                    return Err(ApiError::validation("subject_id is not a valid id"));
                }
                let grant = domain::licenses::Grant {
                    subject_id: request.subject_id,
                    resource: request.resource,
                    actions: request.actions,
                    quota_total: request.quota_total,
                    valid_from: request.valid_from.unwrap_or_else(Utc::now),
                    valid_until: request.valid_until,
                };
                domain::licenses::grant(&mut tx, &actor, grant)
                    .await
                    .map_err(ApiError::from)
            }
            .await;
            if let Err(error) = &result {
                crate::refusals::record(
                    state_ref,
                    &actor,
                    "license.grant",
                    ("license", None),
                    error,
                )
                .await;
            }
            (tx, result)
        })
        .await;
    if let Some(license) = granted {
        state
            .license_cache
            .invalidate(&license.subject_id, &license.resource)
            .await;
    }
    response
}

/// Suspends, resumes, revokes, or changes quota, validity or actions (admin). Logged in
/// `authorization_logs`, audited as `license.{suspend,resume,revoke,quota_change,update}`; every
/// node sees the change on its next check.
#[utoipa::path(patch, path = "/api/v1/licenses/{id}", tag = "licenses", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "License id")),
    request_body = UpdateLicense,
    responses(
        (status = 200, body = License),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(change): Json<UpdateLicense>,
) -> ApiResult<Json<License>> {
    let updated = async {
        let mut tx = state
            .db
            .begin()
            .await
            .map_err(crate::error::database_error)?;
        let license = domain::licenses::update(&mut tx, &caller.actor(), id, &change)
            .await
            .map_err(ApiError::from)?;
        tx.commit().await.map_err(crate::error::database_error)?;
        Ok::<_, ApiError>(license)
    }
    .await;
    let license = match updated {
        Ok(license) => license,
        Err(error) => {
            let target = ("license", Some(id.to_string()));
            let target = (target.0, target.1.as_deref());
            crate::refusals::record_for(&state, &caller, "license.update", target, &error).await;
            return Err(error);
        }
    };
    state
        .license_cache
        .invalidate(&license.subject_id, &license.resource)
        .await;
    Ok(Json(license))
}
