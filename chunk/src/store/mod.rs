//! Where chunks live: the [`ChunkStore`] trait, its two implementations, and the
//! [`TrackedStore`] decorator that logs inventory changes for the heartbeat.
//!
//! Every implementation keeps the same promises, checked by one shared [`conformance`] suite:
//! bytes are verified against their id on the way in *and* on the way out, a corrupt copy is
//! dropped the moment it is noticed, writing an existing chunk is a no-op, and the inventory
//! digest (XOR of all ids) is always current.
//!
//! Methods are synchronous and may block on disk: async callers use `spawn_blocking`.

pub mod conformance;
mod disk;
mod memory;
mod record;
mod rocks;
mod stripes;
mod tracked;

use std::ops::Range;

use bytes::Bytes;

pub use self::memory::MemoryStore;
pub use self::rocks::{RocksOptions, RocksStore, WRITE_ONCE_MIN};
pub use self::tracked::{InventorySnapshot, TrackedStore};
use crate::id::ChunkId;

/// Largest chunk a store accepts, in bytes (the wire protocol's limit).
pub const MAX_CHUNK_SIZE: u64 = redcloud_proto::MAX_CHUNK_SIZE as u64;

/// What a successful [`ChunkStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The chunk was already stored; nothing was written.
    AlreadyPresent,
    /// The chunk is now durably stored.
    Stored,
}

/// What [`ChunkStore::delete_if_older`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The chunk was stored and is now deleted.
    Deleted,
    /// The chunk is stored but younger than the minimum age, so it was kept.
    KeptYoung,
    /// The chunk was not stored.
    Absent,
}

/// Totals over a whole store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of chunks stored.
    pub chunk_count: u64,
    /// Sum of the sizes of all stored chunks.
    pub used_bytes: u64,
    /// Most chunk bytes this store accepts.
    pub capacity_bytes: u64,
    /// XOR of every stored chunk id: equal inventories have equal digests.
    pub inventory_digest: [u8; 32],
}

/// What a store knows about one chunk besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, in milliseconds since the Unix epoch. Writing a stored chunk
    /// again refreshes it, so GC's minimum age (`delete_if_older`) protects re-uploads.
    pub stored_at_ms: u64,
    /// When its hash was last checked, in milliseconds since the Unix epoch.
    pub last_verified_ms: u64,
}

/// Why a store refused or failed an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The bytes offered for a chunk do not hash to its id.
    #[error("hash mismatch: bytes for chunk {expected} hash to {actual}")]
    HashMismatch {
        /// The id the caller claimed.
        expected: ChunkId,
        /// The hash of the bytes actually sent.
        actual: ChunkId,
    },
    /// The chunk is larger than [`MAX_CHUNK_SIZE`].
    #[error("chunk of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Offered size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The store does not hold the chunk.
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    /// The stored copy failed its hash check; it has been deleted.
    #[error("chunk {0} failed its hash check; the corrupt copy was dropped")]
    Corrupt(ChunkId),
    /// A byte range lies outside the chunk.
    #[error("range {start}..{end} is outside the chunk of {size} bytes")]
    OutOfRange {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// Size of the chunk.
        size: u64,
    },
    /// Storing the chunk would exceed the capacity, or the disk is full.
    #[error("disk full: {needed} bytes needed, {available} available")]
    DiskFull {
        /// Bytes the write needed.
        needed: u64,
        /// Bytes left under the capacity (0 when the filesystem itself is full).
        available: u64,
    },
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Io(String),
}

