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

/// The periodic jobs (each run by one node at a time): last run, outcome, duration, next run
/// (operators and admins).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Vec<crate::jobs::JobStatus>)))]
pub async fn jobs(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
) -> crate::error::ApiResult<crate::error::Json<Vec<crate::jobs::JobStatus>>> {
    let statuses = crate::jobs::statuses(&state.db)
        .await
        .map_err(crate::error::database_error)?;
    Ok(crate::error::Json(statuses))
}
