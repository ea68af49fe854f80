//! `GET /api/v1/creators/{id}/dashboard`: a creator's tasks and money over a range, with a daily
//! series in Beijing days, answered from PostgreSQL with indexes (one round trip).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query, database_error};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::{ErrorCode, Problem};

/// `?from=&to=` (default: the last 30 days; at most 366 days).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DashboardQuery {
    /// From, RFC 3339 (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To, RFC 3339 (exclusive).
    pub to: Option<DateTime<Utc>>,
}

/// The statistics, as one JSON document built by PostgreSQL from the rollups
/// (`creator_task_daily`, `creator_duration_daily`, `account_money_daily`, maintained by
/// triggers): `{creator_id, from, to, tasks: {queued, running, succeeded, failed, canceled,
/// total}, success_rate, duration_seconds: {p50, p95}, credits: {spent, recharged}, daily: [{day,
/// tasks, succeeded, spent, recharged}], top_task_types: [{task_type, tasks, succeeded}]}`. The
/// range is taken in whole Beijing days; tasks count by the day they were created (in their status
/// now); `success_rate` is succeeded / (succeeded + failed); durations come from a histogram of
/// 2^(1/4) buckets (each figure within about 9 %); `spent` is captures at their actual cost plus
/// charges minus refunds, `recharged` what recharges brought, by the day they happened.
const DASHBOARD: &str = "\
with bounds as (select beijing_day($2) as first_day, beijing_day($3 - interval '1 microsecond') as last_day), \
accounts as (select id from credit_accounts where owner_id = $1), \
t as (select c.day, c.task_type, c.status, c.tasks from creator_task_daily c, bounds \
       where c.owner_id = $1 and c.day between bounds.first_day and bounds.last_day and c.tasks > 0), \
m as (select a.day, sum(a.spent)::bigint as spent, sum(a.recharged)::bigint as recharged \
        from account_money_daily a, bounds \
       where a.account_id in (select id from accounts) \
         and a.day between bounds.first_day and bounds.last_day group by a.day), \
h as (select d.bucket, sum(d.tasks) as tasks from creator_duration_daily d, bounds \
       where d.owner_id = $1 and d.day between bounds.first_day and bounds.last_day group by d.bucket), \
hc as (select bucket, sum(tasks) over (order by bucket) as cumulative, sum(tasks) over () as total from h), \
days as (select g::date as day from bounds, generate_series(bounds.first_day, bounds.last_day, interval '1 day') g) \
select jsonb_build_object( \
  'creator_id', $1, 'from', $2, 'to', $3, \
  'tasks', (select jsonb_build_object( \
      'queued', coalesce(sum(tasks) filter (where status = 'queued'), 0), \
      'running', coalesce(sum(tasks) filter (where status = 'running'), 0), \
      'succeeded', coalesce(sum(tasks) filter (where status = 'succeeded'), 0), \
      'failed', coalesce(sum(tasks) filter (where status = 'failed'), 0), \
      'canceled', coalesce(sum(tasks) filter (where status = 'canceled'), 0), \
      'total', coalesce(sum(tasks), 0)) from t), \
  'success_rate', (select case when coalesce(sum(tasks) filter (where status in ('succeeded', 'failed')), 0) = 0 then null \
      else round(sum(tasks) filter (where status = 'succeeded')::numeric \
                 / sum(tasks) filter (where status in ('succeeded', 'failed')), 4) end from t), \
  'duration_seconds', (select jsonb_build_object( \
      'p50', round((case when min(bucket) filter (where cumulative >= 0.5 * total) = 0 then 0.5 \
                    else power(2, (min(bucket) filter (where cumulative >= 0.5 * total) - 0.5) / 4.0) end)::numeric, 3), \
      'p95', round((case when min(bucket) filter (where cumulative >= 0.95 * total) = 0 then 0.5 \
                    else power(2, (min(bucket) filter (where cumulative >= 0.95 * total) - 0.5) / 4.0) end)::numeric, 3)) \
      from hc), \
  'credits', (select jsonb_build_object('spent', coalesce(sum(spent), 0)::bigint, \
      'recharged', coalesce(sum(recharged), 0)::bigint) from m), \
  'daily', (select coalesce(jsonb_agg(jsonb_build_object('day', days.day, \
      'tasks', coalesce(dt.tasks, 0), 'succeeded', coalesce(dt.succeeded, 0), \
      'spent', coalesce(m.spent, 0), 'recharged', coalesce(m.recharged, 0)) order by days.day), '[]') \
      from days \
      left join (select day, sum(tasks)::bigint as tasks, \
                        coalesce(sum(tasks) filter (where status = 'succeeded'), 0)::bigint as succeeded \
                   from t group by day) dt using (day) \
      left join m using (day)), \
  'top_task_types', (select coalesce(jsonb_agg(x order by x.tasks desc, x.task_type), '[]') from ( \
      select task_type, sum(tasks)::bigint as tasks, \
             coalesce(sum(tasks) filter (where status = 'succeeded'), 0)::bigint as succeeded \
        from t group by task_type order by sum(tasks) desc, task_type limit 5) x))";

/// A creator's dashboard: tasks by state, success rate, task duration p50/p95, credits spent
/// (captures at their actual cost, plus charges, minus refunds) and recharged, a daily series in
/// Beijing days and the top task types. The creator itself, or operators and admins for any
/// (another creator's reads as 404 without `dashboard:read:any`).
#[utoipa::path(get, path = "/api/v1/creators/{id}/dashboard", tag = "dashboard", security(("bearer" = [])),
    params(("id" = String, Path, description = "Creator (user) id"), DashboardQuery),
    responses(
        (status = 200, body = Object),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn dashboard(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<DashboardQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    if !crate::auth::valid_id(&id) {
        return Err(ApiError::not_found("creator not found"));
    }
    // Another creator's dashboard reads as missing without the any scope.
    if id != caller.principal.user_id && !caller.has_scope("dashboard:read:any") {
        return Err(ApiError::not_found("creator not found"));
    }
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or_else(|| {
        to.checked_sub_signed(chrono::Duration::days(30))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    if from >= to || (to - from).num_days() > 366 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "from must be before to, at most 366 days apart",
        ));
    }
    let exists: bool = sqlx::query_scalar("select exists (select 1 from users where id = $1)")
        .bind(&id)
        .fetch_one(&state.db)
        .await
        .map_err(database_error)?;
    if !exists {
        return Err(ApiError::not_found("creator not found"));
    }
    let started = std::time::Instant::now();
    let document: serde_json::Value = sqlx::query_scalar(DASHBOARD)
        .bind(&id)
        .bind(from)
        .bind(to)
        .fetch_one(&state.db)
        .await
        .map_err(database_error)?;
    metrics::histogram!("dashboard_query_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(document))
}
