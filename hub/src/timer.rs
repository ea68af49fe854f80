//! The node's session timer service: one task holding every session's next timer in a
//! `DelayQueue`, instead of a sleeping task per session. A session has one timer at a time (its
//! next connect deadline, ping, pong deadline or token expiry, see [`crate::session`]); an entry
//! costs tens of bytes where a task with its own sleep cost hundreds.

use crate::session::SessionMsg;
use futures_util::StreamExt;
use ractor::ActorRef;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

/// A timer request: at `due`, send `Tick(generation)` to the session.
type Request = (Instant, ActorRef<SessionMsg>, u64);

/// Handle to the timer service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Timers {
    requests: mpsc::UnboundedSender<Request>,
}

impl Timers {
    /// Starts the service; it runs until every handle is dropped.
    pub fn start() -> Self {
        let (requests, mut incoming) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            let mut queue: DelayQueue<(ActorRef<SessionMsg>, u64)> = DelayQueue::new();
            loop {
                tokio::select! {
                    request = incoming.recv() => match request {
                        Some((due, session, generation)) => {
                            queue.insert_at((session, generation), due.into());
                        }
                        None => return,
                    },
                    Some(expired) = queue.next(), if !queue.is_empty() => {
                        let (session, generation) = expired.into_inner();
                        // A session that has stopped no longer takes messages: nothing to do.
                        let _ = session.cast(SessionMsg::Tick(generation));
                    }
                }
            }
        });
        Self { requests }
    }

    /// Sends `Tick(generation)` to `session` at `due`.
    pub fn arm(&self, due: Instant, session: ActorRef<SessionMsg>, generation: u64) {
        let _ = self.requests.send((due, session, generation));
    }
}
