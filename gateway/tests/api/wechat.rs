//! The WeChat Pay client against the sandbox, both speaking the real APIv3 protocol with keys
//! `openssl` makes for the test: Native order, query, close; WeChat's refusals by `code`; retries
//! on 5xx; a probe signature or another merchant key refused.

use domain::wechat::apiv3::{MerchantSigner, PlatformVerifier, PublicKey};
use domain::wechat::client::{NativeOrder, PayConfig, PayError, WechatPay};
use gateway::wechat_sandbox::{SandboxConfig, router};
use std::process::Command;
use std::time::Duration;

const MCHID: &str = "1900000109";
const APPID: &str = "wxd678efh567hg6787";
const MERCHANT_SERIAL: &str = "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C";
const PUB_KEY_ID: &str = "PUB_KEY_ID_0114232134912410000000000000";

/// An RSA key pair made by `openssl`: (PKCS#8 private PEM, SPKI public PEM).
pub fn openssl_key_pair(name: &str) -> (String, String) {
    let dir = std::env::temp_dir().join(format!(
        "wechat-sandbox-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let private = dir.join(format!("{name}.pem"));
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-quiet",
            "-out",
        ])
        .arg(&private)
        .status()
        .expect("openssl runs");
    assert!(made.success());
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .expect("openssl runs");
    assert!(public.status.success());
    let pair = (
        std::fs::read_to_string(&private).expect("private"),
        String::from_utf8(public.stdout).expect("public"),
    );
    let _ = std::fs::remove_dir_all(dir);
    pair
}

struct World {
    base: String,
    client: WechatPay,
    merchant_private: String,
    wechat_public: String,
}

async fn world() -> World {
    let (merchant_private, merchant_public) = openssl_key_pair("merchant");
    let (wechat_private, wechat_public) = openssl_key_pair("wechat");
    let sandbox = router(sandbox_config(&merchant_public, &wechat_private));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, sandbox).await });
    let client = client(&base, &merchant_private, &wechat_public);
    World {
        base,
        client,
        merchant_private,
        wechat_public,
    }
}

fn client(base: &str, merchant_private: &str, wechat_public: &str) -> WechatPay {
    WechatPay::new(PayConfig {
        api_base: base.to_owned(),
        mchid: MCHID.into(),
        appid: APPID.into(),
        signer: MerchantSigner::from_pem(MCHID, MERCHANT_SERIAL, merchant_private).expect("signer"),
        verifier: PlatformVerifier::from_pem(PUB_KEY_ID, wechat_public).expect("verifier"),
        timeout: Duration::from_secs(5),
        retries: 2,
    })
    .expect("client")
}

fn order(out_trade_no: &str, amount_fen: i64) -> NativeOrder {
    NativeOrder {
        description: "Credits 充值".into(),
        out_trade_no: out_trade_no.into(),
        time_expire: "2026-12-06T12:30:00+08:00".into(),
        attach: "order-1".into(),
        notify_url: "https://hub.example/api/v1/payments/wechat/notify".into(),
        amount_fen,
        payer_client_ip: Some("127.0.0.1".into()),
    }
}

async fn control(base: &str, path: &str) {
    let response = reqwest::Client::new()
        .post(format!("{base}/sandbox/{path}"))
        .send()
        .await
        .expect("control");
    assert!(response.status().is_success());
}

#[tokio::test]
async fn a_native_order_is_placed_queried_and_closed_over_the_signed_protocol() {
    let world = world().await;

    let code_url = world
        .client
        .native_order(&order("RC20261206000001", 990))
        .await
        .expect("ordered");
    assert!(
        code_url.starts_with("weixin://wxpay/bizpayurl?pr="),
        "{code_url}"
    );
    // The same parameters again refresh the code; other parameters under the number are refused.
    let again = world
        .client
        .native_order(&order("RC20261206000001", 990))
        .await
        .expect("re-ordered");
    assert_ne!(again, code_url);
    let conflict = world
        .client
        .native_order(&order("RC20261206000001", 991))
        .await;
    assert!(
        matches!(&conflict, Err(PayError::Wechat { status: 400, code, .. }) if code == "INVALID_REQUEST"),
        "{conflict:?}"
    );

    let queried = world
        .client
        .query_order("RC20261206000001")
        .await
        .expect("query")
        .expect("known");
    assert_eq!(
        (queried.trade_state.as_str(), queried.amount.total),
        ("NOTPAY", 990)
    );
    assert_eq!(queried.transaction_id, None);
    assert!(
        world
            .client
            .query_order("RC20261206999999")
            .await
            .expect("query")
            .is_none(),
        "an unknown order is None (404 ORDER_NOT_EXIST)"
    );

    world
        .client
        .close_order("RC20261206000001")
        .await
        .expect("closed (a signed 204)");
    let closed = world
        .client
        .query_order("RC20261206000001")
        .await
        .expect("query")
        .expect("known");
    assert_eq!(closed.trade_state, "CLOSED");
}

