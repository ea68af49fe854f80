//! The WeChat sandbox, first slice: WeChat Pay's side of the APIv3 Native order, query and close
//! (`shared/spec/wechat.md` §B, §H), with its own keys. Every request's `Authorization` is checked
//! as WeChat does (parameters in any order, the five-line string rebuilt from the raw request, the
//! merchant's key by serial, `mchid` matching, a 300 s window, `Accept` and `User-Agent` required:
//! 401 `SIGN_ERROR` / 400 `INVALID_REQUEST` otherwise); every answer, 204 included, is signed with
//! the sandbox's key (`Wechatpay-*` headers). Test controls under `/sandbox/` make the next calls
//! fail with 500 or carry a `WECHATPAY/SIGNTEST/` probe signature.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use domain::wechat::apiv3::{
    MerchantSigner, PublicKey, SCHEME, SignedHeaders, answer_message, encrypt_resource,
    parse_authorization, request_message,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Who the sandbox is and whom it serves.
#[derive(Debug)]
pub struct SandboxConfig {
    /// The merchant it serves.
    pub mchid: String,
    /// The AppID bound to the merchant.
    pub appid: String,
    /// The merchant API certificate serial requests must name.
    pub merchant_serial_no: String,
    /// The merchant's public key (checks requests).
    pub merchant_public_key: PublicKey,
    /// The sandbox's own key, as WeChat Pay's (`serial` = its `PUB_KEY_ID_…`).
    pub wechat_signer: MerchantSigner,
    /// The id of the sandbox's public key (`PUB_KEY_ID_…`).
    pub wechat_public_key_id: String,
}

impl SandboxConfig {
    /// A payment notification as WeChat Pay sends it to `notify_url` (§D.4): the envelope with the
    /// transaction encrypted under `apiv3_key` (AES-256-GCM, 12-character nonce, AAD
    /// `transaction`), signed like an answer; a `WECHATPAY/SIGNTEST/` probe when `probe`.
    pub fn notification(
        &self,
        apiv3_key: &str,
        transaction: &serde_json::Value,
        probe: bool,
    ) -> Result<(SignedHeaders, Vec<u8>), String> {
        let nonce: String = random_hex(6);
        let ciphertext = encrypt_resource(
            apiv3_key,
            &nonce,
            "transaction",
            transaction.to_string().as_bytes(),
        )
        .map_err(|error| error.to_string())?;
        let body = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "create_time": chrono::Utc::now()
                .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).ok_or("offset")?)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "associated_data": "transaction",
                "nonce": nonce,
            },
        })
        .to_string()
        .into_bytes();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let header_nonce = random_hex(16);
        let signature = if probe {
            format!("WECHATPAY/SIGNTEST/{}", random_hex(32))
        } else {
            self.wechat_signer
                .sign(&answer_message(&timestamp, &header_nonce, &body))
                .map_err(|error| error.to_string())?
        };
        Ok((
            SignedHeaders {
                timestamp: Some(timestamp),
                nonce: Some(header_nonce),
                signature: Some(signature),
                serial: Some(self.wechat_public_key_id.clone()),
            },
            body,
        ))
    }
}

#[derive(Debug, Clone)]
struct Order {
    /// The request's business parameters, to tell a repeat from a conflicting reuse.
    params: serde_json::Value,
    state: &'static str,
    amount: i64,
    attach: String,
    code_url: String,
}

#[derive(Debug, Default)]
struct Controls {
    /// The next this many API calls answer 500.
    fail_next: u32,
    /// The next 2xx answer carries a probe signature.
    probe_next: bool,
}

#[derive(Debug, Clone)]
struct Sandbox {
    config: Arc<SandboxConfig>,
    orders: Arc<Mutex<HashMap<String, Order>>>,
    controls: Arc<Mutex<Controls>>,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

impl Sandbox {
    /// Answers `body` with `status`, signed as WeChat Pay signs (a probe when asked).
    fn signed(&self, status: StatusCode, body: Vec<u8>) -> Response {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let nonce = random_hex(16);
        let probe = std::mem::take(&mut self.lock_controls().probe_next);
        let signature = if probe {
            format!("WECHATPAY/SIGNTEST/{}", random_hex(32))
        } else {
            match self
                .config
                .wechat_signer
                .sign(&answer_message(&timestamp, &nonce, &body))
            {
                Ok(signature) => signature,
                Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "sign"),
            }
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        for (name, value) in [
            ("wechatpay-timestamp", timestamp),
            ("wechatpay-nonce", nonce),
            ("wechatpay-signature", signature),
            ("wechatpay-serial", self.config.wechat_public_key_id.clone()),
            ("wechatpay-signature-type", SCHEME.to_owned()),
            ("request-id", format!("{}-0", random_hex(22).to_uppercase())),
            ("content-type", "application/json; charset=utf-8".to_owned()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }

    fn lock_controls(&self) -> std::sync::MutexGuard<'_, Controls> {
        self.controls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_orders(&self) -> std::sync::MutexGuard<'_, HashMap<String, Order>> {
        self.orders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks a request as WeChat Pay does; the refusal to send otherwise.
    fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Response> {
        {
            let mut controls = self.lock_controls();
            if controls.fail_next > 0 {
                controls.fail_next -= 1;
                return Some(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "SYSTEM_ERROR",
                    "系统错误",
                ));
            }
        }
        if !headers.contains_key("accept") || !headers.contains_key("user-agent") {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "Http头缺少Accept或User-Agent",
            ));
        }
        let sign_error = || {
            Some(error(
                StatusCode::UNAUTHORIZED,
                "SIGN_ERROR",
                "错误的签名，验签失败",
            ))
        };
        let Some(params) = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_authorization)
        else {
            return sign_error();
        };
        let field = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let Ok(timestamp) = field("timestamp").parse::<i64>() else {
            return sign_error();
        };
        if (chrono::Utc::now().timestamp() - timestamp).abs() >= 300
            || field("mchid") != self.config.mchid
            || field("serial_no") != self.config.merchant_serial_no
        {
            return sign_error();
        }
        let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        let message = request_message(
            method.as_str(),
            path_and_query,
            timestamp,
            field("nonce_str"),
            body,
        );
        if !self
            .config
            .merchant_public_key
            .verifies(&message, field("signature"))
        {
            return sign_error();
        }
        None
    }
}

