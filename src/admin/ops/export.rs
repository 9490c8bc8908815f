//! `export` (`/admin/v1/export`): the database as JSON lines, produced a chunk at a time
//! (the format is in [`backup`](crate::admin::backup)).
//!
//! Not an [`Operation`](super::Operation): its answer is a stream, not one struct. The
//! admin API streams the chunks to the client, and the CLI's direct path reads them
//! itself; both start here, so both write the same export.

use serde::{Deserialize, Serialize};

use super::Admin;
use crate::admin::backup::Exporter;
use crate::store::Store;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct ExportRequest {
    /// Include live sessions and their refresh-token hashes.
    pub sessions: bool,
}

impl<S: Store> Admin<S> {
    /// An export of the database as of now.
    pub(crate) fn exporter(&self, request: ExportRequest) -> Exporter<S> {
        Exporter::new(
            self.service.store().clone(),
            self.service.now(),
            request.sessions,
        )
    }
}
