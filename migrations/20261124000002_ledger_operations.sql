-- Ledger operations: idempotency leases and the lookups refunds and holds need.

-- An in-flight claim is a lease: when the node that claimed a key dies before completing it, the
-- lease runs out and a retry with the same body takes the key over. Safe because the ledger write
-- and the key's completion commit in one transaction: a key still in flight wrote nothing.
alter table idempotency_keys
    add column lease_expires_at timestamptz not null default now() + interval '30 seconds';

comment on column idempotency_keys.lease_expires_at is
    'While in flight: when another request with the same key and body may take the key over.';

-- Refunds of a charge are summed under the account lock to keep their total within the charge.
create index credit_ledger_refunds on credit_ledger (related_entry_id) where kind = 'refund';
