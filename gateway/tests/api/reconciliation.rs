//! T+1 reconciliation against the sandbox's trade bills (real format: BOM, CRLF, back-ticks,
//! gzip, SHA-1), and the periodic jobs' one-node-at-a-time locking with fencing.

use crate::helpers::{TestApp, assert_problem, spawn_app_at};
use crate::payments::{Sandbox, balance, count, eventually, order_status, recharge, with_wechat};
use chrono::NaiveDate;
use gateway::jobs::{Attempt, JobLock, check_fence, run_once};
use gateway::reconcile::{ReconcileError, beijing_today, reconcile_locked};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::time::Duration;

async fn paid_order(app: &TestApp, sandbox: &Sandbox, token: &str, fen: i64, pay: Value) -> Value {
    let order = recharge(app, token, fen).await;
    let number = order["out_trade_no"].as_str().expect("number").to_owned();
    let drop = pay["drop"].as_bool().unwrap_or(false);
    sandbox.pay(&number, pay).await;
    if !drop {
        let id = order["order_id"].as_str().expect("id").to_owned();
        eventually("paid", || async {
            order_status(app, token, &id).await["status"] == "paid"
        })
        .await;
    }
    order
}

fn number(order: &Value) -> &str {
    order["out_trade_no"].as_str().expect("number")
}

