//! A property of the ledger under a careless, concurrent client: random sequences of charges,
//! refunds, adjustments, holds (task creation), captures (success) and releases (failure and
//! cancel), sent through two nodes on one database, with retries of earlier requests and keys
//! reused with other bodies. After each run: every balance is the sum of its ledger rows (and
//! `held` the sum of open holds), nothing is negative, no key committed twice, and every retry
//! got its key's first answer byte for byte. Seeds are fixed so a failure reproduces.

use crate::helpers::{
    TestApp, database_name, database_url_for, flat_price, funded_user, spawn_app,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::Role;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;

const USERS: [&str; 3] = ["ann", "ben", "cat"];
const ROUNDS: usize = 25;
const PER_ROUND: usize = 8;

/// One request as sent, replayable.
#[derive(Debug, Clone)]
struct Sent {
    path: String,
    token: Arc<String>,
    key: String,
    body: Value,
}

/// What came back.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    replayed: bool,
    body: String,
}

async fn send(node: &TestApp, sent: &Sent) -> Answer {
    let response = node
        .request(Method::POST, &sent.path, Some(&sent.token))
        .header("idempotency-key", &sent.key)
        .json(&sent.body)
        .send()
        .await
        .expect("request");
    Answer {
        status: response.status(),
        replayed: response.headers().contains_key("idempotent-replayed"),
        body: response.text().await.expect("body"),
    }
}

struct World {
    nodes: [Arc<TestApp>; 2],
    users: HashMap<&'static str, Arc<String>>,
    finance: Arc<String>,
    service: Arc<String>,
    /// Charges answered 201: (entry id, amount).
    charges: Vec<(i64, i64)>,
    /// Tasks created: (id, owner).
    tasks: Vec<(String, &'static str)>,
    /// Requests sent, for retries.
    history: Vec<Sent>,
    /// The first settled answer per (path, key, body).
    settled: HashMap<(String, String, String), Answer>,
    /// Replays checked against their first answer.
    replays: usize,
}

impl World {
    fn random_request(&mut self, rng: &mut StdRng, serial: usize) -> Sent {
        let user = USERS[rng.random_range(0..USERS.len())];
        let token = self.users[user].clone();
        // A small key space per run makes keys collide: same body (a retry) or another (422).
        let key = |rng: &mut StdRng, prefix: &str| {
            if rng.random_bool(0.15) {
                format!("{prefix}-{}", rng.random_range(0..6))
            } else {
                format!("{prefix}-u{serial}")
            }
        };
        match rng.random_range(0..100) {
            0..=29 => Sent {
                path: "/api/v1/credits/charge".into(),
                token,
                key: key(rng, "charge"),
                body: json!({"amount": rng.random_range(1..60), "reason": "property"}),
            },
            30..=39 if !self.charges.is_empty() => {
                let (entry, amount) = self.charges[rng.random_range(0..self.charges.len())];
                Sent {
                    path: "/api/v1/credits/refund".into(),
                    token: self.finance.clone(),
                    key: key(rng, "refund"),
                    body: json!({
                        "charge_entry_id": entry,
                        "amount": rng.random_range(1..=amount),
                        "reason": "property",
                    }),
                }
            }
            40..=49 => Sent {
                path: "/api/v1/credits/adjust".into(),
                token: self.finance.clone(),
                key: key(rng, "adjust"),
                body: json!({
                    "account_id": user,
                    "amount": if rng.random_bool(0.5) { rng.random_range(1..80) } else { -rng.random_range(1..80) },
                    "reason": "property",
                }),
            },
            50..=69 => Sent {
                path: "/api/v1/tasks".into(),
                token,
                key: key(rng, "task"),
                body: json!({"task_type": "render", "units": rng.random_range(1..15)}),
            },
            70..=89 if !self.tasks.is_empty() => {
                let (task, _) = &self.tasks[rng.random_range(0..self.tasks.len())];
                let body = match rng.random_range(0..4) {
                    0 => json!({"kind": "state", "state": "running"}),
                    1 => json!({"kind": "state", "state": "failed"}),
                    _ => json!({
                        "kind": "state",
                        "state": "succeeded",
                        "actual_units": rng.random_range(0..30),
                    }),
                };
                Sent {
                    path: format!("/api/v1/tasks/{task}/events"),
                    token: self.service.clone(),
                    key: key(rng, "event"),
                    body,
                }
            }
            90..=94 if !self.tasks.is_empty() => {
                let (task, owner) = self.tasks[rng.random_range(0..self.tasks.len())].clone();
                Sent {
                    path: format!("/api/v1/tasks/{task}/cancel"),
                    token: self.users[owner].clone(),
                    key: key(rng, "cancel"),
                    body: json!({"reason": "property"}),
                }
            }
            _ if !self.history.is_empty() => {
                // A retry of an earlier request, exactly as sent.
                self.history[rng.random_range(0..self.history.len())].clone()
            }
            _ => Sent {
                path: "/api/v1/credits/charge".into(),
                token,
                key: format!("charge-u{serial}"),
                body: json!({"amount": 1, "reason": "property"}),
            },
        }
    }

