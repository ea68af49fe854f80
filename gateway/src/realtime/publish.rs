//! `POST /api/v1/publish`: a backend service publishes an event into a channel.

use crate::error::{ApiError, ApiResult, Json};
use crate::state::AppState;
use axum::extract::State;
use hub::channel::Channel;
use serde::{Deserialize, Serialize};
use shared::Problem;

/// What to publish.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// `user:{id}` or `task:{id}`.
    pub channel: String,
    /// A JSON object `{type, ...}`; `ts` (Unix ms) is added when absent.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Where it landed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    /// The channel.
    pub channel: String,
    /// Its offset in the channel's stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Publishes an event to every subscriber of the channel (services and admins).
#[utoipa::path(post, path = "/api/v1/publish", tag = "realtime", security(("bearer" = [])),
    request_body = PublishRequest,
    responses(
        (status = 200, body = Published),
        (status = 503, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn publish(
    State(state): State<AppState>,
    Json(request): Json<PublishRequest>,
) -> ApiResult<Json<Published>> {
    let channel: Channel = request
        .channel
        .parse()
        .map_err(|error: hub::channel::ChannelError| ApiError::validation(error.to_string()))?;
    let serde_json::Value::Object(mut data) = request.data else {
        return Err(ApiError::validation("data must be a JSON object"));
    };
    if !data.get("type").is_some_and(serde_json::Value::is_string) {
        return Err(ApiError::validation(
            "data.type (a string such as `task.progress`) is required",
        ));
    }
    data.entry("ts")
        .or_insert_with(|| chrono::Utc::now().timestamp_millis().into());
    let name = channel.name();
    let published = state
        .realtime
        .broker
        .publish(&name, serde_json::Value::Object(data))
        .await
        .map_err(|error| {
            // The broker's (Redis's) words go to the log, not to the client.
            ApiError::unavailable("the broker cannot take a publication now; retry", error)
        })?;
    Ok(Json(Published {
        channel: name,
        offset: published.offset,
        epoch: published.epoch,
    }))
}
