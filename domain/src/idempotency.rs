//! Idempotency keys in PostgreSQL: claim a key (a lease while in flight, with an owner token),
//! complete it with the full response in the same transaction as the act, replay it, release it
//! after a transient failure, purge expired ones.
//!
//! The rule that makes a key commit exactly once, whatever the timing: the transaction carrying
//! the act first locks the key where its own token still owns it and it is still in flight
//! ([`lock_claims`]); a claim that was released or taken over (its lease ran out) is not found,
//! and the act is not applied. The lock holds until commit, so no takeover slips in between.

use crate::{DomainError, DomainResult};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

/// Identifies a key: scoped to (caller `sub`, the account its token acts as, route).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    /// The caller's `sub`.
    pub caller_id: String,
    /// The account the caller's token acts as (empty when it names none).
    pub account_id: String,
    /// The route, e.g. `POST /api/v1/credits/charge`.
    pub route: String,
    /// The `Idempotency-Key` header.
    pub key: String,
}

/// A response as stored and replayed, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Exact body bytes.
    pub body: Vec<u8>,
}

/// Turns an act's result into the HTTP response stored with its key. Supplied by the gateway,
/// which owns the wire shapes and the mapping of errors to statuses and problem bodies.
pub type Render<T> =
    std::sync::Arc<dyn Fn(Result<&T, &DomainError>) -> StoredResponse + Send + Sync>;

/// A key this request owns: the key and the token of its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The key.
    pub key: KeyRef,
    /// The owner token written with the claim; only its holder may complete or release the key.
    pub token: Uuid,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key now: go ahead, then complete or release it.
    Acquired(Claimed),
    /// The key was completed before with the same body: send this.
    Replay(StoredResponse),
    /// The first request with this key is still being processed.
    InFlight,
    /// The key was used with another body.
    Reused,
}

/// How long keys live and how long an in-flight claim is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Time a key (and its stored response) is kept.
    pub ttl: Duration,
    /// Time an unfinished claim blocks others before it may be taken over.
    pub lease: Duration,
}

/// Whether `key` is an acceptable `Idempotency-Key`: 1-255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// SHA-256 of the canonical form of a request body: JSON with object keys sorted and no
/// insignificant whitespace, so `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are the same request.
/// A body that is not JSON is hashed as its bytes.
pub fn fingerprint(body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => write_canonical(&value, &mut hasher),
        Err(_) => {
            hasher.update(b"raw:");
            hasher.update(body);
        }
    }
    hasher.finalize().into()
}

