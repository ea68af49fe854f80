//! `/credits/*` over HTTP against real PostgreSQL: idempotency, concurrency across two nodes,
//! refunds, permissions, validation, estimates.

use crate::helpers::{assert_problem, database_name, database_url_for, funded_user, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;

const CHARGE: &str = "/api/v1/credits/charge";

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect(sql)
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn two_hundred_concurrent_charges_with_one_key_write_one_row(db: PgPool) {
    let app = Arc::new(spawn_app(db).await);
    let token = Arc::new(funded_user(&app, "alice", 1_000).await);
    let body = json!({"amount": 7, "reason": "render"});

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (app, token, body) = (app.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let response = app.post_keyed(CHARGE, &token, "same-key", &body).await;
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            (status, replayed, response.bytes().await.expect("body"))
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("join"));
    }

    assert_eq!(
        count(
            &app.db,
            "select count(*) from credit_ledger where kind = 'charge'"
        )
        .await,
        1
    );
    let created: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::CREATED)
        .collect();
    let fresh: Vec<_> = created
        .iter()
        .filter(|(_, replayed, _)| !replayed)
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one answer is the original");
    for (status, replayed, bytes) in &answers {
        match *status {
            StatusCode::CREATED => assert_eq!(
                bytes, &fresh[0].2,
                "replays are byte-identical (replayed: {replayed})"
            ),
            StatusCode::CONFLICT => {
                let problem: Value = serde_json::from_slice(bytes).expect("problem");
                assert_eq!(problem["code"], "idempotency_key_in_flight");
            }
            other => panic!("unexpected {other}"),
        }
    }
    let other = app
        .post_keyed(
            CHARGE,
            &token,
            "same-key",
            &json!({"amount": 8, "reason": "render"}),
        )
        .await;
    assert_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(
        count(
            &app.db,
            "select count(*) from credit_ledger where kind = 'charge'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_thousand_charges_over_two_nodes_keep_every_invariant(db: PgPool) {
    let node_a = Arc::new(spawn_app(db.clone()).await);
    let second_pool = PgPool::connect(&database_url_for(&database_name(&db)))
        .await
        .expect("second pool");
    let node_b = Arc::new(spawn_app(second_pool).await);
    let mut tokens = Vec::new();
    for n in 0..10 {
        tokens.push(Arc::new(
            funded_user(&node_a, &format!("acct{n}"), 150).await,
        ));
    }
    let limiter = Arc::new(tokio::sync::Semaphore::new(64));

    let mut tasks = Vec::new();
    for i in 0..1_000usize {
        let node = if i % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        let token = tokens[i % 10].clone();
        let limiter = limiter.clone();
        let amount = 1 + (i % 5) as i64;
        tasks.push(tokio::spawn(async move {
            let _permit = limiter.acquire().await.expect("permit");
            let body = json!({"amount": amount, "reason": "load"});
            let response = node
                .post_keyed(CHARGE, &token, &format!("charge-{i}"), &body)
                .await;
            response.status()
        }));
    }
    let mut statuses: HashMap<StatusCode, i64> = HashMap::new();
    for task in tasks {
        *statuses.entry(task.await.expect("join")).or_default() += 1;
    }

    let created = statuses.get(&StatusCode::CREATED).copied().unwrap_or(0);
    let refused = statuses
        .get(&StatusCode::PAYMENT_REQUIRED)
        .copied()
        .unwrap_or(0);
    assert_eq!(created + refused, 1_000, "only 201 and 402: {statuses:?}");
    assert!(
        refused > 0,
        "funds ran out somewhere: the 402 path was exercised"
    );
    let applied = count(
        &node_a.db,
        "select count(*) from credit_ledger where kind = 'charge'",
    )
    .await;
    assert_eq!(applied, created, "applied charges = 201s");
    let broken = count(
        &node_a.db,
        "select count(*) from credit_accounts a where a.available < 0 or a.available <> \
           (select coalesce(sum(amount), 0) from credit_ledger l where l.account_id = a.id)",
    )
    .await;
    assert_eq!(
        broken, 0,
        "every balance is the sum of its ledger, none negative"
    );
    let audited = count(
        &node_a.db,
        "select count(*) from audit_access_log where action = 'credits.charge'",
    )
    .await;
    assert_eq!(audited, 1_000, "every charge attempt is audited");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn concurrent_refunds_across_two_nodes_never_exceed_the_charge(db: PgPool) {
    let node_a = Arc::new(spawn_app(db.clone()).await);
    let second_pool = PgPool::connect(&database_url_for(&database_name(&db)))
        .await
        .expect("second pool");
    let node_b = Arc::new(spawn_app(second_pool).await);
    let token = funded_user(&node_a, "alice", 100).await;
    let charged: Value = node_a
        .post_keyed(
            CHARGE,
            &token,
            "c1",
            &json!({"amount": 60, "reason": "job"}),
        )
        .await
        .json()
        .await
        .expect("charge");
    let charge_id = charged["entry_id"].as_i64().expect("entry id");
    let finance = Arc::new(node_a.token("fin", &[Role::Finance]));

    let mut tasks = Vec::new();
    for i in 0..20 {
        let node = if i % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        let finance = finance.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"charge_entry_id": charge_id, "amount": 8, "reason": "goodwill"});
            node.post_keyed(
                "/api/v1/credits/refund",
                &finance,
                &format!("refund-{i}"),
                &body,
            )
            .await
            .status()
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("join") {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }

    assert_eq!(created, 7, "7 x 8 = 56 <= 60 < 64");
    let refunded = count(
        &node_a.db,
        "select coalesce(sum(amount), 0)::bigint from credit_ledger where kind = 'refund'",
    )
    .await;
    assert_eq!(refunded, 56);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_charge_without_funds_is_402_writes_nothing_and_is_replayed(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 5).await;
    let body = json!({"amount": 6, "reason": "too much"});

    let first = app.post_keyed(CHARGE, &token, "k", &body).await;
    let first = assert_problem(first, StatusCode::PAYMENT_REQUIRED, "insufficient_credits").await;
    // Funds arrive, but the retry with the same key gets the same answer: never a late charge.
    let finance = app.token("fin", &[Role::Finance]);
    app.post_keyed(
        "/api/v1/credits/adjust",
        &finance,
        "more",
        &json!({"account_id": "alice", "amount": 50, "reason": "topup"}),
    )
    .await;
    let retry = app.post_keyed(CHARGE, &token, "k", &body).await;

    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.expect("problem");
    assert_eq!(retry, first);
    assert_eq!(
        count(
            &app.db,
            "select count(*) from credit_ledger where kind = 'charge'"
        )
        .await,
        0
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn money_routes_require_a_valid_idempotency_key(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 5).await;
    let body = json!({"amount": 1, "reason": "x"});

    let missing = app
        .send_json(Method::POST, CHARGE, Some(&token), &body)
        .await;
    assert_problem(missing, StatusCode::BAD_REQUEST, "idempotency_key_required").await;
    let too_long = app
        .post_keyed(CHARGE, &token, &"k".repeat(256), &body)
        .await;
    assert_problem(too_long, StatusCode::BAD_REQUEST, "invalid_header").await;
    assert_eq!(
        count(
            &app.db,
            "select count(*) from credit_ledger where kind = 'charge'"
        )
        .await,
        0
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn invalid_money_requests_are_rejected_and_change_nothing(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 50).await;
    let finance = app.token("fin", &[Role::Finance]);
    let cases = [
        (
            CHARGE,
            &token,
            json!({"amount": 0, "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            CHARGE,
            &token,
            json!({"amount": -5, "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            CHARGE,
            &token,
            json!({"amount": 5, "reason": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            CHARGE,
            &token,
            json!({"amount": "5", "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            CHARGE,
            &token,
            json!({"reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            CHARGE,
            &token,
            json!({"amount": 5, "reason": "x", "task_id": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            CHARGE,
            &token,
            json!({"amount": 5, "reason": "x", "account_id": "bob"}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "/api/v1/credits/refund",
            &finance,
            json!({"charge_entry_id": 1, "amount": 5, "reason": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "/api/v1/credits/refund",
            &finance,
            json!({"charge_entry_id": 999, "amount": 5, "reason": "x"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/api/v1/credits/adjust",
            &finance,
            json!({"account_id": "alice", "amount": -51, "reason": "x"}),
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
        ),
        (
            "/api/v1/credits/adjust",
            &finance,
            json!({"account_id": "nobody", "amount": 5, "reason": "x"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];

    for (index, (path, token, body, status, code)) in cases.into_iter().enumerate() {
        let response = app
            .post_keyed(path, token, &format!("case-{index}"), &body)
            .await;
        assert_problem(response, status, code).await;
    }
    let (available, entries): (i64, i64) = sqlx::query_as(
        "select (select available from credit_accounts where id = 'alice'), (select count(*) from credit_ledger)",
    )
    .fetch_one(&app.db)
    .await
    .expect("state");
    assert_eq!(
        (available, entries),
        (50, 1),
        "only the funding entry exists"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn staff_act_on_any_account_and_users_only_on_their_own(db: PgPool) {
    let app = spawn_app(db).await;
    funded_user(&app, "alice", 50).await;
    let bob = funded_user(&app, "bob", 0).await;
    let operator = app.token("op", &[Role::Operator]);
    let service = app.token("svc", &[Role::Service]);

    let by_operator = app
        .post_keyed(
            CHARGE,
            &operator,
            "op-1",
            &json!({"account_id": "alice", "amount": 5, "reason": "support"}),
        )
        .await;
    assert_eq!(by_operator.status(), StatusCode::CREATED);
    let by_service = app
        .post_keyed(
            CHARGE,
            &service,
            "svc-1",
            &json!({"account_id": "alice", "amount": 5, "reason": "usage"}),
        )
        .await;
    assert_eq!(by_service.status(), StatusCode::CREATED);
    let service_without_account = app
        .post_keyed(
            CHARGE,
            &service,
            "svc-2",
            &json!({"amount": 5, "reason": "usage"}),
        )
        .await;
    assert_problem(
        service_without_account,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let foreign = app
        .get("/api/v1/credits/balance?account_id=alice", Some(&bob))
        .await;
    assert_problem(foreign, StatusCode::FORBIDDEN, "forbidden").await;
    let finance = app.token("fin", &[Role::Finance]);
    let balance: Value = app
        .get("/api/v1/credits/balance?account_id=alice", Some(&finance))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        balance,
        json!({"account_id": "alice", "available": 40, "held": 0, "total": 40, "debt": 0})
    );
    let refund_by_user = app
        .post_keyed(
            "/api/v1/credits/refund",
            &bob,
            "r",
            &json!({"charge_entry_id": 2, "amount": 1, "reason": "x"}),
        )
        .await;
    assert_problem(refund_by_user, StatusCode::FORBIDDEN, "forbidden").await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_ledger_pages_newest_first_and_refunds_are_audited_with_their_reason(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "alice", 100).await;
    let mut first_charge = Value::Null;
    for n in 0..3 {
        let body = json!({"amount": 10 + n, "reason": format!("job {n}")});
        let charged: Value = app
            .post_keyed(CHARGE, &token, &format!("c{n}"), &body)
            .await
            .json()
            .await
            .expect("charge");
        if n == 0 {
            first_charge = charged["entry_id"].clone();
        }
    }
    let finance = app.token("fin", &[Role::Finance]);
    let body = json!({"charge_entry_id": first_charge, "amount": 4, "reason": "late delivery"});
    let refund = app
        .post_keyed("/api/v1/credits/refund", &finance, "r1", &body)
        .await;
    assert_eq!(refund.status(), StatusCode::CREATED);

    let first: Value = app
        .get("/api/v1/credits/ledger?limit=3", Some(&token))
        .await
        .json()
        .await
        .expect("page 1");
    let cursor = first["next_cursor"].as_str().expect("more pages");
    let second: Value = app
        .get(
            &format!("/api/v1/credits/ledger?limit=3&cursor={cursor}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("page 2");

    let kinds = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(kinds(&first), vec!["refund", "charge", "charge"]);
    assert_eq!(kinds(&second), vec!["charge", "adjustment"]);
    assert_eq!(second["next_cursor"], Value::Null);
    let (actor, detail): (String, Value) = sqlx::query_as(
        "select actor_id, detail from audit_access_log where action = 'credits.refund'",
    )
    .fetch_one(&app.db)
    .await
    .expect("one refund audit row");
    assert_eq!(actor, "fin");
    assert_eq!(detail["reason"], "late delivery");
}

async fn seed_pricing(db: &PgPool, with_history: bool) {
    sqlx::query(
        "insert into price_rules (id, task_type, base_credits, per_unit_credits, peak_multiplier_bp, \
           peak_start_hour, peak_end_hour, history_weight_bp) values ('render-v1', 'render', 10, 4, 15000, 18, 22, 5000)",
    )
    .execute(db)
    .await
    .expect("rule");
    sqlx::query("insert into price_rule_tiers (rule_id, min_units, discount_bp) values ('render-v1', 1000, 2500)")
        .execute(db)
        .await
        .expect("tier");
    if with_history {
        sqlx::query(
            "insert into users (id, display_name, roles) values ('hist', 'hist', '{user}')",
        )
        .execute(db)
        .await
        .expect("user");
        sqlx::query("insert into credit_accounts (id, owner_id) values ('hist', 'hist')")
            .execute(db)
            .await
            .expect("account");
        // Cost per unit: 5, 6, 6, 7, 9 → median 6, p90 9.
        for (n, cost) in [500, 600, 600, 700, 900].into_iter().enumerate() {
            sqlx::query(
                "insert into tasks (id, owner_id, account_id, task_type, units, status, estimated_credits, \
                   actual_units, actual_cost, finished_at) \
                 values (gen_random_uuid(), 'hist', 'hist', 'render', 100, 'succeeded', 400, 100, $1, \
                   timestamptz '2026-11-20 12:00:00+00' + make_interval(hours => $2))",
            )
            .bind(cost as i64)
            .bind(n as i32)
            .execute(db)
            .await
            .expect("task");
        }
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_estimate_blends_the_rule_with_seeded_history_deterministically(db: PgPool) {
    let app = spawn_app(db).await;
    seed_pricing(&app.db, true).await;
    let token = app.token("alice", &[Role::User]);
    let body = json!({"task_type": "render", "units": 100, "at": "2026-11-24T12:00:00Z"});

    let estimate: Value = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &body,
        )
        .await
        .json()
        .await
        .expect("json");

    // Rule 4/unit, median 6/unit, half each: 5/unit → 10 + 500. Low: 10 + 400, high: 10 + 900.
    assert_eq!(estimate["estimated_credits"], 510);
    assert_eq!(
        (estimate["low"].as_i64(), estimate["high"].as_i64()),
        (Some(410), Some(910))
    );
    assert_eq!(estimate["samples"], 5);
    assert_eq!(estimate["pricing_rule_id"], "render-v1");
    let again: Value = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &body,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again, estimate);
    let peak = json!({"task_type": "render", "units": 100, "at": "2026-11-24T19:00:00Z"});
    let peak: Value = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &peak,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(peak["estimated_credits"], 765, "x1.5 in peak hours");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn without_history_the_estimate_falls_back_to_the_rule(db: PgPool) {
    let app = spawn_app(db).await;
    seed_pricing(&app.db, false).await;
    let token = app.token("alice", &[Role::User]);

    let small = json!({"task_type": "render", "units": 100, "at": "2026-11-24T12:00:00Z"});
    let small: Value = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &small,
        )
        .await
        .json()
        .await
        .expect("json");
    let bulk = json!({"task_type": "render", "units": 1000, "at": "2026-11-24T12:00:00Z"});
    let bulk: Value = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &bulk,
        )
        .await
        .json()
        .await
        .expect("json");

    assert_eq!(
        (
            small["estimated_credits"].as_i64(),
            small["samples"].as_i64()
        ),
        (Some(410), Some(0))
    );
    assert_eq!(small["low"], small["high"]);
    assert_eq!(
        bulk["estimated_credits"],
        10 + 3000,
        "25 % volume discount from 1000 units"
    );
    let unknown = json!({"task_type": "teleport", "units": 1});
    let unknown = app
        .send_json(
            Method::POST,
            "/api/v1/credits/estimate",
            Some(&token),
            &unknown,
        )
        .await;
    assert_problem(
        unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn ledger_metrics_count_operations_batches_and_actors(db: PgPool) {
    let app = spawn_app(db).await;
    let token = funded_user(&app, "metered", 10).await;
    app.post_keyed(CHARGE, &token, "m1", &json!({"amount": 4, "reason": "ok"}))
        .await;
    app.post_keyed(
        CHARGE,
        &token,
        "m2",
        &json!({"amount": 40, "reason": "too much"}),
    )
    .await;

    let text = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");

    let has = |needle: &str| text.lines().any(|line| line.starts_with(needle));
    assert!(
        has(r#"ledger_operations_total{kind="charge",outcome="applied"}"#),
        "{text}"
    );
    assert!(has(
        r#"ledger_operations_total{kind="charge",outcome="insufficient_credits"}"#
    ));
    assert!(
        has(r#"ledger_operation_duration_seconds_bucket{kind="charge""#),
        "charge latency histogram"
    );
    assert!(has("ledger_batch_size_bucket"), "batch size histogram");
    assert!(has("ledger_mailbox_depth"), "mailbox depth gauge");
    assert!(has("ledger_account_actors"), "live actors gauge");
}

/// Honest overload: beyond the node's capacity for money work, charges are refused at once with
/// 503, `Retry-After` and a problem+json, before their key is claimed: nothing is written for
/// them, and each one's retry with the same key applies exactly once.
#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn beyond_capacity_charges_are_shed_early_and_their_retries_apply_once(db: PgPool) {
    let app = Arc::new(
        crate::helpers::spawn_app_with(db, |settings| {
            settings.ledger.max_in_flight = 2;
            settings.ledger.max_queue_ms = 1;
        })
        .await,
    );
    let token = alice_funded_through_admission(&app).await;
    let mut handles = Vec::new();
    for n in 0..60 {
        let (app, token) = (app.clone(), token.clone());
        handles.push(tokio::spawn(async move {
            let key = format!("shed-{n}");
            let response = app
                .post_keyed(
                    CHARGE,
                    &token,
                    &key,
                    &json!({"amount": 1, "reason": "shed"}),
                )
                .await;
            (key, response)
        }));
    }
    let mut shed = Vec::new();
    let mut applied = 0;
    for handle in handles {
        let (key, response) = handle.await.expect("join");
        match response.status() {
            StatusCode::CREATED => applied += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_problem(
                    response,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                )
                .await;
                shed.push(key);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        !shed.is_empty(),
        "60 concurrent charges on 2 places shed some"
    );
    assert_eq!(applied + shed.len(), 60);
    let keys = count(
        &app.db,
        "select count(*) from idempotency_keys where key like 'shed-%'",
    )
    .await;
    assert_eq!(keys, applied as i64, "a shed charge claims no key");
    for key in &shed {
        // A well-behaved client retries after Retry-After, with the same key.
        let body = json!({"amount": 1, "reason": "shed"});
        assert_eq!(
            until_admitted(&app, CHARGE, &token, key, &body).await,
            StatusCode::CREATED
        );
    }
    let rows = count(
        &app.db,
        "select count(*) from credit_ledger where account_id = 'alice' and kind = 'charge'",
    )
    .await;
    assert_eq!(rows, 60, "every charge applied once");
    let available = count(
        &app.db,
        "select available from credit_accounts where id = 'alice'",
    )
    .await;
    assert_eq!(available, 10_000 - 60);
}

/// The adaptive in-flight limit: with every charge slower than the target, the node narrows the
/// number it runs at once, and the charges beyond it queue (within `max_queue_ms`) instead of
/// failing; every one still applies exactly once.
#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn charges_slower_than_the_latency_target_narrow_the_in_flight_limit_and_all_apply_once(
    db: PgPool,
) {
    let app = Arc::new(
        crate::helpers::spawn_app_with(db, |settings| {
            settings.ledger.max_in_flight = 64;
            settings.ledger.latency_target_ms = 1;
        })
        .await,
    );
    let token = alice_funded_through_admission(&app).await;
    assert_eq!(app.state.admission.limit(), 64);

    for round in 0..8 {
        let mut handles = Vec::new();
        for n in 0..20 {
            let (app, token) = (app.clone(), token.clone());
            handles.push(tokio::spawn(async move {
                let body = json!({"amount": 1, "reason": "narrow"});
                app.post_keyed(CHARGE, &token, &format!("narrow-{round}-{n}"), &body)
                    .await
                    .status()
            }));
        }
        for handle in handles {
            assert_eq!(handle.await.expect("join"), StatusCode::CREATED);
        }
        // Let the 100 ms window close, so the next round's answers move the limit.
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }

    let limit = app.state.admission.limit();
    assert!(limit < 64, "the limit narrowed: {limit}");
    let charges = count(
        &app.db,
        "select count(*) from credit_ledger where account_id = 'alice' and kind = 'charge'",
    )
    .await;
    assert_eq!(charges, 160, "every charge applied once");
}

/// Provisions alice and funds her with 10,000 credits; the funding goes through the same
/// admission as the charges, retried like any client would. Her token.
async fn alice_funded_through_admission(app: &crate::helpers::TestApp) -> String {
    let token = app.token("alice", &[Role::User]);
    assert_eq!(
        app.get("/api/v1/sessions/me", Some(&token)).await.status(),
        StatusCode::OK
    );
    let finance = app.token("finance-1", &[Role::Finance]);
    let funding = json!({"account_id": "alice", "amount": 10_000, "reason": "test funding"});
    let funded = until_admitted(app, "/api/v1/credits/adjust", &finance, "fund", &funding).await;
    assert_eq!(funded, StatusCode::CREATED);
    token
}

/// Sends a keyed request until the node admits it (at most 200 tries); its final status.
async fn until_admitted(
    app: &crate::helpers::TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> StatusCode {
    for _ in 0..200 {
        let status = app.post_keyed(path, token, key, body).await.status();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    StatusCode::SERVICE_UNAVAILABLE
}
