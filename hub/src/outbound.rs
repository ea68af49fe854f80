//! What flows from a session to its transport: one bounded queue per session, and the
//! publications that go into it (serialized once for every subscriber).

use crate::history::StreamPublication;
use std::sync::Arc;

/// A publication on its way to a subscriber: the push frame, serialized once for all of them.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel.
    pub channel: Arc<str>,
    /// The publication.
    pub publication: StreamPublication,
    /// `{"push":{"channel":…,"pub":{"data":…,"offset":…}}}`.
    pub frame: Arc<str>,
}

impl Delivery {
    /// The delivery of `publication` on `channel`.
    pub fn new(channel: Arc<str>, publication: StreamPublication) -> Arc<Self> {
        Arc::new(Self {
            frame: push_frame(&channel, &publication),
            channel,
            publication,
        })
    }
}

/// The push frame of a publication on `channel`.
pub fn push_frame(channel: &str, publication: &StreamPublication) -> Arc<str> {
    let frame = serde_json::json!({
        "push": { "channel": channel, "pub": { "data": &*publication.data, "offset": publication.offset } }
    });
    Arc::from(frame.to_string())
}

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
