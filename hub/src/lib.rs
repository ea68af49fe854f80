//! The realtime hub: channels, session and task actors, and the brokers linking nodes. Never
//! imports axum.

pub mod broker;
pub mod channel;
pub mod fanout;
pub mod history;
pub mod outbound;
pub mod redis_link;
pub mod session;
pub mod task;
pub mod timer;

pub use channel::{Channel, ChannelError};
