//! Wiring: from a [`Config`] to a running server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::endpoint::{self, Endpoint};
use crate::admin::{Admin, api as admin_api};
use crate::clock::SharedClock;
use crate::config::{Config, WxMode};
use crate::http::observe::Observer;
use crate::http::tls::{Tls, TlsError};
use crate::http::{self, ConnSettings};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::store::{AnyStore, Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error("cannot open the database at {path}: {source}")]
    Store {
        /// Where the database is: `storage.path`, or PostgreSQL's host and database.
        path: String,
        source: StoreError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("cannot use the TLS certificate: {0}")]
    Tls(#[from] TlsError),
    /// The admin endpoint file could not be written.
    #[error("cannot write the admin token file {path}: {source}")]
    AdminToken {
        path: String,
        source: std::io::Error,
    },
    /// The admin socket could not be bound.
    #[error("cannot listen on the admin socket {path}: {source}")]
    AdminSocket {
        /// The socket's path.
        path: String,
        source: std::io::Error,
    },
}

/// Process-wide memory settings, to call first thing in `main`.
///
/// glibc gives every thread that allocates its own arena (up to 8 per core); with sled's
/// I/O threads, the flusher and the async workers each keeping freed memory in its own
/// arena, a server on a 1M-user database held about a quarter more resident memory than
/// with two arenas, at no measurable cost in throughput on the 2-core machines liveuser
/// targets. Other C libraries are left alone.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before the
        // program starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// A running server, for the binary and for tests.
pub struct Running {
    /// The bound public address.
    pub addr: SocketAddr,
    /// The bound admin address (none on PostgreSQL: the CLI works on the database
    /// directly, so there is no admin API to serve).
    pub admin_addr: Option<SocketAddr>,
    /// The service, for in-process inspection.
    pub service: Arc<Service<AnyStore>>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Asks the server to stop, waits for in-flight requests, the final flush and the
    /// database's release (so that a start in the same process can open it again).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.wait().await;
    }

    /// Waits until the server stops by itself (it does not, unless shut down).
    pub async fn wait(self) {
        // The service holds the store: the server releases the database only once this
        // reference is gone too.
        drop(self.service);
        let _ = self.done.await;
    }

    /// A handle that stops the server when sent `true`.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// The admin API's listeners and the files that tell the CLI where they are.
struct AdminListeners {
    tcp: TcpListener,
    addr: SocketAddr,
    socket: Option<(AdminSocket, PathBuf)>,
    endpoint: Arc<Endpoint>,
    endpoint_file: PathBuf,
}

#[cfg(unix)]
type AdminSocket = tokio::net::UnixListener;
/// There is no admin socket off Unix.
#[cfg(not(unix))]
type AdminSocket = std::convert::Infallible;

impl AdminListeners {
    /// Binds `server.admin_listen` and the admin socket beside the database, and writes
    /// the endpoint file that names both with a fresh token.
    async fn bind(config: &Config) -> Result<Self, StartError> {
        let (tcp, addr) = bind(config.server.admin_listen).await?;
        if !addr.ip().is_loopback() {
            tracing::warn!(admin_addr = %addr, "the admin API is plain HTTP and is not on loopback; keep it on a trusted network");
        }
        let socket = bind_admin_socket(&endpoint::socket_for(&config.storage.path))?;
        let endpoint = Arc::new(Endpoint::generate(
            addr,
            socket.as_ref().map(|(_, path)| path.clone()),
        ));
        let endpoint_file = endpoint::path_for(&config.storage.path);
        endpoint
            .write(&endpoint_file)
            .map_err(|source| StartError::AdminToken {
                path: endpoint_file.display().to_string(),
                source,
            })?;
        Ok(AdminListeners {
            tcp,
            addr,
            socket,
            endpoint,
            endpoint_file,
        })
    }