#[tokio::test]
async fn wechat_5xx_is_retried_with_the_same_parameters_and_gives_up_after_the_retries() {
    let world = world().await;
    control(&world.base, "fail-next/2").await;
    world
        .client
        .native_order(&order("RC20261206000002", 100))
        .await
        .expect("placed on the third attempt");

    control(&world.base, "fail-next/3").await;
    let failed = world.client.query_order("RC20261206000002").await;
    assert!(
        matches!(&failed, Err(PayError::Wechat { status: 500, code, .. }) if code == "SYSTEM_ERROR"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_probe_signature_and_a_foreign_merchant_key_are_refused() {
    let world = world().await;
    control(&world.base, "probe-next").await;
    let probed = world
        .client
        .native_order(&order("RC20261206000003", 100))
        .await;
    assert!(matches!(probed, Err(PayError::Forged(_))), "{probed:?}");

    // A client signing with another key than the merchant's is refused by the sandbox.
    let (stranger, _) = openssl_key_pair("stranger");
    let impostor = client(&world.base, &stranger, &world.wechat_public);
    let refused = impostor.native_order(&order("RC20261206000004", 100)).await;
    assert!(
        matches!(&refused, Err(PayError::Wechat { status: 401, code, .. }) if code == "SIGN_ERROR"),
        "{refused:?}"
    );
    // And answers signed by another key than WeChat's are refused by the client.
    let (_, other_public) = openssl_key_pair("other");
    let fooled = client(&world.base, &world.merchant_private, &other_public);
    let forged = fooled.native_order(&order("RC20261206000005", 100)).await;
    assert!(matches!(forged, Err(PayError::Forged(_))), "{forged:?}");
}

fn sandbox_config(merchant_public: &str, wechat_private: &str) -> SandboxConfig {
    SandboxConfig {
        mchid: MCHID.into(),
        appid: APPID.into(),
        merchant_serial_no: MERCHANT_SERIAL.into(),
        merchant_public_key: PublicKey::from_pem(merchant_public).expect("merchant key"),
        wechat_signer: MerchantSigner::from_pem("wechat", PUB_KEY_ID, wechat_private)
            .expect("wechat key"),
        wechat_public_key_id: PUB_KEY_ID.into(),
        apiv3_key: "0123456789abcdefghijklmnopqrstuv".into(),
        login_appid: "wxlogin0000000001".into(),
        login_secret: "login-secret".into(),
        retry_scale: 0.001,
    }
}

#[test]
fn a_notification_is_read_only_when_signed_by_wechat_and_decrypted_with_the_apiv3_key() {
    use domain::wechat::notify::{NotifyError, read};
    let (_, merchant_public) = openssl_key_pair("merchant");
    let (wechat_private, wechat_public) = openssl_key_pair("wechat");
    let sandbox = sandbox_config(&merchant_public, &wechat_private);
    let verifier = PlatformVerifier::from_pem(PUB_KEY_ID, &wechat_public).expect("verifier");
    let apiv3_key = "0123456789abcdefghijklmnopqrstuv";
    let transaction = serde_json::json!({
        "mchid": MCHID, "appid": APPID, "out_trade_no": "RC20261206000009",
        "transaction_id": "4200000000202612060000000009", "trade_type": "NATIVE",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
        "attach": "order-9", "success_time": "2026-12-06T12:00:05+08:00",
        "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        "amount": { "total": 990, "payer_total": 990, "currency": "CNY", "payer_currency": "CNY" },
    });
    let now = chrono::Utc::now().timestamp();

    let (headers, body) = sandbox
        .notification(apiv3_key, &transaction, false)
        .expect("notification");
    let read_back = read(&verifier, apiv3_key, &headers, &body, now).expect("read");
    assert_eq!(read_back.event_type, "TRANSACTION.SUCCESS");
    assert_eq!(read_back.transaction.out_trade_no, "RC20261206000009");
    assert_eq!(read_back.transaction.trade_state, "SUCCESS");
    assert_eq!(read_back.transaction.amount.total, 990);
    assert_eq!(read_back.transaction.attach.as_deref(), Some("order-9"));

    // Another APIv3 key: verified, but the resource does not decrypt.
    assert!(matches!(
        read(
            &verifier,
            "vutsrqponmlkjihgfedcba9876543210",
            &headers,
            &body,
            now
        ),
        Err(NotifyError::Decrypt(_))
    ));
    // A tampered body, a probe, a stale one: refused before decryption.
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    assert!(matches!(
        read(&verifier, apiv3_key, &headers, &tampered, now),
        Err(NotifyError::Forged(_))
    ));
    let (probe_headers, probe_body) = sandbox
        .notification(apiv3_key, &transaction, true)
        .expect("probe");
    assert!(matches!(
        read(&verifier, apiv3_key, &probe_headers, &probe_body, now),
        Err(NotifyError::Forged(_))
    ));
    assert!(matches!(
        read(&verifier, apiv3_key, &headers, &body, now + 600),
        Err(NotifyError::Forged(_))
    ));
}
