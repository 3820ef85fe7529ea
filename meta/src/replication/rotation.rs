//! Which peers the periodic anti-entropy visits on one tick, without IO.
//!
//! Visiting every peer on every tick costs O(N) sessions per node per tick (at 32 controllers,
//! about 500 sessions a second across the cluster, nearly all of them finding nothing to do).
//! Instead each tick visits the next few peers in a rotation: all of them when there are few
//! (so small clusters behave as before), else just enough that every peer is visited at least
//! once per `revisit`. `revisit` must stay well inside the freshness window of the proof that
//! guards destructive actions (every controller found equal within 10 s), since that proof
//! is refreshed by these sessions.

use std::time::Duration;

/// Peers visited per tick however many there are, so small clusters visit every peer on
/// every tick.
pub const MIN_PER_TICK: usize = 4;

/// Sessions to start on one tick with `candidates` peers, ticks `interval` apart, so that each
/// is visited at least once per `revisit`.
pub fn per_tick(candidates: usize, interval: Duration, revisit: Duration) -> usize {
    let ticks = (revisit.as_millis() / interval.as_millis().max(1)).max(1);
    let ticks = usize::try_from(ticks).unwrap_or(usize::MAX);
    candidates.div_ceil(ticks).max(MIN_PER_TICK).min(candidates)
}

/// A round-robin cursor over a set of peers that may change between ticks.
#[derive(Debug, Clone)]
pub struct Rotation<K> {
    last: Option<K>,
}

impl<K> Default for Rotation<K> {
    fn default() -> Self {
        Rotation { last: None }
    }
}

impl<K: Ord + Clone> Rotation<K> {
    /// The next `n` of `candidates` (sorted, distinct) after the last one picked, wrapping
    /// around; a peer that joined or left meanwhile simply takes or loses its place.
    pub fn next(&mut self, candidates: &[K], n: usize) -> Vec<K> {
        let n = n.min(candidates.len());
        if n == 0 {
            return Vec::new();
        }
        let start = match &self.last {
            Some(last) => candidates.partition_point(|c| c <= last),
            None => 0,
        };
        let picked: Vec<K> = (0..n)
            .map(|i| candidates[(start + i) % candidates.len()].clone())
            .collect();
        self.last = picked.last().cloned();
        picked
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn small_clusters_visit_every_peer_every_tick() {
        for n in 0..=MIN_PER_TICK {
            assert_eq!(per_tick(n, SECOND, 5 * SECOND), n);
        }
    }

    #[test]
    fn large_clusters_visit_enough_to_revisit_in_time() {
        assert_eq!(per_tick(31, SECOND, 5 * SECOND), 7);
        assert_eq!(per_tick(16, SECOND, 5 * SECOND), MIN_PER_TICK);
        assert_eq!(per_tick(1000, SECOND, 5 * SECOND), 200);
        // A revisit shorter than the interval means every peer, every tick.
        assert_eq!(per_tick(31, SECOND, Duration::from_millis(10)), 31);
    }

    proptest! {
        /// With a fixed set, every candidate is visited within the revisit period, and no tick
        /// visits more than it was allowed.
        #[test]
        fn every_peer_is_visited_within_the_revisit_period(
            count in 0usize..200,
            interval_ms in 100u64..3_000,
            revisit_ms in 100u64..20_000,
            warmup in 0usize..50,
        ) {
            let interval = Duration::from_millis(interval_ms);
            let revisit = Duration::from_millis(revisit_ms);
            let peers: Vec<u32> = (0..count as u32).map(|i| i * 7 + 3).collect();
            let n = per_tick(count, interval, revisit);
            let mut rotation = Rotation::default();
            for _ in 0..warmup {
                rotation.next(&peers, n);
            }
            let ticks = (revisit_ms / interval_ms).max(1) as usize;
            let mut seen: HashMap<u32, usize> = HashMap::new();
            for _ in 0..ticks {
                let picked = rotation.next(&peers, n);
                prop_assert!(picked.len() <= n);
                for p in picked {
                    *seen.entry(p).or_default() += 1;
                }
            }
            prop_assert_eq!(seen.len(), count);
        }

        /// Peers joining and leaving never make a tick skip the rest: whatever the changes,
        /// each pick is `n` distinct current candidates.
        #[test]
        fn changing_sets_still_pick_distinct_current_peers(
            sets in proptest::collection::vec(proptest::collection::btree_set(0u32..64, 0..20), 1..20),
            n in 1usize..8,
        ) {
            let mut rotation = Rotation::default();
            for set in sets {
                let peers: Vec<u32> = set.into_iter().collect();
                let picked = rotation.next(&peers, n);
                prop_assert_eq!(picked.len(), n.min(peers.len()));
                let distinct: std::collections::BTreeSet<_> = picked.iter().collect();
                prop_assert_eq!(distinct.len(), picked.len());
                prop_assert!(picked.iter().all(|p| peers.contains(p)));
            }
        }
    }
}
