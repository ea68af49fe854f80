//! The WeChat sandbox: a fake WeChat that speaks WeChat's side of the real protocols
//! (`shared/spec/wechat.md` §A, §B, §D, §H) with its own keys, so the hub can be run and tested
//! end to end where WeChat cannot be reached.
//!
//! - WeChat Pay APIv3: Native order, query, close. Every request's `Authorization` is checked as
//!   WeChat does (parameters in any order, the five-line string rebuilt from the raw request, the
//!   merchant's key by serial, `mchid` matching, a 300 s window, `Accept` and `User-Agent`
//!   required: 401 `SIGN_ERROR` / 400 `INVALID_REQUEST` otherwise); every answer, 204 included,
//!   is signed with the sandbox's key (`Wechatpay-*` headers).
//! - Payment notifications: paying an order sends the signed, AES-256-GCM encrypted
//!   notification to its `notify_url`, retried on WeChat's schedule (15 s … 6 h, scaled by
//!   `retry_scale` for tests) until the hub answers 2xx.
//! - Website QR login: `/connect/qrconnect` (a page to approve or decline), `/sns/oauth2/
//!   access_token` (codes single use: 40163 on reuse, 40029 unknown) and `/sns/userinfo`,
//!   answered as WeChat does: HTTP 200, `text/plain`, errors by `errcode`.
//! - Controls under `/sandbox/`: approve a login as a named user, pay an order (optionally
//!   dropping the notification or sending a probe first), re-send a notification as a
//!   duplicate, a replay, a probe or a forgery, list deliveries, make calls fail or answers
//!   probe-signed.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use domain::wechat::apiv3::{
    MerchantSigner, PublicKey, SCHEME, SignedHeaders, answer_message, encrypt_resource,
    parse_authorization, request_message,
};
use domain::wechat::client::beijing_time;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// WeChat's notification retry schedule after a failed delivery (§D.5): 15 tries over ~24 h.
const RETRY_SCHEDULE_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];

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
    /// The merchant's APIv3 key (encrypts notifications).
    pub apiv3_key: String,
    /// The website application of the QR login.
    pub login_appid: String,
    /// Its secret.
    pub login_secret: String,
    /// Multiplies WeChat's notification retry schedule (1.0 = WeChat's; tests use 0.001).
    pub retry_scale: f64,
}

/// How a notification is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signing {
    /// As WeChat signs, now.
    Genuine,
    /// A `WECHATPAY/SIGNTEST/` probe.
    Probe,
    /// Genuinely signed ten minutes ago.
    Stale,
    /// Signed, but naming another key id.
    ForeignSerial,
    /// Signed, then the body changed.
    Tampered,
}

impl SandboxConfig {
    /// A payment notification as WeChat Pay sends it to `notify_url` (§D.4): the envelope with the
    /// transaction encrypted under `apiv3_key` (AES-256-GCM, 12-character nonce, AAD
    /// `transaction`), signed like an answer; a `WECHATPAY/SIGNTEST/` probe when `probe`.
    pub fn notification(
        &self,
        apiv3_key: &str,
        transaction: &Value,
        probe: bool,
    ) -> Result<(SignedHeaders, Vec<u8>), String> {
        let id = uuid::Uuid::new_v4().to_string();
        let body = envelope(&id, apiv3_key, transaction)?;
        let signing = if probe {
            Signing::Probe
        } else {
            Signing::Genuine
        };
        self.sign_notification(body, signing)
    }

    fn sign_notification(
        &self,
        mut body: Vec<u8>,
        signing: Signing,
    ) -> Result<(SignedHeaders, Vec<u8>), String> {
        let mut timestamp = chrono::Utc::now().timestamp();
        if signing == Signing::Stale {
            timestamp -= 600;
        }
        let timestamp = timestamp.to_string();
        let nonce = random_hex(16);
        let signature = if signing == Signing::Probe {
            format!("WECHATPAY/SIGNTEST/{}", random_hex(32))
        } else {
            self.wechat_signer
                .sign(&answer_message(&timestamp, &nonce, &body))
                .map_err(|error| error.to_string())?
        };
        if signing == Signing::Tampered {
            body.extend_from_slice(b" ");
        }
        let serial = if signing == Signing::ForeignSerial {
            "PUB_KEY_ID_0000000000000000000000000000".to_owned()
        } else {
            self.wechat_public_key_id.clone()
        };
        Ok((
            SignedHeaders {
                timestamp: Some(timestamp),
                nonce: Some(nonce),
                signature: Some(signature),
                serial: Some(serial),
            },
            body,
        ))
    }
}

