//! Session actors: one per connection, under a per-node supervisor that keeps running when a
//! session ends. A session owns the protocol state of its client (Centrifugo protocol v2, JSON):
//! authentication, the personal channel (a server-side subscription), subscriptions, heartbeat
//! (server pings; a silent client is closed with 3012), token expiry and refresh (3005), and the
//! errors and disconnect codes of `realtime.md`. Transports only move frames: text in as
//! [`SessionMsg::Frame`], everything out through the session's bounded [`Outbound`] queue.

use crate::broker::{Broker, Subscriber};
use crate::channel::Channel;
use crate::outbound::Outbound;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{Value, json};
use shared::Role;
use shared::protocol::{
    Command, ConnectRequest, ConnectResult, ProtocolError, Publication, SubscribeRequest,
    SubscribeResult, disconnect, error,
};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The server version reported to clients.
pub const VERSION: &str = concat!("hub/", env!("CARGO_PKG_VERSION"));

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub user_id: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Token expiry, Unix seconds.
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Valid but expired: the client should fetch a new one.
    Expired,
    /// Anything else.
    Invalid,
}

/// A boxed future (the authority is used as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What sessions ask the rest of the system: token checks and channel permissions.
pub trait Authority: Send + Sync + 'static {
    /// Verifies a connection token.
    fn authenticate(&self, token: &str) -> Result<Identity, AuthError>;
    /// Whether `identity` may subscribe to `channel` (Err: could not tell, temporary).
    fn may_subscribe<'a>(
        &'a self,
        identity: &'a Identity,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// Session timing and limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// How long a client has to answer a ping.
    pub pong_timeout: Duration,
    /// How long a client has to send `connect`.
    pub connect_timeout: Duration,
    /// Most subscriptions per session (the personal channel included).
    pub max_subscriptions: usize,
    /// How long past its token's expiry a session may still refresh before it is closed with
    /// 3005 (the SDK refreshes right at `ttl`, so this absorbs its round trip).
    pub expiry_grace: Duration,
    /// Commands a session may send per second, sustained; beyond, error 111.
    pub command_rate: u32,
    /// Commands a session may send at once above its rate; this many refused in a row: 3013.
    pub command_burst: u32,
    /// Errors (refused, denied, malformed or unknown commands) a session may cause in a burst;
    /// one is forgiven every [`ERROR_FORGIVENESS`]; past the budget: 3509.
    pub max_errors: u32,
    /// Channels whose permission answer a session remembers for its life.
    pub permission_cache: usize,
}

/// How often one error of a session's budget is forgiven.
pub const ERROR_FORGIVENESS: Duration = Duration::from_secs(5);

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(capacity: f64) -> Self {
        Self {
            tokens: capacity,
            updated: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, capacity: f64, per_second: f64) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_subscriptions: 128,
            expiry_grace: Duration::from_secs(25),
            command_rate: 50,
            command_burst: 100,
            max_errors: 20,
            permission_cache: 256,
        }
    }
}

/// Everything a session starts with.
pub struct SessionArgs {
    /// Unique on the node.
    pub id: u64,
    /// This node.
    pub node: String,
    /// The node's broker.
    pub broker: Arc<Broker>,
    /// Token checks and permissions.
    pub authority: Arc<dyn Authority>,
    /// The session's bounded outbound queue (the transport drains it).
    pub outbound: mpsc::Sender<Outbound>,
    /// Cancelled when the queue overflowed; the transport then closes with 3008.
    pub overflow: CancellationToken,
    /// Timing and limits.
    pub config: SessionConfig,
    /// The node's timer service (the session's one timer lives there).
    pub timers: crate::timer::Timers,
}

