//! An answer that stops moving ends its connection.
//!
//! hyper bounds how long a client may take to send a request, not how long it may take
//! to read the answer. A client that pipelines requests and never reads fills its
//! receive window and then the server's send buffer; the server's writes wait, hyper
//! reads no further request, and none of the read timeouts runs, so the connection and
//! its slot were held for as long as the client liked. Here a write that has to wait
//! (the socket is full) starts a timer, and any write that gets through stops it; when
//! `server.write_timeout_ms` passes with no progress, the write fails and hyper closes
//! the connection.
//!
//! Progress is what the kernel reports: a socket becomes writable again once the client
//! has taken a good part of what is queued, so a client that keeps reading keeps its
//! connection, while one that takes a trickle of a large backlog may lose it.
//!
//! The timer is touched only when a write has to wait, which an answer that fits the
//! socket's buffers never does: on the path of every ordinary answer the cost is one
//! branch.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner`, whose writes fail once they have waited `timeout` without progress.
#[derive(Debug)]
pub(super) struct StalledWrite<I> {
    inner: I,
    timeout: Duration,
    /// Set while writes wait; kept between stalls to reuse its allocation.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<I> StalledWrite<I> {
    pub(super) fn new(inner: I, timeout: Duration) -> Self {
        StalledWrite {
            inner,
            timeout,
            timer: None,
            waiting: false,
        }
    }

    /// Passes on what `inner` answered, watching the time while it waits.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        answer: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if answer.is_ready() {
            self.waiting = false;
            return answer;
        }
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = self.timer.as_mut().expect("set when waiting began");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took none of the answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StalledWrite<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StalledWrite<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let answer = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, answer)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let answer = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, answer)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let answer = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, answer)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let answer = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_that_waits_past_the_timeout_fails_and_one_that_moves_does_not() {
        let timeout = Duration::from_millis(300);
        // A pipe whose reader takes nothing yet: the writer fills its 1 KiB and waits.
        let (writer, mut reader) = tokio::io::duplex(1024);
        let mut writer = StalledWrite::new(writer, timeout);
        writer.write_all(&[0; 1024]).await.unwrap();

        // The reader takes a little every 100 ms: each write waits less than the
        // timeout, and all of them together much longer.
        let started = Instant::now();
        let mut taken = vec![0; 256];
        for _ in 0..10 {
            let write = writer.write_all(&[1; 256]);
            let read = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                reader.read_exact(&mut taken).await.unwrap();
            };
            let (written, ()) = tokio::join!(write, read);
            written.unwrap();
        }
        assert!(started.elapsed() > 3 * timeout);

        // Nothing taken: the waiting write fails once the timeout has passed.
        let started = Instant::now();
        let error = writer.write_all(&[2; 256]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(started.elapsed() < 10 * timeout, "{:?}", started.elapsed());
    }
}
