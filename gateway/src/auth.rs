//! Bearer tokens: HS256 JWTs with `sub`, `roles`, `exp`, `iat`, optional `account_id` and `name`.
//! Minting (CLI, dev login, tests) and verification live here; [`Caller`] is the verified caller
//! the permission middleware hands to handlers.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use domain::identity::Principal;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use shared::{ErrorCode, Role};
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The claims of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User or service id.
    pub sub: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The caller's credit account (default: `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Display name used when the user is provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What a new token should say.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// User or service id.
    pub sub: String,
    /// Roles, at least one.
    pub roles: Vec<Role>,
    /// Credit account, when it is not the `sub`.
    pub account_id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Lifetime in seconds.
    pub ttl_seconds: u64,
}

/// Signing and verification keys derived from the configured secret.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Longest `exp - iat` accepted and minted, in seconds.
    max_ttl: i64,
}

/// Allowance for clocks of the minting host running ahead of this node's, in seconds.
const CLOCK_SKEW_SECS: i64 = 60;

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKeys([REDACTED])")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Anything else: malformed, wrong signature or algorithm, bad claims.
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        let code = match error {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Invalid(_) => ErrorCode::TokenInvalid,
        };
        ApiError::unauthorized(code, error.to_string())
    }
}

/// Whether `id` may be a user, service or account id: 1-128 of `A-Z a-z 0-9 _ . @ -`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

impl TokenKeys {
    /// Keys for an HS256 secret, accepting tokens that live at most `max_ttl`.
    pub fn new(secret: &SecretString, max_ttl: std::time::Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // Tokens are minted by this platform: no clock skew allowance on expiry.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            max_ttl: i64::try_from(max_ttl.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Signs a token for `request`, issued now.
    pub fn mint(&self, request: &TokenRequest) -> anyhow::Result<(String, Claims)> {
        anyhow::ensure!(
            valid_id(&request.sub),
            "sub must be 1-128 of A-Z a-z 0-9 _ . @ -"
        );
        anyhow::ensure!(!request.roles.is_empty(), "a token needs at least one role");
        if let Some(account) = &request.account_id {
            anyhow::ensure!(
                valid_id(account),
                "account_id must be 1-128 of A-Z a-z 0-9 _ . @ -"
            );
        }
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(request.ttl_seconds).unwrap_or(i64::MAX);
        anyhow::ensure!(
            (1..=self.max_ttl).contains(&ttl),
            "the lifetime must be between 1 and {} seconds (HUB_MAX_TOKEN_TTL_SECS)",
            self.max_ttl
        );
        let roles: BTreeSet<Role> = request.roles.iter().copied().collect();
        let claims = Claims {
            sub: request.sub.clone(),
            roles: roles.iter().map(|role| role.as_str().to_owned()).collect(),
            exp: now + ttl,
            iat: now,
            nbf: None,
            account_id: request.account_id.clone(),
            name: request.name.clone(),
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// Signs arbitrary claims (tests use it to craft expired or odd tokens).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token and turns its claims into a principal.
    pub fn verify(&self, token: &str) -> Result<(Principal, Claims), TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| {
                // The parser's own words stay in the log: a client learns the category only.
                tracing::debug!(%error, "token refused");
                match error.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::Invalid("bad signature".into()),
                    ErrorKind::ImmatureSignature => {
                        TokenError::Invalid("the token is not valid yet (nbf)".into())
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        TokenError::Invalid(format!("the claim `{claim}` is required"))
                    }
                    ErrorKind::InvalidAlgorithm => {
                        TokenError::Invalid("the token must be signed with HS256".into())
                    }
                    ErrorKind::Json(_) => TokenError::Invalid("the claims are malformed".into()),
                    _ => TokenError::Invalid("the token is malformed".into()),
                }
            })?;
        let claims = data.claims;
        let now = chrono::Utc::now().timestamp();
        if claims.iat > now + CLOCK_SKEW_SECS {
            return Err(TokenError::Invalid(
                "the token is issued in the future (iat)".into(),
            ));
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_ttl {
            return Err(TokenError::Invalid(format!(
                "the token lives longer than the largest lifetime, {} seconds",
                self.max_ttl
            )));
        }
        if !valid_id(&claims.sub) {
            return Err(TokenError::Invalid(
                "sub must be 1-128 of A-Z a-z 0-9 _ . @ -".into(),
            ));
        }
        let roles = claims
            .roles
            .iter()
            .map(|name| name.parse::<Role>())
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|error| TokenError::Invalid(error.to_string()))?;
        if roles.is_empty() {
            return Err(TokenError::Invalid("the token carries no role".into()));
        }
        let account_id = if roles.contains(&Role::Service) && roles.len() == 1 {
            None
        } else {
            let account = claims
                .account_id
                .clone()
                .unwrap_or_else(|| claims.sub.clone());
            if !valid_id(&account) {
                return Err(TokenError::Invalid("account_id is not a valid id".into()));
            }
            Some(account)
        };
        let display_name = claims
            .name
            .clone()
            .filter(|name| (1..=100).contains(&name.chars().count()))
            .unwrap_or_else(|| claims.sub.clone());
        let principal = Principal {
            user_id: claims.sub.clone(),
            display_name,
            roles: roles.into_iter().collect(),
            account_id,
        };
        Ok((principal, claims))
    }
}

