-- WeChat Pay recharges and WeChat QR login.
--
-- payment_orders (from the phase 2 schema) gains what the recharge flow stores: the credits the
-- order grants (fixed when it is placed), WeChat's answers, the notification that credited it,
-- the query fallback's schedule, and the status names of the contract (`pending`, not `created`).
-- A paid order's ledger row is written in the same transaction that marks it paid
-- (`credited_entry_id` is unique), so an order credits its account at most once.

alter table payment_orders drop constraint payment_orders_status_check;
update payment_orders set status = 'pending' where status = 'created';
alter table payment_orders alter column status set default 'pending';
alter table payment_orders add constraint payment_orders_status_check
    check (status in ('pending', 'paid', 'closed', 'failed', 'refunded'));

alter table payment_orders
    -- Credits granted when paid: amount_fen × credits_per_fen at the time the order was placed.
    add column credits            bigint not null default 0 check (credits >= 0),
    add column credits_per_fen    bigint not null default 1 check (credits_per_fen > 0),
    add column description        text not null default 'credits'
                                      check (length(description) between 1 and 127),
    -- The payer's address as the hub saw it (sent to WeChat in scene_info).
    add column payer_client_ip    inet,
    -- WeChat's error `code` when placing the order failed (status `failed`).
    add column failure_code       text check (length(failure_code) <= 64),
    -- From the notification or query that credited the order.
    add column notification_id    text unique check (length(notification_id) <= 64),
    add column credited_by        text check (credited_by in ('notification', 'query', 'reconciliation')),
    add column payer_openid       text check (length(payer_openid) <= 128),
    add column success_time       timestamptz,
    -- The query fallback: when to ask WeChat next, and how many times it asked.
    add column next_query_at      timestamptz,
    add column query_attempts     integer not null default 0 check (query_attempts >= 0),
    add column closed_at          timestamptz,
    add constraint payment_orders_credits_fixed check (credits = amount_fen * credits_per_fen or credits = 0);

create index payment_orders_user on payment_orders (user_id, created_at desc, id desc);
create index payment_orders_due on payment_orders (next_query_at) where status = 'pending';
create index payment_orders_status on payment_orders (status, created_at desc, id desc);

-- QR login states when no Redis is configured (with Redis they live there): single use, bound
-- to the browser that asked for them, ten minutes at most.
create table wechat_login_states (
    state       text primary key check (length(state) between 16 and 64),
    -- SHA-256 (hex) of the browser-binding cookie.
    binding     text not null check (length(binding) = 64),
    redirect    text not null check (length(redirect) between 1 and 512),
    expires_at  timestamptz not null
);
