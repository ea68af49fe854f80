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

/// The statistics, as one JSON document built by PostgreSQL:
/// `{creator_id, from, to, tasks: {queued, running, succeeded, failed, canceled, total},
/// success_rate, duration_seconds: {p50, p95}, credits: {spent, recharged}, daily: [{day,
/// tasks, succeeded, spent, recharged}], top_task_types: [{task_type, tasks, succeeded}]}`.
/// Tasks count by creation in the range; `success_rate` is succeeded / (succeeded + failed);
/// durations are of the tasks that finished; `spent` is what captures took (the actual cost)
/// plus charges minus refunds, `recharged` what recharges brought, by the day they happened.
const DASHBOARD: &str = "\
with accounts as (select id from credit_accounts where owner_id = $1), \
task_rows as ( \
  select status, task_type, created_at, finished_at from tasks \
   where owner_id = $1 and created_at >= $2 and created_at < $3), \
money as ( \
  select created_at as at, case when kind = 'charge' then -amount when kind = 'refund' then -amount else 0 end as spent, \
         case when kind = 'recharge' then amount else 0 end as recharged \
    from credit_ledger where account_id in (select id from accounts) \
     and kind in ('charge', 'refund', 'recharge') and created_at >= $2 and created_at < $3 \
  union all \
  select settled_at, captured_amount, 0 from credit_holds \
   where account_id in (select id from accounts) and status = 'captured' \
     and settled_at >= $2 and settled_at < $3), \
days as ( \
  select d::date as day from generate_series( \
    ($2 at time zone 'Asia/Shanghai')::date, \
    (($3 - interval '1 microsecond') at time zone 'Asia/Shanghai')::date, interval '1 day') d), \
daily_tasks as ( \
  select (created_at at time zone 'Asia/Shanghai')::date as day, count(*) as tasks, \
         count(*) filter (where status = 'succeeded') as succeeded from task_rows group by 1), \
daily_money as ( \
  select (at at time zone 'Asia/Shanghai')::date as day, sum(spent)::bigint as spent, \
         sum(recharged)::bigint as recharged from money group by 1) \
select jsonb_build_object( \
  'creator_id', $1, 'from', $2, 'to', $3, \
  'tasks', (select jsonb_build_object( \
      'queued', count(*) filter (where status = 'queued'), \
      'running', count(*) filter (where status = 'running'), \
      'succeeded', count(*) filter (where status = 'succeeded'), \
      'failed', count(*) filter (where status = 'failed'), \
      'canceled', count(*) filter (where status = 'canceled'), \
      'total', count(*)) from task_rows), \
  'success_rate', (select case when count(*) filter (where status in ('succeeded', 'failed')) = 0 then null \
      else round(count(*) filter (where status = 'succeeded')::numeric \
                 / count(*) filter (where status in ('succeeded', 'failed')), 4) end from task_rows), \
  'duration_seconds', (select jsonb_build_object( \
      'p50', percentile_cont(0.5) within group (order by extract(epoch from finished_at - created_at)), \
      'p95', percentile_cont(0.95) within group (order by extract(epoch from finished_at - created_at))) \
      from task_rows where finished_at is not null), \
  'credits', (select jsonb_build_object('spent', coalesce(sum(spent), 0)::bigint, \
      'recharged', coalesce(sum(recharged), 0)::bigint) from money), \
  'daily', (select coalesce(jsonb_agg(jsonb_build_object('day', days.day, \
      'tasks', coalesce(t.tasks, 0), 'succeeded', coalesce(t.succeeded, 0), \
      'spent', coalesce(m.spent, 0), 'recharged', coalesce(m.recharged, 0)) order by days.day), '[]') \
      from days left join daily_tasks t using (day) left join daily_money m using (day)), \
  'top_task_types', (select coalesce(jsonb_agg(x order by x.tasks desc, x.task_type), '[]') from ( \
      select task_type, count(*) as tasks, count(*) filter (where status = 'succeeded') as succeeded \
        from task_rows group by task_type order by count(*) desc, task_type limit 5) x))";

/// A creator's dashboard: tasks by state, success rate, task duration p50/p95, credits spent
/// (captures at their actual cost, plus charges, minus refunds) and recharged, a daily series in
/// Beijing days and the top task types. The creator itself, or operators and admins for any.
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
    if id != caller.principal.user_id && !caller.has_scope("dashboard:read:any") {
        return Err(ApiError::forbidden(
            "another creator's dashboard needs the scope `dashboard:read:any`",
        ));
    }
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or(to - chrono::Duration::days(30));
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
