//! The last word on every error response: renders `ApiError`s as problem+json with the request
//! id, and turns any other error response (framework rejections, timeouts, panics, unknown routes,
//! wrong methods) into one too, so no client ever sees a plain-text or empty error body.

use crate::error::ProblemDraft;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::problem::PROBLEM_JSON;
use shared::{ErrorCode, Problem};

/// The request header carrying the request id (set by `SetRequestIdLayer` before this runs).
pub const REQUEST_ID: &str = "x-request-id";

/// Middleware: finalizes error responses as problem+json.
pub async fn finalize(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let response = next.run(request).await;
    finalize_response(response, &request_id)
}

/// A response extension: this error response's body is the contract of someone else (WeChat's
/// `{"code":"FAIL"}`) and is sent as it is, not as problem+json.
#[derive(Debug, Clone, Copy)]
pub struct Verbatim;

/// Seconds a client is told to wait (`Retry-After`) before retrying a 503 or 429.
pub const RETRY_AFTER_SECS: &str = "1";

fn finalize_response(mut response: Response, request_id: &str) -> Response {
    let status = response.status();
    if response.extensions().get::<Verbatim>().is_some() {
        return response;
    }
    // A refusal that will pass by itself says when to come back.
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if let Some(draft) = response.extensions_mut().remove::<ProblemDraft>() {
        return render(
            response,
            Problem::new(status.as_u16(), draft.code, draft.detail, request_id).with(draft.extras),
        );
    }
    let already_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || already_problem {
        return response;
    }
    let (code, detail) = generic(status);
    render(
        response,
        Problem::new(status.as_u16(), code, detail, request_id),
    )
}

/// Code and detail for an error response produced outside the handlers.
fn generic(status: StatusCode) -> (ErrorCode, &'static str) {
    match status {
        StatusCode::NOT_FOUND => (ErrorCode::RouteNotFound, "no route matches this path"),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this route does not accept this method; see `Allow`",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            ErrorCode::RequestTimeout,
            "the request took longer than the server allows",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "the request body exceeds the size limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            ErrorCode::UnsupportedMediaType,
            "the request body must be application/json",
        ),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::TooManyRequests, "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => (
            ErrorCode::ServiceUnavailable,
            "the service is unavailable; retry later",
        ),
        status if status.is_server_error() => (
            ErrorCode::Internal,
            "an unexpected error occurred; the request id locates it in the server log",
        ),
        _ => (ErrorCode::HttpError, "the request could not be handled"),
    }
}

fn render(response: Response, problem: Problem) -> Response {
    let (mut parts, _) = response.into_parts();
    let body = match serde_json::to_vec(&problem) {
        Ok(body) => body,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn problem_of(response: Response) -> (StatusCode, String, Problem) {
        let response = finalize_response(response, "req-1");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            content_type,
            serde_json::from_slice(&body).expect("problem json"),
        )
    }

    #[tokio::test]
    async fn a_bare_timeout_becomes_a_request_timeout_problem() {
        let (status, content_type, problem) =
            problem_of(StatusCode::REQUEST_TIMEOUT.into_response()).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(content_type, PROBLEM_JSON);
        assert_eq!(
            (problem.code, problem.request_id.as_str()),
            (ErrorCode::RequestTimeout, "req-1")
        );
    }

    #[tokio::test]
    async fn a_plain_text_500_hides_its_body_behind_an_internal_problem() {
        let response = (StatusCode::INTERNAL_SERVER_ERROR, "panic: secret detail").into_response();
        let (_, _, problem) = problem_of(response).await;
        assert_eq!(problem.code, ErrorCode::Internal);
        assert!(!problem.detail.contains("secret"));
    }

    #[tokio::test]
    async fn a_success_response_is_left_alone() {
        let response = finalize_response((StatusCode::OK, "fine").into_response(), "req-1");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(&body[..], b"fine");
    }
}