async fn native(
    State(sandbox): State<Sandbox>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = sandbox.check(&method, &uri, &headers, &body) {
        return refusal;
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "参数错误");
    };
    let out_trade_no = request["out_trade_no"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let valid_number = (6..=32).contains(&out_trade_no.len())
        && out_trade_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b));
    let amount = request["amount"]["total"].as_i64().unwrap_or(0);
    if !valid_number
        || amount <= 0
        || request["notify_url"].as_str().is_none_or(str::is_empty)
        || request["description"]
            .as_str()
            .is_none_or(|d| d.is_empty() || d.chars().count() > 127)
    {
        return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "参数错误");
    }
    if request["mchid"] != sandbox.config.mchid.as_str() {
        return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "mchid不匹配");
    }
    if request["appid"] != sandbox.config.appid.as_str() {
        return error(
            StatusCode::BAD_REQUEST,
            "APPID_MCHID_NOT_MATCH",
            "appid和mch_id不匹配",
        );
    }
    let code_url = format!("weixin://wxpay/bizpayurl?pr={}", random_hex(5));
    {
        let mut orders = sandbox.lock_orders();
        match orders.get_mut(&out_trade_no) {
            // The same parameters again: a fresh code_url, the old one void.
            Some(order) if order.params == request && order.state == "NOTPAY" => {
                order.code_url = code_url.clone();
            }
            Some(order) if order.params == request => {
                return error(StatusCode::BAD_REQUEST, "ORDER_CLOSED", "订单已关闭");
            }
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "请求重入时，参数与首次请求时不一致",
                );
            }
            None => {
                orders.insert(
                    out_trade_no,
                    Order {
                        params: request.clone(),
                        state: "NOTPAY",
                        amount,
                        attach: request["attach"].as_str().unwrap_or_default().to_owned(),
                        code_url: code_url.clone(),
                    },
                );
            }
        }
    }
    let body = serde_json::json!({ "code_url": code_url }).to_string();
    sandbox.signed(StatusCode::OK, body.into_bytes())
}

async fn query(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = sandbox.check(&method, &uri, &headers, b"") {
        return refusal;
    }
    let Some(order) = sandbox.lock_orders().get(&out_trade_no).cloned() else {
        return error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    let description = match order.state {
        "NOTPAY" => "订单未支付",
        "CLOSED" => "订单已关闭",
        _ => "支付成功",
    };
    let body = serde_json::json!({
        "amount": { "payer_currency": "CNY", "total": order.amount },
        "appid": sandbox.config.appid,
        "mchid": sandbox.config.mchid,
        "out_trade_no": out_trade_no,
        "attach": order.attach,
        "promotion_detail": [],
        "scene_info": { "device_id": "" },
        "trade_state": order.state,
        "trade_state_desc": description,
    });
    sandbox.signed(StatusCode::OK, body.to_string().into_bytes())
}

async fn close(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = sandbox.check(&method, &uri, &headers, &body) {
        return refusal;
    }
    if let Some(order) = sandbox.lock_orders().get_mut(&out_trade_no) {
        match order.state {
            "NOTPAY" => order.state = "CLOSED",
            "SUCCESS" => return error(StatusCode::BAD_REQUEST, "ORDERPAID", "订单已支付"),
            _ => {}
        }
    }
    // Like WeChat, an unknown order closes "successfully": the caller must query to be sure.
    sandbox.signed(StatusCode::NO_CONTENT, Vec::new())
}

async fn fail_next(State(sandbox): State<Sandbox>, Path(count): Path<u32>) -> StatusCode {
    sandbox.lock_controls().fail_next = count;
    StatusCode::NO_CONTENT
}

async fn probe_next(State(sandbox): State<Sandbox>) -> StatusCode {
    sandbox.lock_controls().probe_next = true;
    StatusCode::NO_CONTENT
}

/// The sandbox's routes.
pub fn router(config: SandboxConfig) -> Router {
    let sandbox = Sandbox {
        config: Arc::new(config),
        orders: Arc::default(),
        controls: Arc::default(),
    };
    Router::new()
        .route("/v3/pay/transactions/native", post(native))
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}",
            get(query),
        )
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
            post(close),
        )
        .route("/sandbox/fail-next/{count}", post(fail_next))
        .route("/sandbox/probe-next", post(probe_next))
        .with_state(sandbox)
}
