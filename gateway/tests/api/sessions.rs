//! `GET /sessions/me` for every role and `PUT /sessions/me/theme`.

use crate::helpers::{assert_problem, spawn_app};
use gateway::permissions::PermissionMatrix;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;

const ME: &str = "/api/v1/sessions/me";

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn sessions_me_answers_every_role_with_its_scopes_theme_and_balance(db: PgPool) {
    let app = spawn_app(db).await;
    let matrix = PermissionMatrix::builtin().expect("matrix");

    for role in Role::ALL {
        let sub = format!("me-{role}");
        let response = app.get(ME, Some(&app.token(&sub, &[role]))).await;

        assert_eq!(response.status(), StatusCode::OK, "{role}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["user_id"], sub.as_str());
        assert_eq!(body["roles"], json!([role.as_str()]));
        let scopes: Vec<String> = matrix.scopes_for(&[role]).into_iter().collect();
        assert_eq!(body["scopes"], json!(scopes), "{role}");
        assert_eq!(body["theme_is_default"], true);
        let expected_accent = match role {
            Role::User => "ocean",
            Role::Creator => "creator",
            _ => "console",
        };
        assert_eq!(body["theme"]["accent"], expected_accent, "{role}");
        if role == Role::Service {
            assert_eq!(
                (&body["account_id"], &body["balance"]),
                (&Value::Null, &Value::Null)
            );
        } else {
            assert_eq!(body["account_id"], sub.as_str());
            assert_eq!(
                body["balance"],
                json!({"available": 0, "held": 0, "total": 0, "debt": 0})
            );
        }
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn sessions_me_shows_the_latest_balance(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("rich", &[Role::User]);
    assert_eq!(app.get(ME, Some(&token)).await.status(), StatusCode::OK);
    sqlx::query("insert into credit_ledger (account_id, kind, amount, actor_id) values ('rich', 'adjustment', 120, 'test')")
        .execute(&app.db)
        .await
        .expect("fund");

    let body: Value = app.get(ME, Some(&token)).await.json().await.expect("json");

    assert_eq!(
        body["balance"],
        json!({"available": 120, "held": 0, "total": 120, "debt": 0})
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_stored_theme_is_returned_by_put_and_then_by_sessions_me(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::Creator]);
    let theme = json!({"mode": "light", "accent": "#0a7cff", "density": "compact"});

    let response = app
        .send_json(
            Method::PUT,
            "/api/v1/sessions/me/theme",
            Some(&token),
            &theme,
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.expect("json"), theme);
    let me: Value = app.get(ME, Some(&token)).await.json().await.expect("json");
    assert_eq!(me["theme"], theme);
    assert_eq!(me["theme_is_default"], false);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_invalid_theme_leaves_the_stored_one_unchanged(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);
    let good = json!({"mode": "dark", "accent": "ocean", "density": "compact"});
    app.send_json(
        Method::PUT,
        "/api/v1/sessions/me/theme",
        Some(&token),
        &good,
    )
    .await;

    let bad = json!({"mode": "dark", "accent": "#GGGGGG", "density": "compact"});
    let response = app
        .send_json(Method::PUT, "/api/v1/sessions/me/theme", Some(&token), &bad)
        .await;

    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let me: Value = app.get(ME, Some(&token)).await.json().await.expect("json");
    assert_eq!(me["theme"], good);
}