fn write_canonical(value: &serde_json::Value, hasher: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                hasher.update(Value::String(key.clone()).to_string().as_bytes());
                hasher.update(b":");
                write_canonical(&map[key], hasher);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                write_canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

/// Claims `key` for a request whose body has `fingerprint`. A key nobody holds, an expired key,
/// or an abandoned claim (lease over) with the same body is acquired with a fresh owner token;
/// otherwise the stored state decides.
pub async fn claim(
    pool: &PgPool,
    key: &KeyRef,
    fingerprint: &[u8; 32],
    policy: KeyPolicy,
) -> DomainResult<Claim> {
    let token = Uuid::new_v4();
    // The claim commits asynchronously (no WAL flush of its own): WAL is written in order, so
    // the synchronous commit that later stores the answer (with the ledger rows) flushes the
    // claim first; a claim lost in a crash had nothing committed after it, and the retry simply
    // claims again. This halves the fsyncs per charge.
    let acquired = sqlx::query(
        "insert into idempotency_keys \
           (caller_id, account_id, route, key, fingerprint, status, expires_at, \
            lease_expires_at, owner_token) \
         select $1, $2, $3, $4, $5, 'in_flight', now() + $6, now() + $7, $8 \
           from (select set_config('synchronous_commit', 'off', true)) as async_commit \
         on conflict (caller_id, account_id, route, key) do update \
           set fingerprint = excluded.fingerprint, status = 'in_flight', response_status = null, \
               response_body = null, completed_at = null, created_at = now(), \
               expires_at = excluded.expires_at, lease_expires_at = excluded.lease_expires_at, \
               owner_token = excluded.owner_token \
         where idempotency_keys.expires_at < now() \
            or (idempotency_keys.status = 'in_flight' \
                and idempotency_keys.lease_expires_at < now() \
                and idempotency_keys.fingerprint = excluded.fingerprint) \
         returning 1",
    )
    .bind(&key.caller_id)
    .bind(&key.account_id)
    .bind(&key.route)
    .bind(&key.key)
    .bind(&fingerprint[..])
    .bind(policy.ttl)
    .bind(policy.lease)
    .bind(token)
    .fetch_optional(pool)
    .await?;
    if acquired.is_some() {
        return Ok(Claim::Acquired(Claimed {
            key: key.clone(),
            token,
        }));
    }
    let Some(row) = sqlx::query(
        "select fingerprint, status, response_status, response_body from idempotency_keys \
         where caller_id = $1 and account_id = $2 and route = $3 and key = $4",
    )
    .bind(&key.caller_id)
    .bind(&key.account_id)
    .bind(&key.route)
    .bind(&key.key)
    .fetch_optional(pool)
    .await?
    else {
        // Released or purged between the two statements: try once more from scratch.
        return Box::pin(claim(pool, key, fingerprint, policy)).await;
    };
    if row.get::<Vec<u8>, _>("fingerprint") != fingerprint[..] {
        return Ok(Claim::Reused);
    }
    match row.get::<String, _>("status").as_str() {
        "completed" => Ok(Claim::Replay(StoredResponse {
            status: u16::try_from(row.get::<i16, _>("response_status")).unwrap_or(500),
            body: row.get("response_body"),
        })),
        _ => Ok(Claim::InFlight),
    }
}

/// In the act's transaction, before anything is written: locks each claim that its token still
/// owns and that is still in flight, and says which ones. An act whose claim is not held must
/// not be applied (its key was released or taken over). The row locks last until the
/// transaction ends, so the answer is whether the claim is still owned at commit.
pub async fn lock_claims(conn: &mut PgConnection, claims: &[&Claimed]) -> DomainResult<Vec<bool>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Claimed) -> &str| claims.iter().map(|c| f(c)).collect::<Vec<&str>>();
    let tokens: Vec<Uuid> = claims.iter().map(|claim| claim.token).collect();
    let held: Vec<Uuid> = sqlx::query_scalar(
        "select k.owner_token from idempotency_keys k \
           join unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[]) \
                as u(caller_id, account_id, route, key, token) \
             on k.caller_id = u.caller_id and k.account_id = u.account_id \
            and k.route = u.route and k.key = u.key and k.owner_token = u.token \
          where k.status = 'in_flight' \
          order by k.caller_id, k.account_id, k.route, k.key \
            for update of k",
    )
    .bind(column(|c| &c.key.caller_id))
    .bind(column(|c| &c.key.account_id))
    .bind(column(|c| &c.key.route))
    .bind(column(|c| &c.key.key))
    .bind(&tokens)
    .fetch_all(conn)
    .await?;
    Ok(tokens.iter().map(|token| held.contains(token)).collect())
}

/// The claim was lost before the act could commit: released after its caller went away, or
/// taken over by a retry once its lease ran out. Nothing of the act was written.
pub fn claim_lost() -> DomainError {
    DomainError::Conflict(
        "this request's claim on its Idempotency-Key ended before it could be applied (the \
         request timed out or was abandoned); nothing was written: retry with the same key"
            .into(),
    )
}

/// Completes claimed keys with their responses, on the connection of the act's transaction, where
/// each claim's token still owns its key and it is still in flight. Fails with [`claim_lost`]
/// when any claim is no longer held: the caller must roll the transaction back.
pub async fn complete_many(
    conn: &mut PgConnection,
    completions: &[(&Claimed, &StoredResponse)],
) -> DomainResult<()> {
    if completions.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Claimed) -> &str| {
        completions
            .iter()
            .map(|(claim, _)| f(claim))
            .collect::<Vec<&str>>()
    };
    let tokens: Vec<Uuid> = completions.iter().map(|(claim, _)| claim.token).collect();
    let statuses: Vec<i16> = completions
        .iter()
        .map(|(_, response)| response.status as i16)
        .collect();
    let bodies: Vec<&[u8]> = completions
        .iter()
        .map(|(_, response)| response.body.as_slice())
        .collect();
    let done = sqlx::query(
        "update idempotency_keys k \
            set status = 'completed', response_status = u.status, response_body = u.body, \
                completed_at = now() \
           from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::int2[], \
                       $7::bytea[]) as u(caller_id, account_id, route, key, token, status, body) \
          where k.caller_id = u.caller_id and k.account_id = u.account_id \
            and k.route = u.route and k.key = u.key \
            and k.owner_token = u.token and k.status = 'in_flight'",
    )
    .bind(column(|c| &c.key.caller_id))
    .bind(column(|c| &c.key.account_id))
    .bind(column(|c| &c.key.route))
    .bind(column(|c| &c.key.key))
    .bind(&tokens)
    .bind(&statuses)
    .bind(&bodies)
    .execute(conn)
    .await?;
    if done.rows_affected() != completions.len() as u64 {
        return Err(claim_lost());
    }
    Ok(())
}

