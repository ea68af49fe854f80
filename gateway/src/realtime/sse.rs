//! `GET /connection/sse`: the realtime stream for plain `EventSource`. The transport drives a
//! regular session actor: it sends `connect` and `subscribe` on the client's behalf, answers the
//! session's pings itself (emitting `: ping` comments), and turns pushes into SSE events whose
//! `id:` is a cursor of every channel's (epoch, offset), so a reconnecting `EventSource` resumes
//! all of them from `Last-Event-ID` with the usual recovery rules.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hub::outbound::Outbound;
use hub::session::{AuthError, SessionMsg};
use ractor::ActorRef;
use serde_json::{Value, json};
use shared::ErrorCode;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the stream waits for the session's answers before it starts.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// `retry:` hint: milliseconds before a browser reconnects.
const RETRY: Duration = Duration::from_secs(2);

/// Channel → (epoch, offset): what an `id:` cursor carries.
type Positions = BTreeMap<String, (String, u64)>;

fn encode_cursor(positions: &Positions) -> String {
    let list: Vec<(&String, &String, u64)> = positions
        .iter()
        .map(|(channel, (epoch, offset))| (channel, epoch, *offset))
        .collect();
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&list).unwrap_or_default())
}

fn decode_cursor(cursor: &str) -> Option<Positions> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let list: Vec<(String, String, u64)> = serde_json::from_slice(&bytes).ok()?;
    Some(
        list.into_iter()
            .map(|(channel, epoch, offset)| (channel, (epoch, offset)))
            .collect(),
    )
}

/// Ends the session when the HTTP stream is dropped (the client went away, or the connection was
/// aborted), and tells the stream's watcher it is over.
struct SessionGuard(
    ActorRef<SessionMsg>,
    crate::realtime::Realtime,
    CancellationToken,
);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.2.cancel();
        let _ = self.0.cast(SessionMsg::TransportClosed);
        self.1.release();
        metrics::gauge!("hub_connections", "transport" => "sse").decrement(1.0);
    }
}

/// Server-sent events for plain `EventSource`: `?channel=task:42&channel=…` (the personal
/// channel is always included), the token in `?token=` or `Authorization`, resume with
/// `Last-Event-ID`. See `docs/protocol.md`.
#[utoipa::path(get, path = "/connection/sse", tag = "realtime",
    params(
        ("channel" = Option<Vec<String>>, Query, description = "Channels besides the personal one"),
        ("token" = Option<String>, Query, description = "Bearer token (or the Authorization header)")),
    responses(
        (status = 200, description = "text/event-stream of `pub`, `unrecovered` and `disconnect` events"),
        (status = 401, body = shared::Problem, content_type = "application/problem+json"),
        (status = 403, body = shared::Problem, content_type = "application/problem+json")))]
