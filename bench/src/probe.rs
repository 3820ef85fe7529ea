//! A [`DocStorage`] wrapper that timestamps every increment a node persists. The metadata
//! store persists exactly once per applied batch of changes (its own commits, gossip and sync),
//! so the probe tells, without polling and without perturbing the node, when each change was
//! applied in memory (the call starts) and when it was durable (the call returns).

use std::time::Instant;

use automerge::ChangeHash;
use redcloud_meta::storage::{DocStorage, StorageError, StoredDoc};
use tokio::sync::mpsc;

/// One persisted increment.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Index of the node in its cluster.
    pub node: usize,
    pub doc: String,
    /// The changes were in the in-memory document (the persist started).
    pub applied: Instant,
    /// The changes were durable (the synced write returned).
    pub durable: Instant,
    /// The raw changes written (concatenated Automerge change chunks).
    pub bytes: Vec<u8>,
}

impl Applied {
    /// Hashes of the changes in this increment.
    pub fn hashes(&self) -> Vec<ChangeHash> {
        change_hashes(&self.bytes)
    }
}

/// Wraps a node's storage and reports each `append` on `events`, once it is durable: at once
/// for a synced write, at the next `sync` when the owner groups commits.
pub struct ProbeStorage<S> {
    pub inner: S,
    pub node: usize,
    pub events: mpsc::UnboundedSender<Applied>,
    /// Appends waiting for the group's sync.
    pub pending: Vec<Applied>,
}

impl<S: DocStorage> DocStorage for ProbeStorage<S> {
    fn load(&mut self, doc: &str) -> Result<StoredDoc, StorageError> {
        self.inner.load(doc)
    }

    fn append(
        &mut self,
        doc: &str,
        increment: &[u8],
        meta: &[(&str, &[u8])],
    ) -> Result<(), StorageError> {
        let applied = Instant::now();
        self.inner.append(doc, increment, meta)?;
        let event = Applied {
            node: self.node,
            doc: doc.to_owned(),
            applied,
            durable: Instant::now(),
            bytes: increment.to_vec(),
        };
        if self.inner.unsynced() {
            self.pending.push(event);
        } else {
            let _ = self.events.send(event);
        }
        Ok(())
    }

    fn defer_sync(&mut self, deferred: bool) {
        self.inner.defer_sync(deferred);
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.inner.sync()?;
        let durable = Instant::now();
        for mut event in self.pending.drain(..) {
            event.durable = durable;
            let _ = self.events.send(event);
        }
        Ok(())
    }

    fn unsynced(&self) -> bool {
        self.inner.unsynced()
    }

    fn increment_mark(&mut self, doc: &str) -> Result<u64, StorageError> {
        self.inner.increment_mark(doc)
    }

    fn compact_through(
        &mut self,
        doc: &str,
        snapshot: &[u8],
        mark: u64,
    ) -> Result<(), StorageError> {
        self.inner.compact_through(doc, snapshot, mark)
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get_meta(key)
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.inner.put_meta(key, value)
    }
}

/// Hashes of the change chunks concatenated in `bytes` (the output of `save_after`); stops at
/// the first chunk that does not parse.
pub fn change_hashes(mut bytes: &[u8]) -> Vec<ChangeHash> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut out = Vec::new();
    while bytes.len() >= 9 && bytes[..4] == MAGIC {
        // magic (4), checksum (4), chunk type (1), LEB128 length, body.
        let (mut len, mut shift, mut i) = (0usize, 0u32, 9usize);
        while i < bytes.len() && shift < 64 {
            let b = bytes[i];
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let Some(total) = i.checked_add(len).filter(|&t| t <= bytes.len()) else {
            break;
        };
        match automerge::Change::try_from(&bytes[..total]) {
            Ok(c) => out.push(c.hash()),
            Err(_) => break,
        }
        bytes = &bytes[total..];
    }
    out
}
