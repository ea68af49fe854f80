//! Idempotency keys in real PostgreSQL: claims with owner tokens, leases, completion only by the
//! owning claim, release, purge.

use domain::idempotency::{
    Claim, Claimed, Claimer, KeyPolicy, KeyRef, StoredResponse, claim, complete, complete_many,
    fingerprint, lock_claims, purge_expired, release,
};
use sqlx::PgPool;
use std::time::Duration;

fn key(name: &str) -> KeyRef {
    KeyRef {
        caller_id: "alice".into(),
        account_id: "alice".into(),
        route: "POST /api/v1/credits/charge".into(),
        key: name.into(),
    }
}

const POLICY: KeyPolicy = KeyPolicy {
    ttl: Duration::from_secs(86_400),
    lease: Duration::from_secs(30),
};

async fn acquire(pool: &PgPool, key: &KeyRef, body: &[u8; 32], policy: KeyPolicy) -> Claimed {
    match claim(pool, key, body, policy).await.expect("claim") {
        Claim::Acquired(claimed) => claimed,
        other => panic!("expected to acquire {key:?}, got {other:?}"),
    }
}

fn answer(status: u16) -> StoredResponse {
    StoredResponse {
        status,
        body: format!("{{\"status\":{status}}}").into_bytes(),
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_key_is_acquired_then_in_flight_then_replayed(pool: PgPool) {
    let body = fingerprint(br#"{"amount":5}"#);

    let claimed = acquire(&pool, &key("k"), &body, POLICY).await;
    assert_eq!(claimed.key, key("k"));
    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::InFlight
    );
    let other = fingerprint(br#"{"amount":6}"#);
    assert_eq!(
        claim(&pool, &key("k"), &other, POLICY)
            .await
            .expect("claim"),
        Claim::Reused
    );

    complete(&pool, &claimed, &answer(201))
        .await
        .expect("complete");

    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::Replay(answer(201))
    );
    assert_eq!(
        claim(&pool, &key("k"), &other, POLICY)
            .await
            .expect("claim"),
        Claim::Reused
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn keys_are_scoped_to_the_caller_its_account_and_the_route(pool: PgPool) {
    let body = fingerprint(b"{}");
    let bob = KeyRef {
        caller_id: "bob".into(),
        ..key("k")
    };
    let other_account = KeyRef {
        account_id: "alice-studio".into(),
        ..key("k")
    };
    let refund = KeyRef {
        route: "POST /api/v1/credits/refund".into(),
        ..key("k")
    };

    let first = acquire(&pool, &key("k"), &body, POLICY).await;
    complete(&pool, &first, &answer(201))
        .await
        .expect("complete");
    for scoped in [bob, other_account, refund] {
        acquire(&pool, &scoped, &body, POLICY).await;
    }
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn an_abandoned_claim_is_taken_over_after_its_lease_but_only_with_the_same_body(
    pool: PgPool,
) {
    let short = KeyPolicy {
        lease: Duration::from_millis(1),
        ..POLICY
    };
    let body = fingerprint(br#"{"amount":5}"#);
    let first = acquire(&pool, &key("k"), &body, short).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let other = fingerprint(br#"{"amount":6}"#);
    assert_eq!(
        claim(&pool, &key("k"), &other, POLICY)
            .await
            .expect("claim"),
        Claim::Reused
    );
    let second = acquire(&pool, &key("k"), &body, POLICY).await;
    assert_ne!(first.token, second.token);
    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::InFlight
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_claim_taken_over_can_neither_complete_nor_release_the_key(pool: PgPool) {
    let short = KeyPolicy {
        lease: Duration::from_millis(1),
        ..POLICY
    };
    let body = fingerprint(br#"{"amount":5}"#);
    let stale = acquire(&pool, &key("k"), &body, short).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let current = acquire(&pool, &key("k"), &body, POLICY).await;

    let mut tx = pool.begin().await.expect("begin");
    assert_eq!(
        lock_claims(&mut tx, &[&stale, &current])
            .await
            .expect("lock"),
        vec![false, true]
    );
    drop(tx);
    assert!(
        complete(&pool, &stale, &answer(201)).await.is_err(),
        "the stale claim must not complete the key"
    );
    release(&pool, &stale).await.expect("release");
    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::InFlight,
        "the stale claim's release must leave the current claim alone"
    );

    complete(&pool, &current, &answer(201))
        .await
        .expect("complete");
    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::Replay(answer(201))
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn completing_a_batch_with_one_lost_claim_fails_and_writes_nothing(pool: PgPool) {
    let body = fingerprint(b"{}");
    let kept = acquire(&pool, &key("kept"), &body, POLICY).await;
    let lost = acquire(&pool, &key("lost"), &body, POLICY).await;
    release(&pool, &lost).await.expect("release");

    let mut tx = pool.begin().await.expect("begin");
    let done = complete_many(&mut tx, &[(&kept, &answer(201)), (&lost, &answer(201))]).await;
    assert!(done.is_err(), "a lost claim must fail the completion");
    drop(tx);
    assert_eq!(
        claim(&pool, &key("kept"), &body, POLICY)
            .await
            .expect("claim"),
        Claim::InFlight,
        "the rolled-back completion left the kept key in flight"
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_released_key_can_be_claimed_again_but_a_completed_one_is_kept(pool: PgPool) {
    let body = fingerprint(b"{}");
    let first = acquire(&pool, &key("a"), &body, POLICY).await;
    release(&pool, &first).await.expect("release");
    let second = acquire(&pool, &key("a"), &body, POLICY).await;

    complete(&pool, &second, &answer(402))
        .await
        .expect("complete");
    release(&pool, &second).await.expect("release is a no-op");
    assert_eq!(
        claim(&pool, &key("a"), &body, POLICY).await.expect("claim"),
        Claim::Replay(answer(402))
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn expired_keys_are_purged_and_their_names_reusable(pool: PgPool) {
    let body = fingerprint(b"{}");
    acquire(&pool, &key("old"), &body, POLICY).await;
    acquire(&pool, &key("fresh"), &body, POLICY).await;
    sqlx::query("update idempotency_keys set created_at = now() - interval '3 days', expires_at = now() - interval '2 days' where key = 'old'")
        .execute(&pool)
        .await
        .expect("age the key");

    assert_eq!(purge_expired(&pool, 100).await.expect("purge"), 1);

    let left: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(left, vec!["fresh".to_owned()]);
    acquire(&pool, &key("old"), &fingerprint(b"[1]"), POLICY).await;
}

/// Concurrent claims go out together: distinct keys are all acquired once, a key sent twice at
/// once is acquired by one and in flight for the other, a completed key replays, another body is
/// refused as reused — the same answers as one claim at a time.
#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn batched_claims_answer_as_single_claims_do(pool: PgPool) {
    let body = fingerprint(br#"{"amount":5}"#);
    let done = acquire(&pool, &key("done"), &body, POLICY).await;
    complete(&pool, &done, &answer(201))
        .await
        .expect("complete");
    let claimer = Claimer::start(pool.clone(), 1, 256);

    let mut handles = Vec::new();
    let names: Vec<String> = (0..100)
        .map(|n| format!("k{n}"))
        .chain(["twice".to_owned(), "twice".to_owned(), "done".to_owned()])
        .collect();
    for name in &names {
        let (claimer, key) = (claimer.clone(), key(name));
        handles.push(tokio::spawn(async move {
            claimer.claim(&key, &body, POLICY).await.expect("claim")
        }));
    }
    let other = fingerprint(br#"{"amount":6}"#);
    let reused = claimer
        .claim(&key("done"), &other, POLICY)
        .await
        .expect("claim");
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.expect("join"));
    }
    for (name, answer) in names.iter().zip(&answers).take(100) {
        assert!(
            matches!(answer, Claim::Acquired(claimed) if &claimed.key.key == name),
            "{name}: {answer:?}"
        );
    }
    let twice: Vec<_> = answers[100..102].iter().collect();
    assert_eq!(
        twice
            .iter()
            .filter(|a| matches!(a, Claim::Acquired(_)))
            .count(),
        1,
        "{twice:?}"
    );
    assert!(twice.iter().any(|a| **a == Claim::InFlight), "{twice:?}");
    assert_eq!(answers[102], Claim::Replay(answer(201)));
    assert_eq!(reused, Claim::Reused);
    let tokens: i64 = sqlx::query_scalar(
        "select count(distinct owner_token) from idempotency_keys where key like 'k%'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(tokens, 100, "one owner per key");
}
