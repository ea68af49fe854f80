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

/// A user found or created by a WeChat login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WechatIdentity {
    /// The hub's user id (also its account's id).
    pub user_id: String,
    /// Display name.
    pub display_name: String,
    /// Whether this login created the user.
    pub created: bool,
}

/// The user a WeChat login names: found by `unionid`, then by `openid`, or created (role
/// `user`, display name from the nickname, an empty account of its own). A unionid learnt later
/// is stored on the user found by openid.
pub async fn wechat_user(
    pool: &PgPool,
    openid: &str,
    unionid: Option<&str>,
    nickname: &str,
) -> DomainResult<WechatIdentity> {
    // Two racing first logins of one person: the loser's insert hits the unique openid and the
    // second pass finds the winner's user.
    for _ in 0..2 {
        let found = sqlx::query_as::<_, (String, String)>(
            "select id, display_name from users \
              where ($1::text is not null and wechat_unionid = $1) or wechat_openid = $2 \
              order by (wechat_unionid is not distinct from $1) desc limit 1",
        )
        .bind(unionid)
        .bind(openid)
        .fetch_optional(pool)
        .await?;
        if let Some((user_id, display_name)) = found {
            if let Some(unionid) = unionid {
                sqlx::query(
                    "update users set wechat_unionid = $2 where id = $1 and wechat_unionid is null \
                       and not exists (select 1 from users where wechat_unionid = $2)",
                )
                .bind(&user_id)
                .bind(unionid)
                .execute(pool)
                .await?;
            }
            return Ok(WechatIdentity {
                user_id,
                display_name,
                created: false,
            });
        }
        let user_id = format!("wx_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let display_name = display_name_of(nickname);
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query(
            "insert into users (id, display_name, roles, wechat_openid, wechat_unionid) \
             values ($1, $2, array['user'], $3, $4) on conflict do nothing",
        )
        .bind(&user_id)
        .bind(&display_name)
        .bind(openid)
        .bind(unionid)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            continue;
        }
        sqlx::query("insert into credit_accounts (id, owner_id) values ($1, $1)")
            .bind(&user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(WechatIdentity {
            user_id,
            display_name,
            created: true,
        });
    }
    Err(crate::DomainError::Conflict(
        "the WeChat identity changed during the login; retry".into(),
    ))
}

/// A display name from a WeChat nickname: trimmed, without control characters, 1 to 100
/// characters ("WeChat user" when nothing is left).
fn display_name_of(nickname: &str) -> String {
    let cleaned: String = nickname
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "WeChat user".to_owned()
    } else {
        cleaned.to_owned()
    }
}