/// The notification envelope (§D.4) with `transaction` encrypted under `apiv3_key`.
fn envelope(id: &str, apiv3_key: &str, transaction: &Value) -> Result<Vec<u8>, String> {
    let nonce: String = random_hex(6);
    let ciphertext = encrypt_resource(
        apiv3_key,
        &nonce,
        "transaction",
        transaction.to_string().as_bytes(),
    )
    .map_err(|error| error.to_string())?;
    Ok(json!({
        "id": id,
        "create_time": beijing_time(chrono::Utc::now()),
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
    .into_bytes())
}

#[derive(Debug, Clone)]
struct Order {
    /// The request's business parameters, to tell a repeat from a conflicting reuse.
    params: Value,
    state: &'static str,
    amount: i64,
    attach: String,
    code_url: String,
    notify_url: String,
    description: String,
    transaction_id: Option<String>,
    success_time: Option<String>,
    payer_openid: Option<String>,
    /// The notification of its payment: id, and the last signed copy sent (for replays).
    notification_id: Option<String>,
    last_sent: Option<(SignedHeaders, Vec<u8>)>,
    /// How the bill shows it (controls): another day, another amount, or not at all.
    bill: BillTweak,
    /// Refunds: when (Beijing, `YYYY-MM-DD HH:MM:SS`) and how much.
    refunds: Vec<(String, i64)>,
}

/// `POST /sandbox/orders/{out_trade_no}/bill`: how the order appears in the bills.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BillTweak {
    /// Left out of every bill.
    omit: bool,
    /// Another amount in the bill.
    amount_fen: Option<i64>,
    /// Another day's bill (a payment near midnight).
    bill_date: Option<chrono::NaiveDate>,
}

/// `POST /sandbox/bill-faults`: what is wrong with the next bill (one shot).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BillFaults {
    /// The file differs from the announced SHA-1.
    tamper: bool,
    /// A payment row is cut out (the hash fits the cut file; the summary does not).
    truncate: bool,
    /// `STATEMENT_CREATING` instead of a bill.
    creating: bool,
}

#[derive(Debug, Default)]
struct Controls {
    /// The next this many API calls answer 500.
    fail_next: u32,
    /// The next 2xx answer carries a probe signature.
    probe_next: bool,
    /// What is wrong with the next bill.
    bill_faults: BillFaults,
}

/// A login approved in the sandbox, waiting for its code to be exchanged.
#[derive(Debug, Clone)]
struct Grant {
    openid: String,
    unionid: Option<String>,
    nickname: String,
    used: bool,
}

#[derive(Debug, Default)]
struct Logins {
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, Grant>,
}

/// One attempt to deliver a notification, as the hub answered it.
#[derive(Debug, Clone, serde::Serialize)]
struct Delivery {
    out_trade_no: String,
    kind: String,
    attempt: u32,
    status: Option<u16>,
    at: String,
}

#[derive(Debug, Clone)]
struct Sandbox {
    config: Arc<SandboxConfig>,
    orders: Arc<Mutex<HashMap<String, Order>>>,
    controls: Arc<Mutex<Controls>>,
    logins: Arc<Mutex<Logins>>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    /// Bills applied for, by download token: the bytes served (gzipped when asked).
    bills: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    http: reqwest::Client,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn random_alnum(length: usize) -> String {
    use rand::Rng;
    const SYMBOLS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..length)
        .map(|_| SYMBOLS[rng.random_range(0..SYMBOLS.len())] as char)
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "code": code, "message": message }).to_string();
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An `api.weixin.qq.com/sns/*` answer: HTTP 200 and `text/plain`, errors included.
fn sns(body: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain")],
        body.to_string(),
    )
        .into_response()
}

fn sns_error(errcode: i64, errmsg: &str) -> Response {
    sns(json!({
        "errcode": errcode,
        "errmsg": format!("{errmsg}, rid: {}", random_hex(8)),
    }))
}

