//! Wire types shared by the hub, the gateway and the loadtest: roles, error codes, problem
//! details and the JSON bodies of the HTTP API. Serde only, no IO.

pub mod credits;
pub mod error_code;
pub mod export;
pub mod licenses;
pub mod limits;
pub mod page;
pub mod payments;
pub mod pricing;
pub mod problem;
pub mod protocol;
pub mod role;
pub mod session;
pub mod tasks;

pub use error_code::ErrorCode;
pub use problem::Problem;
pub use role::{ParseRoleError, Role};
