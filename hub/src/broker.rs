//! The broker: channel streams and the local subscribers they fan out to.
//!
//! Two backends behind one API. **In-process** (one node): each channel's stream and history live
//! here, and publishing appends and fans out under the channel's lock. **Redis** (several nodes):
//! the stream lives in Redis ([`crate::redis_link`]): a publish is one script that takes the next
//! offset, appends to the channel's Redis stream and publishes on the channel's pub/sub topic;
//! every node subscribed to that topic (only nodes with local subscribers are) fans the publication
//! out here. A node that sees a channel's offsets jump or its epoch change (a lost link, a restarted
//! Redis) tells that channel's subscribers to reconnect and recover (3010): never a silent gap.
//!
//! Subscribing is two steps so the reply and the live stream meet exactly: [`Broker::subscribe`]
//! registers the subscriber as *joining* (live publications are buffered for it) and returns the
//! position and any recovered history; the session sends its reply, then [`Broker::activate`]
//! flushes what was buffered beyond that position and makes the subscriber live. Each subscriber
//! has a bounded queue; one that cannot keep up is cut off and told so through its `overflow`
//! token (its session then disconnects it with 3008), never slowed down for others.

use crate::history::{HistoryLimits, Recovery, Stream, StreamPublication};
use crate::outbound::Outbound;
use crate::redis_link::RedisLink;
use dashmap::DashMap;
use serde_json::Value;
use shared::protocol::disconnect;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// The push frame of a publication on `channel`.
pub fn push_frame(channel: &str, publication: &StreamPublication) -> Arc<str> {
    let frame = serde_json::json!({
        "push": { "channel": channel, "pub": { "data": &*publication.data, "offset": publication.offset } }
    });
    Arc::from(frame.to_string())
}

/// A local subscriber: where its deliveries go and how to tell it it fell behind.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Unique per session.
    pub id: u64,
    /// The session's bounded outbound queue.
    pub sender: mpsc::Sender<Outbound>,
    /// Cancelled when the queue overflowed: the session must disconnect (3008).
    pub overflow: CancellationToken,
}

/// What subscribing found.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribed {
    /// Top offset of the stream when subscribed (or the recovered-from offset).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
    /// Whether the requested recovery succeeded (false when none was asked).
    pub recovered: bool,
    /// Recovered publications.
    pub publications: Vec<StreamPublication>,
}

impl Subscribed {
    /// The offset the subscriber is at once it has these publications.
    pub fn reached(&self) -> u64 {
        self.publications
            .last()
            .map_or(self.offset, |last| last.offset.max(self.offset))
    }
}

impl From<Recovery> for Subscribed {
    fn from(recovery: Recovery) -> Self {
        Self {
            offset: recovery.offset,
            epoch: recovery.epoch,
            recovered: recovery.recovered,
            publications: recovery.publications,
        }
    }
}

/// Where a publication landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its offset in the channel's stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Why the broker could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis is unreachable or refused the command.
    #[error("redis: {0}")]
    Redis(String),
}

/// A subscriber of a channel on this node.
#[derive(Debug)]
struct Member {
    subscriber: Subscriber,
    /// While joining: live publications held back until the reply is out.
    joining: Option<Vec<Arc<Delivery>>>,
}

#[derive(Debug)]
pub(crate) struct ChannelState {
    /// In-process backend: the stream itself. Redis backend: unused.
    stream: Stream,
    /// Redis backend: the last (offset, epoch) this node saw of the channel.
    seen: Option<(u64, String)>,
    /// Invariant: every member here has an open queue (closed ones are removed on delivery).
    members: HashMap<u64, Member>,
    /// Last publish, subscribe or unsubscribe.
    last_activity: Instant,
    /// Redis backend: whether this node is subscribed to the channel's topic. Held across the
    /// SUBSCRIBE/UNSUBSCRIBE round trip, so the two never cross for one channel.
    pub(crate) topic: Arc<tokio::sync::Mutex<bool>>,
}

