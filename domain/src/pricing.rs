//! Dynamic pricing for `POST /credits/estimate`: the task type's active price rule (base, per
//! unit, volume tier, peak-hour multiplier) blended with the actual cost per unit of recently
//! completed tasks of the type (median; p90 bounds the high end). Integer arithmetic throughout:
//! per-unit prices in thousandths of a credit, factors in basis points, results rounded up.

use crate::{DomainError, DomainResult};
use chrono::{DateTime, Timelike, Utc};
use shared::credits::{Estimate, EstimateLine};
use sqlx::{PgPool, Row};

/// Fewer completed tasks than this and history is ignored (too few to trust).
pub const MIN_SAMPLES: i64 = 5;
const BP: i128 = 10_000;
const MILLI: i128 = 1_000;

/// A price rule as stored.
#[derive(Debug, Clone)]
struct Rule {
    id: String,
    base: i64,
    per_unit: i64,
    peak_multiplier_bp: i32,
    peak_start: i16,
    peak_end: i16,
    history_weight_bp: i32,
    window_seconds: f64,
}

/// What recent completed tasks cost per unit, in thousandths of a credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Completed tasks in the window.
    pub samples: i64,
    /// Median cost per unit (milli-credits).
    pub median_milli: i64,
    /// 90th percentile cost per unit (milli-credits).
    pub p90_milli: i64,
}

/// Whether `hour` (UTC) falls in the peak window [start, end), which may wrap midnight.
pub fn in_peak(hour: u32, start: i16, end: i16) -> bool {
    let (hour, start, end) = (hour as i16, start, end);
    match start.cmp(&end) {
        std::cmp::Ordering::Equal => false,
        std::cmp::Ordering::Less => start <= hour && hour < end,
        std::cmp::Ordering::Greater => hour >= start || hour < end,
    }
}

fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    (numerator + denominator - 1).div_euclid(denominator)
}

/// Estimates `units` of `task_type` as of `at`.
pub async fn estimate(
    pool: &PgPool,
    task_type: &str,
    units: i64,
    at: DateTime<Utc>,
) -> DomainResult<Estimate> {
    let row = sqlx::query(
        "select id, base_credits, per_unit_credits, peak_multiplier_bp, peak_start_hour, \
                peak_end_hour, history_weight_bp, extract(epoch from history_window)::float8 as window \
           from price_rules where task_type = $1 and active",
    )
    .bind(task_type)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| DomainError::Validation(format!("no active price rule for task type `{task_type}`")))?;
    let rule = Rule {
        id: row.get("id"),
        base: row.get("base_credits"),
        per_unit: row.get("per_unit_credits"),
        peak_multiplier_bp: row.get("peak_multiplier_bp"),
        peak_start: row.get("peak_start_hour"),
        peak_end: row.get("peak_end_hour"),
        history_weight_bp: row.get("history_weight_bp"),
        window_seconds: row.get("window"),
    };
    let discount_bp: i32 = sqlx::query_scalar(
        "select discount_bp from price_rule_tiers where rule_id = $1 and min_units <= $2 \
         order by min_units desc limit 1",
    )
    .bind(&rule.id)
    .bind(units)
    .fetch_optional(pool)
    .await?
    .unwrap_or(0);
    let history = history(pool, task_type, at, rule.window_seconds).await?;
    price(&rule, discount_bp, history, units, at)
}

async fn history(
    pool: &PgPool,
    task_type: &str,
    at: DateTime<Utc>,
    window_seconds: f64,
) -> DomainResult<History> {
    let row = sqlx::query(
        "select count(*) as samples, \
                percentile_disc(0.5) within group (order by milli) as median, \
                percentile_disc(0.9) within group (order by milli) as p90 \
           from (select least(floor(actual_cost::numeric * 1000 / actual_units), $4)::int8 \
                        as milli from tasks \
                  where task_type = $1 and status = 'succeeded' and actual_units > 0 \
                    and finished_at <= $2 and finished_at > $2 - make_interval(secs => $3)) recent",
    )
    .bind(task_type)
    .bind(at)
    .bind(window_seconds)
    .bind(i64::MAX / 4)
    .fetch_one(pool)
    .await?;
    Ok(History {
        samples: row.get("samples"),
        median_milli: row.get::<Option<i64>, _>("median").unwrap_or(0),
        p90_milli: row.get::<Option<i64>, _>("p90").unwrap_or(0),
    })
}

