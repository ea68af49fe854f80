//! A channel's stream: publications numbered by offset (1, 2, 3, … per channel) within an epoch,
//! and a history bounded by count and age from which a returning client recovers what it missed.
//! The epoch changes whenever history may have been lost, so a client is never told it recovered
//! a gap it did not.

use serde_json::Value;
use shared::protocol::Publication;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Most publications kept (0: no history, nothing recoverable).
    pub max_size: usize,
    /// Oldest publication kept.
    pub ttl: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_size: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

/// One publication of a stream, shared by every subscriber it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPublication {
    /// Position in the channel's stream.
    pub offset: u64,
    /// Payload.
    pub data: Arc<Value>,
}

impl StreamPublication {
    /// The protocol form.
    pub fn to_protocol(&self) -> Publication {
        Publication {
            data: (*self.data).clone(),
            offset: self.offset,
        }
    }
}

/// A new random epoch.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A point in a channel's stream: an offset within an epoch. What a publish returns, what a
/// node remembers of a channel it relays, what a client recovers from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamPosition {
    /// Offset in the stream (0: nothing published yet).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// What subscribing (and recovering) found.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribed {
    /// The stream's top when subscribed, or the requested offset when recovered.
    pub position: StreamPosition,
    /// Whether every missed publication is in `publications` (false when none was asked).
    pub recovered: bool,
    /// The missed publications (empty unless recovered).
    pub publications: Vec<StreamPublication>,
}

impl Subscribed {
    /// Subscribed at `position`, nothing recovered.
    pub fn at(position: StreamPosition) -> Self {
        Self {
            position,
            recovered: false,
            publications: Vec::new(),
        }
    }

    /// The offset the subscriber is at once it has these publications.
    pub fn reached(&self) -> u64 {
        self.publications
            .last()
            .map_or(self.position.offset, |last| {
                last.offset.max(self.position.offset)
            })
    }
}

/// The stream of one channel.
#[derive(Debug)]
pub struct Stream {
    epoch: String,
    top: u64,
    /// Invariant: offsets strictly increasing by one, the last one being `top`.
    history: VecDeque<(StreamPublication, Instant)>,
}

impl Stream {
    /// A new, empty stream with a fresh epoch.
    pub fn new() -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            history: VecDeque::new(),
        }
    }

    /// The stream's position: its top offset and epoch.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    /// Appends a publication; returns it with its offset.
    pub fn append(
        &mut self,
        data: Arc<Value>,
        now: Instant,
        limits: HistoryLimits,
    ) -> StreamPublication {
        self.top += 1;
        let publication = StreamPublication {
            offset: self.top,
            data,
        };
        if limits.max_size > 0 {
            self.history.push_back((publication.clone(), now));
        }
        self.trim(now, limits);
        publication
    }

    fn trim(&mut self, now: Instant, limits: HistoryLimits) {
        while self.history.len() > limits.max_size {
            self.history.pop_front();
        }
        while self
            .history
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > limits.ttl)
        {
            self.history.pop_front();
        }
    }

    /// Whether the stream holds no history (it can be dropped when nobody listens either).
    pub fn is_idle(&mut self, now: Instant, limits: HistoryLimits) -> bool {
        self.trim(now, limits);
        self.history.is_empty()
    }

    /// What a client that last saw (`offset`, `epoch`) missed, by the rules of `realtime.md`:
    /// another epoch is not recovered; nothing missed is recovered exactly when the client is at
    /// the top; otherwise recovered only when history holds every publication from `offset + 1`
    /// to the top.
    pub fn recover(
        &mut self,
        offset: u64,
        epoch: &str,
        now: Instant,
        limits: HistoryLimits,
    ) -> Subscribed {
        self.trim(now, limits);
        recover_from(
            &self.position(),
            self.history
                .iter()
                .map(|(publication, _)| publication.clone()),
            offset,
            epoch,
        )
    }
}

