//! Price rules as admins manage them: list, create, change. Every creation and change is written
//! with its history row (`price_rule_changes`) and its audit row in one transaction. A change
//! prices only what comes after it: tasks keep the estimate they were created with.

use crate::audit::{self, Actor, AuditEntry, Outcome};
use crate::{DomainError, DomainResult};
use shared::pricing::{
    CreatePriceRule, PriceRule, PriceTier, UpdatePriceRule, check_numbers, valid_rule_id,
    valid_task_type,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

const COLUMNS: &str = "r.id, r.task_type, r.base_credits, r.per_unit_credits, \
    r.peak_multiplier_bp, r.peak_start_hour, r.peak_end_hour, r.history_weight_bp, \
    (extract(epoch from r.history_window) / 86400)::int4 as window_days, r.active, \
    r.created_at, r.updated_at, \
    coalesce((select jsonb_agg(jsonb_build_object('min_units', t.min_units, \
                                                  'discount_bp', t.discount_bp) \
                               order by t.min_units) \
                from price_rule_tiers t where t.rule_id = r.id), '[]') as tiers";

fn rule_from_row(row: &PgRow) -> DomainResult<PriceRule> {
    let tiers: serde_json::Value = row.try_get("tiers")?;
    Ok(PriceRule {
        id: row.try_get("id")?,
        task_type: row.try_get("task_type")?,
        base_credits: row.try_get("base_credits")?,
        per_unit_credits: row.try_get("per_unit_credits")?,
        peak_multiplier_bp: row.try_get("peak_multiplier_bp")?,
        peak_start_hour: row.try_get("peak_start_hour")?,
        peak_end_hour: row.try_get("peak_end_hour")?,
        history_weight_bp: row.try_get("history_weight_bp")?,
        history_window_days: row.try_get("window_days")?,
        active: row.try_get("active")?,
        tiers: serde_json::from_value(tiers)
            .map_err(|error| DomainError::Database(sqlx::Error::Decode(error.into())))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Rules ordered by id, after `after` (the cursor), at most `limit`.
pub async fn list(
    pool: &PgPool,
    task_type: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> DomainResult<Vec<PriceRule>> {
    let rows = sqlx::query(&format!(
        "select {COLUMNS} from price_rules r \
          where ($1::text is null or r.task_type = $1) and ($2::text is null or r.id > $2) \
          order by r.id limit $3"
    ))
    .bind(task_type)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(rule_from_row).collect()
}

async fn load(conn: &mut PgConnection, id: &str, lock: bool) -> DomainResult<PriceRule> {
    let lock = if lock { "for update of r" } else { "" };
    let row = sqlx::query(&format!(
        "select {COLUMNS} from price_rules r where r.id = $1 {lock}"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(DomainError::NotFound { what: "price rule" })?;
    rule_from_row(&row)
}

/// One rule.
pub async fn get(pool: &PgPool, id: &str) -> DomainResult<PriceRule> {
    let mut conn = pool.acquire().await?;
    load(&mut conn, id, false).await
}

fn conflict_on_active(error: sqlx::Error, task_type: &str) -> DomainError {
    match crate::error::violated_constraint(&error) {
        Some("price_rules_active_type") => DomainError::Conflict(format!(
            "another rule of task type `{task_type}` is active; retire it first"
        )),
        Some("price_rules_pkey") => DomainError::Conflict("a rule with this id exists".into()),
        _ => DomainError::Database(error),
    }
}

/// Refuses, before writing anything (a failed statement would abort the transaction), a rule id
/// that exists or a second active rule for a task type.
async fn check_free(
    conn: &mut PgConnection,
    id: Option<&str>,
    active_for: Option<(&str, &str)>,
) -> DomainResult<()> {
    if let Some(id) = id {
        let taken: bool =
            sqlx::query_scalar("select exists (select 1 from price_rules where id = $1)")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
        if taken {
            return Err(DomainError::Conflict("a rule with this id exists".into()));
        }
    }
    if let Some((task_type, except)) = active_for {
        let other: Option<String> = sqlx::query_scalar(
            "select id from price_rules where task_type = $1 and active and id <> $2",
        )
        .bind(task_type)
        .bind(except)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(other) = other {
            return Err(DomainError::Conflict(format!(
                "rule `{other}` of task type `{task_type}` is active; retire it first"
            )));
        }
    }
    Ok(())
}

async fn write_tiers(conn: &mut PgConnection, id: &str, tiers: &[PriceTier]) -> DomainResult<()> {
    sqlx::query("delete from price_rule_tiers where rule_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let min_units: Vec<i64> = tiers.iter().map(|tier| tier.min_units).collect();
    let discounts: Vec<i32> = tiers.iter().map(|tier| tier.discount_bp).collect();
    sqlx::query(
        "insert into price_rule_tiers (rule_id, min_units, discount_bp) \
         select $1, m, d from unnest($2::int8[], $3::int4[]) as u(m, d)",
    )
    .bind(id)
    .bind(&min_units)
    .bind(&discounts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn record_change(
    conn: &mut PgConnection,
    actor: &Actor,
    change: &str,
    before: Option<&PriceRule>,
    after: &PriceRule,
) -> DomainResult<()> {
    let to_json = |rule: &PriceRule| serde_json::to_value(rule).unwrap_or_default();
    sqlx::query(
        "insert into price_rule_changes (rule_id, change, changed_by, request_id, before, after) \
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&after.id)
    .bind(change)
    .bind(&actor.id)
    .bind(&actor.request_id)
    .bind(before.map(to_json))
    .bind(to_json(after))
    .execute(&mut *conn)
    .await?;
    audit::record(
        conn,
        actor,
        AuditEntry {
            action: if change == "create" {
                "pricing.create"
            } else {
                "pricing.update"
            },
            target_type: Some("price_rule"),
            target_id: Some(&after.id),
            outcome: Outcome::Success,
            detail: Some(
                serde_json::json!({ "before": before.map(to_json), "after": to_json(after) }),
            ),
        },
    )
    .await?;
    Ok(())
}

/// Creates a rule with its tiers.
pub async fn create(
    conn: &mut PgConnection,
    actor: &Actor,
    rule: CreatePriceRule,
) -> DomainResult<PriceRule> {
    if !valid_rule_id(&rule.id) {
        return Err(DomainError::Validation(
            "id must be 1-64 of a-z 0-9 _ . - starting with a letter or digit".into(),
        ));
    }
    if !valid_task_type(&rule.task_type) {
        return Err(DomainError::Validation(
            "task_type must be 1-64 of a-z 0-9 _ . - starting with a letter".into(),
        ));
    }
    let tiers = rule.tiers.unwrap_or_default();
    let (peak, start, end) = (
        rule.peak_multiplier_bp.unwrap_or(10_000),
        rule.peak_start_hour.unwrap_or(0),
        rule.peak_end_hour.unwrap_or(0),
    );
    let (weight, days) = (
        rule.history_weight_bp.unwrap_or(5_000),
        rule.history_window_days.unwrap_or(30),
    );
    check_numbers(
        rule.base_credits,
        rule.per_unit_credits,
        peak,
        (start, end),
        weight,
        days,
        &tiers,
    )
    .map_err(DomainError::Validation)?;
    let active = rule.active.unwrap_or(true);
    let active_for = active.then_some((rule.task_type.as_str(), rule.id.as_str()));
    check_free(conn, Some(&rule.id), active_for).await?;
    sqlx::query(
        "insert into price_rules (id, task_type, base_credits, per_unit_credits, \
           peak_multiplier_bp, peak_start_hour, peak_end_hour, history_weight_bp, history_window, \
           active) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, make_interval(days => $9), $10)",
    )
    .bind(&rule.id)
    .bind(&rule.task_type)
    .bind(rule.base_credits)
    .bind(rule.per_unit_credits)
    .bind(peak)
    .bind(start)
    .bind(end)
    .bind(weight)
    .bind(days)
    .bind(active)
    .execute(&mut *conn)
    .await
    .map_err(|error| conflict_on_active(error, &rule.task_type))?;
    write_tiers(conn, &rule.id, &tiers).await?;
    let created = load(conn, &rule.id, false).await?;
    record_change(conn, actor, "create", None, &created).await?;
    Ok(created)
}

/// Changes a rule; the fields not sent keep their values.
pub async fn update(
    conn: &mut PgConnection,
    actor: &Actor,
    id: &str,
    change: UpdatePriceRule,
) -> DomainResult<PriceRule> {
    let before = load(conn, id, true).await?;
    let tiers = change.tiers.clone().unwrap_or_else(|| before.tiers.clone());
    let next = PriceRule {
        base_credits: change.base_credits.unwrap_or(before.base_credits),
        per_unit_credits: change.per_unit_credits.unwrap_or(before.per_unit_credits),
        peak_multiplier_bp: change
            .peak_multiplier_bp
            .unwrap_or(before.peak_multiplier_bp),
        peak_start_hour: change.peak_start_hour.unwrap_or(before.peak_start_hour),
        peak_end_hour: change.peak_end_hour.unwrap_or(before.peak_end_hour),
        history_weight_bp: change.history_weight_bp.unwrap_or(before.history_weight_bp),
        history_window_days: change
            .history_window_days
            .unwrap_or(before.history_window_days),
        active: change.active.unwrap_or(before.active),
        tiers,
        ..before.clone()
    };
    check_numbers(
        next.base_credits,
        next.per_unit_credits,
        next.peak_multiplier_bp,
        (next.peak_start_hour, next.peak_end_hour),
        next.history_weight_bp,
        next.history_window_days,
        &next.tiers,
    )
    .map_err(DomainError::Validation)?;
    if next.active && !before.active {
        check_free(conn, None, Some((&before.task_type, id))).await?;
    }
    sqlx::query(
        "update price_rules set base_credits = $2, per_unit_credits = $3, \
           peak_multiplier_bp = $4, peak_start_hour = $5, peak_end_hour = $6, \
           history_weight_bp = $7, history_window = make_interval(days => $8), active = $9 \
         where id = $1",
    )
    .bind(id)
    .bind(next.base_credits)
    .bind(next.per_unit_credits)
    .bind(next.peak_multiplier_bp)
    .bind(next.peak_start_hour)
    .bind(next.peak_end_hour)
    .bind(next.history_weight_bp)
    .bind(next.history_window_days)
    .bind(next.active)
    .execute(&mut *conn)
    .await
    .map_err(|error| conflict_on_active(error, &before.task_type))?;
    if change.tiers.is_some() {
        write_tiers(conn, id, &next.tiers).await?;
    }
    let after = load(conn, id, false).await?;
    record_change(conn, actor, "update", Some(&before), &after).await?;
    Ok(after)
}
