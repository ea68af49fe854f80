//! Token checks and channel permissions for sessions: `user:{id}` for its owner (and admins),
//! `task:{id}` for the task's owner and for roles with `realtime:subscribe:any`.

use crate::auth::{TokenError, TokenKeys};
use crate::permissions::PermissionMatrix;
use hub::channel::Channel;
use hub::session::{AuthError, Authority, BoxFuture, Identity};
use shared::Role;
use sqlx::PgPool;
use std::sync::Arc;

/// The gateway's answers to sessions.
#[derive(Debug, Clone)]
pub struct GatewayAuthority {
    /// Token verification.
    pub tokens: Arc<TokenKeys>,
    /// Scopes of roles.
    pub permissions: Arc<PermissionMatrix>,
    /// Task ownership lookups.
    pub db: PgPool,
    /// Product events (`session.connected`).
    pub events: crate::events::EventSink,
}

impl Authority for GatewayAuthority {
    fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match self.tokens.verify(token) {
            Ok((principal, claims)) => {
                self.events.server(
                    "session.connected",
                    Some(&principal.user_id),
                    serde_json::json!({}),
                );
                Ok(Identity {
                    user_id: principal.user_id,
                    roles: principal.roles,
                    expires_at: claims.exp,
                })
            }
            Err(TokenError::Expired) => Err(AuthError::Expired),
            Err(TokenError::Invalid(_)) => Err(AuthError::Invalid),
        }
    }

    fn may_subscribe<'a>(
        &'a self,
        identity: &'a Identity,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let any = self
                .permissions
                .scopes_for(&identity.roles)
                .contains("realtime:subscribe:any");
            match channel {
                Channel::User(owner) => {
                    Ok(owner == &identity.user_id || identity.roles.contains(&Role::Admin))
                }
                Channel::Task(_) if any => Ok(true),
                Channel::Task(task) => {
                    let Ok(task) = uuid::Uuid::parse_str(task) else {
                        return Ok(false);
                    };
                    let owner: Option<String> =
                        sqlx::query_scalar("select owner_id from tasks where id = $1")
                            .bind(task)
                            .fetch_optional(&self.db)
                            .await
                            .map_err(|error| error.to_string())?;
                    Ok(owner.as_deref() == Some(identity.user_id.as_str()))
                }
            }
        })
    }
}
