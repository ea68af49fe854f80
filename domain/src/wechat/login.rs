//! Website QR-code login (WeChat Open Platform, `shared/spec/wechat.md` §A): the authorize URL,
//! the code exchange and the user info. WeChat answers these with HTTP 200 and `text/plain` JSON
//! even for errors, so bodies are parsed by content and errors matched by `errcode`.

use serde::Deserialize;
use std::time::Duration;

/// The website application used for QR login.
#[derive(Debug)]
pub struct LoginConfig {
    /// QR login page base (`https://open.weixin.qq.com`).
    pub open_base: String,
    /// OAuth base (`https://api.weixin.qq.com`).
    pub sns_base: String,
    /// The website application's AppID.
    pub appid: String,
    /// Its secret (never logged).
    pub secret: secrecy::SecretString,
    /// The public URL of the hub's callback.
    pub redirect_uri: String,
    /// Longest wait for one answer.
    pub timeout: Duration,
}

/// Why a login call failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// WeChat could not be reached or answered something that is not its JSON.
    #[error("WeChat login unreachable: {0}")]
    Transport(String),
    /// WeChat refused (`errcode` ≠ 0): 40029 invalid code, 40163 code used, ….
    #[error("WeChat login error {errcode}")]
    Wechat {
        /// WeChat's code.
        errcode: i64,
        /// WeChat's message (not matched on; for logs).
        errmsg: String,
    },
}

/// The code exchanged for a user access token.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessToken {
    /// The user-level token (for `/sns/userinfo`).
    pub access_token: String,
    /// The user, per AppID.
    pub openid: String,
    /// The user across the open-platform account's applications, when bound.
    #[serde(default)]
    pub unionid: Option<String>,
}

/// What `/sns/userinfo` says of the user.
#[derive(Debug, Clone, Deserialize)]
pub struct UserInfo {
    /// Per AppID.
    pub openid: String,
    /// Nickname (may be a placeholder nowadays).
    #[serde(default)]
    pub nickname: String,
    /// Across the open-platform account.
    #[serde(default)]
    pub unionid: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// A WeChat login client.
#[derive(Debug)]
pub struct WechatLogin {
    http: reqwest::Client,
    config: LoginConfig,
}

impl WechatLogin {
    /// A client for `config`.
    pub fn new(config: LoginConfig) -> Result<Self, LoginError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| LoginError::Transport(error.to_string()))?;
        Ok(Self { http, config })
    }

    /// The QR login page for `state` (§A.1: `#wechat_redirect` after the query).
    pub fn authorize_url(&self, state: &str) -> String {
        let query = form_urlencoded(&[
            ("appid", &self.config.appid),
            ("redirect_uri", &self.config.redirect_uri),
            ("response_type", "code"),
            ("scope", "snsapi_login"),
            ("state", state),
        ]);
        format!(
            "{}/connect/qrconnect?{query}#wechat_redirect",
            self.config.open_base
        )
    }

    /// Exchanges a callback's `code` (once: WeChat refuses a second exchange with 40163).
    pub async fn exchange(&self, code: &str) -> Result<AccessToken, LoginError> {
        use secrecy::ExposeSecret;
        let query = form_urlencoded(&[
            ("appid", &self.config.appid),
            ("secret", self.config.secret.expose_secret()),
            ("code", code),
            ("grant_type", "authorization_code"),
        ]);
        self.get(&format!("/sns/oauth2/access_token?{query}")).await
    }

    /// The user behind a token.
    pub async fn user_info(&self, token: &AccessToken) -> Result<UserInfo, LoginError> {
        let query = form_urlencoded(&[
            ("access_token", &token.access_token),
            ("openid", &token.openid),
            ("lang", "zh_CN"),
        ]);
        self.get(&format!("/sns/userinfo?{query}")).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, LoginError> {
        let url = format!("{}{path}", self.config.sns_base);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|error| LoginError::Transport(without_url(&error)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| LoginError::Transport(without_url(&error)))?;
        parse_answer(status.as_u16(), &body)
    }
}

/// Reads an answer by its content, whatever its content type: an `errcode` ≠ 0 is WeChat's
/// refusal, anything else must be the expected JSON.
pub fn parse_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &[u8],
) -> Result<T, LoginError> {
    if let Ok(error) = serde_json::from_slice::<ErrorBody>(body)
        && error.errcode != 0
    {
        return Err(LoginError::Wechat {
            errcode: error.errcode,
            errmsg: error.errmsg,
        });
    }
    if !(200..300).contains(&status) {
        return Err(LoginError::Transport(format!("HTTP {status}")));
    }
    serde_json::from_slice(body)
        .map_err(|error| LoginError::Transport(format!("unexpected answer: {error}")))
}

/// What went wrong, without the URL (it carries the app secret or a user's token).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_decode() {
        "cannot read the answer"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_matched_by_errcode_whatever_the_content_type() {
        let body = br#"{"errcode":40029,"errmsg":"invalid code, rid: 6270dbb5-47d9f324"}"#;
        match parse_answer::<AccessToken>(200, body) {
            Err(LoginError::Wechat { errcode, .. }) => assert_eq!(errcode, 40029),
            other => panic!("{other:?}"),
        }
        let ok = br#"{"access_token":"83_x","expires_in":7200,"refresh_token":"r","openid":"o1","scope":"snsapi_login","unionid":"u1"}"#;
        let token: AccessToken = parse_answer(200, ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.unionid.as_deref(), Some("u1"));
        assert!(parse_answer::<AccessToken>(502, b"<html>").is_err());
    }

    #[test]
    fn the_authorize_url_is_wechats_shape() {
        let login = WechatLogin::new(LoginConfig {
            open_base: "https://open.weixin.qq.com".into(),
            sns_base: "https://api.weixin.qq.com".into(),
            appid: "wx123".into(),
            secret: "s".into(),
            redirect_uri: "https://hub.example/api/v1/auth/wechat/callback".into(),
            timeout: Duration::from_secs(1),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            login.authorize_url("abc"),
            "https://open.weixin.qq.com/connect/qrconnect?appid=wx123&redirect_uri=https%3A%2F%2F\
             hub.example%2Fapi%2Fv1%2Fauth%2Fwechat%2Fcallback&response_type=code&scope=\
             snsapi_login&state=abc#wechat_redirect"
        );
    }
}
