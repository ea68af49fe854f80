//! `/pricing/rules`: admins create and change price rules through the API, operators read them;
//! changes are validated, kept in the rule's history, audited, and price only what follows.

use crate::helpers::{assert_problem, funded_user, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;

const RULES: &str = "/api/v1/pricing/rules";

async fn estimate(app: &crate::helpers::TestApp, token: &str, units: i64) -> i64 {
    let response = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(token),
            &json!({"task_type": "paint", "units": units}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("estimate");
    body["estimated_credits"].as_i64().expect("credits")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_fresh_deployment_prices_a_task_type_through_the_api_and_changes_never_rewrite_history(
    db: PgPool,
) {
    let app = spawn_app(db).await;
    let admin = app.token("admin-1", &[Role::Admin]);
    let operator = app.token("operator-1", &[Role::Operator]);
    let user = funded_user(&app, "alice", 10_000).await;

    let created = app
        .send_json(
            Method::POST,
            RULES,
            Some(&admin),
            &json!({
                "id": "paint-v1", "task_type": "paint", "base_credits": 10, "per_unit_credits": 2,
                "history_weight_bp": 0, "tiers": [{"min_units": 100, "discount_bp": 5000}],
            }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let rule: Value = created.json().await.expect("rule");
    assert_eq!(rule["tiers"][0]["discount_bp"], 5000);
    assert_eq!(estimate(&app, &user, 10).await, 30);
    assert_eq!(estimate(&app, &user, 100).await, 110);

    let task: Value = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(&user),
            &json!({"task_type": "paint", "units": 10}),
        )
        .await
        .json()
        .await
        .expect("task");
    assert_eq!(task["estimated_credits"], 30);

    let changed = app
        .send_json(
            Method::PATCH,
            &format!("{RULES}/paint-v1"),
            Some(&admin),
            &json!({"per_unit_credits": 5, "tiers": []}),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(estimate(&app, &user, 10).await, 60);
    assert_eq!(estimate(&app, &user, 100).await, 510);
    let stored: i64 = sqlx::query_scalar("select estimated_credits from tasks")
        .fetch_one(&app.db)
        .await
        .expect("task");
    assert_eq!(
        stored, 30,
        "the task keeps the estimate it was created with"
    );

    let listed: Value = app
        .get(RULES, Some(&operator))
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(listed["items"][0]["per_unit_credits"], 5);
    let history: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "select change, (before->>'per_unit_credits')::int8, (after->>'per_unit_credits')::int8 \
           from price_rule_changes order by id",
    )
    .fetch_all(&app.db)
    .await
    .expect("history");
    assert_eq!(
        history,
        vec![("create".into(), None, 2), ("update".into(), Some(2), 5)]
    );
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_access_log where action like 'pricing.%' and outcome = 'success'",
    )
    .fetch_one(&app.db)
    .await
    .expect("audit");
    assert_eq!(audited, 2);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn bad_rules_are_refused_audited_and_change_nothing(db: PgPool) {
    let app = spawn_app(db).await;
    let admin = app.token("admin-1", &[Role::Admin]);
    let operator = app.token("operator-1", &[Role::Operator]);
    let rule =
        json!({"id": "paint-v1", "task_type": "paint", "base_credits": 1, "per_unit_credits": 1});
    let first = app
        .send_json(Method::POST, RULES, Some(&admin), &rule)
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    for (body, status, code) in [
        (
            json!({"id": "paint-v2", "task_type": "paint", "base_credits": 1, "per_unit_credits": 1}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (rule.clone(), StatusCode::CONFLICT, "conflict"),
        (
            json!({"id": "Bad Id", "task_type": "paint", "base_credits": 1, "per_unit_credits": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"id": "x1", "task_type": "x", "base_credits": -1, "per_unit_credits": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"id": "x2", "task_type": "x", "base_credits": 1, "per_unit_credits": i64::MAX}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"id": "x3", "task_type": "x", "base_credits": 1, "per_unit_credits": 1,
                   "tiers": [{"min_units": 5, "discount_bp": 1}, {"min_units": 5, "discount_bp": 2}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"id": "x4", "task_type": "x", "base_credits": 1, "per_unit_credits": 1, "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ] {
        let response = app
            .send_json(Method::POST, RULES, Some(&admin), &body)
            .await;
        assert_problem(response, status, code).await;
    }
    let patch = app
        .send_json(
            Method::PATCH,
            &format!("{RULES}/nope"),
            Some(&admin),
            &json!({"active": false}),
        )
        .await;
    assert_problem(patch, StatusCode::NOT_FOUND, "not_found").await;
    let bad_patch = app
        .send_json(
            Method::PATCH,
            &format!("{RULES}/paint-v1"),
            Some(&admin),
            &json!({"peak_multiplier_bp": 5}),
        )
        .await;
    assert_problem(
        bad_patch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let denied = app
        .send_json(Method::POST, RULES, Some(&operator), &rule)
        .await;
    assert_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;

    let rules: i64 = sqlx::query_scalar("select count(*) from price_rules")
        .fetch_one(&app.db)
        .await
        .expect("rules");
    assert_eq!(rules, 1);
    let refusals: Vec<(String, String)> = sqlx::query_as(
        "select action, outcome from audit_access_log where action like 'pricing.%' \
           and outcome <> 'success' order by id",
    )
    .fetch_all(&app.db)
    .await
    .expect("audit");
    assert_eq!(refusals.len(), 10, "{refusals:?}");
    assert_eq!(refusals[9], ("pricing.create".into(), "denied".into()));

    // Retired, a rule frees its task type for a new one.
    let retire = app
        .send_json(
            Method::PATCH,
            &format!("{RULES}/paint-v1"),
            Some(&admin),
            &json!({"active": false}),
        )
        .await;
    assert_eq!(retire.status(), StatusCode::OK);
    let second = app
        .send_json(
            Method::POST,
            RULES,
            Some(&admin),
            &json!({"id": "paint-v2", "task_type": "paint", "base_credits": 1, "per_unit_credits": 1}),
        )
        .await;
    assert_eq!(second.status(), StatusCode::CREATED);
}