impl Sandbox {
    /// Answers `body` with `status`, signed as WeChat Pay signs (a probe when asked).
    fn signed(&self, status: StatusCode, body: Vec<u8>) -> Response {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let nonce = random_hex(16);
        let probe = std::mem::take(&mut lock(&self.controls).probe_next);
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

    /// Checks a request as WeChat Pay does; the refusal to send otherwise.
    fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Response> {
        {
            let mut controls = lock(&self.controls);
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

    /// The transaction of an order as WeChat reports it (query and notification, §B.2).
    fn transaction(&self, out_trade_no: &str, order: &Order) -> Value {
        let description = match order.state {
            "NOTPAY" => "订单未支付",
            "CLOSED" => "订单已关闭",
            _ => "支付成功",
        };
        let mut transaction = json!({
            "amount": { "payer_currency": "CNY", "total": order.amount, "currency": "CNY" },
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "out_trade_no": out_trade_no,
            "attach": order.attach,
            "promotion_detail": [],
            "scene_info": { "device_id": "" },
            "trade_state": order.state,
            "trade_state_desc": description,
        });
        if order.state == "SUCCESS" {
            transaction["transaction_id"] = json!(order.transaction_id);
            transaction["success_time"] = json!(order.success_time);
            transaction["trade_type"] = json!("NATIVE");
            transaction["bank_type"] = json!("OTHERS");
            transaction["payer"] = json!({ "openid": order.payer_openid });
            transaction["amount"]["payer_total"] = json!(order.amount);
        }
        transaction
    }

    /// Sends one notification to `url`; records and returns the hub's status.
    async fn send(
        &self,
        url: &str,
        out_trade_no: &str,
        kind: &str,
        attempt: u32,
        (headers, body): &(SignedHeaders, Vec<u8>),
    ) -> Option<u16> {
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "Mozilla/4.0")
            .header("wechatpay-signature-type", SCHEME)
            .body(body.clone());
        for (name, value) in [
            ("wechatpay-timestamp", &headers.timestamp),
            ("wechatpay-nonce", &headers.nonce),
            ("wechatpay-signature", &headers.signature),
            ("wechatpay-serial", &headers.serial),
        ] {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        let status = match request.send().await {
            Ok(response) => Some(response.status().as_u16()),
            Err(_) => None,
        };
        lock(&self.deliveries).push(Delivery {
            out_trade_no: out_trade_no.to_owned(),
            kind: kind.to_owned(),
            attempt,
            status,
            at: beijing_time(chrono::Utc::now()),
        });
        status
    }

    /// A fresh genuine copy of an order's payment notification (same id), remembered for replays.
    fn signed_notification(
        &self,
        out_trade_no: &str,
        signing: Signing,
    ) -> Option<(String, (SignedHeaders, Vec<u8>))> {
        let mut orders = lock(&self.orders);
        let order = orders.get_mut(out_trade_no)?;
        let id = order
            .notification_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let transaction = self.transaction(out_trade_no, order);
        let body = envelope(&id, &self.config.apiv3_key, &transaction).ok()?;
        let signed = self.config.sign_notification(body, signing).ok()?;
        if signing == Signing::Genuine {
            order.last_sent = Some(signed.clone());
        }
        Some((order.notify_url.clone(), signed))
    }

    /// Delivers an order's notification until the hub answers 2xx, on WeChat's schedule.
    async fn deliver_until_acknowledged(self, out_trade_no: String) {
        for attempt in 0..=RETRY_SCHEDULE_SECS.len() as u32 {
            let Some((url, signed)) = self.signed_notification(&out_trade_no, Signing::Genuine)
            else {
                return;
            };
            let status = self
                .send(&url, &out_trade_no, "notification", attempt + 1, &signed)
                .await;
            if status.is_some_and(|status| (200..300).contains(&status)) {
                return;
            }
            let Some(delay) = RETRY_SCHEDULE_SECS.get(attempt as usize) else {
                return;
            };
            let scaled = Duration::from_secs_f64(*delay as f64 * self.config.retry_scale);
            tokio::time::sleep(scaled).await;
        }
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
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
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
    let notify_url = request["notify_url"].as_str().unwrap_or_default();
    if !valid_number
        || amount <= 0
        || notify_url.is_empty()
        || notify_url.contains('?')
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
    let code_url = format!("weixin://wxpay/bizpayurl?pr={}", random_alnum(9));
    {
        let mut orders = lock(&sandbox.orders);
        match orders.get_mut(&out_trade_no) {
            // The same parameters again: a fresh code_url, the old one void.
            Some(order) if order.params == request && order.state == "NOTPAY" => {
                order.code_url = code_url.clone();
            }
            Some(order) if order.params == request && order.state == "SUCCESS" => {
                return error(StatusCode::BAD_REQUEST, "ORDERPAID", "该订单已支付");
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
                        notify_url: notify_url.to_owned(),
                        description: request["description"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        transaction_id: None,
                        success_time: None,
                        payer_openid: None,
                        notification_id: None,
                        last_sent: None,
                        bill: BillTweak::default(),
                        refunds: Vec::new(),
                    },
                );
            }
        }
    }
    let body = json!({ "code_url": code_url }).to_string();
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
    let Some(order) = lock(&sandbox.orders).get(&out_trade_no).cloned() else {
        return error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    let body = sandbox.transaction(&out_trade_no, &order);
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
    if let Some(order) = lock(&sandbox.orders).get_mut(&out_trade_no) {
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
    lock(&sandbox.controls).fail_next = count;
    StatusCode::NO_CONTENT
}

async fn probe_next(State(sandbox): State<Sandbox>) -> StatusCode {
    lock(&sandbox.controls).probe_next = true;
    StatusCode::NO_CONTENT
}

/// Options of `POST /sandbox/pay/{out_trade_no}` (a JSON body, all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PayOptions {
    /// Send no notification (only a query or the reconciliation can find the payment).
    drop: bool,
    /// Send a `WECHATPAY/SIGNTEST/` probe before the genuine notification.
    probe_first: bool,
    /// The payer's openid (under the payment AppID).
    payer_openid: Option<String>,
    /// When WeChat says it was paid (RFC 3339; default now).
    success_time: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// Pays an order as a payer scanning its QR code would: the order turns SUCCESS and its
/// notification is delivered (unless dropped) until the hub acknowledges it.
async fn pay(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    body: Bytes,
) -> Response {
    let options: PayOptions = if body.is_empty() {
        PayOptions::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(options) => options,
            Err(problem) => {
                return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &problem.to_string());
            }
        }
    };
    let transaction_id = {
        let mut orders = lock(&sandbox.orders);
        let Some(order) = orders.get_mut(&out_trade_no) else {
            return error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
        };
        if order.state != "NOTPAY" {
            return error(StatusCode::CONFLICT, "ORDER_NOT_PAYABLE", order.state);
        }
        order.state = "SUCCESS";
        let now = chrono::Utc::now();
        let transaction_id = format!(
            "4200{}{}",
            now.format("%Y%m%d"),
            &random_hex(8)
                .bytes()
                .map(|b| (b % 10 + b'0') as char)
                .collect::<String>()
        );
        order.transaction_id = Some(transaction_id.clone());
        let paid_at = options
            .success_time
            .map_or(now, |at| at.with_timezone(&chrono::Utc));
        order.success_time = Some(beijing_time(paid_at));
        order.payer_openid = Some(
            options
                .payer_openid
                .unwrap_or_else(|| format!("oSandbox{}", random_alnum(20))),
        );
        transaction_id
    };
    if !options.drop {
        let sandbox = sandbox.clone();
        let number = out_trade_no.clone();
        tokio::spawn(async move {
            if options.probe_first
                && let Some((url, probe)) = sandbox.signed_notification(&number, Signing::Probe)
            {
                sandbox.send(&url, &number, "probe", 0, &probe).await;
            }
            sandbox.deliver_until_acknowledged(number).await;
        });
    }
    axum::Json(json!({
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_state": "SUCCESS",
        "notification": if options.drop { "dropped" } else { "sending" },
    }))
    .into_response()
}

/// `POST /sandbox/orders/{out_trade_no}/notify` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyControl {
    /// `duplicate` (the same notification, signed now), `replay` (the last copy sent, byte for
    /// byte), `probe`, `stale` (signed ten minutes ago), `foreign_serial`, `tampered`,
    /// `wrong_amount` (genuinely signed, one fen more), `unknown_order` (genuinely signed, a
    /// number the hub never placed), `wrong_key` (encrypted with another APIv3 key).
    mode: String,
    /// Another address to send it to (a second node).
    to: Option<String>,
}

/// Sends one copy of a paid order's notification, as the mode says; answers the hub's status.
async fn notify_control(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    axum::Json(control): axum::Json<NotifyControl>,
) -> Response {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "PARAM_ERROR", message);
    let Some(order) = lock(&sandbox.orders).get(&out_trade_no).cloned() else {
        return error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    if order.state != "SUCCESS" {
        return bad("pay the order first");
    }
    let config = &sandbox.config;
    let forged = |transaction: Value, key: &str| {
        let body = envelope(&uuid::Uuid::new_v4().to_string(), key, &transaction)?;
        config.sign_notification(body, Signing::Genuine)
    };
    let built = match control.mode.as_str() {
        "duplicate" => sandbox
            .signed_notification(&out_trade_no, Signing::Genuine)
            .map(|(_, signed)| signed)
            .ok_or_else(|| "cannot sign".to_owned()),
        "replay" => order
            .last_sent
            .clone()
            .ok_or_else(|| "nothing was sent yet".to_owned()),
        "probe" | "stale" | "foreign_serial" | "tampered" => {
            let signing = match control.mode.as_str() {
                "probe" => Signing::Probe,
                "stale" => Signing::Stale,
                "foreign_serial" => Signing::ForeignSerial,
                _ => Signing::Tampered,
            };
            sandbox
                .signed_notification(&out_trade_no, signing)
                .map(|(_, signed)| signed)
                .ok_or_else(|| "cannot sign".to_owned())
        }
        "wrong_amount" => {
            let mut transaction = sandbox.transaction(&out_trade_no, &order);
            transaction["amount"]["total"] = json!(order.amount + 1);
            transaction["amount"]["payer_total"] = json!(order.amount + 1);
            forged(transaction, &config.apiv3_key)
        }
        "unknown_order" => {
            let mut transaction = sandbox.transaction(&out_trade_no, &order);
            transaction["out_trade_no"] = json!(random_hex(16));
            forged(transaction, &config.apiv3_key)
        }
        "wrong_key" => {
            let transaction = sandbox.transaction(&out_trade_no, &order);
            forged(transaction, &random_alnum(32))
        }
        _ => return bad("unknown mode"),
    };
    let signed = match built {
        Ok(signed) => signed,
        Err(message) => return bad(&message),
    };
    let url = control.to.unwrap_or(order.notify_url);
    let status = sandbox
        .send(&url, &out_trade_no, &control.mode, 0, &signed)
        .await;
    axum::Json(json!({ "status": status })).into_response()
}

async fn deliveries(State(sandbox): State<Sandbox>) -> Response {
    axum::Json(lock(&sandbox.deliveries).clone()).into_response()
}

/// The sandbox's front page: the orders waiting for payment, each with a link to its checkout
/// (what a person does instead of scanning the QR code with WeChat).
async fn index(State(sandbox): State<Sandbox>) -> Response {
    let orders = lock(&sandbox.orders);
    let mut waiting: Vec<(&String, &Order)> = orders
        .iter()
        .filter(|(_, order)| order.state == "NOTPAY")
        .collect();
    waiting.sort_by(|a, b| a.0.cmp(b.0));
    let rows: String = waiting
        .iter()
        .map(|(number, order)| {
            let number = html_escape(number);
            format!(
                "<li><a href=\"/sandbox/checkout/{number}\">{number}</a>: ¥{}.{:02} — {}</li>",
                order.amount / 100,
                order.amount % 100,
                html_escape(&order.description)
            )
        })
        .collect();
    let list = if rows.is_empty() {
        "<p>No order is waiting for payment. Recharge in the console first.</p>".to_owned()
    } else {
        format!("<ul>{rows}</ul>")
    };
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>WeChat sandbox</title>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
         <h1>WeChat sandbox</h1><p>Orders waiting for payment (newest numbers last); open one to \
         pay it, as scanning its QR code with WeChat would.</p>{list}"
    ))
    .into_response()
}

