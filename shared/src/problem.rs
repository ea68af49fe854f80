//! RFC 9457 problem details, as every error body of the API.

use crate::ErrorCode;
use serde::{Deserialize, Serialize};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object with the API's `code` and `request_id` members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:hub:problem:{code}`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short English summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// English explanation of this occurrence.
    pub detail: String,
    /// Stable machine code for front ends to translate.
    pub code: ErrorCode,
    /// The request id, also in the `X-Request-Id` header and the server log.
    pub request_id: String,
    /// Which risk rule refused a recharge (`risk_denied`, `risk_rate_limited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    /// WeChat's `errcode` (login) or `code` (WeChat Pay), with `wechat_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errcode: Option<serde_json::Value>,
    /// Why a WeChat answer was refused (`signature`), with `wechat_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The optional members a problem may carry beyond RFC 9457's and `code`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProblemExtras {
    /// See [`Problem::reason_code`].
    pub reason_code: Option<String>,
    /// See [`Problem::errcode`].
    pub errcode: Option<serde_json::Value>,
    /// See [`Problem::reason`].
    pub reason: Option<String>,
}

impl Problem {
    /// Builds a problem for `code` with the conventional `type` URI and title.
    pub fn new(status: u16, code: ErrorCode, detail: impl Into<String>, request_id: &str) -> Self {
        Self {
            type_: format!("urn:hub:problem:{code}"),
            title: code.title().to_owned(),
            status,
            detail: detail.into(),
            code,
            request_id: request_id.to_owned(),
            reason_code: None,
            errcode: None,
            reason: None,
        }
    }

    /// The problem with its optional members.
    pub fn with(mut self, extras: ProblemExtras) -> Self {
        self.reason_code = extras.reason_code;
        self.errcode = extras.errcode;
        self.reason = extras.reason;
        self
    }
}
