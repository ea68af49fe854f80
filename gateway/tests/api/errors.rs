//! Every kind of rejection is RFC 9457 problem+json with a stable code, and changes nothing.

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use shared::Role;
use sqlx::PgPool;

const THEME: &str = "/api/v1/sessions/me/theme";

async fn stored_themes(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from theme_preferences")
        .fetch_one(db)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn malformed_json_is_400_malformed_json(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);

    let response = app
        .request(Method::PUT, THEME, Some(&token))
        .header("content-type", "application/json")
        .body(r#"{"mode": "dark","#)
        .send()
        .await
        .expect("request");

    assert_problem(response, StatusCode::BAD_REQUEST, "malformed_json").await;
    assert_eq!(stored_themes(&app.db).await, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn wrong_types_missing_fields_and_unknown_enum_values_are_422_invalid_body(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);
    let bodies = [
        json!({"mode": 5, "accent": "ocean", "density": "compact"}),
        json!({"mode": "dark", "density": "compact"}),
        json!({"mode": "neon", "accent": "ocean", "density": "compact"}),
        json!({"mode": "dark", "accent": "ocean", "density": "compact", "extra": true}),
        json!(["dark"]),
    ];

    for body in bodies {
        let response = app.send_json(Method::PUT, THEME, Some(&token), &body).await;
        let problem =
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|detail| !detail.is_empty()),
            "{body}"
        );
    }
    assert_eq!(stored_themes(&app.db).await, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_value_breaking_a_rule_is_422_validation_failed(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);

    let body = json!({"mode": "dark", "accent": "Hot Pink", "density": "compact"});
    let response = app.send_json(Method::PUT, THEME, Some(&token), &body).await;

    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(stored_themes(&app.db).await, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_body_that_is_not_json_is_415_unsupported_media_type(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);

    let response = app
        .request(Method::PUT, THEME, Some(&token))
        .header("content-type", "text/plain")
        .body("mode=dark")
        .send()
        .await
        .expect("request");

    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_oversize_body_is_413_payload_too_large(db: PgPool) {
    let app = spawn_app_with(db, |settings| settings.http.body_limit_bytes = 1024).await;
    let token = app.token("alice", &[Role::User]);
    let body = json!({"mode": "dark", "accent": "a".repeat(4096), "density": "compact"});

    let response = app.send_json(Method::PUT, THEME, Some(&token), &body).await;

    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_bad_path_parameter_is_400_invalid_path(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("auditor-1", &[Role::Auditor]);

    let response = app
        .get("/api/v1/audit/access-logs/not-a-number", Some(&token))
        .await;

    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_path").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn bad_query_parameters_are_400_invalid_query(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("auditor-1", &[Role::Auditor]);

    for query in [
        "limit=abc",
        "limit=0",
        "limit=501",
        "from=yesterday",
        "cursor=forged",
    ] {
        let response = app
            .get(&format!("/api/v1/audit/access-logs?{query}"), Some(&token))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_unknown_route_is_404_route_not_found(db: PgPool) {
    let app = spawn_app(db).await;

    for path in ["/nope", "/api/v1/nope", "/api/v1/sessions/me/extra"] {
        assert_problem(
            app.get(path, None).await,
            StatusCode::NOT_FOUND,
            "route_not_found",
        )
        .await;
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_wrong_method_is_405_method_not_allowed(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("alice", &[Role::User]);

    let response = app
        .request(Method::DELETE, "/api/v1/sessions/me", Some(&token))
        .send()
        .await;

    let response = response.expect("request");
    assert!(response.headers().contains_key("allow"));
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_callers_request_id_is_echoed_in_the_header_and_the_problem(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app
        .request(Method::GET, "/api/v1/sessions/me", None)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("request");

    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let body = assert_problem(response, StatusCode::UNAUTHORIZED, "token_missing").await;
    assert_eq!(body["request_id"], "trace-me-42");
}
