-- Phase 2 schema: identity, credits ledger, licenses, tasks, payments and audit.
--
-- Design rules, enforced here rather than trusted to the application:
-- * Balances change only through `credit_ledger`: inserting a ledger row applies its deltas to
--   the account (trigger `credit_ledger_apply`), and a direct update of a balance column is refused
--   (trigger `credit_accounts_guard`). Hence "every balance change is one ledger row" and
--   "available = sum of the ledger amounts" hold by construction.
-- * Available, held and debt are never negative (CHECK), so an overdraft is a constraint violation
--   that rolls the statement back, never a silent negative balance.
-- * Append-only tables (ledger, task history, logs) refuse UPDATE, DELETE and TRUNCATE.

-- ---------------------------------------------------------------------------------------------
-- Shared helpers
-- ---------------------------------------------------------------------------------------------

create function refuse_modification() returns trigger
language plpgsql as $$
begin
    raise exception 'table % is append-only: % refused', tg_table_name, tg_op
        using errcode = 'restrict_violation';
end;
$$;

comment on function refuse_modification() is
    'Trigger body for append-only tables: any UPDATE, DELETE or TRUNCATE raises restrict_violation.';

create function touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Identity
-- ---------------------------------------------------------------------------------------------

create table users (
    -- The JWT `sub`: users are provisioned just in time on their first authenticated request.
    id             text primary key check (length(id) between 1 and 255),
    display_name   text not null check (length(display_name) between 1 and 100),
    -- Roles carried by the token that provisioned the user.
    roles          text[] not null check (
                       cardinality(roles) between 1 and 7
                       and roles <@ array['user', 'creator', 'operator', 'finance', 'auditor',
                                          'admin', 'service']::text[]),
    -- WeChat identities, set by the QR login flow; unique when present.
    wechat_openid  text unique check (length(wechat_openid) between 1 and 128),
    wechat_unionid text unique check (length(wechat_unionid) between 1 and 128),
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

create trigger users_touch before update on users
    for each row execute function touch_updated_at();

create table theme_preferences (
    user_id    text primary key references users (id) on delete cascade,
    mode       text not null check (mode in ('light', 'dark', 'system')),
    -- A named palette of the front end (`ocean`, `creator`, ...) or a `#rrggbb` colour.
    accent     text not null check (accent ~ '^(#[0-9a-f]{6}|[a-z][a-z0-9-]{0,31})$'),
    density    text not null check (density in ('comfortable', 'compact')),
    updated_at timestamptz not null default now()
);

create trigger theme_preferences_touch before update on theme_preferences
    for each row execute function touch_updated_at();

-- ---------------------------------------------------------------------------------------------
-- Credits
-- ---------------------------------------------------------------------------------------------

create table credit_accounts (
    -- The token's `account_id` claim (default: its `sub`).
    id         text primary key check (length(id) between 1 and 255),
    owner_id   text not null references users (id),
    -- Spendable credits: the sum of the account's ledger amounts.
    available  bigint not null default 0 check (available >= 0),
    -- Credits reserved by open holds: the sum of the open holds' amounts.
    held       bigint not null default 0 check (held >= 0),
    -- Shortfall of a supplementary deduction the account could not cover; repaid first by the
    -- next credit to the account.
    debt       bigint not null default 0 check (debt >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index credit_accounts_owner on credit_accounts (owner_id);

create table tasks (
    id                uuid primary key,
    owner_id          text not null references users (id),
    account_id        text not null references credit_accounts (id),
    task_type         text not null check (task_type ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    units             bigint not null check (units > 0),
    params            jsonb not null default '{}'::jsonb,
    status            text not null default 'queued'
                          check (status in ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    progress          smallint not null default 0 check (progress between 0 and 100),
    -- Sequence number of the task's latest event in task_state_history (0: none yet).
    seq               bigint not null default 0 check (seq >= 0),
    estimated_credits bigint not null check (estimated_credits >= 0),
    -- Units and credits actually consumed, known once the task succeeded.
    actual_units      bigint check (actual_units >= 0),
    actual_cost       bigint check (actual_cost >= 0),
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    finished_at       timestamptz,
    check ((status in ('succeeded', 'failed', 'canceled')) = (finished_at is not null)),
    check (status <> 'succeeded' or actual_cost is not null)
);

create index tasks_owner_created on tasks (owner_id, created_at desc, id desc);
create index tasks_status_created on tasks (status, created_at desc, id desc);
create index tasks_type_finished on tasks (task_type, finished_at) where status = 'succeeded';

create trigger tasks_touch before update on tasks
    for each row execute function touch_updated_at();

create table credit_holds (
    id              uuid primary key,
    account_id      text not null references credit_accounts (id),
    -- The task whose estimate this hold reserves; one hold per task.
    task_id         uuid unique references tasks (id),
    amount          bigint not null check (amount > 0),
    status          text not null default 'open' check (status in ('open', 'captured', 'released')),
    -- The actual cost settled against the hold (may exceed `amount`: supplementary deduction).
    captured_amount bigint check (captured_amount >= 0),
    created_at      timestamptz not null default now(),
    settled_at      timestamptz,
    check ((status = 'open') = (settled_at is null)),
    check ((status = 'captured') = (captured_amount is not null))
);

create index credit_holds_open on credit_holds (account_id) where status = 'open';

create table credit_ledger (
    id              bigint generated always as identity primary key,
    account_id      text not null references credit_accounts (id),
    kind            text not null check (kind in ('charge', 'refund', 'recharge', 'hold', 'capture',
                                                  'release', 'adjustment')),
    -- Signed change of `available` (negative takes credits away).
    amount          bigint not null,
    -- Signed change of `held` and of `debt` made by this row.
    held_delta      bigint not null default 0,
    debt_delta      bigint not null default 0,
    -- The account's balances right after this row, filled in by `credit_ledger_apply`.
    balance_after   bigint not null default 0 check (balance_after >= 0),
    held_after      bigint not null default 0 check (held_after >= 0),
    debt_after      bigint not null default 0 check (debt_after >= 0),
    -- What the row refers to: a task id, a payment order, an outside reference.
    reference       text check (length(reference) <= 255),
    -- The charge a refund returns.
    related_entry_id bigint references credit_ledger (id),
    hold_id         uuid references credit_holds (id),
    task_id         uuid references tasks (id),
    reason          text check (length(reason) <= 500),
    metadata        jsonb,
    actor_id        text not null,
    request_id      text,
    created_at      timestamptz not null default now(),
    -- The sign of each kind: what it may do to available / held / debt.
    check (
        (kind = 'charge'     and amount < 0 and held_delta = 0)
     or (kind = 'refund'     and amount > 0 and held_delta = 0 and debt_delta = 0
                             and related_entry_id is not null)
     or (kind = 'recharge'   and amount > 0 and held_delta = 0 and debt_delta = 0)
     or (kind = 'adjustment' and amount <> 0 and held_delta = 0 and debt_delta = 0)
     or (kind = 'hold'       and amount < 0 and held_delta = -amount and debt_delta = 0
                             and hold_id is not null)
     or (kind = 'release'    and amount > 0 and held_delta = -amount and debt_delta = 0
                             and hold_id is not null)
     or (kind = 'capture'    and held_delta < 0 and debt_delta >= 0 and hold_id is not null)
    ),
    -- A debt repayment is a charge row that lowers the debt by what it takes.
    check (kind <> 'charge' or debt_delta = 0 or debt_delta = amount)
);

comment on column credit_ledger.debt_delta is
    'Capture: shortfall added to the debt. Charge with reference ''debt_repayment'': -amount repaid.';

create index credit_ledger_account on credit_ledger (account_id, id desc);
create index credit_ledger_related on credit_ledger (related_entry_id) where related_entry_id is not null;

-- Applies a new ledger row to its account and records the balances after it. The account row is
-- locked by the UPDATE, so concurrent writers on one account are serialized by PostgreSQL.
create function credit_ledger_apply() returns trigger
language plpgsql as $$
declare
    acc credit_accounts%rowtype;
begin
    update credit_accounts
       set available = available + new.amount,
           held = held + new.held_delta,
           debt = debt + new.debt_delta,
           updated_at = now()
     where id = new.account_id
    returning * into acc;
    if not found then
        raise exception 'credit account % does not exist', new.account_id
            using errcode = 'foreign_key_violation';
    end if;
    new.balance_after := acc.available;
    new.held_after := acc.held;
    new.debt_after := acc.debt;
    return new;
end;
$$;

create trigger credit_ledger_apply before insert on credit_ledger
    for each row execute function credit_ledger_apply();

create trigger credit_ledger_append_only before update or delete on credit_ledger
    for each row execute function refuse_modification();
create trigger credit_ledger_no_truncate before truncate on credit_ledger
    for each statement execute function refuse_modification();

-- Balance columns change only from credit_ledger_apply (trigger depth > 1 there).
create function credit_accounts_guard() returns trigger
language plpgsql as $$
begin
    if (new.available, new.held, new.debt) is distinct from (old.available, old.held, old.debt)
       and pg_trigger_depth() < 2 then
        raise exception 'credit account balances change only through credit_ledger'
            using errcode = 'restrict_violation';
    end if;
    return new;
end;
$$;

create trigger credit_accounts_guard before update on credit_accounts
    for each row execute function credit_accounts_guard();

create function credit_accounts_insert_guard() returns trigger
language plpgsql as $$
begin
    if new.available <> 0 or new.held <> 0 or new.debt <> 0 then
        raise exception 'a credit account starts empty; credit it through credit_ledger'
            using errcode = 'check_violation';
    end if;
    return new;
end;
$$;

create trigger credit_accounts_insert_guard before insert on credit_accounts
    for each row execute function credit_accounts_insert_guard();

-- ---------------------------------------------------------------------------------------------
-- Idempotency
-- ---------------------------------------------------------------------------------------------

create table idempotency_keys (
    -- Scope of a key: (caller `sub`, route).
    caller_id       text not null,
    route           text not null,
    key             text not null check (key ~ '^[\x21-\x7e]{1,255}$'),
    -- SHA-256 of the canonical request body.
    fingerprint     bytea not null check (length(fingerprint) = 32),
    status          text not null default 'in_flight' check (status in ('in_flight', 'completed')),
    response_status smallint check (response_status between 100 and 599),
    -- The exact response body bytes, replayed byte for byte.
    response_body   bytea,
    created_at      timestamptz not null default now(),
    completed_at    timestamptz,
    expires_at      timestamptz not null,
    primary key (caller_id, route, key),
    check ((status = 'completed') = (response_status is not null and response_body is not null
                                     and completed_at is not null)),
    check (expires_at > created_at)
);

create index idempotency_keys_expiry on idempotency_keys (expires_at);

-- ---------------------------------------------------------------------------------------------
-- Pricing
-- ---------------------------------------------------------------------------------------------

create table price_rules (
    id                 text primary key check (id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    task_type          text not null check (task_type ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    base_credits       bigint not null check (base_credits >= 0),
    per_unit_credits   bigint not null check (per_unit_credits >= 0),
    -- Peak-hour multiplier in basis points (10000 = x1.0); never a discount.
    peak_multiplier_bp integer not null default 10000 check (peak_multiplier_bp between 10000 and 100000),
    -- Peak hours [start, end) in UTC; start = end means no peak window.
    peak_start_hour    smallint not null default 0 check (peak_start_hour between 0 and 23),
    peak_end_hour      smallint not null default 0 check (peak_end_hour between 0 and 23),
    -- Weight in basis points given to the historical cost per unit when history exists.
    history_weight_bp  integer not null default 5000 check (history_weight_bp between 0 and 10000),
    -- How far back completed tasks inform the estimate.
    history_window     interval not null default interval '30 days'
                           check (history_window > interval '0'),
    active             boolean not null default true,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);

-- At most one active rule per task type.
create unique index price_rules_active_type on price_rules (task_type) where active;

create trigger price_rules_touch before update on price_rules
    for each row execute function touch_updated_at();

create table price_rule_tiers (
    rule_id     text not null references price_rules (id) on delete cascade,
    -- The tier applies from this many units on.
    min_units   bigint not null check (min_units > 0),
    -- Discount on the per-unit price in basis points (500 = 5 %).
    discount_bp integer not null check (discount_bp between 0 and 9000),
    primary key (rule_id, min_units)
);

-- ---------------------------------------------------------------------------------------------
-- Licenses
-- ---------------------------------------------------------------------------------------------

create table authorizations (
    id          uuid primary key,
    -- The user the license is granted to (may not have signed in yet, hence no FK).
    subject_id  text not null check (length(subject_id) between 1 and 255),
    resource    text not null check (length(resource) between 1 and 255),
    actions     text[] not null check (cardinality(actions) >= 1),
    -- Null: unlimited.
    quota_total bigint check (quota_total >= 0),
    quota_used  bigint not null default 0 check (quota_used >= 0),
    valid_from  timestamptz not null default now(),
    valid_until timestamptz,
    status      text not null default 'active' check (status in ('active', 'suspended', 'revoked')),
    granted_by  text not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    check (quota_total is null or quota_used <= quota_total),
    check (valid_until is null or valid_until > valid_from)
);

create index authorizations_subject_resource on authorizations (subject_id, resource);

create trigger authorizations_touch before update on authorizations
    for each row execute function touch_updated_at();

-- A revoked license stays revoked.
create function authorizations_guard() returns trigger
language plpgsql as $$
begin
    if old.status = 'revoked' and new.status <> 'revoked' then
        raise exception 'license % is revoked for good', old.id using errcode = 'check_violation';
    end if;
    return new;
end;
$$;

create trigger authorizations_guard before update on authorizations
    for each row execute function authorizations_guard();

create table authorization_logs (
    id               bigint generated always as identity primary key,
    authorization_id uuid references authorizations (id),
    subject_id       text not null,
    resource         text,
    action           text,
    event            text not null check (event in ('check', 'consume', 'grant', 'suspend', 'resume',
                                                    'revoke', 'quota_change', 'update')),
    allowed          boolean not null,
    violation_code   text check (violation_code in ('license_not_found', 'license_not_yet_valid',
                                                    'license_expired', 'license_suspended',
                                                    'license_revoked', 'action_not_permitted',
                                                    'quota_exhausted')),
    units            bigint check (units > 0),
    actor_id         text not null,
    request_id       text,
    detail           jsonb,
    created_at       timestamptz not null default now(),
    check (allowed = (violation_code is null))
);

create index authorization_logs_license on authorization_logs (authorization_id, id desc);

create trigger authorization_logs_append_only before update or delete on authorization_logs
    for each row execute function refuse_modification();
create trigger authorization_logs_no_truncate before truncate on authorization_logs
    for each statement execute function refuse_modification();

-- ---------------------------------------------------------------------------------------------
-- Task history and audit
-- ---------------------------------------------------------------------------------------------

create table task_state_history (
    task_id      uuid not null references tasks (id),
    -- Per-task sequence number, 1, 2, 3, ... : the arbiter between nodes posting events.
    seq          bigint not null check (seq > 0),
    kind         text not null check (kind in ('created', 'progress', 'state')),
    from_status  text check (from_status in ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    to_status    text not null check (to_status in ('queued', 'running', 'succeeded', 'failed',
                                                    'canceled')),
    progress     smallint check (progress between 0 and 100),
    actual_units bigint check (actual_units >= 0),
    message      text check (length(message) <= 1000),
    data         jsonb,
    actor_id     text not null,
    node_id      text,
    request_id   text,
    created_at   timestamptz not null default now(),
    primary key (task_id, seq)
);

create trigger task_state_history_append_only before update or delete on task_state_history
    for each row execute function refuse_modification();
create trigger task_state_history_no_truncate before truncate on task_state_history
    for each statement execute function refuse_modification();

create table task_audit_logs (
    id         bigint generated always as identity primary key,
    task_id    uuid not null references tasks (id),
    seq        bigint check (seq > 0),
    action     text not null check (length(action) between 1 and 64),
    actor_id   text not null,
    detail     jsonb,
    request_id text,
    created_at timestamptz not null default now()
);

create index task_audit_logs_task on task_audit_logs (task_id, id);

create trigger task_audit_logs_append_only before update or delete on task_audit_logs
    for each row execute function refuse_modification();
create trigger task_audit_logs_no_truncate before truncate on task_audit_logs
    for each statement execute function refuse_modification();

-- ---------------------------------------------------------------------------------------------
-- Payments (WeChat Pay)
-- ---------------------------------------------------------------------------------------------

create table payment_orders (
    id                     uuid primary key,
    -- The merchant order number sent to WeChat Pay (out_trade_no: 6-32 chars).
    out_trade_no           text not null unique check (out_trade_no ~ '^[A-Za-z0-9_*|-]{6,32}$'),
    account_id             text not null references credit_accounts (id),
    user_id                text not null references users (id),
    amount_fen             bigint not null check (amount_fen > 0),
    currency               text not null default 'CNY' check (currency = 'CNY'),
    status                 text not null default 'created'
                               check (status in ('created', 'paid', 'closed', 'failed', 'refunded')),
    code_url               text,
    wechat_transaction_id  text unique,
    -- The recharge ledger row written when the payment was confirmed: credited exactly once.
    credited_entry_id      bigint unique references credit_ledger (id),
    expires_at             timestamptz not null,
    paid_at                timestamptz,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),
    check ((status in ('paid', 'refunded')) = (paid_at is not null)),
    check (status not in ('paid', 'refunded')
           or (wechat_transaction_id is not null and credited_entry_id is not null))
);

create index payment_orders_account on payment_orders (account_id, created_at desc);
create index payment_orders_paid_at on payment_orders (paid_at) where paid_at is not null;

create trigger payment_orders_touch before update on payment_orders
    for each row execute function touch_updated_at();

-- ---------------------------------------------------------------------------------------------
-- Access audit
-- ---------------------------------------------------------------------------------------------

create table audit_access_log (
    id          bigint generated always as identity primary key,
    actor_id    text not null,
    -- The roles the actor held when acting.
    actor_roles text[] not null,
    action      text not null check (action ~ '^[a-z][a-z0-9_.]{0,63}$'),
    target_type text check (length(target_type) <= 64),
    target_id   text check (length(target_id) <= 255),
    outcome     text not null check (outcome in ('success', 'denied', 'failure')),
    request_id  text,
    client_ip   inet,
    detail      jsonb,
    created_at  timestamptz not null default now()
);

create index audit_access_log_created on audit_access_log (created_at desc, id desc);
create index audit_access_log_actor on audit_access_log (actor_id, created_at desc);

create trigger audit_access_log_append_only before update or delete on audit_access_log
    for each row execute function refuse_modification();
create trigger audit_access_log_no_truncate before truncate on audit_access_log
    for each statement execute function refuse_modification();
