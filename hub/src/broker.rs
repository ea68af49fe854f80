//! The in-process broker: channel streams and the local subscribers they fan out to. Redis links
//! several nodes' brokers (a later step); on one node this is the whole path.
//!
//! Subscribing and publishing on a channel hold its lock, so a subscriber's recovered history and
//! its live stream meet exactly: nothing missed, nothing twice. Each subscriber has a bounded
//! queue; one that cannot keep up is cut off and told so through its `overflow` token (its
//! session then disconnects it with 3008), never slowed down for others or silently skipped.

use crate::history::{HistoryLimits, Recovery, Stream, StreamPublication};
use crate::outbound::Outbound;
use dashmap::DashMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
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

#[derive(Debug)]
struct ChannelState {
    stream: Stream,
    /// Invariant: every subscriber here has an open queue (closed ones are removed on publish).
    subscribers: HashMap<u64, Subscriber>,
    /// Last publish, subscribe or unsubscribe.
    last_activity: Instant,
}

impl Default for ChannelState {
    fn default() -> Self {
        Self {
            stream: Stream::new(),
            subscribers: HashMap::new(),
            last_activity: Instant::now(),
        }
    }
}

/// Channels of this node.
#[derive(Debug, Default)]
pub struct Broker {
    limits: HistoryLimits,
    channels: DashMap<Arc<str>, Arc<Mutex<ChannelState>>>,
}

fn lock(state: &Mutex<ChannelState>) -> std::sync::MutexGuard<'_, ChannelState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker {
    /// A broker keeping `limits` of history per channel.
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            channels: DashMap::new(),
        }
    }

    fn channel(&self, channel: &str) -> (Arc<str>, Arc<Mutex<ChannelState>>) {
        if let Some(entry) = self.channels.get(channel) {
            return (entry.key().clone(), entry.value().clone());
        }
        let entry = self.channels.entry(Arc::from(channel)).or_default();
        (entry.key().clone(), entry.value().clone())
    }

    /// Publishes `data` on `channel`: the next offset, into history, to every local subscriber.
    pub fn publish(&self, channel: &str, data: Value) -> StreamPublication {
        let (name, state) = self.channel(channel);
        let mut state = lock(&state);
        let now = Instant::now();
        state.last_activity = now;
        let publication = state.stream.append(Arc::new(data), now, self.limits);
        let frame = push_frame(&name, &publication);
        let delivery = Delivery {
            channel: name,
            publication: publication.clone(),
            frame,
        };
        state.subscribers.retain(|_, subscriber| {
            match subscriber.sender.try_send(Outbound::Push(delivery.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.overflow.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        publication
    }

    /// Subscribes `subscriber` to `channel`, recovering from (`offset`, `epoch`) when asked.
    pub fn subscribe(
        &self,
        channel: &str,
        subscriber: Subscriber,
        recover: Option<(u64, &str)>,
    ) -> Subscribed {
        let (_, state) = self.channel(channel);
        let mut state = lock(&state);
        state.last_activity = Instant::now();
        let subscribed = match recover {
            Some((offset, epoch)) => {
                let Recovery {
                    recovered,
                    offset,
                    epoch,
                    publications,
                } = state
                    .stream
                    .recover(offset, epoch, Instant::now(), self.limits);
                Subscribed {
                    offset,
                    epoch,
                    recovered,
                    publications,
                }
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
        };
        state.subscribers.insert(subscriber.id, subscriber);
        subscribed
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, channel: &str, subscriber_id: u64) {
        let Some(state) = self
            .channels
            .get(channel)
            .map(|entry| entry.value().clone())
        else {
            return;
        };
        let mut state = lock(&state);
        state.subscribers.remove(&subscriber_id);
        state.last_activity = Instant::now();
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
        self.channels.retain(|_, state| {
            let mut state = lock(state);
            let idle = state.subscribers.is_empty()
                && now.duration_since(state.last_activity) > self.limits.ttl
                && state.stream.is_idle(now, self.limits);
            !idle
        });
        before - self.channels.len()
    }

    /// The (top offset, epoch) of a channel this node knows.
    pub fn position(&self, channel: &str) -> Option<(u64, String)> {
        let state = self.channels.get(channel)?.value().clone();
        let state = lock(&state);
        let (offset, epoch) = state.stream.position();
        Some((offset, epoch.to_owned()))
    }

    /// Channels with at least one local subscriber.
    pub fn subscribed_channels(&self) -> usize {
        self.channels
            .iter()
            .filter(|entry| !lock(entry.value()).subscribers.is_empty())
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

    #[test]
    fn subscribers_receive_publications_in_offset_order() {
        let broker = Broker::new(HistoryLimits::default());
        let (alice, mut inbox) = subscriber(1, 16);
        broker.subscribe("task:1", alice, None);

        for n in 0..3 {
            broker.publish("task:1", json!({ "n": n }));
        }

        let offsets: Vec<u64> = std::iter::from_fn(|| inbox.try_recv().ok())
            .filter_map(|item| match item {
                Outbound::Push(delivery) => Some(delivery.publication.offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, vec![1, 2, 3]);
    }

    #[test]
    fn a_returning_subscriber_recovers_exactly_what_it_missed() {
        let broker = Broker::new(HistoryLimits::default());
        let (first, _) = subscriber(1, 16);
        let start = broker.subscribe("task:1", first, None);
        broker.unsubscribe("task:1", 1);
        broker.publish("task:1", json!({ "n": 1 }));
        broker.publish("task:1", json!({ "n": 2 }));

        let (again, mut inbox) = subscriber(2, 16);
        let back = broker.subscribe("task:1", again, Some((start.offset, &start.epoch)));
        broker.publish("task:1", json!({ "n": 3 }));

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

    #[test]
    fn a_subscriber_that_does_not_read_is_cut_off_without_slowing_others() {
        let broker = Broker::new(HistoryLimits::default());
        let (slow, _slow_inbox) = subscriber(1, 2);
        let slow_overflow = slow.overflow.clone();
        let (fast, mut fast_inbox) = subscriber(2, 64);
        broker.subscribe("task:1", slow, None);
        broker.subscribe("task:1", fast, None);

        for n in 0..10 {
            broker.publish("task:1", json!({ "n": n }));
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

    #[test]
    fn idle_channels_are_swept_only_once_their_history_lifetime_passed() {
        let limits = HistoryLimits {
            max_size: 10,
            ttl: std::time::Duration::from_millis(30),
        };
        let broker = Broker::new(limits);
        let (alice, _inbox) = subscriber(1, 4);
        broker.subscribe("user:alice", alice, None);
        broker.publish("user:alice", json!({}));
        broker.unsubscribe("user:alice", 1);
        assert_eq!(broker.subscribed_channels(), 0);
        assert_eq!(broker.sweep(), 0, "history still alive: kept for recovery");

        let later = Instant::now() + std::time::Duration::from_millis(40);

        assert_eq!(broker.sweep_at(later), 1);
        assert!(broker.channels.is_empty());
    }
}
