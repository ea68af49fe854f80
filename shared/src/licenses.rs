//! Bodies of the `/licenses` routes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A license's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// In force (within its validity window).
    Active,
    /// Paused; can be resumed.
    Suspended,
    /// Ended for good.
    Revoked,
}

impl LicenseStatus {
    /// Database name.
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseStatus::Active => "active",
            LicenseStatus::Suspended => "suspended",
            LicenseStatus::Revoked => "revoked",
        }
    }

    /// Parses a database name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(LicenseStatus::Active),
            "suspended" => Some(LicenseStatus::Suspended),
            "revoked" => Some(LicenseStatus::Revoked),
            _ => None,
        }
    }
}

/// Why a license check or consumption was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Violation {
    /// The subject has no license for the resource.
    LicenseNotFound,
    /// `valid_from` is in the future.
    LicenseNotYetValid,
    /// `valid_until` has passed.
    LicenseExpired,
    /// Suspended.
    LicenseSuspended,
    /// Revoked.
    LicenseRevoked,
    /// The license does not grant the action.
    ActionNotPermitted,
    /// No quota left.
    QuotaExhausted,
}

impl Violation {
    /// Wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::LicenseNotFound => "license_not_found",
            Violation::LicenseNotYetValid => "license_not_yet_valid",
            Violation::LicenseExpired => "license_expired",
            Violation::LicenseSuspended => "license_suspended",
            Violation::LicenseRevoked => "license_revoked",
            Violation::ActionNotPermitted => "action_not_permitted",
            Violation::QuotaExhausted => "quota_exhausted",
        }
    }
}

/// A license: a grant to a subject over a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct License {
    /// License id.
    pub id: String,
    /// The user it is granted to.
    pub subject_id: String,
    /// What it covers, e.g. `model:portrait-v2`.
    pub resource: String,
    /// Actions it grants, e.g. `["generate", "download"]`.
    pub actions: Vec<String>,
    /// Total quota; null means unlimited.
    pub quota_total: Option<i64>,
    /// Quota used so far.
    pub quota_used: i64,
    /// Start of validity.
    pub valid_from: DateTime<Utc>,
    /// End of validity; null means open-ended.
    pub valid_until: Option<DateTime<Utc>>,
    /// active, suspended or revoked.
    pub status: LicenseStatus,
    /// Who granted it.
    pub granted_by: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The answer of `GET /licenses/check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LicenseCheck {
    /// Whether the subject may perform the action now.
    pub allowed: bool,
    /// The license that decided (null when none exists).
    pub license_id: Option<String>,
    /// Quota left on that license (null: unlimited or no license).
    pub remaining_quota: Option<i64>,
    /// End of that license's validity.
    pub valid_until: Option<DateTime<Utc>>,
    /// Why not, when not allowed.
    pub violation_code: Option<Violation>,
}

/// An action name: 1-64 of lowercase letters, digits and `_ . - :` (the schema of an item of
/// `actions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z0-9_.:-]{1,64}$")]
pub struct ActionName(pub String);

/// `POST /licenses`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantLicense {
    /// The user granted to.
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub subject_id: String,
    /// The resource, 1-255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    pub resource: String,
    /// Actions granted: 1-32 names of lowercase letters, digits and `_ . - :`.
    #[schema(value_type = Vec<ActionName>, min_items = 1, max_items = 32)]
    pub actions: Vec<String>,
    /// Total quota, 0 to 10^12; omitted or null means unlimited.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub quota_total: Option<i64>,
    /// Start of validity (default now).
    pub valid_from: Option<DateTime<Utc>>,
    /// End of validity (default open-ended).
    pub valid_until: Option<DateTime<Utc>>,
}

/// `PATCH /licenses/{id}`: suspend, resume, revoke, change quota or validity. Absent fields are
/// unchanged; `quota_total: null` makes the quota unlimited.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLicense {
    /// New status (`revoked` is final).
    pub status: Option<LicenseStatus>,
    /// New total quota (never below what is used); null for unlimited.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub quota_total: Option<Option<i64>>,
    /// New end of validity; null for open-ended.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub valid_until: Option<Option<DateTime<Utc>>>,
    /// New action list (1-32 names).
    #[schema(value_type = Option<Vec<ActionName>>, min_items = 1, max_items = 32)]
    pub actions: Option<Vec<String>>,
}

/// `POST /licenses/{id}/consume`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeLicense {
    /// Quota units to use, 1 to 10^9.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub units: i64,
}

/// Tells "field absent" (outer `None`) from "field null" (`Some(None)`).
fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_quota_is_unchanged_and_a_null_one_is_unlimited() {
        let absent: UpdateLicense = serde_json::from_str("{}").expect("json");
        let null: UpdateLicense = serde_json::from_str(r#"{"quota_total":null}"#).expect("json");
        let set: UpdateLicense = serde_json::from_str(r#"{"quota_total":5}"#).expect("json");
        assert_eq!(
            (absent.quota_total, null.quota_total, set.quota_total),
            (None, Some(None), Some(Some(5)))
        );
    }
}
