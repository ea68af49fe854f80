-- The creator dashboard reads an account's money by time, and its settled holds by day.
create index credit_ledger_account_created on credit_ledger (account_id, created_at);
create index credit_holds_settled on credit_holds (account_id, settled_at) where status = 'captured';
