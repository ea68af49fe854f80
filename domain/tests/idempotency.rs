//! Idempotency keys in real PostgreSQL: claims, leases, completion, release, purge.

use domain::idempotency::{
    Claim, KeyPolicy, KeyRef, StoredResponse, claim, complete, fingerprint, purge_expired, release,
};
use sqlx::PgPool;
use std::time::Duration;

fn key(name: &str) -> KeyRef {
    KeyRef {
        caller_id: "alice".into(),
        route: "POST /api/v1/credits/charge".into(),
        key: name.into(),
    }
}

const POLICY: KeyPolicy = KeyPolicy {
    ttl: Duration::from_secs(86_400),
    lease: Duration::from_secs(30),
};

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_key_is_acquired_then_in_flight_then_replayed(pool: PgPool) {
    let body = fingerprint(br#"{"amount":5}"#);

    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::Acquired
    );
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

    let stored = StoredResponse {
        status: 201,
        body: b"{\"entry_id\":1}".to_vec(),
    };
    complete(&pool, &key("k"), &stored).await.expect("complete");

    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::Replay(stored)
    );
    assert_eq!(
        claim(&pool, &key("k"), &other, POLICY)
            .await
            .expect("claim"),
        Claim::Reused
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn keys_are_scoped_to_the_caller_and_route(pool: PgPool) {
    let body = fingerprint(b"{}");
    let bob = KeyRef {
        caller_id: "bob".into(),
        ..key("k")
    };
    let refund = KeyRef {
        route: "POST /api/v1/credits/refund".into(),
        ..key("k")
    };

    for scoped in [key("k"), bob, refund] {
        assert_eq!(
            claim(&pool, &scoped, &body, POLICY).await.expect("claim"),
            Claim::Acquired
        );
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
    assert_eq!(
        claim(&pool, &key("k"), &body, short).await.expect("claim"),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(20)).await;

    let other = fingerprint(br#"{"amount":6}"#);
    assert_eq!(
        claim(&pool, &key("k"), &other, POLICY)
            .await
            .expect("claim"),
        Claim::Reused
    );
    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        claim(&pool, &key("k"), &body, POLICY).await.expect("claim"),
        Claim::InFlight
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn a_released_key_can_be_claimed_again_but_a_completed_one_is_kept(pool: PgPool) {
    let body = fingerprint(b"{}");
    claim(&pool, &key("a"), &body, POLICY).await.expect("claim");
    release(&pool, &key("a")).await.expect("release");
    assert_eq!(
        claim(&pool, &key("a"), &body, POLICY).await.expect("claim"),
        Claim::Acquired
    );

    let stored = StoredResponse {
        status: 402,
        body: b"{}".to_vec(),
    };
    complete(&pool, &key("a"), &stored).await.expect("complete");
    release(&pool, &key("a")).await.expect("release is a no-op");
    assert_eq!(
        claim(&pool, &key("a"), &body, POLICY).await.expect("claim"),
        Claim::Replay(stored)
    );
}

#[sqlx::test(migrator = "domain::db::MIGRATOR")]
async fn expired_keys_are_purged_and_their_names_reusable(pool: PgPool) {
    let body = fingerprint(b"{}");
    claim(&pool, &key("old"), &body, POLICY)
        .await
        .expect("claim");
    claim(&pool, &key("fresh"), &body, POLICY)
        .await
        .expect("claim");
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
    assert_eq!(
        claim(&pool, &key("old"), &fingerprint(b"[1]"), POLICY)
            .await
            .expect("claim"),
        Claim::Acquired
    );
}
