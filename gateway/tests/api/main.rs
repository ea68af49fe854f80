//! End-to-end tests of the gateway over real PostgreSQL and Redis: each test starts the real
//! router on port 0 (`helpers::spawn_app`) or the real binary, and talks HTTP to it.

mod audit;
mod audit_export;
mod auth;
mod binary;
mod cluster;
mod compliant_logs;
mod credits;
mod dashboard;
mod errors;
mod events;
mod faults;
mod helpers;
mod http_limits;
mod import;
mod ledger_property;
mod licenses;
mod money_safety;
mod operations;
mod payments;
mod permission_matrix;
mod pricing;
mod realtime;
mod realtime_abuse;
mod reconciliation;
mod risk;
mod sdk;
mod sessions;
mod sse;
mod tasks;
mod wechat;
