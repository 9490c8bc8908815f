//! Group commit: one flusher thread, shared by every writer.
//!
//! A writer makes its change in sled's memory, then asks for durability and waits. The
//! flusher takes every waiter queued so far, calls `Db::flush` once (write + fsync), and
//! answers them all. A waiter queued after a flush started gets the next flush, so each
//! answer covers a write that happened before its flush began. Under load one fsync
//! serves many writers; alone, a writer pays for exactly one.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// Told the duration of every group-commit flush (metrics).
pub type FlushObserver = Box<dyn Fn(Duration) + Send + Sync>;

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    observer: OnceLock<FlushObserver>,
}

/// The group-commit flusher of one sled database.
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
    db: sled::Db,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`.
    pub(super) fn start(db: sled::Db) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            observer: OnceLock::new(),
        });
        let thread = {
            let shared = shared.clone();
            let db = db.clone();
            std::thread::Builder::new()
                .name("liveuser-flush".into())
                .spawn(move || flusher(&shared, &db))
                .expect("spawning the flusher thread")
        };
        GroupCommit {
            shared,
            db,
            thread: Some(thread),
        }
    }

    /// Reports every flush's duration to `observer` (the first observer set stays).
    pub(super) fn observe(&self, observer: FlushObserver) {
        let _ = self.shared.observer.set(observer);
    }

    /// Returns once everything written before the call is on disk.
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.closed {
                drop(queue);
                return flush(&self.db);
            }
            queue.waiting.push(tx);
        }
        self.shared.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Io("the flusher stopped".into())))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flusher(shared: &Shared, db: &sled::Db) {
    loop {
        let batch = {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while queue.waiting.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.waiting.is_empty() {
                return; // closed and drained
            }
            std::mem::take(&mut queue.waiting)
        };
        let started = Instant::now();
        let result = flush(db);
        if let Some(observe) = shared.observer.get() {
            observe(started.elapsed());
        }
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}

/// One synchronous flush of `db`.
pub(super) fn flush(db: &sled::Db) -> Result<(), StoreError> {
    db.flush()
        .map(|_| ())
        .map_err(|e| StoreError::Io(e.to_string()))
}
