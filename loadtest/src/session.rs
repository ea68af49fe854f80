//! One simulated realtime client: a WebSocket (Centrifugo protocol v2, JSON, through the shared
//! wire types) from a chosen loopback source address, that connects, subscribes, answers pings,
//! records every publication it receives, and, when told to, drops its socket and comes back
//! recovering from the last position it saw.

use crate::tally::{Seen, Tally};
use futures_util::{SinkExt, StreamExt};
use shared::protocol::{Command, ConnectRequest, Reply, SubscribeRequest};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// What a session is.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Node base URL (`http://127.0.0.1:8080`).
    pub target: String,
    /// Loopback source address to connect from.
    pub source: IpAddr,
    /// Bearer token (its `sub` names the personal channel).
    pub token: String,
    /// Channels to subscribe to besides the personal one.
    pub channels: Vec<String>,
}

/// The source address for session `n`: 127.0.0.1 … 127.0.0.`sources`, so each gets its own
/// ephemeral port range.
pub fn source(n: usize, sources: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, (1 + n % sources.clamp(1, 250)) as u8])
}

/// Where the session is in each channel's stream, for recovery.
type Positions = HashMap<String, (u64, String)>;

async fn open(spec: &Spec) -> anyhow::Result<Socket> {
    let url = url_of(&spec.target)?;
    let host = url
        .split("//")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow::anyhow!("bad target {}", spec.target))?;
    let address: SocketAddr = tokio::net::lookup_host(host)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
    let socket = TcpSocket::new_v4()?;
    socket.set_nodelay(true)?;
    socket.bind(SocketAddr::new(spec.source, 0))?;
    let stream = socket.connect(address).await?;
    let (socket, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(socket)
}

fn url_of(target: &str) -> anyhow::Result<String> {
    let ws = if let Some(rest) = target.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = target.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        anyhow::bail!("targets are http:// URLs, got {target}");
    };
    Ok(format!("{}/connection/websocket", ws.trim_end_matches('/')))
}

fn text(command: &Command) -> Message {
    Message::Text(serde_json::to_string(command).unwrap_or_default().into())
}

/// Connects (recovering `positions`) and subscribes; returns the socket with positions updated.
async fn join(
    spec: &Spec,
    positions: &mut Positions,
    seen: &mut Seen,
    tally: &Tally,
) -> anyhow::Result<Socket> {
    let mut socket = open(spec).await?;
    let recover = |channel: &str| {
        positions
            .get(channel)
            .map(|(offset, epoch)| SubscribeRequest {
                recover: true,
                offset: *offset,
                epoch: epoch.clone(),
                ..SubscribeRequest::default()
            })
    };
    let personal: BTreeMap<String, SubscribeRequest> = positions
        .keys()
        .filter(|channel| channel.starts_with("user:"))
        .filter_map(|channel| Some((channel.clone(), recover(channel)?)))
        .collect();
    socket
        .send(text(&Command {
            id: 1,
            connect: Some(ConnectRequest {
                token: spec.token.clone(),
                subs: personal,
                name: "loadtest".into(),
                ..ConnectRequest::default()
            }),
            ..Command::default()
        }))
        .await?;
    for (n, channel) in spec.channels.iter().enumerate() {
        let mut request = recover(channel).unwrap_or_default();
        request.channel = channel.clone();
        socket
            .send(text(&Command {
                id: 2 + n as u32,
                subscribe: Some(request),
                ..Command::default()
            }))
            .await?;
    }
    let mut pending: HashSet<u32> = (1..2 + spec.channels.len() as u32).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| anyhow::anyhow!("no connect/subscribe replies within 30 s"))?;
        let Some(Ok(Message::Text(frame))) = frame else {
            match frame {
                Some(Ok(Message::Close(close))) => anyhow::bail!(
                    "closed while joining: {}",
                    close.map(|c| u16::from(c.code)).unwrap_or(0)
                ),
                Some(Ok(_)) => continue,
                _ => anyhow::bail!("socket ended while joining"),
            }
        };
        for line in frame.split('\n').filter(|line| !line.is_empty()) {
            let reply: Reply = serde_json::from_str(line)?;
            if let Some(error) = &reply.error {
                anyhow::bail!(
                    "command {} refused: {} {}",
                    reply.id,
                    error.code,
                    error.message
                );
            }
            pending.remove(&reply.id);
            if let Some(connect) = reply.connect {
                for (channel, result) in connect.subs {
                    for publication in &result.publications {
                        tally.publication(&channel, &publication.data, seen, true);
                    }
                    positions.insert(channel, (result.offset.max(last(&result)), result.epoch));
                }
            } else if let Some(subscribe) = reply.subscribe {
                let channel = spec
                    .channels
                    .get(reply.id.saturating_sub(2) as usize)
                    .cloned()
                    .unwrap_or_default();
                for publication in &subscribe.publications {
                    tally.publication(&channel, &publication.data, seen, true);
                }
                positions.insert(
                    channel,
                    (subscribe.offset.max(last(&subscribe)), subscribe.epoch),
                );
            } else if let Some(push) = reply.push
                && let Some(publication) = push.publication
            {
                tally.publication(&push.channel, &publication.data, seen, false);
                if let Some(position) = positions.get_mut(&push.channel) {
                    position.0 = publication.offset;
                }
            }
        }
    }
    Ok(socket)
}

fn last(result: &shared::protocol::SubscribeResult) -> u64 {
    result.publications.last().map_or(0, |p| p.offset)
}

/// Runs a session until `stop`: joins, then reads. Each change of `storm` drops the socket at once
/// and joins again recovering. Returns when stopped.
pub async fn run(
    spec: Spec,
    tally: Arc<Tally>,
    stop: CancellationToken,
    mut storm: watch::Receiver<u64>,
) {
    let mut positions = Positions::new();
    let mut seen = Seen::new();
    let mut dropped_at: Option<Instant> = None;
    let mut attempts = 0u32;
    while !stop.is_cancelled() {
        let joined = tokio::select! {
            () = stop.cancelled() => return,
            joined = join(&spec, &mut positions, &mut seen, &tally) => joined,
        };
        let mut socket = match joined {
            Ok(socket) => socket,
            Err(error) => {
                tally.connect_error(&error.to_string());
                attempts += 1;
                if attempts >= 3 && dropped_at.is_none() {
                    return;
                }
                let pause = Duration::from_millis(200 * u64::from(attempts.min(10)));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        attempts = 0;
        tally.joined(dropped_at.take().map(|at| at.elapsed()));
        storm.borrow_and_update();
        let reason = loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let _ = socket.close(None).await;
                    tally.left(None);
                    return;
                }
                _ = storm.changed() => {
                    dropped_at = Some(Instant::now());
                    break None;
                }
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(frame))) => {
                        for line in frame.split('\n').filter(|line| !line.is_empty()) {
                            let Ok(reply) = serde_json::from_str::<Reply>(line) else { continue };
                            if reply.is_ping() {
                                if socket.send(Message::Text("{}".into())).await.is_err() {
                                    break;
                                }
                            } else if let Some(push) = reply.push
                                && let Some(publication) = push.publication
                            {
                                tally.publication(&push.channel, &publication.data, &mut seen, false);
                                if let Some(position) = positions.get_mut(&push.channel) {
                                    position.0 = publication.offset;
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(close))) => break Some(close.map(|c| u16::from(c.code)).unwrap_or(0)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break Some(0),
                }
            }
        };
        tally.left(reason);
        drop(socket);
        if reason.is_some() {
            // Closed by the server: come back recovering, as the SDK would.
            dropped_at = Some(Instant::now());
        }
    }
}