/// A page to pay an order by hand (what scanning the QR code does in WeChat).
async fn checkout(State(sandbox): State<Sandbox>, Path(out_trade_no): Path<String>) -> Response {
    let Some(order) = lock(&sandbox.orders).get(&out_trade_no).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Html("<p>订单不存在 (no such order)</p>"),
        )
            .into_response();
    };
    let number = html_escape(&out_trade_no);
    let description = html_escape(&order.description);
    let yuan = format!("{}.{:02}", order.amount / 100, order.amount % 100);
    let state = order.state;
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>WeChat Pay sandbox</title>\
         <body style=\"font-family:sans-serif;max-width:30em;margin:3em auto\">\
         <h1>WeChat Pay (sandbox)</h1><p>{description}</p><p>Order <code>{number}</code>: \
         <strong>¥{yuan}</strong>, {state}</p>\
         <button id=pay {disabled}>Pay ¥{yuan}</button><p id=out></p>\
         <script>document.getElementById('pay').onclick=async()=>{{\
         const r=await fetch('/sandbox/pay/{number}',{{method:'POST'}});\
         document.getElementById('out').textContent=r.ok?'Paid: the notification is on its way.':'Refused: '+await r.text();}}</script>",
        disabled = if state == "NOTPAY" { "" } else { "disabled" },
    ))
    .into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `/connect/qrconnect` parameters.
