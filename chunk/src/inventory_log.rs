//! The inventory change feed: every chunk added to or removed from the store, numbered, in a
//! bounded in-memory log. The heartbeat reads it to tell each controller what changed since
//! the last report that controller acknowledged.
//!
//! Pure: no locks and no IO. [`crate::store::TrackedStore`] records into it under its own
//! locks; [`crate::heartbeat`] asks it for [`Delta`]s.
//!
//! # Laws
//!
//! - Entries are numbered 1, 2, 3, ... in the order the store changed (per chunk id, that
//!   order is exact: the store records under the id's lock). The log holds the newest
//!   `capacity` entries; `oldest()` is the lowest number it still holds.
//! - A [`Delta`] since position `a` lists each chunk touched in `(a, through]` once, under its
//!   *final* state there: `added` if present at `through`, `removed` if absent. Applying it to
//!   any set that was right at `a` (insert the added, remove the removed; both idempotent) gives
//!   the inventory at `through`, and `Delta::digest` is that inventory's digest.
//! - When the log cannot describe `(a, through]` (entries dropped, or a controller it has never
//!   reported to), the delta is a *reset*: no ids, the current digest, and the controller,
//!   unable to explain the digest, pulls the whole inventory with ListChunks.

use std::collections::{HashMap, VecDeque};

use crate::id::ChunkId;
use crate::store::toggle_digest;

/// Default number of changes the log remembers (about 10 MB of memory with its index).
pub const DEFAULT_INVENTORY_LOG_CAPACITY: usize = 100_000;

/// What happened to a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The chunk was newly stored.
    Added,
    /// The chunk was deleted or dropped as corrupt.
    Removed,
}

/// The changes since a controller's acknowledged position, ready for a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Chunks present at `through` that may have been absent at the start.
    pub added: Vec<ChunkId>,
    /// Chunks absent at `through` that may have been present at the start.
    pub removed: Vec<ChunkId>,
    /// The position this delta brings the controller to once acknowledged.
    pub through: u64,
    /// The inventory digest at `through`.
    pub digest: [u8; 32],
    /// True when the log could not describe the changes and sends none (see module docs).
    pub reset: bool,
}

/// A bounded, numbered log of inventory changes.
#[derive(Debug)]
pub struct InventoryLog {
    capacity: usize,
    /// The newest `capacity` changes; the last one is numbered `head`.
    entries: VecDeque<(ChunkId, Change)>,
    /// Number of the newest entry; 0 before the first.
    head: u64,
    /// Whether the store was empty when the log started, so that entries from 1 on describe
    /// the whole inventory (while none has been dropped).
    started_empty: bool,
    /// The newest change of each chunk still in the log, with its number.
    newest: HashMap<ChunkId, (u64, Change)>,
}

impl InventoryLog {
    /// An empty log keeping at most `capacity` (at least 1) changes. `started_empty` says
    /// whether the store held no chunks when recording began.
    pub fn new(capacity: usize, started_empty: bool) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
            head: 0,
            started_empty,
            newest: HashMap::new(),
        }
    }

    /// Appends a change and answers its number, dropping the oldest entry when full.
    pub fn record(&mut self, id: ChunkId, change: Change) -> u64 {
        self.head += 1;
        self.entries.push_back((id, change));
        if self.entries.len() > self.capacity {
            let dropped = self.head - self.entries.len() as u64 + 1;
            if let Some((old, _)) = self.entries.pop_front()
                && self.newest.get(&old).is_some_and(|&(n, _)| n == dropped)
            {
                self.newest.remove(&old);
            }
        }
        self.newest.insert(id, (self.head, change));
        self.head
    }

    /// Number of the newest change (0 when nothing was ever recorded).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Number of the oldest change still held (`head + 1` when the log is empty).
    pub fn oldest(&self) -> u64 {
        self.head + 1 - self.entries.len() as u64
    }

    /// The newest change of `id` still held, if any.
    pub fn newest_change(&self, id: &ChunkId) -> Option<Change> {
        self.newest.get(id).map(|&(_, change)| change)
    }

    /// The changes after `acked` (`None`: a controller never reported to) up to `through`
    /// (a head observed together with `digest`, the inventory digest at that moment), at most
    /// `max_changes` log entries of them. See the module docs for what the answer promises.
    pub fn delta(
        &self,
        acked: Option<u64>,
        through: u64,
        digest: [u8; 32],
        max_changes: usize,
    ) -> Delta {
        let through = through.min(self.head);
        let start = match acked {
            Some(acked) => acked,
            None if self.started_empty => 0,
            None => return reset(through, digest),
        };
        // Entries start+1 ..= through must all still be held.
        if start + 1 < self.oldest() || start > through {
            return reset(through, digest);
        }
        let end = through.min(start.saturating_add(max_changes.max(1) as u64));
        let mut digest = digest;
        for (id, _) in self.range(end, through) {
            toggle_digest(&mut digest, id);
        }
        let mut order = Vec::new();
        let mut last = HashMap::new();
        for (id, change) in self.range(start, end) {
            if last.insert(*id, *change).is_none() {
                order.push(*id);
            }
        }
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for id in order {
            match last[&id] {
                Change::Added => added.push(id),
                Change::Removed => removed.push(id),
            }
        }
        Delta {
            added,
            removed,
            through: end,
            digest,
            reset: false,
        }
    }

    /// Entries numbered `after + 1 ..= through`, all of which the caller checked are held.
    fn range(&self, after: u64, through: u64) -> impl Iterator<Item = &(ChunkId, Change)> {
        let skip = (after + 1 - self.oldest()) as usize;
        self.entries
            .iter()
            .skip(skip)
            .take(through.saturating_sub(after) as usize)
    }
}

