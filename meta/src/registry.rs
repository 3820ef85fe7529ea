//! The chunkserver registry: soft state rebuilt from heartbeats and inventories.
//!
//! Nothing here is written to an Automerge document (documents must not grow with
//! heartbeats): liveness, usage and *which server holds which chunk* are learned from reports,
//! as GFS and HDFS learn block locations. Each heartbeat carries the chunks added and removed
//! since the previous one plus an inventory digest (XOR of all ids); when the digest of what
//! the registry believes differs from the reported one, the registry asks for the full
//! inventory, so a lost or reordered delta heals itself.
//!
//! Pure: every method takes `now_ms`, a monotonic reading (so a wall clock jump cannot mark
//! every server failed or revive a dead one); the service does the IO.

use std::collections::{HashMap, HashSet};

use crate::record::{ChunkHash, ChunkserverState};
use crate::repair::plan::Health;

/// A chunkserver's report, decoded from the wire.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub id: String,
    pub address: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub chunk_count: u64,
    pub digest: [u8; 32],
    pub added: Vec<ChunkHash>,
    pub removed: Vec<ChunkHash>,
    /// Metadata store incarnations the chunkserver has learned (see `crate::gc`).
    pub lineage: Vec<String>,
    /// The chunkserver's wall clock at sending, as it reported it (for display).
    pub wall_ms: u64,
}

/// What the registry knows about one chunkserver.
#[derive(Debug, Clone)]
pub struct ServerEntry {
    pub id: String,
    pub address: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Monotonic time of the last heartbeat (liveness).
    pub last_heartbeat_ms: u64,
    /// The server's own wall clock in its last heartbeat (for display).
    pub last_heartbeat_wall_ms: u64,
    /// Metadata store incarnations the server reported knowing.
    pub lineage: Vec<String>,
    /// Whether the server's membership entry is known from the cluster document.
    pub member: bool,
    pub membership: ChunkserverState,
    inventory: HashSet<ChunkHash>,
    /// XOR of `inventory`, kept incrementally.
    digest: [u8; 32],
    reported_digest: [u8; 32],
}

impl ServerEntry {
    /// Chunks this server is known to hold.
    pub fn chunk_count(&self) -> usize {
        self.inventory.len()
    }

    /// Whether the registry's view of the inventory matches the server's last report.
    pub fn inventory_in_sync(&self) -> bool {
        self.digest == self.reported_digest
    }

    pub fn holds(&self, chunk: &ChunkHash) -> bool {
        self.inventory.contains(chunk)
    }

    /// Every chunk this server is known to hold.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkHash> {
        self.inventory.iter()
    }

    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes)
    }

    fn load(&self) -> f64 {
        if self.capacity_bytes == 0 {
            1.0
        } else {
            self.used_bytes as f64 / self.capacity_bytes as f64
        }
    }
}

/// All chunkservers this controller has heard of, and where every chunk is.
#[derive(Debug, Default)]
pub struct Registry {
    servers: HashMap<String, ServerEntry>,
    holders: HashMap<ChunkHash, Vec<String>>,
    /// A server silent for longer than this is `Failed`.
    timeout_ms: u64,
}

