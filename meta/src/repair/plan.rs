//! Repair planning: what must be copied where. Pure: the caller passes the desired state (live
//! chunks and the replication policy) and the observed state (which server holds what, and
//! how healthy each server is) and gets back orders, fewest replicas first.
//!
//! Rules:
//! - Only copies on `Active` servers count towards the target; copies on draining servers, and
//!   on removed servers that still answer, are used as sources; copies on failed servers are
//!   neither (they count as missing until the server heartbeats again).
//! - Target: policy `All` wants a copy on every active server; `Count(n)` wants
//!   `min(n, active servers)`.
//! - A chunk with no copy on an active or draining server is *lost* (for now): nothing can be
//!   ordered until a holder comes back.
//! - Each chunk belongs to one controller by rendezvous hashing over the controllers this one
//!   sees, so controllers on the same side of a partition never duplicate work, and every
//!   side covers every chunk.

use std::collections::{HashMap, HashSet};

use crate::placement::{self, Candidate};
use crate::rendezvous;

pub use crate::cluster::ReplicationPolicy as Policy;
pub use crate::record::ChunkHash;

/// A chunkserver's health as the registry sees it right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Active,
    Draining,
    Failed,
    Removed,
}

/// What planning needs to know about one chunkserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub zone: String,
    pub free_bytes: u64,
    pub health: Health,
    /// Heartbeating within the timeout (a removed server that still answers is a source).
    pub alive: bool,
}

/// One copy to make: `target` pulls `chunk` from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub chunk: ChunkHash,
    pub size: u64,
    pub source: String,
    pub target: String,
    /// Copies on active servers when planned (orders are sorted by this).
    pub replicas: usize,
}

/// The result of one planning pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub orders: Vec<Order>,
    /// Live chunks with fewer active copies than the target (all of them, not only ours).
    pub under_replicated: u64,
    /// Live chunks with no copy on any active or draining server.
    pub lost: u64,
}

/// Everything a planning pass reads.
#[derive(Debug)]
pub struct Input<'a> {
    pub policy: Policy,
    pub servers: &'a [Server],
    /// Which servers hold each chunk (from heartbeats and inventories).
    pub holders: &'a HashMap<ChunkHash, Vec<String>>,
    /// This controller's id and every controller it can currently see (itself included).
    pub me: &'a str,
    pub controllers: &'a [String],
    /// Chunks with an order already in flight or backing off: not planned again.
    pub busy: &'a HashSet<ChunkHash>,
    /// Upper bound on orders returned.
    pub max_orders: usize,
}

