//! The audit API as an auditor uses it: every filter of the access log, a task's and an account's
//! trail, and exports of every kind in both formats that hold exactly the database's rows for the
//! range, from one snapshot, themselves audited.

use crate::helpers::{TestApp, assert_problem, flat_price, funded_user, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect("count")
}

/// A task created, run, succeeded with a supplementary deduction, plus a charge naming it that
/// was refunded: the task id.
async fn eventful_task(app: &TestApp, token: &str) -> String {
    flat_price(&app.db, "render", 10).await;
    let task: Value = app
        .send_json(
            Method::POST,
            "/api/v1/tasks",
            Some(token),
            &json!({ "task_type": "render", "units": 10 }),
        )
        .await
        .json()
        .await
        .expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    let service = app.token("renderer", &[Role::Service]);
    for event in [
        json!({ "kind": "state", "state": "running" }),
        json!({ "kind": "progress", "progress": 50 }),
        json!({ "kind": "state", "state": "succeeded", "actual_units": 12 }),
    ] {
        let response = app
            .send_json(
                Method::POST,
                &format!("/api/v1/tasks/{id}/events"),
                Some(&service),
                &event,
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let charge: Value = app
        .post_keyed(
            "/api/v1/credits/charge",
            token,
            "trail-charge",
            &json!({ "amount": 7, "reason": "export fee", "task_id": id }),
        )
        .await
        .json()
        .await
        .expect("charge");
    let finance = app.token("fin", &[Role::Finance]);
    let refund = app
        .post_keyed(
            "/api/v1/credits/refund",
            &finance,
            "trail-refund",
            &json!({ "charge_entry_id": charge["entry_id"], "amount": 7, "reason": "goodwill" }),
        )
        .await;
    assert_eq!(refund.status(), StatusCode::CREATED);
    id
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_trails_tell_a_tasks_and_an_accounts_story_in_time_order(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = funded_user(&app, "storyteller", 1_000).await;
    let id = eventful_task(&app, &token).await;
    let auditor = app.token("aud", &[Role::Auditor]);

    let trail: Value = app
        .get(&format!("/api/v1/audit/tasks/{id}/trail"), Some(&auditor))
        .await
        .json()
        .await
        .expect("trail");
    assert_eq!(trail["task"]["status"], "succeeded");
    let events = trail["events"].as_array().expect("events");
    let times: Vec<&str> = events
        .iter()
        .map(|e| e["at"].as_str().expect("at"))
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "time order");
    let of = |source: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["source"] == source)
            .map(|e| &e["data"])
            .collect()
    };
    let states: Vec<&str> = of("state")
        .iter()
        .map(|d| d["to_status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["queued", "running", "running", "succeeded"]);
    let kinds: Vec<&str> = of("ledger")
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["hold", "capture", "charge", "refund"], "{kinds:?}");
    assert!(
        of("ledger").iter().all(|d| d["actor_id"].is_string()),
        "who did it"
    );
    assert!(
        !of("access").is_empty(),
        "the charge's audit row names the task"
    );
    let missing = app
        .get(
            &format!("/api/v1/audit/tasks/{}/trail", uuid::Uuid::new_v4()),
            Some(&auditor),
        )
        .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;

    let account: Value = app
        .get("/api/v1/audit/accounts/storyteller/trail", Some(&auditor))
        .await
        .json()
        .await
        .expect("trail");
    let ledger: Vec<&str> = account["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["source"] == "ledger")
        .map(|e| e["data"]["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ledger,
        ["adjustment", "hold", "capture", "charge", "refund"]
    );
    assert!(
        account["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["source"] == "access" && e["data"]["action"] == "credits.refund"),
        "the refund's audit row, with its request id"
    );
    let user = app
        .get("/api/v1/audit/accounts/storyteller/trail", Some(&token))
        .await;
    assert_problem(user, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(
        count(
            &db,
            "select count(*) from audit_access_log where action = 'audit.read'"
        )
        .await
            >= 2
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn every_access_log_filter_narrows_the_listing(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = funded_user(&app, "filtered", 100).await;
    let refused = app
        .post_keyed(
            "/api/v1/credits/charge",
            &token,
            "too-much",
            &json!({ "amount": 1000, "reason": "x" }),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    app.post_keyed(
        "/api/v1/credits/charge",
        &token,
        "fine",
        &json!({ "amount": 10, "reason": "x" }),
    )
    .await;
    let forbidden = app
        .post_keyed(
            "/api/v1/credits/refund",
            &token,
            "nope",
            &json!({ "charge_entry_id": 1, "amount": 1, "reason": "x" }),
        )
        .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let auditor = app.token("aud", &[Role::Auditor]);
    let listed = |query: &str| {
        let (app, auditor) = (&app, &auditor);
        let query = query.to_owned();
        async move {
            let page: Value = app
                .get(&format!("/api/v1/audit/access-logs?{query}"), Some(auditor))
                .await
                .json()
                .await
                .expect("page");
            page["items"].as_array().expect("items").clone()
        }
    };
    let charges = listed("action=credits.charge").await;
    assert_eq!(charges.len(), 2);
    let failed = listed("action=credits.charge&outcome=failure").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["outcome"], "failure");
    let denied = listed("outcome=denied&actor_id=filtered").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["action"], "credits.refund");
    let target = listed("target_type=credit_account&target_id=filtered").await;
    assert!(target.len() >= 3, "{target:?}");
    assert!(target.iter().all(|row| row["target_id"] == "filtered"));
    assert_eq!(listed("target_id=nobody").await.len(), 0);
    let future = listed("from=2100-01-01T00:00:00Z").await;
    assert_eq!(future.len(), 0);
    let bad = app
        .get("/api/v1/audit/access-logs?outcome=maybe", Some(&auditor))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// RFC 4180 records of a CSV body (quoted fields with commas, quotes and line breaks).
fn csv_records(body: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn every_kind_exports_exactly_the_rows_of_its_range_in_both_formats(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let token = funded_user(&app, "exported", 1_000).await;
    eventful_task(&app, &token).await;
    let admin = app.token("admin", &[Role::Admin]);
    let grant = app
        .post_keyed(
            "/api/v1/licenses",
            &admin,
            "grant",
            &json!({ "subject_id": "exported", "resource": "model:a,b \"quoted\"", "actions": ["generate"], "quota_total": 5 }),
        )
        .await;
    assert_eq!(
        grant.status(),
        StatusCode::CREATED,
        "{:?}",
        grant.text().await
    );
    app.get(
        "/api/v1/licenses/check?resource=model:x&action=generate",
        Some(&token),
    )
    .await;
    sqlx::query(
        "insert into payment_orders (id, out_trade_no, account_id, user_id, amount_fen, credits, \
             expires_at) values (gen_random_uuid(), 'exporttest0001', 'exported', 'exported', 100, \
             100, now() + interval '1 hour')",
    )
    .execute(&db)
    .await
    .expect("order");
    sqlx::query(
        "insert into reconciliation_runs (bill_date, status, started_at) \
         values ((now() at time zone 'Asia/Shanghai')::date, 'balanced', now()); \
         ",
    )
    .execute(&db)
    .await
    .expect("run");
    sqlx::query(
        "insert into reconciliation_items (bill_date, class, out_trade_no, action) \
         values ((now() at time zone 'Asia/Shanghai')::date, 'matched', 'exporttest0001', 'none')",
    )
    .execute(&db)
    .await
    .expect("item");
    let after = chrono::Utc::now() + chrono::Duration::days(1);
    let range = format!(
        "from={}&to={}",
        before.format("%Y-%m-%dT%H:%M:%S%.fZ"),
        after.format("%Y-%m-%dT%H:%M:%S%.fZ")
    );
    for kind in shared::export::ExportKind::ALL {
        let spec = domain::export::spec(kind);
        let expected = if spec.date_column {
            count(&db, &format!("select count(*) from {}", spec.table)).await
        } else {
            count(
                &db,
                &format!(
                    "select count(*) from {} where {} >= '{}' and {} < '{}'",
                    spec.table,
                    spec.time_column,
                    before.to_rfc3339(),
                    spec.time_column,
                    after.to_rfc3339()
                ),
            )
            .await
        };
        assert!(expected > 0, "{}: seed something", kind.as_str());
        let ndjson = app
            .get(
                &format!("/api/v1/audit/export?kind={}&{range}", kind.as_str()),
                Some(&admin),
            )
            .await;
        assert_eq!(ndjson.status(), StatusCode::OK);
        assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
        let text = ndjson.text().await.expect("body");
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
            .collect();
        // The export's own audit rows land after its snapshot: the access log may only grow.
        if kind == shared::export::ExportKind::AccessLogs {
            assert!(lines.len() as i64 <= expected && lines.len() as i64 >= expected - 20);
        } else {
            assert_eq!(lines.len() as i64, expected, "{} ndjson", kind.as_str());
        }
        assert!(lines.iter().all(|line| line.is_object()));
        let csv = app
            .get(
                &format!(
                    "/api/v1/audit/export?kind={}&{range}&format=csv",
                    kind.as_str()
                ),
                Some(&admin),
            )
            .await;
        assert!(
            csv.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/csv")
        );
        let records = csv_records(&csv.text().await.expect("body"));
        assert_eq!(
            records[0],
            spec.columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        );
        assert!(
            records
                .iter()
                .all(|record| record.len() == spec.columns.len()),
            "{}",
            kind.as_str()
        );
        if kind != shared::export::ExportKind::AccessLogs {
            assert_eq!(records.len() as i64 - 1, expected, "{} csv", kind.as_str());
        }
        if kind == shared::export::ExportKind::Authorizations {
            assert!(
                records
                    .iter()
                    .any(|r| r.contains(&"model:a,b \"quoted\"".to_owned())),
                "RFC 4180 quoting"
            );
        }
    }
    let exports = count(&db, "select count(*) from audit_access_log where action = 'audit.export' and outcome = 'success'").await;
    assert_eq!(exports, 18);
    let rows: i64 = sqlx::query_scalar(
        "select (detail->>'rows')::bigint from audit_access_log where action = 'audit.export' \
          and detail->>'kind' = 'tasks' limit 1",
    )
    .fetch_one(&db)
    .await
    .expect("rows");
    assert_eq!(rows, 1);

    // Finance exports money, not the access log; users export nothing.
    let finance = app.token("fin", &[Role::Finance]);
    assert_eq!(
        app.get(
            &format!("/api/v1/audit/export?kind=ledger&{range}"),
            Some(&finance)
        )
        .await
        .status(),
        StatusCode::OK
    );
    let denied = app
        .get(
            &format!("/api/v1/audit/export?kind=access_logs&{range}"),
            Some(&finance),
        )
        .await;
    assert_problem(denied, StatusCode::FORBIDDEN, "forbidden").await;
    let user = app
        .get(
            &format!("/api/v1/audit/export?kind=ledger&{range}"),
            Some(&token),
        )
        .await;
    assert_problem(user, StatusCode::FORBIDDEN, "forbidden").await;
    let backwards = app
        .get(
            "/api/v1/audit/export?kind=ledger&from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            Some(&admin),
        )
        .await;
    assert_problem(backwards, StatusCode::BAD_REQUEST, "invalid_query").await;
    let unknown = app
        .get(
            "/api/v1/audit/export?kind=passwords&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
            Some(&admin),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_export_reads_one_snapshot_taken_before_it_starts(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = funded_user(&app, "snap", 10_000).await;
    for i in 0..200 {
        app.post_keyed(
            "/api/v1/credits/charge",
            &token,
            &format!("c{i}"),
            &json!({ "amount": 1, "reason": "x" }),
        )
        .await;
    }
    let expected = count(&db, "select count(*) from credit_ledger").await;
    let admin = app.token("admin", &[Role::Admin]);
    let response = app
        .get(
            "/api/v1/audit/export?kind=ledger&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
            Some(&admin),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Written after the export started, before its body is read.
    let late = app
        .post_keyed(
            "/api/v1/credits/charge",
            &token,
            "late",
            &json!({ "amount": 1, "reason": "late" }),
        )
        .await;
    assert_eq!(late.status(), StatusCode::CREATED);
    let body = response.text().await.expect("body");
    assert_eq!(body.lines().count() as i64, expected);
    assert!(
        !body.contains("\"late\""),
        "the late charge is not in the snapshot"
    );
    assert_eq!(
        count(&db, "select count(*) from credit_ledger").await,
        expected + 1
    );
}