impl Default for ChannelState {
    fn default() -> Self {
        Self {
            stream: Stream::new(),
            seen: None,
            members: HashMap::new(),
            last_activity: Instant::now(),
            topic: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }
}

impl ChannelState {
    /// Hands `delivery` to every member: queued for the live, buffered for the joining.
    fn fan_out(&mut self, delivery: &Arc<Delivery>) -> u64 {
        let mut delivered = 0;
        self.members.retain(|_, member| {
            if let Some(buffer) = &mut member.joining {
                if buffer.len() >= member.subscriber.sender.max_capacity() {
                    member.subscriber.overflow.cancel();
                    return false;
                }
                buffer.push(delivery.clone());
                return true;
            }
            match member
                .subscriber
                .sender
                .try_send(Outbound::Push(delivery.clone()))
            {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    member.subscriber.overflow.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        delivered
    }

    /// Tells every member to reconnect and recover (3010): this node lost track of the stream.
    fn resync(&mut self, reason: &str) {
        for (_, member) in self.members.drain() {
            let close = Outbound::Close {
                code: disconnect::INSUFFICIENT_STATE,
                reason: reason.into(),
            };
            if member.subscriber.sender.try_send(close).is_err() {
                member.subscriber.overflow.cancel();
            }
            metrics::counter!("hub_resyncs_total").increment(1);
        }
    }
}

fn lock(state: &Mutex<ChannelState>) -> std::sync::MutexGuard<'_, ChannelState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// Records publish→deliver latency from the publication's `ts` (Unix ms), once per publication
/// per node.
fn observe_latency(data: &Value, delivered: u64) {
    if delivered == 0 {
        return;
    }
    metrics::counter!("hub_publications_delivered_total").increment(delivered);
    if let Some(ts) = data.get("ts").and_then(Value::as_i64) {
        let seconds = (now_ms() - ts).max(0) as f64 / 1000.0;
        metrics::histogram!("hub_publish_deliver_latency_seconds").record(seconds);
    }
}

/// Channels of this node and the backend holding their streams.
#[derive(Debug, Default)]
pub struct Broker {
    limits: HistoryLimits,
    channels: DashMap<Arc<str>, Arc<Mutex<ChannelState>>>,
    redis: std::sync::OnceLock<Arc<RedisLink>>,
}

impl Broker {
    /// An in-process broker keeping `limits` of history per channel.
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            channels: DashMap::new(),
            redis: std::sync::OnceLock::new(),
        }
    }

    /// A broker whose streams live in Redis (`client`, keys under `prefix`); starts the link,
    /// which keeps reconnecting until the broker is dropped.
    pub fn with_redis(limits: HistoryLimits, client: redis::Client, prefix: &str) -> Arc<Self> {
        let broker = Arc::new(Self::new(limits));
        let link = RedisLink::start(client, prefix, limits, Arc::downgrade(&broker));
        let _ = broker.redis.set(link);
        broker
    }

    /// The history limits.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Whether the node is linked to its peers: always with the in-process backend; with Redis,
    /// while the pub/sub link is up.
    pub fn is_linked(&self) -> bool {
        self.redis.get().is_none_or(|link| link.is_up())
    }

    /// Whether streams live in Redis.
    pub fn uses_redis(&self) -> bool {
        self.redis.get().is_some()
    }

    fn channel(&self, channel: &str) -> (Arc<str>, Arc<Mutex<ChannelState>>) {
        if let Some(entry) = self.channels.get(channel) {
            return (entry.key().clone(), entry.value().clone());
        }
        let entry = self.channels.entry(Arc::from(channel)).or_default();
        (entry.key().clone(), entry.value().clone())
    }

    /// Publishes `data` on `channel`: the next offset, into history, to every subscriber (on
    /// every node, with Redis).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Published, BrokerError> {
        metrics::counter!("hub_publications_total").increment(1);
        if let Some(link) = self.redis.get() {
            return link.publish(channel, &data).await;
        }
        let (name, state) = self.channel(channel);
        let mut state = lock(&state);
        let now = Instant::now();
        state.last_activity = now;
        let data = Arc::new(data);
        let publication = state.stream.append(data.clone(), now, self.limits);
        let delivery = Arc::new(Delivery {
            frame: push_frame(&name, &publication),
            channel: name,
            publication: publication.clone(),
        });
        let delivered = state.fan_out(&delivery);
        observe_latency(&data, delivered);
        Ok(Published {
            offset: publication.offset,
            epoch: state.stream.position().1.to_owned(),
        })
    }

    /// Publishes, and if Redis is unreachable keeps the publication (in order, bounded) to
    /// publish once the link is back: for events already committed elsewhere (task events).
    pub async fn publish_or_keep(&self, channel: &str, data: Value) {
        match self.redis.get() {
            Some(link) => link.publish_or_keep(channel, data).await,
            None => {
                let _ = self.publish(channel, data).await;
            }
        }
    }

