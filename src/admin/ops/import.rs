//! `import` (`/admin/v1/import?merge=BOOL`): restores an export file.
//!
//! Not an [`Operation`](super::Operation): its request is a file, not one struct. The
//! admin API spools the upload to a temporary file and imports from there; the CLI's
//! direct path imports from the operator's file where it lies. Both end here.

use std::io::BufRead;

use super::{Admin, AdminError};
use crate::admin::backup::{self, Counts, Progress};
use crate::store::Store;

impl<S: Store> Admin<S> {
    /// Checks every line of the file `open` opens, then writes it (`open` is called once
    /// per pass); into a database that holds users only with `merge`.
    pub(crate) async fn import<R: BufRead + Send>(
        &self,
        open: impl Fn() -> std::io::Result<R> + Send,
        merge: bool,
        progress: Progress<'_>,
    ) -> Result<Counts, AdminError> {
        let now = self.service.now();
        let counts = backup::import(self.store(), open, merge, progress, now).await?;
        // An import into an empty database may have adopted the file's refresh-token key.
        self.service.reload_refresh_key().await?;
        // The gauges of users and sessions are recounted at the next scrape.
        self.service.metrics().census_stale();
        Ok(counts)
    }
}
