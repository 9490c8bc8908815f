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
//!   ([`api`], on the admin socket beside the database, or `server.admin_listen` where
//!   there is none) and decodes the same answer struct.
//!
//! On PostgreSQL there is no lock to detect and nothing to go through: any number of
//! servers and CLIs share the database, so the CLI always runs the operation itself.
//!
//! Both paths yield identical structs, so the printed output ([`print`](mod@print)) is identical.
//! Export and import ([`backup`] is the file format) take the same two paths: the
//! backend streams an export's lines and imports a file whichever way it reached the
//! database, so the CLI only handles the operator's files. The admin API is
//! authenticated by a random token that the server writes beside the database at start
//! ([`endpoint`]).

pub(crate) mod api;
mod backend;
pub(crate) mod backup;
pub(crate) mod client;
pub(crate) mod endpoint;
pub(crate) mod ops;
pub(crate) mod print;
#[cfg(unix)]
mod unix;

pub(crate) use self::backend::{Backend, ImportProgress};
pub(crate) use self::ops::{Admin, AdminError};