    /// Serves `routes` on both listeners until `stopped`, then removes the files.
    async fn serve<F>(self, routes: F, settings: ConnSettings, stopped: watch::Receiver<bool>)
    where
        F: warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let tcp = http::serve(
            self.tcp,
            routes.clone(),
            settings.clone(),
            until_stopped(stopped.clone()),
        );
        let socket_path = match self.socket {
            #[cfg(unix)]
            Some((socket, path)) => {
                tokio::join!(
                    tcp,
                    http::serve(socket, routes, settings, until_stopped(stopped))
                );
                Some(path)
            }
            _ => {
                tcp.await;
                None
            }
        };
        let _ = std::fs::remove_file(&self.endpoint_file);
        if let Some(path) = socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The longest path a Unix socket address holds (`sun_path` less its final NUL, on
/// Linux; where it is shorter, `bind` says so).
#[cfg(unix)]
const SOCKET_PATH_MAX: usize = 107;

/// Binds the admin socket at `path`, mode 0600: only the server's user (and root) can
/// connect. The database is open, and so locked, by now: a socket found there was left
/// by a server that is gone (killed before it could remove it), and is replaced.
#[cfg(unix)]
fn bind_admin_socket(path: &Path) -> Result<Option<(AdminSocket, PathBuf)>, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let socket_error = |source| StartError::AdminSocket {
        path: path.display().to_string(),
        source,
    };
    let length = path.as_os_str().len();
    if length > SOCKET_PATH_MAX {
        return Err(socket_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the path is {length} bytes long and a Unix socket's may be at most \
                 {SOCKET_PATH_MAX}; choose a shorter storage.path"
            ),
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(e)),
    }
    // The umask (0077 since the database was opened) keeps others out until the chmod.
    let listener = tokio::net::UnixListener::bind(path).map_err(socket_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_error)?;
    Ok(Some((listener, path.to_path_buf())))
}

#[cfg(not(unix))]
fn bind_admin_socket(_path: &Path) -> Result<Option<(AdminSocket, PathBuf)>, StartError> {
    Ok(None)
}

