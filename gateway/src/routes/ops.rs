//! Operational routes outside `/api/v1` (metrics) and the OpenAPI document.

use axum::Extension;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The serialized OpenAPI document, built once when the router is assembled.
#[derive(Debug, Clone)]
pub struct OpenApiDocument(pub Arc<str>);

/// Prometheus text exposition of the node's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::http_metrics::render(),
    )
        .into_response()
}

/// This document: the OpenAPI 3.1 description of every route, generated from the code.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_document(Extension(document): Extension<OpenApiDocument>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.0.to_string(),
    )
        .into_response()
}
