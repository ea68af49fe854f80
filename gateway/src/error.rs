//! The one API error type and the extractors that turn axum's rejections into it.
//!
//! An `ApiError` becomes a response carrying a [`ProblemDraft`] extension; the
//! [`crate::problem`] middleware renders it as RFC 9457 problem+json with the request id.

use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use domain::DomainError;
use serde::de::DeserializeOwned;
use shared::ErrorCode;

/// A problem waiting for its request id, attached to a response by `ApiError`.
#[derive(Debug, Clone)]
pub struct ProblemDraft {
    /// Stable machine code.
    pub code: ErrorCode,
    /// English explanation.
    pub detail: String,
    /// Optional members (`reason_code`, `errcode`, `reason`).
    pub extras: shared::problem::ProblemExtras,
}

/// Any failure of an API request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    detail: String,
    /// Optional problem members.
    extras: shared::problem::ProblemExtras,
    /// The cause, logged (never sent) for 5xx.
    source: Option<anyhow::Error>,
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extras: shared::problem::ProblemExtras::default(),
            source: None,
        }
    }

    /// With a top-level `reason_code` (risk refusals).
    pub fn with_reason_code(mut self, reason_code: impl Into<String>) -> Self {
        self.extras.reason_code = Some(reason_code.into());
        self
    }

    /// With WeChat's `errcode` (or WeChat Pay's `code`).
    pub fn with_errcode(mut self, errcode: impl Into<serde_json::Value>) -> Self {
        self.extras.errcode = Some(errcode.into());
        self
    }

    /// With a `reason` (why a WeChat answer was refused).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.extras.reason = Some(reason.into());
        self
    }

    /// The cause to log with the response (never sent to the client).
    pub fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The optional problem members.
    pub fn extras(&self) -> &shared::problem::ProblemExtras {
        &self.extras
    }

    /// 401 with one of the token codes.
    pub fn unauthorized(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, detail)
    }

    /// 422 `validation_failed`.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
            detail,
        )
    }

    /// 500 `internal`: the cause goes to the log, the client learns nothing internal.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "an unexpected error occurred; the request id locates it in the server log",
            )
        }
    }

    /// 503 `service_unavailable`.
    pub fn unavailable(detail: impl Into<String>, source: impl Into<anyhow::Error>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                detail,
            )
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The English explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The error a domain failure becomes, without consuming it (for stored responses).
    pub fn from_domain(error: &DomainError) -> Self {
        match error {
            DomainError::NotFound { what } => ApiError::not_found(format!("{what} not found")),
            DomainError::Validation(detail) => ApiError::validation(detail.clone()),
            DomainError::InsufficientCredits { .. } => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                ErrorCode::InsufficientCredits,
                error.to_string(),
            ),
            DomainError::RefundExceedsCharge { .. } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::RefundExceedsCharge,
                error.to_string(),
            ),
            DomainError::InvalidTransition(detail) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::InvalidTransition,
                detail.clone(),
            ),
            DomainError::Conflict(detail) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, detail.clone())
            }
            DomainError::AlreadyApplied(detail) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::OrderPaid, detail.clone())
            }
            DomainError::License(violation) => license_refusal(*violation),
            DomainError::Busy(detail) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                detail.clone(),
            ),
            DomainError::Unavailable(detail) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                detail.clone(),
            ),
            DomainError::Database(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "an unexpected error occurred; the request id locates it in the server log",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(source) = &self.source {
            if self.status.is_server_error() {
                tracing::error!(code = %self.code, error = ?source, "request failed");
            } else {
                tracing::warn!(code = %self.code, error = %source, "request rejected");
            }
        }
        let mut response = self.status.into_response();
        response.extensions_mut().insert(ProblemDraft {
            code: self.code,
            detail: self.detail,
            extras: self.extras,
        });
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Database(source) => database_error(source),
            other => ApiError::from_domain(&other),
        }
    }
}

/// The error a license refusal becomes: 404 when there is no license, 409 with the violation's
/// code otherwise.
pub fn license_refusal(violation: shared::licenses::Violation) -> ApiError {
    use shared::licenses::Violation;
    let code = match violation {
        Violation::LicenseNotFound => return ApiError::not_found("license not found"),
        Violation::QuotaExhausted => ErrorCode::QuotaExhausted,
        Violation::LicenseSuspended => ErrorCode::LicenseSuspended,
        Violation::LicenseRevoked => ErrorCode::LicenseRevoked,
        Violation::LicenseExpired => ErrorCode::LicenseExpired,
        Violation::LicenseNotYetValid => ErrorCode::LicenseNotYetValid,
        Violation::ActionNotPermitted => ErrorCode::Forbidden,
    };
    ApiError::new(
        StatusCode::CONFLICT,
        code,
        format!("the license refuses: {}", violation.as_str()),
    )
}

/// A database failure: 503 when PostgreSQL cannot be reached, 500 otherwise.
pub fn database_error(source: sqlx::Error) -> ApiError {
    match source {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            ApiError::unavailable("the database is unavailable; retry later", source)
        }
        other => ApiError::internal(other),
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPath,
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            rejection.body_text(),
        )
    }
}

/// A JSON body extractor whose rejections are problem+json, telling apart what `axum::Json`
/// lumps together: a body that is not JSON at all (400 `malformed_json`) and JSON of the wrong
/// shape: wrong type, missing field, unknown enum value (422 `invalid_body`, naming the field).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let code = match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                    _ => ErrorCode::HttpError,
                };
                ApiError::new(rejection.status(), code, rejection.body_text())
            })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body: 400 `malformed_json` when it is not JSON, 422 `invalid_body` (naming the
/// field) when it is JSON of the wrong shape: wrong type, missing field, unknown enum value.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    if !shared::limits::storable_json(&value) {
        return Err(invalid_text("the body"));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let location = if path == "." {
            "the body".to_owned()
        } else {
            format!("`{path}`")
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            format!("{location}: {}", error.inner()),
        )
    })
}

/// 422 `invalid_text`: `place` holds a NUL character, which no text column can store.
pub fn invalid_text(place: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidText,
        format!("{place} contains a NUL character (\\u0000 or %00), which cannot be stored"),
    )
}

/// 415 unless a non-empty body is declared JSON: for routes that read the raw bytes (to
/// fingerprint them for idempotency) before parsing.
pub fn require_json(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) || json_content_type(headers) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::UnsupportedMediaType,
        "expected a request with `Content-Type: application/json`",
    ))
}

fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections are problem+json.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` whose rejections are problem+json.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}
