//! An in-memory chunk store: same laws as the RocksDB store, nothing survives a restart.
//! Used by tests and by anything that wants a chunkserver without a disk.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::RwLock;

use super::{
    ChunkInfo, ChunkStore, Deletion, PutOutcome, StoreError, StoreStats, is_young, now_ms,
    toggle_digest, verify,
};
use crate::id::ChunkId;

/// Chunks in a `BTreeMap`, so listing in id order is a range scan.
pub struct MemoryStore {
    capacity: u64,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    chunks: BTreeMap<ChunkId, Stored>,
    used_bytes: u64,
    digest: [u8; 32],
}

struct Stored {
    bytes: Bytes,
    info: ChunkInfo,
}

impl MemoryStore {
    /// An empty store accepting up to `capacity` bytes (`None`: unlimited).
    pub fn new(capacity: Option<u64>) -> Self {
        Self {
            capacity: capacity.unwrap_or(u64::MAX),
            state: RwLock::new(State::default()),
        }
    }

    fn remove(state: &mut State, id: &ChunkId) -> bool {
        match state.chunks.remove(id) {
            Some(stored) => {
                state.used_bytes -= stored.info.size;
                toggle_digest(&mut state.digest, id);
                true
            }
            None => false,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ChunkStore for MemoryStore {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        verify(id, bytes)?;
        let mut state = self.state.write();
        if let Some(stored) = state.chunks.get_mut(id) {
            stored.info.stored_at_ms = now_ms();
            return Ok(PutOutcome::AlreadyPresent);
        }
        let size = bytes.len() as u64;
        let available = self.capacity.saturating_sub(state.used_bytes);
        if size > available {
            return Err(StoreError::DiskFull {
                needed: size,
                available,
            });
        }
        let now = now_ms();
        let info = ChunkInfo {
            size,
            stored_at_ms: now,
            last_verified_ms: now,
        };
        let bytes = Bytes::copy_from_slice(bytes);
        state.chunks.insert(*id, Stored { bytes, info });
        state.used_bytes += size;
        toggle_digest(&mut state.digest, id);
        Ok(PutOutcome::Stored)
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let bytes = match self.state.read().chunks.get(id) {
            Some(stored) => stored.bytes.clone(),
            None => return Err(StoreError::NotFound(*id)),
        };
        if ChunkId::of(&bytes) == *id {
            return Ok(bytes);
        }
        let mut state = self.state.write();
        // Re-check under the write lock: a good copy may have replaced the bad one meanwhile.
        if state
            .chunks
            .get(id)
            .is_some_and(|s| ChunkId::of(&s.bytes) != *id)
        {
            tracing::warn!(chunk = %id, "dropping corrupt chunk from memory");
            Self::remove(&mut state, id);
        }
        Err(StoreError::Corrupt(*id))
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.state.read().chunks.contains_key(id))
    }

    fn delete_if_older(
        &self,
        id: &ChunkId,
        min_age_ms: u64,
        now_ms: u64,
    ) -> Result<Deletion, StoreError> {
        let mut state = self.state.write();
        let Some(stored) = state.chunks.get(id) else {
            return Ok(Deletion::Absent);
        };
        if is_young(stored.info.stored_at_ms, min_age_ms, now_ms) {
            return Ok(Deletion::KeptYoung);
        }
        Self::remove(&mut state, id);
        Ok(Deletion::Deleted)
    }

    fn touch_many(&self, ids: &[ChunkId], now_ms: u64) -> Result<Vec<bool>, StoreError> {
        let mut state = self.state.write();
        Ok(ids
            .iter()
            .map(|id| match state.chunks.get_mut(id) {
                Some(stored) => {
                    stored.info.stored_at_ms = stored.info.stored_at_ms.max(now_ms);
                    true
                }
                None => false,
            })
            .collect())
    }

    fn list(
        &self,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, u64)>, StoreError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.state.read();
        Ok(state
            .chunks
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(id, stored)| (*id, stored.info.size))
            .collect())
    }

    fn stats(&self) -> StoreStats {
        let state = self.state.read();
        StoreStats {
            chunk_count: state.chunks.len() as u64,
            used_bytes: state.used_bytes,
            capacity_bytes: self.capacity,
            inventory_digest: state.digest,
        }
    }

    fn info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>, StoreError> {
        Ok(self.state.read().chunks.get(id).map(|s| s.info))
    }

    fn mark_verified(&self, id: &ChunkId, now_ms: u64) -> Result<(), StoreError> {
        if let Some(stored) = self.state.write().chunks.get_mut(id) {
            stored.info.last_verified_ms = now_ms;
        }
        Ok(())
    }

    fn reclaim_space(&self) -> Result<u64, StoreError> {
        // A delete frees its memory at once: nothing is left to give back.
        Ok(0)
    }

    fn corrupt_for_test(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let mut state = self.state.write();
        let Some(stored) = state.chunks.get_mut(id) else {
            return Ok(false);
        };
        let mut rotten = stored.bytes.to_vec();
        match rotten.get_mut(stored.bytes.len() / 2) {
            Some(byte) => *byte ^= 0x01,
            None => rotten.push(0),
        }
        stored.bytes = Bytes::from(rotten);
        Ok(true)
    }
}
