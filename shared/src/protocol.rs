//! The Centrifugo client protocol, version 2, JSON encoding (see `realtime.md`): the commands a
//! client sends, the replies and pushes the hub sends. Empty and zero fields are omitted on the
//! wire; `data` is raw embedded JSON.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A command from the client: an id and exactly one request.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Command {
    /// Grows for the life of a client; 0 only for `send` (and pongs, which are `{}`).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    /// Authenticate the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRequest>,
    /// Subscribe to a channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeRequest>,
    /// Unsubscribe from a channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<ChannelRequest>,
    /// Publish into a channel (refused: clients may not publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<serde_json::Value>,
    /// Presence (not available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<serde_json::Value>,
    /// Presence stats (not available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<serde_json::Value>,
    /// Channel history (not available to clients: recovery covers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<serde_json::Value>,
    /// The client's ping command (answered with error 108).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<serde_json::Value>,
    /// An asynchronous message to the server (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<serde_json::Value>,
    /// RPC (not available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<serde_json::Value>,
    /// Refresh the connection's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshRequest>,
    /// Refresh a subscription's token (not used: subscriptions carry no token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<serde_json::Value>,
}

impl Command {
    /// The command's kind, or `None` when it carries no request at all (a pong: `{}`).
    pub fn kind(&self) -> Option<&'static str> {
        [
            (self.connect.is_some(), "connect"),
            (self.subscribe.is_some(), "subscribe"),
            (self.unsubscribe.is_some(), "unsubscribe"),
            (self.publish.is_some(), "publish"),
            (self.presence.is_some(), "presence"),
            (self.presence_stats.is_some(), "presence_stats"),
            (self.history.is_some(), "history"),
            (self.ping.is_some(), "ping"),
            (self.send.is_some(), "send"),
            (self.rpc.is_some(), "rpc"),
            (self.refresh.is_some(), "refresh"),
            (self.sub_refresh.is_some(), "sub_refresh"),
        ]
        .into_iter()
        .find_map(|(present, kind)| present.then_some(kind))
    }
}

/// `connect` request.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ConnectRequest {
    /// The same JWT as the HTTP API.
    #[serde(default)]
    pub token: String,
    /// Custom data (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Server-side subscriptions to recover, by channel.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeRequest>,
    /// Client name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Client version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// `connect` result.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ConnectResult {
    /// Client id.
    pub client: String,
    /// Server version.
    pub version: String,
    /// Whether the token expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Server-side subscriptions, by channel.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    /// Ping interval, seconds.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    /// Whether the client must answer pings.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pong: bool,
    /// Session id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Node id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// `subscribe` request (also the value type of `connect.subs`).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct SubscribeRequest {
    /// The channel (empty inside `connect.subs`, where the map key names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// Subscription token (unused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Recover missed publications from `offset` in `epoch`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recover: bool,
    /// The stream epoch the client last saw.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// The last offset the client saw.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Client flags (the SDK sends 1; ignored).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub flag: u64,
}

/// `subscribe` result (also server-side subscription state in `connect.subs`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
pub struct SubscribeResult {
    /// Whether the token expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Whether the channel keeps history (recovery possible).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// Whether offsets are tracked.
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// The stream epoch.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// The stream position.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Whether the missed publications were all recovered.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovered: bool,
    /// Whether the client asked to recover.
    #[serde(default, skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Recovered publications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
}

/// A channel named in a request.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ChannelRequest {
    /// The channel.
    #[serde(default)]
    pub channel: String,
}

/// `refresh` request.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RefreshRequest {
    /// The new token.
    #[serde(default)]
    pub token: String,
}

/// `refresh` result.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RefreshResult {
    /// Client id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// Server version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Whether the token expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it does.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// A publication as clients see it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Publication {
    /// The payload (`{type, ts, ...}`).
    pub data: serde_json::Value,
    /// The position in the channel's stream.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
}

/// A protocol error in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ProtocolError {
    /// 100 internal, 101 unauthorized, 102 unknown channel, 103 permission denied, 104 method
    /// not found, 105 already subscribed, 106 limit exceeded, 107 bad request, 108 not available,
    /// 109 token expired, 110 expired, 111 too many requests, 112 unrecoverable position.
    pub code: u32,
    /// English message.
    pub message: String,
    /// Whether retrying may succeed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub temporary: bool,
}

/// A server message as a client reads it: a reply to command `id` (its result or `error`), or,
/// with `id` 0, a push. `{}` alone is a ping, answered with `{}`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Reply {
    /// The command answered (0 for pushes and pings).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    /// Why the command failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProtocolError>,
    /// Result of `connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    /// Result of `subscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    /// Result of `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    /// A push (publication, disconnect, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
}

