//! The realtime hub: channels, and (as the hub issue lands) session and task actors and the
//! brokers linking nodes. Never imports axum.

pub mod broker;
pub mod channel;
pub mod history;
pub mod outbound;
pub mod session;

pub use channel::{Channel, ChannelError};