impl Registry {
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            timeout_ms,
            ..Self::default()
        }
    }

    /// Applies a heartbeat. Returns true when the registry cannot explain the reported
    /// digest and wants the server's full inventory.
    pub fn heartbeat(&mut self, report: Report, now_ms: u64) -> bool {
        let entry = self
            .servers
            .entry(report.id.clone())
            .or_insert_with(|| ServerEntry {
                id: report.id.clone(),
                address: String::new(),
                zone: String::new(),
                capacity_bytes: 0,
                used_bytes: 0,
                last_heartbeat_ms: 0,
                last_heartbeat_wall_ms: 0,
                lineage: Vec::new(),
                member: false,
                membership: ChunkserverState::Active,
                inventory: HashSet::new(),
                digest: [0; 32],
                reported_digest: [0; 32],
            });
        entry.address = report.address;
        entry.zone = report.zone;
        entry.capacity_bytes = report.capacity_bytes;
        entry.used_bytes = report.used_bytes;
        entry.last_heartbeat_ms = now_ms;
        entry.last_heartbeat_wall_ms = report.wall_ms;
        entry.lineage = report.lineage;
        entry.reported_digest = report.digest;
        for c in report.added {
            if entry.inventory.insert(c) {
                xor(&mut entry.digest, &c);
                self.holders.entry(c).or_default().push(report.id.clone());
            }
        }
        for c in report.removed {
            if entry.inventory.remove(&c) {
                xor(&mut entry.digest, &c);
                remove_holder(&mut self.holders, &c, &report.id);
            }
        }
        !entry.inventory_in_sync()
    }

    /// Replaces a server's inventory with a full listing (after a digest mismatch).
    pub fn replace_inventory(&mut self, id: &str, chunks: impl IntoIterator<Item = ChunkHash>) {
        let Some(entry) = self.servers.get_mut(id) else {
            return;
        };
        for c in entry.inventory.drain() {
            remove_holder(&mut self.holders, &c, id);
        }
        entry.digest = [0; 32];
        for c in chunks {
            if entry.inventory.insert(c) {
                xor(&mut entry.digest, &c);
                self.holders.entry(c).or_default().push(id.to_owned());
            }
        }
    }

    /// Records that `id` now holds `chunk` (a repair or upload this controller saw succeed),
    /// ahead of the next heartbeat.
    pub fn note_stored(&mut self, id: &str, chunk: ChunkHash) {
        if let Some(entry) = self.servers.get_mut(id)
            && entry.inventory.insert(chunk)
        {
            xor(&mut entry.digest, &chunk);
            self.holders.entry(chunk).or_default().push(id.to_owned());
        }
    }

    /// Records that `id` no longer holds `chunk` (a delete this controller ordered).
    pub fn note_removed(&mut self, id: &str, chunk: &ChunkHash) {
        if let Some(entry) = self.servers.get_mut(id)
            && entry.inventory.remove(chunk)
        {
            xor(&mut entry.digest, chunk);
            remove_holder(&mut self.holders, chunk, id);
        }
    }

    /// Sets a server's administrative state from the cluster document.
    pub fn set_membership(&mut self, id: &str, membership: ChunkserverState) {
        if let Some(entry) = self.servers.get_mut(id) {
            entry.membership = membership;
            entry.member = true;
        }
    }

    /// Whether the server answered within the timeout (whatever its membership).
    pub fn alive(&self, entry: &ServerEntry, now_ms: u64) -> bool {
        now_ms.saturating_sub(entry.last_heartbeat_ms) <= self.timeout_ms
    }

    /// A server's health now: membership first, then liveness.
    pub fn health(&self, entry: &ServerEntry, now_ms: u64) -> Health {
        match entry.membership {
            ChunkserverState::Removed => Health::Removed,
            _ if !self.alive(entry, now_ms) => Health::Failed,
            ChunkserverState::Draining => Health::Draining,
            ChunkserverState::Active => Health::Active,
        }
    }

    pub fn servers(&self) -> impl Iterator<Item = &ServerEntry> {
        self.servers.values()
    }

    pub fn server(&self, id: &str) -> Option<&ServerEntry> {
        self.servers.get(id)
    }

    /// Chunk -> servers holding it.
    pub fn holders(&self) -> &HashMap<ChunkHash, Vec<String>> {
        &self.holders
    }

    /// Addresses to read `chunk` from: healthy servers first, least loaded first among them;
    /// failed servers last (they may have come back before we noticed).
    pub fn locations(&self, chunk: &ChunkHash, now_ms: u64) -> Vec<String> {
        let mut found: Vec<(u8, f64, &ServerEntry)> = self
            .holders
            .get(chunk)
            .into_iter()
            .flatten()
            .filter_map(|id| self.servers.get(id))
            .filter_map(|s| {
                let rank = match self.health(s, now_ms) {
                    Health::Active | Health::Draining => 0,
                    Health::Failed => 1,
                    Health::Removed => return None,
                };
                Some((rank, s.load(), s))
            })
            .collect();
        found.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.id.cmp(&b.2.id))
        });
        found
            .into_iter()
            .map(|(_, _, s)| s.address.clone())
            .collect()
    }

    /// Whether some active or draining server holds `chunk`.
    pub fn has_healthy_copy(&self, chunk: &ChunkHash, now_ms: u64) -> bool {
        self.holders.get(chunk).is_some_and(|ids| {
            ids.iter()
                .filter_map(|id| self.servers.get(id))
                .any(|s| matches!(self.health(s, now_ms), Health::Active | Health::Draining))
        })
    }

    /// The server id behind an address, if known.
    pub fn id_by_address(&self, address: &str) -> Option<&str> {
        self.servers
            .values()
            .find(|s| s.address == address)
            .map(|s| s.id.as_str())
    }
}