impl Reply {
    /// Whether this is a server ping (`{}`).
    pub fn is_ping(&self) -> bool {
        self.id == 0
            && self.error.is_none()
            && self.connect.is_none()
            && self.subscribe.is_none()
            && self.refresh.is_none()
            && self.push.is_none()
    }
}

/// A push: something that happened on a channel.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Push {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// A publication.
    #[serde(rename = "pub", default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<Publication>,
}

/// Disconnect codes (WebSocket close codes).
pub mod disconnect {
    /// Server shutdown (reconnect).
    pub const SHUTDOWN: u16 = 3001;
    /// Internal error (reconnect).
    pub const INTERNAL: u16 = 3004;
    /// Token expired without refresh (reconnect).
    pub const EXPIRED: u16 = 3005;
    /// Client too slow to read (reconnect).
    pub const SLOW: u16 = 3008;
    /// Write error (reconnect).
    pub const WRITE_ERROR: u16 = 3009;
    /// The node lost track of a channel's stream (a gap, or its epoch changed): reconnect and
    /// recover (reconnect).
    pub const INSUFFICIENT_STATE: u16 = 3010;
    /// Missing pong (reconnect).
    pub const NO_PONG: u16 = 3012;
    /// The client sent commands faster than its rate allows, for too long (reconnect).
    pub const TOO_MANY_REQUESTS: u16 = 3013;
    /// Invalid token (terminal).
    pub const INVALID_TOKEN: u16 = 3500;
    /// Bad request (terminal).
    pub const BAD_REQUEST: u16 = 3501;
    /// Connection limit (terminal).
    pub const CONNECTION_LIMIT: u16 = 3504;
    /// Channel limit (terminal).
    pub const CHANNEL_LIMIT: u16 = 3505;
    /// Message too large or otherwise inappropriate for the protocol (terminal).
    pub const INAPPROPRIATE_PROTOCOL: u16 = 3506;
    /// Permission denied (terminal).
    pub const PERMISSION_DENIED: u16 = 3507;
    /// The client caused too many errors (terminal).
    pub const TOO_MANY_ERRORS: u16 = 3509;
}

/// Protocol error codes.
pub mod error {
    /// Internal (temporary).
    pub const INTERNAL: u32 = 100;
    /// Unauthorized.
    pub const UNAUTHORIZED: u32 = 101;
    /// Unknown channel.
    pub const UNKNOWN_CHANNEL: u32 = 102;
    /// Permission denied.
    pub const PERMISSION_DENIED: u32 = 103;
    /// Method not found.
    pub const METHOD_NOT_FOUND: u32 = 104;
    /// Already subscribed.
    pub const ALREADY_SUBSCRIBED: u32 = 105;
    /// Limit exceeded.
    pub const LIMIT_EXCEEDED: u32 = 106;
    /// Bad request.
    pub const BAD_REQUEST: u32 = 107;
    /// Not available.
    pub const NOT_AVAILABLE: u32 = 108;
    /// Token expired.
    pub const TOKEN_EXPIRED: u32 = 109;
    /// Expired.
    pub const EXPIRED: u32 = 110;
    /// Too many requests (temporary).
    pub const TOO_MANY_REQUESTS: u32 = 111;
    /// Unrecoverable position.
    pub const UNRECOVERABLE_POSITION: u32 = 112;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frames_of_realtime_md_parse() {
        let connect: Command =
            serde_json::from_str(r#"{"connect":{"token":"T","name":"js"},"id":7}"#)
                .expect("connect");
        assert_eq!((connect.id, connect.kind()), (7, Some("connect")));
        let subscribe: Command = serde_json::from_str(
            r#"{"subscribe":{"channel":"task:42","flag":1,"recover":true,"offset":5,"epoch":"e1"},"id":8}"#,
        )
        .expect("subscribe");
        let request = subscribe.subscribe.expect("request");
        assert_eq!(
            (request.offset, request.epoch.as_str(), request.recover),
            (5, "e1", true)
        );
        let pong: Command = serde_json::from_str("{}").expect("pong");
        assert_eq!((pong.id, pong.kind()), (0, None));
    }

    #[test]
    fn zero_and_empty_fields_are_omitted() {
        let result = SubscribeResult {
            recoverable: true,
            positioned: true,
            epoch: "e9".into(),
            offset: 17,
            ..SubscribeResult::default()
        };
        assert_eq!(
            serde_json::to_string(&result).expect("json"),
            r#"{"recoverable":true,"positioned":true,"epoch":"e9","offset":17}"#
        );
    }
}
