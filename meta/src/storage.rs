//! Durable storage of documents: a snapshot plus incremental change blobs per document, and a
//! few metadata values (node id, shard count, HLC high-water mark).
//!
//! Every commit appends one increment with a synced write, together with the metadata that
//! must move with it (the HLC high-water mark), so an acknowledged write survives a crash.
//! The metadata owner groups commits instead ([`DocStorage::defer_sync`]): writes go to the
//! write-ahead log unsynced, and one [`DocStorage::sync`] makes a whole batch durable before
//! any of it is acknowledged.
//! Compaction replaces the snapshot and drops the increments in one atomic batch. Two
//! implementations pass the same `conformance` suite: RocksDB for controllers and an
//! in-memory store for tests.

use std::collections::BTreeMap;
use std::path::Path;

/// What a document's storage holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredDoc {
    /// Output of `Automerge::save`, if the document was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Change blobs appended since the snapshot, oldest first.
    pub increments: Vec<Vec<u8>>,
}

impl StoredDoc {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.increments.is_empty()
    }
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StorageError(pub String);

/// Where documents live. Writes are durable when they return.
pub trait DocStorage: Send {
    /// The stored state of `doc` (empty if never written).
    fn load(&mut self, doc: &str) -> Result<StoredDoc, StorageError>;
    /// Append one increment to `doc` and set `meta` entries, atomically and durably.
    fn append(
        &mut self,
        doc: &str,
        increment: &[u8],
        meta: &[(&str, &[u8])],
    ) -> Result<(), StorageError>;
    /// The number the next increment of `doc` gets. Numbers only grow while the storage is
    /// open, compactions included (a reopened storage may start again from its last increment).
    fn increment_mark(&mut self, doc: &str) -> Result<u64, StorageError>;
    /// Replace `doc`'s snapshot and delete its increments numbered below `mark` (those the
    /// snapshot covers), atomically and durably. Later increments stay.
    fn compact_through(
        &mut self,
        doc: &str,
        snapshot: &[u8],
        mark: u64,
    ) -> Result<(), StorageError>;
    /// Replace `doc`'s snapshot and delete all its increments, atomically and durably.
    fn compact(&mut self, doc: &str, snapshot: &[u8]) -> Result<(), StorageError> {
        let mark = self.increment_mark(doc)?;
        self.compact_through(doc, snapshot, mark)
    }
    fn get_meta(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// With `true`, writes are durable only after the next [`DocStorage::sync`] (group
    /// commit); with `false` (the default), each write is durable when it returns.
    fn defer_sync(&mut self, _deferred: bool) {}
    /// Makes every write so far durable.
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Whether some write is not durable yet (only ever, with deferred syncs).
    fn unsynced(&self) -> bool {
        false
    }
}

/// In-memory storage for tests: "durable" for as long as the value lives, so a test can
/// reopen a store from it (`MetaStore::into_storage`).
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    docs: BTreeMap<String, StoredDoc>,
    /// The number of each document's first stored increment.
    first_seq: BTreeMap<String, u64>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

impl DocStorage for MemStorage {
    fn load(&mut self, doc: &str) -> Result<StoredDoc, StorageError> {
        Ok(self.docs.get(doc).cloned().unwrap_or_default())
    }

    fn append(
        &mut self,
        doc: &str,
        increment: &[u8],
        meta: &[(&str, &[u8])],
    ) -> Result<(), StorageError> {
        let entry = self.docs.entry(doc.to_owned()).or_default();
        entry.increments.push(increment.to_vec());
        for (k, v) in meta {
            self.meta.insert((*k).to_owned(), v.to_vec());
        }
        Ok(())
    }

    fn increment_mark(&mut self, doc: &str) -> Result<u64, StorageError> {
        let first = self.first_seq.get(doc).copied().unwrap_or(0);
        let stored = self.docs.get(doc).map_or(0, |d| d.increments.len());
        Ok(first + stored as u64)
    }

