//! The set of live chunks (referenced by a retained version), as this controller knows it.
//!
//! A [`LiveSnapshot`] is computed from the documents in one metadata job together with the
//! digest of the state it was computed from, so a reader can tell whether it is current.
//! [`LiveSet::refresh`] recomputes only when the metadata digest moved; repair and GC both go
//! through it, and GC acts only on a snapshot whose stamp equals the digest it read in the
//! same job (a stale or failed computation never reaches a delete).
//!
//! Commits made through this controller add their chunks at once ([`LiveSet::add`]), so
//! PlanUpload sees them before the next recomputation. Those recent additions are tagged with
//! a generation: a recomputation drops only the additions made before it started reading the
//! documents (those are in its result if still live), so nothing is missed and nothing
//! lingers.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::handle::MetaHandle;
use crate::record::ChunkHash;

/// A full computation of the live chunks, stamped with the metadata digest it was read at.
#[derive(Debug, Default)]
pub struct LiveSnapshot {
    /// Chunk -> size.
    pub chunks: HashMap<ChunkHash, u64>,
    /// The metadata digest the chunks were computed from; `None` before the first computation.
    pub digest: Option<[u8; 32]>,
}

#[derive(Debug, Default)]
pub struct LiveSet {
    base: RwLock<Arc<LiveSnapshot>>,
    recent: Mutex<RecentChunks>,
}

#[derive(Debug, Default)]
struct RecentChunks {
    generation: u64,
    chunks: HashMap<ChunkHash, (u64, u64)>,
}

impl LiveSet {
    /// The last full computation (recent commits not included).
    pub fn snapshot(&self) -> Arc<LiveSnapshot> {
        self.base.read().clone()
    }

    /// The number of live chunks known, recent commits included.
    pub fn len(&self) -> usize {
        let base = self.base.read().clone();
        let recent = self.recent.lock();
        base.chunks.len()
            + recent
                .chunks
                .keys()
                .filter(|c| !base.chunks.contains_key(*c))
                .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `chunk` is referenced by a retained version, as far as this controller knows.
    pub fn contains(&self, chunk: &ChunkHash) -> bool {
        self.base.read().chunks.contains_key(chunk) || self.recent.lock().chunks.contains_key(chunk)
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
    /// [`LiveSet::install`].
    pub fn begin_refresh(&self) -> u64 {
        let mut recent = self.recent.lock();
        recent.generation += 1;
        recent.generation
    }

    /// Installs a full computation started at `generation`.
    pub fn install(&self, full: LiveSnapshot, generation: u64) -> Arc<LiveSnapshot> {
        let full = Arc::new(full);
        *self.base.write() = full.clone();
        self.recent
            .lock()
            .chunks
            .retain(|_, (_, added)| *added >= generation);
        full
    }

    /// A snapshot stamped with the metadata digest as of this call: the cached one when the
    /// digest has not moved, else a new computation (in the same metadata job that read the
    /// digest). An error means nothing is known to be current.
    pub async fn refresh(&self, meta: &MetaHandle) -> Result<Arc<LiveSnapshot>, String> {
        let cached = self.snapshot();
        let last = cached.digest;
        let generation = self.begin_refresh();
        let fresh = meta
            .call(move |s| {
                let d = s.digest();
                if Some(d) == last {
                    return Ok(None);
                }
                s.live_chunks().map(|l| Some((d, l)))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(match fresh {
            None => cached,
            Some((digest, live)) => self.install(
                LiveSnapshot {
                    chunks: live.into_iter().collect(),
                    digest: Some(digest),
                },
                generation,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ChunkHash {
        [n; 32]
    }

    fn snap(chunks: &[(ChunkHash, u64)]) -> LiveSnapshot {
        LiveSnapshot {
            chunks: chunks.iter().copied().collect(),
            digest: Some([0; 32]),
        }
    }

    #[test]
    fn commits_are_live_at_once_and_until_a_later_refresh_covers_them() {
        let live = LiveSet::default();
        live.add([(c(1), 10)]);
        assert!(live.contains(&c(1)));
        // A refresh that started before the commit was read may not include it: kept.
        let g = live.begin_refresh();
        live.add([(c(2), 10)]);
        live.install(snap(&[(c(1), 10)]), g);
        assert!(live.contains(&c(1)) && live.contains(&c(2)));
        assert_eq!(live.len(), 2);
        // The next refresh started after both commits: its result is the truth.
        let g = live.begin_refresh();
        live.install(snap(&[(c(2), 10)]), g);
        assert!(!live.contains(&c(1)), "a purged chunk does not linger");
        assert!(live.contains(&c(2)));
    }

    #[test]
    fn before_any_computation_the_snapshot_is_unstamped() {
        let live = LiveSet::default();
        assert!(live.snapshot().digest.is_none());
        assert!(live.is_empty());
    }
}
