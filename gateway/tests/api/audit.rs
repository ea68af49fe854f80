//! Sensitive acts write `audit_access_log` rows; auditors read them, paginated, and the reading is
//! audited too.

use crate::helpers::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;

async fn audit_rows(db: &PgPool, action: &str) -> i64 {
    sqlx::query_scalar("select count(*) from audit_access_log where action = $1")
        .bind(action)
        .fetch_one(db)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn dev_login_mints_a_working_token_and_is_audited(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app
        .request(Method::POST, "/api/v1/dev/login", None)
        .header("x-request-id", "login-1")
        .json(&json!({"sub": "frank", "roles": ["operator"], "ttl_seconds": 120}))
        .send()
        .await
        .expect("login");

    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("json");
    let token = body["token"].as_str().expect("token");
    let me: Value = app
        .get("/api/v1/sessions/me", Some(token))
        .await
        .json()
        .await
        .expect("me");
    assert_eq!(me["user_id"], "frank");
    let (actor, request_id, ip): (String, String, String) = sqlx::query_as(
        "select actor_id, request_id, host(client_ip) from audit_access_log where action = 'session.dev_login'",
    )
    .fetch_one(&app.db)
    .await
    .expect("one audit row");
    assert_eq!(
        (actor.as_str(), request_id.as_str(), ip.as_str()),
        ("frank", "login-1", "127.0.0.1")
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_invalid_dev_login_is_rejected_and_not_audited(db: PgPool) {
    let app = spawn_app(db).await;

    for body in [
        json!({"sub": "bad sub!", "roles": ["user"]}),
        json!({"sub": "ok", "roles": []}),
        json!({"sub": "ok", "roles": ["user"], "ttl_seconds": 0}),
    ] {
        let response = app
            .send_json(Method::POST, "/api/v1/dev/login", None, &body)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    assert_eq!(audit_rows(&app.db, "session.dev_login").await, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn auditors_page_through_the_log_and_every_read_is_audited(db: PgPool) {
    let app = spawn_app(db).await;
    for n in 0..3 {
        let body = json!({"sub": format!("u{n}"), "roles": ["user"]});
        app.send_json(Method::POST, "/api/v1/dev/login", None, &body)
            .await;
    }
    let token = app.token("ivy", &[Role::Auditor]);

    let first: Value = app
        .get(
            "/api/v1/audit/access-logs?action=session.dev_login&limit=2",
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("page 1");
    let cursor = first["next_cursor"].as_str().expect("a second page exists");
    let second: Value = app
        .get(
            &format!("/api/v1/audit/access-logs?action=session.dev_login&limit=2&cursor={cursor}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("page 2");

    let actors = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| item["actor_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(actors(&first), vec!["u2", "u1"], "newest first");
    assert_eq!(actors(&second), vec!["u0"]);
    assert_eq!(second["next_cursor"], Value::Null);
    assert_eq!(audit_rows(&app.db, "audit.read").await, 2);

    let id = first["items"][0]["id"].as_i64().expect("id");
    let one: Value = app
        .get(&format!("/api/v1/audit/access-logs/{id}"), Some(&token))
        .await
        .json()
        .await
        .expect("one");
    assert_eq!(one["actor_id"], "u2");
    assert_eq!(audit_rows(&app.db, "audit.read").await, 3);
    let missing = app
        .get("/api/v1/audit/access-logs/999999", Some(&token))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
