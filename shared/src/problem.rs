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
        }
    }
}
