//! The Redis side of the broker: channel streams in Redis and the pub/sub link between nodes.
//!
//! Keys, under the deployment's prefix: `{prefix}:meta:{channel}` (a hash: `top` offset and
//! `epoch`) and `{prefix}:stream:{channel}` (a Redis stream whose entry ids are the offsets,
//! `{offset}-0`, with fields `d` (the data) and `t` (Unix ms)). The pub/sub topic is
//! `{prefix}:pub:{channel}`. One script takes the next offset, appends to the stream (capped at
//! the history size, expiring with the history's lifetime) and publishes, so offsets, history and
//! the order of messages on the topic always agree. A missing meta key (never used, expired, or
//! Redis restarted) gets a new epoch and an emptied stream: clients are never told they recovered
//! across lost history.
//!
//! The link task keeps one pub/sub connection and one command connection; when either fails it
//! marks the link down (`/readyz` says so), reconnects with backoff, subscribes again to every
//! channel with local subscribers, and has the subscribers of channels that moved meanwhile
//! resync (3010). Task events that could not be published while Redis was away are kept (bounded,
//! in order) and published once it is back.

use crate::fanout::LocalChannels;
use crate::history::{
    HistoryLimits, StreamPosition, StreamPublication, Subscribed, new_epoch, recover_from,
};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Meta keys live this long after a channel's last publication (its epoch and top offset).
const META_TTL_SECS: u64 = 24 * 3600;
/// Publications kept while Redis is unreachable, at most.
const KEEP_LIMIT: usize = 10_000;
/// How often the pub/sub connection is pinged to detect a dead link.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for a Redis reply.
const TIMEOUT: Duration = Duration::from_secs(3);

const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], top .. '-0', 'd', ARGV[2], 't', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], top .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch}
";

const READ: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
local entries = {}
local since = tonumber(ARGV[1])
if since >= 0 and top > since then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')
end
return {top, epoch, entries}
";

/// Why the broker could not do something (only the Redis backend can fail).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis is unreachable or refused the command.
    #[error("redis: {0}")]
    Redis(String),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

fn redis_error(operation: &'static str, error: impl std::fmt::Display) -> BrokerError {
    metrics::counter!("hub_redis_errors_total", "operation" => operation).increment(1);
    BrokerError::Redis(error.to_string())
}

/// The connections of a live link.
#[derive(Clone)]
struct Connections {
    commands: MultiplexedConnection,
    topics: PubSubSink,
}

/// A node's link to Redis.
pub struct RedisLink {
    client: redis::Client,
    prefix: String,
    limits: HistoryLimits,
    /// Whether the link is up; waited on by commands issued during a reconnect.
    up: tokio::sync::watch::Sender<bool>,
    live: Mutex<Option<Connections>>,
    publish: redis::Script,
    read: redis::Script,
    /// Publications kept while Redis was unreachable, oldest first.
    kept: Mutex<VecDeque<(String, Value)>>,
    /// Serializes flushing `kept`.
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Starts the link task, relaying publications into `local`.
    pub(crate) fn start(
        client: redis::Client,
        prefix: &str,
        limits: HistoryLimits,
        local: Arc<LocalChannels>,
    ) -> Arc<Self> {
        let link = Arc::new(Self {
            client,
            prefix: prefix.to_owned(),
            limits,
            up: tokio::sync::watch::Sender::new(false),
            live: Mutex::new(None),
            publish: redis::Script::new(PUBLISH),
            read: redis::Script::new(READ),
            kept: Mutex::new(VecDeque::new()),
            flushing: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(run(Arc::downgrade(&link), local));
        link
    }

    /// Whether the pub/sub link is up.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    fn topic(&self, channel: &str) -> String {
        format!("{}:pub:{channel}", self.prefix)
    }

    fn keys(&self, channel: &str) -> (String, String) {
        (
            format!("{}:meta:{channel}", self.prefix),
            format!("{}:stream:{channel}", self.prefix),
        )
    }

    fn connections(&self) -> Result<Connections, BrokerError> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .filter(|_| self.is_up())
            .ok_or_else(|| BrokerError::Redis("the link to Redis is down".into()))
    }

    /// The live connections, waiting up to [`TIMEOUT`] for a link that is (re)connecting.
    async fn connections_soon(&self) -> Result<Connections, BrokerError> {
        let mut up = self.up.subscribe();
        let _ = tokio::time::timeout(TIMEOUT, up.wait_for(|up| *up)).await;
        self.connections()
    }

