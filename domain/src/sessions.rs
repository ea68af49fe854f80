//! What `/sessions/me` shows: the stored theme or the role-based default, and balances.

use crate::{DomainError, DomainResult};
use shared::Role;
use shared::session::{Balance, Density, Theme, ThemeMode};
use sqlx::{PgPool, Row};

/// The default theme for a set of roles: back-office roles get the dense console palette,
/// creators the creator palette, everyone else the end-user palette.
pub fn default_theme(roles: &[Role]) -> Theme {
    let staff = [
        Role::Admin,
        Role::Operator,
        Role::Finance,
        Role::Auditor,
        Role::Service,
    ];
    if roles.iter().any(|role| staff.contains(role)) {
        Theme {
            mode: ThemeMode::System,
            accent: "console".into(),
            density: Density::Compact,
        }
    } else if roles.contains(&Role::Creator) {
        Theme {
            mode: ThemeMode::Dark,
            accent: "creator".into(),
            density: Density::Comfortable,
        }
    } else {
        Theme {
            mode: ThemeMode::System,
            accent: "ocean".into(),
            density: Density::Comfortable,
        }
    }
}

/// The user's stored theme, if any.
pub async fn stored_theme(pool: &PgPool, user_id: &str) -> DomainResult<Option<Theme>> {
    let row = sqlx::query("select mode, accent, density from theme_preferences where user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await?;
    row.map(|row| {
        Ok(Theme {
            mode: parse_enum(row.get("mode"))?,
            accent: row.get("accent"),
            density: parse_enum(row.get("density"))?,
        })
    })
    .transpose()
}

/// Stores the user's theme, replacing any previous one.
pub async fn store_theme(pool: &PgPool, user_id: &str, theme: &Theme) -> DomainResult<Theme> {
    if let Some(problem) = theme.accent_error() {
        return Err(DomainError::Validation(problem.into()));
    }
    sqlx::query(
        "insert into theme_preferences (user_id, mode, accent, density) values ($1, $2, $3, $4) \
         on conflict (user_id) do update \
         set mode = excluded.mode, accent = excluded.accent, density = excluded.density",
    )
    .bind(user_id)
    .bind(enum_name(&theme.mode))
    .bind(&theme.accent)
    .bind(enum_name(&theme.density))
    .execute(pool)
    .await?;
    Ok(theme.clone())
}

/// The account's balances.
pub async fn balance(pool: &PgPool, account_id: &str) -> DomainResult<Balance> {
    let row = sqlx::query("select available, held, debt from credit_accounts where id = $1")
        .bind(account_id)
        .fetch_optional(pool)
        .await?
        .ok_or(DomainError::NotFound {
            what: "credit account",
        })?;
    let (available, held, debt): (i64, i64, i64) =
        (row.get("available"), row.get("held"), row.get("debt"));
    Ok(Balance {
        available,
        held,
        total: available + held,
        debt,
    })
}

fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => unreachable!("theme enums serialize to strings"),
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(name: String) -> DomainResult<T> {
    serde_json::from_value(serde_json::Value::String(name.clone()))
        .map_err(|_| DomainError::Conflict(format!("stored theme value `{name}` is unknown")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creators_default_to_the_creator_palette() {
        assert_eq!(
            default_theme(&[Role::User, Role::Creator]).accent,
            "creator"
        );
    }

    #[test]
    fn staff_defaults_win_over_creator_defaults() {
        let theme = default_theme(&[Role::Creator, Role::Operator]);
        assert_eq!(
            (theme.accent.as_str(), theme.density),
            ("console", Density::Compact)
        );
    }

    #[test]
    fn plain_users_get_the_end_user_palette() {
        assert_eq!(default_theme(&[Role::User]).accent, "ocean");
    }
}
