//! `POST /api/v1/events` (product events from clients, registered in `docs/events.md`) and
//! `GET /api/v1/stats/events` (counts and distinct users per hour or Beijing day).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Query, database_error};
use crate::events::{EventRow, Source};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{ErrorCode, Problem};

/// One event as a client sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientEvent {
    /// A registered name (docs/events.md).
    #[schema(max_length = 64)]
    pub name: String,
    /// When it happened (at most 7 days ago, 5 minutes ahead).
    pub ts: DateTime<Utc>,
    /// The event's registered props.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub props: serde_json::Map<String, serde_json::Value>,
}

/// `POST /api/v1/events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// 1 to 100 events.
    pub events: Vec<ClientEvent>,
}

/// What became of a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsAccepted {
    /// Queued for storage.
    pub accepted: usize,
    /// Dropped because the queue was full (counted in `events_dropped_total`).
    pub dropped: usize,
}

/// Records product events (any authenticated caller). The whole batch is checked first: an
/// unknown name or prop is 422 and nothing is stored. Never waits for storage (202).
#[utoipa::path(post, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    request_body = EventBatch,
    responses(
        (status = 202, body = EventsAccepted),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Json(batch): Json<EventBatch>,
) -> ApiResult<(StatusCode, Json<EventsAccepted>)> {
    if batch.events.is_empty() || batch.events.len() > 100 {
        return Err(ApiError::validation("events holds 1 to 100 events"));
    }
    let now = Utc::now();
    for (index, event) in batch.events.iter().enumerate() {
        state
            .events
            .registry
            .check(&event.name, &event.props)
            .map_err(|why| ApiError::validation(format!("events[{index}]: {why}")))?;
        if event.ts < now - chrono::Duration::days(7)
            || event.ts > now + chrono::Duration::minutes(5)
        {
            return Err(ApiError::validation(format!(
                "events[{index}]: ts must be within the last 7 days"
            )));
        }
    }
    let total = batch.events.len();
    let accepted = batch
        .events
        .into_iter()
        .filter(|event| {
            state.events.offer(EventRow {
                name: event.name.clone(),
                user_id: Some(caller.principal.user_id.clone()),
                source: Source::Client,
                ts: event.ts,
                props: serde_json::Value::Object(event.props.clone()),
            })
        })
        .count();
    Ok((
        StatusCode::ACCEPTED,
        Json(EventsAccepted {
            accepted,
            dropped: total - accepted,
        }),
    ))
}

/// Bucket size of the statistics.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Hours.
    Hour,
    /// Beijing days.
    Day,
}

/// `?name=&from=&to=&interval=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only this event (all when absent).
    #[param(min_length = 1, max_length = 64)]
    pub name: Option<String>,
    /// From, RFC 3339 (default: 7 days ago).
    pub from: Option<DateTime<Utc>>,
    /// To, RFC 3339, exclusive (default: now).
    pub to: Option<DateTime<Utc>>,
    /// `hour` or `day` (default `day`).
    pub interval: Option<Interval>,
}

/// One bucket.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct EventBucket {
    /// The event.
    pub name: String,
    /// The bucket's start (Beijing time, `YYYY-MM-DDTHH:00:00+08:00`).
    pub bucket: String,
    /// Events.
    pub count: i64,
    /// Distinct users.
    pub users: i64,
}

/// Counts of events and of distinct users per hour or Beijing day (operators, admins).
#[utoipa::path(get, path = "/api/v1/stats/events", tag = "events", security(("bearer" = [])),
    params(StatsQuery),
    responses(
        (status = 200, body = Vec<EventBucket>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn stats(
    State(state): State<AppState>,
    Query(query): Query<StatsQuery>,
) -> ApiResult<Json<Vec<EventBucket>>> {
    if query
        .name
        .as_deref()
        .is_some_and(|name| name.is_empty() || name.len() > 64)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "name is 1 to 64 characters",
        ));
    }
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or_else(|| {
        to.checked_sub_signed(chrono::Duration::days(7))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    if from >= to || (to - from).num_days() > 400 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "from must be before to, at most 400 days apart",
        ));
    }
    let unit = match query.interval.unwrap_or(Interval::Day) {
        Interval::Hour => "hour",
        Interval::Day => "day",
    };
    let rows = sqlx::query_as::<_, EventBucket>(
        "select name, to_char(date_trunc($1, ts at time zone 'Asia/Shanghai'), \
                              'YYYY-MM-DD\"T\"HH24:MI:SS\"+08:00\"') as bucket, \
                count(*) as count, count(distinct user_id) as users \
           from product_events \
          where ts >= $2 and ts < $3 and ($4::text is null or name = $4) \
          group by 1, 2 order by 2, 1 limit 10000",
    )
    .bind(unit)
    .bind(from)
    .bind(to)
    .bind(&query.name)
    .fetch_all(&state.db)
    .await
    .map_err(database_error)?;
    Ok(Json(rows))
}
