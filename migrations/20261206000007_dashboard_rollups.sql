-- Rollups for the creator dashboard, maintained incrementally by triggers so the dashboard reads
-- a few hundred small rows whatever the creator's history: task counts per creator, Beijing day
-- (of creation), type and status; a histogram of finished tasks' durations; money per account
-- and Beijing day (spent: charges net of refunds plus captures at their actual cost; recharged).

create table creator_task_daily (
    owner_id  text not null,
    day       date not null,
    task_type text not null,
    status    text not null,
    tasks     bigint not null default 0,
    primary key (owner_id, day, task_type, status)
);

-- Buckets of 2^(b/4) seconds (about ±9 % per bucket), 0 = under a second.
create table creator_duration_daily (
    owner_id text not null,
    day      date not null,
    bucket   integer not null,
    tasks    bigint not null default 0,
    primary key (owner_id, day, bucket)
);

create table account_money_daily (
    account_id text not null,
    day        date not null,
    spent      bigint not null default 0,
    recharged  bigint not null default 0,
    primary key (account_id, day)
);

create function beijing_day(at timestamptz) returns date
language sql immutable as $$ select (at at time zone 'Asia/Shanghai')::date $$;

create function duration_bucket(seconds double precision) returns integer
language sql immutable as $$
    select case when seconds < 1 then 0 else least(200, 1 + floor(4 * ln(seconds) / ln(2))::integer) end
$$;

create function rollup_tasks() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into creator_task_daily (owner_id, day, task_type, status, tasks)
        values (new.owner_id, beijing_day(new.created_at), new.task_type, new.status, 1)
        on conflict (owner_id, day, task_type, status) do update set tasks = creator_task_daily.tasks + 1;
    elsif new.status is distinct from old.status then
        update creator_task_daily set tasks = tasks - 1
         where owner_id = old.owner_id and day = beijing_day(old.created_at)
           and task_type = old.task_type and status = old.status;
        insert into creator_task_daily (owner_id, day, task_type, status, tasks)
        values (new.owner_id, beijing_day(new.created_at), new.task_type, new.status, 1)
        on conflict (owner_id, day, task_type, status) do update set tasks = creator_task_daily.tasks + 1;
    end if;
    if new.finished_at is not null and (tg_op = 'INSERT' or old.finished_at is null) then
        insert into creator_duration_daily (owner_id, day, bucket, tasks)
        values (new.owner_id, beijing_day(new.created_at),
                duration_bucket(extract(epoch from new.finished_at - new.created_at)), 1)
        on conflict (owner_id, day, bucket) do update set tasks = creator_duration_daily.tasks + 1;
    end if;
    return null;
end
$$;

create trigger tasks_rollup after insert or update of status, finished_at on tasks
    for each row execute function rollup_tasks();

-- One upsert per account and day per statement (a ledger batch is one statement).
create function rollup_ledger() returns trigger
language plpgsql as $$
begin
    insert into account_money_daily (account_id, day, spent, recharged)
    select account_id, beijing_day(created_at),
           sum(case when kind in ('charge', 'refund') then -amount else 0 end),
           sum(case when kind = 'recharge' then amount else 0 end)
      from inserted where kind in ('charge', 'refund', 'recharge')
     group by 1, 2
    on conflict (account_id, day) do update
       set spent = account_money_daily.spent + excluded.spent,
           recharged = account_money_daily.recharged + excluded.recharged;
    return null;
end
$$;

create trigger credit_ledger_rollup after insert on credit_ledger
    referencing new table as inserted for each statement execute function rollup_ledger();

create function rollup_captures() returns trigger
language plpgsql as $$
begin
    if new.status = 'captured' and old.status is distinct from 'captured' then
        insert into account_money_daily (account_id, day, spent)
        values (new.account_id, beijing_day(coalesce(new.settled_at, now())), coalesce(new.captured_amount, 0))
        on conflict (account_id, day) do update set spent = account_money_daily.spent + excluded.spent;
    end if;
    return null;
end
$$;

create trigger credit_holds_rollup after update of status on credit_holds
    for each row execute function rollup_captures();

-- What exists already.
insert into creator_task_daily (owner_id, day, task_type, status, tasks)
select owner_id, beijing_day(created_at), task_type, status, count(*) from tasks group by 1, 2, 3, 4;
insert into creator_duration_daily (owner_id, day, bucket, tasks)
select owner_id, beijing_day(created_at), duration_bucket(extract(epoch from finished_at - created_at)), count(*)
  from tasks where finished_at is not null group by 1, 2, 3;
insert into account_money_daily (account_id, day, spent, recharged)
select account_id, day, sum(spent), sum(recharged) from (
    select account_id, beijing_day(created_at) as day,
           case when kind in ('charge', 'refund') then -amount else 0 end as spent,
           case when kind = 'recharge' then amount else 0 end as recharged
      from credit_ledger where kind in ('charge', 'refund', 'recharge')
    union all
    select account_id, beijing_day(coalesce(settled_at, created_at)), coalesce(captured_amount, 0), 0
      from credit_holds where status = 'captured') money
 group by 1, 2;