    /// Registers `subscriber` on `channel` as joining and returns its position, recovering from
    /// (`offset`, `epoch`) when asked. Call [`Broker::activate`] once the reply is queued.
    pub async fn subscribe(
        &self,
        channel: &str,
        subscriber: Subscriber,
        recover: Option<(u64, &str)>,
    ) -> Result<Subscribed, BrokerError> {
        let id = subscriber.id;
        let (name, state) = self.channel(channel);
        {
            let mut state = lock(&state);
            state.last_activity = Instant::now();
            let member = Member {
                subscriber,
                joining: Some(Vec::new()),
            };
            state.members.insert(id, member);
            if self.redis.get().is_none() {
                let now = Instant::now();
                return Ok(match recover {
                    Some((offset, epoch)) => {
                        state.stream.recover(offset, epoch, now, self.limits).into()
                    }
                    None => {
                        let (offset, epoch) = state.stream.position();
                        Subscribed {
                            offset,
                            epoch: epoch.to_owned(),
                            recovered: false,
                            publications: Vec::new(),
                        }
                    }
                });
            }
        }
        let Some(link) = self.redis.get() else {
            unreachable!("the in-process backend returned above");
        };
        let topic = lock(&state).topic.clone();
        let joined = async {
            link.listen(&name, &topic).await?;
            link.read(&name, recover).await
        }
        .await;
        match joined {
            Ok((position, subscribed)) => {
                let mut state = lock(&state);
                if state.seen.is_none() {
                    state.seen = Some(position);
                }
                Ok(subscribed)
            }
            Err(error) => {
                lock(&state).members.remove(&id);
                self.forget_if_unused(&name, &state);
                Err(error)
            }
        }
    }

    /// Makes a joining subscriber live: queues what was buffered for it beyond `reached` (in the
    /// same `epoch`), in order. A buffered publication of another epoch means the stream was reset
    /// while it joined: it is told to resync (3010).
    pub fn activate(&self, channel: &str, subscriber_id: u64, reached: u64, epoch: &str) {
        let Some(state) = self
            .channels
            .get(channel)
            .map(|entry| entry.value().clone())
        else {
            return;
        };
        let mut state = lock(&state);
        let Some(member) = state.members.get_mut(&subscriber_id) else {
            return;
        };
        let buffered = member.joining.take().unwrap_or_default();
        let mut reset = false;
        for delivery in buffered {
            let same_epoch = self.redis.get().is_none()
                || state.seen.as_ref().is_none_or(|(_, seen)| seen == epoch);
            if !same_epoch {
                reset = true;
                break;
            }
            if delivery.publication.offset <= reached {
                continue;
            }
            let Some(member) = state.members.get_mut(&subscriber_id) else {
                return;
            };
            match member.subscriber.sender.try_send(Outbound::Push(delivery)) {
                Ok(()) => {}
                Err(_) => {
                    member.subscriber.overflow.cancel();
                    state.members.remove(&subscriber_id);
                    return;
                }
            }
        }
        if reset && let Some(member) = state.members.remove(&subscriber_id) {
            let _ = member.subscriber.sender.try_send(Outbound::Close {
                code: disconnect::INSUFFICIENT_STATE,
                reason: "stream reset".into(),
            });
        }
    }

    /// Removes a subscriber; with Redis, the node leaves the channel's topic after the last one.
    pub fn unsubscribe(&self, channel: &str, subscriber_id: u64) {
        let Some((name, state)) = self
            .channels
            .get(channel)
            .map(|entry| (entry.key().clone(), entry.value().clone()))
        else {
            return;
        };
        {
            let mut state = lock(&state);
            state.members.remove(&subscriber_id);
            state.last_activity = Instant::now();
        }
        self.forget_if_unused(&name, &state);
    }

    /// With Redis: leaves the topic of a channel without local subscribers (in the background).
    fn forget_if_unused(&self, name: &Arc<str>, state: &Arc<Mutex<ChannelState>>) {
        let Some(link) = self.redis.get() else {
            return;
        };
        if !lock(state).members.is_empty() {
            return;
        }
        let (link, name, state) = (link.clone(), name.clone(), state.clone());
        tokio::spawn(async move {
            let topic = lock(&state).topic.clone();
            let mut subscribed = topic.lock().await;
            if *subscribed && lock(&state).members.is_empty() {
                link.unlisten(&name).await;
                *subscribed = false;
                lock(&state).seen = None;
            }
        });
    }

