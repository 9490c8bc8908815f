//! The operator's surface: the admin operations, their HTTP API, and the CLI's way to
//! reach them.
//!
//! Every operation is implemented once, in [`ops`], as a request struct that runs over
//! the [`Service`](crate::service::Service) and returns a data struct. The CLI reaches
//! the operations one of two ways, chosen per command by [`Backend::connect`]:
//!
//! - the server is stopped: the CLI opens the database itself and runs the operation in
//!   process;
//! - the server is running (sled lets one process open a database, so opening fails
//!   with "locked"): the CLI posts the same request struct to the server's admin API
//!   ([`api`], on `server.admin_listen`) and decodes the same answer struct.
//!
//! Both paths yield identical structs, so the printed output ([`print`](mod@print)) is identical.
//! The admin API is authenticated by a random token that the server writes beside the
//! database at start ([`endpoint`]). Export and import ([`backup`]) stream JSON lines.

pub(crate) mod api;
pub(crate) mod backup;
pub(crate) mod client;
pub(crate) mod endpoint;
pub(crate) mod ops;
pub(crate) mod print;

use std::path::Path;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::service::Service;
use crate::store::{SledStore, StoreError};

pub(crate) use self::ops::{Admin, AdminError, Operation};

/// Where the CLI's admin operations run.
pub(crate) enum Backend {
    /// In this process, on the database opened directly (the server is stopped).
    Direct {
        /// The operations over the opened database.
        admin: Arc<Admin<SledStore>>,
        /// A runtime to run them on.
        runtime: tokio::runtime::Runtime,
    },
    /// Through the running server's admin API.
    Api(client::AdminClient),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Direct { .. } => f.write_str("Backend::Direct"),
            Backend::Api(c) => write!(f, "Backend::Api({})", c.base()),
        }
    }
}

impl Backend {
    /// Opens the database named by `config`, or — if the running server holds it —
    /// connects to that server's admin API. With `create`, a missing database is
    /// created (import); otherwise it is an error, so a wrong `storage.path` is not
    /// mistaken for an empty database.
    pub(crate) fn connect(config: &Config, create: bool) -> Result<Backend, AdminError> {
        let path = &config.storage.path;
        if !create && !path.exists() {
            return Err(AdminError::not_found(format!(
                "no database at {} (check storage.path, or start the server once)",
                path.display()
            )));
        }
        match crate::store::open(&config.storage) {
            Ok(store) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| AdminError::internal(format!("cannot start a runtime: {e}")))?;
                let store = Arc::new(store);
                let service = runtime
                    .block_on(Service::from_config(config, store, Arc::new(SystemClock)))
                    .map_err(AdminError::from)?;
                Ok(Backend::Direct {
                    admin: Arc::new(Admin::new(Arc::new(service), config.token.clone())),
                    runtime,
                })
            }
            Err(StoreError::Locked) => {
                let file = endpoint::path_for(path);
                let endpoint = endpoint::Endpoint::read(&file)?;
                Ok(Backend::Api(client::AdminClient::new(&endpoint)))
            }
            Err(e) => Err(AdminError::from(e)),
        }
    }

    /// Says which path this backend takes, for `-v`.
    pub(crate) fn describe(&self, db: &Path) -> String {
        match self {
            Backend::Direct { .. } => format!("opened the database at {} directly", db.display()),
            Backend::Api(c) => format!(
                "the database is in use by the running server; using its admin API at {}",
                c.base()
            ),
        }
    }

    /// Runs one operation.
    pub(crate) fn run<O: Operation>(&self, op: O) -> Result<O::Output, AdminError> {
        match self {
            Backend::Direct { admin, runtime } => runtime.block_on(op.run(admin)),
            Backend::Api(client) => client.call(&op),
        }
    }

    /// Flushes the directly opened database (a no-op through the API, whose writes are
    /// durable on answer).
    pub(crate) fn close(self) -> Result<(), AdminError> {
        if let Backend::Direct { admin, .. } = self {
            admin.service().store().flush()?;
        }
        Ok(())
    }
}