    fn set_live(&self, connections: Option<Connections>) {
        let up = connections.is_some();
        *self
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connections;
        self.up.send_replace(up);
        metrics::gauge!("hub_redis_up").set(if up { 1.0 } else { 0.0 });
    }

    /// Publishes through the script; the publication reaches subscribers through the topic.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: &Value,
    ) -> Result<StreamPosition, BrokerError> {
        let mut commands = self.connections_soon().await?.commands;
        let (meta, stream) = self.keys(channel);
        let payload = serde_json::to_string(data).map_err(|error| redis_error("publish", error))?;
        let (top, epoch): (u64, String) = self
            .publish
            .key(meta)
            .key(stream)
            .arg(self.topic(channel))
            .arg(payload)
            .arg(self.limits.max_size)
            .arg(self.limits.ttl.as_millis().max(1) as u64)
            .arg(META_TTL_SECS.max(self.limits.ttl.as_secs()))
            .arg(new_epoch())
            .arg(now_ms())
            .invoke_async(&mut commands)
            .await
            .map_err(|error| redis_error("publish", error))?;
        Ok(StreamPosition { offset: top, epoch })
    }

    /// Publishes, or keeps the publication for when the link is back (order kept).
    pub(crate) async fn publish_or_keep(&self, channel: &str, data: Value) {
        let pending = !self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if !pending && self.is_up() && self.publish(channel, &data).await.is_ok() {
            return;
        }
        {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() >= KEEP_LIMIT {
                kept.pop_front();
                metrics::counter!("hub_publications_dropped_total").increment(1);
                tracing::error!(
                    "Redis unreachable and too many publications kept: dropping the oldest"
                );
            }
            kept.push_back((channel.to_owned(), data));
        }
        if self.is_up() {
            self.flush().await;
        }
    }

    /// Publishes the kept publications, in order, until one fails.
    async fn flush(&self) {
        let _flushing = self.flushing.lock().await;
        loop {
            let next = self
                .kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            let Some((channel, data)) = next else {
                return;
            };
            if self.publish(&channel, &data).await.is_err() {
                return;
            }
            self.kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
        }
    }

    /// Subscribes the node to the channel's topic unless it already is (`subscribed`, held across
    /// the round trip).
    pub(crate) async fn listen(
        &self,
        channel: &str,
        subscribed: &tokio::sync::Mutex<bool>,
    ) -> Result<(), BrokerError> {
        let mut subscribed = subscribed.lock().await;
        if *subscribed {
            return Ok(());
        }
        let mut topics = self.connections_soon().await?.topics;
        tokio::time::timeout(TIMEOUT, topics.subscribe(self.topic(channel)))
            .await
            .map_err(|error| redis_error("subscribe", error))?
            .map_err(|error| redis_error("subscribe", error))?;
        *subscribed = true;
        Ok(())
    }

    /// Unsubscribes the node from the channel's topic (best effort: a dead link has none).
    pub(crate) async fn unlisten(&self, channel: &str) {
        if let Ok(Connections { mut topics, .. }) = self.connections()
            && let Err(error) = topics.unsubscribe(self.topic(channel)).await
        {
            redis_error("unsubscribe", error);
        }
    }

    /// The channel's position and, when recovering, what the client missed.
    pub(crate) async fn read(
        &self,
        channel: &str,
        recover: Option<(u64, &str)>,
    ) -> Result<(StreamPosition, Subscribed), BrokerError> {
        let mut commands = self.connections_soon().await?.commands;
        let (meta, stream) = self.keys(channel);
        let since = recover.map_or(-1, |(offset, _)| offset as i64);
        type Entry = (String, Vec<String>);
        let (top, epoch, entries): (u64, String, Vec<Entry>) = self
            .read
            .key(meta)
            .key(stream)
            .arg(since)
            .arg(new_epoch())
            .arg(META_TTL_SECS.max(self.limits.ttl.as_secs()))
            .invoke_async(&mut commands)
            .await
            .map_err(|error| redis_error("read", error))?;
        let position = StreamPosition { offset: top, epoch };
        let Some((offset, requested_epoch)) = recover else {
            return Ok((position.clone(), Subscribed::at(position)));
        };
        let oldest = now_ms() - self.limits.ttl.as_millis() as i64;
        let history = entries.into_iter().filter_map(|(id, fields)| {
            let offset: u64 = id.split('-').next()?.parse().ok()?;
            let mut data = None;
            let mut at = 0;
            for pair in fields.chunks(2) {
                match pair {
                    [name, value] if name == "d" => data = serde_json::from_str(value).ok(),
                    [name, value] if name == "t" => at = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            (at >= oldest).then_some(StreamPublication {
                offset,
                data: Arc::new(data?),
            })
        });
        let recovery = recover_from(&position, history, offset, requested_epoch);
        Ok((position, recovery))
    }

    /// Reads a channel's position (top, epoch) without recovering.
    async fn position(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        Ok(self.read(channel, None).await?.0)
    }
}

/// Parses a topic message `{offset} {epoch} {data}`.
fn parse_message(payload: &[u8]) -> Option<(StreamPosition, Value)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, ' ');
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.to_owned();
    let data = serde_json::from_str(parts.next()?).ok()?;
    Some((StreamPosition { offset, epoch }, data))
}

