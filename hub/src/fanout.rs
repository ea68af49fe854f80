//! Local fan-out: this node's channels and the sessions subscribed to them. Whatever the backend
//! (in-process or Redis), a publication reaches this node's subscribers through here: queued for
//! the live ones, held for the joining ones until their reply is out, cut off (3008) for one whose
//! queue is full, never slowing the others. The Redis link relays publications from other nodes
//! into it and checks its positions after a reconnect; it depends on this, not on the broker.

use crate::history::{HistoryLimits, Stream, StreamPosition, StreamPublication};
use crate::outbound::{Delivery, Outbound};
use dashmap::DashMap;
use serde_json::Value;
use shared::protocol::disconnect;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// A subscriber of a channel on this node.
#[derive(Debug)]
struct Member {
    subscriber: Subscriber,
    /// While joining: live publications held back until the reply is out.
    joining: Option<Vec<Arc<Delivery>>>,
}

/// A channel as this node knows it.
#[derive(Debug)]
pub(crate) struct ChannelState {
    /// In-process backend: the stream itself. Redis backend: unused (always empty).
    pub(crate) stream: Stream,
    /// Redis backend: the last position this node saw of the channel.
    pub(crate) seen: Option<StreamPosition>,
    /// Invariant: every member here has an open queue (closed ones are removed on delivery).
    members: HashMap<u64, Member>,
    /// Last publish, subscribe or unsubscribe.
    pub(crate) last_activity: Instant,
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
    pub(crate) fn fan_out(&mut self, delivery: &Arc<Delivery>) -> u64 {
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

    /// Registers `subscriber` as joining.
    pub(crate) fn join(&mut self, subscriber: Subscriber) {
        self.last_activity = Instant::now();
        let id = subscriber.id;
        let member = Member {
            subscriber,
            joining: Some(Vec::new()),
        };
        self.members.insert(id, member);
    }

    /// Removes a member; whether the channel has none left.
    pub(crate) fn leave(&mut self, id: u64) -> bool {
        self.members.remove(&id);
        self.last_activity = Instant::now();
        self.members.is_empty()
    }

    /// Whether the channel has local subscribers.
    pub(crate) fn is_unused(&self) -> bool {
        self.members.is_empty()
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

/// Locks a channel (a poisoned lock is taken over: the state stays consistent per operation).
pub(crate) fn lock(state: &Mutex<ChannelState>) -> std::sync::MutexGuard<'_, ChannelState> {
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
pub(crate) fn observe_latency(data: &Value, delivered: u64) {
    if delivered == 0 {
        return;
    }
    metrics::counter!("hub_publications_delivered_total").increment(delivered);
    if let Some(ts) = data.get("ts").and_then(Value::as_i64) {
        let seconds = (now_ms() - ts).max(0) as f64 / 1000.0;
        metrics::histogram!("hub_publish_deliver_latency_seconds").record(seconds);
    }
}

/// This node's channels and their local subscribers.
#[derive(Debug, Default)]
pub struct LocalChannels {
    channels: DashMap<Arc<str>, Arc<Mutex<ChannelState>>>,
}

impl LocalChannels {
    /// A channel's state, created when new.
    pub(crate) fn channel(&self, channel: &str) -> (Arc<str>, Arc<Mutex<ChannelState>>) {
        if let Some(entry) = self.channels.get(channel) {
            return (entry.key().clone(), entry.value().clone());
        }
        let entry = self.channels.entry(Arc::from(channel)).or_default();
        (entry.key().clone(), entry.value().clone())
    }

    /// A channel's state, if the node knows it.
    pub(crate) fn existing(&self, channel: &str) -> Option<(Arc<str>, Arc<Mutex<ChannelState>>)> {
        self.channels
            .get(channel)
            .map(|entry| (entry.key().clone(), entry.value().clone()))
    }

    /// Makes a joining subscriber live: queues what was buffered for it beyond `reached` (in the
    /// same `epoch`), in order. A buffered publication of another epoch means the stream was reset
    /// while it joined: it is told to resync (3010).
    pub fn activate(&self, channel: &str, subscriber_id: u64, reached: u64, epoch: &str) {
        let Some((_, state)) = self.existing(channel) else {
            return;
        };
        let mut state = lock(&state);
        let Some(member) = state.members.get_mut(&subscriber_id) else {
            return;
        };
        let buffered = member.joining.take().unwrap_or_default();
        // In-process streams are never seen from outside (`seen` stays empty): one epoch.
        let same_epoch = state.seen.as_ref().is_none_or(|seen| seen.epoch == epoch);
        if !buffered.is_empty() && !same_epoch {
            if let Some(member) = state.members.remove(&subscriber_id) {
                let _ = member.subscriber.sender.try_send(Outbound::Close {
                    code: disconnect::INSUFFICIENT_STATE,
                    reason: "stream reset".into(),
                });
            }
            return;
        }
        for delivery in buffered {
            if delivery.publication.offset <= reached {
                continue;
            }
            let Some(member) = state.members.get_mut(&subscriber_id) else {
                return;
            };
            if member
                .subscriber
                .sender
                .try_send(Outbound::Push(delivery))
                .is_err()
            {
                member.subscriber.overflow.cancel();
                state.members.remove(&subscriber_id);
                return;
            }
        }
    }

    /// A publication relayed from another node: checked for continuity, then fanned out.
    pub(crate) fn deliver_remote(&self, channel: &str, position: StreamPosition, data: Value) {
        let Some((name, state)) = self.existing(channel) else {
            return;
        };
        let mut state = lock(&state);
        let offset = position.offset;
        match &state.seen {
            Some(seen) if seen.epoch == position.epoch && offset <= seen.offset => return,
            Some(seen) if seen.epoch != position.epoch || offset != seen.offset + 1 => {
                tracing::warn!(
                    channel,
                    seen = seen.offset,
                    offset,
                    "channel stream jumped: resync"
                );
                state.resync("insufficient state");
            }
            _ => {}
        }
        state.seen = Some(position);
        state.last_activity = Instant::now();
        let data = Arc::new(data);
        let delivery = Delivery::new(
            name,
            StreamPublication {
                offset,
                data: data.clone(),
            },
        );
        let delivered = state.fan_out(&delivery);
        observe_latency(&data, delivered);
    }

    /// After the link to the other nodes came back: a channel whose stream moved on (or was
    /// reset) meanwhile has its subscribers resync (3010).
    pub(crate) fn check_position(&self, channel: &str, position: StreamPosition) {
        let Some((_, state)) = self.existing(channel) else {
            return;
        };
        let mut state = lock(&state);
        // Nothing seen yet: the channel is still joining, and its reads set the position.
        let current = state.seen.as_ref().is_none_or(|seen| *seen == position);
        if !current {
            state.resync("insufficient state: link to the other nodes was lost");
            state.seen = Some(position);
        }
    }

    /// Channels this node listens to (in Redis).
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
    /// longer than the history's lifetime; returns how many.
    pub(crate) fn sweep_at(&self, now: Instant, limits: HistoryLimits) -> usize {
        let before = self.channels.len();
        self.channels.retain(|_, state| {
            let mut state = lock(state);
            let listening = state
                .topic
                .try_lock()
                .map_or(true, |subscribed| *subscribed);
            // A Redis-backed channel's local stream is always empty, hence idle.
            let idle = state.members.is_empty()
                && !listening
                && now.duration_since(state.last_activity) > limits.ttl
                && state.stream.is_idle(now, limits);
            !idle
        });
        before - self.channels.len()
    }

    /// Channels the node knows (subscribed, or keeping history).
    pub fn known_channels(&self) -> usize {
        self.channels.len()
    }

    /// Channels with at least one local subscriber.
    pub fn subscribed_channels(&self) -> usize {
        self.channels
            .iter()
            .filter(|entry| !lock(entry.value()).members.is_empty())
            .count()
    }
}