/// The verified caller of a protected route, inserted by the permission middleware.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who the token says the caller is.
    pub principal: Arc<Principal>,
    /// Scopes granted by the caller's roles.
    pub scopes: Arc<BTreeSet<String>>,
    /// Expiry of the token, Unix seconds.
    pub expires_at: i64,
    /// The request id.
    pub request_id: Option<String>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
}

impl Caller {
    /// Whether the caller's roles grant `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The actor record for audit rows.
    pub fn actor(&self) -> domain::audit::Actor {
        domain::audit::Actor {
            id: self.principal.user_id.clone(),
            roles: self.principal.roles.clone(),
            request_id: self.request_id.clone(),
            client_ip: self.client_ip,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "route {} uses Caller but is public in the permission matrix",
                parts.uri.path()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            &SecretString::from("unit-test-secret-that-is-long-enough-0123"),
            std::time::Duration::from_secs(86_400),
        )
    }

    fn request(roles: Vec<Role>) -> TokenRequest {
        TokenRequest {
            sub: "alice".into(),
            roles,
            account_id: None,
            name: None,
            ttl_seconds: 60,
        }
    }

    #[test]
    fn a_minted_token_verifies_to_its_principal() {
        let keys = keys();
        let (token, _) = keys
            .mint(&request(vec![Role::User, Role::Creator]))
            .expect("mint");
        let (principal, _) = keys.verify(&token).expect("verify");
        assert_eq!(principal.user_id, "alice");
        assert_eq!(principal.account_id.as_deref(), Some("alice"));
        assert_eq!(principal.roles, vec![Role::User, Role::Creator]);
    }

    #[test]
    fn a_service_token_has_no_account() {
        let keys = keys();
        let (token, _) = keys.mint(&request(vec![Role::Service])).expect("mint");
        assert_eq!(keys.verify(&token).expect("verify").0.account_id, None);
    }

    #[test]
    fn a_token_signed_with_another_secret_is_invalid() {
        let other = TokenKeys::new(
            &SecretString::from("another-secret-that-is-long-enough-0123"),
            std::time::Duration::from_secs(86_400),
        );
        let (token, _) = other.mint(&request(vec![Role::User])).expect("mint");
        assert!(matches!(keys().verify(&token), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn an_expired_token_is_reported_as_expired() {
        let keys = keys();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: "alice".into(),
            roles: vec!["user".into()],
            exp: now - 10,
            iat: now - 70,
            nbf: None,
            account_id: None,
            name: None,
        };
        let token = keys.sign(&claims).expect("sign");
        assert_eq!(keys.verify(&token).err(), Some(TokenError::Expired));
    }

    #[test]
    fn an_unknown_role_makes_the_token_invalid() {
        let keys = keys();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: "alice".into(),
            roles: vec!["root".into()],
            exp: now + 60,
            iat: now,
            nbf: None,
            account_id: None,
            name: None,
        };
        let token = keys.sign(&claims).expect("sign");
        assert!(matches!(keys.verify(&token), Err(TokenError::Invalid(_))));
    }
}