/// The recovery rules over a stream at `position` (its top and epoch) whose retained `history` is in
/// offset order: another epoch is not recovered; nothing missed is recovered exactly when the
/// client is at the top; otherwise recovered only when history holds every publication from
/// `offset + 1` to the top. Shared by the in-memory streams and the Redis ones.
pub fn recover_from(
    position: &StreamPosition,
    history: impl IntoIterator<Item = StreamPublication>,
    offset: u64,
    epoch: &str,
) -> Subscribed {
    let (top, current) = (position.offset, position.epoch.as_str());
    let not_recovered = || Subscribed::at(position.clone());
    if !epoch.is_empty() && epoch != current {
        return not_recovered();
    }
    let missed: Vec<StreamPublication> = history
        .into_iter()
        .filter(|publication| publication.offset > offset)
        .collect();
    let recovered = match (missed.first(), missed.last()) {
        (None, _) | (_, None) => top == offset,
        (Some(first), Some(last)) => first.offset == offset + 1 && last.offset == top,
    };
    if recovered {
        Subscribed {
            position: StreamPosition {
                offset,
                epoch: current.to_owned(),
            },
            recovered: true,
            publications: missed,
        }
    } else {
        not_recovered()
    }
}

impl Default for Stream {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits {
        max_size: 3,
        ttl: Duration::from_secs(60),
    };

    fn stream_with(n: u64) -> (Stream, Instant) {
        let now = Instant::now();
        let mut stream = Stream::new();
        for i in 1..=n {
            stream.append(Arc::new(serde_json::json!({ "n": i })), now, LIMITS);
        }
        (stream, now)
    }

    fn offsets(recovery: &Subscribed) -> Vec<u64> {
        recovery
            .publications
            .iter()
            .map(|publication| publication.offset)
            .collect()
    }

    #[test]
    fn offsets_grow_by_one_per_publication() {
        let (stream, _) = stream_with(5);
        assert_eq!(stream.position().offset, 5);
    }

    #[test]
    fn a_client_at_the_top_recovers_nothing_and_is_recovered() {
        let (mut stream, now) = stream_with(2);
        let epoch = stream.position().epoch;
        let recovery = stream.recover(2, &epoch, now, LIMITS);
        assert!(recovery.recovered && recovery.publications.is_empty());
    }

    #[test]
    fn missed_publications_within_history_are_recovered_in_order() {
        let (mut stream, now) = stream_with(5);
        let epoch = stream.position().epoch;
        let recovery = stream.recover(3, &epoch, now, LIMITS);
        assert!(recovery.recovered);
        assert_eq!(
            (offsets(&recovery), recovery.position.offset),
            (vec![4, 5], 3)
        );
    }

    #[test]
    fn a_gap_beyond_the_history_limit_is_not_recovered() {
        let (mut stream, now) = stream_with(5);
        let epoch = stream.position().epoch;
        let recovery = stream.recover(1, &epoch, now, LIMITS);
        assert!(!recovery.recovered && recovery.publications.is_empty());
        assert_eq!(recovery.position.offset, 5, "the client is told the top");
    }

    #[test]
    fn another_epoch_is_not_recovered() {
        let (mut stream, now) = stream_with(2);
        let recovery = stream.recover(2, "older-epoch", now, LIMITS);
        assert!(!recovery.recovered);
        assert_eq!(recovery.position.epoch, stream.position().epoch);
    }

    #[test]
    fn expired_history_is_not_recovered() {
        let (mut stream, now) = stream_with(2);
        let epoch = stream.position().epoch;
        let later = now + Duration::from_secs(61);
        assert!(!stream.recover(1, &epoch, later, LIMITS).recovered);
        assert!(stream.is_idle(later, LIMITS));
    }

    #[test]
    fn each_stream_has_its_own_epoch() {
        assert_ne!(
            Stream::new().position().epoch,
            Stream::new().position().epoch
        );
    }
}
