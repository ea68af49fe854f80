//! `/api/v1/auth/wechat/*`: WeChat website QR-code login. `qr` starts an attempt (a single-use
//! 128-bit state, bound to this browser by an HttpOnly cookie, kept ten minutes in Redis, or in
//! PostgreSQL without Redis); `callback` takes the state once, checks the cookie, exchanges the
//! code once, reads the user, finds or creates the hub's user, audits the login and issues the
//! hub's own token: in the URL fragment of a redirect for browsers, as JSON for API clients.

use crate::auth::TokenRequest;
use crate::error::{ApiError, ApiResult, Json, Query};
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use domain::audit::{Actor, AuditEntry, Outcome};
use domain::wechat::login::{LoginError, WechatLogin};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::payments::{WechatLogin as LoginAnswer, WechatQr, WechatUser};
use shared::{ErrorCode, Problem, Role};
use std::net::SocketAddr;
use std::time::Duration;

/// The cookie binding a login attempt to the browser that started it.
const COOKIE: &str = "hub_wechat_login";
/// How long an attempt lives.
const STATE_TTL: Duration = Duration::from_secs(600);
/// Where browsers land when they asked for nowhere in particular.
const DEFAULT_REDIRECT: &str = "/";
/// QR logins one client address may start per minute.
const QR_PER_MINUTE: i64 = 30;
/// Lifetime of the token a WeChat login issues.
const TOKEN_TTL_SECS: u64 = 86_400;

fn login(state: &AppState) -> ApiResult<&WechatLogin> {
    state.wechat.login.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::PaymentsUnavailable,
            "WeChat login is not configured on this node",
        )
    })
}

/// A redirect target on this site only: a path starting with one `/`, without a scheme, host,
/// backslash or control character (no open redirect).
fn safe_redirect(redirect: Option<&str>) -> ApiResult<String> {
    let Some(path) = redirect else {
        return Ok(DEFAULT_REDIRECT.to_owned());
    };
    let safe = path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= 512
        && !path.contains('\\')
        && !path.contains('#')
        && !path.chars().any(|c| c.is_control() || c.is_whitespace());
    if safe {
        Ok(path.to_owned())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "redirect must be a path on this site (starting with a single `/`)",
        ))
    }
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

fn hash(binding: &str) -> String {
    hex::encode(Sha256::digest(binding.as_bytes()))
}

/// A stored attempt.
#[derive(Debug, Serialize, Deserialize)]
struct Attempt {
    binding: String,
    redirect: String,
}

fn state_key(state: &AppState, login_state: &str) -> String {
    format!(
        "{}:wechat_login:{login_state}",
        state.settings.redis_key_prefix
    )
}

async fn redis_connection(
    state: &AppState,
) -> ApiResult<Option<redis::aio::MultiplexedConnection>> {
    state
        .redis_connection()
        .await
        .map_err(|error| ApiError::unavailable("Redis is unavailable", error))
}

async fn store_attempt(state: &AppState, login_state: &str, attempt: &Attempt) -> ApiResult<()> {
    if let Some(mut connection) = redis_connection(state).await? {
        let value = serde_json::to_string(attempt).map_err(ApiError::internal)?;
        let _: () = connection
            .set_ex(state_key(state, login_state), value, STATE_TTL.as_secs())
            .await
            .map_err(|error| ApiError::unavailable("Redis is unavailable", error))?;
        return Ok(());
    }
    sqlx::query("delete from wechat_login_states where expires_at < now()")
        .execute(&state.db)
        .await
        .map_err(crate::error::database_error)?;
    sqlx::query(
        "insert into wechat_login_states (state, binding, redirect, expires_at) \
         values ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(login_state)
    .bind(&attempt.binding)
    .bind(&attempt.redirect)
    .bind(STATE_TTL.as_secs() as f64)
    .execute(&state.db)
    .await
    .map_err(crate::error::database_error)?;
    Ok(())
}

/// Takes an attempt out (single use), only for the browser it is bound to (`binding`: the
/// hashed cookie): a caller who merely saw the state cannot burn another browser's attempt.
async fn take_attempt(
    state: &AppState,
    login_state: &str,
    binding: &str,
) -> ApiResult<Option<Attempt>> {
    if let Some(mut connection) = redis_connection(state).await? {
        let script = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) \
             if not v then return false end \
             if cjson.decode(v).binding ~= ARGV[1] then return false end \
             redis.call('DEL', KEYS[1]) return v",
        );
        let value: Option<String> = script
            .key(state_key(state, login_state))
            .arg(binding)
            .invoke_async(&mut connection)
            .await
            .map_err(|error| ApiError::unavailable("Redis is unavailable", error))?;
        return Ok(value.and_then(|value| serde_json::from_str(&value).ok()));
    }
    let row: Option<(String, String)> = sqlx::query_as(
        "delete from wechat_login_states where state = $1 and binding = $2 and expires_at > now() \
         returning binding, redirect",
    )
    .bind(login_state)
    .bind(binding)
    .fetch_optional(&state.db)
    .await
    .map_err(crate::error::database_error)?;
    Ok(row.map(|(binding, redirect)| Attempt { binding, redirect }))
}

