//! The WeChat Pay APIv3 client (Native payments): every request signed, every 2xx answer verified
//! (an unsigned or badly signed one is treated as forged), a timeout on every call, retries with the
//! same parameters on WeChat's 5xx, and WeChat's errors by their `code`.

use super::apiv3::{MerchantSigner, PlatformVerifier, SignedHeaders, VerifyError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a merchant talks to WeChat Pay.
#[derive(Debug)]
pub struct PayConfig {
    /// API base, e.g. `https://api.mch.weixin.qq.com` (the sandbox's address in tests).
    pub api_base: String,
    /// Merchant id.
    pub mchid: String,
    /// The AppID bound to the merchant.
    pub appid: String,
    /// Signs requests with the merchant key.
    pub signer: MerchantSigner,
    /// Verifies WeChat's answers.
    pub verifier: PlatformVerifier,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Extra attempts after a 5xx or a transport failure.
    pub retries: u32,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// WeChat could not be reached or did not answer in time.
    #[error("WeChat Pay unreachable: {0}")]
    Transport(String),
    /// The answer is not WeChat's (unsigned, badly signed, stale, unknown key).
    #[error("WeChat Pay answer refused: {0}")]
    Forged(#[from] VerifyError),
    /// WeChat refused the request.
    #[error("WeChat Pay error {status} {code}: {message}")]
    Wechat {
        /// HTTP status.
        status: u16,
        /// WeChat's `code`, e.g. `SIGN_ERROR`, `ORDER_NOT_EXIST`.
        code: String,
        /// WeChat's message.
        message: String,
    },
    /// A verified answer of an unexpected shape.
    #[error("unexpected WeChat Pay answer: {0}")]
    Decode(String),
    /// A downloaded bill whose SHA-1 is not the one WeChat announced (altered or corrupted).
    #[error("the bill's SHA-1 is {actual}, WeChat announced {expected}")]
    BillHash {
        /// WeChat's `hash_value`.
        expected: String,
        /// The downloaded file's.
        actual: String,
    },
}

/// A day's bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillFile {
    /// The file (uncompressed), its SHA-1 checked.
    Ready {
        /// The bill.
        bytes: Vec<u8>,
        /// Its SHA-1 (hex).
        hash_value: String,
    },
    /// `NO_STATEMENT_EXIST`: no trade that day (an empty bill, not an error).
    NoStatement,
    /// `STATEMENT_CREATING`: not ready yet; retry later.
    Creating,
}

/// `amount` of a Native order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Total, in fen.
    pub total: i64,
    /// `CNY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// What the payer paid (after coupons), when paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_total: Option<i64>,
}

/// A Native order to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeOrder {
    /// Shown in the payer's bill, ≤ 127 characters.
    pub description: String,
    /// 6-32 of `[0-9A-Za-z]`, unique per merchant.
    pub out_trade_no: String,
    /// RFC 3339 in +08:00.
    pub time_expire: String,
    /// Returned in queries and notifications (the hub's order id).
    pub attach: String,
    /// The callback URL (no query string).
    pub notify_url: String,
    /// In fen.
    pub amount_fen: i64,
    /// The payer's IP, for WeChat's risk control.
    pub payer_client_ip: Option<String>,
}

/// A transaction as queried (or notified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Merchant id.
    pub mchid: String,
    /// AppID.
    pub appid: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// WeChat's id, once paid.
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// `SUCCESS`, `NOTPAY`, `CLOSED`, `REFUND`, ….
    pub trade_state: String,
    /// When paid.
    #[serde(default)]
    pub success_time: Option<String>,
    /// The amounts.
    pub amount: Amount,
    /// The merchant's data.
    #[serde(default)]
    pub attach: Option<String>,
    /// Who paid (per payment AppID), once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<Payer>,
}

/// The payer of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    /// The payer's openid under the payment AppID (not the login openid).
    pub openid: String,
}

/// Time as WeChat writes it: RFC 3339 in Beijing time (`2018-06-08T10:34:56+08:00`).
pub fn beijing_time(at: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::FixedOffset::east_opt(8 * 3600) {
        Some(offset) => at
            .with_timezone(&offset)
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        None => at.to_rfc3339(),
    }
}

#[derive(Deserialize)]
struct WechatError {
    code: String,
    #[serde(default)]
    message: String,
}

/// A WeChat Pay client.
#[derive(Debug)]
pub struct WechatPay {
    http: reqwest::Client,
    config: PayConfig,
}

fn nonce() -> String {
    use rand::Rng;
    const SYMBOLS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| SYMBOLS[rng.random_range(0..SYMBOLS.len())] as char)
        .collect()
}