/// Completes one key in its own transaction (for answers that touch nothing else: validation
/// failures, permission refusals).
pub async fn complete(
    pool: &PgPool,
    claim: &Claimed,
    response: &StoredResponse,
) -> DomainResult<()> {
    let mut conn = pool.acquire().await?;
    complete_many(&mut conn, &[(claim, response)]).await
}

/// The condition naming exactly one claim: its key and its owner token (`$1`…`$5`).
const BY_CLAIM: &str = "caller_id = $1 and account_id = $2 and route = $3 and key = $4 \
                        and owner_token = $5";

/// A query over [`BY_CLAIM`] with `claim`'s values bound.
fn by_claim<'q>(
    sql: &'q str,
    claim: &'q Claimed,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(&claim.key.caller_id)
        .bind(&claim.key.account_id)
        .bind(&claim.key.route)
        .bind(&claim.key.key)
        .bind(claim.token)
}

/// The answer `claim` itself completed its key with, if it did: for a caller that learns its
/// outcome only as an error after the act's own transaction stored the answer.
pub async fn stored_by(pool: &PgPool, claim: &Claimed) -> DomainResult<Option<StoredResponse>> {
    let sql = format!(
        "select response_status, response_body from idempotency_keys \
         where {BY_CLAIM} and status = 'completed'"
    );
    let row = by_claim(&sql, claim).fetch_optional(pool).await?;
    Ok(row.map(|row| StoredResponse {
        status: u16::try_from(row.get::<i16, _>("response_status")).unwrap_or(500),
        body: row.get("response_body"),
    }))
}

/// Gives a claim up after a transient failure or an abandoned request, so a retry can run. Only
/// the claim's own token releases it, and a completed key is kept. Safe while the act may still
/// be running: an act that has not locked its claim yet finds it gone and is not applied; one
/// that has makes this wait for its commit, after which the key is completed and stays.
pub async fn release(pool: &PgPool, claim: &Claimed) -> DomainResult<()> {
    let sql = format!("delete from idempotency_keys where {BY_CLAIM} and status = 'in_flight'");
    by_claim(&sql, claim).execute(pool).await?;
    Ok(())
}

