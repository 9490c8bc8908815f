//! A connection must bring its first request quickly.
//!
//! hyper's header timeout starts when it begins reading a request and doubles as the
//! keep-alive idle bound, so a connection that never sends anything holds its slot for
//! `server.header_read_timeout_ms`. Clients open a connection to send a request at once;
//! one that has not delivered the headers of its first request (after the TLS
//! handshake, if any) within `server.first_request_timeout_ms` of being accepted is
//! closed, which bounds how long idle sockets can hold connection slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Whether a connection's first request has arrived, shared by its request handler.
#[derive(Debug, Clone, Default)]
pub(super) struct FirstRequest(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    arrived: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    /// Called for every request; only the first one wakes the watcher.
    pub(super) fn arrived(&self) {
        if !self.0.arrived.swap(true, Ordering::AcqRel) {
            self.0.notify.notify_one();
        }
    }

    /// Resolves at `deadline` if no request arrived by then; never otherwise.
    pub(super) async fn missed(&self, deadline: Instant) {
        if tokio::time::timeout_at(deadline, self.0.notify.notified())
            .await
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
    }
}
