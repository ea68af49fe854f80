//! Request hygiene at the edge, before any handler: an `X-Request-Id` the node would not store
//! or echo is replaced, and a path or query carrying a NUL character (`%00`, which no text column
//! can store) is refused with 422 `invalid_text`.

use crate::error::invalid_text;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Longest `X-Request-Id` kept as sent.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether a client's request id may be kept: 1 to 128 visible ASCII characters.
pub fn acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_REQUEST_ID).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Drops an unacceptable `X-Request-Id` so the next layer assigns a fresh one.
pub async fn sanitize_request_id(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    let bad = headers
        .get_all(crate::problem::REQUEST_ID)
        .iter()
        .any(|value| !acceptable_request_id(value));
    if bad || headers.get_all(crate::problem::REQUEST_ID).iter().count() > 1 {
        headers.remove(crate::problem::REQUEST_ID);
    }
    next.run(request).await
}

/// Refuses a path or query holding an encoded NUL.
pub async fn refuse_nul(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let has_nul = |text: &str| {
        text.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    if has_nul(uri.path()) {
        return invalid_text("the path").into_response();
    }
    if uri.query().is_some_and(has_nul) {
        return invalid_text("the query").into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_short_and_visible() {
        assert!(acceptable_request_id(&HeaderValue::from_static("req-42")));
        assert!(acceptable_request_id(
            &HeaderValue::from_str(&"a".repeat(128)).expect("ok")
        ));
        for bad in ["", "has space", &"a".repeat(129)] {
            assert!(
                !acceptable_request_id(&HeaderValue::from_str(bad).expect("header")),
                "{bad:?}"
            );
        }
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").expect("header");
        assert!(!acceptable_request_id(&latin1));
    }
}
