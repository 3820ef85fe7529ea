//! The one owner of the metadata store, and the cloneable handle everything else uses.
//!
//! [`MetaStore`] is deliberately not shared: one dedicated thread owns it and runs jobs sent
//! over a bounded channel, one at a time, so no document is ever touched concurrently and no
//! lock is held across an await. A job that panics fails alone: its caller gets an error, the
//! panic is counted and logged, and the thread goes on with the next job (an Automerge
//! transaction left open by the panic rolls back when dropped).
//!
//! Group commit: the thread takes every job waiting (up to [`GROUP_MAX`]), runs them one after
//! the other with the store's syncs deferred, makes the whole batch durable with one fsync,
//! and only then answers. No caller hears "done" before its commit is durable, and no reader
//! is shown a commit that is not (a read that comes after an unsynced write in its batch waits
//! for the sync too). If the sync fails, every mutation of the batch is answered with the
//! error. Under load, N concurrent commits cost one fsync instead of N.
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
/// Most jobs run between two syncs.
pub const GROUP_MAX: usize = 256;

/// What a job answers once its batch is durable; `Err` carries why the sync failed.
type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;
type Job = Box<dyn FnOnce(&mut MetaStore, &mut Vec<Commit>) -> Reply + Send>;

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
                store.defer_sync(true);
                store.compact_in_background();
                let mut commits = Vec::new();
                let mut batch = Vec::with_capacity(GROUP_MAX);
                let mut waiting: Vec<Reply> = Vec::with_capacity(GROUP_MAX);
                let mut stop = false;
                while !stop {
                    let Some(first) = rx.blocking_recv() else {
                        break;
                    };
                    batch.push(first);
                    while batch.len() < GROUP_MAX {
                        match rx.try_recv() {
                            Ok(msg) => batch.push(msg),
                            Err(_) => break,
                        }
                    }
                    for msg in batch.drain(..) {
                        let job = match msg {
                            Msg::Job(job) => job,
                            // Jobs queued after the stop are dropped: their callers hear
                            // that the store stopped.
                            Msg::Stop => {
                                stop = true;
                                break;
                            }
                        };
                        let run = std::panic::AssertUnwindSafe(|| job(&mut store, &mut commits));
                        match std::panic::catch_unwind(run) {
                            // Nothing unsynced yet in this batch: nothing to wait for.
                            Ok(reply) if !store.unsynced() && waiting.is_empty() => reply(Ok(())),
                            Ok(reply) => waiting.push(reply),
                            Err(_) => {
                                panics_in_thread.fetch_add(1, Ordering::Relaxed);
                                tracing::error!("a metadata job panicked; its caller got an error");
                            }
                        }
                    }
                    let synced = store.sync().map_err(|e| e.to_string());
                    if let Err(e) = &synced {
                        tracing::error!(error = %e, "syncing a batch of commits failed; its callers get the error");
                    }
                    for reply in waiting.drain(..) {
                        reply(synced.as_ref().map(|_| ()).map_err(String::as_str));
                    }
                    for c in commits.drain(..) {
                        if out_tx.try_send(c).is_err() {
                            // Replication is behind or gone; the commit is durable locally
                            // and anti-entropy will carry it.
                            dropped_in_thread.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                store.defer_sync(false);
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
            let result = f(store);
            Box::new(move |_synced| {
                let _ = tx.send(result);
            })
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
            Box::new(move |synced: Result<(), &str>| {
                let answer = match (result, synced) {
                    (Ok(_), Err(why)) => Err(MetaError::Storage(crate::storage::StorageError(
                        format!("commit not made durable: {why}"),
                    ))),
                    (result, _) => result,
                };
                let _ = tx.send(answer);
            })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::storage::{DocStorage, MemStorage, StorageError, StoredDoc};
    use crate::store::Config;

    /// Memory storage that counts syncs and can be told to fail them.
    struct Counting {
        inner: MemStorage,
        deferred: bool,
        unsynced: bool,
        syncs: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
    }

    impl Counting {
        fn wrote(&mut self) {
            self.unsynced |= self.deferred;
        }
    }

    impl DocStorage for Counting {
        fn load(&mut self, doc: &str) -> Result<StoredDoc, StorageError> {
            self.inner.load(doc)
        }
        fn append(&mut self, d: &str, i: &[u8], m: &[(&str, &[u8])]) -> Result<(), StorageError> {
            self.wrote();
            self.inner.append(d, i, m)
        }
        fn increment_mark(&mut self, doc: &str) -> Result<u64, StorageError> {
            self.inner.increment_mark(doc)
        }
        fn compact_through(&mut self, d: &str, s: &[u8], mark: u64) -> Result<(), StorageError> {
            self.wrote();
            self.inner.compact_through(d, s, mark)
        }
        fn get_meta(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
            self.inner.get_meta(key)
        }
        fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
            self.wrote();
            self.inner.put_meta(key, value)
        }
        fn defer_sync(&mut self, deferred: bool) {
            self.deferred = deferred;
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StorageError("disk on fire".into()));
            }
            if self.unsynced {
                self.syncs.fetch_add(1, Ordering::SeqCst);
                self.unsynced = false;
            }
            Ok(())
        }
        fn unsynced(&self) -> bool {
            self.unsynced
        }
    }

    fn spawn() -> (MetaHandle, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let syncs = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let storage = Counting {
            inner: MemStorage::new(),
            deferred: false,
            unsynced: false,
            syncs: syncs.clone(),
            fail: fail.clone(),
        };
        let config = Config::new(crate::NodeId::new("node-h").unwrap());
        let store = MetaStore::open(Box::new(storage), config).unwrap();
        let (handle, _commits) = MetaHandle::spawn(store);
        (handle, syncs, fail)
    }

    /// One commit through the owner, as the API makes them.
    fn commit(handle: &MetaHandle, i: u64) -> tokio::task::JoinHandle<Result<(), MetaError>> {
        let h = handle.clone();
        tokio::spawn(async move {
            h.mutate(move |s| Ok(((), vec![s.set_trash_retention(1_000 + i, 10 + i)?])))
                .await
        })
    }

    /// Many commits queued while the owner is busy are made durable together, and each is
    /// acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_that_wait_together_share_one_sync() {
        let (handle, syncs, _) = spawn();
        // Hold the owner so the commits queue up behind it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let h = handle.clone();
        let busy = tokio::spawn(async move {
            h.call(move |_| held.recv_timeout(std::time::Duration::from_secs(10)))
                .await
        });
        let commits: Vec<_> = (0..64).map(|i| commit(&handle, i)).collect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = syncs.load(Ordering::SeqCst);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap().unwrap();
        for c in commits {
            c.await.unwrap().expect("acknowledged");
        }
        let used = syncs.load(Ordering::SeqCst) - before;
        assert!(
            (1..64).contains(&used),
            "64 queued commits took {used} syncs"
        );
        handle.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_every_commit_of_its_batch() {
        let (handle, _, fail) = spawn();
        fail.store(true, Ordering::SeqCst);
        let commits: Vec<_> = (0..8).map(|i| commit(&handle, i)).collect();
        for c in commits {
            let err = c
                .await
                .unwrap()
                .expect_err("no durable commit, no acknowledgement");
            assert!(err.to_string().contains("not made durable"), "{err}");
        }
        // Reads that saw nothing unsynced still answer.
        fail.store(false, Ordering::SeqCst);
        assert!(handle.call(|s| s.settings().is_ok()).await.unwrap());
        handle.shutdown().await;
    }
}
