//! What flows from a session to its transport: one bounded queue per session.

use crate::broker::Delivery;
use std::sync::Arc;

/// An item for the transport to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A publication push (shared with every other subscriber; behind an `Arc` so a queue slot
    /// stays small).
    Push(Arc<Delivery>),
    /// A reply or server push made by the session.
    Frame(Arc<str>),
    /// Close the connection with a disconnect code and reason.
    Close {
        /// Disconnect code (3000-4999).
        code: u16,
        /// Reason, under 123 bytes (a `Box<str>`: keeps every queue slot at 24 bytes).
        reason: Box<str>,
    },
}

impl Outbound {
    /// The text to write, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            Outbound::Push(delivery) => Some(&delivery.frame),
            Outbound::Frame(frame) => Some(frame),
            Outbound::Close { .. } => None,
        }
    }
}