    /// A publication received from Redis: checked for continuity, then fanned out.
    pub(crate) fn deliver_remote(&self, channel: &str, offset: u64, epoch: &str, data: Value) {
        let Some((name, state)) = self
            .channels
            .get(channel)
            .map(|entry| (entry.key().clone(), entry.value().clone()))
        else {
            return;
        };
        let mut state = lock(&state);
        match &state.seen {
            Some((seen, seen_epoch)) if seen_epoch == epoch && offset <= *seen => return,
            Some((seen, seen_epoch)) if seen_epoch != epoch || offset != seen + 1 => {
                tracing::warn!(channel, seen, offset, "channel stream jumped: resync");
                state.resync("insufficient state");
            }
            _ => {}
        }
        state.seen = Some((offset, epoch.to_owned()));
        state.last_activity = Instant::now();
        let data = Arc::new(data);
        let publication = StreamPublication {
            offset,
            data: data.clone(),
        };
        let delivery = Arc::new(Delivery {
            frame: push_frame(&name, &publication),
            channel: name,
            publication,
        });
        let delivered = state.fan_out(&delivery);
        observe_latency(&data, delivered);
    }

    /// After the Redis link came back: a channel whose stream moved on (or was reset) while the
    /// link was down has its subscribers resync (3010).
    pub(crate) fn check_position(&self, channel: &str, top: u64, epoch: &str) {
        let Some(state) = self
            .channels
            .get(channel)
            .map(|entry| entry.value().clone())
        else {
            return;
        };
        let mut state = lock(&state);
        // Nothing seen yet: the channel is still joining, and its reads set the position.
        let current = state
            .seen
            .as_ref()
            .is_none_or(|(seen, seen_epoch)| *seen == top && seen_epoch == epoch);
        if !current {
            state.resync("insufficient state: link to the other nodes was lost");
            state.seen = Some((top, epoch.to_owned()));
        }
    }

    /// Channels this node listens to in Redis.
    pub(crate) fn listened_channels(&self) -> Vec<Arc<str>> {
        self.channels
            .iter()
            .filter(|entry| {
                entry
                    .value()
                    .lock()
                    .map(|state| {
                        state
                            .topic
                            .try_lock()
                            .map_or(true, |subscribed| *subscribed)
                    })
                    .unwrap_or(false)
            })
            .map(|entry| entry.key().clone())
            .collect()
    }

    /// Forgets channels nobody listens to whose history has expired and that have been idle
    /// longer than the history's lifetime; returns how many. A forgotten channel that comes back
    /// starts a new epoch, which is right: anything it published has expired. Run periodically.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    /// [`Broker::sweep`] as of `now`.
    pub fn sweep_at(&self, now: Instant) -> usize {
        let before = self.channels.len();
        let in_memory = self.redis.get().is_none();
        self.channels.retain(|_, state| {
            let mut state = lock(state);
            let listening = state
                .topic
                .try_lock()
                .map_or(true, |subscribed| *subscribed);
            let idle = state.members.is_empty()
                && !listening
                && now.duration_since(state.last_activity) > self.limits.ttl
                && (!in_memory || state.stream.is_idle(now, self.limits));
            !idle
        });
        before - self.channels.len()
    }

