//! Money and contract safety as an attacker or a careless client would try it: one commit per
//! idempotency key whatever the timing, bounded numbers, text PostgreSQL cannot store, content
//! types, forged cursors and tokens, and the audit rows of refusals.

use crate::helpers::{assert_problem, flat_price, funded_user, spawn_app, spawn_app_with};
use gateway::auth::Claims;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::time::Duration;

const CHARGE: &str = "/api/v1/credits/charge";

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect(sql)
}

async fn ledger_rows(db: &PgPool) -> i64 {
    count(db, "select count(*) from credit_ledger").await
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_charge_that_timed_out_behind_a_locked_account_never_commits_twice(db: PgPool) {
    // The repro of the double charge, with short timings: the account row is locked by another
    // transaction for longer than the request timeout; the request answers 408 and its retries
    // come back until the lock goes; in the end exactly one charge exists under the key, and
    // every later retry replays it.
    let app = spawn_app_with(db, |settings| {
        settings.http.request_timeout_ms = 400;
        settings.idempotency.lease_ms = 1_500;
    })
    .await;
    let token = funded_user(&app, "carol", 1_000).await;
    let body = json!({"amount": 100, "reason": "render"});

    let mut blocker = app.db.begin().await.expect("begin");
    sqlx::query("select 1 from credit_accounts where id = 'carol' for update")
        .execute(&mut *blocker)
        .await
        .expect("lock the account");
    let first = app.post_keyed(CHARGE, &token, "K", &body).await;
    assert_problem(first, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
    // Past the lease: before the fix, this retry took the key over and, once the lock went,
    // both the first charge (still queued) and the retry committed.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let retry = app.post_keyed(CHARGE, &token, "K", &body).await;
    assert!(
        matches!(
            retry.status(),
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT
        ),
        "{}",
        retry.status()
    );
    blocker.commit().await.expect("unlock");

    // Retry until the key settles; the lease (1.5 s) bounds how long a 409 may last.
    let mut settled = None;
    for _ in 0..60 {
        let response = app.post_keyed(CHARGE, &token, "K", &body).await;
        if response.status() == StatusCode::CREATED {
            settled = Some(response.text().await.expect("body"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = settled.expect("the key settles with 201");
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    let replay = app.post_keyed(CHARGE, &token, "K", &body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.text().await.expect("body"), settled);
    assert_eq!(
        count(
            &app.db,
            "select count(*) from credit_ledger where kind = 'charge' and account_id = 'carol'"
        )
        .await,
        1
    );
    let available: i64 =
        sqlx::query_scalar("select available from credit_accounts where id = 'carol'")
            .fetch_one(&app.db)
            .await
            .expect("balance");
    assert_eq!(available, 900);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_key_is_scoped_to_the_account_the_token_acts_as(db: PgPool) {
    let app = spawn_app(db).await;
    let personal = funded_user(&app, "alice", 1_000).await;
    let studio = app.sign(&claims("alice", &["user"], Some("alice-studio")));
    let finance = app.token("finance-1", &[Role::Finance]);
    // The studio account is provisioned (owned by alice) on its first request, then funded.
    assert_eq!(
        app.get("/api/v1/credits/balance", Some(&studio))
            .await
            .status(),
        StatusCode::OK
    );
    let fund = json!({"account_id": "alice-studio", "amount": 500, "reason": "fund"});
    let funded = app
        .post_keyed("/api/v1/credits/adjust", &finance, "fund", &fund)
        .await;
    assert_eq!(funded.status(), StatusCode::CREATED);

    let body = json!({"amount": 10, "reason": "same body, other account"});
    let own: Value = app
        .post_keyed(CHARGE, &personal, "K", &body)
        .await
        .json()
        .await
        .expect("entry");
    let response = app.post_keyed(CHARGE, &studio, "K", &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let other: Value = response.json().await.expect("entry");

    assert_eq!(own["account_id"], "alice");
    assert_eq!(other["account_id"], "alice-studio");
    assert_ne!(own["entry_id"], other["entry_id"]);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_token_naming_an_account_its_user_does_not_own_is_refused(db: PgPool) {
    let app = spawn_app(db).await;
    funded_user(&app, "alice", 1_000).await;
    let forged = app.sign(&claims("mallory", &["user"], Some("alice")));

    let response = app.get("/api/v1/credits/balance", Some(&forged)).await;
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    let charge = app
        .post_keyed(
            CHARGE,
            &forged,
            "steal",
            &json!({"amount": 1, "reason": "x"}),
        )
        .await;
    assert_problem(charge, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        count(
            &app.db,
            "select count(*) from credit_ledger where kind = 'charge'"
        )
        .await,
        0
    );
}

fn claims(sub: &str, roles: &[&str], account: Option<&str>) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: sub.into(),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        exp: now + 600,
        iat: now,
        nbf: None,
        account_id: account.map(str::to_owned),
        name: None,
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn numbers_beyond_their_documented_maximum_are_422_and_change_nothing(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 1_000).await;
    let finance = app.token("finance-1", &[Role::Finance]);
    let rows = ledger_rows(&app.db).await;

    for (path, who, body) in [
        (
            "/api/v1/credits/adjust",
            &finance,
            json!({"account_id": "alice", "amount": i64::MIN, "reason": "wrap"}),
        ),
        (
            "/api/v1/credits/adjust",
            &finance,
            json!({"account_id": "alice", "amount": i64::MAX, "reason": "huge"}),
        ),
        (
            CHARGE,
            &token,
            json!({"amount": 1_000_000_000_001_i64, "reason": "huge"}),
        ),
        (CHARGE, &token, json!({"amount": -5, "reason": "negative"})),
    ] {
        let response = app.post_keyed(path, who, &format!("{body}"), &body).await;
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let admin = app.token("admin-1", &[Role::Admin]);
    for quota in [-1, 1_000_000_000_001_i64, i64::MAX] {
        let grant = json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"],
                           "quota_total": quota});
        let response = app
            .post_keyed("/api/v1/licenses", &admin, &format!("q{quota}"), &grant)
            .await;
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    assert_eq!(
        count(&app.db, "select count(*) from authorizations").await,
        0
    );
    for units in [0, -1, 1_000_000_001, i64::MAX] {
        let estimate = app
            .send_json(
                Method::POST,
                "/api/v1/credits/estimate",
                Some(&token),
                &json!({"task_type": "render", "units": units}),
            )
            .await;
        assert_problem(
            estimate,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    assert_eq!(ledger_rows(&app.db).await, rows);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_huge_actual_units_is_refused_and_pricing_keeps_working_for_everyone(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 5).await;
    let token = funded_user(&app, "alice", 1_000).await;
    let task: Value = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&token),
            &json!({"task_type": "render", "units": 10}),
        )
        .await
        .json()
        .await
        .expect("task");
    let service = app.token("renderer", &[Role::Service]);
    let events = format!("/api/v1/tasks/{}/events", task["id"].as_str().expect("id"));
    let running = app
        .send_json(
            Method::POST,
            &events,
            Some(&service),
            &json!({"kind": "state", "state": "running"}),
        )
        .await;
    assert_eq!(running.status(), StatusCode::CREATED);

    for actual_units in [9_000_000_000_000_000_000_i64, 1_000_000_001] {
        let response = app
            .send_json(
                Method::POST,
                &events,
                Some(&service),
                &json!({"kind": "state", "state": "succeeded", "actual_units": actual_units}),
            )
            .await;
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let debt: i64 = sqlx::query_scalar("select debt from credit_accounts where id = 'alice'")
        .fetch_one(&app.db)
        .await
        .expect("debt");
    assert_eq!(debt, 0);
    // The task type still prices and takes new tasks.
    let estimate = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &json!({"task_type": "render", "units": 1_000_000_000}),
        )
        .await;
    assert_eq!(estimate.status(), StatusCode::OK);
    let succeeded = app
        .send_json(
            Method::POST,
            &events,
            Some(&service),
            &json!({"kind": "state", "state": "succeeded", "actual_units": 12}),
        )
        .await;
    assert_eq!(succeeded.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn text_postgresql_cannot_store_is_422_invalid_text_everywhere(db: PgPool) {
    let app = spawn_app(db).await;
    flat_price(&app.db, "render", 1).await;
    let token = funded_user(&app, "alice", 1_000).await;
    let admin = app.token("admin-1", &[Role::Admin]);
    let auditor = app.token("auditor-1", &[Role::Auditor]);
    let rows = ledger_rows(&app.db).await;

    for (path, who, body) in [
        (CHARGE, &token, json!({"amount": 1, "reason": "a\u{0}b"})),
        (
            CHARGE,
            &token,
            json!({"amount": 1, "reason": "ok", "metadata": {"note": "x\u{0}"}}),
        ),
        (
            CHARGE,
            &token,
            json!({"amount": 1, "reason": "ok", "metadata": {"k\u{0}": 1}}),
        ),
        (
            "/api/v1/tasks",
            &token,
            json!({"task_type": "ren\u{0}der", "units": 1}),
        ),
        (
            "/api/v1/tasks",
            &token,
            json!({"task_type": "render", "units": 1, "params": {"p": "\u{0}"}}),
        ),
        (
            "/api/v1/licenses",
            &admin,
            json!({"subject_id": "alice", "resource": "model:\u{0}", "actions": ["generate"]}),
        ),
    ] {
        let response = app
            .post_keyed(path, who, &format!("nul-{body}"), &body)
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_text").await;
    }
    for (path, who) in [
        (
            "/api/v1/licenses/check?resource=model%00&action=generate",
            &token,
        ),
        ("/api/v1/audit/access-logs?action=credits%00", &auditor),
        ("/api/v1/tasks?owner_id=alice%00", &token),
    ] {
        let response = app.get(path, Some(who)).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_text").await;
    }
    assert_eq!(ledger_rows(&app.db).await, rows);
    assert_eq!(count(&app.db, "select count(*) from tasks").await, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_keyed_route_sent_another_content_type_is_415_and_keeps_its_key(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 1_000).await;
    let body = r#"{"amount": 5, "reason": "plain"}"#;

    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .request(Method::POST, CHARGE, Some(&token))
            .header("idempotency-key", "K")
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("request");
        assert_problem(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    let response = app
        .post_keyed(
            CHARGE,
            &token,
            "K",
            &serde_json::from_str(body).expect("json"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn forged_cursors_and_request_ids_are_handled_at_the_edge(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 0).await;

    for cursor in [
        "t1.9223372036854775807.0190f1a2-0000-7000-8000-000000000000",
        "t1.-9999999999999999.0190f1a2-0000-7000-8000-000000000000",
        "t1.253402300800000000.0190f1a2-0000-7000-8000-000000000000",
        "t1.x.y",
        "garbage",
    ] {
        let response = app
            .get(&format!("/api/v1/tasks?cursor={cursor}"), Some(&token))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }

    let long = "r".repeat(129);
    let response = app
        .request(Method::GET, "/api/v1/sessions/me", Some(&token))
        .header("x-request-id", &long)
        .send()
        .await
        .expect("request");
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(echoed, long);
    assert!(!echoed.is_empty() && echoed.len() <= 128);
    let kept = app
        .request(Method::GET, "/api/v1/sessions/me", Some(&token))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .expect("request");
    assert_eq!(kept.headers()["x-request-id"], "trace-42");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn tokens_not_yet_valid_from_the_future_or_too_long_lived_are_refused_plainly(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.max_token_ttl_secs = 3_600).await;
    let now = chrono::Utc::now().timestamp();
    let not_yet = Claims {
        nbf: Some(now + 600),
        ..claims("alice", &["user"], None)
    };
    let future = Claims {
        iat: now + 3_000,
        exp: now + 3_600,
        ..claims("alice", &["user"], None)
    };
    let forever = Claims {
        exp: now + 7_200,
        ..claims("alice", &["user"], None)
    };
    for claims in [not_yet, future, forever] {
        let token = app.sign(&claims);
        let response = app.get("/api/v1/sessions/me", Some(&token)).await;
        assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
    }
    for garbage in ["abc.def.ghi", "eyJhbGciOiJIUzI1NiJ9.e30.x"] {
        let response = app.get("/api/v1/sessions/me", Some(garbage)).await;
        let body = assert_problem(response, StatusCode::UNAUTHORIZED, "token_invalid").await;
        let detail = body["detail"].as_str().expect("detail");
        for internal in ["Base64", "Json", "Error(", "line", "column"] {
            assert!(!detail.contains(internal), "{detail}");
        }
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn refusals_of_sensitive_acts_are_audited(db: PgPool) {
    let app = spawn_app(db).await;
    let user = funded_user(&app, "alice", 100).await;
    let finance = app.token("finance-1", &[Role::Finance]);
    let admin = app.token("admin-1", &[Role::Admin]);
    let rows = |action: &'static str, outcome: &'static str| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from audit_access_log where action = $1 and outcome = $2",
            )
            .bind(action)
            .bind(outcome)
            .fetch_one(&db)
            .await
            .expect("count")
        }
    };

    // 403 from the permission check.
    let adjust = json!({"account_id": "alice", "amount": 5, "reason": "self-service"});
    let denied = app
        .post_keyed("/api/v1/credits/adjust", &user, "a1", &adjust)
        .await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(rows("credits.adjust", "denied").await, 1);
    let audit = app.get("/api/v1/audit/access-logs", Some(&user)).await;
    assert_eq!(audit.status(), StatusCode::FORBIDDEN);
    assert_eq!(rows("audit.read", "denied").await, 1);

    // Refused refunds and adjustments: 404, 422, 402.
    let refund = json!({"charge_entry_id": 999_999, "amount": 1, "reason": "none"});
    let missing = app
        .post_keyed("/api/v1/credits/refund", &finance, "r1", &refund)
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(rows("credits.refund", "failure").await, 1);
    let invalid = json!({"account_id": "alice", "amount": 0, "reason": "zero"});
    let zero = app
        .post_keyed("/api/v1/credits/adjust", &finance, "a2", &invalid)
        .await;
    assert_eq!(zero.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let overdraw = json!({"account_id": "alice", "amount": -1_000, "reason": "too much"});
    let short = app
        .post_keyed("/api/v1/credits/adjust", &finance, "a3", &overdraw)
        .await;
    assert_eq!(short.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(rows("credits.adjust", "failure").await, 2);

    // A refused grant and a refused license change.
    let grant = json!({"subject_id": "alice", "resource": "model:x", "actions": []});
    let refused = app
        .post_keyed("/api/v1/licenses", &admin, "g1", &grant)
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(rows("license.grant", "failure").await, 1);
    let patch = app
        .send_json(
            Method::PATCH,
            "/api/v1/licenses/0190f1a2-0000-7000-8000-000000000000",
            Some(&admin),
            &json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(patch.status(), StatusCode::NOT_FOUND);
    assert_eq!(rows("license.update", "failure").await, 1);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn readiness_names_the_failing_part_without_the_drivers_words(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.redis_url = None).await;
    app.db.close().await;

    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.expect("problem");
    let text = body.to_string();
    assert!(text.contains("postgres"), "{text}");
    for internal in ["pool", "Pool", "closed", "sqlx", "connection refused"] {
        assert!(!text.contains(internal), "{text}");
    }
}