/// `?redirect=PATH`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QrQuery {
    /// Where the browser goes after the login: a path on this site (default `/`).
    pub redirect: Option<String>,
}

/// Starts a WeChat QR login: the authorize URL to open (or render as a QR code), its single-use
/// `state`, and a cookie binding the state to this browser (HttpOnly, SameSite=Lax, 10 minutes).
#[utoipa::path(get, path = "/api/v1/auth/wechat/qr", tag = "sessions",
    params(QrQuery),
    responses(
        (status = 200, body = WechatQr),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn qr(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<QrQuery>,
) -> ApiResult<Response> {
    let login = login(&state)?;
    let redirect = safe_redirect(query.redirect.as_deref())?;
    // Each attempt is stored for ten minutes: one address may start a bounded number a minute.
    let ip =
        crate::permissions::client_ip_of(peer.ip(), &headers, &state.settings.http.trusted_proxies);
    if let Some(mut connection) = redis_connection(&state).await? {
        let key = format!(
            "{}:wechat_login:rate:{ip}:{}",
            state.settings.redis_key_prefix,
            Utc::now().timestamp() / 60
        );
        let started: i64 = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 120)
            .ignore()
            .query_async::<(i64,)>(&mut connection)
            .await
            .map(|(count,)| count)
            .map_err(|error| ApiError::unavailable("Redis is unavailable", error))?;
        if started > QR_PER_MINUTE {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                "too many WeChat logins started from this address; retry in a minute",
            ));
        }
    }
    let (login_state, binding) = (random_token(), random_token());
    let attempt = Attempt {
        binding: hash(&binding),
        redirect,
    };
    store_attempt(&state, &login_state, &attempt).await?;
    let secure = if state
        .settings
        .wechat
        .login_redirect_uri
        .as_deref()
        .is_some_and(|uri| uri.starts_with("https://"))
    {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={binding}; Path=/api/v1/auth/wechat; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        STATE_TTL.as_secs()
    );
    let answer = WechatQr {
        authorize_url: login.authorize_url(&login_state),
        state: login_state,
        expires_at: Utc::now() + chrono::Duration::seconds(STATE_TTL.as_secs() as i64),
    };
    let mut response = Json(answer).into_response();
    let cookie = HeaderValue::from_str(&cookie).map_err(ApiError::internal)?;
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `?code=&state=` as WeChat redirects.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    /// The authorization code (absent when the user declined).
    #[param(max_length = 512)]
    pub code: Option<String>,
    /// The attempt's state.
    #[param(max_length = 64)]
    pub state: Option<String>,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}

fn state_invalid() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::LoginStateInvalid,
        "the login state is unknown, used, expired or from another browser; start again",
    )
}

fn login_error(error: LoginError) -> ApiError {
    let refused = ApiError::new(
        StatusCode::BAD_GATEWAY,
        ErrorCode::WechatError,
        "WeChat refused the login or could not be reached",
    );
    match &error {
        LoginError::Wechat { errcode, .. } => refused.with_errcode(*errcode),
        LoginError::Transport(_) => refused.with_reason("unreachable"),
    }
    .with_source(error)
}