#[derive(Debug, Deserialize)]
struct QrConnect {
    appid: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
}

/// WeChat's QR login page; in the sandbox, a page to approve (as a named user) or decline.
async fn qrconnect(State(sandbox): State<Sandbox>, Query(query): Query<QrConnect>) -> Response {
    let valid = query.appid.as_deref() == Some(sandbox.config.login_appid.as_str())
        && query.response_type.as_deref() == Some("code")
        && query.scope.as_deref() == Some("snsapi_login")
        && query.redirect_uri.is_some();
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>该链接无法访问 (this link cannot be opened)</p>"),
        )
            .into_response();
    }
    let redirect = html_escape(query.redirect_uri.as_deref().unwrap_or_default());
    let state = html_escape(query.state.as_deref().unwrap_or_default());
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>WeChat login sandbox</title>\
         <body style=\"font-family:sans-serif;max-width:30em;margin:3em auto\">\
         <h1>WeChat login (sandbox)</h1><p>In WeChat, the user scans a QR code here.</p>\
         <form action=/sandbox/login/approve method=get>\
         <input type=hidden name=redirect_uri value=\"{redirect}\">\
         <input type=hidden name=state value=\"{state}\">\
         <label>Log in as <input name=nickname value=\"Sandbox user\"></label> \
         <input type=hidden name=openid value=\"oSandboxDemoUser0000000000001\">\
         <button>Approve</button></form>\
         <form action=/sandbox/login/decline method=get>\
         <input type=hidden name=redirect_uri value=\"{redirect}\">\
         <input type=hidden name=state value=\"{state}\"><button>Decline</button></form>"
    ))
    .into_response()
}

/// `/sandbox/login/approve` parameters.
#[derive(Debug, Deserialize)]
struct Approve {
    redirect_uri: String,
    state: Option<String>,
    openid: Option<String>,
    unionid: Option<String>,
    nickname: Option<String>,
}

