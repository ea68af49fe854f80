//! Bodies of `GET /sessions/me` and `PUT /sessions/me/theme`.

use crate::Role;
use serde::{Deserialize, Serialize};

/// Light, dark, or follow the operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThemeMode {
    /// Light backgrounds.
    Light,
    /// Dark backgrounds.
    Dark,
    /// Follow the operating system's preference.
    System,
}

/// How much the front end packs on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Density {
    /// Roomy layout for end users.
    Comfortable,
    /// Dense tables for back-office staff.
    Compact,
}

/// A front-end theme preference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    /// Light, dark or system.
    pub mode: ThemeMode,
    /// A palette name (`ocean`, `creator`, `console`: lowercase letters, digits and dashes, at
    /// most 32) or a `#rrggbb` colour.
    pub accent: String,
    /// Comfortable or compact.
    pub density: Density,
}

impl Theme {
    /// Why `accent` is not acceptable, if it is not.
    pub fn accent_error(&self) -> Option<&'static str> {
        let accent = self.accent.as_bytes();
        let hex = accent.len() == 7
            && accent[0] == b'#'
            && accent[1..]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        let palette = !accent.is_empty()
            && accent.len() <= 32
            && accent[0].is_ascii_lowercase()
            && accent
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        (!hex && !palette).then_some(
            "accent must be a palette name (lowercase letters, digits and dashes, starting with a \
             letter, at most 32) or a lowercase #rrggbb colour",
        )
    }
}

/// Credit balances of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Balance {
    /// Spendable credits.
    pub available: i64,
    /// Credits reserved by open holds.
    pub held: i64,
    /// available + held.
    pub total: i64,
    /// Shortfall of a supplementary deduction, repaid by the next credit.
    pub debt: i64,
}

/// The caller's session: who they are, what they may do, how the front end should look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionMe {
    /// The token's `sub`.
    pub user_id: String,
    /// The caller's credit account; null for a service.
    pub account_id: Option<String>,
    /// Name shown in the front end.
    pub display_name: String,
    /// Roles carried by the token.
    pub roles: Vec<Role>,
    /// Scopes those roles grant, from the permission matrix.
    pub scopes: Vec<String>,
    /// The stored preference, or the role-based default.
    pub theme: Theme,
    /// Whether `theme` is the role-based default (nothing stored yet).
    pub theme_is_default: bool,
    /// Latest balance of the account; null for a service.
    pub balance: Option<Balance>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theme(accent: &str) -> Theme {
        Theme {
            mode: ThemeMode::Dark,
            accent: accent.into(),
            density: Density::Compact,
        }
    }

    #[test]
    fn palette_names_and_hex_colours_are_accepted() {
        for accent in ["ocean", "creator", "a1-b2", "#00ff7a"] {
            assert_eq!(theme(accent).accent_error(), None, "{accent}");
        }
    }

    #[test]
    fn other_accents_are_rejected() {
        for accent in [
            "",
            "Ocean",
            "#00FF7A",
            "#123",
            "1abc",
            "x y",
            &"a".repeat(33),
        ] {
            assert!(theme(accent).accent_error().is_some(), "{accent}");
        }
    }

    #[test]
    fn an_unknown_mode_is_a_deserialization_error() {
        let parsed = serde_json::from_str::<Theme>(
            r#"{"mode":"neon","accent":"ocean","density":"compact"}"#,
        );
        assert!(parsed.is_err());
    }
}
