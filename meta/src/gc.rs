//! Garbage collection planning: whether this controller may delete anything now, and which
//! stored chunks. Pure.
//!
//! GC fails closed: missing, stale or empty knowledge means "keep". [`may_delete`] demands
//! positive proof that this controller's view of the metadata is the cluster's:
//! - the live set it plans with was computed from exactly the current metadata state (its
//!   digest stamp equals the digest read in the same job);
//! - it found its metadata equal to every controller in the membership (except those an
//!   operator forgot) and to every controller it is connected to, recently (a controller that
//!   has never completed a sync with the cluster, or is cut off from part of it, deletes
//!   nothing);
//! - no live chunkserver reports a metadata store incarnation (lineage) this controller has not
//!   seen: a new or wiped controller, alone or not yet peered, whose chunkservers served an
//!   older cluster, deletes nothing. Chunkservers check the same thing again on every delete.
//!
//! Then a chunk held by some chunkserver but referenced by no retained version (an *orphan*) is
//! deleted only when it has been an orphan, continuously, for the grace period (measured on
//! the monotonic clock: covers uploads whose chunks are written before their commit, and
//! commits still travelling between controllers), and this controller owns it by rendezvous
//! hashing (one deleter per chunk). The chunkserver also refuses to delete a chunk written or
//! touched more recently than the grace period, so a chunk re-uploaded, deduplicated by a
//! commit or held by a long upload while GC runs is never lost.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::record::ChunkHash;
use crate::rendezvous;

/// Why GC may not delete now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// No live set has been computed yet, or it was not computed from the current state.
    StaleLiveSet,
    /// Not recently found equal to this member controller.
    NotInSync(String),
    /// A live chunkserver reports a metadata store incarnation this controller has not seen.
    UnknownLineage { chunkserver: String, store: String },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::StaleLiveSet => f.write_str("the live chunk set is not current"),
            Blocked::NotInSync(c) => write!(f, "metadata not recently equal to controller {c}"),
            Blocked::UnknownLineage { chunkserver, store } => write!(
                f,
                "chunkserver {chunkserver} has served metadata store {store}, which this controller has not seen"
            ),
        }
    }
}

/// Everything [`may_delete`] weighs.
#[derive(Debug)]
pub struct Proof<'a> {
    pub me: &'a str,
    /// Controllers in the membership: id and whether an operator forgot it.
    pub members: &'a [(String, bool)],
    /// Controllers connected now.
    pub connected: &'a [String],
    /// Per controller, how long ago its metadata was last found equal to ours (ms).
    pub last_equal_ago_ms: &'a HashMap<String, u64>,
    /// How recent "equal" must be.
    pub freshness_ms: u64,
    /// This controller's lineage.
    pub lineage: &'a [String],
    /// Lineages reported by live chunkservers.
    pub chunkserver_lineages: &'a [(String, Vec<String>)],
    /// The live set's stamp, and the digest read in the same job.
    pub live_digest: Option<[u8; 32]>,
    pub current_digest: [u8; 32],
}

