//! The HTTP layer: the server loop and the public routes.
//!
//! The server owns its accept loop (rather than `warp::serve`) so it can put the peer
//! address on each request, bound header reads, and drain connections on shutdown.

mod deadline;
pub mod error;
pub mod routes;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::reply::Response;

use deadline::DeadlineBody;
use routes::PeerAddr;

/// Connection settings of a listener.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// How long a client may take to send its request headers; also how long an idle
    /// keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body once its headers are in.
    pub body_read_timeout: Duration,
    /// Open connections at most; beyond it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnSettings {
    /// The settings `[server]` describes.
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        ConnSettings {
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(server.body_read_timeout_ms),
            max_connections: server.max_connections,
            ..ConnSettings::default()
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
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        // At the connection cap, wait for a slot instead of accepting: clients queue in
        // the kernel's backlog, and slow ones are cut by the header timeout.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let body_read_timeout = settings.body_read_timeout;
        let handler = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(PeerAddr(peer));
            let unread = deadline::Unread::of(request.body());
            let request = request.map(|body| DeadlineBody::new(body, body_read_timeout, &unread));
            let answer = hyper::service::Service::call(&service, request);
            async move {
                let mut response = answer.await?;
                // An answer given without reading the body (404, 405, 415, 413): the
                // rest of the body may still be on its way, so hyper will close the
                // connection; say so, or a client may reuse it and see its next request
                // fail.
                if unread.remains() {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .serve_connection(TokioIo::new(stream), handler);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing them");
    }
}