fn redirect_to(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The attempt is over: the binding cookie goes.
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/api/v1/auth/wechat; Max-Age=0; HttpOnly; SameSite=Lax"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// WeChat's redirect after the QR scan. Checks the state (stored, unused, this browser's), then
/// exchanges the code once, reads the user, finds them by unionid or openid or creates them,
/// audits `auth.wechat_login` and issues the hub's token. Browsers get a 302 to the attempt's
/// redirect with `#token=…&expires_at=…` (or `#error=CODE`); `Accept: application/json` gets
/// `{token, expires_at, user}` (or the problem: 400 `login_state_invalid`,
/// 400 `wechat_login_denied`, 502 `wechat_error` with WeChat's `errcode`).
#[utoipa::path(get, path = "/api/v1/auth/wechat/callback", tag = "sessions",
    params(CallbackQuery),
    responses(
        (status = 200, body = LoginAnswer),
        (status = 302, description = "Browsers: to the redirect, the token in the fragment"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let json = wants_json(&headers);
    let mut redirect = DEFAULT_REDIRECT.to_owned();
    let result = complete_login(&state, peer, &headers, &query, &mut redirect).await;
    match result {
        Ok(answer) if json => Json(answer).into_response(),
        Ok(answer) => redirect_to(&format!(
            "{redirect}#token={}&expires_at={}",
            answer.token, answer.expires_at
        )),
        Err(error) => {
            metrics::counter!("wechat_logins_total", "outcome" => error.code().as_str())
                .increment(1);
            if json {
                error.into_response()
            } else {
                redirect_to(&format!("{redirect}#error={}", error.code().as_str()))
            }
        }
    }
}

async fn complete_login(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: &CallbackQuery,
    redirect: &mut String,
) -> ApiResult<LoginAnswer> {
    let login = login(state)?;
    let login_state = query
        .state
        .as_deref()
        .filter(|value| (16..=64).contains(&value.len()))
        .ok_or_else(state_invalid)?;
    // Taken first, whatever follows (a state is good for one callback only), and only by the
    // browser holding its cookie.
    let binding = cookie_value(headers)
        .map(|cookie| hash(&cookie))
        .ok_or_else(state_invalid)?;
    let attempt = take_attempt(state, login_state, &binding)
        .await?
        .ok_or_else(state_invalid)?;
    *redirect = attempt.redirect;
    let Some(code) = query.code.as_deref().filter(|code| !code.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::WechatLoginDenied,
            "the WeChat login was declined",
        ));
    };
    let token = login.exchange(code).await.map_err(login_error)?;
    let info = login.user_info(&token).await.map_err(login_error)?;
    let unionid = info.unionid.as_deref().or(token.unionid.as_deref());
    let identity =
        domain::identity::wechat_user(&state.db, &token.openid, unionid, &info.nickname).await?;
    let roles: Vec<Role> =
        sqlx::query_scalar::<_, Vec<String>>("select roles from users where id = $1")
            .bind(&identity.user_id)
            .fetch_one(&state.db)
            .await
            .map_err(crate::error::database_error)?
            .iter()
            .filter_map(|role| role.parse().ok())
            .collect();
    let ttl_seconds = TOKEN_TTL_SECS.min(state.settings.max_token_ttl_secs);
    let (jwt, claims) = state
        .tokens
        .mint(&TokenRequest {
            sub: identity.user_id.clone(),
            roles: roles.clone(),
            account_id: None,
            name: Some(identity.display_name.clone()),
            ttl_seconds,
        })
        .map_err(ApiError::internal)?;
    let actor = Actor {
        id: identity.user_id.clone(),
        roles,
        request_id: headers
            .get(crate::problem::REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        client_ip: Some(peer.ip()),
    };
    domain::audit::record_now(
        &state.db,
        &actor,
        AuditEntry {
            action: "auth.wechat_login",
            target_type: Some("user"),
            target_id: Some(&identity.user_id),
            outcome: Outcome::Success,
            detail: Some(serde_json::json!({ "created": identity.created })),
        },
    )
    .await?;
    metrics::counter!("wechat_logins_total", "outcome" => "success").increment(1);
    // The openid is masked to 4 characters on its way to the log (crate::masking).
    tracing::info!(user_id = %identity.user_id, openid = %token.openid, created = identity.created,
        "WeChat login");
    Ok(LoginAnswer {
        token: jwt,
        expires_at: claims.exp,
        user: WechatUser {
            id: identity.user_id,
            display_name: identity.display_name,
            created: identity.created,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_this_site_are_redirect_targets() {
        assert_eq!(safe_redirect(None).ok().as_deref(), Some("/"));
        assert!(safe_redirect(Some("/console/?tab=1")).is_ok());
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "evil",
            "/a b",
            "/a#b",
            "/a\u{0}",
        ] {
            assert!(safe_redirect(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_binding_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hub_wechat_login=xyz; b=2"),
        );
        assert_eq!(cookie_value(&headers).as_deref(), Some("xyz"));
    }
}
