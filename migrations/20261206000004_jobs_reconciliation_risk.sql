-- Periodic jobs run by one node at a time, T+1 reconciliation against WeChat's trade bill, and
-- recharge risk control.

-- One row per periodic job: its schedule's next run (so a job due once a day runs once a day
-- whichever node holds the lock), its last run, and the fencing token of the run allowed to
-- write (a holder whose lease ran out is refused).
create table jobs (
    name             text primary key check (name ~ '^[a-z][a-z0-9_.]{0,63}$'),
    fence            bigint not null default 0,
    next_run_at      timestamptz,
    running_on       text,
    last_started_at  timestamptz,
    last_finished_at timestamptz,
    last_outcome     text check (last_outcome in ('succeeded', 'failed')),
    last_duration_ms bigint,
    last_summary     text check (length(last_summary) <= 1000),
    runs             bigint not null default 0,
    failures         bigint not null default 0
);

-- A reconciliation of one Beijing day against WeChat's ALL bill. Re-running a day replaces its
-- items and updates the run (idempotent).
create table reconciliation_runs (
    bill_date        date primary key,
    status           text not null check (status in ('balanced', 'flagged', 'failed')),
    bill_hash        text,
    bill_rows        integer not null default 0,
    counts           jsonb not null default '{}',
    -- Sums in fen per class.
    sums             jsonb not null default '{}',
    error            text check (length(error) <= 1000),
    runs             integer not null default 1,
    started_at       timestamptz not null,
    finished_at      timestamptz not null default now()
);

create table reconciliation_items (
    id                bigint generated always as identity primary key,
    bill_date         date not null references reconciliation_runs (bill_date) on delete cascade,
    class             text not null check (class in ('matched', 'missing_local', 'missing_remote',
                                                       'amount_mismatch')),
    out_trade_no      text not null,
    order_id          uuid references payment_orders (id),
    transaction_id    text,
    local_amount_fen  bigint,
    bill_amount_fen   bigint,
    -- What was done: `credited` (a missing_local paid here now), `already_credited`,
    -- `next_day_bill` (found in D+1's bill), `flagged`.
    action            text not null,
    detail            jsonb
);

create index reconciliation_items_date on reconciliation_items (bill_date, class);

-- Risk control.
create table risk_blocks (
    id          uuid primary key,
    kind        text not null check (kind in ('user', 'ip', 'openid')),
    value       text not null check (length(value) between 1 and 128),
    reason      text not null check (length(reason) between 1 and 500),
    created_by  text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz,
    removed_at  timestamptz,
    removed_by  text
);

create index risk_blocks_active on risk_blocks (kind, value) where removed_at is null;

create table risk_decisions (
    id           bigint generated always as identity primary key,
    user_id      text,
    client_ip    inet,
    order_id     uuid,
    amount_fen   bigint,
    rule         text not null check (length(rule) <= 64),
    outcome      text not null check (outcome in ('allow', 'deny', 'review')),
    reason_code  text check (length(reason_code) <= 64),
    detail       jsonb,
    created_at   timestamptz not null default now()
);

create index risk_decisions_user on risk_decisions (user_id, created_at desc);

alter table payment_orders
    add column review_reason text check (length(review_reason) <= 200);
create index payment_orders_payer on payment_orders (payer_openid, paid_at) where payer_openid is not null;
create index payment_orders_success on payment_orders (success_time) where success_time is not null;