    fn compact_through(
        &mut self,
        doc: &str,
        snapshot: &[u8],
        mark: u64,
    ) -> Result<(), StorageError> {
        let first = self.first_seq.get(doc).copied().unwrap_or(0);
        let entry = self.docs.entry(doc.to_owned()).or_default();
        let covered = usize::try_from(mark.saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(entry.increments.len());
        entry.increments.drain(..covered);
        entry.snapshot = Some(snapshot.to_vec());
        self.first_seq
            .insert(doc.to_owned(), first + covered as u64);
        Ok(())
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.get(key).cloned())
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.meta.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
}

/// RocksDB storage. Keys: `s\0<doc>` snapshot, `i\0<doc>\0<seq u64 BE>` increments,
/// `m\0<key>` metadata. Every write is a synced `WriteBatch`.
pub struct RocksStorage {
    db: rocksdb::DB,
    /// Next increment sequence number per document, learned on first use.
    next_seq: BTreeMap<String, u64>,
    /// Writes wait for [`DocStorage::sync`] (group commit).
    deferred: bool,
    /// A write since the last sync is not durable yet.
    unsynced: bool,
}

impl std::fmt::Debug for RocksStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStorage")
            .field("path", &self.db.path())
            .finish()
    }
}

type KeyValue = (Vec<u8>, Vec<u8>);

fn rocks(e: rocksdb::Error) -> StorageError {
    StorageError(e.to_string())
}

fn snapshot_key(doc: &str) -> Vec<u8> {
    [b"s\0", doc.as_bytes()].concat()
}

fn increment_prefix(doc: &str) -> Vec<u8> {
    [b"i\0", doc.as_bytes(), b"\0"].concat()
}

fn meta_key(key: &str) -> Vec<u8> {
    [b"m\0", key.as_bytes()].concat()
}