    /// Channels with at least one local subscriber.
    pub fn subscribed_channels(&self) -> usize {
        self.channels
            .iter()
            .filter(|entry| !lock(entry.value()).members.is_empty())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscriber(id: u64, capacity: usize) -> (Subscriber, mpsc::Receiver<Outbound>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (
            Subscriber {
                id,
                sender,
                overflow: CancellationToken::new(),
            },
            receiver,
        )
    }

    async fn join(
        broker: &Broker,
        channel: &str,
        subscriber: Subscriber,
        recover: Option<(u64, &str)>,
    ) -> Subscribed {
        let id = subscriber.id;
        let subscribed = broker
            .subscribe(channel, subscriber, recover)
            .await
            .expect("subscribed");
        broker.activate(channel, id, subscribed.reached(), &subscribed.epoch);
        subscribed
    }

    #[tokio::test]
    async fn subscribers_receive_publications_in_offset_order() {
        let broker = Broker::new(HistoryLimits::default());
        let (alice, mut inbox) = subscriber(1, 16);
        join(&broker, "task:1", alice, None).await;

        for n in 0..3 {
            broker
                .publish("task:1", json!({ "n": n }))
                .await
                .expect("published");
        }

        let offsets: Vec<u64> = std::iter::from_fn(|| inbox.try_recv().ok())
            .filter_map(|item| match item {
                Outbound::Push(delivery) => Some(delivery.publication.offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_returning_subscriber_recovers_exactly_what_it_missed() {
        let broker = Broker::new(HistoryLimits::default());
        let (first, _) = subscriber(1, 16);
        let start = join(&broker, "task:1", first, None).await;
        broker.unsubscribe("task:1", 1);
        broker
            .publish("task:1", json!({ "n": 1 }))
            .await
            .expect("published");
        broker
            .publish("task:1", json!({ "n": 2 }))
            .await
            .expect("published");

        let (again, mut inbox) = subscriber(2, 16);
        let back = join(&broker, "task:1", again, Some((start.offset, &start.epoch))).await;
        broker
            .publish("task:1", json!({ "n": 3 }))
            .await
            .expect("published");

        assert!(back.recovered);
        let recovered: Vec<u64> = back.publications.iter().map(|p| p.offset).collect();
        assert_eq!(recovered, vec![1, 2]);
        assert_eq!(
            inbox.try_recv().ok().and_then(|item| match item {
                Outbound::Push(delivery) => Some(delivery.publication.offset),
                _ => None,
            }),
            Some(3),
            "live stream continues"
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_is_cut_off_without_slowing_others() {
        let broker = Broker::new(HistoryLimits::default());
        let (slow, _slow_inbox) = subscriber(1, 2);
        let slow_overflow = slow.overflow.clone();
        let (fast, mut fast_inbox) = subscriber(2, 64);
        join(&broker, "task:1", slow, None).await;
        join(&broker, "task:1", fast, None).await;

        for n in 0..10 {
            broker
                .publish("task:1", json!({ "n": n }))
                .await
                .expect("published");
            assert!(
                fast_inbox.try_recv().is_ok(),
                "the neighbour keeps receiving"
            );
        }

        assert!(
            slow_overflow.is_cancelled(),
            "the slow subscriber is told to go (3008)"
        );
    }

    #[tokio::test]
    async fn idle_channels_are_swept_only_once_their_history_lifetime_passed() {
        let limits = HistoryLimits {
            max_size: 10,
            ttl: std::time::Duration::from_millis(30),
        };
        let broker = Broker::new(limits);
        let (alice, _inbox) = subscriber(1, 4);
        join(&broker, "user:alice", alice, None).await;
        broker
            .publish("user:alice", json!({}))
            .await
            .expect("published");
        broker.unsubscribe("user:alice", 1);
        assert_eq!(broker.subscribed_channels(), 0);
        assert_eq!(broker.sweep(), 0, "history still alive: kept for recovery");

        let later = Instant::now() + std::time::Duration::from_millis(40);

        assert_eq!(broker.sweep_at(later), 1);
        assert!(broker.channels.is_empty());
    }
}

#[cfg(test)]
mod joining {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn publications_made_while_joining_follow_the_reply_without_gaps_or_repeats() {
        let broker = Broker::new(HistoryLimits::default());
        broker
            .publish("task:1", json!({ "n": 1 }))
            .await
            .expect("published");
        let (sender, mut inbox) = mpsc::channel(16);
        let subscriber = Subscriber {
            id: 7,
            sender,
            overflow: CancellationToken::new(),
        };

        let subscribed = broker
            .subscribe("task:1", subscriber, Some((0, "")))
            .await
            .expect("subscribed");
        broker
            .publish("task:1", json!({ "n": 2 }))
            .await
            .expect("published");
        assert!(
            inbox.try_recv().is_err(),
            "held back until the reply is out"
        );
        broker.activate("task:1", 7, subscribed.reached(), &subscribed.epoch);
        broker
            .publish("task:1", json!({ "n": 3 }))
            .await
            .expect("published");

        let recovered: Vec<u64> = subscribed.publications.iter().map(|p| p.offset).collect();
        let live: Vec<u64> = std::iter::from_fn(|| inbox.try_recv().ok())
            .filter_map(|item| match item {
                Outbound::Push(delivery) => Some(delivery.publication.offset),
                _ => None,
            })
            .collect();
        assert_eq!(recovered, vec![1]);
        assert_eq!(live, vec![2, 3]);
    }
}
