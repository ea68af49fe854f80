//! Just-in-time provisioning of users and their credit accounts from verified token claims.

use crate::DomainResult;
use shared::Role;
use sqlx::PgPool;

/// A verified caller as the token describes it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's `sub`.
    pub user_id: String,
    /// Display name (the token's `name`, else the `sub`).
    pub display_name: String,
    /// Roles from the token.
    pub roles: Vec<Role>,
    /// The caller's account (`account_id` claim, default `sub`); `None` for a service.
    pub account_id: Option<String>,
}

impl Principal {
    /// Whether the principal carries `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Creates the user and its empty account when they do not exist yet. Idempotent and safe under
/// concurrency: two first requests of one `sub` race on `on conflict do nothing`.
pub async fn provision(pool: &PgPool, principal: &Principal) -> DomainResult<bool> {
    let roles: Vec<&str> = principal.roles.iter().map(|role| role.as_str()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into users (id, display_name, roles) values ($1, $2, $3) on conflict (id) do nothing",
    )
    .bind(&principal.user_id)
    .bind(&principal.display_name)
    .bind(&roles)
    .execute(&mut *tx)
    .await?;
    let mut owned = true;
    if let Some(account_id) = &principal.account_id {
        sqlx::query(
            "insert into credit_accounts (id, owner_id) values ($1, $2) on conflict (id) do nothing",
        )
        .bind(account_id)
        .bind(&principal.user_id)
        .execute(&mut *tx)
        .await?;
        let owner: String =
            sqlx::query_scalar("select owner_id from credit_accounts where id = $1")
                .bind(account_id)
                .fetch_one(&mut *tx)
                .await?;
        owned = owner == principal.user_id;
    }
    tx.commit().await?;
    Ok(owned)
}