/// Deletes up to `limit` expired keys; returns how many.
pub async fn purge_expired(pool: &PgPool, limit: i64) -> DomainResult<u64> {
    let result = sqlx::query(
        "delete from idempotency_keys where ctid in \
           (select ctid from idempotency_keys where expires_at < now() limit $1)",
    )
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_whitespace_do_not_change_the_fingerprint() {
        assert_eq!(
            fingerprint(br#"{"amount":5,"reason":"x","metadata":{"b":1,"a":[1,2]}}"#),
            fingerprint(br#"{ "metadata": {"a": [1, 2], "b": 1}, "reason": "x", "amount": 5 }"#)
        );
    }

    #[test]
    fn a_different_value_changes_the_fingerprint() {
        assert_ne!(
            fingerprint(br#"{"amount":5}"#),
            fingerprint(br#"{"amount":6}"#)
        );
        assert_ne!(fingerprint(br#"{"a":"1"}"#), fingerprint(br#"{"a":1}"#));
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        assert!(valid_key("0b6f3c2e-8f7a-4c55-9a55-1d2a3b4c5d6e"));
        assert!(valid_key(&"k".repeat(255)));
        for key in ["", "has space", "tab\t", "ключ", &"k".repeat(256)] {
            assert!(!valid_key(key), "{key}");
        }
    }
}

/// Claims of concurrent requests made together: one statement claims every key that is waiting
/// (a hot account's 128 concurrent charges cost one round trip, not 128). The keys it could not
/// take (held, completed, reused, repeated within the batch) go through [`claim`] one by one, which
/// reads their state. Same semantics as [`claim`], including the asynchronous commit.
#[derive(Debug, Clone)]
pub struct Claimer {
    queue: tokio::sync::mpsc::UnboundedSender<ClaimJob>,
    pool: PgPool,
}

#[derive(Debug)]
struct ClaimJob {
    key: KeyRef,
    fingerprint: [u8; 32],
    policy: KeyPolicy,
    reply: tokio::sync::oneshot::Sender<DomainResult<Claim>>,
}

impl Claimer {
    /// Starts `workers` claiming tasks taking up to `max_batch` keys per statement.
    pub fn start(pool: PgPool, workers: usize, max_batch: usize) -> Self {
        let (queue, receiver) = tokio::sync::mpsc::unbounded_channel();
        let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..workers.max(1) {
            tokio::spawn(run_claims(pool.clone(), receiver.clone(), max_batch.max(1)));
        }
        Self { queue, pool }
    }

    /// Claims `key` (see [`claim`]).
    pub async fn claim(
        &self,
        key: &KeyRef,
        fingerprint: &[u8; 32],
        policy: KeyPolicy,
    ) -> DomainResult<Claim> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = ClaimJob {
            key: key.clone(),
            fingerprint: *fingerprint,
            policy,
            reply,
        };
        if self.queue.send(job).is_err() {
            return claim(&self.pool, key, fingerprint, policy).await;
        }
        match answer.await {
            Ok(result) => result,
            // The batch's task is gone (a panic): nothing known was claimed for us; claim alone.
            Err(_) => claim(&self.pool, key, fingerprint, policy).await,
        }
    }
}

async fn run_claims(pool: PgPool, receiver: crate::queue::Shared<ClaimJob>, max_batch: usize) {
    while let Some(jobs) = crate::queue::take_batch(&receiver, max_batch).await {
        metrics::histogram!("idempotency_claim_batch_size").record(jobs.len() as f64);
        if let Err(error) = tokio::spawn(claim_batch(pool.clone(), jobs)).await {
            tracing::error!(%error, "an idempotency claim batch panicked");
        }
    }
}

/// One statement for the batch's distinct keys of one policy; the rest one by one.
async fn claim_batch(pool: PgPool, jobs: Vec<ClaimJob>) {
    let policy = jobs[0].policy;
    let mut seen = std::collections::HashSet::new();
    let (batched, single): (Vec<ClaimJob>, Vec<ClaimJob>) = jobs
        .into_iter()
        .partition(|job| job.policy == policy && seen.insert(job.key.clone()));
    let tokens: Vec<Uuid> = batched.iter().map(|_| Uuid::new_v4()).collect();
    let acquired = if batched.len() < 2 {
        None
    } else {
        let column =
            |f: fn(&KeyRef) -> &str| batched.iter().map(|job| f(&job.key)).collect::<Vec<&str>>();
        let fingerprints: Vec<&[u8]> = batched.iter().map(|job| &job.fingerprint[..]).collect();
        sqlx::query_scalar::<_, Uuid>(
            "insert into idempotency_keys \
               (caller_id, account_id, route, key, fingerprint, status, expires_at, \
                lease_expires_at, owner_token) \
             select u.caller_id, u.account_id, u.route, u.key, u.fingerprint, 'in_flight', \
                    now() + $6, now() + $7, u.token \
               from (select set_config('synchronous_commit', 'off', true)) as async_commit, \
                    unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $8::uuid[]) \
                    as u(caller_id, account_id, route, key, fingerprint, token) \
             on conflict (caller_id, account_id, route, key) do update \
               set fingerprint = excluded.fingerprint, status = 'in_flight', \
                   response_status = null, response_body = null, completed_at = null, \
                   created_at = now(), expires_at = excluded.expires_at, \
                   lease_expires_at = excluded.lease_expires_at, \
                   owner_token = excluded.owner_token \
             where idempotency_keys.expires_at < now() \
                or (idempotency_keys.status = 'in_flight' \
                    and idempotency_keys.lease_expires_at < now() \
                    and idempotency_keys.fingerprint = excluded.fingerprint) \
             returning owner_token",
        )
        .bind(column(|key| &key.caller_id))
        .bind(column(|key| &key.account_id))
        .bind(column(|key| &key.route))
        .bind(column(|key| &key.key))
        .bind(&fingerprints)
        .bind(policy.ttl)
        .bind(policy.lease)
        .bind(&tokens)
        .fetch_all(&pool)
        .await
        .ok()
    };
    let mut rest = single;
    match acquired {
        Some(acquired) => {
            for (job, token) in batched.into_iter().zip(tokens) {
                if acquired.contains(&token) {
                    let claimed = Claimed {
                        key: job.key,
                        token,
                    };
                    let _ = job.reply.send(Ok(Claim::Acquired(claimed)));
                } else {
                    rest.push(job);
                }
            }
        }
        // One alone, or the statement failed: each on its own, with its own error.
        None => rest.extend(batched),
    }
    for job in rest {
        let pool = pool.clone();
        tokio::spawn(async move {
            let result = claim(&pool, &job.key, &job.fingerprint, job.policy).await;
            let _ = job.reply.send(result);
        });
    }
}
