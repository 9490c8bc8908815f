//! The HTTP layer: the server loop and the public routes.
//!
//! The server owns its accept loop (rather than `warp::serve`) so it can put the peer
//! address on each request, terminate TLS, bound header and body reads, answers that a
//! client takes none of, and the number of connections (in all, and per client
//! address), log and count every request, and drain connections on shutdown. It serves
//! a TCP listener or, for the admin API, a Unix socket ([`Listener`]).
//!
//! [`serve`] is the listener's life: [`Admission`] accepts connections within the caps
//! until shutdown, each is served on a task of its own by [`serve_connection`], whose
//! [`handler`] prepares every request for the routes, and the drain ends it.

mod body;
mod deadline;
pub(crate) mod error;
mod first_request;
pub(crate) mod meta;
pub(crate) mod observe;
mod openapi;
mod per_address;
pub(crate) mod routes;
mod stalled_write;
mod strict;
pub(crate) mod tls;
pub(crate) mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::Filter;
use warp::reply::Response;

pub(crate) use body::{BodyError, capped, capped_stream, header_value};
use deadline::DeadlineBody;
pub(crate) use error::{ErrorCode, error_response};
use first_request::FirstRequest;
use per_address::{Admitted, PerAddress};
use routes::PeerAddr;
use stalled_write::StalledWrite;

/// Connection settings of a listener.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    /// How long a client may take to send its request headers (and, with TLS, to finish
    /// its handshake); also how long an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body once its headers are in.
    pub body_read_timeout: Duration,
    /// How long an answer may wait on a client that takes none of it; see
    /// [`stalled_write`].
    pub write_timeout: Duration,
    /// Open connections at most; beyond it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Open connections per client address at most (0: no cap); see [`per_address`].
    pub max_connections_per_address: usize,
    /// Peers exempt from the per-address cap (the trusted proxies).
    pub exempt_addresses: Arc<[IpAddr]>,
    /// How long after it is accepted a connection may take to deliver its first
    /// request's headers (TLS handshake included); see [`first_request`]. At most
    /// `header_read_timeout`.
    pub first_request_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<tls::Tls>,
    /// Access log and metrics of this listener.
    pub observer: Arc<observe::Observer>,
}

/// How long shutdown waits for in-flight requests (the README promises at most 10 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnSettings {
    /// The timeouts and limits `[server]` describes, with the trusted proxies of
    /// `[limits]` exempt from the per-address cap; plain HTTP, observed by `observer`
    /// (the caller sets TLS per listener). The defaults are `[server]`'s.
    pub(crate) fn from_config(
        config: &crate::config::Config,
        observer: Arc<observe::Observer>,
    ) -> Self {
        let server = &config.server;
        ConnSettings {
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(server.body_read_timeout_ms),
            write_timeout: Duration::from_millis(server.write_timeout_ms),
            max_connections: server.max_connections,
            max_connections_per_address: server.max_connections_per_address,
            exempt_addresses: config.limits.trusted_proxies.clone().into(),
            first_request_timeout: Duration::from_millis(
                server
                    .first_request_timeout_ms
                    .min(server.header_read_timeout_ms),
            ),
            drain_timeout: DRAIN_TIMEOUT,
            tls: None,
            observer,
        }
    }
}

/// A bound socket that [`serve`] accepts connections from.
pub(crate) trait Listener {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection, with its client's address: none on a Unix socket, whose
    /// clients are local processes its file mode let in.
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Io, Option<SocketAddr>)>>;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(TcpStream, Option<SocketAddr>)>> {
        TcpListener::poll_accept(self, cx).map_ok(|(stream, peer)| {
            let _ = stream.set_nodelay(true);
            (stream, Some(peer))
        })
    }
}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Io, Option<SocketAddr>)>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(stream, _)| (stream, None))
    }
}

/// Serves `filter` on `listener` until `shutdown` completes, then stops accepting and
/// waits (at most `drain_timeout`) for in-flight requests to finish.
pub(crate) async fn serve<L, F>(
    listener: L,
    filter: F,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    // Boxed: hyper's adapter clones the service for every request, and the route tree
    // is a few hundred bytes of filters; a boxed filter clones as one reference count.
    let service = TowerToHyperService::new(warp::service(filter.boxed()));
    let graceful = GracefulShutdown::new();
    let admission = Admission::new(&settings);
    let accept = |stream: L::Io, peer: Option<SocketAddr>, place: Place| {
        let deadline = tokio::time::Instant::now() + settings.first_request_timeout;
        let connection = serve_connection(
            stream,
            peer,
            service.clone(),
            graceful.watcher(),
            settings.clone(),
            deadline,
        );
        tokio::spawn(async move {
            connection.await;
            drop(place);
        });
    };
    admission.accept_until(&listener, shutdown, &accept).await;
    admission.accept_queued(&listener, &accept);
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing them");
    }
}

/// The caps a listener admits connections under: its connection slots
/// (`max_connections`) and the per-address cap.
struct Admission {
    slots: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
}

/// What an open connection holds of its listener's caps, given back when it closes.
struct Place {
    _slot: Option<OwnedSemaphorePermit>,
    _admitted: Admitted,
}