fn items_of<'a>(
    run: &'a shared::payments::Reconciliation,
    class: &str,
) -> Vec<&'a shared::payments::ReconciliationItem> {
    run.items
        .iter()
        .filter(|item| item.class == class)
        .collect()
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_day_of_paid_unpaid_closed_and_refunded_orders_is_balanced_and_served(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("shopper", &[Role::User]);
    paid_order(&app, &sandbox, &token, 100, json!({})).await;
    let refunded = paid_order(&app, &sandbox, &token, 250, json!({})).await;
    sandbox
        .post(
            &format!("/sandbox/orders/{}/refund", number(&refunded)),
            json!({ "amount_fen": 50 }),
        )
        .await;
    recharge(&app, &token, 300).await; // unpaid
    let closed = recharge(&app, &token, 400).await;
    let closed = app
        .request(
            reqwest::Method::POST,
            &format!(
                "/api/v1/payments/orders/{}/close",
                closed["order_id"].as_str().expect("id")
            ),
            Some(&token),
        )
        .send()
        .await
        .expect("close");
    assert_eq!(closed.status(), StatusCode::OK);

    let today = beijing_today();
    let run = reconcile_locked(&app.state, today)
        .await
        .expect("reconciled");
    assert_eq!(run.status, "balanced", "{run:?}");
    assert_eq!(run.counts.matched, 2);
    assert_eq!(run.sums.matched, 350);
    assert_eq!(run.bill_rows, 3, "two payments and a refund");
    assert!(
        run.bill_hash
            .as_deref()
            .is_some_and(|hash| hash.len() == 40)
    );

    let finance = app.token("fin", &[Role::Finance]);
    let served: Value = app
        .get(
            &format!("/api/v1/payments/reconciliations/{today}"),
            Some(&finance),
        )
        .await
        .json()
        .await
        .expect("run");
    assert_eq!(served["status"], "balanced");
    assert_eq!(served["counts"]["matched"], 2);
    assert_eq!(served["items"].as_array().map(Vec::len), Some(2));
    let listed: Value = app
        .get(
            "/api/v1/payments/reconciliations",
            Some(&app.token("aud", &[Role::Auditor])),
        )
        .await
        .json()
        .await
        .expect("runs");
    assert_eq!(listed[0]["date"], today.to_string());
    assert_eq!(
        listed[0]["items"],
        json!([]),
        "a listing shows the flagged items only"
    );
    let user = app
        .get(
            &format!("/api/v1/payments/reconciliations/{today}"),
            Some(&token),
        )
        .await;
    assert_problem(user, StatusCode::FORBIDDEN, "forbidden").await;
    let missing = app
        .get(
            "/api/v1/payments/reconciliations/2001-01-01",
            Some(&finance),
        )
        .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
    let backwards = app
        .get(
            "/api/v1/payments/reconciliations?from=2026-02-01&to=2026-01-01",
            Some(&finance),
        )
        .await;
    assert_problem(backwards, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert_eq!(
        count(
            &db,
            "select count(*) from audit_access_log where action = 'payments.reconcile'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_dropped_notification_is_credited_once_by_reconciliation_and_a_rerun_changes_nothing(
    db: PgPool,
) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("unlucky", &[Role::User]);
    let lost = paid_order(&app, &sandbox, &token, 880, json!({ "drop": true })).await;
    assert_eq!(balance(&app, &token).await, 0);
    let today = beijing_today();

    let run = reconcile_locked(&app.state, today)
        .await
        .expect("reconciled");
    let found = items_of(&run, "missing_local");
    assert_eq!(found.len(), 1, "{run:?}");
    assert_eq!(found[0].action, "credited");
    assert_eq!(found[0].out_trade_no, number(&lost));
    assert_eq!(run.status, "flagged");
    assert_eq!(balance(&app, &token).await, 880);

    let again = reconcile_locked(&app.state, today)
        .await
        .expect("reconciled again");
    assert_eq!(again.counts, run.counts);
    assert_eq!(
        items_of(&again, "missing_local")[0].action,
        "already_credited"
    );
    assert_eq!(balance(&app, &token).await, 880);
    assert_eq!(
        count(
            &db,
            "select count(*) from credit_ledger where kind = 'recharge'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "select runs::bigint from reconciliation_runs").await,
        2,
        "the day's run counted twice, its items replaced"
    );
    assert_eq!(
        count(&db, "select count(*) from reconciliation_items").await,
        1
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_payment_missing_from_the_bill_and_a_different_amount_are_flagged(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("flagged", &[Role::User]);
    let absent = paid_order(&app, &sandbox, &token, 500, json!({})).await;
    let different = paid_order(&app, &sandbox, &token, 600, json!({})).await;
    paid_order(&app, &sandbox, &token, 700, json!({})).await;
    sandbox
        .post(
            &format!("/sandbox/orders/{}/bill", number(&absent)),
            json!({ "omit": true }),
        )
        .await;
    sandbox
        .post(
            &format!("/sandbox/orders/{}/bill", number(&different)),
            json!({ "amount_fen": 601 }),
        )
        .await;
    let run = reconcile_locked(&app.state, beijing_today())
        .await
        .expect("reconciled");
    assert_eq!(run.status, "flagged");
    assert_eq!(run.counts.matched, 1);
    let remote = items_of(&run, "missing_remote");
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0].out_trade_no, number(&absent));
    assert_eq!(remote[0].action, "flagged");
    assert_eq!(
        remote[0].detail.as_ref().map(|d| d["trade_state"].clone()),
        Some(json!("SUCCESS"))
    );
    let mismatch = items_of(&run, "amount_mismatch");
    assert_eq!(mismatch.len(), 1);
    assert_eq!(
        (mismatch[0].local_amount_fen, mismatch[0].bill_amount_fen),
        (Some(600), Some(601))
    );
    assert_eq!(
        balance(&app, &token).await,
        1_800,
        "nothing is fixed automatically"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_payment_at_23_59_59_found_in_the_next_days_bill_is_not_flagged(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("midnight", &[Role::User]);
    let today = beijing_today();
    let yesterday = today.pred_opt().expect("yesterday");
    let late = paid_order(
        &app,
        &sandbox,
        &token,
        990,
        json!({ "success_time": format!("{yesterday}T23:59:59+08:00") }),
    )
    .await;
    sandbox
        .post(
            &format!("/sandbox/orders/{}/bill", number(&late)),
            json!({ "bill_date": today }),
        )
        .await;
    let run = reconcile_locked(&app.state, yesterday)
        .await
        .expect("reconciled");
    assert_eq!(run.status, "balanced", "{run:?}");
    assert_eq!(run.items.len(), 1);
    assert_eq!(run.items[0].class, "matched");
    assert_eq!(run.items[0].action, "next_day_bill");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn tampered_truncated_and_unready_bills_are_refused_and_an_empty_day_is_balanced(db: PgPool) {
    let sandbox = Sandbox::start().await;
    let app = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let token = app.token("careful", &[Role::User]);
    paid_order(&app, &sandbox, &token, 100, json!({})).await;
    paid_order(&app, &sandbox, &token, 200, json!({})).await;
    let today = beijing_today();
    for (fault, what) in [("tamper", "SHA-1"), ("truncate", "summary")] {
        sandbox
            .post("/sandbox/bill-faults", json!({ fault: true }))
            .await;
        match reconcile_locked(&app.state, today).await {
            Err(ReconcileError::Failed { reason, .. }) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!("{fault}: {other:?}"),
        }
        let stored: Value = app
            .get(
                &format!("/api/v1/payments/reconciliations/{today}"),
                Some(&app.token("a", &[Role::Admin])),
            )
            .await
            .json()
            .await
            .expect("run");
        assert_eq!(stored["status"], "failed", "{fault}");
        assert_eq!(stored["items"], json!([]));
    }
    sandbox
        .post("/sandbox/bill-faults", json!({ "creating": true }))
        .await;
    assert!(matches!(
        reconcile_locked(&app.state, today).await,
        Err(ReconcileError::Creating(_))
    ));
    // The same day with a sound bill.
    let run = reconcile_locked(&app.state, today)
        .await
        .expect("reconciled");
    assert_eq!((run.status.as_str(), run.counts.matched), ("balanced", 2));

    let empty = NaiveDate::from_ymd_opt(2026, 1, 15).expect("date");
    let run = reconcile_locked(&app.state, empty)
        .await
        .expect("an empty day");
    assert_eq!(run.status, "balanced");
    assert_eq!(run.bill_hash, None);
    assert_eq!(run.items.len(), 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn two_nodes_run_the_daily_job_once_and_a_dead_holder_is_replaced_after_its_lease(
    db: PgPool,
) {
    let sandbox = Sandbox::start().await;
    let first = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let second = spawn_app_at(db.clone(), with_wechat(&sandbox)).await;
    let job = gateway::payments::reconcile_job(&first.state.settings.payments);
    let (a, b) = tokio::join!(
        run_once(&first.state, &job, false),
        run_once(&second.state, &job, false)
    );
    let attempts = [a.expect("first"), b.expect("second")];
    let ran = attempts
        .iter()
        .filter(|a| matches!(a, Attempt::Ran(_)))
        .count();
    assert_eq!(ran, 1, "{attempts:?}");
    // Either node, right after: not due again before the next daily slot (which may be later
    // today: the run just made was the first one, not the slot's).
    for app in [&first, &second] {
        let attempt = run_once(&app.state, &job, false).await.expect("again");
        assert!(
            matches!(attempt, Attempt::NotDue(next) if next > chrono::Utc::now()),
            "{attempt:?}"
        );
    }
    assert_eq!(
        count(
            &db,
            "select runs from jobs where name = 'payments.reconcile'"
        )
        .await,
        1
    );
    let jobs: Value = first
        .get("/api/v1/jobs", Some(&first.token("ops", &[Role::Operator])))
        .await
        .json()
        .await
        .expect("jobs");
    let row = jobs
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["name"] == "payments.reconcile"))
        .expect("the job is listed");
    assert_eq!(row["last_outcome"], "succeeded");
    assert!(row["next_run_at"].is_string());

    // A node dies holding the lock: nobody else runs until its lease runs out, then one does,
    // and the dead run's fence no longer lets it write.
    let dead = JobLock::acquire(&first.state, "tests.lease", Duration::from_millis(600))
        .await
        .expect("lock")
        .expect("free");
    let dead_fence = dead.fence();
    dead.abandon();
    let probe = gateway::jobs::Job {
        name: "tests.lease",
        schedule: gateway::jobs::Schedule::Every(Duration::from_secs(3600)),
        lease: Duration::from_secs(5),
        run: std::sync::Arc::new(|_, _| Box::pin(async { Ok(gateway::jobs::Report::done("ran")) })),
    };
    assert_eq!(
        run_once(&second.state, &probe, true).await.expect("locked"),
        Attempt::Locked
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        run_once(&second.state, &probe, true)
            .await
            .expect("taken over"),
        Attempt::Ran("ran".into())
    );
    let mut tx = db.begin().await.expect("tx");
    assert!(
        !check_fence(&mut tx, &dead_fence).await.expect("fence"),
        "the dead run is fenced off"
    );
}