fn reset(through: u64, digest: [u8; 32]) -> Delta {
    Delta {
        added: Vec::new(),
        removed: Vec::new(),
        through,
        digest,
        reset: true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn c(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn digest_of<'a>(ids: impl IntoIterator<Item = &'a ChunkId>) -> [u8; 32] {
        let mut digest = [0; 32];
        for id in ids {
            toggle_digest(&mut digest, id);
        }
        digest
    }

    /// A controller's view: apply a delta (added first, then removed, as the registry does).
    fn apply(view: &mut BTreeSet<ChunkId>, delta: &Delta) {
        view.extend(delta.added.iter().copied());
        for id in &delta.removed {
            view.remove(id);
        }
    }

    #[test]
    fn a_delta_nets_each_chunk_to_its_final_state() {
        let mut log = InventoryLog::new(100, true);
        log.record(c(1), Change::Added);
        log.record(c(2), Change::Added);
        log.record(c(1), Change::Removed);
        log.record(c(3), Change::Added);
        log.record(c(3), Change::Removed);
        log.record(c(3), Change::Added);
        let digest = digest_of([&c(2), &c(3)]);
        let delta = log.delta(Some(0), log.head(), digest, 100);
        assert_eq!(delta.added, [c(2), c(3)]);
        assert_eq!(delta.removed, [c(1)]);
        assert_eq!(
            (delta.through, delta.digest, delta.reset),
            (6, digest, false)
        );
        let tail = log.delta(Some(4), log.head(), digest, 100);
        assert_eq!((tail.added, tail.removed), (vec![c(3)], vec![]));
    }

    #[test]
    fn a_capped_delta_carries_the_digest_of_where_it_stops() {
        let mut log = InventoryLog::new(100, true);
        for n in 1..=5 {
            log.record(c(n), Change::Added);
        }
        let now = digest_of(&[c(1), c(2), c(3), c(4), c(5)]);
        let first = log.delta(Some(0), 5, now, 2);
        assert_eq!((first.added.clone(), first.through), (vec![c(1), c(2)], 2));
        assert_eq!(first.digest, digest_of(&[c(1), c(2)]));
        let rest = log.delta(Some(first.through), 5, now, 10);
        assert_eq!(
            (rest.added, rest.through, rest.digest),
            (vec![c(3), c(4), c(5)], 5, now)
        );
    }

    #[test]
    fn a_cursor_behind_the_log_gets_a_reset() {
        let mut log = InventoryLog::new(3, true);
        for n in 1..=5 {
            log.record(c(n), Change::Added);
        }
        assert_eq!((log.oldest(), log.head()), (3, 5));
        let digest = [7; 32];
        assert!(log.delta(Some(1), 5, digest, 10).reset);
        assert!(
            log.delta(None, 5, digest, 10).reset,
            "dropped entries: no full history"
        );
        let reset = log.delta(Some(0), 5, digest, 10);
        assert_eq!((reset.through, reset.digest), (5, digest));
        assert!(reset.added.is_empty() && reset.removed.is_empty());
        let served = log.delta(Some(2), 5, digest, 10);
        assert_eq!((served.reset, served.added.len()), (false, 3));
    }

    #[test]
    fn a_new_controller_gets_everything_only_when_the_log_covers_the_whole_store() {
        let mut log = InventoryLog::new(10, true);
        log.record(c(1), Change::Added);
        let delta = log.delta(None, 1, digest_of([&c(1)]), 10);
        assert_eq!((delta.added, delta.reset), (vec![c(1)], false));
        let mut restarted = InventoryLog::new(10, false);
        restarted.record(c(2), Change::Added);
        assert!(restarted.delta(None, 1, [1; 32], 10).reset);
    }

    #[test]
    fn newest_change_forgets_dropped_entries() {
        let mut log = InventoryLog::new(2, true);
        log.record(c(1), Change::Added);
        log.record(c(1), Change::Removed);
        assert_eq!(log.newest_change(&c(1)), Some(Change::Removed));
        log.record(c(2), Change::Added);
        assert_eq!(log.newest_change(&c(1)), Some(Change::Removed));
        log.record(c(3), Change::Added);
        assert_eq!(log.newest_change(&c(1)), None);
        assert_eq!(log.newest_change(&c(3)), Some(Change::Added));
    }

    proptest! {
        /// Whatever the history, capacity and cap, a controller that applies the deltas it is
        /// sent (and re-reads the inventory after a reset) ends up with the true inventory,
        /// and every delta's digest matches what it holds after applying it.
        #[test]
        fn deltas_rebuild_the_inventory(
            ops in proptest::collection::vec((0u8..12, any::<bool>()), 0..200),
            capacity in 1usize..40,
            cap in 1usize..10,
            every in 1usize..15,
        ) {
            let mut log = InventoryLog::new(capacity, true);
            let mut store = BTreeSet::new();
            let mut view = BTreeSet::new();
            let mut acked = None;
            for (i, (n, add)) in ops.into_iter().enumerate() {
                let id = c(n);
                if add && store.insert(id) {
                    log.record(id, Change::Added);
                } else if !add && store.remove(&id) {
                    log.record(id, Change::Removed);
                }
                if i % every == 0 {
                    let delta = log.delta(acked, log.head(), digest_of(&store), cap);
                    if delta.reset {
                        view = store.clone();
                    } else {
                        apply(&mut view, &delta);
                    }
                    prop_assert_eq!(digest_of(&view), delta.digest);
                    acked = Some(delta.through);
                }
            }
            while acked != Some(log.head()) {
                let delta = log.delta(acked, log.head(), digest_of(&store), cap);
                if delta.reset { view = store.clone(); } else { apply(&mut view, &delta); }
                acked = Some(delta.through);
            }
            prop_assert_eq!(view, store);
        }
    }
}
