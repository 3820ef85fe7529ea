//! [`TrackedStore`]: any [`ChunkStore`] plus the inventory change feed the heartbeat reports.
//!
//! Every call goes to the inner store; the decorator records what changed the inventory
//! (a put that stored, a delete that deleted, a corrupt copy that a read dropped) in an
//! [`InventoryLog`]. The service and the scrub worker both use the decorated store, so no
//! change escapes it.
//!
//! Two locks make the feed exact without serialising the data path:
//! - a striped lock per id around each change and its record, so the log orders the changes
//!   of one chunk as the store applied them;
//! - a gate that changes hold shared and [`TrackedStore::snapshot`] holds exclusively, so a
//!   snapshot's digest is exactly the inventory after its `head` entries.
//!
//! Reads do not take either lock. A read that finds a corrupt copy drops it inside the inner
//! store first and records the removal just after; a snapshot in between reports a digest one
//! id off, which costs the controllers one inventory pull, never a wrong view.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard, RwLock};

use super::stripes::Stripes;
use super::{ChunkInfo, ChunkStore, Deletion, PutOutcome, StoreError, StoreStats};
use crate::id::ChunkId;
use crate::inventory_log::{Change, Delta, InventoryLog};

/// A consistent reading of the store's totals and the log position they correspond to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventorySnapshot {
    /// The store's totals, including the digest after exactly `head` logged changes.
    pub stats: StoreStats,
    /// Number of the newest logged change.
    pub head: u64,
}

/// A [`ChunkStore`] that logs every inventory change of the store it wraps.
pub struct TrackedStore {
    inner: Arc<dyn ChunkStore>,
    log: Mutex<InventoryLog>,
    stripes: Stripes,
    gate: RwLock<()>,
}

impl TrackedStore {
    /// Wraps `inner`, remembering at most `log_capacity` changes.
    pub fn new(inner: Arc<dyn ChunkStore>, log_capacity: usize) -> Self {
        let started_empty = inner.stats().chunk_count == 0;
        Self {
            inner,
            log: Mutex::new(InventoryLog::new(log_capacity, started_empty)),
            stripes: Stripes::default(),
            gate: RwLock::new(()),
        }
    }

    /// The store's totals together with the log position they match. Waits for changes in
    /// progress to finish (one synced write at most): call it on the blocking pool.
    pub fn snapshot(&self) -> InventorySnapshot {
        let _exclusive = self.gate.write();
        InventorySnapshot {
            stats: self.inner.stats(),
            head: self.log.lock().head(),
        }
    }

    /// The changes after `acked` up to `snapshot`, at most `max_changes` log entries of them
    /// (see [`InventoryLog::delta`]).
    pub fn delta(
        &self,
        acked: Option<u64>,
        snapshot: &InventorySnapshot,
        max_changes: usize,
    ) -> Delta {
        self.log.lock().delta(
            acked,
            snapshot.head,
            snapshot.stats.inventory_digest,
            max_changes,
        )
    }

    /// Lowest and highest change numbers the log holds (`oldest > head` when empty).
    pub fn log_bounds(&self) -> (u64, u64) {
        let log = self.log.lock();
        (log.oldest(), log.head())
    }

    /// Runs a change of `id` under its stripe lock and the shared gate, logging what it did.
    fn change<T>(
        &self,
        id: &ChunkId,
        apply: impl FnOnce(&dyn ChunkStore) -> Result<T, StoreError>,
        changed: impl FnOnce(&T) -> Option<Change>,
    ) -> Result<T, StoreError> {
        let _stripe = self.stripe(id);
        let _shared = self.gate.read();
        let outcome = apply(&*self.inner)?;
        if let Some(change) = changed(&outcome) {
            self.log.lock().record(*id, change);
        }
        Ok(outcome)
    }

    fn stripe(&self, id: &ChunkId) -> MutexGuard<'_, ()> {
        self.stripes.lock(id)
    }

    /// After a read answered `Corrupt`, logs the drop, once. Concurrent readers of the same
    /// bad copy all see `Corrupt` but only one drop happened; a good copy may even have been
    /// stored again since, so the store itself, not the error, says what to record.
    fn note_read<T>(&self, id: &ChunkId, read: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(read, Err(StoreError::Corrupt(_))) {
            let _stripe = self.stripe(id);
            let _shared = self.gate.read();
            if !self.inner.contains(id)? {
                let mut log = self.log.lock();
                if log.newest_change(id) != Some(Change::Removed) {
                    log.record(*id, Change::Removed);
                }
            }
        }
        read
    }
}

