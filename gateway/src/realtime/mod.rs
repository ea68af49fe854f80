//! The realtime side of the node: the broker, the session supervisor, the WebSocket transport,
//! and what sessions need from the gateway (token checks and channel permissions).

pub mod authority;
pub mod publish;
pub mod sse;
pub mod websocket;

use crate::state::AppState;
use hub::broker::Broker;
use hub::outbound::Outbound;
use hub::session::{SessionActor, SessionArgs, SessionConfig, SessionMsg, SessionSupervisor};
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The node's realtime machinery.
#[derive(Debug, Clone)]
pub struct Realtime {
    /// Channels, history and local subscribers.
    pub broker: Arc<Broker>,
    /// Parent of every session actor.
    pub supervisor: ActorRef<()>,
    /// Session timing and limits.
    pub session: SessionConfig,
    /// The sessions' timers.
    pub timers: hub::timer::Timers,
    next_session: Arc<AtomicU64>,
    /// Invariant: open WebSocket connections of this node.
    connections: Arc<AtomicUsize>,
}

impl Realtime {
    /// Starts the session supervisor and the broker: in Redis when `redis` is given (keys under
    /// `prefix`), in-process otherwise.
    pub async fn start(
        settings: &crate::settings::RealtimeSettings,
        redis: Option<redis::Client>,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, ()).await?;
        let broker = match redis {
            Some(client) => Broker::with_redis(settings.history(), client, prefix),
            None => Arc::new(Broker::new(settings.history())),
        };
        Ok(Self {
            broker,
            supervisor,
            session: settings.session(),
            timers: hub::timer::Timers::start(),
            next_session: Arc::new(AtomicU64::new(1)),
            connections: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A new session id.
    pub fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a connection in if under `limit`.
    pub fn admit(&self, limit: usize) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .is_ok()
    }

    /// Counts a connection out.
    pub fn release(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Closes every session with 3001 (shutdown), spread evenly over `spread`.
    pub async fn drain(&self, spread: std::time::Duration) {
        let sessions = self.supervisor.get_children();
        if sessions.is_empty() {
            return;
        }
        let step = spread / sessions.len() as u32;
        tracing::info!(
            sessions = sessions.len(),
            ?spread,
            "closing sessions (3001)"
        );
        for session in sessions {
            let _ = session.send_message(SessionMsg::Disconnect(
                shared::protocol::disconnect::SHUTDOWN,
                "shutdown".into(),
            ));
            tokio::time::sleep(step).await;
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// A session actor started for a new connection, with the queue its transport drains.
#[derive(Debug)]
pub struct OpenSession {
    /// The session actor.
    pub actor: ActorRef<SessionMsg>,
    /// The session's bounded outbound queue.
    pub queue: mpsc::Receiver<Outbound>,
    /// Cancelled when the queue overflowed (close with 3008).
    pub overflow: CancellationToken,
}

/// Starts the session actor of an admitted connection; gives the admission back when it cannot.
pub async fn open_session(state: &AppState) -> Result<OpenSession, ractor::SpawnErr> {
    let realtime = &state.realtime;
    let (outbound, queue) = mpsc::channel(state.settings.realtime.outbound_queue);
    let overflow = CancellationToken::new();
    let args = SessionArgs {
        id: realtime.session_id(),
        node: state.settings.node_id.clone(),
        broker: realtime.broker.clone(),
        authority: state.authority.clone(),
        outbound,
        overflow: overflow.clone(),
        config: realtime.session,
        timers: realtime.timers.clone(),
    };
    match Actor::spawn_linked(None, SessionActor, args, realtime.supervisor.get_cell()).await {
        Ok((actor, _)) => Ok(OpenSession {
            actor,
            queue,
            overflow,
        }),
        Err(error) => {
            realtime.release();
            Err(error)
        }
    }
}
