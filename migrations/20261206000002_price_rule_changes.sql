-- Price rules managed through the API keep their history: every creation and change appends the
-- rule as it was and as it became. Estimates already given and tasks already priced keep their
-- numbers (a task stores its estimate); a change prices only what comes after it.

create table price_rule_changes (
    id         bigint generated always as identity primary key,
    rule_id    text not null references price_rules (id),
    -- `create` or `update`.
    change     text not null check (change in ('create', 'update')),
    changed_by text not null,
    request_id text,
    -- The rule (with its tiers) before the change; null for a creation.
    before     jsonb,
    after      jsonb not null,
    changed_at timestamptz not null default now()
);

create index price_rule_changes_rule on price_rule_changes (rule_id, id);

create trigger price_rule_changes_append_only before update or delete on price_rule_changes
    for each row execute function refuse_modification();
create trigger price_rule_changes_no_truncate before truncate on price_rule_changes
    for each statement execute function refuse_modification();
