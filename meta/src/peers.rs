//! What this controller knows about its peers: which controllers are connected, and when each
//! was last found to hold exactly our metadata. Replication writes it; GC (the proof of being
//! in sync), drain completion, repair ownership and status read it. One short lock, never held
//! across an await.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct Peers {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connected: HashSet<String>,
    last_equal: HashMap<String, Instant>,
}

impl Peers {
    pub fn connected(&self, peer: &str) {
        self.inner.lock().connected.insert(peer.to_owned());
    }

    /// A peer went away: it no longer counts as connected, nor as recently equal.
    pub fn disconnected(&self, peer: &str) {
        let mut i = self.inner.lock();
        i.connected.remove(peer);
        i.last_equal.remove(peer);
    }

    /// Records that `peer`'s metadata equalled ours just now.
    pub fn found_equal(&self, peer: &str) {
        self.inner
            .lock()
            .last_equal
            .insert(peer.to_owned(), Instant::now());
    }

    /// Connected peers, sorted.
    pub fn connected_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().connected.iter().cloned().collect();
        v.sort();
        v
    }

    pub fn is_connected(&self, peer: &str) -> bool {
        self.inner.lock().connected.contains(peer)
    }

    /// Per peer, milliseconds since its metadata was last found equal to ours.
    pub fn last_equal_ago_ms(&self) -> HashMap<String, u64> {
        self.inner
            .lock()
            .last_equal
            .iter()
            .map(|(p, at)| (p.clone(), at.elapsed().as_millis() as u64))
            .collect()
    }

    /// This controller and every connected one, sorted: the controllers that share repair
    /// and GC work by rendezvous hashing on this side of any partition.
    pub fn visible_with(&self, me: &str) -> Vec<String> {
        let mut v = self.connected_ids();
        v.push(me.to_owned());
        v.sort();
        v.dedup();
        v
    }
}