pub async fn sse(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    abort: Option<axum::Extension<crate::server::ConnectionAbort>>,
    headers: HeaderMap,
) -> Response {
    let abort = abort.map(|axum::Extension(abort)| abort);
    match open(state, query.unwrap_or_default(), &headers, abort).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn open(
    state: AppState,
    query: String,
    headers: &HeaderMap,
    abort: Option<crate::server::ConnectionAbort>,
) -> Result<Response, ApiError> {
    let mut token = None;
    let mut channels: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "token" => token = Some(value.into_owned()),
            "channel" if !channels.contains(&value.to_string()) => {
                channels.push(value.into_owned())
            }
            _ => {}
        }
    }
    let token = token
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            ApiError::unauthorized(
                ErrorCode::TokenMissing,
                "send the token as ?token= or a bearer header",
            )
        })?;
    let identity = match hub::session::Authority::authenticate(&*state.authority, &token) {
        Ok(identity) => identity,
        Err(AuthError::Expired) => {
            return Err(ApiError::unauthorized(
                ErrorCode::TokenExpired,
                "the token has expired",
            ));
        }
        Err(AuthError::Invalid) => {
            return Err(ApiError::unauthorized(
                ErrorCode::TokenInvalid,
                "the token is invalid",
            ));
        }
    };
    let resume = match headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
    {
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidHeader,
                "Last-Event-ID is not a cursor of this hub",
            )
        })?),
        None => None,
    };
    let realtime = state.realtime.clone();
    if !realtime.admit(state.settings.realtime.max_connections) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            "connection limit (3504)",
        ));
    }
    metrics::gauge!("hub_connections", "transport" => "sse").increment(1.0);
    let super::OpenSession {
        actor: session,
        mut queue,
        overflow,
    } = super::open_session(&state).await.map_err(|error| {
        metrics::gauge!("hub_connections", "transport" => "sse").decrement(1.0);
        ApiError::internal(anyhow::anyhow!("cannot start a session: {error}"))
    })?;
    let ended = CancellationToken::new();
    let guard = SessionGuard(session.clone(), realtime, ended.clone());
    // Watches the stream apart from hyper's polling, which stops when the client stops reading:
    // an overflow then closes the connection at once, freeing the slot, the session and its
    // queue (the stream is dropped with the connection).
    // A client that still reads gets the `disconnect` event (3008) and the stream ends by itself
    // within the write deadline; one that does not is cut off then.
    if let Some(crate::server::ConnectionAbort(abort)) = abort {
        let overflow = overflow.clone();
        let deadline = state.settings.realtime.write_timeout();
        tokio::spawn(async move {
            tokio::select! {
                () = overflow.cancelled() => {}
                () = ended.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(deadline) => {
                    metrics::counter!("hub_disconnects_total", "code" => "3008").increment(1);
                    abort.cancel();
                }
                () = ended.cancelled() => {}
            }
        });
    }

    // The commands a WebSocket client would send, recovering from the cursor where it has one.
    let recover = |channel: &str| match resume.as_ref().and_then(|positions| positions.get(channel))
    {
        Some((epoch, offset)) => json!({ "recover": true, "epoch": epoch, "offset": offset }),
        None => json!({}),
    };
    let personal = format!("user:{}", identity.user_id);
    let mut lines = vec![
        json!({ "id": 1, "connect": { "token": token, "subs": { &personal: recover(&personal) } } }),
    ];
    for (index, channel) in channels
        .iter()
        .filter(|channel| **channel != personal)
        .enumerate()
    {
        let mut request = recover(channel);
        request["channel"] = channel.clone().into();
        lines.push(json!({ "id": index + 2, "subscribe": request }));
    }
    let expected = lines.len();
    let frame = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let _ = session.cast(SessionMsg::Frame(frame, None));

    // Collect the answers before the stream starts: a refusal is still an HTTP error.
    let mut positions = Positions::new();
    let mut events = vec![Event::default().retry(RETRY).comment("connected")];
    let mut unrecovered = Vec::new();
    let mut early = Vec::new();
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while answered < expected {
        let item = tokio::time::timeout_at(deadline, queue.recv())
            .await
            .map_err(|_| ApiError::internal(anyhow::anyhow!("the session did not answer in time")))?
            .ok_or_else(|| ApiError::unauthorized(ErrorCode::TokenInvalid, "the session closed"))?;
        let reply: Value = match &item {
            Outbound::Frame(text) => serde_json::from_str(text).unwrap_or_default(),
            Outbound::Push(_) => {
                early.push(item);
                continue;
            }
            Outbound::Close { code, reason } => {
                return Err(ApiError::unauthorized(
                    ErrorCode::TokenInvalid,
                    format!("closed {code}: {reason}"),
                ));
            }
        };
        if let Some(error) = reply.get("error") {
            let (status, code) = match error["code"].as_u64() {
                Some(103) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
                Some(109) => (StatusCode::UNAUTHORIZED, ErrorCode::TokenExpired),
                _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery),
            };
            let channel = reply["id"]
                .as_u64()
                .and_then(|id| lines.get(id as usize - 1))
                .map(|line| line["subscribe"]["channel"].clone());
            return Err(ApiError::new(
                status,
                code,
                format!(
                    "cannot subscribe {}: {}",
                    channel.unwrap_or_default(),
                    error["message"]
                ),
            ));
        }
        answered += 1;
        let results: Vec<(String, Value)> = match (reply.get("connect"), reply.get("subscribe")) {
            (Some(connect), _) => connect["subs"]
                .as_object()
                .map(|subs| subs.clone().into_iter().collect())
                .unwrap_or_default(),
            (_, Some(result)) => {
                let id = reply["id"].as_u64().unwrap_or(0) as usize;
                let channel = lines
                    .get(id.saturating_sub(1))
                    .and_then(|line| line["subscribe"]["channel"].as_str())
                    .unwrap_or_default();
                vec![(channel.to_owned(), result.clone())]
            }
            _ => Vec::new(),
        };
        for (channel, result) in results {
            let epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
            let top = result["offset"].as_u64().unwrap_or(0);
            if result["was_recovering"] == true && result["recovered"] != true {
                unrecovered.push(channel.clone());
            }
            positions.insert(channel.clone(), (epoch.clone(), top));
            for publication in result["publications"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let offset = publication["offset"].as_u64().unwrap_or(0);
                positions.insert(channel.clone(), (epoch.clone(), offset));
                events.push(pub_event(
                    &channel,
                    offset,
                    &publication["data"],
                    &positions,
                ));
            }
            positions.insert(
                channel.clone(),
                (epoch, top.max(positions.get(&channel).map_or(0, |p| p.1))),
            );
        }
    }
    if !unrecovered.is_empty() {
        events.push(
            Event::default()
                .event("unrecovered")
                .data(json!({ "channels": unrecovered }).to_string()),
        );
    }
    let stream = Stream {
        queue,
        session,
        overflow,
        positions,
        guard,
        pending: early.into(),
        done: false,
    };
    let live = futures_util::stream::unfold(stream, next_event);
    let initial = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    let mut response = Sse::new(futures_util::StreamExt::chain(initial, live)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn pub_event(channel: &str, offset: u64, data: &Value, positions: &Positions) -> Event {
    Event::default()
        .id(encode_cursor(positions))
        .event("pub")
        .data(json!({ "channel": channel, "offset": offset, "data": data }).to_string())
}

struct Stream {
    queue: mpsc::Receiver<Outbound>,
    session: ActorRef<SessionMsg>,
    overflow: CancellationToken,
    positions: Positions,
    #[allow(dead_code)] // held for its Drop: ends the session with the stream
    guard: SessionGuard,
    pending: std::collections::VecDeque<Outbound>,
    done: bool,
}

fn disconnect_event(code: u16, reason: &str) -> Event {
    Event::default()
        .event("disconnect")
        .data(json!({ "code": code, "reason": reason }).to_string())
}

async fn next_event(mut stream: Stream) -> Option<(Result<Event, Infallible>, Stream)> {
    if stream.done {
        return None;
    }
    loop {
        let item = match stream.pending.pop_front() {
            Some(item) => Some(item),
            None => tokio::select! {
                item = stream.queue.recv() => item,
                () = stream.overflow.cancelled() => {
                    stream.done = true;
                    metrics::counter!("hub_disconnects_total", "code" => "3008").increment(1);
                    return Some((Ok(disconnect_event(3008, "slow")), stream));
                }
            },
        };
        match item? {
            Outbound::Push(delivery) => {
                let offset = delivery.publication.offset;
                let channel = delivery.channel.to_string();
                let epoch = stream
                    .positions
                    .get(&channel)
                    .map(|p| p.0.clone())
                    .unwrap_or_default();
                stream.positions.insert(channel.clone(), (epoch, offset));
                let event = pub_event(
                    &channel,
                    offset,
                    &delivery.publication.data,
                    &stream.positions,
                );
                return Some((Ok(event), stream));
            }
            Outbound::Frame(text) if &*text == "{}" => {
                // The session's ping: answer it for the browser and keep proxies awake.
                let _ = stream.session.cast(SessionMsg::Frame("{}".into(), None));
                return Some((Ok(Event::default().comment("ping")), stream));
            }
            Outbound::Frame(_) => continue,
            Outbound::Close { code, reason } => {
                stream.done = true;
                return Some((Ok(disconnect_event(code, &reason)), stream));
            }
        }
    }
}
