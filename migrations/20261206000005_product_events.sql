-- Product events ("埋点"), partitioned by month of the event's time. The `events.retention` job
-- creates the partitions ahead and drops the ones past the retention; an event whose month has
-- no partition lands in the default partition (and is dropped with it only by hand).
create table product_events (
    id          bigint generated always as identity,
    name        text not null check (name ~ '^[a-z][a-z0-9_.]{0,63}$'),
    user_id     text,
    source      text not null check (source in ('client', 'server')),
    ts          timestamptz not null,
    received_at timestamptz not null default now(),
    props       jsonb not null default '{}'
) partition by range (ts);

create table product_events_default partition of product_events default;

create index product_events_name_ts on product_events (name, ts);

-- Last month, this month and the next two exist from the start; the job keeps ahead.
do $$
declare
    month date := date_trunc('month', now() - interval '1 month')::date;
begin
    for i in 0..3 loop
        execute format(
            'create table if not exists %I partition of product_events for values from (%L) to (%L)',
            'product_events_' || to_char(month, 'YYYYMM'), month, (month + interval '1 month')::date);
        month := (month + interval '1 month')::date;
    end loop;
end
$$;
