//! Recharge risk control: each rule refuses with its reason code before anything is sent to
//! WeChat (no order is stored: orders are stored just before the WeChat call), decisions are
//! stored, refusals audited; a pending order of the same amount is reused; blocks are managed by
//! admins and expire; a payer paying for many accounts flags the orders for review.

use crate::helpers::{TestApp, assert_problem, spawn_app_at};
use crate::payments::{Sandbox, count, recharge};
use gateway::settings::{RiskSettings, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::time::Duration;

async fn node(db: &PgPool, sandbox: &Sandbox, risk: RiskSettings) -> TestApp {
    spawn_app_at(db.clone(), |settings: &mut Settings, address: &str| {
        settings.wechat = sandbox.settings(address);
        settings.payments.query_scan_ms = 3_600_000;
        settings.risk = risk;
    })
    .await
}

async fn attempt(app: &TestApp, token: &str, fen: i64) -> reqwest::Response {
    app.post_keyed(
        "/api/v1/payments/recharge",
        token,
        &uuid::Uuid::new_v4().to_string(),
        &json!({ "amount_fen": fen }),
    )
    .await
}

async fn refused(
    app: &TestApp,
    token: &str,
    fen: i64,
    status: StatusCode,
    code: &str,
    reason: &str,
) {
    let before = count(&app.db, "select count(*) from payment_orders").await;
    let problem = assert_problem(attempt(app, token, fen).await, status, code).await;
    assert_eq!(problem["reason_code"], reason, "{problem}");
    assert_eq!(
        count(&app.db, "select count(*) from payment_orders").await,
        before,
        "nothing placed, nothing sent to WeChat"
    );
}

/// Starts the test early in a minute, so per-minute windows do not roll over mid-test.
async fn fresh_minute() {
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 50 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn each_rule_refuses_with_its_reason_code_before_wechat(db: PgPool) {
    fresh_minute().await;
    let sandbox = Sandbox::start().await;
    let app = node(
        &db,
        &sandbox,
        RiskSettings {
            daily_cap_fen: 5_000,
            monthly_cap_fen: 8_000,
            user_per_minute: 100,
            user_per_hour: 4,
            ip_per_minute: 1_000,
            max_pending: 2,
            ..RiskSettings::default()
        },
    )
    .await;
    let newcomer = app.token("newcomer", &[Role::User]);
    refused(
        &app,
        &newcomer,
        50,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "amount_out_of_range",
    )
    .await;
    refused(
        &app,
        &newcomer,
        20_001,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "new_account_limit",
    )
    .await;

    // Two pending orders: a third amount is refused, the same amount reuses the pending one.
    let first = recharge(&app, &newcomer, 1_000).await;
    recharge(&app, &newcomer, 2_000).await;
    let again = attempt(&app, &newcomer, 1_000).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.expect("order");
    assert_eq!(again["order_id"], first["order_id"]);
    refused(
        &app,
        &newcomer,
        1_500,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "too_many_pending",
    )
    .await;

    // Caps count pending and paid: 3,000 pending today and 2,500 more exceed the day's 5,000.
    let veteran = app.token("veteran", &[Role::User]);
    recharge(&app, &veteran, 3_000).await;
    refused(
        &app,
        &veteran,
        2_500,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "daily_cap",
    )
    .await;
    // A node whose month is tighter than its day.
    let monthly = node(
        &db,
        &sandbox,
        RiskSettings {
            daily_cap_fen: 100_000,
            monthly_cap_fen: 3_000,
            ..RiskSettings::default()
        },
    )
    .await;
    let saver = monthly.token("saver", &[Role::User]);
    recharge(&monthly, &saver, 2_000).await;
    refused(
        &monthly,
        &saver,
        1_500,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "monthly_cap",
    )
    .await;

    // Velocity: four orders an hour per user (refused attempts do not count).
    let quick = app.token("quick", &[Role::User]);
    for fen in [101, 102] {
        recharge(&app, &quick, fen).await;
        sqlx::query("update payment_orders set status = 'closed' where user_id = 'quick'")
            .execute(&db)
            .await
            .expect("close");
    }
    refused(
        &app,
        &quick,
        50,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "amount_out_of_range",
    )
    .await;
    for fen in [103, 104] {
        recharge(&app, &quick, fen).await;
        sqlx::query("update payment_orders set status = 'closed' where user_id = 'quick'")
            .execute(&db)
            .await
            .expect("close");
    }
    refused(
        &app,
        &quick,
        105,
        StatusCode::TOO_MANY_REQUESTS,
        "risk_rate_limited",
        "user_rate",
    )
    .await;

    let denials = count(
        &db,
        "select count(*) from risk_decisions where outcome = 'deny'",
    )
    .await;
    assert_eq!(denials, 7);
    assert_eq!(
        count(
            &db,
            "select count(*) from risk_decisions where rule = 'reuse_pending'"
        )
        .await,
        1
    );
    assert!(
        count(
            &db,
            "select count(*) from risk_decisions where outcome = 'allow'"
        )
        .await
            >= 7
    );
    assert!(
        count(
            &db,
            "select count(*) from audit_access_log where action = 'payments.recharge' \
                    and detail->>'code' in ('risk_denied', 'risk_rate_limited')"
        )
        .await
            >= 6
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn one_address_placing_many_orders_is_slowed_down(db: PgPool) {
    fresh_minute().await;
    let sandbox = Sandbox::start().await;
    let app = node(
        &db,
        &sandbox,
        RiskSettings {
            ip_per_minute: 2,
            ..RiskSettings::default()
        },
    )
    .await;
    for user in ["ip-a", "ip-b"] {
        recharge(&app, &app.token(user, &[Role::User]), 100).await;
    }
    let third = app.token("ip-c", &[Role::User]);
    refused(
        &app,
        &third,
        100,
        StatusCode::TOO_MANY_REQUESTS,
        "risk_rate_limited",
        "ip_rate",
    )
    .await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn admins_block_users_addresses_and_openids_and_blocks_expire(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = node(&db, &sandbox, RiskSettings::default()).await;
    let admin = app.token("admin", &[Role::Admin]);
    let user = app.token("suspect", &[Role::User]);
    let block = |body: Value| {
        let (app, admin) = (&app, &admin);
        async move {
            app.post_keyed(
                "/api/v1/risk/blocks",
                admin,
                &uuid::Uuid::new_v4().to_string(),
                &body,
            )
            .await
        }
    };
    let created =
        block(json!({ "kind": "user", "value": "suspect", "reason": "chargebacks" })).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("block");
    refused(
        &app,
        &user,
        100,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "blocked",
    )
    .await;
    let listed: Value = app
        .get("/api/v1/risk/blocks", Some(&admin))
        .await
        .json()
        .await
        .expect("blocks");
    assert_eq!(listed[0]["value"], "suspect");
    let removed = app
        .request(
            Method::DELETE,
            &format!(
                "/api/v1/risk/blocks/{}",
                created["id"].as_str().expect("id")
            ),
            Some(&admin),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    recharge(&app, &user, 100).await;

    // An address, for a second.
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let created =
        block(json!({ "kind": "ip", "value": "127.0.0.1", "reason": "bot", "expires_at": until }))
            .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let other = app.token("bystander", &[Role::User]);
    refused(
        &app,
        &other,
        200,
        StatusCode::FORBIDDEN,
        "risk_denied",
        "blocked",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    recharge(&app, &other, 200).await;

    // Bad blocks are refused; only admins manage them.
    for (body, what) in [
        (
            json!({ "kind": "ip", "value": "not-an-ip", "reason": "x" }),
            "ip",
        ),
        (
            json!({ "kind": "user", "value": "a", "reason": "" }),
            "reason",
        ),
        (
            json!({ "kind": "openid", "value": "o", "reason": "x", "expires_at": "2001-01-01T00:00:00Z" }),
            "past",
        ),
    ] {
        let response = block(body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}"
        );
    }
    let denied = app
        .post_keyed(
            "/api/v1/risk/blocks",
            &user,
            "k",
            &json!({ "kind": "user", "value": "admin", "reason": "x" }),
        )
        .await;
    assert_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        count(
            &db,
            "select count(*) from audit_access_log where action in ('risk.block', 'risk.unblock') \
                    and outcome = 'success'"
        )
        .await,
        3
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_payer_paying_for_many_accounts_flags_their_orders_for_review(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = node(&db, &sandbox, RiskSettings::default()).await;
    for user in ["mule-1", "mule-2", "mule-3", "mule-4"] {
        let token = app.token(user, &[Role::User]);
        let order = recharge(&app, &token, 100).await;
        let number = order["out_trade_no"].as_str().expect("number");
        sandbox
            .pay(
                number,
                json!({ "drop": true, "payer_openid": "oPayerOfMany" }),
            )
            .await;
        assert_eq!(sandbox.notify(number, "duplicate", None).await, 204);
    }
    assert_eq!(
        count(
            &db,
            "select count(*) from payment_orders where review_reason = 'payer_many_accounts'"
        )
        .await,
        4,
        "more than three accounts paid by one payer"
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from risk_decisions where outcome = 'review'"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from credit_ledger where kind = 'recharge'"
        )
        .await,
        4
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn parallel_recharges_of_one_user_cannot_pass_a_cap_together(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = node(
        &db,
        &sandbox,
        RiskSettings {
            daily_cap_fen: 5_000,
            user_per_minute: 1_000,
            user_per_hour: 1_000,
            ip_per_minute: 1_000,
            max_pending: 100,
            ..RiskSettings::default()
        },
    )
    .await;
    let token = app.token("eager", &[Role::User]);
    let attempts = (0..8).map(|i| {
        let (app, token) = (&app, &token);
        async move { attempt(app, token, 3_000 + i).await.status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{statuses:?}");
    assert_eq!(count(&db, "select count(*) from payment_orders").await, 1);
}
