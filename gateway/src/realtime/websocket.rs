//! `GET /connection/websocket`: moves frames between a WebSocket and its session actor. Reads go
//! to the actor; the writer drains the session's bounded queue, batching what is queued into one
//! frame (newline-separated, as the protocol allows), and closes with 3008 when the queue
//! overflowed.

use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hub::outbound::Outbound;
use hub::session::SessionMsg;
use shared::protocol::disconnect;

/// Most queued frames joined into one WebSocket frame.
const BATCH: usize = 64;

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
        .on_upgrade(move |socket| serve(state, socket))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn serve(state: AppState, mut socket: WebSocket) {
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
    } = match super::open_session(&state).await {
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
    let (mut sink, mut stream) = socket.split();
    let writer_overflow = overflow.clone();
    let writer = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                item = queue.recv() => item,
                () = writer_overflow.cancelled() => {
                    metrics::counter!("hub_disconnects_total", "code" => "3008").increment(1);
                    let _ = sink.send(close(disconnect::SLOW, "slow")).await;
                    return;
                }
            };
            let Some(first) = first else { return };
            let mut batch = String::new();
            let mut closing = None;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(item) = next.take() {
                match item {
                    Outbound::Close { code, reason } => {
                        closing = Some((code, reason));
                        break;
                    }
                    item => {
                        if let Some(text) = item.text() {
                            if !batch.is_empty() {
                                batch.push('\n');
                            }
                            batch.push_str(text);
                        }
                    }
                }
                taken += 1;
                if taken < BATCH {
                    next = queue.try_recv().ok();
                }
            }
            if !batch.is_empty() && sink.send(Message::Text(batch.into())).await.is_err() {
                return;
            }
            if let Some((code, reason)) = closing {
                let _ = sink.send(close(code, &reason)).await;
                return;
            }
        }
    });
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Text(text)) => {
                if session.cast(SessionMsg::Frame(text.to_string())).is_err() {
                    break;
                }
            }
            Ok(Message::Binary(_)) => {
                let _ = session.cast(SessionMsg::Disconnect(
                    disconnect::INAPPROPRIATE_PROTOCOL,
                    "binary frames are not JSON".into(),
                ));
            }
            Ok(Message::Close(_)) => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Err(error) => {
                tracing::debug!(%error, "websocket read failed");
                let _ = session.cast(SessionMsg::Disconnect(
                    disconnect::INAPPROPRIATE_PROTOCOL,
                    "frame too large or malformed".into(),
                ));
                break;
            }
        }
    }
    let _ = session.cast(SessionMsg::TransportClosed);
    // Let the writer flush a pending close; it ends when the session drops its queue sender.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    realtime.release();
    metrics::gauge!("hub_connections", "transport" => "websocket").decrement(1.0);
}
