//! Where the CLI's admin operations run: in this process on the database opened
//! directly, or through the running server's admin API.
//!
//! Every way into the database goes through here, export and import included, so the
//! CLI never asks which path it took: an operation answers the same struct, an export
//! streams the same lines, an import reports the same counts.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::backup::{Counts, Exporter, Line, Phase};
use super::client::AdminClient;
use super::endpoint;
use super::ops::{Admin, AdminError, ExportRequest, Operation};
use crate::clock::SystemClock;
use crate::config::{Config, StorageBackend};
use crate::service::Service;
use crate::store::{AnyStore, StoreError};

/// Where the CLI's admin operations run.
pub(crate) enum Backend {
    /// In this process, on the database opened directly (the server is stopped).
    Direct {
        /// The operations over the opened database.
        admin: Arc<Admin<AnyStore>>,
        /// A runtime to run them on.
        runtime: tokio::runtime::Runtime,
    },
    /// Through the running server's admin API.
    Api(AdminClient),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Direct { .. } => f.write_str("Backend::Direct"),
            Backend::Api(c) => write!(f, "Backend::Api({})", c.place()),
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
        if config.storage.backend == StorageBackend::Sled && !create && !path.exists() {
            return Err(AdminError::not_found(format!(
                "no database at {} (check storage.path, or start the server once)",
                path.display()
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AdminError::internal(format!("cannot start a runtime: {e}")))?;
        match runtime.block_on(crate::store::open(&config.storage)) {
            Ok(store) => {
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
                Ok(Backend::Api(AdminClient::new(&endpoint)))
            }
            Err(e) => Err(AdminError::from(e)),
        }
    }

    /// Says which path this backend takes, for `-v`.
    pub(crate) fn describe(&self, config: &Config) -> String {
        match self {
            Backend::Direct { admin, .. } if admin.service().store().is_shared() => format!(
                "connected to the database {} directly",
                crate::store::location(&config.storage)
            ),
            Backend::Direct { .. } => format!(
                "opened the database at {} directly",
                config.storage.path.display()
            ),
            Backend::Api(c) => format!(
                "the database is in use by the running server; using its admin API {}",
                c.place()
            ),
        }
    }

    pub(crate) fn run<O: Operation>(&self, op: O) -> Result<O::Output, AdminError> {
        match self {
            Backend::Direct { admin, runtime } => runtime.block_on(op.run(admin)),
            Backend::Api(client) => client.call(&op),
        }
    }

    pub(crate) fn export(&self, request: ExportRequest) -> Result<ExportStream<'_>, AdminError> {
        let source = match self {
            Backend::Direct { admin, runtime } => Source::Direct {
                exporter: admin.exporter(request),
                runtime,
            },
            Backend::Api(client) => Source::Api {
                reader: Box::new(client.export(request)?),
                buf: vec![0; 64 * 1024],
            },
        };
        Ok(ExportStream {
            source,
            tail: LastLine::default(),
        })
    }

    /// Imports the export file at `file`, telling `progress` how far it is. Through the
    /// running server the file is sent whole and may be at most
    /// [`IMPORT_BODY_LIMIT`](super::api::IMPORT_BODY_LIMIT) bytes.
    pub(crate) fn import(
        &self,
        file: &Path,
        merge: bool,
        progress: &(dyn Fn(ImportProgress) + Sync),
    ) -> Result<Counts, AdminError> {
        let cannot_read =
            |e: std::io::Error| AdminError::invalid(format!("cannot read {}: {e}", file.display()));
        match self {
            Backend::Direct { admin, runtime } => {
                let open = || std::fs::File::open(file).map(std::io::BufReader::new);
                let report =
                    |phase: Phase, lines: u64| progress(ImportProgress::Lines(phase, lines));
                runtime.block_on(admin.import(open, merge, &report))
            }
            Backend::Api(client) => {
                let file_handle = std::fs::File::open(file).map_err(cannot_read)?;
                let total = file_handle.metadata().map(|m| m.len()).unwrap_or(0);
                let limit = super::api::IMPORT_BODY_LIMIT;
                if total > limit {
                    return Err(AdminError::invalid(format!(
                        "{} is larger than {limit} bytes, the most the running server imports; \
                         stop the server and run the import again",
                        file.display()
                    )));
                }
                let mut sending = Sending {
                    file: file_handle,
                    sent: 0,
                    total,
                    progress,
                };
                client.import(&mut sending, merge)
            }
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

/// How far an import is, for a progress display.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ImportProgress {
    /// Bytes of the file sent to the running server so far, of `total`.
    Sent {
        /// Sent so far.
        bytes: u64,
        /// The file's size.
        total: u64,
    },
    /// Lines checked (first pass) or written (second pass) so far.
    Lines(Phase, u64),
}

/// The file on its way to the server, counting what it has sent.
struct Sending<'a> {
    file: std::fs::File,
    sent: u64,
    total: u64,
    progress: &'a (dyn Fn(ImportProgress) + Sync),
}

impl Read for Sending<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.sent += n as u64;
        (self.progress)(ImportProgress::Sent {
            bytes: self.sent,
            total: self.total,
        });
        Ok(n)
    }
}

/// An export as it is produced, whichever way the database is reached.
pub(crate) struct ExportStream<'a> {
    source: Source<'a>,
    tail: LastLine,
}

enum Source<'a> {
    Direct {
        exporter: Exporter<AnyStore>,
        runtime: &'a tokio::runtime::Runtime,
    },
    Api {
        reader: Box<dyn Read>,
        buf: Vec<u8>,
    },
}

impl ExportStream<'_> {
    /// The next piece of the export, or `None` when the stream ends.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, AdminError> {
        let chunk = match &mut self.source {
            Source::Direct { exporter, runtime } => runtime.block_on(exporter.next_chunk())?,
            Source::Api { reader, buf } => {
                let n = reader.read(buf).map_err(|e| {
                    AdminError::unavailable(format!("the export was cut short: {e}"))
                })?;
                (n > 0).then(|| buf[..n].to_vec())
            }
        };
        if let Some(chunk) = &chunk {
            self.tail.feed(chunk);
        }
        Ok(chunk)
    }

    /// Complete lines so far.
    pub(crate) fn lines(&self) -> u64 {
        self.tail.lines
    }

    /// The counts of the end line, once the stream has ended with one; `None` if it
    /// ended without (the server's export failed part way).
    pub(crate) fn end(&self) -> Option<Counts> {
        self.tail.end()
    }
}

/// Follows the lines going by, to keep the last complete one (the end line).
#[derive(Default)]
struct LastLine {
    partial: Vec<u8>,
    last: Vec<u8>,
    lines: u64,
}

impl LastLine {
    fn feed(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            self.partial.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                self.last = std::mem::take(&mut self.partial);
                self.lines += 1;
            }
        }
    }

    /// The counts of the end line, if the stream ended with one.
    fn end(&self) -> Option<Counts> {
        if !self.partial.is_empty() {
            return None;
        }
        match serde_json::from_slice::<Line>(&self.last) {
            Ok(Line::End {
                users,
                identities,
                sessions,
            }) => Some(Counts {
                users,
                identities,
                sessions,
            }),
            _ => None,
        }
    }
}