impl WechatPay {
    /// A client for `config`.
    pub fn new(config: PayConfig) -> Result<Self, PayError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| PayError::Transport(error.to_string()))?;
        Ok(Self { http, config })
    }

    /// Sends one signed request; verifies a 2xx answer; retries on 5xx and transport failures.
    async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), PayError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > self.config.retries;
            match self
                .once(method.clone(), path_and_query, body.as_deref())
                .await
            {
                Ok((status, _, _)) if status >= 500 && !last => {}
                Err(PayError::Transport(_)) if !last => {}
                other => return other.and_then(|answer| self.judge(answer)),
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
    }

    async fn once(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>, SignedHeaders), PayError> {
        let timestamp = chrono::Utc::now().timestamp();
        let nonce = nonce();
        let authorization = self
            .config
            .signer
            .authorization(
                method.as_str(),
                path_and_query,
                body.unwrap_or_default(),
                timestamp,
                &nonce,
            )
            .map_err(|error| PayError::Transport(error.to_string()))?;
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.config.api_base))
            .header("authorization", authorization)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        let response = request
            .send()
            .await
            .map_err(|error| PayError::Transport(error.to_string()))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let headers = SignedHeaders {
            timestamp: header("wechatpay-timestamp"),
            nonce: header("wechatpay-nonce"),
            signature: header("wechatpay-signature"),
            serial: header("wechatpay-serial"),
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|error| PayError::Transport(error.to_string()))?;
        Ok((status, bytes.to_vec(), headers))
    }

    /// A 2xx must be signed by WeChat; anything else is WeChat's error by its `code`.
    fn judge(
        &self,
        (status, body, headers): (u16, Vec<u8>, SignedHeaders),
    ) -> Result<(u16, Vec<u8>), PayError> {
        if (200..300).contains(&status) {
            self.config
                .verifier
                .verify(&headers, &body, chrono::Utc::now().timestamp())?;
            return Ok((status, body));
        }
        let error: WechatError = serde_json::from_slice(&body).unwrap_or(WechatError {
            code: "UNKNOWN".into(),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
        Err(PayError::Wechat {
            status,
            code: error.code,
            message: error.message,
        })
    }

    /// Places a Native order; returns its `code_url`.
    pub async fn native_order(&self, order: &NativeOrder) -> Result<String, PayError> {
        let mut body = serde_json::json!({
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "description": order.description,
            "out_trade_no": order.out_trade_no,
            "time_expire": order.time_expire,
            "attach": order.attach,
            "notify_url": order.notify_url,
            "amount": { "total": order.amount_fen, "currency": "CNY" },
        });
        if let Some(ip) = &order.payer_client_ip {
            body["scene_info"] = serde_json::json!({ "payer_client_ip": ip });
        }
        let bytes =
            serde_json::to_vec(&body).map_err(|error| PayError::Decode(error.to_string()))?;
        let (_, answer) = self
            .call(
                reqwest::Method::POST,
                "/v3/pay/transactions/native",
                Some(bytes),
            )
            .await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|error| PayError::Decode(error.to_string()))?;
        answer["code_url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| PayError::Decode("no code_url".into()))
    }

    /// The order by the merchant's number; `None` when WeChat does not know it.
    pub async fn query_order(&self, out_trade_no: &str) -> Result<Option<Transaction>, PayError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={}",
            self.config.mchid
        );
        match self.call(reqwest::Method::GET, &path, None).await {
            Ok((_, body)) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|error| PayError::Decode(error.to_string())),
            Err(PayError::Wechat { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Applies for the ALL bill of `date` (Beijing, `YYYY-MM-DD`), downloads it (only from the
    /// configured API host: the download is sent the merchant's signature), gunzips it and checks
    /// its SHA-1 against the verified `hash_value`. The download itself is not signed by WeChat.
    pub async fn trade_bill(&self, date: chrono::NaiveDate) -> Result<BillFile, PayError> {
        let path = format!(
            "/v3/bill/tradebill?bill_date={}&bill_type=ALL&tar_type=GZIP",
            date.format("%Y-%m-%d")
        );
        let answer = match self.call(reqwest::Method::GET, &path, None).await {
            Ok((_, answer)) => answer,
            Err(PayError::Wechat { code, .. }) if code == "NO_STATEMENT_EXIST" => {
                return Ok(BillFile::NoStatement);
            }
            Err(PayError::Wechat { code, .. }) if code == "STATEMENT_CREATING" => {
                return Ok(BillFile::Creating);
            }
            Err(error) => return Err(error),
        };
        #[derive(Deserialize)]
        struct Applied {
            hash_type: String,
            hash_value: String,
            download_url: String,
        }
        let applied: Applied =
            serde_json::from_slice(&answer).map_err(|error| PayError::Decode(error.to_string()))?;
        if !applied.hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(PayError::Decode(format!(
                "unknown hash type {}",
                applied.hash_type
            )));
        }
        let base = reqwest::Url::parse(&self.config.api_base)
            .map_err(|error| PayError::Decode(error.to_string()))?;
        let url = reqwest::Url::parse(&applied.download_url)
            .map_err(|_| PayError::Decode("the download_url is not a URL".into()))?;
        if (url.scheme(), url.host_str(), url.port_or_known_default())
            != (base.scheme(), base.host_str(), base.port_or_known_default())
        {
            return Err(PayError::Decode(format!(
                "the bill's download_url is not on the API host ({})",
                url.host_str().unwrap_or_default()
            )));
        }
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let (status, body, _) = self
            .once(reqwest::Method::GET, &path_and_query, None)
            .await?;
        if !(200..300).contains(&status) {
            return Err(self
                .judge((status, body, SignedHeaders::default()))
                .err()
                .unwrap_or(PayError::Decode("the bill download failed".into())));
        }
        let bytes = if path_and_query.contains("tartype=gzip") {
            use std::io::Read;
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(body.as_slice())
                .read_to_end(&mut plain)
                .map_err(|_| PayError::Decode("the bill does not gunzip".into()))?;
            plain
        } else {
            body
        };
        use sha1::Digest;
        let hash = hex::encode(sha1::Sha1::digest(&bytes));
        if !hash.eq_ignore_ascii_case(&applied.hash_value) {
            return Err(PayError::BillHash {
                expected: applied.hash_value,
                actual: hash,
            });
        }
        Ok(BillFile::Ready {
            bytes,
            hash_value: hash,
        })
    }

    /// Closes an unpaid order (WeChat answers 204, signed).
    pub async fn close_order(&self, out_trade_no: &str) -> Result<(), PayError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}/close");
        let body = serde_json::to_vec(&serde_json::json!({ "mchid": self.config.mchid }))
            .map_err(|error| PayError::Decode(error.to_string()))?;
        self.call(reqwest::Method::POST, &path, Some(body)).await?;
        Ok(())
    }
}
