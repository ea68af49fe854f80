//! WeChat QR login and recharges end to end: a real node (real PostgreSQL and Redis) against the
//! WeChat sandbox, both speaking WeChat's real protocols with keys `openssl` makes for the test.
//! The sandbox's own `prepare` writes the hub's settings (`hub.env`), which the node is built
//! from, as `scripts/run` does.

use crate::helpers::{TestApp, assert_problem, spawn_app_at};
use crate::sse::SseClient;
use crate::wechat::openssl_key_pair;
use gateway::settings::{Settings, WechatSettings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub struct Sandbox {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where its keys and `hub.env` are.
    pub dir: PathBuf,
    pub http: reqwest::Client,
}

impl Sandbox {
    pub async fn start() -> Sandbox {
        let dir = std::env::temp_dir().join(format!(
            "hub-wechat-sandbox-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        // Keys made by openssl (fast in a debug build); `prepare` generates them when absent.
        for name in ["merchant", "wechatpay"] {
            let (private, public) = openssl_key_pair(name);
            std::fs::write(dir.join(format!("{name}_private_key.pem")), private).expect("key");
            std::fs::write(dir.join(format!("{name}_public_key.pem")), public).expect("key");
        }
        let identity = json!({
            "mchid": "1900000109", "appid": "wxd678efh567hg6787",
            "merchant_serial_no": "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
            "wechat_public_key_id": "PUB_KEY_ID_0114232134912410000000000000",
            "apiv3_key": "0123456789abcdefghijklmnopqrstuv",
            "login_appid": "wxlogin00000001", "login_secret": "sandbox-login-secret",
        });
        std::fs::write(dir.join("identity.json"), identity.to_string()).expect("identity");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let config = gateway::wechat_sandbox::prepare(&dir, &base, "http://hub.invalid", 0.001)
            .expect("sandbox");
        tokio::spawn(async move {
            axum::serve(listener, gateway::wechat_sandbox::router(config)).await
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Sandbox { base, dir, http }
    }

    /// The hub settings `prepare` wrote, with the callbacks on the node at `hub`.
    pub fn settings(&self, hub: &str) -> WechatSettings {
        let text = std::fs::read_to_string(self.dir.join("hub.env")).expect("hub.env");
        let env: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.trim_matches('\'').to_owned()))
            .collect();
        let get = |name: &str| Some(env[&format!("HUB_WECHAT__{name}")].clone());
        WechatSettings {
            api_base: self.base.clone(),
            open_base: self.base.clone(),
            sns_base: self.base.clone(),
            login_appid: get("LOGIN_APPID"),
            login_secret: get("LOGIN_SECRET").map(Into::into),
            login_redirect_uri: Some(format!("{hub}/api/v1/auth/wechat/callback")),
            pay_appid: get("PAY_APPID"),
            mchid: get("MCHID"),
            merchant_serial_no: get("MERCHANT_SERIAL_NO"),
            merchant_private_key_file: get("MERCHANT_PRIVATE_KEY_FILE").map(Into::into),
            platform_public_key_id: get("PLATFORM_PUBLIC_KEY_ID"),
            platform_public_key_file: get("PLATFORM_PUBLIC_KEY_FILE").map(Into::into),
            apiv3_key: get("APIV3_KEY").map(Into::into),
            notify_url: Some(format!("{hub}/api/v1/payments/wechat/notify")),
            timeout_ms: 3_000,
            retries: 1,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("sandbox");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let text = response.text().await.expect("body");
        if text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&text).expect("json")
    }

    /// Pays an order as a payer would.
    pub async fn pay(&self, out_trade_no: &str, options: Value) -> Value {
        self.post(&format!("/sandbox/pay/{out_trade_no}"), options)
            .await
    }

    /// Sends one copy of a paid order's notification; the hub's status.
    pub async fn notify(&self, out_trade_no: &str, mode: &str, to: Option<&str>) -> u16 {
        let mut body = json!({ "mode": mode });
        if let Some(to) = to {
            body["to"] = json!(format!("{to}/api/v1/payments/wechat/notify"));
        }
        let answer = self
            .post(&format!("/sandbox/orders/{out_trade_no}/notify"), body)
            .await;
        answer["status"].as_u64().expect("the hub answered") as u16
    }

    pub async fn deliveries(&self, out_trade_no: &str) -> Vec<Value> {
        let all: Vec<Value> = self
            .http
            .get(format!("{}/sandbox/deliveries", self.base))
            .send()
            .await
            .expect("deliveries")
            .json()
            .await
            .expect("json");
        all.into_iter()
            .filter(|delivery| delivery["out_trade_no"] == out_trade_no)
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn with_wechat(sandbox: &Sandbox) -> impl FnOnce(&mut Settings, &str) + '_ {
    move |settings, address| {
        settings.wechat = sandbox.settings(address);
        settings.payments.query_scan_ms = 3_600_000;
        // Tests place many orders quickly; the risk tests set their own limits.
        settings.risk.user_per_minute = 1_000;
        settings.risk.user_per_hour = 1_000;
        settings.risk.ip_per_minute = 1_000;
        settings.risk.max_pending = 100;
    }
}

pub async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect("count")
}

/// Places a recharge of `amount_fen` as `user`; the 201 body.
pub async fn recharge(app: &TestApp, token: &str, amount_fen: i64) -> Value {
    let response = app
        .post_keyed(
            "/api/v1/payments/recharge",
            token,
            &uuid::Uuid::new_v4().to_string(),
            &json!({ "amount_fen": amount_fen }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("order")
}

pub async fn balance(app: &TestApp, token: &str) -> i64 {
    let body: Value = app
        .get("/api/v1/credits/balance", Some(token))
        .await
        .json()
        .await
        .expect("balance");
    body["available"].as_i64().expect("available")
}

/// Waits until `check` holds (the sandbox delivers in the background).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

pub async fn order_status(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(&format!("/api/v1/payments/orders/{id}"), Some(token))
        .await
        .json()
        .await
        .expect("order")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_recharge_paid_in_the_sandbox_is_credited_once_and_pushed(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("payer", &[Role::User]);
    assert_eq!(balance(&app, &token).await, 0);
    let stream = SseClient::open(&app, &format!("token={token}"), None).await;
    let mut events = SseClient {
        response: stream,
        buffer: String::new(),
    };

    let order = recharge(&app, &token, 990).await;
    assert_eq!(order["status"], "pending");
    assert_eq!(order["amount_fen"], 990);
    assert_eq!(order["credits"], 990);
    assert!(
        order["code_url"]
            .as_str()
            .is_some_and(|url| url.starts_with("weixin://wxpay/bizpayurl?pr="))
    );
    let (id, number) = (
        order["order_id"].as_str().expect("id").to_owned(),
        order["out_trade_no"].as_str().expect("number").to_owned(),
    );
    // A probe comes first (refused: 401), then the genuine notification (204).
    sandbox.pay(&number, json!({ "probe_first": true })).await;
    eventually("the order is paid", || async {
        order_status(&app, &token, &id).await["status"] == "paid"
    })
    .await;
    assert_eq!(balance(&app, &token).await, 990);
    let deliveries = sandbox.deliveries(&number).await;
    assert_eq!(deliveries[0]["kind"], "probe");
    assert_eq!(deliveries[0]["status"], 401);
    assert!(
        deliveries.iter().any(|d| d["status"] == 204),
        "{deliveries:?}"
    );

    // Every later copy is acknowledged and changes nothing.
    for mode in ["duplicate", "replay", "duplicate"] {
        assert_eq!(sandbox.notify(&number, mode, None).await, 204, "{mode}");
    }
    assert_eq!(balance(&app, &token).await, 990);
    let ledger = count(
        &db,
        &format!(
            "select count(*) from credit_ledger where kind = 'recharge' and reference = '{id}'"
        ),
    )
    .await;
    assert_eq!(ledger, 1);
    let paid = order_status(&app, &token, &id).await;
    assert!(
        paid["transaction_id"]
            .as_str()
            .is_some_and(|t| t.starts_with("4200"))
    );
    assert!(paid["credited_entry_id"].as_i64().is_some());
    let sum: i64 = sqlx::query_scalar(
        "select (select available from credit_accounts where id = 'payer') \
              - (select coalesce(sum(amount), 0)::bigint from credit_ledger where account_id = 'payer')",
    )
    .fetch_one(&db)
    .await
    .expect("sum");
    assert_eq!(sum, 0, "the balance is the ledger's sum");
    let audited = count(
        &db,
        "select count(*) from audit_access_log where action = 'payments.notification' \
           and detail->>'verdict' = 'credited'",
    )
    .await;
    assert_eq!(audited, 1);

    // The owner heard of it on `user:payer`.
    let mut seen = Vec::new();
    while !(seen.contains(&"payment.succeeded".to_owned())
        && seen.contains(&"balance.changed".to_owned()))
    {
        let event = events.next().await;
        let data: Value = serde_json::from_str(&event.data).expect("json");
        seen.push(data["data"]["type"].as_str().unwrap_or_default().to_owned());
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn one_notification_delivered_five_times_at_once_to_two_nodes_credits_once(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let first = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let second = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = first.token("twice", &[Role::User]);
    let order = recharge(&first, &token, 500).await;
    let number = order["out_trade_no"].as_str().expect("number").to_owned();
    sandbox.pay(&number, json!({ "drop": true })).await;
    let sends = (0..5).map(|i| {
        let to = if i % 2 == 0 {
            first.address.clone()
        } else {
            second.address.clone()
        };
        let (sandbox, number) = (&sandbox, number.clone());
        async move { sandbox.notify(&number, "duplicate", Some(&to)).await }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|status| *status == 204), "{statuses:?}");
    assert_eq!(balance(&first, &token).await, 500);
    let rows = count(
        &db,
        "select count(*) from credit_ledger where kind = 'recharge'",
    )
    .await;
    assert_eq!(rows, 1);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn forged_stale_probed_and_mismatching_notifications_credit_nothing(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("target", &[Role::User]);
    let order = recharge(&app, &token, 300).await;
    let number = order["out_trade_no"].as_str().expect("number").to_owned();
    sandbox.pay(&number, json!({ "drop": true })).await;
    for (mode, status) in [
        ("tampered", 401),
        ("foreign_serial", 401),
        ("stale", 401),
        ("probe", 401),
        ("wrong_key", 400),
        ("wrong_amount", 400),
        ("unknown_order", 400),
    ] {
        assert_eq!(sandbox.notify(&number, mode, None).await, status, "{mode}");
    }
    // WeChat's reply shape, not problem+json.
    let raw = app
        .request(Method::POST, "/api/v1/payments/wechat/notify", None)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("notify");
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
    let body: Value = raw.json().await.expect("json");
    assert_eq!(body["code"], "FAIL");
    assert_eq!(balance(&app, &token).await, 0);
    assert_eq!(count(&db, "select count(*) from credit_ledger").await, 0);
    assert_eq!(
        order_status(&app, &token, order["order_id"].as_str().expect("id")).await["status"],
        "pending"
    );
    // The genuine one still credits.
    assert_eq!(sandbox.notify(&number, "duplicate", None).await, 204);
    assert_eq!(balance(&app, &token).await, 300);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_query_job_credits_a_dropped_notification_once_and_closes_expired_orders(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("quiet", &[Role::User]);
    let paid = recharge(&app, &token, 1_000).await;
    let unpaid = recharge(&app, &token, 2_000).await;
    let expired = recharge(&app, &token, 3_000).await;
    sandbox
        .pay(
            paid["out_trade_no"].as_str().expect("number"),
            json!({ "drop": true }),
        )
        .await;
    // Nothing is due within the first minute.
    let ran = gateway::payments::query_due_orders(&app.state)
        .await
        .expect("job");
    assert_eq!(ran, 0);
    sqlx::query("update payment_orders set next_query_at = now()")
        .execute(&db)
        .await
        .expect("due");
    sqlx::query("update payment_orders set expires_at = now() - interval '1 second' where id = $1")
        .bind(uuid::Uuid::parse_str(expired["order_id"].as_str().expect("id")).expect("uuid"))
        .execute(&db)
        .await
        .expect("expire");
    let ran = gateway::payments::query_due_orders(&app.state)
        .await
        .expect("job");
    assert_eq!(ran, 3);
    let status = |order: &Value| order["order_id"].as_str().expect("id").to_owned();
    assert_eq!(
        order_status(&app, &token, &status(&paid)).await["status"],
        "paid"
    );
    assert_eq!(
        order_status(&app, &token, &status(&unpaid)).await["status"],
        "pending"
    );
    assert_eq!(
        order_status(&app, &token, &status(&expired)).await["status"],
        "closed"
    );
    assert_eq!(balance(&app, &token).await, 1_000);
    // The still pending order was rescheduled with backoff; the next run has nothing due.
    let next: f64 = sqlx::query_scalar(
        "select extract(epoch from next_query_at - now())::float8 from payment_orders \
          where status = 'pending'",
    )
    .fetch_one(&db)
    .await
    .expect("next");
    assert!(next > 60.0, "{next}");
    // A second run and a late notification change nothing.
    sqlx::query("update payment_orders set next_query_at = now() where status = 'pending'")
        .execute(&db)
        .await
        .expect("due");
    gateway::payments::query_due_orders(&app.state)
        .await
        .expect("job");
    let number = paid["out_trade_no"].as_str().expect("number");
    assert_eq!(sandbox.notify(number, "duplicate", None).await, 204);
    assert_eq!(balance(&app, &token).await, 1_000);
    assert_eq!(count(&db, "select count(*) from credit_ledger").await, 1);
    // The expired order is closed at WeChat too: paying it is refused.
    let refused = sandbox
        .http
        .post(format!(
            "{}/sandbox/pay/{}",
            sandbox.base,
            expired["out_trade_no"].as_str().expect("number")
        ))
        .send()
        .await
        .expect("pay");
    assert_eq!(refused.status(), StatusCode::CONFLICT);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_node_lost_between_the_payment_and_the_credit_loses_nothing(db: PgPool) {
    let sandbox = Sandbox::start().await;
    // Its own pool: a stopping node closes its pool.
    let own_pool = PgPool::connect(&crate::helpers::database_url_for(
        &crate::helpers::database_name(&db),
    ))
    .await
    .expect("pool");
    let lost = spawn_app_at(own_pool, with_wechat(&sandbox)).await;
    let token = lost.token("resilient", &[Role::User]);
    let order = recharge(&lost, &token, 700).await;
    let number = order["out_trade_no"].as_str().expect("number").to_owned();
    // The node that placed the order (and is the notify URL) goes away before the payment.
    lost.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox.pay(&number, json!({})).await;
    eventually("WeChat retried", || async {
        sandbox.deliveries(&number).await.len() >= 3
    })
    .await;
    assert!(
        sandbox
            .deliveries(&number)
            .await
            .iter()
            .all(|delivery| delivery["status"].is_null()),
        "nobody answered"
    );
    // Another node's query job finds the payment and credits it once.
    let survivor = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    sqlx::query("update payment_orders set next_query_at = now()")
        .execute(&db)
        .await
        .expect("due");
    gateway::payments::query_due_orders(&survivor.state)
        .await
        .expect("job");
    assert_eq!(balance(&survivor, &token).await, 700);
    assert_eq!(
        sandbox
            .notify(&number, "duplicate", Some(&survivor.address))
            .await,
        204
    );
    assert_eq!(balance(&survivor, &token).await, 700);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn recharge_refusals_are_clear_and_place_nothing(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("careful", &[Role::User]);
    for (body, status, code) in [
        (json!({ "amount_fen": 0 }), 422, "validation_failed"),
        (json!({ "amount_fen": -100 }), 422, "validation_failed"),
        (
            json!({ "amount_fen": 9_999_999_999_i64 }),
            422,
            "validation_failed",
        ),
        (json!({ "amount_fen": 1.5 }), 422, "invalid_body"),
        (json!({ "amount_fen": "100" }), 422, "invalid_body"),
        (json!({ "amount_fen": 50 }), 403, "risk_denied"),
        (json!({ "amount_fen": 200_001 }), 403, "risk_denied"),
    ] {
        let response = app
            .post_keyed(
                "/api/v1/payments/recharge",
                &token,
                &uuid::Uuid::new_v4().to_string(),
                &body,
            )
            .await;
        let problem = assert_problem(
            response,
            StatusCode::from_u16(status).expect("status"),
            code,
        )
        .await;
        if code == "risk_denied" {
            assert_eq!(problem["reason_code"], "amount_out_of_range");
        }
    }
    let missing_key = app
        .send_json(
            Method::POST,
            "/api/v1/payments/recharge",
            Some(&token),
            &json!({ "amount_fen": 100 }),
        )
        .await;
    assert_problem(
        missing_key,
        StatusCode::BAD_REQUEST,
        "idempotency_key_required",
    )
    .await;
    assert_eq!(count(&db, "select count(*) from payment_orders").await, 0);
    assert_eq!(
        count(
            &db,
            "select count(*) from audit_access_log where action = 'payments.recharge' \
                      and outcome in ('failure', 'denied')"
        )
        .await,
        7,
        "refusals are audited"
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from audit_access_log where action = 'payments.recharge' \
                      and detail->>'code' = 'risk_denied' and outcome = 'denied'"
        )
        .await,
        2
    );

    // The same key twice: one order, the same answer.
    let key = uuid::Uuid::new_v4().to_string();
    let body = json!({ "amount_fen": 100 });
    let first: Value = app
        .post_keyed("/api/v1/payments/recharge", &token, &key, &body)
        .await
        .json()
        .await
        .expect("first");
    let again = app
        .post_keyed("/api/v1/payments/recharge", &token, &key, &body)
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.expect("again");
    assert_eq!(first, again);
    assert_eq!(count(&db, "select count(*) from payment_orders").await, 1);

    // A WeChat answer that is not WeChat's: the order is failed, the client told why.
    sandbox
        .http
        .post(format!("{}/sandbox/probe-next", sandbox.base))
        .send()
        .await
        .expect("probe");
    let forged = app
        .post_keyed(
            "/api/v1/payments/recharge",
            &token,
            "forged-answer",
            &json!({ "amount_fen": 200 }),
        )
        .await;
    let problem = assert_problem(forged, StatusCode::BAD_GATEWAY, "wechat_error").await;
    assert_eq!(problem["reason"], "signature");
    assert_eq!(
        count(
            &db,
            "select count(*) from payment_orders where status = 'failed'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn orders_are_read_listed_and_closed_by_whom_they_belong_to(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let (owner, stranger, finance) = (
        app.token("owner", &[Role::User]),
        app.token("stranger", &[Role::User]),
        app.token("fin", &[Role::Finance]),
    );
    let open = recharge(&app, &owner, 100).await;
    let paid = recharge(&app, &owner, 200).await;
    let third = recharge(&app, &owner, 300).await;
    let paid_number = paid["out_trade_no"].as_str().expect("number");
    sandbox.pay(paid_number, json!({ "drop": true })).await;
    assert_eq!(sandbox.notify(paid_number, "duplicate", None).await, 204);
    let id = |order: &Value| order["order_id"].as_str().expect("id").to_owned();

    let foreign = app
        .get(
            &format!("/api/v1/payments/orders/{}", id(&open)),
            Some(&stranger),
        )
        .await;
    assert_problem(foreign, StatusCode::NOT_FOUND, "not_found").await;
    let listed: Value = app
        .get("/api/v1/payments/orders?limit=2", Some(&owner))
        .await
        .json()
        .await
        .expect("page");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed["items"][0]["order_id"], id(&third), "newest first");
    let cursor = listed["next_cursor"].as_str().expect("cursor");
    let rest: Value = app
        .get(
            &format!("/api/v1/payments/orders?limit=2&cursor={cursor}"),
            Some(&owner),
        )
        .await
        .json()
        .await
        .expect("page");
    assert_eq!(rest["items"][0]["order_id"], id(&open));
    assert!(rest["next_cursor"].is_null());
    let none: Value = app
        .get("/api/v1/payments/orders", Some(&stranger))
        .await
        .json()
        .await
        .expect("page");
    assert_eq!(none["items"], json!([]));
    let by_finance: Value = app
        .get("/api/v1/payments/orders?status=paid", Some(&finance))
        .await
        .json()
        .await
        .expect("page");
    assert_eq!(by_finance["items"][0]["order_id"], id(&paid));
    let forged = app
        .get("/api/v1/payments/orders?cursor=o1.zz", Some(&owner))
        .await;
    assert_problem(forged, StatusCode::BAD_REQUEST, "invalid_query").await;

    let close = |token: &str, order: &Value| {
        app.request(
            Method::POST,
            &format!("/api/v1/payments/orders/{}/close", id(order)),
            Some(token),
        )
        .send()
    };
    assert_problem(
        close(&stranger, &open).await.expect("close"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let closed = close(&owner, &open).await.expect("close");
    assert_eq!(closed.status(), StatusCode::OK);
    let closed: Value = closed.json().await.expect("order");
    assert_eq!(closed["status"], "closed");
    assert_problem(
        close(&owner, &paid).await.expect("close"),
        StatusCode::CONFLICT,
        "order_paid",
    )
    .await;
    let by_finance = close(&finance, &third).await.expect("close");
    assert_eq!(by_finance.status(), StatusCode::OK);
    // Closed at WeChat too.
    let refused = sandbox
        .http
        .post(format!(
            "{}/sandbox/pay/{}",
            sandbox.base,
            open["out_trade_no"].as_str().expect("number")
        ))
        .send()
        .await
        .expect("pay");
    assert_eq!(refused.status(), StatusCode::CONFLICT);
}

/// Starts a QR login in a "browser": the state and the binding cookie.
async fn start_login(app: &TestApp, redirect: &str) -> (String, String, String) {
    let response = app
        .get(&format!("/api/v1/auth/wechat/qr?redirect={redirect}"), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().expect("pair").to_owned();
    let body: Value = response.json().await.expect("qr");
    (
        body["state"].as_str().expect("state").to_owned(),
        body["authorize_url"].as_str().expect("url").to_owned(),
        cookie,
    )
}

/// What WeChat redirects the browser to after the user approved as `openid`.
async fn approve(sandbox: &Sandbox, authorize_url: &str, openid: &str, unionid: &str) -> String {
    let page = sandbox
        .http
        .get(authorize_url)
        .send()
        .await
        .expect("qrconnect");
    assert_eq!(
        page.status(),
        StatusCode::OK,
        "the QR page opens for this app"
    );
    let url = reqwest::Url::parse(authorize_url).expect("url");
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let approved = sandbox
        .http
        .get(format!("{}/sandbox/login/approve", sandbox.base))
        .query(&[
            ("redirect_uri", query["redirect_uri"].as_str()),
            ("state", query["state"].as_str()),
            ("openid", openid),
            ("unionid", unionid),
            ("nickname", "小明"),
        ])
        .send()
        .await
        .expect("approve");
    assert_eq!(approved.status(), StatusCode::FOUND);
    approved.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned()
}

async fn follow(app: &TestApp, location: &str, cookie: &str, json: bool) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut request = client.get(location).header("cookie", cookie);
    if json {
        request = request.header("accept", "application/json");
    }
    let _ = app;
    request.send().await.expect("callback")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_wechat_qr_login_issues_the_hubs_token_once_and_refuses_every_bad_path(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;

    // A browser: 302 to the redirect with the token in the fragment.
    let (_, url, cookie) = start_login(&app, "/console/").await;
    let location = approve(&sandbox, &url, "oOpenId0001", "oUnion0001").await;
    let response = follow(&app, &location, &cookie, false).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let target = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(target.starts_with("/console/#token="), "{target}");
    let token = target
        .trim_start_matches("/console/#token=")
        .split('&')
        .next()
        .expect("token")
        .to_owned();
    let me: Value = app
        .get("/api/v1/sessions/me", Some(&token))
        .await
        .json()
        .await
        .expect("me");
    let user_id = me["user_id"].as_str().expect("user").to_owned();
    assert!(user_id.starts_with("wx_"), "{me}");
    // The same callback again: the state was used.
    let reused = follow(&app, &location, &cookie, true).await;
    assert_problem(reused, StatusCode::BAD_REQUEST, "login_state_invalid").await;

    // An API client, the same WeChat user: the same hub user, not created again.
    let (_, url, cookie) = start_login(&app, "/").await;
    let location = approve(&sandbox, &url, "oOpenId0001", "oUnion0001").await;
    let response = follow(&app, &location, &cookie, true).await;
    assert_eq!(response.status(), StatusCode::OK);
    let login: Value = response.json().await.expect("login");
    assert_eq!(login["user"]["id"], user_id.as_str());
    assert_eq!(login["user"]["created"], false);
    assert_eq!(login["user"]["display_name"], "小明");
    assert_eq!(
        count(
            &db,
            "select count(*) from users where wechat_openid = 'oOpenId0001'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from audit_access_log where action = 'auth.wechat_login'"
        )
        .await,
        2
    );

    // Another browser's state (a cookie that is not this attempt's) is refused and does not
    // burn the attempt of the browser it belongs to.
    let (_, url, own_cookie) = start_login(&app, "/").await;
    let (_, _, other_cookie) = start_login(&app, "/").await;
    let location = approve(&sandbox, &url, "oOpenId0002", "oUnion0002").await;
    let foreign = follow(&app, &location, &other_cookie, true).await;
    assert_problem(foreign, StatusCode::BAD_REQUEST, "login_state_invalid").await;
    let without = follow(&app, &location, "", true).await;
    assert_problem(without, StatusCode::BAD_REQUEST, "login_state_invalid").await;
    let own = follow(&app, &location, &own_cookie, true).await;
    assert_eq!(
        own.status(),
        StatusCode::OK,
        "the right browser still logs in"
    );

    // Declined: no code.
    let (state, url, cookie) = start_login(&app, "/").await;
    let redirect_uri = reqwest::Url::parse(&url)
        .expect("url")
        .query_pairs()
        .find(|(name, _)| name == "redirect_uri")
        .map(|(_, value)| value.into_owned())
        .expect("redirect_uri");
    let declined = follow(
        &app,
        &format!("{redirect_uri}?state={state}"),
        &cookie,
        true,
    )
    .await;
    assert_problem(declined, StatusCode::BAD_REQUEST, "wechat_login_denied").await;

    // A code WeChat does not know: WeChat's errcode, in its text/plain body, reaches the client.
    let (state, _, cookie) = start_login(&app, "/").await;
    let bogus = follow(
        &app,
        &format!("{redirect_uri}?code=bogus&state={state}"),
        &cookie,
        true,
    )
    .await;
    let problem = assert_problem(bogus, StatusCode::BAD_GATEWAY, "wechat_error").await;
    assert_eq!(problem["errcode"], 40029);
    // A browser gets the error in the fragment.
    let (state, _, cookie) = start_login(&app, "/console/").await;
    let browser = follow(
        &app,
        &format!("{redirect_uri}?code=bogus&state={state}"),
        &cookie,
        false,
    )
    .await;
    assert_eq!(browser.status(), StatusCode::FOUND);
    assert_eq!(
        browser.headers()["location"],
        "/console/#error=wechat_error"
    );

    // No open redirect.
    let open = app
        .get(
            "/api/v1/auth/wechat/qr?redirect=https://evil.example/",
            None,
        )
        .await;
    assert_problem(open, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert_eq!(
        count(
            &db,
            "select count(*) from users where wechat_openid = 'oOpenId0002'"
        )
        .await,
        1,
        "only the right browser's login created the user"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn without_wechat_settings_the_routes_answer_payments_unavailable(db: PgPool) {
    let app = crate::helpers::spawn_app(db).await;
    let token = app.token("nobody", &[Role::User]);
    let recharge = app
        .post_keyed(
            "/api/v1/payments/recharge",
            &token,
            "k1",
            &json!({ "amount_fen": 100 }),
        )
        .await;
    assert_problem(
        recharge,
        StatusCode::SERVICE_UNAVAILABLE,
        "payments_unavailable",
    )
    .await;
    let qr = app.get("/api/v1/auth/wechat/qr", None).await;
    assert_problem(qr, StatusCode::SERVICE_UNAVAILABLE, "payments_unavailable").await;
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_half_configured_or_badly_keyed_wechat_is_a_start_up_error_naming_the_setting() {
    let sandbox = Sandbox::start().await;
    let mut settings = sandbox.settings("http://127.0.0.1:1");
    settings.mchid = None;
    let error = gateway::payments::Wechat::from_settings(&settings)
        .expect_err("half configured")
        .to_string();
    assert!(error.contains("HUB_WECHAT__MCHID"), "{error}");
    let mut settings = sandbox.settings("http://127.0.0.1:1");
    settings.merchant_private_key_file = settings.platform_public_key_file.clone();
    let error = format!(
        "{:#}",
        gateway::payments::Wechat::from_settings(&settings).expect_err("a public key")
    );
    assert!(
        error.contains("HUB_WECHAT__MERCHANT_PRIVATE_KEY_FILE"),
        "{error}"
    );
    let mut settings = sandbox.settings("http://127.0.0.1:1");
    settings.apiv3_key = Some("short".into());
    let error = format!(
        "{:#}",
        gateway::payments::Wechat::from_settings(&settings).expect_err("short key")
    );
    assert!(error.contains("HUB_WECHAT__APIV3_KEY"), "{error}");
    let debug = format!(
        "{:?}",
        gateway::payments::Wechat::from_settings(&sandbox.settings("http://127.0.0.1:1"))
            .expect("configured")
    );
    assert!(
        !debug.contains("0123456789abcdefghij"),
        "no secret in Debug: {debug}"
    );
}

#[tokio::test]
async fn the_sandbox_makes_its_keys_once_and_writes_settings_a_hub_starts_with() {
    let dir = std::env::temp_dir().join(format!("hub-sandbox-keys-{}", rand::random::<u64>()));
    let first = gateway::wechat_sandbox::prepare(&dir, "http://127.0.0.1:1", "http://hub", 1.0)
        .expect("first start");
    let key = std::fs::read_to_string(dir.join("merchant_private_key.pem")).expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    let second = gateway::wechat_sandbox::prepare(&dir, "http://127.0.0.1:1", "http://hub", 1.0)
        .expect("second start");
    assert_eq!(first.mchid, second.mchid);
    assert_eq!(
        std::fs::read_to_string(dir.join("merchant_private_key.pem")).expect("key"),
        key,
        "the keys are kept"
    );
    let sandbox = Sandbox {
        base: "http://127.0.0.1:1".into(),
        dir: dir.clone(),
        http: reqwest::Client::new(),
    };
    let settings = sandbox.settings("http://hub");
    assert!(
        settings
            .mchid
            .as_deref()
            .is_some_and(|id| id.bytes().all(|b| b.is_ascii_digit()))
    );
    let wechat = gateway::payments::Wechat::from_settings(&settings).expect("a hub accepts them");
    assert!(wechat.pay.is_some() && wechat.login.is_some());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("merchant_private_key.pem"))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private keys are the owner's only");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn without_redis_the_login_state_lives_in_postgres_and_is_still_single_use(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), |settings: &mut Settings, address: &str| {
        settings.wechat = sandbox.settings(address);
        settings.redis_url = None;
    })
    .await;
    let (_, url, cookie) = start_login(&app, "/").await;
    assert_eq!(
        count(&db, "select count(*) from wechat_login_states").await,
        1
    );
    let location = approve(&sandbox, &url, "oNoRedis0000000000000000001", "uNoRedis").await;
    let first = follow(&app, &location, &cookie, true).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        count(&db, "select count(*) from wechat_login_states").await,
        0
    );
    let again = follow(&app, &location, &cookie, true).await;
    assert_problem(again, StatusCode::BAD_REQUEST, "login_state_invalid").await;
}
