//! Locks striping the chunk id space: one per id's first byte modulo the stripe count, so that
//! changes of one chunk are serialised while different chunks proceed in parallel.

use parking_lot::{Mutex, MutexGuard};

use crate::id::ChunkId;

/// Number of stripes.
const STRIPES: usize = 64;

/// A fixed set of striped locks over chunk ids.
pub struct Stripes(Vec<Mutex<()>>);

impl Default for Stripes {
    fn default() -> Self {
        Stripes((0..STRIPES).map(|_| Mutex::new(())).collect())
    }
}

impl Stripes {
    fn index(id: &ChunkId) -> usize {
        usize::from(id.0[0]) % STRIPES
    }

    /// The lock of `id`'s stripe.
    pub fn lock(&self, id: &ChunkId) -> MutexGuard<'_, ()> {
        self.0[Self::index(id)].lock()
    }

    /// The locks of every stripe `ids` fall in, taken in ascending order so that two callers
    /// cannot deadlock.
    pub fn lock_all<'a>(&self, ids: impl Iterator<Item = &'a ChunkId>) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = ids.map(Self::index).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.iter().map(|&s| self.0[s].lock()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_all_takes_each_stripe_once_and_holds_it() {
        let stripes = Stripes::default();
        let ids = [
            ChunkId([1; 32]),
            ChunkId([1; 32]),
            ChunkId([65; 32]),
            ChunkId([2; 32]),
        ];
        let held = stripes.lock_all(ids.iter());
        // 1 and 65 share a stripe; taking it twice would deadlock.
        assert_eq!(held.len(), 2);
        assert!(stripes.0[1].try_lock().is_none());
        assert!(stripes.0[2].try_lock().is_none());
        assert!(stripes.0[3].try_lock().is_some());
    }
}
