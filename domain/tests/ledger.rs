//! The ledger against real PostgreSQL: batches, holds, debt, actors.

use domain::DomainError;
use domain::audit::Actor;
use domain::idempotency::{self, Claim, Claimed, KeyPolicy, KeyRef, StoredResponse};
use domain::identity::{Principal, provision};
use domain::ledger::store::execute_batch;
use domain::ledger::{Completion, Ledger, LedgerConfig, LedgerRequest, Operation, Render};
use shared::Role;
use shared::credits::EntryKind;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn actor() -> Actor {
    Actor {
        id: "tester".into(),
        roles: vec![Role::Admin],
        request_id: None,
        client_ip: None,
    }
}

fn request(account: &str, operation: Operation) -> LedgerRequest {
    LedgerRequest {
        account_id: account.into(),
        operation,
        actor: actor(),
        completion: None,
        task: None,
    }
}

fn charge(amount: i64) -> Operation {
    Operation::Charge {
        amount,
        reason: "test".into(),
        task_id: None,
        metadata: None,
    }
}

async fn account(pool: &PgPool, id: &str, credits: i64) {
    let principal = Principal {
        user_id: id.into(),
        display_name: id.into(),
        roles: vec![Role::User],
        account_id: Some(id.into()),
    };
    provision(pool, &principal).await.expect("provision");
    if credits > 0 {
        let funding = request(
            id,
            Operation::Adjust {
                amount: credits,
                reason: "fund".into(),
            },
        );
        let outcomes = execute_batch(pool, id, &[funding]).await.expect("fund");
        assert!(outcomes[0].result.is_ok());
    }
}

