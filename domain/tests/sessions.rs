//! Theme storage and balances against real PostgreSQL.

use domain::DomainError;
use domain::identity::{Principal, provision};
use domain::sessions::{balance, store_theme, stored_theme};
use shared::Role;
use shared::session::{Density, Theme, ThemeMode};
use sqlx::PgPool;

async fn alice(pool: &PgPool) {
    let principal = Principal {
        user_id: "alice".into(),
        display_name: "Alice".into(),
        roles: vec![Role::User],
        account_id: Some("alice".into()),
    };
    provision(pool, &principal).await.expect("provision");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_stored_theme_replaces_the_previous_one(pool: PgPool) {
    alice(&pool).await;
    let first = Theme {
        mode: ThemeMode::Dark,
        accent: "ocean".into(),
        density: Density::Compact,
    };
    let second = Theme {
        mode: ThemeMode::Light,
        accent: "#112233".into(),
        density: Density::Comfortable,
    };

    store_theme(&pool, "alice", &first).await.expect("first");
    store_theme(&pool, "alice", &second).await.expect("second");

    assert_eq!(
        stored_theme(&pool, "alice").await.expect("read"),
        Some(second)
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_invalid_accent_is_rejected_and_nothing_is_stored(pool: PgPool) {
    alice(&pool).await;
    let theme = Theme {
        mode: ThemeMode::Dark,
        accent: "Not A Colour".into(),
        density: Density::Compact,
    };

    let error = store_theme(&pool, "alice", &theme)
        .await
        .expect_err("invalid accent");

    assert!(matches!(error, DomainError::Validation(_)), "{error:?}");
    assert_eq!(stored_theme(&pool, "alice").await.expect("read"), None);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn balance_reports_available_held_total_and_debt(pool: PgPool) {
    alice(&pool).await;
    sqlx::query("insert into credit_ledger (account_id, kind, amount, actor_id) values ('alice', 'adjustment', 50, 't')")
        .execute(&pool)
        .await
        .expect("fund");

    let balance = balance(&pool, "alice").await.expect("balance");

    assert_eq!(
        (balance.available, balance.held, balance.total, balance.debt),
        (50, 0, 50, 0)
    );
    assert!(matches!(
        domain::sessions::balance(&pool, "nobody").await,
        Err(DomainError::NotFound { .. })
    ));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn seeding_twice_loads_the_demo_data_once(pool: PgPool) {
    let first = domain::seed::seed(&pool).await.expect("first seed");
    let second = domain::seed::seed(&pool).await.expect("second seed");

    assert_eq!(
        (
            first.funded,
            first.price_rules,
            first.history,
            first.licenses
        ),
        (4, 3, 60, 4)
    );
    assert_eq!(
        (
            second.funded,
            second.price_rules,
            second.history,
            second.licenses
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        balance(&pool, "demo").await.expect("balance").available,
        5_000
    );
    let estimate = domain::pricing::estimate(&pool, "render", 100, chrono::Utc::now())
        .await
        .expect("estimate");
    assert_eq!(
        estimate.samples, 40,
        "the seeded history informs render estimates"
    );
}