impl std::fmt::Debug for SessionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionArgs")
            .field("id", &self.id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("id", &self.args.id)
            .field("identity", &self.identity)
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

/// Messages of a session actor.
#[derive(Debug)]
pub enum SessionMsg {
    /// A text frame from the client, with the transport's permit to read another: the transport
    /// holds only a few permits, so it stops reading while the session is behind (backpressure
    /// down to TCP), and the mailbox never holds more than that many frames per session.
    Frame(String, Option<tokio::sync::OwnedSemaphorePermit>),
    /// The transport closed (client left or write failed).
    TransportClosed,
    /// The session's one timer, of generation `n`: whatever is due (connect deadline, ping, pong
    /// deadline, token expiry) is done, and the timer is set again for the next thing.
    Tick(u64),
    /// Close with this code (server shutdown: 3001).
    Disconnect(u16, String),
}

/// State of a session.
pub struct SessionState {
    args: SessionArgs,
    identity: Option<Identity>,
    /// Invariant: every channel here is subscribed in the broker under `args.id`.
    subscriptions: HashSet<String>,
    /// Channels joined whose reply is not queued yet: (channel, offset reached, epoch).
    joining: Vec<(String, u64, String)>,
    /// The ping awaiting its pong, if any.
    awaiting_pong: Option<u64>,
    pings: u64,
    /// When the next ping is due (`None` before `connect`).
    next_ping: Option<Instant>,
    /// When the unanswered ping's pong is due.
    pong_deadline: Option<Instant>,
    /// When the `connect` must have come.
    connect_deadline: Instant,
    /// Bumped each time the timer is set, so a superseded one is ignored. One timer per session
    /// (not one per ping, pong and token) keeps an idle session small.
    tick_generation: u64,
    closed: bool,
    /// Commands allowed now (rate limit).
    commands: Bucket,
    /// Commands refused for the rate in a row (3013 past `command_burst`).
    refused_in_a_row: u32,
    /// Errors the session may still cause (3509 once spent).
    error_budget: Bucket,
    /// Invariant: at most `permission_cache` channels; the answer of each permission check made
    /// for this session (its identity cannot change: a refresh for another user is 3500).
    permissions: std::collections::HashMap<String, bool>,
}

/// One connection's actor.
#[derive(Debug)]
pub struct SessionActor;

fn frame(value: Value) -> Outbound {
    Outbound::Frame(Arc::from(value.to_string()))
}

fn error_reply(id: u32, code: u32, message: &str) -> Outbound {
    let temporary = matches!(code, error::INTERNAL | error::TOO_MANY_REQUESTS);
    let error = ProtocolError {
        code,
        message: message.to_owned(),
        temporary,
    };
    frame(json!({ "id": id, "error": error }))
}

fn now_unix() -> i64 {
    now_unix_ms() / 1000
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

impl SessionState {
    /// Answers a command with an error and spends one of the session's error budget; a client
    /// that keeps causing errors is disconnected with 3509.
    fn refuse(&mut self, myself: &ActorRef<SessionMsg>, id: u32, code: u32, message: &str) {
        self.send(error_reply(id, code, message));
        self.count_error(myself);
    }

    fn count_error(&mut self, myself: &ActorRef<SessionMsg>) {
        let capacity = f64::from(self.args.config.max_errors);
        let per_second = 1.0 / ERROR_FORGIVENESS.as_secs_f64();
        if !self.error_budget.take(capacity, per_second) {
            metrics::counter!("hub_session_limits_total", "limit" => "errors").increment(1);
            self.close(myself, disconnect::TOO_MANY_ERRORS, "too many errors");
        }
    }

    /// Whether the rate allows one more command; refuses it (111, or 3013 when the client keeps
    /// on) when not.
    fn admit_command(&mut self, myself: &ActorRef<SessionMsg>, id: u32) -> bool {
        let config = self.args.config;
        if self.commands.take(
            f64::from(config.command_burst),
            f64::from(config.command_rate),
        ) {
            self.refused_in_a_row = 0;
            return true;
        }
        self.refused_in_a_row += 1;
        metrics::counter!("hub_session_limits_total", "limit" => "rate").increment(1);
        if self.refused_in_a_row > config.command_burst {
            self.close(myself, disconnect::TOO_MANY_REQUESTS, "too many requests");
        } else if id != 0 {
            self.send(error_reply(
                id,
                error::TOO_MANY_REQUESTS,
                "too many requests",
            ));
        }
        false
    }

    /// Queues an item; a full queue means the client does not read: cut it off (3008).
    fn send(&mut self, item: Outbound) {
        if self.closed {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.args.outbound.try_send(item) {
            self.args.overflow.cancel();
            self.closed = true;
        }
    }

    fn close(&mut self, myself: &ActorRef<SessionMsg>, code: u16, reason: &str) {
        if !self.closed {
            metrics::counter!("hub_disconnects_total", "code" => code.to_string()).increment(1);
            self.send(Outbound::Close {
                code,
                reason: reason.into(),
            });
            self.closed = true;
        }
        myself.stop(Some(reason.to_owned()));
    }

    fn subscriber(&self) -> Subscriber {
        Subscriber {
            id: self.args.id,
            sender: self.args.outbound.clone(),
            overflow: self.args.overflow.clone(),
        }
    }

    /// Subscribes in the broker (as joining) and builds the protocol result; the caller sends
    /// its reply, then [`SessionState::activate`]s the channel. `None` when the broker failed.
    async fn join(
        &mut self,
        channel: &str,
        request: Option<&SubscribeRequest>,
    ) -> Option<SubscribeResult> {
        let recover = request
            .filter(|request| request.recover)
            .map(|request| (request.offset, request.epoch.as_str()));
        let subscribed = match self
            .args
            .broker
            .subscribe(channel, self.subscriber(), recover)
            .await
        {
            Ok(subscribed) => subscribed,
            Err(error) => {
                tracing::warn!(%error, channel, "cannot subscribe");
                return None;
            }
        };
        self.subscriptions.insert(channel.to_owned());
        self.joining.push((
            channel.to_owned(),
            subscribed.reached(),
            subscribed.position.epoch.clone(),
        ));
        metrics::gauge!("hub_subscriptions").increment(1.0);
        if recover.is_some() {
            let outcome = if subscribed.recovered {
                "recovered"
            } else {
                "not_recovered"
            };
            metrics::counter!("hub_recoveries_total", "outcome" => outcome).increment(1);
        }
        Some(SubscribeResult {
            recoverable: true,
            positioned: true,
            epoch: subscribed.position.epoch,
            offset: subscribed.position.offset,
            recovered: subscribed.recovered,
            was_recovering: recover.is_some(),
            publications: subscribed
                .publications
                .iter()
                .map(|p| p.to_protocol())
                .collect::<Vec<Publication>>(),
            ..SubscribeResult::default()
        })
    }

    /// Makes the channels joined since the last call live, now that their replies are queued.
    fn activate(&mut self) {
        for (channel, reached, epoch) in self.joining.drain(..) {
            self.args
                .broker
                .activate(&channel, self.args.id, reached, &epoch);
        }
    }

    fn leave_all(&mut self) {
        for channel in self.subscriptions.drain() {
            self.args.broker.unsubscribe(&channel, self.args.id);
            metrics::gauge!("hub_subscriptions").decrement(1.0);
        }
    }

    /// The token's `expires`/`ttl` for a connect or refresh reply. The timer (armed by the
    /// caller) closes the session with 3005 past the expiry and its grace.
    fn token_ttl(&self) -> (bool, u32) {
        let Some(identity) = &self.identity else {
            return (false, 0);
        };
        let ttl = (identity.expires_at - now_unix()).max(0) as u64;
        (true, u32::try_from(ttl).unwrap_or(u32::MAX))
    }

    /// How long until the token stops being acceptable (expiry plus grace); zero once it has.
    fn expiry_in(&self) -> Option<Duration> {
        let identity = self.identity.as_ref()?;
        let grace = i64::try_from(self.args.config.expiry_grace.as_millis()).unwrap_or(i64::MAX);
        let left = identity
            .expires_at
            .saturating_mul(1000)
            .saturating_add(grace)
            .saturating_sub(now_unix_ms());
        Some(Duration::from_millis(left.max(0) as u64))
    }

    /// Sets the session's one timer for the earliest thing due.
    fn arm(&mut self, myself: &ActorRef<SessionMsg>) {
        let due = if self.identity.is_none() {
            Some(self.connect_deadline)
        } else {
            let expiry = self.expiry_in().map(|left| Instant::now() + left);
            [self.next_ping, self.pong_deadline, expiry]
                .into_iter()
                .flatten()
                .min()
        };
        let Some(due) = due else { return };
        self.tick_generation += 1;
        let generation = self.tick_generation;
        self.args.timers.arm(due, myself.clone(), generation);
    }

    /// The timer fired: closes for a missed deadline, or pings, then re-arms.
    fn tick(&mut self, myself: &ActorRef<SessionMsg>) {
        let now = Instant::now();
        if self.identity.is_none() {
            if now >= self.connect_deadline {
                return self.close(myself, 3502, "stale");
            }
        } else {
            if self.pong_deadline.is_some_and(|deadline| now >= deadline) {
                return self.close(myself, disconnect::NO_PONG, "no pong");
            }
            if self.expiry_in() == Some(Duration::ZERO) {
                return self.close(myself, disconnect::EXPIRED, "token expired");
            }
            if self.next_ping.is_some_and(|at| now >= at) {
                if self.awaiting_pong.is_none() {
                    self.pings += 1;
                    self.awaiting_pong = Some(self.pings);
                    self.pong_deadline = Some(now + self.args.config.pong_timeout);
                    self.send(frame(json!({})));
                }
                self.next_ping = Some(now + self.args.config.ping_interval);
            }
        }
        self.arm(myself);
    }

    async fn connect(&mut self, myself: &ActorRef<SessionMsg>, id: u32, request: ConnectRequest) {
        let identity = match self.args.authority.authenticate(&request.token) {
            Ok(identity) => identity,
            Err(AuthError::Expired) => {
                return self.send(error_reply(id, error::TOKEN_EXPIRED, "token expired"));
            }
            Err(AuthError::Invalid) => {
                return self.close(myself, disconnect::INVALID_TOKEN, "invalid token");
            }
        };
        let personal =
            (identity.roles != [Role::Service]).then(|| Channel::user(&identity.user_id).name());
        self.identity = Some(identity);
        let (expires, ttl) = self.token_ttl();
        let mut subs = BTreeMap::new();
        if let Some(channel) = personal {
            match self.join(&channel, request.subs.get(&channel)).await {
                Some(result) => {
                    subs.insert(channel, result);
                }
                None => {
                    return self.close(myself, disconnect::INTERNAL, "internal error");
                }
            }
        }
        let config = self.args.config;
        let result = ConnectResult {
            client: format!("{}-{}", self.args.node, self.args.id),
            version: VERSION.to_owned(),
            expires,
            ttl,
            subs,
            ping: config.ping_interval.as_secs() as u32,
            pong: true,
            session: format!("s-{}", self.args.id),
            node: self.args.node.clone(),
        };
        self.send(frame(json!({ "id": id, "connect": result })));
        self.activate();
        // First ping at a random point between half and the whole interval, so sessions that
        // connected together do not ping together.
        let half = config.ping_interval / 2;
        self.next_ping = Some(Instant::now() + half + half.mul_f64(rand::random::<f64>()));
        self.arm(myself);
    }

    async fn subscribe(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        id: u32,
        request: SubscribeRequest,
    ) {
        let channel: Channel = match request.channel.parse() {
            Ok(channel) => channel,
            Err(_) => return self.refuse(myself, id, error::UNKNOWN_CHANNEL, "unknown channel"),
        };
        let name = channel.name();
        if self.subscriptions.contains(&name) {
            return self.refuse(myself, id, error::ALREADY_SUBSCRIBED, "already subscribed");
        }
        if self.subscriptions.len() >= self.args.config.max_subscriptions {
            return self.refuse(myself, id, error::LIMIT_EXCEEDED, "too many subscriptions");
        }
        let Some(identity) = self.identity.clone() else {
            return;
        };
        // Asked once per channel for the session's life: a client repeating a subscribe cannot
        // make the node repeat the lookup.
        let allowed = match self.permissions.get(&name) {
            Some(allowed) => Ok(*allowed),
            None => self.args.authority.may_subscribe(&identity, &channel).await,
        };
        match allowed {
            Ok(allowed) => {
                if self.permissions.len() < self.args.config.permission_cache {
                    self.permissions.insert(name.clone(), allowed);
                }
                if !allowed {
                    return self.refuse(myself, id, error::PERMISSION_DENIED, "permission denied");
                }
            }
            Err(reason) => {
                tracing::warn!(%reason, channel = %name, "cannot check a subscription");
                return self.send(error_reply(id, error::INTERNAL, "internal error"));
            }
        }
        let Some(result) = self.join(&name, Some(&request)).await else {
            return self.send(error_reply(id, error::INTERNAL, "internal error"));
        };
        self.send(frame(json!({ "id": id, "subscribe": result })));
        self.activate();
    }

    fn refresh(&mut self, myself: &ActorRef<SessionMsg>, id: u32, token: &str) {
        let current = self
            .identity
            .as_ref()
            .map(|identity| identity.user_id.clone());
        match self.args.authority.authenticate(token) {
            Ok(identity) if Some(&identity.user_id) == current.as_ref() => {
                self.identity = Some(identity);
                let (expires, ttl) = self.token_ttl();
                self.arm(myself);
                let result = json!({ "client": format!("{}-{}", self.args.node, self.args.id), "version": VERSION, "expires": expires, "ttl": ttl });
                self.send(frame(json!({ "id": id, "refresh": result })));
            }
            Ok(_) => self.close(myself, disconnect::INVALID_TOKEN, "token for another user"),
            Err(AuthError::Expired) => self.send(error_reply(id, error::EXPIRED, "expired")),
            Err(AuthError::Invalid) => {
                self.close(myself, disconnect::INVALID_TOKEN, "invalid token")
            }
        }
    }

    /// Handles a text frame: one command per line; stops at the first that closes the session.
    async fn frames(&mut self, myself: &ActorRef<SessionMsg>, text: String) {
        for line in text
            .split('\n')
            .map(str::trim)
            .filter(|line| !line.is_empty())
        {
            match serde_json::from_str::<Command>(line) {
                Ok(command) => self.command(myself, command).await,
                Err(_) => self.close(myself, disconnect::BAD_REQUEST, "malformed command"),
            }
            if self.closed {
                break;
            }
        }
    }

    /// Handles one command line; stops at the first one that closes the session.
    async fn command(&mut self, myself: &ActorRef<SessionMsg>, command: Command) {
        let kind = command.kind();
        let id = command.id;
        match (kind, id) {
            (None, 0) => {
                // A pong: only as an answer to our ping.
                if self.awaiting_pong.take().is_none() {
                    self.close(myself, disconnect::BAD_REQUEST, "unexpected pong");
                }
                self.pong_deadline = None;
                return;
            }
            (Some("send"), _) if self.identity.is_none() => {
                return self.close(myself, disconnect::BAD_REQUEST, "connect first");
            }
            (Some(_), 0) => {
                return self.close(myself, disconnect::BAD_REQUEST, "command without id");
            }
            _ => {}
        }
        if !self.admit_command(myself, id) {
            return;
        }
        match kind {
            // Asynchronous messages to the server are not part of this hub's protocol.
            Some("send") => return,
            None => return self.refuse(myself, id, error::METHOD_NOT_FOUND, "method not found"),
            _ => {}
        }
        if self.identity.is_none() {
            return match command.connect {
                Some(request) => self.connect(myself, id, request).await,
                None => self.close(myself, disconnect::BAD_REQUEST, "connect first"),
            };
        }
        match command {
            Command {
                connect: Some(_), ..
            } => self.close(myself, disconnect::BAD_REQUEST, "already connected"),
            Command {
                subscribe: Some(request),
                ..
            } => self.subscribe(myself, id, request).await,
            Command {
                unsubscribe: Some(request),
                ..
            } => {
                if self.subscriptions.remove(&request.channel) {
                    self.args.broker.unsubscribe(&request.channel, self.args.id);
                    metrics::gauge!("hub_subscriptions").decrement(1.0);
                }
                self.send(frame(json!({ "id": id, "unsubscribe": {} })));
            }
            Command {
                publish: Some(_), ..
            } => self.refuse(
                myself,
                id,
                error::PERMISSION_DENIED,
                "clients may not publish",
            ),
            Command {
                refresh: Some(request),
                ..
            } => self.refresh(myself, id, &request.token),
            _ => self.refuse(myself, id, error::NOT_AVAILABLE, "not available"),
        }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        metrics::gauge!("hub_sessions").increment(1.0);
        let config = args.config;
        let mut state = SessionState {
            connect_deadline: Instant::now() + args.config.connect_timeout,
            args,
            identity: None,
            subscriptions: HashSet::new(),
            joining: Vec::new(),
            awaiting_pong: None,
            pings: 0,
            next_ping: None,
            pong_deadline: None,
            tick_generation: 0,
            closed: false,
            commands: Bucket::full(f64::from(config.command_burst)),
            refused_in_a_row: 0,
            error_budget: Bucket::full(f64::from(config.max_errors)),
            permissions: std::collections::HashMap::new(),
        };
        state.arm(&myself);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.leave_all();
        metrics::gauge!("hub_sessions").decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        if state.closed && !matches!(message, SessionMsg::TransportClosed) {
            return Ok(());
        }
        match message {
            // Boxed: a frame's handling (parsing, the command's future) is large, and inline it
            // would sit in every idle session's task.
            SessionMsg::Frame(text, permit) => {
                Box::pin(state.frames(&myself, text)).await;
                // The transport may read the next frame now.
                drop(permit);
            }
            SessionMsg::TransportClosed => {
                state.closed = true;
                myself.stop(Some("transport closed".into()));
            }
            SessionMsg::Tick(generation) => {
                if generation == state.tick_generation {
                    state.tick(&myself);
                }
            }
            SessionMsg::Disconnect(code, reason) => state.close(&myself, code, &reason),
        }
        if state.closed {
            // Closed by an overflow of its queue, or a close: stop now, so the queue, the
            // subscriptions and the actor go at once, whatever the transport does.
            myself.stop(None);
        }
        Ok(())
    }
}

/// Supervises the node's sessions. Unlike ractor's default it keeps running when a session ends
/// (each ends when its client leaves); a crashed session is logged and counted.
#[derive(Debug)]
pub struct SessionSupervisor;

impl Actor for SessionSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, failure) = event {
            tracing::error!(session = %cell.get_id(), %failure, "session actor failed");
            metrics::counter!("hub_session_failures_total").increment(1);
        }
        Ok(())
    }
}
