//! The one owner of the metadata store, and the cloneable handle everything else uses.
//!
//! [`MetaStore`] is deliberately not shared: one dedicated thread owns it and runs jobs sent
//! over a bounded channel, one at a time, so no document is ever touched concurrently and no
//! lock is held across an await. A job that panics fails alone: its caller gets an error, the
//! panic is counted and logged, and the thread goes on with the next job (an Automerge
//! transaction left open by the panic rolls back when dropped).
//!
//! Every commit a job produces is pushed to the replication
//! outbox (bounded; if replication falls behind, the commit is still durable and anti-entropy
//! delivers it later), so callers cannot forget to replicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::error::MetaError;
use crate::store::{Commit, MetaStore};

/// Jobs waiting for the owner thread.
pub const JOB_QUEUE: usize = 1024;
/// Commits waiting for the replication task.
pub const OUTBOX: usize = 4096;

type Job = Box<dyn FnOnce(&mut MetaStore, &mut Vec<Commit>) + Send>;

enum Msg {
    Job(Job),
    /// Close the store (compacting it) and end the thread.
    Stop,
}

/// The owner thread has stopped (shutdown or a panic in a job).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the metadata store has stopped")]
pub struct Stopped;

/// Cloneable access to the metadata store.
#[derive(Clone)]
pub struct MetaHandle {
    jobs: mpsc::Sender<Msg>,
    dropped_commits: Arc<AtomicU64>,
    panics: Arc<AtomicU64>,
    thread: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for MetaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaHandle").finish_non_exhaustive()
    }
}

impl MetaHandle {
    /// Starts the owner thread for `store`. Commits produced by jobs come out of the returned
    /// receiver, for the replication task.
    pub fn spawn(store: MetaStore) -> (MetaHandle, mpsc::Receiver<Commit>) {
        let (jobs, mut rx) = mpsc::channel::<Msg>(JOB_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_in_thread = dropped.clone();
        let panics = Arc::new(AtomicU64::new(0));
        let panics_in_thread = panics.clone();
        let spawned = std::thread::Builder::new()
            .name("meta-owner".into())
            .spawn(move || {
                let mut store = store;
                let mut commits = Vec::new();
                while let Some(Msg::Job(job)) = rx.blocking_recv() {
                    let run = std::panic::AssertUnwindSafe(|| job(&mut store, &mut commits));
                    if std::panic::catch_unwind(run).is_err() {
                        panics_in_thread.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("a metadata job panicked; its caller got an error");
                    }
                    for c in commits.drain(..) {
                        if out_tx.try_send(c).is_err() {
                            // Replication is behind or gone; the commit is durable locally
                            // and anti-entropy will carry it.
                            dropped_in_thread.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Err(e) = store.compact_all() {
                    tracing::warn!(error = %e, "compaction at shutdown failed");
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                // Without the thread every call answers `Stopped`, which the service reports.
                tracing::error!(error = %e, "cannot start the metadata owner thread");
                None
            }
        };
        (
            MetaHandle {
                jobs,
                dropped_commits: dropped,
                panics,
                thread: Arc::new(parking_lot::Mutex::new(thread)),
            },
            out_rx,
        )
    }

    /// Runs a read-only or internal job on the owner thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, Stopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut MetaStore) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store, _| {
            let _ = tx.send(f(store));
        });
        self.jobs.send(Msg::Job(job)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Runs a mutation; the commits it returns are replicated.
    pub async fn mutate<R, F>(&self, f: F) -> Result<R, MetaError>
    where
        R: Send + 'static,
        F: FnOnce(&mut MetaStore) -> Result<(R, Vec<Commit>), MetaError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store, out| {
            let result = f(store).map(|(r, commits)| {
                out.extend(commits);
                r
            });
            let _ = tx.send(result);
        });
        self.jobs.send(Msg::Job(job)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Closes the store and waits for the owner thread to end: the database is flushed and
    /// closed before the process exits. Later calls on any clone answer `Stopped`.
    pub async fn shutdown(&self) {
        let _ = self.jobs.send(Msg::Stop).await;
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Commits that could not be queued for replication (anti-entropy delivered them).
    pub fn dropped_commits(&self) -> u64 {
        self.dropped_commits.load(Ordering::Relaxed)
    }

    /// Jobs that panicked.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

fn stopped() -> MetaError {
    MetaError::Internal {
        doc: "-".into(),
        reason: Stopped.to_string(),
    }
}
