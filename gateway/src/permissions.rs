//! The permission matrix, read from `docs/api-permission-matrix.md` (compiled in), and the
//! middleware that enforces it on every route: authenticate, provision just in time, check the
//! route's scope. The document is the single source of truth; a test checks the router against it.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::{ErrorCode, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// The matrix document, as compiled into the binary.
pub const MATRIX_DOCUMENT: &str = include_str!("../../docs/api-permission-matrix.md");

/// Who may call a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Callers whose roles grant this scope.
    Scope(String),
}

/// One row of the routes table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// HTTP method.
    pub method: Method,
    /// Path template as the router writes it (`/api/v1/tasks/{id}`).
    pub path: String,
    /// Who may call it.
    pub access: Access,
}

/// Roles → scopes and routes → access, parsed from the matrix document.
#[derive(Debug, Clone)]
pub struct PermissionMatrix {
    roles: BTreeMap<Role, BTreeSet<String>>,
    routes: Vec<RoutePolicy>,
}

/// What is wrong with the matrix document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission matrix, line {line}: {message}")]
pub struct MatrixError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Other,
    Roles,
    Routes,
}

impl PermissionMatrix {
    /// The matrix compiled into the binary.
    pub fn builtin() -> Result<Self, MatrixError> {
        Self::parse(MATRIX_DOCUMENT)
    }

    /// Parses the two tables under the `## Roles and scopes` and `## Routes` headings.
    pub fn parse(document: &str) -> Result<Self, MatrixError> {
        let mut section = Section::Other;
        let mut roles = BTreeMap::new();
        let mut routes: Vec<RoutePolicy> = Vec::new();
        for (index, line) in document.lines().enumerate() {
            let error = |message: String| MatrixError {
                line: index + 1,
                message,
            };
            let trimmed = line.trim();
            if let Some(heading) = trimmed.strip_prefix("## ") {
                section = match heading.trim() {
                    "Roles and scopes" => Section::Roles,
                    "Routes" => Section::Routes,
                    _ => Section::Other,
                };
                continue;
            }
            if section == Section::Other || !trimmed.starts_with('|') {
                continue;
            }
            let cells: Vec<String> = trimmed
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('`', ""))
                .collect();
            let first = cells.first().map(String::as_str).unwrap_or_default();
            if first.is_empty() || first.starts_with('-') || first == "role" || first == "method" {
                continue; // header or separator row
            }
            match section {
                Section::Roles => {
                    let role: Role = first
                        .parse()
                        .map_err(|e: shared::ParseRoleError| error(e.to_string()))?;
                    let scopes: BTreeSet<String> = cells
                        .get(1)
                        .ok_or_else(|| error("a role row needs a scopes cell".into()))?
                        .split(',')
                        .map(|scope| scope.trim().to_owned())
                        .filter(|scope| !scope.is_empty())
                        .collect();
                    if roles.insert(role, scopes).is_some() {
                        return Err(error(format!("role {role} is listed twice")));
                    }
                }
                Section::Routes => {
                    let [method, path, access, ..] = cells.as_slice() else {
                        return Err(error(
                            "a route row needs method, path and scope cells".into(),
                        ));
                    };
                    let method: Method = method
                        .parse()
                        .map_err(|_| error(format!("`{method}` is not an HTTP method")))?;
                    if !path.starts_with('/') {
                        return Err(error(format!("path `{path}` must start with /")));
                    }
                    let access = match access.as_str() {
                        "public" => Access::Public,
                        scope if scope.contains(':') => Access::Scope(scope.to_owned()),
                        other => {
                            return Err(error(format!("`{other}` is neither public nor a scope")));
                        }
                    };
                    if routes
                        .iter()
                        .any(|route| route.method == method && &route.path == path)
                    {
                        return Err(error(format!("{method} {path} is listed twice")));
                    }
                    routes.push(RoutePolicy {
                        method,
                        path: path.clone(),
                        access,
                    });
                }
                Section::Other => {}
            }
        }
        for role in Role::ALL {
            if !roles.contains_key(&role) {
                return Err(MatrixError {
                    line: 0,
                    message: format!("role {role} is missing"),
                });
            }
        }
        let granted: BTreeSet<&String> = roles.values().flatten().collect();
        for route in &routes {
            if let Access::Scope(scope) = &route.access
                && !granted.contains(scope)
            {
                return Err(MatrixError {
                    line: 0,
                    message: format!(
                        "{} {} needs `{scope}`, which no role has",
                        route.method, route.path
                    ),
                });
            }
        }
        Ok(Self { roles, routes })
    }

    /// The union of the scopes granted by `roles`.
    pub fn scopes_for(&self, roles: &[Role]) -> BTreeSet<String> {
        roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .cloned()
            .collect()
    }

    /// Every route row.
    pub fn routes(&self) -> &[RoutePolicy] {
        &self.routes
    }

    /// The policy of a route (`HEAD` is looked up as `GET`).
    pub fn policy(&self, method: &Method, path: &str) -> Option<&Access> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.routes
            .iter()
            .find(|route| route.method == *method && route.path == path)
            .map(|route| &route.access)
    }

    /// Whether any row has this path (for whatever method).
    pub fn knows_path(&self, path: &str) -> bool {
        self.routes.iter().any(|route| route.path == path)
    }
}

