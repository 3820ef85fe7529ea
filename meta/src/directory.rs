//! The chunkserver directory: one controller's soft-state knowledge of the chunkservers (the
//! [`Registry`] of liveness, usage and who holds which chunk), the membership entries it has
//! written to the cluster document, and the inventory pulls in progress.
//!
//! It owns that state behind one short lock (never held across an await); the registry API,
//! the client API, repair, GC and status reach it only through these methods. Times are
//! monotonic milliseconds (`NodeClock::mono_ms`).

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

use crate::cluster::ChunkserverView;
use crate::placement::{self, Candidate};
use crate::record::ChunkHash;
use crate::registry::{Registry, Report};
use crate::repair::plan::Health;

#[derive(Debug)]
pub struct Directory {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    registry: Registry,
    /// Membership as last written to the cluster document (id -> address, zone), so
    /// heartbeats only write when something changed.
    written: HashMap<String, (String, String)>,
    /// Servers whose inventory is being pulled.
    pulling: HashSet<String>,
}

/// A chunkserver as the client API hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub address: String,
}

impl Directory {
    /// A directory that marks a server failed after `timeout_ms` of silence.
    pub fn new(timeout_ms: u64, written: HashMap<String, (String, String)>) -> Self {
        Directory {
            state: Mutex::new(State {
                registry: Registry::new(timeout_ms),
                written,
                pulling: HashSet::new(),
            }),
        }
    }

    /// Applies a heartbeat; true when the registry cannot explain the reported digest and the
    /// server's full inventory should be pulled.
    pub fn heartbeat(&self, report: Report, now: u64) -> bool {
        self.state.lock().registry.heartbeat(report, now)
    }

    /// Whether the membership entry of `id` in the cluster document needs (re)writing.
    pub fn member_changed(&self, id: &str, address: &str, zone: &str) -> bool {
        self.state.lock().written.get(id) != Some(&(address.to_owned(), zone.to_owned()))
    }

    /// Records that the membership entry of `id` was written.
    pub fn member_written(&self, id: &str, address: &str, zone: &str) {
        self.state
            .lock()
            .written
            .insert(id.to_owned(), (address.to_owned(), zone.to_owned()));
    }

    /// Claims the inventory pull of `id`; false when one is already running.
    pub fn begin_pull(&self, id: &str) -> bool {
        self.state.lock().pulling.insert(id.to_owned())
    }

    /// Ends a pull, installing the inventory when it succeeded.
    pub fn end_pull(&self, id: &str, inventory: Option<Vec<ChunkHash>>) {
        let mut s = self.state.lock();
        if let Some(chunks) = inventory {
            s.registry.replace_inventory(id, chunks);
        }
        s.pulling.remove(id);
    }

    pub fn note_stored(&self, id: &str, chunk: ChunkHash) {
        self.state.lock().registry.note_stored(id, chunk);
    }

    pub fn note_removed(&self, id: &str, chunk: &ChunkHash) {
        self.state.lock().registry.note_removed(id, chunk);
    }

    /// Takes administrative states from the cluster document.
    pub fn apply_membership(&self, members: &[ChunkserverView]) {
        let mut s = self.state.lock();
        for m in members {
            s.registry.set_membership(&m.id, m.state);
        }
    }

    /// Active servers, best first for receiving new data (least used, spread over zones).
    pub fn placement_targets(&self, now: u64) -> Vec<Target> {
        let s = self.state.lock();
        let reg = &s.registry;
        let candidates: Vec<Candidate> = reg
            .servers()
            .map(|e| Candidate {
                id: e.id.clone(),
                zone: e.zone.clone(),
                free_bytes: e.free_bytes(),
                eligible: reg.health(e, now) == Health::Active,
            })
            .collect();
        placement::order_targets(&candidates, &HashSet::new(), &HashSet::new())
            .into_iter()
            .filter_map(|c| {
                reg.server(&c.id).map(|e| Target {
                    id: e.id.clone(),
                    address: e.address.clone(),
                })
            })
            .collect()
    }

    /// Servers in `healths`, with their addresses.
    pub fn servers_in(&self, now: u64, healths: &[Health]) -> Vec<Target> {
        let s = self.state.lock();
        let reg = &s.registry;
        let mut out: Vec<Target> = reg
            .servers()
            .filter(|e| healths.contains(&reg.health(e, now)))
            .map(|e| Target {
                id: e.id.clone(),
                address: e.address.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Addresses to read `chunk` from, best first; every server that may hold it when no
    /// report names a holder yet (a controller that just started).
    pub fn read_locations(&self, chunk: &ChunkHash, now: u64) -> Vec<String> {
        let s = self.state.lock();
        let reg = &s.registry;
        let found = reg.locations(chunk, now);
        if !found.is_empty() {
            return found;
        }
        reg.servers()
            .filter(|e| reg.health(e, now) != Health::Removed)
            .map(|e| e.address.clone())
            .collect()
    }

    /// Live chunks among `chunks` with at least one copy on an active server (a hint for
    /// deduplication; commits confirm copies with the servers themselves).
    pub fn active_copies(&self, chunk: &ChunkHash, now: u64) -> usize {
        let s = self.state.lock();
        let reg = &s.registry;
        reg.holders().get(chunk).map_or(0, |ids| {
            ids.iter()
                .filter_map(|id| reg.server(id))
                .filter(|e| reg.health(e, now) == Health::Active)
                .count()
        })
    }

    /// Runs `f` on the registry under the lock (planners read it; keep `f` short).
    pub fn read<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        f(&self.state.lock().registry)
    }

    /// Lineages reported by chunkservers alive now.
    pub fn live_lineages(&self, now: u64) -> Vec<(String, Vec<String>)> {
        self.read(|reg| {
            reg.servers()
                .filter(|e| reg.alive(e, now))
                .map(|e| (e.id.clone(), e.lineage.clone()))
                .collect()
        })
    }

    /// The address of server `id`.
    pub fn address(&self, id: &str) -> Option<String> {
        self.read(|reg| reg.server(id).map(|e| e.address.clone()))
    }
}