/// Opens storage, binds `config.server.listen` (HTTPS with `tls_cert`/`tls_key`) and
/// `config.server.admin_listen`, writes the admin endpoint file, and serves until shut
/// down.
pub async fn start(config: &Config, clock: SharedClock) -> Result<Running, StartError> {
    let tls = if config.server.tls_cert.as_os_str().is_empty() {
        None
    } else {
        Some(Tls::load(&config.server.tls_cert, &config.server.tls_key)?)
    };
    let store_error = |source| StartError::Store {
        path: crate::store::location(&config.storage),
        source,
    };
    let store = Arc::new(
        crate::store::open(&config.storage)
            .await
            .map_err(store_error)?,
    );
    let metrics = Arc::new(Metrics::new());
    metrics.set_enabled(config.server.metrics);
    {
        let metrics = metrics.clone();
        store.observe_flushes(Box::new(move |elapsed, writers| {
            metrics.flushed(elapsed, writers)
        }));
    }
    let service = Service::from_config(config, store.clone(), clock)
        .await
        .map_err(store_error)?
        .with_metrics(metrics.clone());
    // Admin commands run on this database while the server is stopped compare their own
    // signing key with this record (see `keys::check_key_source`).
    crate::keys::record_key_source(store.as_ref(), &config.token)
        .await
        .map_err(store_error)?;
    let service = Arc::new(service);
    let (listener, addr) = bind(config.server.listen).await?;
    // The admin API exists because sled lets one process open the database; on
    // PostgreSQL the CLI connects to the database itself, so there is none to serve.
    let admin = if store.is_shared() {
        None
    } else {
        Some(AdminListeners::bind(config).await?)
    };
    let admin_addr = admin.as_ref().map(|a| a.addr);

    if config.wx.mode == WxMode::Mock {
        tracing::warn!(
            "wx.mode = \"mock\": logins are NOT checked with WeChat; any code logs in. Development only."
        );
    } else if config.wx.appid.is_empty() || config.wx.secret.expose().is_empty() {
        tracing::warn!("wx.appid or wx.secret is empty: every Login will answer `unavailable`");
    }

    let (stop, mut stopped) = watch::channel(false);
    let sweeper = tokio::spawn(sweep_forever(
        service.clone(),
        Duration::from_secs(config.storage.sweep_interval_secs),
        stopped.clone(),
    ));
    // Another instance or the CLI may rotate the signing key: put it in force here too.
    let key_reloader = store.key_changes().map(|changes| {
        tokio::spawn(reload_keys_on_change(
            service.clone(),
            config.token.clone(),
            changes,
        ))
    });
    // Count users and live sessions in the background: a count scans both trees (seconds
    // at a million users), and the server must not wait for it to become healthy. Until
    // it finishes the two gauges read 0.
    if config.server.metrics {
        http::meta::census_if_due(&service);
    }
    let routes = http::routes::api(
        service.clone(),
        config.server.body_limit_bytes,
        Arc::new(crate::limits::Limits::from_config(&config.limits)),
        config.server.max_query_uids,
        config.token.jwks_max_age_secs,
    );
    let public = ConnSettings {
        tls,
        ..ConnSettings::from_config(
            config,
            Arc::new(Observer::new(
                "public",
                config.server.metrics.then(|| metrics.clone()),
            )),
        )
    };
    let admin = admin.map(|listeners| {
        let routes = admin_api::routes(
            Arc::new(Admin::new(service.clone(), config.token.clone())),
            listeners.endpoint.clone(),
            config.storage.path.clone(),
        );
        let settings = ConnSettings::from_config(config, Arc::new(Observer::new("admin", None)));
        (listeners, routes, settings)
    });
    let scheme = if public.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let done = tokio::spawn(async move {
        let admin_stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        match admin {
            Some((listeners, admin_routes, admin_settings)) => {
                tokio::join!(
                    http::serve(listener, routes, public, shutdown),
                    listeners.serve(admin_routes, admin_settings, admin_stopped),
                );
            }
            None => http::serve(listener, routes, public, shutdown).await,
        }
        sweeper.abort();
        // The sweeper holds the store: wait until it is gone, so a restart in the same
        // process can open the database again.
        let _ = sweeper.await;
        if let Some(reloader) = key_reloader {
            reloader.abort();
            let _ = reloader.await;
        }
        match store.flush() {
            Ok(()) => tracing::info!("storage flushed; stopped"),
            Err(e) => tracing::error!(error = %e, "final flush failed"),
        }
        release(store).await;
    });
    match admin_addr {
        Some(admin_addr) => tracing::info!(%addr, %admin_addr, scheme, "liveuser listening"),
        None => tracing::info!(%addr, scheme, "liveuser listening"),
    }
    Ok(Running {
        addr,
        admin_addr,
        service,
        stop,
        done,
    })
}

/// How long a stopping server waits for the tasks that still hold its store.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops `store` once no other task holds it, so that the database is closed (on sled,
/// its lock let go) when the server's task ends. A census a start or a scrape began
/// runs on a blocking thread past the listeners' end, and a connection's task lets go
/// of its routes just after the drain counts it closed.
async fn release<T>(store: Arc<T>) {
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    while Arc::strong_count(&store) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("a task still holds the storage; it is closed when that task ends");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sweep_forever<S: Store>(
    service: Arc<Service<S>>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        match service.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "swept dead sessions"),
            Err(e) => tracing::error!(error = %e, "session sweep failed"),
        }
    }
}

async fn reload_keys_on_change<S: Store>(
    service: Arc<Service<S>>,
    token: crate::config::TokenConfig,
    mut changes: watch::Receiver<u64>,
) {
    while changes.changed().await.is_ok() {
        // Side by side: a change of either kind is in force as soon as its own read is.
        let (signing, refresh) = tokio::join!(
            service.reload_signing_keys(&token),
            service.reload_refresh_key()
        );
        if let Err(e) = signing.and(refresh) {
            tracing::warn!(error = %e, "reloading the keys failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            changes.mark_changed();
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The signals are caught from the moment this is
/// called, not from the first poll: call it before the server logs its address, or a
/// signal sent on seeing that line (a supervisor, a test) ends the process before the
/// handler exists, with no drain and no final flush.
#[cfg(unix)]
pub fn termination_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn termination_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