/// The link task: connect, resubscribe, check positions, relay messages; again on failure.
async fn run(weak: Weak<RedisLink>, local: Arc<LocalChannels>) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        // Held only while used: once the broker (the link's owner) is gone, the task ends.
        let Some(link) = weak.upgrade() else {
            return;
        };
        match connect(&link).await {
            Ok((connections, mut messages)) => {
                backoff = Duration::from_millis(100);
                if let Err(error) = relink(&link, &local, connections).await {
                    tracing::warn!(%error, "cannot restore Redis subscriptions; reconnecting");
                    link.set_live(None);
                    drop(link);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                if connected_before {
                    metrics::counter!("hub_redis_reconnects_total").increment(1);
                    tracing::info!("Redis link restored");
                }
                connected_before = true;
                link.flush().await;
                let prefix = format!("{}:pub:", link.prefix);
                drop(link);
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            if weak.strong_count() == 0 {
                                return;
                            }
                            let topic = message.get_channel_name();
                            let Some(channel) = topic.strip_prefix(&prefix) else {
                                continue;
                            };
                            match parse_message(message.get_payload_bytes()) {
                                Some((position, data)) => {
                                    local.deliver_remote(channel, position, data);
                                }
                                None => {
                                    redis_error("message", "unparsable topic message");
                                }
                            }
                        }
                        _ = ping.tick() => {
                            let Some(link) = weak.upgrade() else { return };
                            let Ok(Connections { mut topics, .. }) = link.connections() else { break };
                            let alive = tokio::time::timeout(TIMEOUT, topics.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                let Some(link) = weak.upgrade() else { return };
                redis_error("link", "the Redis link dropped");
                tracing::warn!("Redis link down: reconnecting");
                link.set_live(None);
            }
            Err(error) => {
                tracing::warn!(%error, ?backoff, "cannot reach Redis");
                link.set_live(None);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect(link: &RedisLink) -> Result<(Connections, redis::aio::PubSubStream), BrokerError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(TIMEOUT)
        .set_response_timeout(TIMEOUT);
    let commands = link
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|error| redis_error("connect", error))?;
    let pubsub = tokio::time::timeout(TIMEOUT, link.client.get_async_pubsub())
        .await
        .map_err(|error| redis_error("connect", error))?
        .map_err(|error| redis_error("connect", error))?;
    let (topics, messages) = pubsub.split();
    Ok((Connections { commands, topics }, messages))
}

/// Subscribes again to every channel with local subscribers, then has those whose stream moved
/// while the link was down resync; the link is up once done.
async fn relink(
    link: &RedisLink,
    local: &LocalChannels,
    connections: Connections,
) -> Result<(), BrokerError> {
    let channels = local.listened_channels();
    let mut topics = connections.topics.clone();
    if !channels.is_empty() {
        let names: Vec<String> = channels.iter().map(|channel| link.topic(channel)).collect();
        tokio::time::timeout(TIMEOUT, topics.subscribe(&names))
            .await
            .map_err(|error| redis_error("subscribe", error))?
            .map_err(|error| redis_error("subscribe", error))?;
    }
    link.set_live(Some(connections));
    for channel in channels {
        let position = link.position(&channel).await?;
        local.check_position(&channel, position);
    }
    Ok(())
}
