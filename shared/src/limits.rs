//! The documented bounds of every integer and text input of the API. The gateway enforces them at
//! the edge (422 with a stable code) and the domain relies on them, so money arithmetic stays far
//! from `i64` overflow: the largest accepted amount times the largest accepted units still fits.

/// Largest amount one money operation may move (charge, refund, adjustment, recharge, hold,
/// actual cost of a task).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Largest balance an account may reach through credits (refunds, grants, recharges). Far below
/// `i64::MAX`, so balances, holds and debts can be summed without overflow.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000;

/// Largest `units` of a task or an estimate, and of one license consumption.
pub const MAX_UNITS: i64 = 1_000_000_000;

/// Largest `actual_units` a task may report (it may use more than it ordered, within this).
pub const MAX_ACTUAL_UNITS: i64 = 1_000_000_000;

/// Largest `quota_total` of a license.
pub const MAX_QUOTA: i64 = 1_000_000_000_000;

/// Largest credits of a price rule's base or per-unit price.
pub const MAX_PRICE: i64 = 1_000_000;

/// Largest page size of a listing.
pub const MAX_PAGE: u32 = 500;

/// Whether `text` can be stored by PostgreSQL: no NUL character (a `text` column refuses it, and
/// so does `jsonb` in a string).
pub fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Whether every string (keys included) of a JSON value is [`storable`].
pub fn storable_json(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => storable(text),
        serde_json::Value::Array(items) => items.iter().all(storable_json),
        serde_json::Value::Object(map) => map
            .iter()
            .all(|(key, value)| storable(key) && storable_json(value)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_price_times_the_largest_units_fits_in_i64() {
        // A price rule's per-unit price times the units, with a x10 peak multiplier.
        assert!(
            MAX_PRICE
                .checked_mul(MAX_UNITS)
                .and_then(|cost| cost.checked_mul(10))
                .is_some()
        );
        // Scaling an estimate by actual units needs i128, which the domain uses.
        assert!(MAX_AMOUNT.checked_mul(MAX_ACTUAL_UNITS).is_none());
        // Balances, holds and debts add up without overflow.
        assert!(MAX_BALANCE.checked_mul(8).is_some());
    }

    #[test]
    fn nul_characters_are_not_storable_anywhere_in_json() {
        assert!(storable("plain ✓"));
        assert!(!storable("a\0b"));
        let nested = serde_json::json!({"a": [1, {"b": "x\u{0}"}]});
        assert!(!storable_json(&nested));
        assert!(!storable_json(&serde_json::json!({"k\u{0}": 1})));
        assert!(storable_json(
            &serde_json::json!({"k": [true, null, 2.5, "ok"]})
        ));
    }
}
