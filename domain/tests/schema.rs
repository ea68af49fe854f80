//! The schema refuses bad states by itself: run against real PostgreSQL, one fresh database per
//! test (`#[sqlx::test]`, `DATABASE_URL`).

use domain::db::{MIGRATOR, migrate, pending_migrations};
use domain::identity::{Principal, provision};
use shared::Role;
use sqlx::{PgPool, Row};

fn principal(id: &str, roles: Vec<Role>) -> Principal {
    Principal {
        user_id: id.into(),
        display_name: id.into(),
        roles,
        account_id: Some(id.into()),
    }
}

async fn funded_account(pool: &PgPool, id: &str, credits: i64) {
    provision(pool, &principal(id, vec![Role::User]))
        .await
        .expect("provision");
    sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, actor_id) values ($1, 'adjustment', $2, 'test')",
    )
    .bind(id)
    .bind(credits)
    .execute(pool)
    .await
    .expect("fund");
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    domain::error::sqlstate(error)
}

#[sqlx::test(migrations = false)]
async fn migrations_apply_to_an_empty_database_and_a_second_run_is_a_no_op(pool: PgPool) {
    assert_eq!(
        pending_migrations(&pool).await.expect("read").len(),
        MIGRATOR.iter().count()
    );

    migrate(&pool).await.expect("first run");
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    migrate(&pool).await.expect("second run");
    let again: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");

    assert_eq!(applied, MIGRATOR.iter().count() as i64);
    assert_eq!(again, applied);
    assert!(pending_migrations(&pool).await.expect("read").is_empty());
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_ledger_row_applies_its_amount_to_the_account(pool: PgPool) {
    funded_account(&pool, "alice", 100).await;

    let after: i64 = sqlx::query_scalar(
        "insert into credit_ledger (account_id, kind, amount, actor_id) \
         values ('alice', 'charge', -30, 'test') returning balance_after",
    )
    .fetch_one(&pool)
    .await
    .expect("charge");

    let available: i64 =
        sqlx::query_scalar("select available from credit_accounts where id = 'alice'")
            .fetch_one(&pool)
            .await
            .expect("read");
    let sum: i64 = sqlx::query_scalar(
        "select sum(amount)::bigint from credit_ledger where account_id = 'alice'",
    )
    .fetch_one(&pool)
    .await
    .expect("sum");
    assert_eq!((after, available, sum), (70, 70, 70));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_charge_that_would_make_available_negative_is_rejected(pool: PgPool) {
    funded_account(&pool, "alice", 10).await;

    let error = sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, actor_id) values ('alice', 'charge', -11, 'test')",
    )
    .execute(&pool)
    .await
    .expect_err("overdraft must fail");

    assert_eq!(
        domain::error::violated_constraint(&error),
        Some("credit_ledger_balance_after_check")
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from credit_ledger where kind = 'charge'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_balance_cannot_be_changed_without_a_ledger_row(pool: PgPool) {
    funded_account(&pool, "alice", 10).await;

    let error = sqlx::query("update credit_accounts set available = 1000 where id = 'alice'")
        .execute(&pool)
        .await
        .expect_err("direct balance update must fail");

    assert_eq!(sqlstate(&error).as_deref(), Some("23001"));
    let fresh = sqlx::query(
        "insert into credit_accounts (id, owner_id, available) values ('x', 'alice', 5)",
    )
    .execute(&pool)
    .await
    .expect_err("an account cannot start with credits");
    assert_eq!(sqlstate(&fresh).as_deref(), Some("23514"));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_ledger_kind_with_the_wrong_sign_is_rejected(pool: PgPool) {
    funded_account(&pool, "alice", 10).await;

    let error = sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, actor_id) values ('alice', 'charge', 5, 'test')",
    )
    .execute(&pool)
    .await
    .expect_err("a positive charge must fail");

    assert_eq!(sqlstate(&error).as_deref(), Some("23514"));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn append_only_tables_refuse_update_delete_and_truncate(pool: PgPool) {
    funded_account(&pool, "alice", 10).await;
    let task: uuid::Uuid = sqlx::query_scalar(
        "insert into tasks (id, owner_id, account_id, task_type, units, estimated_credits) \
         values (gen_random_uuid(), 'alice', 'alice', 'render', 1, 1) returning id",
    )
    .fetch_one(&pool)
    .await
    .expect("task");
    sqlx::query("insert into task_state_history (task_id, seq, kind, to_status, actor_id) values ($1, 1, 'created', 'queued', 't')")
        .bind(task)
        .execute(&pool)
        .await
        .expect("history");
    sqlx::query(
        "insert into task_audit_logs (task_id, action, actor_id) values ($1, 'created', 't')",
    )
    .bind(task)
    .execute(&pool)
    .await
    .expect("task audit");
    sqlx::query("insert into audit_access_log (actor_id, actor_roles, action, outcome) values ('a', '{admin}', 'x.y', 'success')")
        .execute(&pool)
        .await
        .expect("audit");
    sqlx::query("insert into authorization_logs (subject_id, event, allowed, actor_id) values ('a', 'check', true, 'a')")
        .execute(&pool)
        .await
        .expect("license log");

    for table in [
        "credit_ledger",
        "task_state_history",
        "task_audit_logs",
        "audit_access_log",
        "authorization_logs",
    ] {
        for statement in [
            format!("update {table} set created_at = now()"),
            format!("delete from {table}"),
            format!("truncate {table} cascade"),
        ] {
            let error = sqlx::query(&statement)
                .execute(&pool)
                .await
                .expect_err(&statement);
            assert_eq!(sqlstate(&error).as_deref(), Some("23001"), "{statement}");
        }
        let count: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(&pool)
            .await
            .expect("count");
        assert!(count >= 1, "{table} lost rows");
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_duplicate_task_sequence_number_is_rejected(pool: PgPool) {
    funded_account(&pool, "alice", 10).await;
    let task: uuid::Uuid = sqlx::query_scalar(
        "insert into tasks (id, owner_id, account_id, task_type, units, estimated_credits) \
         values (gen_random_uuid(), 'alice', 'alice', 'render', 1, 1) returning id",
    )
    .fetch_one(&pool)
    .await
    .expect("task");
    let insert = "insert into task_state_history (task_id, seq, kind, to_status, actor_id) \
                  values ($1, 1, 'state', 'running', 't')";
    sqlx::query(insert)
        .bind(task)
        .execute(&pool)
        .await
        .expect("first");

    let error = sqlx::query(insert)
        .bind(task)
        .execute(&pool)
        .await
        .expect_err("duplicate seq");

    assert_eq!(
        domain::error::violated_constraint(&error),
        Some("task_state_history_pkey")
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn license_quota_cannot_exceed_its_total_and_a_revoked_license_stays_revoked(pool: PgPool) {
    let id: uuid::Uuid = sqlx::query_scalar(
        "insert into authorizations (id, subject_id, resource, actions, quota_total, granted_by) \
         values (gen_random_uuid(), 'alice', 'model:x', '{use}', 2, 'admin') returning id",
    )
    .fetch_one(&pool)
    .await
    .expect("grant");

    let over = sqlx::query("update authorizations set quota_used = 3 where id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect_err("quota overrun");
    assert_eq!(sqlstate(&over).as_deref(), Some("23514"));

    sqlx::query("update authorizations set status = 'revoked' where id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("revoke");
    let back = sqlx::query("update authorizations set status = 'active' where id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect_err("un-revoke");
    assert_eq!(sqlstate(&back).as_deref(), Some("23514"));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn provisioning_is_idempotent_under_concurrency(pool: PgPool) {
    let alice = principal("alice", vec![Role::Creator]);

    let results = futures_join(&pool, &alice, 16).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let row = sqlx::query(
        "select (select count(*) from users where id = 'alice') as users, \
                (select count(*) from credit_accounts where id = 'alice') as accounts, \
                (select roles from users where id = 'alice') as roles",
    )
    .fetch_one(&pool)
    .await
    .expect("read");
    assert_eq!(row.get::<i64, _>("users"), 1);
    assert_eq!(row.get::<i64, _>("accounts"), 1);
    assert_eq!(
        row.get::<Vec<String>, _>("roles"),
        vec!["creator".to_owned()]
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_service_is_provisioned_without_an_account(pool: PgPool) {
    let service = Principal {
        account_id: None,
        ..principal("renderer", vec![Role::Service])
    };

    provision(&pool, &service).await.expect("provision");

    let accounts: i64 = sqlx::query_scalar("select count(*) from credit_accounts")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(accounts, 0);
}

async fn futures_join(
    pool: &PgPool,
    principal: &Principal,
    n: usize,
) -> Vec<Result<bool, domain::DomainError>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (pool, principal) = (pool.clone(), principal.clone());
        tasks.push(tokio::spawn(
            async move { provision(&pool, &principal).await },
        ));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("join"));
    }
    results
}

/// The balances (available, held, debt) of an account and the sums of its ledger deltas.
async fn balances_and_sums(pool: &PgPool, id: &str) -> ((i64, i64, i64), (i64, i64, i64)) {
    let balances =
        sqlx::query_as("select available, held, debt from credit_accounts where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("balances");
    let sums = sqlx::query_as(
        "select coalesce(sum(amount), 0)::bigint, coalesce(sum(held_delta), 0)::bigint, \
                coalesce(sum(debt_delta), 0)::bigint \
           from credit_ledger where account_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("sums");
    (balances, sums)
}

/// A ledger row carrying its balance: `(id, account, kind, amount, balance_after)`, held and debt
/// untouched.
type RowWithBalance<'a> = (i64, &'a str, &'a str, i64, i64);

/// Inserts ledger rows that carry their balances, as the ledger's batch writer does.
async fn insert_with_balances(
    pool: &PgPool,
    rows: &[RowWithBalance<'_>],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<i64> = rows.iter().map(|row| row.0).collect();
    let accounts: Vec<&str> = rows.iter().map(|row| row.1).collect();
    let kinds: Vec<&str> = rows.iter().map(|row| row.2).collect();
    let amounts: Vec<i64> = rows.iter().map(|row| row.3).collect();
    let afters: Vec<i64> = rows.iter().map(|row| row.4).collect();
    sqlx::query(
        "insert into credit_ledger (id, account_id, kind, amount, actor_id, balance_after, \
             held_after, debt_after) \
         overriding system value \
         select id, account_id, kind, amount, 'test', balance_after, 0, 0 \
           from unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
                as r(id, account_id, kind, amount, balance_after)",
    )
    .bind(&ids)
    .bind(&accounts)
    .bind(&kinds)
    .bind(&amounts)
    .bind(&afters)
    .execute(pool)
    .await
    .map(|done| done.rows_affected())
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn rows_carrying_their_balances_move_each_account_once_to_where_its_last_row_ends(
    pool: PgPool,
) {
    funded_account(&pool, "alice", 100).await;
    funded_account(&pool, "bob", 20).await;

    let written = insert_with_balances(
        &pool,
        &[
            (1001, "alice", "charge", -30, 70),
            (1002, "bob", "charge", -5, 15),
            (1003, "alice", "charge", -20, 50),
            (1004, "alice", "adjustment", 7, 57),
        ],
    )
    .await
    .expect("a chain starting from the balances is written");

    assert_eq!(written, 4);
    assert_eq!(
        balances_and_sums(&pool, "alice").await,
        ((57, 0, 0), (57, 0, 0))
    );
    assert_eq!(
        balances_and_sums(&pool, "bob").await,
        ((15, 0, 0), (15, 0, 0))
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn rows_whose_balances_do_not_follow_on_from_the_account_are_refused_and_change_nothing(
    pool: PgPool,
) {
    funded_account(&pool, "alice", 100).await;
    funded_account(&pool, "bob", 20).await;
    let refused: [&[RowWithBalance<'_>]; 4] = [
        // Starts from 110, not from alice's 100 (and ends where she is now: still refused).
        &[(1001, "alice", "charge", -10, 100)],
        // The second row does not start where the first ended.
        &[
            (1001, "alice", "charge", -30, 70),
            (1002, "alice", "charge", -20, 60),
        ],
        // Right for alice, wrong for bob: the whole statement goes.
        &[
            (1001, "alice", "charge", -30, 70),
            (1002, "bob", "charge", -5, 16),
        ],
        // The chain holds but dips below zero.
        &[
            (1001, "bob", "charge", -30, -10),
            (1002, "bob", "adjustment", 30, 20),
        ],
    ];

    for rows in refused {
        let error = insert_with_balances(&pool, rows)
            .await
            .expect_err("a broken chain must fail");
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("23514"),
            "{rows:?}: {error}"
        );
    }

    assert_eq!(
        balances_and_sums(&pool, "alice").await,
        ((100, 0, 0), (100, 0, 0))
    );
    assert_eq!(
        balances_and_sums(&pool, "bob").await,
        ((20, 0, 0), (20, 0, 0))
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn rows_without_balances_get_them_one_per_account_per_statement(pool: PgPool) {
    funded_account(&pool, "alice", 100).await;
    funded_account(&pool, "bob", 20).await;

    sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, actor_id) \
         values ('alice', 'charge', -30, 't'), ('bob', 'charge', -5, 't')",
    )
    .execute(&pool)
    .await
    .expect("one row per account is filled in");
    let twice = sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, actor_id) \
         values ('alice', 'charge', -1, 't'), ('alice', 'charge', -2, 't')",
    )
    .execute(&pool)
    .await
    .expect_err("two rows of one account without balances cannot both start from it");

    assert_eq!(sqlstate(&twice).as_deref(), Some("23514"));
    assert_eq!(
        balances_and_sums(&pool, "alice").await,
        ((70, 0, 0), (70, 0, 0))
    );
    assert_eq!(
        balances_and_sums(&pool, "bob").await,
        ((15, 0, 0), (15, 0, 0))
    );
    let missing = sqlx::query(
        "insert into credit_ledger (account_id, kind, amount, actor_id) \
         values ('nobody', 'adjustment', 5, 't')",
    )
    .execute(&pool)
    .await
    .expect_err("no account, no row");
    assert_eq!(sqlstate(&missing).as_deref(), Some("23503"));
}
