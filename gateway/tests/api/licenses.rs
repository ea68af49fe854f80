//! `/licenses` over HTTP against real PostgreSQL and Redis.

use crate::helpers::{TestApp, assert_problem, database_name, database_url_for, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::sync::Arc;

async fn grant(app: &TestApp, body: Value) -> Value {
    let admin = app.token("admin-1", &[Role::Admin]);
    let response = app
        .send_json(Method::POST, "/api/v1/licenses", Some(&admin), &body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("license")
}

async fn patch(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    let admin = app.token("admin-1", &[Role::Admin]);
    app.send_json(
        Method::PATCH,
        &format!("/api/v1/licenses/{id}"),
        Some(&admin),
        &body,
    )
    .await
}

async fn check(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app
        .get(&format!("/api/v1/licenses/check?{query}"), Some(token))
        .await;
    let status = response.status();
    let body: Value = response.json().await.expect("check");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect(sql)
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_hundred_concurrent_consumes_of_a_quota_of_ten_let_exactly_ten_through(db: PgPool) {
    let app = Arc::new(spawn_app(db).await);
    let license = grant(&app, json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"], "quota_total": 10})).await;
    let path = Arc::new(format!(
        "/api/v1/licenses/{}/consume",
        license["id"].as_str().expect("id")
    ));
    let token = Arc::new(app.token("alice", &[Role::User]));

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (app, path, token) = (app.clone(), path.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let response = app
                .send_json(Method::POST, &path, Some(&token), &json!({"units": 1}))
                .await;
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            (status, body["code"].clone())
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("join") {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::CONFLICT, code) => assert_eq!(code, "quota_exhausted"),
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(ok, 10);
    assert_eq!(
        count(&app.db, "select quota_used from authorizations").await,
        10
    );
    assert_eq!(
        count(
            &app.db,
            "select count(*) from authorization_logs where event = 'consume'"
        )
        .await,
        100
    );
    assert_eq!(
        count(
            &app.db,
            "select count(*) from authorization_logs where event = 'consume' and allowed"
        )
        .await,
        10
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_license_revoked_through_one_node_is_denied_by_the_other_on_its_next_check(db: PgPool) {
    let node_a = spawn_app(db.clone()).await;
    let second_pool = PgPool::connect(&database_url_for(&database_name(&db)))
        .await
        .expect("pool");
    let node_b = spawn_app(second_pool).await;
    let license = grant(
        &node_a,
        json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"]}),
    )
    .await;
    let id = license["id"].as_str().expect("id");
    let alice = node_b.token("alice", &[Role::User]);
    let query = "resource=model:x&action=generate";
    assert_eq!(check(&node_b, &alice, query).await["allowed"], true);
    assert_eq!(
        check(&node_b, &alice, query).await["allowed"],
        true,
        "now served from the cache"
    );
    let metrics = node_b
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics.contains(r#"license_checks_total{outcome="allowed",cache="hit"}"#),
        "the cache was used"
    );

    let revoked = patch(&node_a, id, json!({"status": "revoked"})).await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let after = check(&node_b, &alice, query).await;

    assert_eq!(after["allowed"], false);
    assert_eq!(after["violation_code"], "license_revoked");
    assert_eq!(
        count(
            &node_a.db,
            "select count(*) from authorization_logs where event = 'check'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &node_a.db,
            "select count(*) from audit_access_log where action = 'license.revoke'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn checks_report_why_a_license_does_not_allow(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = app.token("alice", &[Role::User]);
    let none = check(&app, &alice, "resource=model:x&action=generate").await;
    assert_eq!(
        (none["allowed"].as_bool(), none["violation_code"].as_str()),
        (Some(false), Some("license_not_found"))
    );

    let license = grant(&app, json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"], "quota_total": 3})).await;
    let id = license["id"].as_str().expect("id");
    let allowed = check(&app, &alice, "resource=model:x&action=generate").await;
    assert_eq!(
        allowed,
        json!({"allowed": true, "license_id": id, "remaining_quota": 3, "valid_until": null, "violation_code": null})
    );
    let other_action = check(&app, &alice, "resource=model:x&action=download").await;
    assert_eq!(other_action["violation_code"], "action_not_permitted");

    assert_eq!(
        patch(&app, id, json!({"status": "suspended"}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        check(&app, &alice, "resource=model:x&action=generate").await["violation_code"],
        "license_suspended"
    );
    assert_eq!(
        patch(&app, id, json!({"status": "active", "quota_total": 0}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        check(&app, &alice, "resource=model:x&action=generate").await["violation_code"],
        "quota_exhausted"
    );

    grant(
        &app,
        json!({"subject_id": "alice", "resource": "model:old", "actions": ["generate"],
        "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2021-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        check(&app, &alice, "resource=model:old&action=generate").await["violation_code"],
        "license_expired"
    );
    grant(
        &app,
        json!({"subject_id": "alice", "resource": "model:new", "actions": ["generate"],
        "valid_from": "2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        check(&app, &alice, "resource=model:new&action=generate").await["violation_code"],
        "license_not_yet_valid"
    );

    let logged = count(
        &app.db,
        "select count(*) from authorization_logs where event = 'check'",
    )
    .await;
    assert_eq!(logged, 7, "every check is logged");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn license_changes_are_validated_and_a_revoked_license_stays_revoked(db: PgPool) {
    let app = spawn_app(db).await;
    let license = grant(&app, json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"], "quota_total": 5})).await;
    let id = license["id"].as_str().expect("id");
    let alice = app.token("alice", &[Role::User]);
    let consumed = app
        .send_json(
            Method::POST,
            &format!("/api/v1/licenses/{id}/consume"),
            Some(&alice),
            &json!({"units": 3}),
        )
        .await;
    assert_eq!(consumed.status(), StatusCode::OK);

    assert_problem(
        patch(&app, id, json!({"quota_total": 2})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_problem(
        patch(&app, id, json!({"status": "paused"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    assert_problem(
        patch(&app, "not-a-uuid", json!({})).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    assert_problem(
        patch(&app, "00000000-0000-0000-0000-000000000000", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        patch(&app, id, json!({"status": "revoked"})).await.status(),
        StatusCode::OK
    );
    assert_problem(
        patch(&app, id, json!({"status": "active"})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let after = app
        .send_json(
            Method::POST,
            &format!("/api/v1/licenses/{id}/consume"),
            Some(&alice),
            &json!({"units": 1}),
        )
        .await;
    assert_problem(after, StatusCode::CONFLICT, "license_revoked").await;
    let bad_grant = app
        .send_json(
            Method::POST,
            "/api/v1/licenses",
            Some(&app.token("admin-1", &[Role::Admin])),
            &json!({"subject_id": "alice", "resource": "model:y", "actions": []}),
        )
        .await;
    assert_problem(
        bad_grant,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        count(&app.db, "select count(*) from authorizations").await,
        1
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn subjects_see_and_consume_only_their_own_licenses(db: PgPool) {
    let app = spawn_app(db).await;
    let license = grant(&app, json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"], "quota_total": 5})).await;
    let id = license["id"].as_str().expect("id");
    let bob = app.token("bob", &[Role::User]);
    let service = app.token("renderer", &[Role::Service]);

    let foreign_check = app
        .get(
            "/api/v1/licenses/check?resource=model:x&action=generate&subject_id=alice",
            Some(&bob),
        )
        .await;
    assert_problem(foreign_check, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(
        app.get(&format!("/api/v1/licenses/{id}"), Some(&bob)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let foreign_consume = app
        .send_json(
            Method::POST,
            &format!("/api/v1/licenses/{id}/consume"),
            Some(&bob),
            &json!({"units": 1}),
        )
        .await;
    // Like reading it: another subject's license does not exist for this caller.
    assert_problem(foreign_consume, StatusCode::NOT_FOUND, "not_found").await;

    let by_service = check(
        &app,
        &service,
        "resource=model:x&action=generate&subject_id=alice",
    )
    .await;
    assert_eq!(by_service["allowed"], true);
    let consumed = app
        .send_json(
            Method::POST,
            &format!("/api/v1/licenses/{id}/consume"),
            Some(&service),
            &json!({"units": 2}),
        )
        .await;
    assert_eq!(consumed.status(), StatusCode::OK);
    assert_eq!(
        count(&app.db, "select quota_used from authorizations").await,
        2
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_consume_retried_with_its_idempotency_key_uses_quota_once(db: PgPool) {
    let app = spawn_app(db).await;
    let license = grant(&app, json!({"subject_id": "alice", "resource": "model:x", "actions": ["generate"], "quota_total": 5})).await;
    let path = format!(
        "/api/v1/licenses/{}/consume",
        license["id"].as_str().expect("id")
    );
    let alice = app.token("alice", &[Role::User]);
    let send = || {
        app.request(Method::POST, &path, Some(&alice))
            .header("idempotency-key", "use-1")
            .json(&json!({"units": 2}))
            .send()
    };

    let first = send().await.expect("first");
    let first_body = first.bytes().await.expect("body");
    let second = send().await.expect("second");

    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.bytes().await.expect("body"), first_body);
    assert_eq!(
        count(&app.db, "select quota_used from authorizations").await,
        2
    );
}
