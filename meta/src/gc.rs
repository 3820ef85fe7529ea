//! Garbage collection planning: which stored chunks may be deleted. Pure.
//!
//! A chunk held by some chunkserver but referenced by no retained version is an *orphan*. It
//! is deleted only when all of these hold:
//! - it has been an orphan, continuously, for the grace period (covers uploads whose chunks
//!   are written before their commit, and commits still travelling between controllers);
//! - this controller's documents are in sync with every controller it knows (so a version
//!   committed elsewhere that references the chunk cannot be missing from our view);
//! - this controller owns the chunk by rendezvous hashing (one deleter per chunk).
//!
//! The chunkserver also refuses to delete a chunk written more recently than the grace
//! period, so a chunk re-uploaded while GC runs is never lost.

use std::collections::HashMap;

use crate::record::ChunkHash;
use crate::rendezvous;

/// Remembers since when each orphan has been an orphan. Bounded by the number of orphans,
/// which is bounded by what chunkservers hold.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    since: HashMap<ChunkHash, u64>,
}

/// One deletion to order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub chunk: ChunkHash,
    pub server: String,
}

/// What one GC pass reads.
#[derive(Debug)]
pub struct Input<'a> {
    pub holders: &'a HashMap<ChunkHash, Vec<String>>,
    pub now_ms: u64,
    pub grace_ms: u64,
    /// This controller's documents equal those of every controller it knows.
    pub in_sync: bool,
    pub me: &'a str,
    pub controllers: &'a [String],
    pub max_deletions: usize,
}

impl OrphanTracker {
    /// Updates the orphan clock and returns the deletions that are due.
    pub fn plan(
        &mut self,
        input: &Input<'_>,
        is_live: impl Fn(&ChunkHash) -> bool,
    ) -> Vec<Deletion> {
        // Forget chunks that are referenced again or no longer stored anywhere.
        self.since
            .retain(|c, _| input.holders.contains_key(c) && !is_live(c));
        let mut out = Vec::new();
        for (chunk, servers) in input.holders {
            if is_live(chunk) {
                continue;
            }
            let since = *self.since.entry(*chunk).or_insert(input.now_ms);
            let due = input.now_ms.saturating_sub(since) >= input.grace_ms;
            if !(due && input.in_sync)
                || rendezvous::owner(chunk, input.controllers) != Some(input.me)
            {
                continue;
            }
            for server in servers {
                if out.len() >= input.max_deletions {
                    return out;
                }
                out.push(Deletion {
                    chunk: *chunk,
                    server: server.clone(),
                });
            }
        }
        out
    }

    /// Orphans currently tracked.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn c(n: u8) -> ChunkHash {
        [n; 32]
    }

    fn input<'a>(
        holders: &'a HashMap<ChunkHash, Vec<String>>,
        controllers: &'a [String],
        now_ms: u64,
        in_sync: bool,
    ) -> Input<'a> {
        Input {
            holders,
            now_ms,
            grace_ms: 100,
            in_sync,
            me: "me",
            controllers,
            max_deletions: usize::MAX,
        }
    }

    #[test]
    fn orphan_is_deleted_everywhere_only_after_grace() {
        let holders: HashMap<_, _> = [(c(1), vec!["a".to_string(), "b".to_string()])].into();
        let ctl = vec!["me".to_string()];
        let mut t = OrphanTracker::default();
        assert!(
            t.plan(&input(&holders, &ctl, 0, true), |_| false)
                .is_empty()
        );
        assert!(
            t.plan(&input(&holders, &ctl, 99, true), |_| false)
                .is_empty()
        );
        let d = t.plan(&input(&holders, &ctl, 100, true), |_| false);
        let servers: HashSet<_> = d.iter().map(|d| d.server.as_str()).collect();
        assert_eq!(servers, HashSet::from(["a", "b"]));
    }

    #[test]
    fn live_chunks_are_never_deleted() {
        let holders: HashMap<_, _> = [(c(1), vec!["a".to_string()])].into();
        let ctl = vec!["me".to_string()];
        let mut t = OrphanTracker::default();
        for now in [0, 1_000, 1_000_000] {
            assert!(
                t.plan(&input(&holders, &ctl, now, true), |_| true)
                    .is_empty()
            );
        }
    }

    #[test]
    fn becoming_live_resets_the_grace_clock() {
        let holders: HashMap<_, _> = [(c(1), vec!["a".to_string()])].into();
        let ctl = vec!["me".to_string()];
        let mut t = OrphanTracker::default();
        t.plan(&input(&holders, &ctl, 0, true), |_| false);
        // Referenced by a commit at t=50, then orphaned again at t=60.
        t.plan(&input(&holders, &ctl, 50, true), |_| true);
        assert!(
            t.plan(&input(&holders, &ctl, 60, true), |_| false)
                .is_empty()
        );
        assert!(
            t.plan(&input(&holders, &ctl, 150, true), |_| false)
                .is_empty()
        );
        assert_eq!(
            t.plan(&input(&holders, &ctl, 160, true), |_| false).len(),
            1
        );
    }

    #[test]
    fn nothing_is_deleted_while_out_of_sync() {
        let holders: HashMap<_, _> = [(c(1), vec!["a".to_string()])].into();
        let ctl = vec!["me".to_string()];
        let mut t = OrphanTracker::default();
        t.plan(&input(&holders, &ctl, 0, false), |_| false);
        assert!(
            t.plan(&input(&holders, &ctl, 10_000, false), |_| false)
                .is_empty()
        );
        assert_eq!(
            t.plan(&input(&holders, &ctl, 10_000, true), |_| false)
                .len(),
            1
        );
    }

    #[test]
    fn only_the_owner_deletes() {
        let holders: HashMap<_, _> = (0..40).map(|i| (c(i), vec!["a".to_string()])).collect();
        let ctl = vec!["me".to_string(), "other".to_string()];
        let mut t = OrphanTracker::default();
        t.plan(&input(&holders, &ctl, 0, true), |_| false);
        let mine = t.plan(&input(&holders, &ctl, 100, true), |_| false).len();
        assert!(mine > 0 && mine < 40, "{mine} of 40 owned here");
    }
}
