//! The broker: channel streams and the local subscribers they fan out to.
//!
//! Two backends behind one face ([`Backend`]). **In-process** (one node): each channel's stream and
//! history live in this node's channel state, and publishing appends and fans out under the
//! channel's lock. **Redis** (several nodes): the stream lives in Redis ([`crate::redis_link`]): a
//! publish is one script that takes the next offset, appends to the channel's Redis stream and
//! publishes on the channel's pub/sub topic; every node subscribed to that topic (only nodes with
//! local subscribers are) relays the publication into its local fan-out ([`crate::fanout`]). A
//! node that sees a channel's offsets jump or its epoch change (a lost link, a restarted Redis)
//! tells that channel's subscribers to reconnect and recover (3010): never a silent gap.
//!
//! Subscribing is two steps so the reply and the live stream meet exactly: [`Broker::subscribe`]
//! registers the subscriber as *joining* (live publications are buffered for it) and returns the
//! position and any recovered history; the session sends its reply, then [`Broker::activate`]
//! flushes what was buffered beyond that position and makes the subscriber live. Each subscriber
//! has a bounded queue; one that cannot keep up is cut off and told so through its `overflow`
//! token (its session then disconnects it with 3008), never slowed down for others.

pub use crate::fanout::Subscriber;
pub use crate::history::{StreamPosition, Subscribed};
pub use crate::outbound::{Delivery, push_frame};
pub use crate::redis_link::BrokerError;

use crate::fanout::{LocalChannels, lock, observe_latency};
use crate::history::HistoryLimits;
use crate::redis_link::RedisLink;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where the channels' streams live.
#[derive(Debug)]
enum Backend {
    /// In this process: one node.
    Memory,
    /// In Redis, linking the nodes.
    Redis(Arc<RedisLink>),
}

/// Channels of this node and the backend holding their streams.
#[derive(Debug)]
pub struct Broker {
    limits: HistoryLimits,
    local: Arc<LocalChannels>,
    backend: Backend,
}

impl Broker {
    /// An in-process broker keeping `limits` of history per channel.
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            local: Arc::default(),
            backend: Backend::Memory,
        }
    }

    /// A broker whose streams live in Redis (`client`, keys under `prefix`); starts the link,
    /// which relays publications into this node's fan-out and keeps reconnecting until the
    /// broker is dropped.
    pub fn with_redis(limits: HistoryLimits, client: redis::Client, prefix: &str) -> Arc<Self> {
        let local: Arc<LocalChannels> = Arc::default();
        let link = RedisLink::start(client, prefix, limits, local.clone());
        Arc::new(Self {
            limits,
            local,
            backend: Backend::Redis(link),
        })
    }

    /// The history limits.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Whether the node is linked to its peers: always with the in-process backend; with Redis,
    /// while the pub/sub link is up.
    pub fn is_linked(&self) -> bool {
        match &self.backend {
            Backend::Memory => true,
            Backend::Redis(link) => link.is_up(),
        }
    }

    /// Whether streams live in Redis.
    pub fn uses_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Publishes `data` on `channel`: the next offset, into history, to every subscriber (on
    /// every node, with Redis).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<StreamPosition, BrokerError> {
        metrics::counter!("hub_publications_total").increment(1);
        if let Backend::Redis(link) = &self.backend {
            return link.publish(channel, &data).await;
        }
        let (name, state) = self.local.channel(channel);
        let mut state = lock(&state);
        let now = Instant::now();
        state.last_activity = now;
        let data = Arc::new(data);
        let publication = state.stream.append(data.clone(), now, self.limits);
        let offset = publication.offset;
        let delivered = state.fan_out(&Delivery::new(name, publication));
        observe_latency(&data, delivered);
        Ok(StreamPosition {
            offset,
            epoch: state.stream.position().epoch,
        })
    }

    /// Publishes, and if Redis is unreachable keeps the publication (in order, bounded) to
    /// publish once the link is back: for events already committed elsewhere (task events).
    pub async fn publish_or_keep(&self, channel: &str, data: Value) {
        match &self.backend {
            Backend::Redis(link) => link.publish_or_keep(channel, data).await,
            Backend::Memory => {
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
        let (name, state) = self.local.channel(channel);
        let link = {
            let mut state = lock(&state);
            state.join(subscriber);
            match &self.backend {
                Backend::Memory => {
                    let now = Instant::now();
                    return Ok(match recover {
                        Some((offset, epoch)) => {
                            state.stream.recover(offset, epoch, now, self.limits)
                        }
                        None => Subscribed::at(state.stream.position()),
                    });
                }
                Backend::Redis(link) => link.clone(),
            }
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
                lock(&state).leave(id);
                self.forget_if_unused(&name, &state);
                Err(error)
            }
        }
    }

    /// Makes a joining subscriber live (see [`LocalChannels::activate`]).
    pub fn activate(&self, channel: &str, subscriber_id: u64, reached: u64, epoch: &str) {
        self.local.activate(channel, subscriber_id, reached, epoch);
    }

    /// Removes a subscriber; with Redis, the node leaves the channel's topic after the last one.
    pub fn unsubscribe(&self, channel: &str, subscriber_id: u64) {
        let Some((name, state)) = self.local.existing(channel) else {
            return;
        };
        lock(&state).leave(subscriber_id);
        self.forget_if_unused(&name, &state);
    }

    /// With Redis: leaves the topic of a channel without local subscribers (in the background).
    fn forget_if_unused(&self, name: &Arc<str>, state: &Arc<Mutex<crate::fanout::ChannelState>>) {
        let Backend::Redis(link) = &self.backend else {
            return;
        };
        if !lock(state).is_unused() {
            return;
        }
        let (link, name, state) = (link.clone(), name.clone(), state.clone());
        tokio::spawn(async move {
            let topic = lock(&state).topic.clone();
            let mut subscribed = topic.lock().await;
            if *subscribed && lock(&state).is_unused() {
                link.unlisten(&name).await;
                *subscribed = false;
                lock(&state).seen = None;
            }
        });
    }

    /// Forgets channels nobody listens to whose history has expired and that have been idle
    /// longer than the history's lifetime; returns how many. A forgotten channel that comes back
    /// starts a new epoch, which is right: anything it published has expired. Run periodically.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    /// [`Broker::sweep`] as of `now`.
    pub fn sweep_at(&self, now: Instant) -> usize {
        self.local.sweep_at(now, self.limits)
    }

    /// Channels with at least one local subscriber.
    pub fn subscribed_channels(&self) -> usize {
        self.local.subscribed_channels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryLimits;
    use crate::outbound::Outbound;
    use serde_json::json;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

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
        broker.activate(
            channel,
            id,
            subscribed.reached(),
            &subscribed.position.epoch,
        );
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
        let back = join(
            &broker,
            "task:1",
            again,
            Some((start.position.offset, &start.position.epoch)),
        )
        .await;
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
        assert_eq!(broker.local.known_channels(), 0);
    }
}

#[cfg(test)]
mod joining {
    use super::*;
    use crate::history::HistoryLimits;
    use crate::outbound::Outbound;
    use serde_json::json;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

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
        broker.activate(
            "task:1",
            7,
            subscribed.reached(),
            &subscribed.position.epoch,
        );
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
