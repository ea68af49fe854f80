//! The creator dashboard on seeded history, against numbers the test computes itself.

use crate::helpers::{assert_problem, flat_price, funded_user, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_dashboard_adds_up_what_the_creator_did(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = funded_user(&app, "maker", 10_000).await;
    let creator = app.token("maker", &[Role::User, Role::Creator]);
    flat_price(&db, "render", 10).await;
    flat_price(&db, "upscale", 3).await;
    let service = app.token("svc", &[Role::Service]);
    let mut spent = 0;
    // (type, units, ending, actual units)
    let plan = [
        ("render", 5, Some("succeeded"), 5),
        ("render", 2, Some("succeeded"), 3),
        ("upscale", 4, Some("succeeded"), 4),
        ("render", 1, Some("failed"), 0),
        ("upscale", 2, Some("canceled"), 0),
        ("render", 3, None, 0),
    ];
    for (task_type, units, ending, actual) in plan {
        let task: Value = app
            .send_json(
                Method::POST,
                "/api/v1/tasks",
                Some(&token),
                &json!({ "task_type": task_type, "units": units }),
            )
            .await
            .json()
            .await
            .expect("task");
        let id = task["id"].as_str().expect("id").to_owned();
        let post = |body: Value| {
            let (app, service, id) = (&app, &service, id.clone());
            async move {
                let response = app
                    .send_json(
                        Method::POST,
                        &format!("/api/v1/tasks/{id}/events"),
                        Some(service),
                        &body,
                    )
                    .await;
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        };
        match ending {
            Some("canceled") => {
                let response = app
                    .send_json(
                        Method::POST,
                        &format!("/api/v1/tasks/{id}/cancel"),
                        Some(&token),
                        &json!({}),
                    )
                    .await;
                assert!(response.status().is_success());
            }
            Some(state) => {
                post(json!({ "kind": "state", "state": "running" })).await;
                let mut event = json!({ "kind": "state", "state": state });
                if state == "succeeded" {
                    event["actual_units"] = json!(actual);
                    spent += actual * if task_type == "render" { 10 } else { 3 };
                }
                post(event).await;
            }
            None => post(json!({ "kind": "state", "state": "running" })).await,
        }
    }
    let charge: Value = app
        .post_keyed(
            "/api/v1/credits/charge",
            &token,
            "c1",
            &json!({ "amount": 40, "reason": "export" }),
        )
        .await
        .json()
        .await
        .expect("charge");
    let finance = app.token("fin", &[Role::Finance]);
    app.post_keyed(
        "/api/v1/credits/refund",
        &finance,
        "r1",
        &json!({ "charge_entry_id": charge["entry_id"], "amount": 15, "reason": "partial" }),
    )
    .await;
    spent += 40 - 15;
    sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, reference, actor_id) \
         values ('maker', 'recharge', 990, gen_random_uuid()::text, 'wechatpay')",
    )
    .execute(&db)
    .await
    .expect("recharge");

    let board: Value = app
        .get("/api/v1/creators/maker/dashboard", Some(&creator))
        .await
        .json()
        .await
        .expect("dashboard");
    assert_eq!(
        board["tasks"],
        json!({ "queued": 0, "running": 1, "succeeded": 3, "failed": 1, "canceled": 1, "total": 6 })
    );
    assert_eq!(board["success_rate"].as_f64(), Some(0.75));
    assert_eq!(board["credits"]["spent"], spent);
    assert_eq!(board["credits"]["recharged"], 990);
    assert!(
        board["duration_seconds"]["p50"]
            .as_f64()
            .is_some_and(|p| p >= 0.0)
    );
    assert!(board["duration_seconds"]["p95"].as_f64() >= board["duration_seconds"]["p50"].as_f64());
    let daily = board["daily"].as_array().expect("daily");
    assert!(daily.len() >= 30, "every Beijing day of the range");
    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("offset"))
        .date_naive()
        .to_string();
    let last = daily.iter().find(|d| d["day"] == today).expect("today");
    assert_eq!(
        (last["tasks"].as_i64(), last["succeeded"].as_i64()),
        (Some(6), Some(3))
    );
    assert_eq!(last["spent"], spent);
    let total: i64 = daily.iter().map(|d| d["tasks"].as_i64().unwrap_or(0)).sum();
    assert_eq!(total, 6);
    assert_eq!(
        board["top_task_types"][0],
        json!({ "task_type": "render", "tasks": 4, "succeeded": 2 })
    );

    let stranger = app.token("other", &[Role::Creator]);
    let denied = app
        .get("/api/v1/creators/maker/dashboard", Some(&stranger))
        .await;
    assert_problem(denied, StatusCode::NOT_FOUND, "not_found").await;
    let ops = app.token("ops", &[Role::Operator]);
    assert_eq!(
        app.get("/api/v1/creators/maker/dashboard", Some(&ops))
            .await
            .status(),
        StatusCode::OK
    );
    let user_only = app
        .get("/api/v1/creators/maker/dashboard", Some(&token))
        .await;
    assert_problem(user_only, StatusCode::FORBIDDEN, "forbidden").await;
    let nobody = app
        .get("/api/v1/creators/ghost/dashboard", Some(&ops))
        .await;
    assert_problem(nobody, StatusCode::NOT_FOUND, "not_found").await;
    let backwards = app
        .get(
            "/api/v1/creators/maker/dashboard?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            Some(&ops),
        )
        .await;
    assert_problem(backwards, StatusCode::BAD_REQUEST, "invalid_query").await;
}
