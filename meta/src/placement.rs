//! Where new chunk copies go. Pure: takes a view of the chunkservers, returns an order.
//!
//! Rule: only `active` servers are candidates (failed, draining and removed ones never receive
//! new data). Candidates are ordered so that the first `k` spread over as many zones as
//! possible, and within that, servers with the most free space come first. Ties break on the
//! server id so every controller proposes the same order for the same view.

use std::collections::{BTreeMap, HashSet};

/// What placement needs to know about one chunkserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub zone: String,
    pub free_bytes: u64,
    /// Active and heartbeating: eligible for new data.
    pub eligible: bool,
}

/// Orders every eligible server not in `exclude` for receiving a new copy.
///
/// Round-robin over zones: the first pick is the freest server of the freest zone, the second
/// the freest server of a different zone, and so on; once every zone has given one server,
/// the next round starts. A caller wanting `k` copies takes the first `k`; the rest are
/// fallbacks if a target fails.
pub fn order_targets<'a>(
    candidates: impl IntoIterator<Item = &'a Candidate>,
    exclude: &HashSet<&str>,
    occupied_zones: &HashSet<&str>,
) -> Vec<&'a Candidate> {
    let mut by_zone: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        if c.eligible && !exclude.contains(c.id.as_str()) {
            by_zone.entry(c.zone.as_str()).or_default().push(c);
        }
    }
    for servers in by_zone.values_mut() {
        servers.sort_by(|a, b| b.free_bytes.cmp(&a.free_bytes).then(a.id.cmp(&b.id)));
    }
    // Zones that already hold a copy go last in each round; among the rest, the zone whose
    // best server is freest goes first.
    let mut zones: Vec<(&str, Vec<&Candidate>)> = by_zone.into_iter().collect();
    zones.sort_by(|(za, a), (zb, b)| {
        let occ_a = occupied_zones.contains(za);
        let occ_b = occupied_zones.contains(zb);
        occ_a
            .cmp(&occ_b)
            .then(b[0].free_bytes.cmp(&a[0].free_bytes))
            .then(za.cmp(zb))
    });
    let mut out = Vec::new();
    let mut round = 0;
    loop {
        let mut any = false;
        for (_, servers) in &zones {
            if let Some(s) = servers.get(round) {
                out.push(*s);
                any = true;
            }
        }
        if !any {
            return out;
        }
        round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, zone: &str, free: u64) -> Candidate {
        Candidate {
            id: id.into(),
            zone: zone.into(),
            free_bytes: free,
            eligible: true,
        }
    }

    fn ids(v: &[&Candidate]) -> Vec<String> {
        v.iter().map(|c| c.id.clone()).collect()
    }

    #[test]
    fn freest_first_in_one_zone() {
        let cs = [c("a", "z", 10), c("b", "z", 30), c("c", "z", 20)];
        let got = order_targets(&cs, &HashSet::new(), &HashSet::new());
        assert_eq!(ids(&got), ["b", "c", "a"]);
    }

    #[test]
    fn spreads_over_zones_before_reusing_one() {
        let cs = [
            c("a1", "a", 100),
            c("a2", "a", 90),
            c("b1", "b", 10),
            c("c1", "c", 50),
        ];
        let got = order_targets(&cs, &HashSet::new(), &HashSet::new());
        assert_eq!(ids(&got), ["a1", "c1", "b1", "a2"]);
    }

    #[test]
    fn occupied_zones_go_last_and_excluded_never_appear() {
        let cs = [c("a1", "a", 100), c("b1", "b", 10), c("b2", "b", 5)];
        let exclude: HashSet<&str> = ["b2"].into();
        let occupied: HashSet<&str> = ["a"].into();
        let got = order_targets(&cs, &exclude, &occupied);
        assert_eq!(ids(&got), ["b1", "a1"]);
    }

    #[test]
    fn ineligible_servers_are_skipped() {
        let mut dead = c("dead", "z", 1_000);
        dead.eligible = false;
        let cs = [dead, c("ok", "z", 1)];
        let got = order_targets(&cs, &HashSet::new(), &HashSet::new());
        assert_eq!(ids(&got), ["ok"]);
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let mut cs = vec![
            c("a1", "a", 7),
            c("b1", "b", 7),
            c("a2", "a", 7),
            c("c1", "c", 3),
        ];
        let first = ids(&order_targets(&cs, &HashSet::new(), &HashSet::new()));
        cs.reverse();
        let second = ids(&order_targets(&cs, &HashSet::new(), &HashSet::new()));
        assert_eq!(first, second);
    }
}
