//! The HTTP layer: the server loop and the public routes.
//!
//! The server owns its accept loop (rather than `warp::serve`) so it can put the peer
//! address on each request, bound header reads, and drain connections on shutdown.

pub mod error;
pub mod meta;
pub mod observe;
pub mod routes;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use warp::Filter;
use warp::reply::Response;

use routes::PeerAddr;

/// Connection settings of a listener.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// How long a client may take to send its request headers (and, with TLS, to
    /// finish its handshake).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<tls::Tls>,
    /// Access log and metrics of this listener.
    pub observer: Arc<observe::Observer>,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            tls: None,
            observer: Arc::new(observe::Observer::new("public", None)),
        }
    }
}

/// Serves `filter` on `listener` until `shutdown` completes, then stops accepting and
/// waits (at most `drain_timeout`) for in-flight requests to finish.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = TowerToHyperService::new(warp::service(filter));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let accept = |stream: tokio::net::TcpStream, peer| {
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let observer = settings.observer.clone();
        let handler = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(PeerAddr(peer));
            observe::call(service.clone(), observer.clone(), request)
        });
        let watcher = graceful.watcher();
        let settings = settings.clone();
        tokio::spawn(async move {
            match &settings.tls {
                None => connection(stream, handler, watcher, &settings).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(settings.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => connection(stream, handler, watcher, &settings).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        accept(stream, peer);
    }
    // Connections the kernel completed before the listener closes would otherwise be
    // reset: take every one already queued, and let the drain below answer them.
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        accept(stream, peer);
    }
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing them");
    }
}

/// Serves one connection (plain or TLS) until it ends or shutdown closes it.
async fn connection<I, H>(
    io: I,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
    settings: &ConnSettings,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    H::Future: Send + 'static,
    H::ResBody: Send + 'static,
    <H::ResBody as hyper::body::Body>::Data: Send,
    <H::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .serve_connection(TokioIo::new(io), handler);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