fn price(
    rule: &Rule,
    discount_bp: i32,
    history: History,
    units: i64,
    at: DateTime<Utc>,
) -> DomainResult<Estimate> {
    let units_i = i128::from(units);
    let rule_milli = i128::from(rule.per_unit) * MILLI * (BP - i128::from(discount_bp)) / BP;
    let use_history = history.samples >= MIN_SAMPLES;
    let weight = if use_history {
        i128::from(rule.history_weight_bp)
    } else {
        0
    };
    let median = i128::from(history.median_milli);
    let blended_milli = (rule_milli * (BP - weight) + median * weight) / BP;
    let peak = in_peak(at.hour(), rule.peak_start, rule.peak_end);
    let multiplier = if peak {
        i128::from(rule.peak_multiplier_bp)
    } else {
        BP
    };
    // Every figure is checked against the largest amount instead of saturating: an estimate the
    // ledger could not hold is refused, never rounded to a wrong number.
    let too_large = || {
        DomainError::Validation(format!(
            "the estimate exceeds the largest amount, {}: order fewer units",
            shared::limits::MAX_AMOUNT
        ))
    };
    let credits = |value: i128| -> DomainResult<i64> {
        i64::try_from(value)
            .ok()
            .filter(|value| *value <= shared::limits::MAX_AMOUNT)
            .ok_or_else(too_large)
    };
    let total = |per_unit_milli: i128| -> DomainResult<i64> {
        let units_credits = ceil_div(per_unit_milli * units_i, MILLI);
        credits(ceil_div(
            (i128::from(rule.base) + units_credits) * multiplier,
            BP,
        ))
    };
    let estimated = total(blended_milli)?;
    let (low, high) = if use_history {
        (
            total(rule_milli.min(median))?,
            total(rule_milli.max(i128::from(history.p90_milli)))?,
        )
    } else {
        (estimated, estimated)
    };
    let units_credits = credits(ceil_div(blended_milli * units_i, MILLI))?;
    let mut breakdown = vec![
        EstimateLine {
            component: "base".into(),
            credits: rule.base,
            detail: format!("rule {}", rule.id),
        },
        EstimateLine {
            component: "units".into(),
            credits: units_credits,
            detail: format!("{units} units x {} credits/unit", milli_text(blended_milli)),
        },
    ];
    if discount_bp > 0 {
        breakdown.push(EstimateLine {
            component: "volume_discount".into(),
            credits: 0,
            detail: format!(
                "{}% off the rule's per-unit price from this volume",
                f64::from(discount_bp) / 100.0
            ),
        });
    }
    breakdown.push(EstimateLine {
        component: "history".into(),
        credits: 0,
        detail: if use_history {
            format!(
                "{} completed tasks: median {} and p90 {} credits/unit, weighted {}% against the rule's {}",
                history.samples,
                milli_text(median),
                milli_text(i128::from(history.p90_milli)),
                f64::from(rule.history_weight_bp) / 100.0,
                milli_text(rule_milli),
            )
        } else {
            format!("{} completed tasks (fewer than {MIN_SAMPLES}): rule price alone", history.samples)
        },
    });
    if peak {
        breakdown.push(EstimateLine {
            component: "peak".into(),
            credits: estimated - total(blended_milli * BP / multiplier.max(1))?.min(estimated),
            detail: format!(
                "peak hours {:02}:00-{:02}:00 UTC: x{}",
                rule.peak_start,
                rule.peak_end,
                f64::from(rule.peak_multiplier_bp) / 10_000.0
            ),
        });
    }
    Ok(Estimate {
        estimated_credits: estimated,
        low,
        high,
        breakdown,
        pricing_rule_id: rule.id.clone(),
        samples: if use_history { history.samples } else { 0 },
    })
}

fn milli_text(milli: i128) -> String {
    format!("{}.{:03}", milli / MILLI, (milli % MILLI).abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rule() -> Rule {
        Rule {
            id: "render-v1".into(),
            base: 10,
            per_unit: 4,
            peak_multiplier_bp: 15_000,
            peak_start: 18,
            peak_end: 22,
            history_weight_bp: 5_000,
            window_seconds: 30.0 * 86_400.0,
        }
    }

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    const NO_HISTORY: History = History {
        samples: 0,
        median_milli: 0,
        p90_milli: 0,
    };

    #[test]
    fn without_history_the_rule_alone_prices_the_task() {
        let estimate = price(&rule(), 0, NO_HISTORY, 100, noon()).expect("priced");
        assert_eq!(
            (
                estimate.estimated_credits,
                estimate.low,
                estimate.high,
                estimate.samples
            ),
            (410, 410, 410, 0)
        );
    }

    #[test]
    fn history_is_blended_with_the_rule_by_its_weight() {
        // Median 6 credits/unit, rule 4: half and half is 5 per unit.
        let history = History {
            samples: 9,
            median_milli: 6_000,
            p90_milli: 8_000,
        };
        let estimate = price(&rule(), 0, history, 100, noon()).expect("priced");
        assert_eq!(estimate.estimated_credits, 10 + 500);
        assert_eq!(estimate.low, 10 + 400);
        assert_eq!(estimate.high, 10 + 800);
        assert_eq!(estimate.samples, 9);
    }

    #[test]
    fn too_little_history_is_ignored() {
        let history = History {
            samples: MIN_SAMPLES - 1,
            median_milli: 99_000,
            p90_milli: 99_000,
        };
        assert_eq!(
            price(&rule(), 0, history, 100, noon())
                .expect("priced")
                .estimated_credits,
            410
        );
    }

    #[test]
    fn peak_hours_multiply_the_price_and_volume_tiers_discount_it() {
        let evening = Utc
            .with_ymd_and_hms(2026, 11, 24, 19, 30, 0)
            .single()
            .expect("valid time");
        assert_eq!(
            price(&rule(), 0, NO_HISTORY, 100, evening)
                .expect("priced")
                .estimated_credits,
            615
        );
        assert_eq!(
            price(&rule(), 2_500, NO_HISTORY, 100, noon())
                .expect("priced")
                .estimated_credits,
            310
        );
    }

    #[test]
    fn an_estimate_beyond_the_largest_amount_is_refused_not_saturated() {
        let mut rule = rule();
        rule.per_unit = shared::limits::MAX_PRICE;
        rule.peak_multiplier_bp = 100_000;
        let evening = Utc
            .with_ymd_and_hms(2026, 11, 24, 19, 0, 0)
            .single()
            .expect("valid time");
        let result = price(&rule, 0, NO_HISTORY, shared::limits::MAX_UNITS, evening);
        assert!(
            matches!(result, Err(DomainError::Validation(_))),
            "{result:?}"
        );
    }

    #[test]
    fn peak_windows_may_wrap_midnight() {
        assert!(
            in_peak(23, 22, 2) && in_peak(1, 22, 2) && !in_peak(2, 22, 2) && !in_peak(12, 22, 2)
        );
        assert!(!in_peak(5, 0, 0));
    }
}
