//! Group commit: one flusher thread, shared by every writer.
//!
//! A writer makes its change in sled's memory, then asks for durability and waits. The
//! flusher takes every waiter queued so far, calls `Db::flush` once (write + fsync), and
//! answers them all. A waiter queued after a flush started gets the next flush, so each
//! answer covers a write that happened before its flush began. Under load one fsync
//! serves many writers; alone, a writer pays for exactly one.
//!
//! Writers wake the flusher only when it sleeps: while it flushes, arrivals just queue
//! (no system call) and the flusher takes them all as soon as the flush returns. Every
//! flush reports its duration and batch size (`liveuser_storage_flush_batch_writers`).

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// Told the duration and the number of writers of every group-commit flush (metrics).
pub type FlushObserver = Box<dyn Fn(Duration, usize) + Send + Sync>;

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    closed: bool,
    /// The flusher waits on the condition variable and needs a wake-up.
    asleep: bool,
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
        let asleep = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.closed {
                drop(queue);
                return flush(&self.db);
            }
            queue.waiting.push(tx);
            // Busy flushing, it takes this waiter when the flush returns: no wake-up.
            std::mem::replace(&mut queue.asleep, false)
        };
        if asleep {
            self.shared.wake.notify_one();
        }
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
                queue.asleep = true;
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            queue.asleep = false;
            if queue.waiting.is_empty() {
                return; // closed and drained
            }
            std::mem::take(&mut queue.waiting)
        };
        let started = Instant::now();
        let result = flush(db);
        if let Some(observe) = shared.observer.get() {
            observe(started.elapsed(), batch.len());
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_writer_is_answered_by_a_flush_that_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let commit = Arc::new(GroupCommit::start(db.clone()));
        let (flushes, writers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        {
            let (flushes, writers) = (flushes.clone(), writers.clone());
            commit.observe(Box::new(move |_, n| {
                flushes.fetch_add(1, Ordering::SeqCst);
                writers.fetch_add(n, Ordering::SeqCst);
            }));
        }
        // Rounds of concurrent writers, with pauses that let the flusher fall asleep, so
        // both ways of joining a flush (waking it, queueing while it runs) are taken.
        for round in 0..20u32 {
            let tasks: Vec<_> = (0..25u32)
                .map(|i| {
                    let (commit, db) = (commit.clone(), db.clone());
                    tokio::spawn(async move {
                        db.insert((round * 100 + i).to_be_bytes(), &[1]).unwrap();
                        commit.durable().await
                    })
                })
                .collect();
            for task in tasks {
                tokio::time::timeout(Duration::from_secs(30), task)
                    .await
                    .expect("a writer was left waiting")
                    .unwrap()
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(writers.load(Ordering::SeqCst), 500);
        let flushes = flushes.load(Ordering::SeqCst);
        assert!((20..=500).contains(&flushes), "{flushes} flushes");
    }
}