impl ChunkStore for TrackedStore {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        self.change(
            id,
            |store| store.put(id, bytes),
            |outcome| (*outcome == PutOutcome::Stored).then_some(Change::Added),
        )
    }

    fn put_many(&self, chunks: &[(ChunkId, Bytes)]) -> Result<Vec<PutOutcome>, StoreError> {
        // Every id's stripe, as `change` holds one.
        let _stripes = self.stripes.lock_all(chunks.iter().map(|(id, _)| id));
        let _shared = self.gate.read();
        let outcomes = self.inner.put_many(chunks)?;
        let mut log = self.log.lock();
        for ((id, _), outcome) in chunks.iter().zip(&outcomes) {
            if *outcome == PutOutcome::Stored {
                log.record(*id, Change::Added);
            }
        }
        Ok(outcomes)
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        self.note_read(id, self.inner.get(id))
    }

    fn get_range(&self, id: &ChunkId, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.note_read(id, self.inner.get_range(id, range))
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.inner.contains(id)
    }

    fn contains_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.inner.contains_many(ids)
    }

    fn delete(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.change(
            id,
            |store| store.delete(id),
            |&deleted| deleted.then_some(Change::Removed),
        )
    }

    fn delete_if_older(
        &self,
        id: &ChunkId,
        min_age_ms: u64,
        now_ms: u64,
    ) -> Result<Deletion, StoreError> {
        self.change(
            id,
            |store| store.delete_if_older(id, min_age_ms, now_ms),
            |deletion| (*deletion == Deletion::Deleted).then_some(Change::Removed),
        )
    }

    fn touch_many(&self, ids: &[ChunkId], now_ms: u64) -> Result<Vec<bool>, StoreError> {
        self.inner.touch_many(ids, now_ms)
    }

    fn list(
        &self,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, u64)>, StoreError> {
        self.inner.list(after, limit)
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    fn info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>, StoreError> {
        self.inner.info(id)
    }

    fn mark_verified(&self, id: &ChunkId, now_ms: u64) -> Result<(), StoreError> {
        self.inner.mark_verified(id, now_ms)
    }

    fn reclaim_space(&self) -> Result<u64, StoreError> {
        self.inner.reclaim_space()
    }

    fn corrupt_for_test(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.inner.corrupt_for_test(id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::store::MemoryStore;
    use crate::store::conformance::{self, test_chunk};

    fn tracked(capacity: usize) -> TrackedStore {
        TrackedStore::new(Arc::new(MemoryStore::default()), capacity)
    }

    fn put(store: &TrackedStore, seed: u64) -> ChunkId {
        let bytes = test_chunk(seed, 1000);
        let id = ChunkId::of(&bytes);
        store.put(&id, &bytes).unwrap();
        id
    }

    fn listed(store: &TrackedStore) -> BTreeSet<ChunkId> {
        store
            .list(None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn tracked_store_passes_the_conformance_suite() {
        conformance::run_all(&mut |capacity| {
            Box::new(TrackedStore::new(
                Arc::new(MemoryStore::new(capacity)),
                1_000,
            ))
        });
    }

    #[test]
    fn every_inventory_change_is_logged_once() {
        let store = tracked(100);
        let a = put(&store, 1);
        let b = put(&store, 2);
        let c = put(&store, 3);
        put(&store, 1); // already present: no change
        assert!(store.delete(&a).unwrap());
        assert!(!store.delete(&a).unwrap());
        assert_eq!(store.delete_if_older(&b, 0, 0).unwrap(), Deletion::Deleted);
        assert!(store.corrupt_for_test(&c).unwrap());
        assert!(matches!(store.get(&c), Err(StoreError::Corrupt(_))));
        assert!(matches!(store.get(&c), Err(StoreError::NotFound(_))));
        let d = put(&store, 4);
        assert!(store.corrupt_for_test(&d).unwrap());
        assert!(matches!(
            store.get_range(&d, 0..1),
            Err(StoreError::Corrupt(_))
        ));

        let snapshot = store.snapshot();
        assert_eq!(
            snapshot.head, 8,
            "3 puts, 2 deletes, 1 put, 2 corrupt drops"
        );
        let delta = store.delta(Some(0), &snapshot, 100);
        assert!(delta.added.is_empty());
        assert_eq!(
            delta.removed.iter().copied().collect::<BTreeSet<_>>(),
            [a, b, c, d].into()
        );
        assert_eq!(delta.digest, [0; 32]);
        assert!(listed(&store).is_empty());
    }

    #[test]
    fn concurrent_writers_and_deleters_leave_a_log_that_explains_the_digest() {
        let store = Arc::new(tracked(100_000));
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let id = put(&store, (w * 1000 + i) % 300);
                        if i % 3 == 0 {
                            store.delete(&id).unwrap();
                        }
                    }
                })
            })
            .collect();
        let mut view = BTreeSet::new();
        let mut acked = Some(0);
        for _ in 0..20 {
            let snapshot = store.snapshot();
            let delta = store.delta(acked, &snapshot, usize::MAX);
            assert!(!delta.reset);
            view.extend(delta.added.iter().copied());
            for id in &delta.removed {
                view.remove(id);
            }
            let mut digest = [0; 32];
            view.iter()
                .for_each(|id| super::super::toggle_digest(&mut digest, id));
            assert_eq!(
                digest, delta.digest,
                "a snapshot's digest matches its deltas"
            );
            acked = Some(delta.through);
            std::thread::yield_now();
        }
        for worker in workers {
            worker.join().unwrap();
        }
        let snapshot = store.snapshot();
        let delta = store.delta(acked, &snapshot, usize::MAX);
        view.extend(delta.added.iter().copied());
        for id in &delta.removed {
            view.remove(id);
        }
        assert_eq!(view, listed(&store));
    }
}