impl RocksStorage {
    /// Open (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        // Created private and durably: RocksDB syncs its own directory, not its parent.
        redcloud_proto::local::create_private_dir_all(path.as_ref())
            .map_err(|e| StorageError(format!("creating {}: {e}", path.as_ref().display())))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, path).map_err(rocks)?;
        Ok(RocksStorage {
            db,
            next_seq: BTreeMap::new(),
            deferred: false,
            unsynced: false,
        })
    }

    fn write(&mut self, batch: rocksdb::WriteBatch) -> Result<(), StorageError> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(!self.deferred);
        self.db.write_opt(batch, &wo).map_err(rocks)?;
        self.unsynced |= self.deferred;
        Ok(())
    }

    /// Keys and values of the increments of `doc`, in order.
    fn increments(&self, doc: &str) -> Result<Vec<KeyValue>, StorageError> {
        let prefix = increment_prefix(doc);
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator(mode) {
            let (k, v) = item.map_err(rocks)?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn next_seq(&mut self, doc: &str) -> Result<u64, StorageError> {
        if let Some(&n) = self.next_seq.get(doc) {
            return Ok(n);
        }
        let prefix_len = increment_prefix(doc).len();
        let next = match self.increments(doc)?.last() {
            Some((k, _)) => {
                let seq: [u8; 8] = k[prefix_len..]
                    .try_into()
                    .map_err(|_| StorageError(format!("bad increment key in {doc}")))?;
                u64::from_be_bytes(seq) + 1
            }
            None => 0,
        };
        self.next_seq.insert(doc.to_owned(), next);
        Ok(next)
    }
}

impl DocStorage for RocksStorage {
    fn load(&mut self, doc: &str) -> Result<StoredDoc, StorageError> {
        let snapshot = self.db.get(snapshot_key(doc)).map_err(rocks)?;
        let increments = self.increments(doc)?.into_iter().map(|(_, v)| v).collect();
        Ok(StoredDoc {
            snapshot,
            increments,
        })
    }

    fn append(
        &mut self,
        doc: &str,
        increment: &[u8],
        meta: &[(&str, &[u8])],
    ) -> Result<(), StorageError> {
        let seq = self.next_seq(doc)?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(
            [increment_prefix(doc), seq.to_be_bytes().to_vec()].concat(),
            increment,
        );
        for (k, v) in meta {
            batch.put(meta_key(k), v);
        }
        self.write(batch)?;
        self.next_seq.insert(doc.to_owned(), seq + 1);
        Ok(())
    }

    fn increment_mark(&mut self, doc: &str) -> Result<u64, StorageError> {
        self.next_seq(doc)
    }

    fn compact_through(
        &mut self,
        doc: &str,
        snapshot: &[u8],
        mark: u64,
    ) -> Result<(), StorageError> {
        let prefix = increment_prefix(doc);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(snapshot_key(doc), snapshot);
        // Keys end in the big-endian number, so the covered ones come first.
        let end = [prefix.as_slice(), &mark.to_be_bytes()].concat();
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (k, _) = item.map_err(rocks)?;
            if !k.starts_with(&prefix) || *k >= *end {
                break;
            }
            batch.delete(k);
        }
        self.write(batch)
        // `next_seq` keeps counting up: sequence numbers are never reused.
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get(meta_key(key)).map_err(rocks)
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(meta_key(key), value);
        self.write(batch)
    }

    fn defer_sync(&mut self, deferred: bool) {
        self.deferred = deferred;
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            // One fsync of the write-ahead log covers every write of the batch.
            self.db.flush_wal(true).map_err(rocks)?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn unsynced(&self) -> bool {
        self.unsynced
    }
}

/// The behaviour every [`DocStorage`] must show. `reopen` drops the given storage and returns
/// one opened on the same durable state.
#[cfg(test)]
pub(crate) fn conformance(
    mut s: Box<dyn DocStorage>,
    reopen: impl Fn(Box<dyn DocStorage>) -> Box<dyn DocStorage>,
) {
    assert!(s.load("files/0").unwrap().is_empty());
    s.append("files/0", b"one", &[("hlc", b"1")]).unwrap();
    s.append("files/0", b"two", &[("hlc", b"2")]).unwrap();
    s.append("files/1", b"other", &[]).unwrap();
    // A document whose name is a prefix of another's must not see its increments.
    s.append("files/10", b"ten", &[]).unwrap();
    s.put_meta("node", b"n1").unwrap();
    let mut s = reopen(s);
    let d = s.load("files/0").unwrap();
    assert_eq!(d.snapshot, None);
    assert_eq!(d.increments, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(
        s.load("files/1").unwrap().increments,
        vec![b"other".to_vec()]
    );
    assert_eq!(s.get_meta("hlc").unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.get_meta("node").unwrap(), Some(b"n1".to_vec()));
    assert_eq!(s.get_meta("missing").unwrap(), None);

    s.compact("files/0", b"snap").unwrap();
    s.append("files/0", b"three", &[]).unwrap();
    let mut s = reopen(s);
    let d = s.load("files/0").unwrap();
    assert_eq!(d.snapshot, Some(b"snap".to_vec()));
    assert_eq!(d.increments, vec![b"three".to_vec()]);
    assert_eq!(
        s.load("files/10").unwrap().increments,
        vec![b"ten".to_vec()]
    );
    // Appending after a reopen continues after the existing increments.
    s.append("files/0", b"four", &[]).unwrap();
    let mut s = reopen(s);
    assert_eq!(
        s.load("files/0").unwrap().increments,
        vec![b"three".to_vec(), b"four".to_vec()]
    );

    // A snapshot taken at a mark covers the increments before it, not those after.
    let mark = s.increment_mark("files/0").unwrap();
    s.append("files/0", b"five", &[]).unwrap();
    assert_eq!(s.increment_mark("files/0").unwrap(), mark + 1);
    s.compact_through("files/0", b"snap at four", mark).unwrap();
    let mut s = reopen(s);
    let d = s.load("files/0").unwrap();
    assert_eq!(d.snapshot, Some(b"snap at four".to_vec()));
    assert_eq!(d.increments, vec![b"five".to_vec()]);
    // A mark taken before a full compaction covers nothing new after it.
    let before = s.increment_mark("files/0").unwrap();
    s.compact("files/0", b"snap at five").unwrap();
    s.append("files/0", b"six", &[]).unwrap();
    assert!(s.increment_mark("files/0").unwrap() > before);
    s.compact_through("files/0", b"snap at five again", before)
        .unwrap();
    let mut s = reopen(s);
    assert_eq!(s.load("files/0").unwrap().increments, vec![b"six".to_vec()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_conforms() {
        conformance(Box::new(MemStorage::new()), |s| s);
    }

    #[test]
    fn rocks_storage_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        conformance(Box::new(RocksStorage::open(&path).unwrap()), move |s| {
            drop(s);
            Box::new(RocksStorage::open(&path).unwrap())
        });
    }
}