    fn learn(&mut self, sent: &Sent, answer: &Answer) {
        self.history.push(sent.clone());
        if answer.status == StatusCode::CREATED {
            let body: Value = serde_json::from_str(&answer.body).expect("json");
            if sent.path == "/api/v1/credits/charge" {
                let entry = body["entry_id"].as_i64().expect("entry id");
                let amount = -body["amount"].as_i64().expect("amount");
                if !self.charges.contains(&(entry, amount)) {
                    self.charges.push((entry, amount));
                }
            }
            if sent.path == "/api/v1/tasks" {
                let id = body["id"].as_str().expect("task id").to_owned();
                let owner = USERS
                    .into_iter()
                    .find(|user| body["owner_id"] == *user)
                    .expect("owner");
                if !self.tasks.iter().any(|(task, _)| *task == id) {
                    self.tasks.push((id, owner));
                }
            }
        }
        // 409 in flight, 429 and 5xx answer nothing for good; anything else is the key's answer.
        let settles = !matches!(
            answer.status,
            StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        ) && !answer.status.is_server_error()
            || (answer.status == StatusCode::CONFLICT && !answer.body.contains("in_flight"));
        if !settles {
            return;
        }
        let id = (
            format!("{}:{}", sent.token, sent.path),
            sent.key.clone(),
            sent.body.to_string(),
        );
        match self.settled.get(&id) {
            None => {
                self.settled.insert(id, answer.clone());
            }
            Some(first) => {
                // A key reused with another body gets 422 without a stored answer of its own.
                if !answer.body.contains("idempotency_key_reused") {
                    self.replays += 1;
                    assert_eq!(first.status, answer.status, "{sent:?}");
                    assert_eq!(first.body, answer.body, "{sent:?}: the replay differs");
                    assert!(
                        answer.replayed,
                        "{sent:?}: a second answer must be a replay"
                    );
                }
            }
        }
    }
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect(sql)
}

async fn check_invariants(db: &PgPool, seed: u64) {
    let broken = count(
        db,
        "select count(*) from credit_accounts a \
          where a.available < 0 or a.held < 0 or a.debt < 0 \
             or a.available <> (select coalesce(sum(amount), 0) from credit_ledger l where l.account_id = a.id) \
             or a.held <> (select coalesce(sum(held_delta), 0) from credit_ledger l where l.account_id = a.id) \
             or a.held <> (select coalesce(sum(amount), 0) from credit_holds h \
                            where h.account_id = a.id and h.status = 'open') \
             or a.debt <> (select coalesce(sum(debt_delta), 0) from credit_ledger l where l.account_id = a.id)",
    )
    .await;
    assert_eq!(
        broken, 0,
        "seed {seed}: a balance disagrees with its ledger"
    );
    // One ledger row per key answered 201, per route: no key committed twice.
    for (route, rows) in [
        (
            "POST /api/v1/credits/charge",
            "select count(*) from credit_ledger where kind = 'charge' \
               and reference is distinct from 'debt_repayment'",
        ),
        (
            "POST /api/v1/credits/refund",
            "select count(*) from credit_ledger where kind = 'refund'",
        ),
        (
            "POST /api/v1/credits/adjust",
            "select count(*) from credit_ledger where kind = 'adjustment'",
        ),
        (
            "POST /api/v1/tasks",
            "select count(*) from credit_ledger where kind = 'hold'",
        ),
    ] {
        let keys: i64 = sqlx::query_scalar(
            "select count(*) from idempotency_keys where route = $1 and response_status = 201",
        )
        .bind(route)
        .fetch_one(db)
        .await
        .expect("keys");
        assert_eq!(
            count(db, rows).await,
            keys,
            "seed {seed}: {route} committed other than once per key"
        );
    }
    // Every settled task settled its hold exactly once.
    let unsettled = count(
        db,
        "select count(*) from tasks t join credit_holds h on h.task_id = t.id \
          where (t.status in ('succeeded', 'failed', 'canceled')) <> (h.status <> 'open')",
    )
    .await;
    assert_eq!(
        unsettled, 0,
        "seed {seed}: a finished task's hold is open, or the reverse"
    );
    let settlements = count(
        db,
        "select count(*) from (select hold_id from credit_ledger where kind in ('capture', 'release') \
           group by hold_id having count(*) > 1) twice",
    )
    .await;
    assert_eq!(settlements, 0, "seed {seed}: a hold settled twice");
}

async fn run(db: PgPool, seed: u64) {
    let node_a = Arc::new(spawn_app(db.clone()).await);
    let second = PgPool::connect(&database_url_for(&database_name(&db)))
        .await
        .expect("second pool");
    let node_b = Arc::new(spawn_app(second).await);
    flat_price(&db, "render", 3).await;
    let mut users = HashMap::new();
    for user in USERS {
        users.insert(user, Arc::new(funded_user(&node_a, user, 300).await));
    }
    let mut world = World {
        nodes: [node_a.clone(), node_b],
        users,
        finance: Arc::new(node_a.token("finance-1", &[Role::Finance])),
        service: Arc::new(node_a.token("renderer", &[Role::Service])),
        charges: Vec::new(),
        tasks: Vec::new(),
        history: Vec::new(),
        settled: HashMap::new(),
        replays: 0,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..ROUNDS {
        // A round's requests race each other, half on each node.
        let batch: Vec<(Sent, Arc<TestApp>)> = (0..PER_ROUND)
            .map(|i| {
                let sent = world.random_request(&mut rng, round * PER_ROUND + i);
                let node = world.nodes[rng.random_range(0..2)].clone();
                (sent, node)
            })
            .collect();
        let handles: Vec<_> = batch
            .into_iter()
            .map(|(sent, node)| {
                tokio::spawn(async move {
                    let answer = send(&node, &sent).await;
                    (sent, answer)
                })
            })
            .collect();
        for handle in handles {
            let (sent, answer) = handle.await.expect("join");
            assert!(
                !answer.status.is_server_error(),
                "seed {seed}: {sent:?} answered {} {}",
                answer.status,
                answer.body
            );
            world.learn(&sent, &answer);
        }
        check_invariants(&db, seed).await;
    }
    // The run exercised what it claims to: replays, charges, tasks and their settlement.
    assert!(world.replays > 0, "seed {seed}: no retry was replayed");
    assert!(
        !world.charges.is_empty() && !world.tasks.is_empty(),
        "seed {seed}"
    );
    let settled = count(
        &db,
        "select count(*) from credit_ledger where kind in ('capture', 'release')",
    )
    .await;
    assert!(settled > 0, "seed {seed}: no hold was settled");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn random_money_traffic_over_two_nodes_keeps_the_ledger_invariants_seed_1(db: PgPool) {
    run(db, 1).await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn random_money_traffic_over_two_nodes_keeps_the_ledger_invariants_seed_2(db: PgPool) {
    run(db, 2).await;
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn random_money_traffic_over_two_nodes_keeps_the_ledger_invariants_seed_3(db: PgPool) {
    run(db, 3).await;
}
