//! Compaction off the metadata thread.
//!
//! Compacting a document is `Automerge::save` of all of it: at a million files, a third of a
//! second per document, and on the metadata thread every call queued behind it (a `list`, a
//! `status`, a commit) would wait that long, every few thousand commits. Instead the owner
//! thread hands this worker a clone of the document, a copy of its columns that costs about a
//! tenth of a save, together with the storage's increment mark at that moment. The worker
//! saves the clone; the owner thread installs the snapshot the next time it persists
//! ([`crate::store::MetaStore`]), dropping only the increments written before the mark, which
//! the snapshot covers. Increments written while the worker ran stay.
//!
//! Bounded: one document at a time is out (one clone's memory), and the channels hold one
//! request and one result. A document whose increments grow past a hard limit while the
//! worker is busy is compacted inline, as before; so is every document at shutdown.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;

use automerge::Automerge;

use crate::document::DocId;

/// A document to save.
pub(crate) struct Request {
    pub id: DocId,
    pub doc: Automerge,
    /// What the snapshot covers: the stored increments before this mark, and the in-memory
    /// counts of them when the clone was taken.
    pub cover: Cover,
}

/// What an installed snapshot lets the store drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cover {
    /// The storage's increment mark when the clone was taken.
    pub mark: u64,
    pub increments: usize,
    pub increment_bytes: usize,
    /// The document's compaction count then; a snapshot older than an inline compaction
    /// made since is dropped, not installed.
    pub generation: u64,
}

/// A saved document.
pub(crate) struct Saved {
    pub id: DocId,
    pub snapshot: Vec<u8>,
    pub cover: Cover,
}

/// Handle to the worker thread. Dropping it ends the thread (after the save in progress).
pub(crate) struct Compactor {
    requests: Option<SyncSender<Request>>,
    results: Receiver<Saved>,
    /// The document out, if any.
    busy: Option<DocId>,
    thread: Option<JoinHandle<()>>,
}

/// The worker is gone (it could not start, or it panicked).
#[derive(Debug)]
pub(crate) struct Gone;

impl Compactor {
    pub fn spawn() -> std::io::Result<Compactor> {
        let (requests, jobs) = sync_channel::<Request>(1);
        let (done, results) = sync_channel::<Saved>(1);
        let thread = std::thread::Builder::new()
            .name("meta-compactor".into())
            .spawn(move || {
                while let Ok(Request { id, doc, cover }) = jobs.recv() {
                    let snapshot = doc.save();
                    drop(doc);
                    if done
                        .send(Saved {
                            id,
                            snapshot,
                            cover,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(Compactor {
            requests: Some(requests),
            results,
            busy: None,
            thread: Some(thread),
        })
    }

    /// The document being saved, if any.
    pub fn busy(&self) -> Option<DocId> {
        self.busy
    }

    /// Hands `request` to the worker. `Ok(false)`: the worker is busy; try again later.
    pub fn submit(&mut self, request: Request) -> Result<bool, Gone> {
        if self.busy.is_some() {
            return Ok(false);
        }
        let id = request.id;
        match self.requests.as_ref().ok_or(Gone)?.try_send(request) {
            Ok(()) => {
                self.busy = Some(id);
                Ok(true)
            }
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Disconnected(_)) => Err(Gone),
        }
    }

    /// The finished snapshot, if there is one.
    pub fn poll(&mut self) -> Result<Option<Saved>, Gone> {
        match self.results.try_recv() {
            Ok(saved) => {
                self.busy = None;
                Ok(Some(saved))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Gone),
        }
    }

    /// Waits up to `limit` for the snapshot in progress.
    #[cfg(test)]
    pub fn wait(&mut self, limit: std::time::Duration) -> Result<Option<Saved>, Gone> {
        if self.busy.is_none() {
            return self.poll();
        }
        match self.results.recv_timeout(limit) {
            Ok(saved) => {
                self.busy = None;
                Ok(Some(saved))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Gone),
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        // Closing the request channel ends the worker's loop.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
