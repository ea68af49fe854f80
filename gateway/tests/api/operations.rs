//! `/healthz`, `/readyz`, `/metrics` and the OpenAPI document.

use crate::helpers::{assert_problem, database_name, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::Value;
use shared::Role;
use sqlx::PgPool;

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn readyz_is_200_when_postgres_migrations_and_redis_are_fine(db: PgPool) {
    let app = spawn_app(db).await;

    let response = app.get("/readyz", None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    for check in ["postgres", "migrations", "redis", "draining"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn readyz_is_503_naming_postgres_when_the_database_is_unreachable(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    let admin = PgPool::connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL"))
        .await
        .expect("admin connection");

    sqlx::query(&format!(
        "drop database \"{}\" with (force)",
        database_name(&db)
    ))
    .execute(&admin)
    .await
    .expect("drop the node's database");
    let response = app.get("/readyz", None).await;

    let body = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(
        body["failing"],
        serde_json::json!(["migrations", "postgres"]),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("postgres")),
        "{body}"
    );
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn readyz_is_503_naming_redis_when_redis_is_unreachable(db: PgPool) {
    let app = spawn_app_with(db, |settings| {
        settings.redis_url = Some("redis://127.0.0.1:1".into());
    })
    .await;

    let response = app.get("/readyz", None).await;

    let body = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(
        body["failing"],
        serde_json::json!(["broker", "redis"]),
        "the pub/sub link and the command path: {body}"
    );
    assert_eq!(body["checks"]["postgres"], "ok");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn readyz_is_503_when_migrations_are_missing(db: PgPool) {
    let app = spawn_app(db).await;
    sqlx::query("delete from _sqlx_migrations")
        .execute(&app.db)
        .await
        .expect("forget migrations");

    let response = app.get("/readyz", None).await;

    let body = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(body["failing"], serde_json::json!(["migrations"]), "{body}");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn metrics_count_requests_by_matched_route_and_expose_process_metrics(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.token("metrics-user", &[Role::User]);
    app.get("/api/v1/sessions/me", Some(&token)).await;
    app.get("/api/v1/audit/access-logs/12345", Some(&token))
        .await;

    let response = app.get("/metrics", None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    assert!(
        text.lines()
            .any(|line| line.starts_with("http_requests_total{")
                && line.contains(r#"route="/api/v1/sessions/me""#)
                && line.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/api/v1/audit/access-logs/{id}""#),
        "matched route, not raw path"
    );
    assert!(!text.contains("12345"), "raw paths must not become labels");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "latency histogram"
    );
    assert!(
        text.contains("process_resident_memory_bytes"),
        "process metrics"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_openapi_document_is_3_1_and_describes_the_api(db: PgPool) {
    let app = spawn_app(db).await;

    let document: Value = app
        .get("/api/v1/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");

    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.1"))
    );
    assert!(document["paths"]["/api/v1/sessions/me"]["get"].is_object());
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    assert!(document["components"]["schemas"]["Problem"].is_object());
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_openapi_document_declares_parameters_answers_and_constraints_truthfully(db: PgPool) {
    let app = spawn_app(db).await;
    let document: Value = app
        .get("/api/v1/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");

    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            let name = format!("{} {path}", method.to_uppercase());
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for parameter in &parameters {
                let (param, place) = (
                    parameter["name"].as_str().expect("name"),
                    parameter["in"].as_str().expect("in"),
                );
                // A path parameter names a segment of the path; everything else is elsewhere.
                assert_eq!(
                    place == "path",
                    path.contains(&format!("{{{param}}}")),
                    "{name}: `{param}` is declared in {place}"
                );
            }
            if !path.starts_with("/api/") {
                continue;
            }
            let responses = operation["responses"].as_object().expect("responses");
            let mut expected = vec!["408", "422", "503"];
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                expected.extend(["401", "403", "429"]);
            }
            if operation["requestBody"].is_object() {
                expected.extend(["400", "413", "415"]);
            }
            if path.contains('{') {
                expected.extend(["400", "404"]);
            }
            for status in expected {
                let answer = &responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{name} does not list {status}"));
                // WeChat's callback answers in WeChat's shape (`{"code":"FAIL"}`) where it
                // answers itself; the framework's refusals stay problem+json.
                let wechat_reply = path == "/api/v1/payments/wechat/notify"
                    && answer["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/WechatReply";
                assert!(
                    answer["content"]["application/problem+json"].is_object() || wechat_reply,
                    "{name} {status} is not problem+json"
                );
            }
        }
    }
    assert!(operations > 30, "{operations} operations");

    // Every reference resolves to a component of the document.
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    if key == "$ref"
                        && let Some(reference) = inner.as_str()
                    {
                        found.push(reference.to_owned());
                    }
                    references(inner, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    references(&document, &mut found);
    for reference in found {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert!(
            document["components"]["schemas"][name].is_object(),
            "{reference} does not resolve"
        );
    }

    // The Idempotency-Key is required where the API requires it, with its shape.
    for path in [
        "/api/v1/credits/charge",
        "/api/v1/credits/refund",
        "/api/v1/credits/adjust",
    ] {
        let parameters = document["paths"][path]["post"]["parameters"]
            .as_array()
            .expect("parameters");
        let key = parameters
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .expect("Idempotency-Key");
        assert_eq!(key["in"], "header");
        assert_eq!(key["required"], true, "{path}");
        assert!(key["schema"]["pattern"].is_string(), "{path}");
        for status in ["409", "422"] {
            assert!(document["paths"][path]["post"]["responses"][status].is_object());
        }
    }
    // Bodies and parameters carry their constraints.
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["ChargeRequest"]["properties"]["amount"]["minimum"],
        1
    );
    assert_eq!(
        schemas["ChargeRequest"]["properties"]["amount"]["maximum"],
        1_000_000_000_000_i64
    );
    assert_eq!(
        schemas["ChargeRequest"]["properties"]["reason"]["maxLength"],
        500
    );
    assert_eq!(
        schemas["CreateTaskRequest"]["properties"]["units"]["maximum"],
        1_000_000_000
    );
    let task_id = document["paths"]["/api/v1/tasks/{id}"]["get"]["parameters"][0].clone();
    assert_eq!(task_id["schema"]["format"], "uuid");
    let limit = document["paths"]["/api/v1/tasks"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .cloned()
        .expect("limit");
    assert_eq!(limit["in"], "query");
    assert_eq!(limit["schema"]["maximum"], 500);
}
