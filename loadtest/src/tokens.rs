//! Bearer tokens for simulated users, signed with the nodes' HS256 secret.

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    roles: &'a [&'a str],
    iat: i64,
    exp: i64,
}

/// Signs tokens valid for `ttl_seconds`.
pub struct Minter {
    key: EncodingKey,
    ttl_seconds: i64,
}

impl Minter {
    /// A minter for `secret`.
    pub fn new(secret: &str, ttl_seconds: i64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the JWT secret must be at least 32 bytes (HUB_JWT_SECRET)"
        );
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            ttl_seconds,
        })
    }

    /// A token for `sub` with `roles`.
    pub fn token(&self, sub: &str, roles: &[&str]) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub,
            roles,
            iat: now,
            exp: now + self.ttl_seconds,
        };
        Ok(jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &self.key,
        )?)
    }
}
