//! Stable machine codes carried in every problem+json body. Front ends translate them; the
//! English `title` and `detail` are for people reading logs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable snake_case error code. Never renamed once released: clients match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // --- authentication and authorization
    /// No bearer token was sent.
    TokenMissing,
    /// The token is malformed, badly signed, or carries invalid claims.
    TokenInvalid,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The caller's roles lack the scope the route needs.
    Forbidden,
    // --- request shape
    /// The body is not valid JSON.
    MalformedJson,
    /// The JSON is well formed but a field is missing, of the wrong type, or out of range.
    InvalidBody,
    /// A field failed a business validation rule.
    ValidationFailed,
    /// Text PostgreSQL cannot store (a NUL character) in a body, path or query.
    InvalidText,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The body exceeds the configured size limit.
    PayloadTooLarge,
    /// A path parameter could not be parsed.
    InvalidPath,
    /// A query parameter is missing, malformed or out of range.
    InvalidQuery,
    /// A header is malformed.
    InvalidHeader,
    /// No route matches the path.
    RouteNotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The resource does not exist (or the caller may not know it does).
    NotFound,
    /// The request took longer than the server's request timeout.
    RequestTimeout,
    // --- idempotency
    /// The route requires an `Idempotency-Key` header.
    IdempotencyKeyRequired,
    /// The key was used before with another body.
    IdempotencyKeyReused,
    /// The first request with this key is still being processed.
    IdempotencyKeyInFlight,
    // --- credits, licenses, tasks
    /// The account's available balance does not cover the amount.
    InsufficientCredits,
    /// Refunds of a charge would exceed the charge.
    RefundExceedsCharge,
    /// The task's state machine does not allow this transition.
    InvalidTransition,
    /// The license has no quota left for the requested units.
    QuotaExhausted,
    /// The license is suspended.
    LicenseSuspended,
    /// The license is revoked.
    LicenseRevoked,
    /// The license's validity has ended.
    LicenseExpired,
    /// The license's validity has not started.
    LicenseNotYetValid,
    /// The request conflicts with the current state of the resource.
    Conflict,
    // --- payments and WeChat login
    /// WeChat Pay / WeChat login is not configured on this node.
    PaymentsUnavailable,
    /// WeChat refused a call or answered something the hub cannot trust (`errcode` or `reason`
    /// say which).
    WechatError,
    /// The QR login's state is unknown, used, expired or belongs to another browser.
    LoginStateInvalid,
    /// The user declined the WeChat login.
    WechatLoginDenied,
    /// The order is paid: it cannot be closed.
    OrderPaid,
    /// A risk rule refused the recharge (`reason_code` says which).
    RiskDenied,
    /// Too many recharges in a short time (`reason_code` says which rule).
    RiskRateLimited,
    // --- server side
    /// Too many requests: retry later.
    TooManyRequests,
    /// A dependency (PostgreSQL, Redis) is unavailable or the node is draining.
    ServiceUnavailable,
    /// An unexpected failure; details are in the server log under the request id.
    Internal,
    /// Any other HTTP error the framework produced.
    HttpError,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TokenMissing => "token_missing",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::InvalidText => "invalid_text",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidHeader => "invalid_header",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::IdempotencyKeyRequired => "idempotency_key_required",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::RefundExceedsCharge => "refund_exceeds_charge",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::QuotaExhausted => "quota_exhausted",
            ErrorCode::LicenseSuspended => "license_suspended",
            ErrorCode::LicenseRevoked => "license_revoked",
            ErrorCode::LicenseExpired => "license_expired",
            ErrorCode::LicenseNotYetValid => "license_not_yet_valid",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PaymentsUnavailable => "payments_unavailable",
            ErrorCode::WechatError => "wechat_error",
            ErrorCode::LoginStateInvalid => "login_state_invalid",
            ErrorCode::WechatLoginDenied => "wechat_login_denied",
            ErrorCode::OrderPaid => "order_paid",
            ErrorCode::RiskDenied => "risk_denied",
            ErrorCode::RiskRateLimited => "risk_rate_limited",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::HttpError => "http_error",
        }
    }

    /// A short English title for the code (RFC 9457 `title`).
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::TokenMissing => "Authentication required",
            ErrorCode::TokenInvalid => "Invalid token",
            ErrorCode::TokenExpired => "Token expired",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::MalformedJson => "Malformed JSON",
            ErrorCode::InvalidBody => "Invalid request body",
            ErrorCode::ValidationFailed => "Validation failed",
            ErrorCode::InvalidText => "Invalid text",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::InvalidPath => "Invalid path parameter",
            ErrorCode::InvalidQuery => "Invalid query parameter",
            ErrorCode::InvalidHeader => "Invalid header",
            ErrorCode::RouteNotFound => "Route not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::NotFound => "Not found",
            ErrorCode::RequestTimeout => "Request timeout",
            ErrorCode::IdempotencyKeyRequired => "Idempotency key required",
            ErrorCode::IdempotencyKeyReused => "Idempotency key reused",
            ErrorCode::IdempotencyKeyInFlight => "Idempotency key in flight",
            ErrorCode::InsufficientCredits => "Insufficient credits",
            ErrorCode::RefundExceedsCharge => "Refund exceeds charge",
            ErrorCode::InvalidTransition => "Invalid transition",
            ErrorCode::QuotaExhausted => "Quota exhausted",
            ErrorCode::LicenseSuspended => "License suspended",
            ErrorCode::LicenseRevoked => "License revoked",
            ErrorCode::LicenseExpired => "License expired",
            ErrorCode::LicenseNotYetValid => "License not yet valid",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::PaymentsUnavailable => "Payments unavailable",
            ErrorCode::WechatError => "WeChat error",
            ErrorCode::LoginStateInvalid => "Login state invalid",
            ErrorCode::WechatLoginDenied => "WeChat login denied",
            ErrorCode::OrderPaid => "Order paid",
            ErrorCode::RiskDenied => "Recharge refused by risk control",
            ErrorCode::RiskRateLimited => "Recharge rate limited",
            ErrorCode::TooManyRequests => "Too many requests",
            ErrorCode::ServiceUnavailable => "Service unavailable",
            ErrorCode::Internal => "Internal error",
            ErrorCode::HttpError => "HTTP error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_serde_name() {
        for code in [
            ErrorCode::TokenMissing,
            ErrorCode::IdempotencyKeyInFlight,
            ErrorCode::InsufficientCredits,
            ErrorCode::HttpError,
            ErrorCode::PaymentsUnavailable,
            ErrorCode::RiskRateLimited,
        ] {
            assert_eq!(serde_json::to_value(code).ok(), Some(code.as_str().into()));
        }
    }
}