fn callback_url(redirect_uri: &str, pairs: &[(&str, &str)]) -> String {
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let query: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", urlencode(value)))
        .collect();
    format!("{redirect_uri}{separator}{}", query.join("&"))
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn found(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Approves a QR login as the named user: a fresh single-use code, and the redirect WeChat makes
/// to `redirect_uri?code=…&state=…`.
async fn approve(State(sandbox): State<Sandbox>, Query(approve): Query<Approve>) -> Response {
    let code = random_alnum(32);
    let grant = Grant {
        openid: approve
            .openid
            .unwrap_or_else(|| format!("oSandbox{}", random_alnum(20))),
        unionid: approve.unionid,
        nickname: approve.nickname.unwrap_or_else(|| "Sandbox user".into()),
        used: false,
    };
    lock(&sandbox.logins).codes.insert(code.clone(), grant);
    let state = approve.state.unwrap_or_default();
    found(&callback_url(
        &approve.redirect_uri,
        &[("code", &code), ("state", &state)],
    ))
}

/// Declines a QR login: WeChat redirects with the state only.
async fn decline(Query(approve): Query<Approve>) -> Response {
    let state = approve.state.unwrap_or_default();
    found(&callback_url(&approve.redirect_uri, &[("state", &state)]))
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    appid: Option<String>,
    secret: Option<String>,
    code: Option<String>,
    grant_type: Option<String>,
}

/// `/sns/oauth2/access_token`: a code for a user token, once.
async fn access_token(State(sandbox): State<Sandbox>, Query(query): Query<TokenQuery>) -> Response {
    if query.appid.as_deref() != Some(sandbox.config.login_appid.as_str()) {
        return sns_error(40013, "invalid appid");
    }
    if query.secret.as_deref() != Some(sandbox.config.login_secret.as_str()) {
        return sns_error(40125, "invalid appsecret");
    }
    if query.grant_type.as_deref() != Some("authorization_code") {
        return sns_error(40097, "invalid args");
    }
    let Some(code) = query.code.filter(|code| !code.is_empty()) else {
        return sns_error(41008, "missing code");
    };
    let mut logins = lock(&sandbox.logins);
    let Some(grant) = logins.codes.get_mut(&code) else {
        return sns_error(40029, "invalid code");
    };
    if grant.used {
        return sns_error(40163, "code been used");
    }
    grant.used = true;
    let grant = grant.clone();
    let token = format!("83_{}", random_alnum(40));
    logins.tokens.insert(token.clone(), grant.clone());
    let mut answer = json!({
        "access_token": token,
        "expires_in": 7200,
        "refresh_token": format!("83_{}", random_alnum(40)),
        "openid": grant.openid,
        "scope": "snsapi_login",
    });
    if let Some(unionid) = grant.unionid {
        answer["unionid"] = json!(unionid);
    }
    sns(answer)
}

#[derive(Debug, Deserialize)]
struct UserInfoQuery {
    access_token: Option<String>,
    openid: Option<String>,
}

/// `/sns/userinfo`.
async fn userinfo(State(sandbox): State<Sandbox>, Query(query): Query<UserInfoQuery>) -> Response {
    let logins = lock(&sandbox.logins);
    let Some(grant) = query
        .access_token
        .as_deref()
        .and_then(|token| logins.tokens.get(token))
    else {
        return sns_error(40014, "invalid access_token");
    };
    if query.openid.as_deref() != Some(grant.openid.as_str()) {
        return sns_error(40003, "invalid openid");
    }
    let mut answer = json!({
        "openid": grant.openid,
        "nickname": grant.nickname,
        "sex": 0,
        "province": "",
        "city": "",
        "country": "CN",
        "headimgurl": "",
        "privilege": [],
    });
    if let Some(unionid) = &grant.unionid {
        answer["unionid"] = json!(unionid);
    }
    sns(answer)
}

/// Changes how an order appears in the bills.
async fn tweak_bill(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    axum::Json(tweak): axum::Json<BillTweak>,
) -> Response {
    match lock(&sandbox.orders).get_mut(&out_trade_no) {
        Some(order) => {
            order.bill = tweak;
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundControl {
    amount_fen: i64,
}

/// Refunds (part of) a paid order now: a REFUND row in today's bill.
async fn refund(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    axum::Json(control): axum::Json<RefundControl>,
) -> Response {
    let mut orders = lock(&sandbox.orders);
    let Some(order) = orders.get_mut(&out_trade_no) else {
        return error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    let refunded: i64 = order.refunds.iter().map(|(_, fen)| fen).sum();
    if order.state != "SUCCESS"
        || control.amount_fen <= 0
        || refunded + control.amount_fen > order.amount
    {
        return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "不可退款");
    }
    let at = beijing_time(chrono::Utc::now()).replace('T', " ");
    order
        .refunds
        .push((at[..19].to_owned(), control.amount_fen));
    StatusCode::NO_CONTENT.into_response()
}

async fn bill_faults(
    State(sandbox): State<Sandbox>,
    axum::Json(faults): axum::Json<BillFaults>,
) -> StatusCode {
    lock(&sandbox.controls).bill_faults = faults;
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct TradeBillQuery {
    bill_date: Option<String>,
    bill_type: Option<String>,
    tar_type: Option<String>,
}

/// The bill rows of a day: payments by their success (or tweaked) day, refunds by theirs.
fn bill_rows(sandbox: &Sandbox, date: chrono::NaiveDate) -> Vec<domain::wechat::bill::BillRow> {
    let day = date.format("%Y-%m-%d").to_string();
    let config = &sandbox.config;
    let mut rows = Vec::new();
    for (number, order) in lock(&sandbox.orders).iter() {
        let (Some(success), Some(transaction_id)) = (&order.success_time, &order.transaction_id)
        else {
            continue;
        };
        // `2026-12-06T23:59:59+08:00` → `2026-12-06 23:59:59`.
        let trade_time = success
            .replace('T', " ")
            .chars()
            .take(19)
            .collect::<String>();
        let paid_day = order.bill.bill_date.map_or_else(
            || trade_time[..10].to_owned(),
            |d| d.format("%Y-%m-%d").to_string(),
        );
        let row = |state: &str, trade_time: String| domain::wechat::bill::BillRow {
            trade_time,
            appid: config.appid.clone(),
            mchid: config.mchid.clone(),
            transaction_id: transaction_id.clone(),
            out_trade_no: number.clone(),
            trade_state: state.into(),
            settlement_fen: 0,
            refund_fen: 0,
            order_fen: 0,
            refund_applied_fen: 0,
            attach: order.attach.clone(),
        };
        if paid_day == day && !order.bill.omit {
            let amount = order.bill.amount_fen.unwrap_or(order.amount);
            rows.push(domain::wechat::bill::BillRow {
                settlement_fen: amount,
                order_fen: amount,
                ..row("SUCCESS", trade_time.clone())
            });
        }
        for (at, fen) in &order.refunds {
            if at[..10] == day {
                rows.push(domain::wechat::bill::BillRow {
                    refund_fen: *fen,
                    refund_applied_fen: *fen,
                    ..row("REFUND", at.clone())
                });
            }
        }
    }
    rows.sort_by(|a, b| a.trade_time.cmp(&b.trade_time));
    rows
}

/// `GET /v3/bill/tradebill`: applies for a day's bill (§E.1).
async fn trade_bill(
    State(sandbox): State<Sandbox>,
    Query(query): Query<TradeBillQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = sandbox.check(&method, &uri, &headers, b"") {
        return refusal;
    }
    let Some(date) = query
        .bill_date
        .as_deref()
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    else {
        return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "bill_date 格式错误");
    };
    if query.bill_type.as_deref().is_some_and(|t| t != "ALL") {
        return error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "沙箱只支持 ALL");
    }
    let faults = std::mem::take(&mut lock(&sandbox.controls).bill_faults);
    if faults.creating {
        return error(StatusCode::BAD_REQUEST, "STATEMENT_CREATING", "账单生成中");
    }
    let rows = bill_rows(&sandbox, date);
    if rows.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "NO_STATEMENT_EXIST",
            "请求的账单文件不存在",
        );
    }
    let mut bytes = domain::wechat::bill::render(&rows);
    if faults.truncate {
        // Cut the first payment row out (the file then hashes as announced).
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut lines: Vec<&str> = text
            .split(
                "
",
            )
            .collect();
        if lines.len() > 4 {
            lines.remove(1);
        }
        bytes = lines
            .join(
                "
",
            )
            .into_bytes();
    }
    use sha1::Digest;
    let hash = hex::encode(sha1::Sha1::digest(&bytes));
    if faults.tamper {
        // A changed amount after the hash was announced.
        if let Some(position) = bytes.iter().position(|b| b.is_ascii_digit()) {
            bytes[position] = if bytes[position] == b'9' {
                b'8'
            } else {
                bytes[position] + 1
            };
        }
    }
    let gzip = query.tar_type.as_deref() == Some("GZIP");
    let served = if gzip {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = encoder.write_all(&bytes);
        encoder.finish().unwrap_or_default()
    } else {
        bytes
    };
    let token = random_alnum(24);
    lock(&sandbox.bills).insert(token.clone(), served);
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1");
    let url = format!(
        "http://{host}/v3/billdownload/file?token={token}{}",
        if gzip { "&tartype=gzip" } else { "" }
    );
    let body = json!({ "hash_type": "SHA1", "hash_value": hash, "download_url": url });
    sandbox.signed(StatusCode::OK, body.to_string().into_bytes())
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    token: Option<String>,
}

/// `GET /v3/billdownload/file`: the bill itself, unsigned (§E.2).
async fn bill_download(
    State(sandbox): State<Sandbox>,
    Query(query): Query<DownloadQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = sandbox.check(&method, &uri, &headers, b"") {
        return refusal;
    }
    let bytes = query
        .token
        .as_deref()
        .and_then(|token| lock(&sandbox.bills).get(token).cloned());
    match bytes {
        Some(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "账单文件不存在",
        ),
    }
}

/// The sandbox's routes.
pub fn router(config: SandboxConfig) -> Router {
    let sandbox = Sandbox {
        config: Arc::new(config),
        orders: Arc::default(),
        controls: Arc::default(),
        logins: Arc::default(),
        deliveries: Arc::default(),
        bills: Arc::default(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default(),
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
        .route("/connect/qrconnect", get(qrconnect))
        .route("/sns/oauth2/access_token", get(access_token))
        .route("/sns/userinfo", get(userinfo))
        .route("/sandbox/login/approve", get(approve))
        .route("/sandbox/login/decline", get(decline))
        .route("/sandbox/pay/{out_trade_no}", post(pay))
        .route("/sandbox/", get(index))
        .route("/sandbox/checkout/{out_trade_no}", get(checkout))
        .route(
            "/sandbox/orders/{out_trade_no}/notify",
            post(notify_control),
        )
        .route("/sandbox/deliveries", get(deliveries))
        .route("/sandbox/orders/{out_trade_no}/bill", post(tweak_bill))
        .route("/sandbox/orders/{out_trade_no}/refund", post(refund))
        .route("/sandbox/bill-faults", post(bill_faults))
        .route("/v3/bill/tradebill", get(trade_bill))
        .route("/v3/billdownload/file", get(bill_download))
        .route("/sandbox/fail-next/{count}", post(fail_next))
        .route("/sandbox/probe-next", post(probe_next))
        .with_state(sandbox)
}

/// The sandbox's identity, kept in its directory between starts.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Identity {
    mchid: String,
    appid: String,
    merchant_serial_no: String,
    wechat_public_key_id: String,
    apiv3_key: String,
    login_appid: String,
    login_secret: String,
}

/// Prepares the sandbox in `dir`: on first start generates both RSA key pairs (the merchant's,
/// whose private half the hub signs with, and the sandbox's own as WeChat Pay's), the ids and the
/// secrets; every start writes `hub.env`, the merchant-side settings that point a hub at
/// `sandbox_url` with its callbacks on `hub_url`.
pub fn prepare(
    dir: &std::path::Path,
    sandbox_url: &str,
    hub_url: &str,
    retry_scale: f64,
) -> anyhow::Result<SandboxConfig> {
    use anyhow::Context;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity_file = dir.join("identity.json");
    let merchant_key = dir.join("merchant_private_key.pem");
    let merchant_public = dir.join("merchant_public_key.pem");
    let wechat_key = dir.join("wechatpay_private_key.pem");
    let wechat_public = dir.join("wechatpay_public_key.pem");
    if !identity_file.exists() {
        for (private, public) in [
            (&merchant_key, &merchant_public),
            (&wechat_key, &wechat_public),
        ] {
            let key = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048)
                .context("generating an RSA key")?;
            let pem = key.to_pkcs8_pem(LineEnding::LF).context("encoding a key")?;
            write_private(private, pem.as_bytes())?;
            let public_pem = key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .context("encoding a public key")?;
            std::fs::write(public, public_pem)
                .with_context(|| format!("writing {}", public.display()))?;
        }
        let digits: String = random_hex(8)
            .bytes()
            .map(|b| (b % 10 + b'0') as char)
            .collect();
        let identity = Identity {
            mchid: format!("19{digits}"),
            appid: format!("wx{}", random_hex(8)),
            merchant_serial_no: random_hex(20).to_uppercase(),
            wechat_public_key_id: format!("PUB_KEY_ID_01{}", random_hex(14).to_uppercase()),
            apiv3_key: random_alnum(32),
            login_appid: format!("wx{}", random_hex(8)),
            login_secret: random_hex(16),
        };
        write_private(
            &identity_file,
            serde_json::to_string_pretty(&identity)?.as_bytes(),
        )?;
    }
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let identity: Identity =
        serde_json::from_str(&read(&identity_file)?).context("reading identity.json")?;
    let sandbox = sandbox_url.trim_end_matches('/');
    let hub = hub_url.trim_end_matches('/');
    let env = [
        ("HUB_WECHAT__API_BASE", sandbox.to_owned()),
        ("HUB_WECHAT__OPEN_BASE", sandbox.to_owned()),
        ("HUB_WECHAT__SNS_BASE", sandbox.to_owned()),
        ("HUB_WECHAT__LOGIN_APPID", identity.login_appid.clone()),
        ("HUB_WECHAT__LOGIN_SECRET", identity.login_secret.clone()),
        (
            "HUB_WECHAT__LOGIN_REDIRECT_URI",
            format!("{hub}/api/v1/auth/wechat/callback"),
        ),
        ("HUB_WECHAT__PAY_APPID", identity.appid.clone()),
        ("HUB_WECHAT__MCHID", identity.mchid.clone()),
        (
            "HUB_WECHAT__MERCHANT_SERIAL_NO",
            identity.merchant_serial_no.clone(),
        ),
        (
            "HUB_WECHAT__MERCHANT_PRIVATE_KEY_FILE",
            merchant_key.display().to_string(),
        ),
        (
            "HUB_WECHAT__PLATFORM_PUBLIC_KEY_ID",
            identity.wechat_public_key_id.clone(),
        ),
        (
            "HUB_WECHAT__PLATFORM_PUBLIC_KEY_FILE",
            wechat_public.display().to_string(),
        ),
        ("HUB_WECHAT__APIV3_KEY", identity.apiv3_key.clone()),
        (
            "HUB_WECHAT__NOTIFY_URL",
            format!("{hub}/api/v1/payments/wechat/notify"),
        ),
    ];
    let text: String = env
        .iter()
        .map(|(name, value)| format!("export {name}='{value}'\n"))
        .collect();
    write_private(&dir.join("hub.env"), text.as_bytes())?;
    Ok(SandboxConfig {
        mchid: identity.mchid,
        appid: identity.appid,
        merchant_serial_no: identity.merchant_serial_no,
        merchant_public_key: PublicKey::from_pem(&read(&merchant_public)?)
            .map_err(|error| anyhow::anyhow!("merchant_public_key.pem: {error}"))?,
        wechat_signer: MerchantSigner::from_pem(
            "wechatpay",
            &identity.wechat_public_key_id,
            &read(&wechat_key)?,
        )
        .map_err(|error| anyhow::anyhow!("wechatpay_private_key.pem: {error}"))?,
        wechat_public_key_id: identity.wechat_public_key_id,
        apiv3_key: identity.apiv3_key,
        login_appid: identity.login_appid,
        login_secret: identity.login_secret,
        retry_scale,
    })
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}