/// `Ok` when this controller has proof that its view is the cluster's (see the module doc).
pub fn may_delete(p: &Proof<'_>) -> Result<(), Blocked> {
    if p.live_digest != Some(p.current_digest) {
        return Err(Blocked::StaleLiveSet);
    }
    let fresh = |c: &str| {
        p.last_equal_ago_ms
            .get(c)
            .is_some_and(|ago| *ago <= p.freshness_ms)
    };
    let mut must_match: Vec<&str> = p
        .members
        .iter()
        .filter(|(id, forgotten)| !forgotten && id != p.me)
        .map(|(id, _)| id.as_str())
        .collect();
    // A connected controller counts even if forgotten or not yet in our membership.
    must_match.extend(
        p.connected
            .iter()
            .map(String::as_str)
            .filter(|c| *c != p.me),
    );
    must_match.sort_unstable();
    must_match.dedup();
    if let Some(c) = must_match.into_iter().find(|c| !fresh(c)) {
        return Err(Blocked::NotInSync(c.to_owned()));
    }
    let mine: HashSet<&str> = p.lineage.iter().map(String::as_str).collect();
    for (cs, lineage) in p.chunkserver_lineages {
        if let Some(store) = lineage.iter().find(|s| !mine.contains(s.as_str())) {
            return Err(Blocked::UnknownLineage {
                chunkserver: cs.clone(),
                store: store.clone(),
            });
        }
    }
    Ok(())
}

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
    /// Monotonic time.
    pub now_ms: u64,
    pub grace_ms: u64,
    /// [`may_delete`] held in this pass.
    pub allowed: bool,
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
            if !(due && input.allowed)
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

    fn c(n: u8) -> ChunkHash {
        [n; 32]
    }

    fn input<'a>(
        holders: &'a HashMap<ChunkHash, Vec<String>>,
        controllers: &'a [String],
        now_ms: u64,
        allowed: bool,
    ) -> Input<'a> {
        Input {
            holders,
            now_ms,
            grace_ms: 100,
            allowed,
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
    fn nothing_is_deleted_while_not_allowed() {
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

    struct World {
        members: Vec<(String, bool)>,
        connected: Vec<String>,
        equal: HashMap<String, u64>,
        lineage: Vec<String>,
        reports: Vec<(String, Vec<String>)>,
        live: Option<[u8; 32]>,
        current: [u8; 32],
    }

    impl World {
        /// Controllers a (me), b, c all in sync; two chunkservers that know stores x and y.
        fn healthy() -> World {
            World {
                members: vec![
                    ("a".into(), false),
                    ("b".into(), false),
                    ("c".into(), false),
                ],
                connected: vec!["b".into(), "c".into()],
                equal: HashMap::from([("b".into(), 500), ("c".into(), 100)]),
                lineage: vec!["x".into(), "y".into()],
                reports: vec![
                    ("cs1".into(), vec!["x".into(), "y".into()]),
                    ("cs2".into(), vec!["x".into()]),
                ],
                live: Some([1; 32]),
                current: [1; 32],
            }
        }

        fn check(&self) -> Result<(), Blocked> {
            may_delete(&Proof {
                me: "a",
                members: &self.members,
                connected: &self.connected,
                last_equal_ago_ms: &self.equal,
                freshness_ms: 10_000,
                lineage: &self.lineage,
                chunkserver_lineages: &self.reports,
                live_digest: self.live,
                current_digest: self.current,
            })
        }
    }

    #[test]
    fn a_controller_in_sync_with_everyone_may_delete() {
        assert_eq!(World::healthy().check(), Ok(()));
    }

    #[test]
    fn a_stale_or_missing_live_set_blocks() {
        let mut w = World::healthy();
        w.live = Some([2; 32]);
        assert_eq!(w.check(), Err(Blocked::StaleLiveSet));
        w.live = None;
        assert_eq!(w.check(), Err(Blocked::StaleLiveSet));
    }

    #[test]
    fn a_member_never_or_not_recently_equal_blocks() {
        let mut w = World::healthy();
        w.equal.remove("b");
        assert_eq!(w.check(), Err(Blocked::NotInSync("b".into())));
        let mut w = World::healthy();
        w.equal.insert("c".into(), 10_001);
        assert_eq!(w.check(), Err(Blocked::NotInSync("c".into())));
        // Cut off from c: not connected, and not equal recently.
        let mut w = World::healthy();
        w.connected.retain(|c| c != "c");
        w.equal.remove("c");
        assert_eq!(w.check(), Err(Blocked::NotInSync("c".into())));
    }

    #[test]
    fn a_forgotten_member_no_longer_blocks_unless_it_is_connected() {
        let mut w = World::healthy();
        w.members[2].1 = true;
        w.connected.retain(|c| c != "c");
        w.equal.remove("c");
        assert_eq!(w.check(), Ok(()));
        // It came back: being connected, it must be in sync again.
        w.connected.push("c".into());
        assert_eq!(w.check(), Err(Blocked::NotInSync("c".into())));
    }

    #[test]
    fn a_connected_controller_outside_the_membership_blocks() {
        let mut w = World::healthy();
        w.connected.push("newcomer".into());
        assert_eq!(w.check(), Err(Blocked::NotInSync("newcomer".into())));
    }

    #[test]
    fn a_fresh_controller_alone_with_an_older_clusters_chunkservers_blocks() {
        // The scenario: an empty controller, peered with nobody, whose chunkservers
        // served the cluster's metadata store x. It knows only itself (store z).
        let w = World {
            members: vec![("a".into(), false)],
            connected: Vec::new(),
            equal: HashMap::new(),
            lineage: vec!["z".into()],
            reports: vec![("cs1".into(), vec!["x".into()])],
            live: Some([0; 32]),
            current: [0; 32],
        };
        assert_eq!(
            w.check(),
            Err(Blocked::UnknownLineage {
                chunkserver: "cs1".into(),
                store: "x".into()
            })
        );
    }

    #[test]
    fn a_single_controller_cluster_may_delete() {
        let w = World {
            members: vec![("a".into(), false)],
            connected: Vec::new(),
            equal: HashMap::new(),
            lineage: vec!["x".into()],
            reports: vec![("cs1".into(), vec!["x".into()]), ("cs2".into(), Vec::new())],
            live: Some([0; 32]),
            current: [0; 32],
        };
        assert_eq!(w.check(), Ok(()));
    }
}