/// Middleware: enforces the matrix on the matched route.
pub async fn authorize(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(matched) = matched else {
        return next.run(request).await; // no route: the fallback answers 404
    };
    let access = match state.permissions.policy(request.method(), matched.as_str()) {
        Some(access) => access.clone(),
        // A known path with another method: let the router answer 405.
        None if state.permissions.knows_path(matched.as_str()) => return next.run(request).await,
        None => {
            tracing::error!(
                route = matched.as_str(),
                "route missing from the permission matrix"
            );
            return ApiError::forbidden("this route is not in the permission matrix")
                .into_response();
        }
    };
    let Access::Scope(scope) = access else {
        return next.run(request).await;
    };
    let credentials = Credentials::of(&request, &state.settings.http.trusted_proxies);
    let caller = match authenticate(&state, credentials).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if !caller.has_scope(&scope) {
        let roles: Vec<&str> = caller
            .principal
            .roles
            .iter()
            .map(|role| role.as_str())
            .collect();
        let error = ApiError::forbidden(format!(
            "role(s) {} lack the scope `{scope}` this route needs",
            roles.join(", ")
        ));
        if let Some(action) = crate::refusals::sensitive_action(request.method(), matched.as_str())
        {
            let target = ("route", Some(matched.as_str()));
            crate::refusals::record_for(&state, &caller, action, target, &error).await;
        }
        return error.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// What authentication needs from a request, copied out so the request is not held across awaits.
struct Credentials {
    authorization: Option<axum::http::HeaderValue>,
    request_id: Option<String>,
    client_ip: Option<std::net::IpAddr>,
}

/// The client's address: the peer, or the last address `X-Forwarded-For` names before the first
/// trusted proxy when the peer is one of `http.trusted_proxies` (never a header from anyone else).
pub fn client_ip(request: &Request, trusted: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())?;
    Some(client_ip_of(peer, request.headers(), trusted))
}

/// [`client_ip`] from the peer address and the request's headers.
pub fn client_ip_of(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    // Walk back from the nearest hop: the first address that is not a trusted proxy is the client.
    forwarded
        .iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .copied()
        .unwrap_or(peer)
}

impl Credentials {
    fn of(request: &Request, trusted: &[std::net::IpAddr]) -> Self {
        Self {
            authorization: request.headers().get(header::AUTHORIZATION).cloned(),
            request_id: request
                .headers()
                .get(crate::problem::REQUEST_ID)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            client_ip: client_ip(request, trusted),
        }
    }
}

/// Verifies the bearer token and provisions the caller on first sight.
async fn authenticate(state: &AppState, credentials: Credentials) -> Result<Caller, ApiError> {
    let header = credentials.authorization.ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::TokenMissing,
            "send `Authorization: Bearer <token>`",
        )
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                ErrorCode::TokenInvalid,
                "the Authorization header must be `Bearer <token>`",
            )
        })?;
    let (principal, claims) = state.tokens.verify(token)?;
    state.provision(&principal).await?;
    let scopes = state.permissions.scopes_for(&principal.roles);
    Ok(Caller {
        principal: Arc::new(principal),
        scopes: Arc::new(scopes),
        expires_at: claims.exp,
        request_id: credentials.request_id,
        client_ip: credentials.client_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_matrix_parses_and_gives_admin_every_scope() {
        let matrix = PermissionMatrix::builtin().expect("the matrix document parses");
        let every: BTreeSet<String> = matrix.roles.values().flatten().cloned().collect();
        assert_eq!(matrix.scopes_for(&[Role::Admin]), every);
    }

    #[test]
    fn a_route_needing_an_ungranted_scope_is_an_error() {
        let document = "## Roles and scopes\n| role | scopes |\n|---|---|\n\
            | user | `a:b` |\n| creator | |\n| operator | |\n| finance | |\n| auditor | |\n\
            | admin | `a:b` |\n| service | |\n\
            ## Routes\n| method | path | scope |\n|---|---|---|\n| GET | `/x` | `c:d` |\n";
        let error = PermissionMatrix::parse(document).expect_err("c:d is granted to nobody");
        assert!(error.message.contains("c:d"), "{error}");
    }

    #[test]
    fn a_missing_role_is_an_error() {
        let document = "## Roles and scopes\n| role | scopes |\n|---|---|\n| user | `a:b` |\n";
        assert!(PermissionMatrix::parse(document).is_err());
    }

    #[test]
    fn head_is_looked_up_as_get() {
        let matrix = PermissionMatrix::builtin().expect("parses");
        assert_eq!(
            matrix.policy(&Method::HEAD, "/healthz"),
            Some(&Access::Public)
        );
    }
}