fn xor(acc: &mut [u8; 32], id: &ChunkHash) {
    for (a, b) in acc.iter_mut().zip(id) {
        *a ^= b;
    }
}

fn remove_holder(holders: &mut HashMap<ChunkHash, Vec<String>>, chunk: &ChunkHash, id: &str) {
    if let Some(ids) = holders.get_mut(chunk) {
        ids.retain(|h| h != id);
        if ids.is_empty() {
            holders.remove(chunk);
        }
    }
}

/// XOR of ids: the inventory digest both chunkservers and the registry compute.
pub fn digest_of<'a>(ids: impl IntoIterator<Item = &'a ChunkHash>) -> [u8; 32] {
    let mut d = [0; 32];
    for id in ids {
        xor(&mut d, id);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ChunkHash {
        [n; 32]
    }

    fn report(id: &str, added: &[ChunkHash], removed: &[ChunkHash], all: &[ChunkHash]) -> Report {
        Report {
            id: id.into(),
            address: format!("{id}:1"),
            zone: "z".into(),
            capacity_bytes: 100,
            used_bytes: 10,
            chunk_count: all.len() as u64,
            digest: digest_of(all),
            added: added.to_vec(),
            removed: removed.to_vec(),
            lineage: Vec::new(),
            wall_ms: 0,
        }
    }

    #[test]
    fn deltas_that_add_up_need_no_inventory() {
        let mut r = Registry::new(1_000);
        assert!(!r.heartbeat(report("a", &[c(1), c(2)], &[], &[c(1), c(2)]), 0));
        assert!(!r.heartbeat(report("a", &[c(3)], &[c(1)], &[c(2), c(3)]), 10));
        assert_eq!(r.holders().get(&c(1)), None);
        assert_eq!(r.holders()[&c(3)], vec!["a".to_string()]);
    }

    #[test]
    fn lost_delta_is_detected_and_healed_by_inventory() {
        let mut r = Registry::new(1_000);
        // The server holds 1 and 2 but the registry only heard about 1.
        assert!(r.heartbeat(report("a", &[c(1)], &[], &[c(1), c(2)]), 0));
        r.replace_inventory("a", [c(1), c(2)]);
        assert!(r.server("a").expect("known").inventory_in_sync());
        assert!(!r.heartbeat(report("a", &[], &[], &[c(1), c(2)]), 5));
        assert_eq!(r.holders()[&c(2)], vec!["a".to_string()]);
    }

    #[test]
    fn silent_server_fails_and_recovers() {
        let mut r = Registry::new(1_000);
        r.heartbeat(report("a", &[c(1)], &[], &[c(1)]), 0);
        let s = r.server("a").expect("known").clone();
        assert_eq!(r.health(&s, 1_000), Health::Active);
        assert_eq!(r.health(&s, 1_001), Health::Failed);
        assert!(!r.has_healthy_copy(&c(1), 5_000));
        r.heartbeat(report("a", &[], &[], &[c(1)]), 5_000);
        assert!(r.has_healthy_copy(&c(1), 5_000));
    }

    #[test]
    fn locations_put_healthy_and_least_loaded_first() {
        let mut r = Registry::new(1_000);
        let mut busy = report("busy", &[c(1)], &[], &[c(1)]);
        busy.used_bytes = 90;
        r.heartbeat(busy, 0);
        r.heartbeat(report("idle", &[c(1)], &[], &[c(1)]), 0);
        r.heartbeat(report("dead", &[c(1)], &[], &[c(1)]), 0);
        // Keep busy and idle alive; dead stops reporting.
        r.heartbeat(report("idle", &[], &[], &[c(1)]), 2_000);
        let mut b = report("busy", &[], &[], &[c(1)]);
        b.used_bytes = 90;
        r.heartbeat(b, 2_000);
        assert_eq!(r.locations(&c(1), 2_000), ["idle:1", "busy:1", "dead:1"]);
    }

    #[test]
    fn removed_servers_are_never_read_from() {
        let mut r = Registry::new(1_000);
        r.heartbeat(report("a", &[c(1)], &[], &[c(1)]), 0);
        r.set_membership("a", ChunkserverState::Removed);
        assert!(r.locations(&c(1), 0).is_empty());
        assert!(!r.has_healthy_copy(&c(1), 0));
    }
}
