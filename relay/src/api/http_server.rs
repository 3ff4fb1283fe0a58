//! The HTTP listener: hyper's HTTP/1.1 server under the axum router, with
//! what `axum::serve` does not offer: a deadline for reading a request's
//! headers (idle and slowloris sockets are closed, including idle
//! keep-alive connections), and a cap on open HTTP connections. A
//! connection over the cap is answered at once with `503` and a JSON error
//! instead of waiting in the accept queue. A WebSocket leaves the cap once
//! upgraded: `websocket.max_connections` bounds those.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry::Stats;

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Accepts and serves until `shutdown`; connections in progress are asked
/// to finish (their tasks are in `tracker`). With `tls`, every connection
/// is HTTPS (the TLS handshake has the header deadline too).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    stats: Arc<Stats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let log = crate::ingest::LogLimiter::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: say so (not
                    // more than once a minute) and go on.
                    if let Some(suppressed) = log.should_log("http_accept") {
                        tracing::warn!(%error, suppressed_since_last = suppressed, "cannot accept HTTP connections");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            stats.http_refused.inc();
            if let Some(suppressed) = log.should_log("http_refused") {
                tracing::warn!(%peer, suppressed_since_last = suppressed, max = limits.max_connections, "HTTP connection refused: http.max_connections reached");
            }
            tracker.spawn(refuse(stream, limits.max_connections));
            continue;
        };
        // TCP_NODELAY: with Nagle on, a small write waits for the ACK of
        // the previous one, which the client delays (40 ms on Linux): at a
        // paced 2,000 lines/s that was the p99 of file → subscriber. The
        // writer coalesces what is queued into one flush anyway, so under
        // load the writes stay big (BENCHMARKS.md, "File → subscriber
        // latency").
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        // Plain TCP: a duplicate of the socket's descriptor, for the
        // router's direct writes to an idle WebSocket (`Outbound`).
        let direct = DirectSocket(if tls.is_none() {
            use std::os::fd::AsFd;
            stream
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(|fd| Arc::new(std::net::TcpStream::from(fd)))
        } else {
            None
        });
        // Extensions wrap the router as one service (`Router::layer` would
        // rebuild every route for each connection: kilobytes each).
        use tower_layer::Layer;
        let service = TowerToHyperService::new(
            axum::Extension(direct)
                .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)).layer(router.clone())),
        );
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let stats = stats.clone();
        tracker.spawn(async move {
            match tls {
                None => serve_connection(stream, service, limits, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, service, limits, shutdown).await,
                        Ok(Err(error)) => {
                            stats.tls_handshake_failures.inc();
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.tls_handshake_failures.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The router with a connection's extensions.
type Service = axum::middleware::AddExtension<
    axum::middleware::AddExtension<Router, ConnectInfo<SocketAddr>>,
    DirectSocket,
>;

/// A duplicate of a plain TCP connection's socket (`None` with TLS: the
/// bytes must go through the TLS session).
#[derive(Debug, Clone)]
pub struct DirectSocket(pub Option<Arc<std::net::TcpStream>>);

/// Serves one connection (plain or TLS) until it ends; on shutdown asks it
/// to finish what is in progress.
async fn serve_connection<I>(
    stream: I,
    service: TowerToHyperService<Service>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"type\":\"error\",\"code\":\"connection_failed\",\"message\":\"Too many HTTP connections: the relay's limit of {max} is reached; retry later\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Answer after the request's head (up to 8 KiB, 1 s): an HTTP client
    // takes a response that comes before its request for a protocol error.
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut chunk = [0u8; 1024];
        while head.len() < 8 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client sent until it closes: closing with unread
        // input would answer with a reset, and the client could lose the
        // response.
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
