//! `GET /connection/websocket`: moves frames between a WebSocket and its session actor. Reads go
//! to the actor; the writer drains the session's bounded queue, batching what is queued into one
//! frame (newline-separated, as the protocol allows), and closes with 3008 when the queue
//! overflowed.

use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use hub::outbound::Outbound;
use hub::session::SessionMsg;
use shared::protocol::disconnect;

/// Most queued frames joined into one WebSocket frame.
const BATCH: usize = 64;

/// How long the node waits for the client's own Close once it sent its Close frame.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// The Centrifugo protocol v2 (JSON) over WebSocket; see `docs/protocol.md`.
#[utoipa::path(get, path = "/connection/websocket", tag = "realtime",
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
pub async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let limit = state.settings.realtime.max_frame_bytes;
    // Per-connection buffers dominate a session's memory: tungstenite reserves 128 KiB to read
    // into and 128 KiB to write from by default. Frames are small and the writer already joins
    // queued frames into one, so a small read buffer and eager writes are enough.
    upgrade
        .read_buffer_size(state.settings.realtime.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        // Behind an `Arc`: the state is held by the connection's task for its whole life, and
        // inline it would cost every session its size, twice (the callback and the task).
        .on_upgrade({
            let state = std::sync::Arc::new(state);
            move |socket| serve(state, socket)
        })
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn serve(state: std::sync::Arc<AppState>, mut socket: WebSocket) {
    let realtime = state.realtime.clone();
    if !realtime.admit(state.settings.realtime.max_connections) {
        tracing::warn!(
            limit = state.settings.realtime.max_connections,
            "connection limit reached"
        );
        metrics::counter!("hub_disconnects_total", "code" => "3504").increment(1);
        let _ = socket
            .send(close(disconnect::CONNECTION_LIMIT, "connection limit"))
            .await;
        return;
    }
    metrics::gauge!("hub_connections", "transport" => "websocket").increment(1.0);
    let super::OpenSession {
        actor: session,
        mut queue,
        overflow,
    } = match Box::pin(super::open_session(&state)).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(%error, "cannot start a session actor");
            let _ = socket
                .send(close(disconnect::INTERNAL, "internal error"))
                .await;
            metrics::gauge!("hub_connections", "transport" => "websocket").decrement(1.0);
            return;
        }
    };
    // One task per connection moves frames both ways: reading stops while a batch is written,
    // which is the backpressure wanted, and a second task per session would cost memory. Every
    // write has a deadline, so a client that stops reading cannot hold the task, the session or
    // the slot; and a frame is read only with a permit the session gives back once it handled
    // it, so a flooding client is held back by TCP, not buffered in the session's mailbox.
    let write_timeout = state.settings.realtime.write_timeout();
    let inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(
        state.settings.realtime.max_inflight_frames,
    ));
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // Whether the node sent its Close frame (the closing handshake then ends in `linger`).
    let mut closed = false;
    loop {
        tokio::select! {
            biased;
            () = overflow.cancelled() => {
                metrics::counter!("hub_disconnects_total", "code" => "3008").increment(1);
                closed = write(&mut socket, close(disconnect::SLOW, "slow"), write_timeout).await;
                break;
            }
            item = queue.recv() => {
                let Some(first) = item else { break };
                let (batch, closing) = take_batch(first, &mut queue);
                if !batch.is_empty()
                    && !write(&mut socket, Message::Text(batch.into()), write_timeout).await
                {
                    break;
                }
                if let Some((code, reason)) = closing {
                    closed = write(&mut socket, close(code, &reason), write_timeout).await;
                    break;
                }
            }
            acquired = inflight.clone().acquire_owned(), if permit.is_none() => {
                permit = acquired.ok();
            }
            message = socket.recv(), if permit.is_some() => match message {
                Some(Ok(Message::Text(text))) => {
                    if session.cast(SessionMsg::Frame(text.to_string(), permit.take())).is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = session.cast(SessionMsg::Disconnect(
                        disconnect::INAPPROPRIATE_PROTOCOL,
                        "binary frames are not JSON".into(),
                    ));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "websocket read failed");
                    // The session answers with 3506, which the queue branch writes.
                    let _ = session.cast(SessionMsg::Disconnect(
                        disconnect::INAPPROPRIATE_PROTOCOL,
                        "frame too large or malformed".into(),
                    ));
                    let flushed = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                        while let Some(item) = queue.recv().await {
                            if let Outbound::Close { code, reason } = item {
                                let _ = write(&mut socket, close(code, &reason), write_timeout).await;
                                break;
                            }
                        }
                    });
                    // A read that failed leaves nothing to linger for.
                    let _ = flushed.await;
                    break;
                }
            },
        }
    }
    let _ = session.cast(SessionMsg::TransportClosed);
    realtime.release();
    metrics::gauge!("hub_connections", "transport" => "websocket").decrement(1.0);
    if closed {
        Box::pin(linger(socket)).await;
    }
}

/// The end of the closing handshake the node began (RFC 6455 §7.1.1): reads, and drops, what the
/// client still sends until its own Close or the end of the stream, for at most [`CLOSE_LINGER`].
/// Dropping the connection with the client's frames unread would reset it, and a client still
/// writing (a flood) could then fail on its write before it reads the Close frame and its code.
/// The session and the connection slot are already released.
async fn linger(mut socket: WebSocket) {
    let drained = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drained).await;
}

/// Writes one message within `deadline`; false when the write failed or timed out (the client
/// does not read): the caller then drops the connection.
async fn write(socket: &mut WebSocket, message: Message, deadline: std::time::Duration) -> bool {
    match tokio::time::timeout(deadline, socket.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!(%error, "websocket write failed");
            false
        }
        Err(_) => {
            metrics::counter!("hub_disconnects_total", "code" => "3009").increment(1);
            tracing::debug!(
                ?deadline,
                "websocket write timed out: the client does not read"
            );
            false
        }
    }
}

/// Joins `first` and whatever else is queued (up to [`BATCH`]) into one text (newline-separated
/// frames, as the protocol allows); stops at a close, which it returns.
fn take_batch(
    first: Outbound,
    queue: &mut tokio::sync::mpsc::Receiver<Outbound>,
) -> (String, Option<(u16, Box<str>)>) {
    let mut batch = String::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(item) = next.take() {
        if let Outbound::Close { code, reason } = item {
            return (batch, Some((code, reason)));
        }
        if let Some(text) = item.text() {
            if !batch.is_empty() {
                batch.push('\n');
            }
            batch.push_str(text);
        }
        taken += 1;
        if taken < BATCH {
            next = queue.try_recv().ok();
        }
    }
    (batch, None)
}
