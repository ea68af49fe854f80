//! The seven roles a token can carry.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A role carried in a token's `roles` claim.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An end user of the platform.
    User,
    /// A user who publishes work on the platform.
    Creator,
    /// Support and operations staff: act on any user's tasks and credits.
    Operator,
    /// Finance staff: refunds, adjustments, reconciliation.
    Finance,
    /// Compliance: reads audit trails.
    Auditor,
    /// Everything.
    Admin,
    /// A backend service: posts task events, publishes, charges on behalf of users.
    Service,
}

impl Role {
    /// Every role, in the order the permission matrix lists them.
    pub const ALL: [Role; 7] = [
        Role::User,
        Role::Creator,
        Role::Operator,
        Role::Finance,
        Role::Auditor,
        Role::Admin,
        Role::Service,
    ];

    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Creator => "creator",
            Role::Operator => "operator",
            Role::Finance => "finance",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the seven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRoleError(pub String);

impl fmt::Display for ParseRoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role `{}` (expected one of user, creator, operator, finance, auditor, admin, \
             service)",
            self.0
        )
    }
}

impl std::error::Error for ParseRoleError {}

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| ParseRoleError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_name() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_string(&role).ok(),
                Some(format!("\"{role}\""))
            );
        }
    }

    #[test]
    fn an_unknown_role_name_is_rejected() {
        assert_eq!("root".parse::<Role>(), Err(ParseRoleError("root".into())));
    }
}
