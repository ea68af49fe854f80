//! Bodies of the `/pricing/rules` routes: price rules as admins manage them.

use crate::limits::{MAX_PRICE, MAX_UNITS};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most volume tiers a rule may have.
pub const MAX_TIERS: usize = 16;

/// A volume tier: from `min_units` on, the per-unit price is discounted by `discount_bp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTier {
    /// The tier applies from this many units on.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub min_units: i64,
    /// Discount on the per-unit price in basis points (500 = 5 %), at most 9000.
    #[schema(minimum = 0, maximum = 9000)]
    pub discount_bp: i32,
}

/// A price rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PriceRule {
    /// The rule's id, e.g. `render-v2`.
    pub id: String,
    /// The task type it prices.
    pub task_type: String,
    /// Credits per task.
    pub base_credits: i64,
    /// Credits per unit.
    pub per_unit_credits: i64,
    /// Peak-hour multiplier in basis points (10000 = x1.0).
    pub peak_multiplier_bp: i32,
    /// First peak hour (UTC).
    pub peak_start_hour: i16,
    /// Hour the peak ends (UTC, exclusive); equal to the start: no peak window.
    pub peak_end_hour: i16,
    /// Weight of the recent actual cost per unit against the rule, in basis points.
    pub history_weight_bp: i32,
    /// Days of completed tasks that inform estimates.
    pub history_window_days: i32,
    /// Whether it prices new estimates (one active rule per task type).
    pub active: bool,
    /// Volume tiers, by `min_units`.
    pub tiers: Vec<PriceTier>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /api/v1/pricing/rules`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePriceRule {
    /// 1-64 of `a-z 0-9 _ . -`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    pub id: String,
    /// 1-64 of `a-z 0-9 _ . -`, starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9_.-]{0,63}$")]
    pub task_type: String,
    /// Credits per task.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub base_credits: i64,
    /// Credits per unit.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub per_unit_credits: i64,
    /// Default 10000 (no peak surcharge); 10000 to 100000.
    #[schema(minimum = 10_000, maximum = 100_000)]
    pub peak_multiplier_bp: Option<i32>,
    /// Default 0.
    #[schema(minimum = 0, maximum = 23)]
    pub peak_start_hour: Option<i16>,
    /// Default 0.
    #[schema(minimum = 0, maximum = 23)]
    pub peak_end_hour: Option<i16>,
    /// Default 5000.
    #[schema(minimum = 0, maximum = 10_000)]
    pub history_weight_bp: Option<i32>,
    /// Default 30.
    #[schema(minimum = 1, maximum = 365)]
    pub history_window_days: Option<i32>,
    /// Default true.
    pub active: Option<bool>,
    /// Default none; at most 16, distinct `min_units`.
    #[schema(max_items = 16)]
    pub tiers: Option<Vec<PriceTier>>,
}

/// `PATCH /api/v1/pricing/rules/{id}`: only the fields sent change; `tiers` replaces the set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePriceRule {
    /// Credits per task.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub base_credits: Option<i64>,
    /// Credits per unit.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub per_unit_credits: Option<i64>,
    /// 10000 to 100000.
    #[schema(minimum = 10_000, maximum = 100_000)]
    pub peak_multiplier_bp: Option<i32>,
    /// 0 to 23.
    #[schema(minimum = 0, maximum = 23)]
    pub peak_start_hour: Option<i16>,
    /// 0 to 23.
    #[schema(minimum = 0, maximum = 23)]
    pub peak_end_hour: Option<i16>,
    /// 0 to 10000.
    #[schema(minimum = 0, maximum = 10_000)]
    pub history_weight_bp: Option<i32>,
    /// 1 to 365.
    #[schema(minimum = 1, maximum = 365)]
    pub history_window_days: Option<i32>,
    /// Activate (409 when another rule of the type is active) or retire the rule.
    pub active: Option<bool>,
    /// The new set of tiers (at most 16).
    #[schema(max_items = 16)]
    pub tiers: Option<Vec<PriceTier>>,
}

/// Why a rule's numbers are refused, if they are.
pub fn check_numbers(
    base: i64,
    per_unit: i64,
    peak_multiplier_bp: i32,
    hours: (i16, i16),
    history_weight_bp: i32,
    window_days: i32,
    tiers: &[PriceTier],
) -> Result<(), String> {
    if !(0..=MAX_PRICE).contains(&base) || !(0..=MAX_PRICE).contains(&per_unit) {
        return Err(format!(
            "base_credits and per_unit_credits must be between 0 and {MAX_PRICE}"
        ));
    }
    if !(10_000..=100_000).contains(&peak_multiplier_bp) {
        return Err("peak_multiplier_bp must be between 10000 and 100000".into());
    }
    if !(0..=23).contains(&hours.0) || !(0..=23).contains(&hours.1) {
        return Err("peak hours must be between 0 and 23".into());
    }
    if !(0..=10_000).contains(&history_weight_bp) {
        return Err("history_weight_bp must be between 0 and 10000".into());
    }
    if !(1..=365).contains(&window_days) {
        return Err("history_window_days must be between 1 and 365".into());
    }
    if tiers.len() > MAX_TIERS {
        return Err(format!("at most {MAX_TIERS} tiers"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for tier in tiers {
        if !(1..=MAX_UNITS).contains(&tier.min_units) || !(0..=9000).contains(&tier.discount_bp) {
            return Err(format!(
                "a tier needs min_units between 1 and {MAX_UNITS} and discount_bp between 0 and 9000"
            ));
        }
        if !seen.insert(tier.min_units) {
            return Err(format!("two tiers start at {} units", tier.min_units));
        }
    }
    Ok(())
}

/// Whether `id` may name a rule.
pub fn valid_rule_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Whether `task_type` may name a task type.
pub fn valid_task_type(task_type: &str) -> bool {
    valid_rule_id(task_type) && task_type.as_bytes()[0].is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_and_task_types_follow_their_patterns() {
        assert!(valid_rule_id("render-v2") && valid_rule_id("2d.fast_1"));
        assert!(valid_task_type("render") && !valid_task_type("2d"));
        for bad in ["", "Render", "a b", "x\0", &"a".repeat(65)] {
            assert!(!valid_rule_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn numbers_outside_their_ranges_and_duplicate_tiers_are_refused() {
        let tier = |min_units, discount_bp| PriceTier {
            min_units,
            discount_bp,
        };
        assert!(check_numbers(1, 2, 10_000, (0, 0), 5000, 30, &[tier(100, 500)]).is_ok());
        assert!(check_numbers(-1, 2, 10_000, (0, 0), 5000, 30, &[]).is_err());
        assert!(check_numbers(1, MAX_PRICE + 1, 10_000, (0, 0), 5000, 30, &[]).is_err());
        assert!(check_numbers(1, 2, 9_999, (0, 0), 5000, 30, &[]).is_err());
        assert!(check_numbers(1, 2, 10_000, (0, 24), 5000, 30, &[]).is_err());
        assert!(check_numbers(1, 2, 10_000, (0, 0), 5000, 0, &[]).is_err());
        assert!(check_numbers(1, 2, 10_000, (0, 0), 5000, 30, &[tier(5, 1), tier(5, 2)]).is_err());
        assert!(check_numbers(1, 2, 10_000, (0, 0), 5000, 30, &[tier(5, 9001)]).is_err());
    }
}