async fn balances(pool: &PgPool, id: &str) -> (i64, i64, i64) {
    sqlx::query_as("select available, held, debt from credit_accounts where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("balances")
}

async fn rows(pool: &PgPool, id: &str, kind: &str) -> i64 {
    sqlx::query_scalar("select count(*) from credit_ledger where account_id = $1 and kind = $2")
        .bind(id)
        .bind(kind)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn in_one_batch_the_request_without_funds_fails_alone(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let batch = [
        request("alice", charge(50)),
        request("alice", charge(80)),
        request("alice", charge(30)),
    ];

    let outcomes = execute_batch(&pool, "alice", &batch).await.expect("batch");

    assert!(outcomes[0].result.is_ok());
    assert!(matches!(
        outcomes[1].result,
        Err(DomainError::InsufficientCredits {
            available: 50,
            requested: 80
        })
    ));
    let third = outcomes[2].result.as_ref().expect("third applies");
    assert_eq!(third.entry.balance_after, 20);
    assert_eq!(balances(&pool, "alice").await, (20, 0, 0));
    assert_eq!(rows(&pool, "alice", "charge").await, 2);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_batch_for_an_unknown_account_fails_every_request_and_writes_nothing(pool: PgPool) {
    let outcomes = execute_batch(&pool, "ghost", &[request("ghost", charge(1))])
        .await
        .expect("batch");

    assert!(matches!(
        outcomes[0].result,
        Err(DomainError::NotFound { .. })
    ));
    let total: i64 = sqlx::query_scalar("select count(*) from credit_ledger")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(total, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn capture_above_the_hold_charges_the_difference_in_one_row(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");
    let hold_id = Uuid::new_v4();

    let hold = ledger
        .apply(request(
            "alice",
            Operation::Hold {
                hold_id,
                task_id: None,
                amount: 40,
            },
        ))
        .await
        .expect("hold");
    assert_eq!(hold.result.expect("held").balance.available, 60);
    assert_eq!(balances(&pool, "alice").await, (60, 40, 0));
    let capture = ledger
        .apply(request(
            "alice",
            Operation::Capture {
                hold_id,
                actual: 55,
            },
        ))
        .await
        .expect("capture");

    let applied = capture.result.expect("captured");
    assert_eq!(applied.entry.kind, EntryKind::Capture);
    assert_eq!(applied.entry.amount, -15, "the supplementary deduction");
    assert_eq!(balances(&pool, "alice").await, (45, 0, 0));
    assert_eq!(rows(&pool, "alice", "capture").await, 1);
    let status: String = sqlx::query_scalar("select status from credit_holds where id = $1")
        .bind(hold_id)
        .fetch_one(&pool)
        .await
        .expect("hold");
    assert_eq!(status, "captured");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn capture_below_the_hold_returns_the_rest_and_release_returns_all(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    for hold_id in [first, second] {
        let hold = Operation::Hold {
            hold_id,
            task_id: None,
            amount: 30,
        };
        ledger
            .apply(request("alice", hold))
            .await
            .expect("hold")
            .result
            .expect("held");
    }

    let captured = ledger
        .apply(request(
            "alice",
            Operation::Capture {
                hold_id: first,
                actual: 20,
            },
        ))
        .await
        .expect("capture");
    let released = ledger
        .apply(request("alice", Operation::Release { hold_id: second }))
        .await
        .expect("release");

    assert_eq!(captured.result.expect("captured").entry.amount, 10);
    assert_eq!(released.result.expect("released").entry.amount, 30);
    assert_eq!(balances(&pool, "alice").await, (80, 0, 0));
    assert_eq!(
        (
            rows(&pool, "alice", "capture").await,
            rows(&pool, "alice", "release").await
        ),
        (1, 1)
    );
    let again = ledger
        .apply(request("alice", Operation::Release { hold_id: second }))
        .await
        .expect("release");
    assert!(
        matches!(again.result, Err(DomainError::Conflict(_))),
        "a settled hold cannot be settled twice"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_uncovered_difference_becomes_debt_that_the_next_credit_repays_first(pool: PgPool) {
    account(&pool, "alice", 10).await;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");
    let hold_id = Uuid::new_v4();
    ledger
        .apply(request(
            "alice",
            Operation::Hold {
                hold_id,
                task_id: None,
                amount: 8,
            },
        ))
        .await
        .expect("hold");

    let capture = ledger
        .apply(request(
            "alice",
            Operation::Capture {
                hold_id,
                actual: 20,
            },
        ))
        .await
        .expect("capture");
    assert_eq!(
        capture.result.expect("captured").entry.debt_after,
        10,
        "2 taken, 10 missing"
    );
    assert_eq!(balances(&pool, "alice").await, (0, 0, 10));

    let credit = Operation::Adjust {
        amount: 25,
        reason: "compensation".into(),
    };
    let applied = ledger
        .apply(request("alice", credit))
        .await
        .expect("adjust")
        .result
        .expect("adjusted");

    assert_eq!(applied.related.len(), 1, "one debt repayment row");
    assert_eq!(
        (applied.related[0].amount, applied.related[0].debt_after),
        (-10, 0)
    );
    assert_eq!(applied.balance.available, 15);
    assert_eq!(balances(&pool, "alice").await, (15, 0, 0));
    let sum: i64 = sqlx::query_scalar(
        "select sum(amount)::bigint from credit_ledger where account_id = 'alice'",
    )
    .fetch_one(&pool)
    .await
    .expect("sum");
    assert_eq!(sum, 15, "available equals the sum of the ledger");
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn many_concurrent_charges_through_one_actor_all_apply_in_order(pool: PgPool) {
    account(&pool, "hot", 1_000).await;
    let ledger = Ledger::start(
        pool.clone(),
        LedgerConfig {
            max_batch: 64,
            ..LedgerConfig::default()
        },
    )
    .await
    .expect("ledger");

    let mut tasks = Vec::new();
    for _ in 0..120 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            ledger.apply(request("hot", charge(10))).await
        }));
    }
    let mut applied = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("join").expect("outcome").result {
            Ok(_) => applied += 1,
            Err(DomainError::InsufficientCredits { .. }) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!((applied, refused), (100, 20));
    assert_eq!(balances(&pool, "hot").await, (0, 0, 0));
    let chain_ok: bool = sqlx::query_scalar(
        "select bool_and(balance_after = running) from (select balance_after, \
           sum(amount) over (order by id) as running from credit_ledger where account_id = 'hot') t",
    )
    .fetch_one(&pool)
    .await
    .expect("chain");
    assert!(
        chain_ok,
        "every balance_after is the running sum of the ledger"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn with_batching_off_charges_still_apply_one_by_one(pool: PgPool) {
    account(&pool, "naive", 100).await;
    let ledger = Ledger::start(
        pool.clone(),
        LedgerConfig {
            max_batch: 1,
            ..LedgerConfig::default()
        },
    )
    .await
    .expect("ledger");

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            ledger.apply(request("naive", charge(5))).await
        }));
    }
    for task in tasks {
        task.await
            .expect("join")
            .expect("outcome")
            .result
            .expect("applied");
    }

    assert_eq!(balances(&pool, "naive").await, (0, 0, 0));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_idle_actor_stops_and_the_next_operation_starts_a_new_one(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let config = LedgerConfig {
        idle_timeout: Duration::from_millis(50),
        ..LedgerConfig::default()
    };
    let ledger = Ledger::start(pool.clone(), config).await.expect("ledger");
    ledger
        .apply(request("alice", charge(1)))
        .await
        .expect("first")
        .result
        .expect("applied");
    assert_eq!(ledger.live_actors(), 1);

    let mut waited = 0;
    while ledger.live_actors() > 0 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    assert_eq!(ledger.live_actors(), 0, "the idle actor stopped");

    ledger
        .apply(request("alice", charge(1)))
        .await
        .expect("second")
        .result
        .expect("applied");
    assert_eq!(ledger.live_actors(), 1);
    assert_eq!(balances(&pool, "alice").await.0, 98);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_failed_batch_reaches_its_caller_as_an_error(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");
    pool.close().await;

    let outcome = ledger
        .apply(request("alice", charge(1)))
        .await
        .expect("an outcome, not silence");

    assert!(
        matches!(outcome.result, Err(DomainError::Unavailable(_))),
        "{:?}",
        outcome.result
    );
    assert!(
        outcome.stored.is_none(),
        "nothing stored: the key stays retryable"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn refunds_of_one_charge_never_exceed_it(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let outcome = execute_batch(&pool, "alice", &[request("alice", charge(50))])
        .await
        .expect("charge");
    let charge_id = outcome[0].result.as_ref().expect("charged").entry.entry_id;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");

    let mut tasks = Vec::new();
    for _ in 0..12 {
        let ledger = ledger.clone();
        let refund = Operation::Refund {
            charge_entry_id: charge_id,
            amount: 7,
            reason: "sorry".into(),
        };
        tasks.push(tokio::spawn(async move {
            ledger.apply(request("alice", refund)).await
        }));
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.expect("join").expect("outcome").result {
            Ok(_) => applied += 1,
            Err(DomainError::RefundExceedsCharge { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(applied, 7, "7 x 7 = 49 <= 50 < 56");
    assert_eq!(balances(&pool, "alice").await.0, 99);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn two_refunds_of_one_charge_in_one_batch_never_exceed_it(pool: PgPool) {
    account(&pool, "alice", 100).await;
    let charged = execute_batch(&pool, "alice", &[request("alice", charge(50))])
        .await
        .expect("charge");
    let charge_entry_id = charged[0].result.as_ref().expect("charged").entry.entry_id;
    let refund = |amount| Operation::Refund {
        charge_entry_id,
        amount,
        reason: "sorry".into(),
    };

    let outcomes = execute_batch(
        &pool,
        "alice",
        &[request("alice", refund(30)), request("alice", refund(30))],
    )
    .await
    .expect("batch");

    assert!(outcomes[0].result.is_ok());
    assert!(matches!(
        outcomes[1].result,
        Err(DomainError::RefundExceedsCharge { remaining: 20 })
    ));
    assert_eq!(balances(&pool, "alice").await.0, 80);
}

fn keyed(account: &str, operation: Operation, claim: Claimed) -> LedgerRequest {
    let render: Render = Arc::new(|result| StoredResponse {
        status: if result.is_ok() { 201 } else { 422 },
        body: b"{}".to_vec(),
    });
    LedgerRequest {
        completion: Some(Completion { claim, render }),
        ..request(account, operation)
    }
}

async fn claim_key(pool: &PgPool, name: &str, lease: Duration) -> Claimed {
    let key = KeyRef {
        caller_id: "alice".into(),
        account_id: "alice".into(),
        route: "POST /api/v1/credits/charge".into(),
        key: name.into(),
    };
    let policy = KeyPolicy {
        ttl: Duration::from_secs(86_400),
        lease,
    };
    match idempotency::claim(pool, &key, &idempotency::fingerprint(b"{}"), policy)
        .await
        .expect("claim")
    {
        Claim::Acquired(claimed) => claimed,
        other => panic!("not acquired: {other:?}"),
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_charge_whose_claim_was_taken_over_is_not_applied_and_the_new_owner_commits_once(
    pool: PgPool,
) {
    // The repro of the double charge: the first request's claim outlives its lease while it
    // waits; a retry takes the key over and commits; the first must then write nothing.
    account(&pool, "alice", 1_000).await;
    let stale = claim_key(&pool, "K", Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let current = claim_key(&pool, "K", Duration::from_secs(30)).await;

    let retried = execute_batch(&pool, "alice", &[keyed("alice", charge(100), current)])
        .await
        .expect("batch");
    assert!(retried[0].result.is_ok() && retried[0].stored.is_some());
    let late = execute_batch(&pool, "alice", &[keyed("alice", charge(100), stale)])
        .await
        .expect("batch");

    assert!(
        matches!(late[0].result, Err(DomainError::Conflict(_))),
        "{:?}",
        late[0].result
    );
    assert!(late[0].stored.is_none());
    assert_eq!(rows(&pool, "alice", "charge").await, 1);
    assert_eq!(balances(&pool, "alice").await, (900, 0, 0));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_released_claim_drops_its_request_while_its_batch_neighbours_apply(pool: PgPool) {
    account(&pool, "alice", 1_000).await;
    let kept = claim_key(&pool, "kept", Duration::from_secs(30)).await;
    let released = claim_key(&pool, "released", Duration::from_secs(30)).await;
    idempotency::release(&pool, &released)
        .await
        .expect("release");

    let outcomes = execute_batch(
        &pool,
        "alice",
        &[
            keyed("alice", charge(10), kept),
            keyed("alice", charge(20), released),
            request("alice", charge(30)),
        ],
    )
    .await
    .expect("batch");

    assert!(outcomes[0].result.is_ok());
    assert!(outcomes[1].result.is_err() && outcomes[1].stored.is_none());
    assert!(outcomes[2].result.is_ok());
    assert_eq!(balances(&pool, "alice").await, (960, 0, 0));
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn amounts_beyond_the_limits_are_refused_and_never_wrap(pool: PgPool) {
    account(&pool, "alice", 1_000).await;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");

    for operation in [
        charge(i64::MAX),
        Operation::Adjust {
            amount: i64::MIN,
            reason: "wrap".into(),
        },
        Operation::Adjust {
            amount: shared::limits::MAX_AMOUNT + 1,
            reason: "too much".into(),
        },
    ] {
        let outcome = ledger
            .apply(request("alice", operation.clone()))
            .await
            .expect("outcome");
        assert!(
            matches!(outcome.result, Err(DomainError::Validation(_))),
            "{operation:?}: {:?}",
            outcome.result
        );
    }
    // Credits stop at the largest balance: 1,000 + 999 x MAX_AMOUNT fits, one more does not.
    let grants: Vec<LedgerRequest> = (0..1_000)
        .map(|_| {
            request(
                "alice",
                Operation::Adjust {
                    amount: shared::limits::MAX_AMOUNT,
                    reason: "grant".into(),
                },
            )
        })
        .collect();
    let outcomes = execute_batch(&pool, "alice", &grants).await.expect("batch");
    assert!(outcomes[..999].iter().all(|outcome| outcome.result.is_ok()));
    assert!(matches!(
        outcomes[999].result,
        Err(DomainError::Validation(_))
    ));
    assert_eq!(
        balances(&pool, "alice").await,
        (1_000 + 999 * shared::limits::MAX_AMOUNT, 0, 0)
    );
    assert_eq!(rows(&pool, "alice", "charge").await, 0);
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_request_failing_in_the_database_fails_alone_in_its_batch(pool: PgPool) {
    account(&pool, "alice", 1_000).await;
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");
    // Hold the account so the first charge waits and the rest queue up into one batch.
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("select 1 from credit_accounts where id = 'alice' for update")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let first = tokio::spawn({
        let ledger = ledger.clone();
        async move { ledger.apply(request("alice", charge(1))).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let poisoned = Operation::Charge {
        amount: 5,
        reason: "bad".into(),
        task_id: None,
        // PostgreSQL's jsonb cannot store a NUL character: this row fails in the database.
        metadata: Some(serde_json::json!({"note": "a\u{0}b"})),
    };
    let mut queued = Vec::new();
    for operation in [charge(10), poisoned, charge(100)] {
        let ledger = ledger.clone();
        queued.push(tokio::spawn(async move {
            ledger.apply(request("alice", operation)).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.commit().await.expect("unlock");

    let first = first.await.expect("join").expect("outcome");
    let mut results = Vec::new();
    for handle in queued {
        results.push(handle.await.expect("join").expect("outcome").result);
    }
    assert!(first.result.is_ok());
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_err(), "{:?}", results[1]);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(balances(&pool, "alice").await, (889, 0, 0));
}

/// Group commit: batches of several accounts that wait together are applied in one transaction
/// (their rows share a transaction id), and an account whose part the database refuses fails
/// alone: the others still apply, in a transaction without it.
#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn waiting_accounts_commit_together_and_a_failing_account_fails_alone(pool: PgPool) {
    for id in ["blocker", "a", "poison", "z"] {
        account(&pool, id, 100).await;
    }
    // The database refuses any new ledger row of `poison` (a stand-in for any database error).
    sqlx::raw_sql(
        "create function refuse_poison() returns trigger language plpgsql as $$ \
         begin if new.account_id = 'poison' then raise exception 'poisoned'; end if; \
         return new; end $$; \
         create trigger refuse_poison before insert on credit_ledger \
           for each row execute function refuse_poison();",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    let ledger = Ledger::start(
        pool.clone(),
        LedgerConfig {
            committers: 1,
            ..LedgerConfig::default()
        },
    )
    .await
    .expect("ledger");
    // Hold `blocker`'s row so the only committer waits inside its transaction while the three
    // other accounts' batches queue up behind it.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("select 1 from credit_accounts where id = 'blocker' for update")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let blocked = tokio::spawn({
        let ledger = ledger.clone();
        async move { ledger.apply(request("blocker", charge(1))).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting: Vec<_> = ["a", "poison", "z"]
        .into_iter()
        .map(|id| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.apply(request(id, charge(10))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ledger.commit_queue(),
        3,
        "three batches wait for the committer"
    );
    holder.rollback().await.expect("release");

    let blocker = blocked.await.expect("join").expect("outcome");
    assert!(blocker.result.is_ok());
    let mut results = Vec::new();
    for handle in waiting {
        results.push(handle.await.expect("join").expect("outcome").result);
    }
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_err(), "the poisoned account fails");
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(balances(&pool, "a").await.0, 90);
    assert_eq!(balances(&pool, "z").await.0, 90);
    assert_eq!(
        balances(&pool, "poison").await.0,
        100,
        "nothing of it applied"
    );
    let transactions: i64 = sqlx::query_scalar(
        "select count(distinct xmin::text) from credit_ledger \
          where account_id in ('a', 'z') and kind = 'charge'",
    )
    .fetch_one(&pool)
    .await
    .expect("xmin");
    assert_eq!(transactions, 1, "a and z committed in one transaction");
}

/// Many accounts charged at once through group commit: every charge applied exactly once and
/// every balance equals its ledger.
#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn concurrent_charges_over_many_accounts_all_apply_once(pool: PgPool) {
    let ids: Vec<String> = (0..40).map(|n| format!("acct-{n:02}")).collect();
    for id in &ids {
        account(&pool, id, 1_000).await;
    }
    let ledger = Ledger::start(pool.clone(), LedgerConfig::default())
        .await
        .expect("ledger");
    let mut handles = Vec::new();
    for round in 0..5 {
        for id in &ids {
            let (ledger, id) = (ledger.clone(), id.clone());
            handles.push(tokio::spawn(async move {
                ledger.apply(request(&id, charge(round + 1))).await
            }));
        }
    }
    for handle in handles {
        let outcome = handle.await.expect("join").expect("outcome");
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    }
    for id in &ids {
        assert_eq!(balances(&pool, id).await.0, 1_000 - 15, "{id}");
        assert_eq!(rows(&pool, id, "charge").await, 5, "{id}");
    }
    let groups: i64 = sqlx::query_scalar(
        "select count(distinct xmin::text) from credit_ledger where kind = 'charge'",
    )
    .fetch_one(&pool)
    .await
    .expect("xmin");
    assert!(groups < 200, "200 charges took {groups} transactions");
}
