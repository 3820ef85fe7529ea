//! The set of live chunks (referenced by a retained version), as this controller knows it.
//!
//! The repair loop recomputes the full set from the documents when the metadata changes;
//! commits made through this controller add their chunks at once, so PlanUpload and GC see
//! them before the next recomputation. The recent additions are tagged with a generation:
//! a recomputation drops only the additions made before it started reading the documents
//! (those are in its result if still live), so nothing is missed and nothing lingers.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::record::ChunkHash;

#[derive(Debug, Default)]
pub struct LiveChunks {
    /// The last full computation: chunk -> size.
    base: RwLock<Arc<HashMap<ChunkHash, u64>>>,
    /// Chunks committed here since then: chunk -> (size, generation).
    recent: Mutex<RecentChunks>,
}

#[derive(Debug, Default)]
struct RecentChunks {
    generation: u64,
    chunks: HashMap<ChunkHash, (u64, u64)>,
}

impl LiveChunks {
    /// The last full computation (recent commits not included).
    pub fn snapshot(&self) -> Arc<HashMap<ChunkHash, u64>> {
        self.base.read().clone()
    }

    /// The full set including recent commits (a copy: for status, not for hot paths).
    pub fn merged(&self) -> HashMap<ChunkHash, u64> {
        let mut all = (**self.base.read()).clone();
        for (c, (size, _)) in &self.recent.lock().chunks {
            all.insert(*c, *size);
        }
        all
    }

    /// Whether `chunk` is referenced by a retained version, as far as this controller knows.
    pub fn contains(&self, chunk: &ChunkHash) -> bool {
        self.base.read().contains_key(chunk) || self.recent.lock().chunks.contains_key(chunk)
    }

    /// Records chunks of a version just committed here.
    pub fn add(&self, chunks: impl IntoIterator<Item = (ChunkHash, u64)>) {
        let mut recent = self.recent.lock();
        let generation = recent.generation;
        for (c, size) in chunks {
            recent.chunks.insert(c, (size, generation));
        }
    }

    /// Call before reading the documents for a full computation; pass the result to
    /// [`LiveChunks::replace`].
    pub fn begin_refresh(&self) -> u64 {
        let mut recent = self.recent.lock();
        recent.generation += 1;
        recent.generation
    }

    /// Installs a full computation started at `generation`.
    pub fn replace(&self, full: HashMap<ChunkHash, u64>, generation: u64) {
        *self.base.write() = Arc::new(full);
        self.recent
            .lock()
            .chunks
            .retain(|_, (_, added)| *added >= generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ChunkHash {
        [n; 32]
    }

    #[test]
    fn commits_are_live_at_once_and_until_a_later_refresh_covers_them() {
        let live = LiveChunks::default();
        live.add([(c(1), 10)]);
        assert!(live.contains(&c(1)));
        // A refresh that started before the commit was read may not include it: kept.
        let g = live.begin_refresh();
        live.add([(c(2), 10)]);
        live.replace(HashMap::from([(c(1), 10)]), g);
        assert!(live.contains(&c(1)) && live.contains(&c(2)));
        assert_eq!(live.merged().len(), 2);
        // The next refresh started after both commits: its result is the truth.
        let g = live.begin_refresh();
        live.replace(HashMap::from([(c(2), 10)]), g);
        assert!(!live.contains(&c(1)), "a purged chunk does not linger");
        assert!(live.contains(&c(2)));
    }
}