impl Admission {
    fn new(settings: &ConnSettings) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            per_address: PerAddress::new(
                settings.max_connections_per_address,
                &settings.exempt_addresses,
            ),
        }
    }

    /// Hands every connection `listener` accepts within the caps to `accept`, until
    /// `shutdown` completes.
    async fn accept_until<L: Listener>(
        &self,
        listener: &L,
        shutdown: impl Future<Output = ()>,
        accept: &impl Fn(L::Io, Option<SocketAddr>, Place),
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        // A slot taken for a connection that was then refused serves the next one.
        let mut spare = None;
        loop {
            // At the connection cap, wait for a slot instead of accepting: clients queue
            // in the kernel's backlog, and slow ones are cut by the header timeout.
            let slot = match spare.take() {
                Some(slot) => slot,
                None => tokio::select! {
                    slot = self.slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                    () = &mut shutdown => return,
                },
            };
            let (stream, peer) = tokio::select! {
                accepted = std::future::poll_fn(|cx| listener.poll_accept(cx)) => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        spare = Some(slot);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            match self.per_address.admit(peer.map(|p| p.ip())) {
                Some(admitted) => accept(
                    stream,
                    peer,
                    Place {
                        _slot: Some(slot),
                        _admitted: admitted,
                    },
                ),
                None => {
                    // Over its address's cap: closed at once.
                    tracing::debug!(?peer, "too many connections from this address; closed");
                    drop(stream);
                    spare = Some(slot);
                }
            }
        }
    }

    /// Hands every connection already queued on `listener` to `accept`. Connections the
    /// kernel completed before the listener closes would otherwise be reset: every one
    /// is taken (past the connection cap if need be: there are at most a backlog's
    /// worth), and the drain answers them.
    fn accept_queued<L: Listener>(
        &self,
        listener: &L,
        accept: &impl Fn(L::Io, Option<SocketAddr>, Place),
    ) {
        while let Some(Ok((stream, peer))) =
            std::future::poll_fn(|cx| listener.poll_accept(cx)).now_or_never()
        {
            if let Some(admitted) = self.per_address.admit(peer.map(|p| p.ip())) {
                let slot = self.slots.clone().try_acquire_owned().ok();
                accept(
                    stream,
                    peer,
                    Place {
                        _slot: slot,
                        _admitted: admitted,
                    },
                );
            }
        }
    }
}

/// Serves one accepted connection (TLS first if the listener has a certificate) until
/// it ends or shutdown closes it; it is closed at `deadline` if its first request's
/// headers have not all arrived by then.
async fn serve_connection<I, S>(
    stream: I,
    peer: Option<SocketAddr>,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    settings: ConnSettings,
    deadline: tokio::time::Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: RouteService,
{
    let first = FirstRequest::default();
    let handler = handler(
        service,
        peer,
        first.clone(),
        settings.observer.clone(),
        settings.body_read_timeout,
    );
    // Beneath TLS, so that the handshake and every record are bound too.
    let stream = StalledWrite::new(stream, settings.write_timeout);
    let served = async {
        match &settings.tls {
            None => connection(stream, handler, watcher, &settings).await,
            Some(tls) => {
                let handshake = tls.acceptor().accept(stream);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(stream)) => connection(stream, handler, watcher, &settings).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    };
    tokio::select! {
        () = served => {}
        () = first.missed(deadline) => {
            tracing::debug!("no request in time after connecting; closed");
        }
    }
}

/// The routes as hyper calls them, with a request body whose reads are timed.
trait RouteService:
    hyper::service::Service<
        hyper::Request<DeadlineBody<hyper::body::Incoming>>,
        Response = Response,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> RouteService for S where
    S: hyper::service::Service<
            hyper::Request<DeadlineBody<hyper::body::Incoming>>,
            Response = Response,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// The handler of one connection's requests: each gets the client's address, its
/// repeated headers folded, a timed body, and the access log; an answer given before
/// its body was read says that the connection closes.
fn handler<S: RouteService>(
    service: S,
    peer: Option<SocketAddr>,
    first: FirstRequest,
    observer: Arc<observe::Observer>,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send,
> + Send
+ 'static {
    hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        first.arrived();
        if let Some(peer) = peer {
            request.extensions_mut().insert(PeerAddr(peer));
        }
        fold_repeated_headers(request.headers_mut());
        let unread = deadline::Unread::of(request.body());
        let request = request.map(|body| DeadlineBody::new(body, body_read_timeout, &unread));
        let answer = observe::call(service.clone(), observer.clone(), request);
        async move {
            let mut response = answer.await?;
            // An answer given without reading the body (404, 405, 415, 413): the rest of
            // the body may still be on its way, so hyper will close the connection; say
            // so, or a client may reuse it and see its next request fail.
            if unread.remains() {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response)
        }
    })
}

/// Folds repeated header lines so that routes read one value each:
/// - repeated `X-Forwarded-For` lines are one list (RFC 9110 §5.3), joined with ", ";
/// - repeated `Authorization` lines are ambiguous (a proxy in front may have judged the
///   other one), so all are dropped and the request is unauthenticated.
fn fold_repeated_headers(headers: &mut hyper::HeaderMap) {
    use hyper::header::{AUTHORIZATION, HeaderValue};
    if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        headers.remove(AUTHORIZATION);
    }
    const XFF: &str = "x-forwarded-for";
    if headers.get_all(XFF).iter().nth(1).is_some() {
        let joined: Vec<&str> = headers
            .get_all(XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match HeaderValue::from_str(&joined.join(", ")) {
            Ok(value) => {
                headers.insert(XFF, value);
            }
            Err(_) => {
                headers.remove(XFF);
            }
        }
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