/// A content-addressed store of immutable chunks.
///
/// Laws every implementation keeps (see [`conformance`]):
/// - `put` stores only bytes whose BLAKE3 hash is the id; on any error nothing is stored.
///   `put_many` stores nothing when any of its chunks fails that check.
/// - `get` returns only bytes that hash to the id; a stored copy that does not is deleted and
///   `Corrupt` returned.
/// - `put` of a stored chunk leaves its bytes alone, refreshes its `stored_at_ms` and answers
///   `AlreadyPresent`; `touch_many` refreshes it too, and writes nothing for absent chunks.
/// - `stats().inventory_digest` is the XOR of the ids listed by `list`.
pub trait ChunkStore: Send + Sync + 'static {
    /// Verifies `bytes` against `id` and stores them durably.
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<PutOutcome, StoreError>;

    /// `put` for many chunks at once: `result[i]` answers `chunks[i]`. Every chunk is verified
    /// before anything is written, so one bad chunk stores none; implementations make the whole
    /// call durable with as few syncs as they can.
    fn put_many(&self, chunks: &[(ChunkId, Bytes)]) -> Result<Vec<PutOutcome>, StoreError> {
        for (id, bytes) in chunks {
            verify(id, bytes)?;
        }
        chunks
            .iter()
            .map(|(id, bytes)| self.put(id, bytes))
            .collect()
    }

    /// The chunk's bytes, verified against its id.
    fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError>;

    /// Bytes `range` of the chunk. The whole chunk is verified first, so a range is never
    /// served from a corrupt copy.
    fn get_range(&self, id: &ChunkId, range: Range<u64>) -> Result<Bytes, StoreError> {
        slice_range(&self.get(id)?, range)
    }

    /// Whether the chunk is stored (its bytes are not checked).
    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError>;

    /// `contains` for many ids at once: `result[i]` answers `ids[i]`.
    fn contains_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        ids.iter().map(|id| self.contains(id)).collect()
    }

    /// Refreshes the stored-at time of every present chunk among `ids` to `now_ms` (never
    /// back), durably, so GC's minimum age keeps it: answers presence like `contains_many`.
    /// Controllers touch the chunks a commit is about to reference, and those a long upload
    /// holds.
    fn touch_many(&self, ids: &[ChunkId], now_ms: u64) -> Result<Vec<bool>, StoreError>;

    /// Removes the chunk; answers whether it was stored.
    fn delete(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.delete_if_older(id, 0, 0)? == Deletion::Deleted)
    }

    /// Removes the chunk unless it was written less than `min_age_ms` before `now_ms`
    /// (`min_age_ms == 0`: unconditionally). The age check and the delete are atomic with
    /// respect to puts of the same chunk.
    fn delete_if_older(
        &self,
        id: &ChunkId,
        min_age_ms: u64,
        now_ms: u64,
    ) -> Result<Deletion, StoreError>;

    /// Up to `limit` chunks with ids greater than `after`, in id order, with their sizes.
    fn list(&self, after: Option<ChunkId>, limit: usize)
    -> Result<Vec<(ChunkId, u64)>, StoreError>;

    /// Totals, kept incrementally (no scan).
    fn stats(&self) -> StoreStats;

    /// What the store knows about the chunk, if it holds it.
    fn info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>, StoreError>;

    /// Records that the chunk's hash was checked at `now_ms`. Absent chunks are ignored.
    fn mark_verified(&self, id: &ChunkId, now_ms: u64) -> Result<(), StoreError>;

    /// Gives back the disk space of deleted chunks when enough has piled up to be worth
    /// rewriting what is live; answers the bytes given back. Slow (it may rewrite the whole
    /// store), so it runs on a background worker. No default: a wrapper that forgot to pass
    /// it on would silently stop the space from ever coming back.
    fn reclaim_space(&self) -> Result<u64, StoreError>;

    /// Test hook simulating bit rot: flips one byte of the stored copy. Answers whether the
    /// chunk was there to corrupt.
    #[doc(hidden)]
    fn corrupt_for_test(&self, id: &ChunkId) -> Result<bool, StoreError>;
}

/// Whether a chunk written at `stored_at_ms` is too young to delete at `now_ms`.
pub fn is_young(stored_at_ms: u64, min_age_ms: u64, now_ms: u64) -> bool {
    min_age_ms > 0 && now_ms.saturating_sub(stored_at_ms) < min_age_ms
}

/// Checks size and hash of bytes offered for `id`: the first step of every `put`.
pub fn verify(id: &ChunkId, bytes: &[u8]) -> Result<(), StoreError> {
    let size = bytes.len() as u64;
    if size > MAX_CHUNK_SIZE {
        return Err(StoreError::TooLarge {
            size,
            max: MAX_CHUNK_SIZE,
        });
    }
    let actual = ChunkId::of(bytes);
    if actual != *id {
        return Err(StoreError::HashMismatch {
            expected: *id,
            actual,
        });
    }
    Ok(())
}

/// Bytes `range` of `bytes`, or `OutOfRange` when the range does not lie inside them.
pub fn slice_range(bytes: &Bytes, range: Range<u64>) -> Result<Bytes, StoreError> {
    let size = bytes.len() as u64;
    if range.start > range.end || range.end > size {
        return Err(StoreError::OutOfRange {
            start: range.start,
            end: range.end,
            size,
        });
    }
    // Both bounds are <= size, which came from a usize.
    Ok(bytes.slice(range.start as usize..range.end as usize))
}

/// XORs `id` into `digest`: adding and removing an id are the same operation.
pub fn toggle_digest(digest: &mut [u8; 32], id: &ChunkId) {
    for (d, b) in digest.iter_mut().zip(id.0) {
        *d ^= b;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_passes_the_conformance_suite() {
        conformance::run_all(&mut |capacity| Box::new(MemoryStore::new(capacity)));
    }

    #[test]
    fn rocks_store_passes_the_conformance_suite() {
        let mut dirs = Vec::new();
        conformance::run_all(&mut |capacity| {
            let dir = tempfile::tempdir().unwrap();
            let store = RocksStore::open(dir.path(), RocksOptions { capacity }).unwrap();
            dirs.push(dir);
            Box::new(store)
        });
    }
}
