//! The HTTP/1 server under the router: an accept loop with hyper's timer, so a client that sends
//! half a request head (slowloris) or idles on a keep-alive connection is closed after
//! `http.header_read_timeout_ms`; a per-connection watchdog closing connections on which nothing
//! moved for `http.idle_timeout_ms`; and a cap of `http.max_connections` TCP connections, held
//! for a connection's whole life (an upgraded WebSocket included), beyond which new connections
//! wait in the listen backlog.

use crate::settings::HttpSettings;
use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

/// A served TCP connection: counts as one of `max_connections` until dropped, and records when a
/// byte last moved, for the idle watchdog.
struct Connection {
    stream: TcpStream,
    /// Milliseconds since `epoch` when a read or write last moved bytes.
    last_activity: Arc<AtomicU64>,
    epoch: Instant,
    /// Released when the connection (or the WebSocket it became) is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.store(now, Ordering::Relaxed);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A handle on the request's TCP connection: cancelling it closes the connection at once, whatever
/// hyper is doing (a streaming response whose client stopped reading is never polled again, so
/// it cannot end itself). In every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionAbort(pub CancellationToken);

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops accepting, asks every
/// connection to finish its request, and returns once they have (the caller bounds the wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpSettings,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let header_read_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut make_service: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        app.into_make_service_with_connect_info::<SocketAddr>();
    let connections = TaskTracker::new();
    let epoch = Instant::now();
    metrics::describe_gauge!(
        "http_connections",
        "Open TCP connections, WebSocket ones included"
    );
    metrics::describe_counter!(
        "http_connections_refused_total",
        "Times the connection cap made a new connection wait"
    );
    loop {
        // A free slot first: at the cap, new connections wait in the kernel's backlog.
        if slots.available_permits() == 0 {
            metrics::counter!("http_connections_refused_total").increment(1);
        }
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let last_activity = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
        let connection = Connection {
            stream,
            last_activity: last_activity.clone(),
            epoch,
            _permit: permit,
        };
        let Ok(service) = make_service.call(remote).await;
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            metrics::gauge!("http_connections").increment(1.0);
            serve_connection(
                connection,
                service,
                header_read_timeout,
                idle_timeout,
                (last_activity, epoch),
                shutdown,
            )
            .await;
            metrics::gauge!("http_connections").decrement(1.0);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection<S>(
    connection: Connection,
    service: S,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    (last_activity, epoch): (Arc<AtomicU64>, Instant),
    shutdown: CancellationToken,
) where
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let abort = CancellationToken::new();
    let handle = ConnectionAbort(abort.clone());
    let service = TowerToHyperService::new(service.map_request(
        move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(handle.clone());
            request
        },
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let served = builder
        .serve_connection(TokioIo::new(connection), service)
        .with_upgrades();
    let mut served = std::pin::pin!(served);
    let mut watchdog = tokio::time::interval(idle_timeout / 4);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended");
                }
                return;
            }
            () = abort.cancelled() => {
                return; // dropping the connection closes it
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ = watchdog.tick() => {
                let idle_ms = (epoch.elapsed().as_millis() as u64)
                    .saturating_sub(last_activity.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) >= idle_timeout {
                    metrics::counter!("http_connections_idle_closed_total").increment(1);
                    return; // dropping the connection closes it
                }
            }
        }
    }
}
