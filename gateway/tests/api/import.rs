//! `gateway import-phase1`: the sample imported (balances as ledger rows, history with its
//! timestamps), a second run changes nothing, a dry run writes nothing, bad records are reported by
//! line and skipped.

use crate::helpers::{database_name, database_url_for};
use sqlx::PgPool;
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/phase1-sample.jsonl");

fn import(db: &PgPool, path: &str, dry_run: bool) -> (bool, String) {
    let mut command = Command::new(BINARY);
    command
        .args(["import-phase1", path])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url_for(&database_name(db)));
    if dry_run {
        command.arg("--dry-run");
    }
    let output = command.output().expect("run");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect("count")
}

async fn snapshot(db: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "users",
        "credit_accounts",
        "credit_ledger",
        "tasks",
        "task_state_history",
        "authorizations",
    ] {
        counts.push(count(db, &format!("select count(*) from {table}")).await);
    }
    counts
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn the_sample_imports_once_a_dry_run_changes_nothing_and_bad_records_are_skipped(db: PgPool) {
    let empty = snapshot(&db).await;
    let (ok, out) = import(&db, SAMPLE, true);
    assert!(ok, "{out}");
    assert!(
        out.contains("7 records: would apply 7, unchanged 0, rejected 0"),
        "{out}"
    );
    assert_eq!(snapshot(&db).await, empty, "a dry run writes nothing");

    let (ok, out) = import(&db, SAMPLE, false);
    assert!(ok, "{out}");
    assert!(out.contains("applied 7, unchanged 0"), "{out}");
    let imported = snapshot(&db).await;
    assert_eq!(imported, vec![2, 2, 2, 2, 6, 1]);
    let balance: i64 =
        sqlx::query_scalar("select available from credit_accounts where id = 'p1-lin'")
            .fetch_one(&db)
            .await
            .expect("balance");
    assert_eq!(balance, 1250);
    let reason: String =
        sqlx::query_scalar("select reason from credit_ledger where account_id = 'p1-lin'")
            .fetch_one(&db)
            .await
            .expect("reason");
    assert!(reason.starts_with("Phase 1 import"), "{reason}");
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select created_at from task_state_history where seq = 2 \
          and task_id = '7d4d2f6e-2b1c-4c3a-9d55-3a1f0b2c9e01'",
    )
    .fetch_one(&db)
    .await
    .expect("history");
    assert_eq!(
        started.to_rfc3339(),
        "2026-10-01T02:00:05+00:00",
        "history keeps its timestamps"
    );

    let (ok, out) = import(&db, SAMPLE, false);
    assert!(ok, "{out}");
    assert!(out.contains("applied 0, unchanged 7"), "{out}");
    assert_eq!(
        snapshot(&db).await,
        imported,
        "a second run changes nothing"
    );

    let bad = std::env::temp_dir().join(format!("phase1-bad-{}.jsonl", rand::random::<u64>()));
    std::fs::write(
        &bad,
        [
            r#"{"type":"user","id":"p1-new","display_name":"New","roles":["user"]}"#,
            r#"{"type":"balance","account_id":"p1-ghost","credits":5,"as_of":"2026-11-30T16:00:00Z"}"#,
            "not json at all",
            r#"{"type":"user","id":"p1-x","display_name":"X","roles":["wizard"]}"#,
            "",
            r#"{"type":"balance","account_id":"p1-new","credits":-5,"as_of":"2026-11-30T16:00:00Z"}"#,
            r#"{"type":"coupon","id":"c1"}"#,
            r#"{"type":"balance","account_id":"p1-new","credits":42,"as_of":"2026-11-30T16:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .expect("write");
    let (ok, out) = import(&db, bad.to_str().expect("path"), false);
    let _ = std::fs::remove_file(&bad);
    assert!(!ok, "rejected records make the run fail: {out}");
    assert!(out.contains("applied 2, unchanged 0, rejected 5"), "{out}");
    for line in ["line 2:", "line 3:", "line 4:", "line 6:", "line 7:"] {
        assert!(out.contains(line), "{line} in {out}");
    }
    assert_eq!(
        count(
            &db,
            "select available from credit_accounts where id = 'p1-new'"
        )
        .await,
        42,
        "the good records after the bad ones were imported"
    );
}