/// Plans repair for `live` chunks (hash and size).
pub fn plan(input: &Input<'_>, live: impl IntoIterator<Item = (ChunkHash, u64)>) -> Plan {
    let by_id: HashMap<&str, &Server> = input.servers.iter().map(|s| (s.id.as_str(), s)).collect();
    let active = input
        .servers
        .iter()
        .filter(|s| s.health == Health::Active)
        .count();
    let target = match input.policy {
        Policy::All => active,
        Policy::Count(n) => (n as usize).min(active),
    };
    let candidates: Vec<Candidate> = input
        .servers
        .iter()
        .map(|s| Candidate {
            id: s.id.clone(),
            zone: s.zone.clone(),
            free_bytes: s.free_bytes,
            eligible: s.health == Health::Active,
        })
        .collect();

    let mut plan = Plan::default();
    let mut orders = Vec::new();
    let no_holders = Vec::new();
    let is_source = |s: &Server| match s.health {
        Health::Active | Health::Draining => true,
        Health::Removed => s.alive,
        Health::Failed => false,
    };
    for (chunk, size) in live {
        let holders = input.holders.get(&chunk).unwrap_or(&no_holders);
        let health = |id: &String| by_id.get(id.as_str()).map(|s| s.health);
        let on_active: Vec<&String> = holders
            .iter()
            .filter(|h| health(h) == Some(Health::Active))
            .collect();
        let sources: Vec<&String> = holders
            .iter()
            .filter(|h| by_id.get(h.as_str()).is_some_and(|s| is_source(s)))
            .collect();
        if sources.is_empty() {
            plan.lost += 1;
            continue;
        }
        if on_active.len() >= target {
            continue;
        }
        plan.under_replicated += 1;
        if input.busy.contains(&chunk)
            || rendezvous::owner(&chunk, input.controllers) != Some(input.me)
        {
            continue;
        }
        let exclude: HashSet<&str> = holders.iter().map(String::as_str).collect();
        let zones: HashSet<&str> = on_active
            .iter()
            .filter_map(|h| by_id.get(h.as_str()).map(|s| s.zone.as_str()))
            .collect();
        let targets = placement::order_targets(&candidates, &exclude, &zones);
        let missing = target - on_active.len();
        for (i, t) in targets.into_iter().take(missing).enumerate() {
            // Spread the read load over the sources deterministically.
            let source = sources[(chunk[0] as usize + i) % sources.len()];
            orders.push(Order {
                chunk,
                size,
                source: source.clone(),
                target: t.id.clone(),
                replicas: on_active.len(),
            });
        }
    }
    orders.sort_by(|a, b| a.replicas.cmp(&b.replicas).then(a.chunk.cmp(&b.chunk)));
    orders.truncate(input.max_orders);
    plan.orders = orders;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn server(id: &str, health: Health) -> Server {
        Server {
            id: id.into(),
            zone: "z".into(),
            free_bytes: 1 << 30,
            health,
            alive: health != Health::Failed,
        }
    }

    fn chunk(n: u8) -> ChunkHash {
        [n; 32]
    }

    fn run(
        policy: Policy,
        servers: &[Server],
        holders: &HashMap<ChunkHash, Vec<String>>,
        live: &[ChunkHash],
    ) -> Plan {
        let controllers = vec!["me".to_string()];
        let input = Input {
            policy,
            servers,
            holders,
            me: "me",
            controllers: &controllers,
            busy: &HashSet::new(),
            max_orders: usize::MAX,
        };
        plan(&input, live.iter().map(|c| (*c, 10)))
    }

    #[test]
    fn new_server_receives_every_chunk_under_policy_all() {
        let servers = [
            server("a", Health::Active),
            server("b", Health::Active),
            server("new", Health::Active),
        ];
        let holders: HashMap<_, _> = (0..5)
            .map(|i| (chunk(i), vec!["a".to_string(), "b".to_string()]))
            .collect();
        let live: Vec<_> = (0..5).map(chunk).collect();
        let p = run(Policy::All, &servers, &holders, &live);
        assert_eq!(p.under_replicated, 5);
        assert_eq!(p.orders.len(), 5);
        assert!(p.orders.iter().all(|o| o.target == "new"));
        assert!(p.orders.iter().all(|o| o.source == "a" || o.source == "b"));
    }

    #[test]
    fn fewest_replicas_first() {
        let servers = [
            server("a", Health::Active),
            server("b", Health::Active),
            server("c", Health::Active),
        ];
        let mut holders = HashMap::new();
        holders.insert(chunk(1), vec!["a".to_string(), "b".to_string()]);
        holders.insert(chunk(2), vec!["a".to_string()]);
        let p = run(Policy::All, &servers, &holders, &[chunk(1), chunk(2)]);
        assert_eq!(p.orders[0].chunk, chunk(2));
        assert_eq!(p.orders[0].replicas, 1);
        // chunk 2 misses two copies, chunk 1 one.
        assert_eq!(p.orders.len(), 3);
    }

    #[test]
    fn copies_on_failed_servers_do_not_count_and_are_not_sources() {
        let servers = [server("a", Health::Failed), server("b", Health::Active)];
        let mut holders = HashMap::new();
        holders.insert(chunk(1), vec!["a".to_string()]);
        holders.insert(chunk(2), vec!["a".to_string(), "b".to_string()]);
        let p = run(Policy::Count(2), &servers, &holders, &[chunk(1), chunk(2)]);
        assert_eq!(p.lost, 1, "chunk 1 has no healthy copy");
        // Only one active server, so the target is one copy: chunk 2 is fine.
        assert_eq!(p.under_replicated, 0);
        assert!(p.orders.is_empty());
    }

    #[test]
    fn draining_server_is_a_source_but_not_a_copy() {
        let servers = [server("old", Health::Draining), server("b", Health::Active)];
        let mut holders = HashMap::new();
        holders.insert(chunk(1), vec!["old".to_string()]);
        let p = run(Policy::Count(1), &servers, &holders, &[chunk(1)]);
        assert_eq!(p.orders.len(), 1);
        assert_eq!(p.orders[0].source, "old");
        assert_eq!(p.orders[0].target, "b");
    }

    #[test]
    fn a_removed_server_that_still_answers_is_a_source() {
        let mut servers = vec![server("gone", Health::Removed), server("b", Health::Active)];
        let mut holders = HashMap::new();
        holders.insert(chunk(1), vec!["gone".to_string()]);
        let p = run(Policy::Count(1), &servers, &holders, &[chunk(1)]);
        assert_eq!(p.lost, 0);
        assert_eq!(p.orders.len(), 1);
        assert_eq!(p.orders[0].source, "gone");
        // Silent and removed: nothing to read from.
        servers[0].alive = false;
        let p = run(Policy::Count(1), &servers, &holders, &[chunk(1)]);
        assert_eq!(p.lost, 1);
    }

    #[test]
    fn chunks_owned_by_other_controllers_are_counted_not_ordered() {
        let servers = [server("a", Health::Active), server("b", Health::Active)];
        let holders: HashMap<_, _> = (0..50).map(|i| (chunk(i), vec!["a".to_string()])).collect();
        let live: Vec<_> = (0..50).map(chunk).collect();
        let controllers = vec!["me".to_string(), "other".to_string()];
        let mut total = 0;
        for me in ["me", "other"] {
            let input = Input {
                policy: Policy::All,
                servers: &servers,
                holders: &holders,
                me,
                controllers: &controllers,
                busy: &HashSet::new(),
                max_orders: usize::MAX,
            };
            let p = plan(&input, live.iter().map(|c| (*c, 1)));
            assert_eq!(p.under_replicated, 50);
            total += p.orders.len();
        }
        assert_eq!(total, 50, "each chunk ordered by exactly one controller");
    }

    proptest! {
        /// Whatever the state, an order never targets a server that holds the chunk or is not
        /// active, always reads from a healthy holder, and never asks for more copies than
        /// the target.
        #[test]
        fn orders_are_always_sane(
            healths in proptest::collection::vec(0u8..4, 1..6),
            holding in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 6), 1..20),
            copies in 1u32..5,
            all in any::<bool>(),
        ) {
            let servers: Vec<Server> = healths.iter().enumerate().map(|(i, h)| server(
                &format!("s{i}"),
                [Health::Active, Health::Draining, Health::Failed, Health::Removed][*h as usize],
            )).collect();
            let mut holders = HashMap::new();
            let mut live = Vec::new();
            for (c, row) in holding.iter().enumerate() {
                let hs: Vec<String> = servers.iter().zip(row).filter(|(_, h)| **h).map(|(s, _)| s.id.clone()).collect();
                holders.insert(chunk(c as u8), hs);
                live.push(chunk(c as u8));
            }
            let policy = if all { Policy::All } else { Policy::Count(copies) };
            let p = run(policy, &servers, &holders, &live);
            let health: HashMap<&str, Health> = servers.iter().map(|s| (s.id.as_str(), s.health)).collect();
            let active = servers.iter().filter(|s| s.health == Health::Active).count();
            let target = if all { active } else { (copies as usize).min(active) };
            let mut per_chunk: HashMap<ChunkHash, usize> = HashMap::new();
            for o in &p.orders {
                let hs = &holders[&o.chunk];
                prop_assert!(!hs.contains(&o.target));
                prop_assert_eq!(health[o.target.as_str()], Health::Active);
                prop_assert!(hs.contains(&o.source));
                prop_assert!(matches!(health[o.source.as_str()], Health::Active | Health::Draining | Health::Removed));
                *per_chunk.entry(o.chunk).or_default() += 1;
            }
            // Every chunk that has a healthy source is brought exactly up to the target.
            for c in &live {
                let hs = &holders[c];
                let have = hs.iter().filter(|h| health[h.as_str()] == Health::Active).count();
                let has_source = hs.iter().any(|h| matches!(health[h.as_str()], Health::Active | Health::Draining | Health::Removed));
                let n = per_chunk.get(c).copied().unwrap_or(0);
                if has_source && have < target {
                    prop_assert_eq!(have + n, target);
                } else {
                    prop_assert_eq!(n, 0);
                }
            }
        }
    }
}
