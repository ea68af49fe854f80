//! PostgreSQL business logic of the platform: identity provisioning, sessions and themes, the
//! audit trail, and (in later modules) the ledger, licenses and tasks. Never imports axum.

pub mod audit;
pub mod db;
pub mod error;
pub mod export;
pub mod idempotency;
pub mod identity;
pub mod import;
pub mod ledger;
pub mod licenses;
pub mod payments;
pub mod price_rules;
pub mod pricing;
mod queue;
pub mod reconciliation;
pub mod seed;
pub mod sessions;
pub mod tasks;
pub mod wechat;

pub use error::{DomainError, DomainResult};
