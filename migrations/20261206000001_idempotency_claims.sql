-- Idempotency claims with an owner: exactly one commit per key, whatever the timing.
--
-- A claim is taken with a fresh owner token. The transaction that carries the act completes the
-- key only where that token still owns it and it is still in flight (and locks it first, so no
-- takeover can slip in before its commit); a claim that was released or taken over after its
-- lease ran out makes the act roll back instead of committing a second time.
--
-- A key's scope also names the account the caller's token acts as, so a token naming another
-- account never replays this account's answer.

alter table idempotency_keys
    add column account_id  text not null default '',
    add column owner_token uuid not null default gen_random_uuid();

comment on column idempotency_keys.account_id is
    'The account the caller''s token acts as ('''' when it names none): part of the key''s scope.';
comment on column idempotency_keys.owner_token is
    'The current claim: only the transaction holding this token may complete the key.';

alter table idempotency_keys drop constraint idempotency_keys_pkey;
alter table idempotency_keys add primary key (caller_id, account_id, route, key);
