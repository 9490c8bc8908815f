//! A request body that must arrive in full before a deadline.
//!
//! hyper bounds how long headers may take, not bodies: without this a client could
//! declare a 64 KiB body and send a byte a minute, holding a connection and a handler
//! forever. Past the deadline the body ends with an error, which the routes answer as
//! `malformed` (the request body could not be read).
//!
//! It also notes whether the body was read to its end, so the server can mark an answer
//! given without reading it as the connection's last.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};

/// Error of a body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(super) struct BodyTimeout;

/// Whether a request body is still (partly) unread.
#[derive(Clone, Debug)]
pub(super) struct Unread(Arc<AtomicBool>);

impl Unread {
    /// Unread unless `body` is empty.
    pub(super) fn of<B: Body>(body: &B) -> Self {
        Unread(Arc::new(AtomicBool::new(!body.is_end_stream())))
    }

    /// `true` while the body has not been read to its end.
    pub(super) fn remains(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// `inner`, failing once `timeout` has passed since the request's headers arrived.
pub(super) struct DeadlineBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    unread: Unread,
}

impl<B> DeadlineBody<B> {
    /// Starts the clock now; `unread` is cleared when the body has been read to its end.
    pub(super) fn new(inner: B, timeout: Duration, unread: &Unread) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            unread: unread.clone(),
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() || this.inner.is_end_stream() {
                    this.unread.0.store(false, Ordering::Release);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
