-- Ledger rows move balances once per statement, not once per row.
--
-- Until now the row trigger `credit_ledger_apply` ran an `UPDATE credit_accounts` for every ledger
-- row; each of those is a new executor that rebuilds the account's four CHECK constraints, which
-- was about a third of PostgreSQL's CPU per charge (docs/benchmarks.md, the profile). Now:
--
-- * A row may carry its balances after (`balance_after`, `held_after`, `debt_after`), as the
--   ledger's batch writer does (it planned them against the locked account). A row that leaves
--   them out gets them from the row trigger, computed from the account row (locked), which is
--   right for one row per account per statement (a hand-written insert, the Phase 1 import).
-- * The statement trigger `credit_ledger_settle` is the one place balances move: for each account
--   of the statement it checks that the rows, in id order, follow on from one another (each row
--   starts where the one before it ended) and that the first starts from the account's current
--   balances, then sets the account to where the last row ends, in one UPDATE for all accounts.
--   Anything else (wrong balances, two hand-written rows of one account in one statement, an
--   account that moved since it was read) raises and rolls the statement back.
--
-- The invariants are unchanged: every balance change is a ledger row; available, held and debt
-- are each the sum of their ledger deltas; no balance is ever negative (the ledger rows' own CHECKs
-- now catch it first: `credit_ledger_balance_after_check` and its siblings); a direct update of a
-- balance column is still refused (`credit_accounts_guard`: the settle trigger's update runs at
-- trigger depth 2).

alter table credit_ledger
    alter column balance_after drop default,
    alter column held_after drop default,
    alter column debt_after drop default;

comment on column credit_ledger.balance_after is
    'The account''s available right after this row: given by the writer or filled in by '
    'credit_ledger_apply; checked against the account by credit_ledger_settle.';

drop trigger credit_ledger_apply on credit_ledger;

-- Fills in the balances of a row written without them, from the account row (locked). It does
-- not move the account: credit_ledger_settle does, for every row of the statement.
create or replace function credit_ledger_apply() returns trigger
language plpgsql as $$
declare
    acc credit_accounts%rowtype;
begin
    select * into acc from credit_accounts where id = new.account_id for update;
    if not found then
        raise exception 'credit account % does not exist', new.account_id
            using errcode = 'foreign_key_violation';
    end if;
    new.balance_after := acc.available + new.amount;
    new.held_after := acc.held + new.held_delta;
    new.debt_after := acc.debt + new.debt_delta;
    return new;
end;
$$;

create trigger credit_ledger_apply before insert on credit_ledger
    for each row
    when (new.balance_after is null or new.held_after is null or new.debt_after is null)
    execute function credit_ledger_apply();

-- Moves the balances of every account the statement wrote rows for, after checking the rows
-- chain from the account's current balances (see the head of this file).
create function credit_ledger_settle() returns trigger
language plpgsql as $$
declare
    accounts bigint;
    settled bigint;
    broken bigint;
    stale text;
begin
    with chain as (
        select account_id, id,
               balance_after - amount as b0, held_after - held_delta as h0,
               debt_after - debt_delta as d0,
               balance_after as b1, held_after as h1, debt_after as d1,
               lag(balance_after) over w as pb, lag(held_after) over w as ph,
               lag(debt_after) over w as pd,
               row_number() over w as n, lead(id) over w as next_id
          from inserted
        window w as (partition by account_id order by id)),
    broken as (
        select min(id) as id from chain
         where n > 1 and (b0, h0, d0) is distinct from (pb, ph, pd)),
    ends as (
        select f.account_id, f.b0, f.h0, f.d0, l.b1, l.h1, l.d1
          from chain f join chain l on l.account_id = f.account_id and l.next_id is null
         where f.n = 1),
    settled as (
        update credit_accounts c
           set available = e.b1, held = e.h1, debt = e.d1, updated_at = now()
          from ends e
         where c.id = e.account_id and (c.available, c.held, c.debt) = (e.b0, e.h0, e.d0)
           and (select id from broken) is null
        returning c.id)
    select (select count(*) from ends), (select count(*) from settled), (select id from broken),
           (select min(e.account_id) from ends e where e.account_id not in (select id from settled))
      into accounts, settled, broken, stale;
    if broken is not null then
        raise exception 'ledger entry % does not start where the entry before it on its account ended', broken
            using errcode = 'check_violation',
                  hint = 'rows of one account written by one statement carry their balances after';
    end if;
    if settled <> accounts then
        raise exception 'the ledger entries of account % do not start from its balances', stale
            using errcode = 'check_violation';
    end if;
    return null;
end;
$$;

create trigger credit_ledger_settle after insert on credit_ledger
    referencing new table as inserted for each statement execute function credit_ledger_settle();
