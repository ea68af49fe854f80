//! Demo data for a fresh node: users and funded accounts, price rules with history, licenses.
//! Idempotent: every part is skipped when already present, so `gateway seed` can run on every
//! start.

use crate::DomainResult;
use crate::audit::Actor;
use crate::identity::{Principal, provision};
use crate::ledger::store::execute_batch;
use crate::ledger::{LedgerRequest, Operation};
use crate::licenses::{Grant, grant};
use chrono::{Duration, Utc};
use shared::Role;
use sqlx::PgPool;

/// The demo users: (id, display name, roles, credits).
pub const USERS: &[(&str, &str, &[Role], i64)] = &[
    ("demo", "Demo Creator", &[Role::User, Role::Creator], 5_000),
    ("alice", "Alice", &[Role::User], 1_000),
    ("bob", "Bob", &[Role::User], 50),
    ("studio", "Studio Nine", &[Role::Creator], 20_000),
    ("ops", "Olga (operator)", &[Role::Operator], 0),
    ("fin", "Fang (finance)", &[Role::Finance], 0),
    ("audit", "Arun (auditor)", &[Role::Auditor], 0),
    ("admin", "Ada (admin)", &[Role::Admin], 0),
];

/// What seeding did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Users provisioned (new or existing).
    pub users: usize,
    /// Accounts funded now (skipped when they already had entries).
    pub funded: usize,
    /// Price rules inserted now.
    pub price_rules: u64,
    /// Historical tasks inserted now.
    pub history: u64,
    /// Licenses granted now.
    pub licenses: usize,
}

/// Loads the demo data.
pub async fn seed(pool: &PgPool) -> DomainResult<SeedReport> {
    let mut report = SeedReport::default();
    let seeder = Actor {
        id: "seed".into(),
        roles: vec![Role::Admin],
        request_id: None,
        client_ip: None,
    };
    for (id, name, roles, credits) in USERS {
        let principal = Principal {
            user_id: (*id).into(),
            display_name: (*name).into(),
            roles: roles.to_vec(),
            account_id: Some((*id).into()),
        };
        provision(pool, &principal).await?;
        report.users += 1;
        let has_entries: bool =
            sqlx::query_scalar("select exists (select 1 from credit_ledger where account_id = $1)")
                .bind(id)
                .fetch_one(pool)
                .await?;
        if *credits > 0 && !has_entries {
            let request = LedgerRequest {
                account_id: (*id).into(),
                operation: Operation::Adjust {
                    amount: *credits,
                    reason: "demo credits".into(),
                },
                actor: seeder.clone(),
                completion: None,
                task: None,
            };
            let outcome = execute_batch(pool, id, &[request]).await?;
            if outcome
                .first()
                .is_some_and(|outcome| outcome.result.is_ok())
            {
                report.funded += 1;
            }
        }
    }
    report.price_rules = sqlx::query(
        "insert into price_rules (id, task_type, base_credits, per_unit_credits, peak_multiplier_bp, \
           peak_start_hour, peak_end_hour, history_weight_bp) values \
           ('render-v1', 'render', 10, 4, 15000, 18, 22, 5000), \
           ('transcode-v1', 'transcode', 2, 1, 10000, 0, 0, 3000), \
           ('upscale-v1', 'upscale', 5, 8, 12500, 19, 23, 6000) \
         on conflict (id) do nothing",
    )
    .execute(pool)
    .await?
    .rows_affected();
    sqlx::query(
        "insert into price_rule_tiers (rule_id, min_units, discount_bp) values \
           ('render-v1', 1000, 1000), ('render-v1', 10000, 2500), ('upscale-v1', 500, 1500) \
         on conflict do nothing",
    )
    .execute(pool)
    .await?;
    let has_history: bool =
        sqlx::query_scalar("select exists (select 1 from tasks where owner_id = 'studio')")
            .fetch_one(pool)
            .await?;
    if !has_history {
        // 40 renders and 20 upscales over the last four weeks, costs spread around the rule.
        report.history = sqlx::query(
            "insert into tasks (id, owner_id, account_id, task_type, units, status, progress, seq, \
               estimated_credits, actual_units, actual_cost, created_at, finished_at) \
             select gen_random_uuid(), 'studio', 'studio', kind, units, 'succeeded', 100, 3, \
                    units * per_unit, units, units * per_unit * (80 + (n * 37) % 60) / 100, \
                    now() - make_interval(hours => n * 16 + 1), now() - make_interval(hours => n * 16) \
               from (select n, case when n <= 40 then 'render' else 'upscale' end as kind, \
                            case when n <= 40 then 4 else 8 end as per_unit, 50 + (n * 13) % 200 as units \
                       from generate_series(1, 60) as n) spread",
        )
        .execute(pool)
        .await?
        .rows_affected();
        // Their history (created, running, succeeded), so their audit trails tell a story.
        sqlx::query(
            "insert into task_state_history (task_id, seq, kind, from_status, to_status, progress, \
                 actual_units, actor_id, created_at) \
             select t.id, e.seq, e.kind, e.from_status, e.to_status, e.progress, \
                    case when e.seq = 3 then t.actual_units end, e.actor, \
                    case e.seq when 1 then t.created_at \
                               when 2 then t.created_at + interval '5 seconds' \
                               else t.finished_at end \
               from tasks t, (values (1, 'created', null, 'queued', 0, 'studio'), \
                                     (2, 'state', 'queued', 'running', 0, 'renderer'), \
                                     (3, 'state', 'running', 'succeeded', 100, 'renderer')) \
                             as e(seq, kind, from_status, to_status, progress, actor) \
              where t.owner_id = 'studio' \
             on conflict do nothing",
        )
        .execute(pool)
        .await?;
    }
    let licenses = [
        (
            "demo",
            "model:portrait-v2",
            vec!["generate", "download"],
            Some(100),
            None,
        ),
        (
            "alice",
            "model:portrait-v2",
            vec!["generate"],
            Some(3),
            None,
        ),
        (
            "bob",
            "model:portrait-v2",
            vec!["generate"],
            Some(10),
            Some(Utc::now() - Duration::days(1)),
        ),
        (
            "studio",
            "model:landscape-xl",
            vec!["generate", "download", "commercial"],
            None,
            None,
        ),
    ];
    for (subject, resource, actions, quota_total, valid_until) in licenses {
        let exists: bool = sqlx::query_scalar(
            "select exists (select 1 from authorizations where subject_id = $1 and resource = $2)",
        )
        .bind(subject)
        .bind(resource)
        .fetch_one(pool)
        .await?;
        if exists {
            continue;
        }
        let valid_from = valid_until.map_or_else(Utc::now, |until| until - Duration::days(30));
        let mut tx = pool.begin().await?;
        let terms = Grant {
            subject_id: subject.into(),
            resource: resource.into(),
            actions: actions.into_iter().map(str::to_owned).collect(),
            quota_total,
            valid_from,
            valid_until,
        };
        grant(&mut tx, &seeder, terms).await?;
        tx.commit().await?;
        report.licenses += 1;
    }
    Ok(report)
}
