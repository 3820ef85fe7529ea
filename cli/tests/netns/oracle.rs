//! The oracle: a ledger of every acknowledged upload and the check that, after the faults,
//! each one is either readable byte-identical or superseded by a later acknowledged write
//! under the documented winner rule (DESIGN.md section 3):
//!
//! 1. a version whose version vector is causally before another candidate's loses to it;
//! 2. among concurrent candidates the higher HLC timestamp wins, then the higher origin id,
//!    then the higher version id.
//!
//! The ledger knows causality from how the test issued its writes: write B causally follows
//! write A (same name) when B started after A was acknowledged and either the same single
//! controller committed both, or the test waited between them until every controller held
//! the same metadata ([`Ledger::barrier`]). A client session's causal context (`after`) also
//! orders timestamps: a write started after the same session's acknowledged write must get a
//! higher HLC. Writes on different sides of one partition are certainly concurrent.
//!
//! `redcloud --json` prints the wall-clock part of the HLC (`created`/`modified`, in ms); when it
//! also prints `hlc`, the oracle uses the full timestamp. Without it, two candidates in the
//! same millisecond are ordered by what the ledger knows, else either may win.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

use super::Lab;

/// One acknowledged upload.
#[derive(Clone, Debug)]
pub struct Ack {
    pub name: String,
    pub version: String,
    pub blake3: String,
    pub size: u64,
    /// Chunks in the file (`add --json`'s `chunks`).
    pub chunks: u64,
    /// The client's session (its `$REDCLOUD_HOME`).
    pub session: PathBuf,
    /// The controller that committed it, when the client had only one to try.
    pub controller: Option<String>,
    /// The full HLC, when the CLI prints it.
    pub hlc: Option<u64>,
    pub started: Instant,
    pub acked: Instant,
    /// (partition number, side) when made during a partition.
    pub partition: Option<(u32, u32)>,
}

#[derive(Default)]
pub struct Ledger {
    pub user: String,
    acks: Vec<Ack>,
    /// Times at which every controller was known to hold the same metadata.
    barriers: Vec<Instant>,
    partitions: u32,
    /// The current partition's number, while one is on.
    partition: Option<u32>,
}

/// What the oracle checked, for the test's log.
#[derive(Debug)]
pub struct Verdict {
    pub names: usize,
    pub versions: usize,
    pub conflicts: usize,
}

impl Ledger {
    pub fn new(user: &str) -> Ledger {
        Ledger {
            user: user.to_owned(),
            ..Ledger::default()
        }
    }

    /// Records an acknowledged upload made outside any partition.
    pub fn record(&mut self, ack: Ack) {
        self.acks.push(ack);
    }

    /// Records an acknowledged upload made on `side` of the current partition.
    pub fn record_on_side(&mut self, mut ack: Ack, side: u32) {
        let p = self.partition.expect("record_on_side outside a partition");
        ack.partition = Some((p, side));
        self.acks.push(ack);
    }

    pub fn begin_partition(&mut self) {
        self.partitions += 1;
        self.partition = Some(self.partitions);
    }

    pub fn end_partition(&mut self) {
        self.partition = None;
    }

    /// Call right after observing that every controller holds the same metadata: every write
    /// acknowledged before is causally before every write started after.
    pub fn barrier(&mut self) {
        self.barriers.push(Instant::now());
    }

    pub fn acks(&self) -> &[Ack] {
        &self.acks
    }

    /// Distinct chunks the acknowledged versions reference, counting only writes visible on
    /// `side` of the current partition (`None`: all). Every version is retained and every test
    /// file has its own random content, so no two versions share a chunk.
    pub fn chunks(&self, side: Option<u32>) -> u64 {
        self.acks
            .iter()
            .filter(|a| match (side, a.partition) {
                (Some(s), Some((p, a_side))) => Some(p) != self.partition || a_side == s,
                _ => true,
            })
            .map(|a| a.chunks)
            .sum()
    }

    /// `a` is known to be causally before `b` (directly; see [`Ledger::closure`]).
    fn causal_step(&self, a: &Ack, b: &Ack) -> bool {
        if a.acked >= b.started {
            return false;
        }
        let same_controller = a.controller.is_some() && a.controller == b.controller;
        let barrier = self
            .barriers
            .iter()
            .any(|t| a.acked <= *t && *t <= b.started);
        same_controller || barrier
    }

    /// Transitive closure of a relation over all acks (indices), as `before[a]` = set of b.
    fn closure(&self, step: impl Fn(&Ack, &Ack) -> bool) -> Vec<BTreeSet<usize>> {
        let n = self.acks.len();
        let mut before: Vec<BTreeSet<usize>> = (0..n)
            .map(|a| {
                (0..n)
                    .filter(|&b| a != b && step(&self.acks[a], &self.acks[b]))
                    .collect()
            })
            .collect();
        loop {
            let mut changed = false;
            for a in 0..n {
                let reach: BTreeSet<usize> = before[a]
                    .iter()
                    .flat_map(|b| before[*b].iter().copied())
                    .collect();
                for r in reach {
                    changed |= before[a].insert(r);
                }
            }
            if !changed {
                return before;
            }
        }
    }

    /// Checks every acknowledged upload on the controllers of `hosts` (each asked from its own
    /// host) and downloads every file from every one of those hosts. Panics on any violation.
    pub fn verify(&self, lab: &Lab, hosts: &[usize]) -> Verdict {
        let causal = self.closure(|a, b| self.causal_step(a, b));
        let timed = self.closure(|a, b| {
            self.causal_step(a, b) || (a.session == b.session && a.acked < b.started)
        });
        let clients: Vec<_> = hosts
            .iter()
            .map(|h| {
                let c = lab.client(&format!("oracle-h{h}"), *h, &[*h]);
                c.login(&self.user);
                c
            })
            .collect();
        let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, a) in self.acks.iter().enumerate() {
            by_name.entry(&a.name).or_default().push(i);
        }

        let conflicts: Vec<Value> = clients.iter().map(|c| c.json(&["conflicts"])).collect();
        for (c, other) in clients.iter().zip(&conflicts).skip(1) {
            assert_eq!(
                normalized_conflicts(other),
                normalized_conflicts(&conflicts[0]),
                "controllers disagree on conflicts ({} vs {})",
                c.name,
                clients[0].name
            );
        }
        let listed: BTreeMap<String, &Value> = conflicts[0]
            .as_array()
            .expect("conflicts array")
            .iter()
            .map(|c| (c["name"].as_str().unwrap_or_default().to_owned(), c))
            .collect();

        let mut versions = 0;
        for (name, idx) in &by_name {
            let histories: Vec<Value> =
                clients.iter().map(|c| c.json(&["history", name])).collect();
            for (c, h) in clients.iter().zip(&histories).skip(1) {
                assert_eq!(
                    h, &histories[0],
                    "{name}: history on {} differs from {}",
                    c.name, clients[0].name
                );
            }
            let history: BTreeMap<String, &Value> = histories[0]
                .as_array()
                .expect("history array")
                .iter()
                .map(|v| (v["version"].as_str().unwrap_or_default().to_owned(), v))
                .collect();

            // Nothing acknowledged is lost: every acked version is listed with its bytes' hash.
            for &i in idx {
                let a = &self.acks[i];
                let v = history.get(&a.version).unwrap_or_else(|| {
                    panic!(
                        "{name}: acknowledged version {} missing from history {}",
                        a.version, histories[0]
                    )
                });
                assert_eq!(v["blake3"], a.blake3.as_str(), "{name} {}: hash", a.version);
                assert_eq!(v["size"], a.size, "{name} {}: size", a.version);
                assert_eq!(v["deleted"], false, "{name} {}: deleted", a.version);
                versions += 1;
            }
            let key = |i: usize| {
                let a = &self.acks[i];
                let v = history[&a.version];
                let hlc = a
                    .hlc
                    .or_else(|| v["hlc"].as_u64())
                    .unwrap_or_else(|| v["created"].as_u64().expect("created") << 16);
                (hlc, v["origin"].as_str().unwrap_or_default().to_owned())
            };
            let exact = idx.iter().all(|&i| {
                self.acks[i].hlc.is_some() || history[&self.acks[i].version].get("hlc").is_some()
            });

            // Timestamps respect what the writer knew: a write started after the same
            // session's acknowledged write carries a higher timestamp (the session's causal
            // context). Writes ordered only by a barrier need not: a controller does not adopt
            // a peer's timestamp from beyond the skew bound (so one fast clock cannot drag the
            // cluster's), and the winner rule orders such writes by causality first (checked
            // below), not by timestamp.
            for &a in idx {
                for &b in idx.iter().filter(|&&b| {
                    self.acks[a].session == self.acks[b].session && timed[a].contains(&b)
                }) {
                    let (ka, kb) = (key(a).0, key(b).0);
                    assert!(
                        if exact { ka < kb } else { ka <= kb },
                        "{name}: {} was written after {} was acknowledged, yet its timestamp is lower ({kb} < {ka})",
                        self.acks[b].version,
                        self.acks[a].version
                    );
                }
            }

            // The winner rule over the candidates the ledger cannot order causally.
            let candidates: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&a| !idx.iter().any(|&b| causal[a].contains(&b)))
                .collect();
            let top = candidates
                .iter()
                .map(|&i| key(i).0)
                .max()
                .expect("a candidate");
            let mut winners: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| key(i).0 == top)
                .collect();
            if winners.len() > 1 {
                if exact {
                    let best = winners
                        .iter()
                        .map(|&i| (key(i).1, self.acks[i].version.clone()))
                        .max();
                    winners.retain(|&i| Some((key(i).1, self.acks[i].version.clone())) == best);
                } else {
                    // Same millisecond: a write the ledger knows came later wins; otherwise
                    // the hidden logical counters decide and any of them may win.
                    let later: Vec<usize> = winners
                        .iter()
                        .copied()
                        .filter(|&a| !winners.iter().any(|&b| timed[a].contains(&b)))
                        .collect();
                    winners = later;
                }
            }
            let heads: Vec<&str> = history
                .values()
                .filter(|v| v["head"] == true)
                .map(|v| v["version"].as_str().unwrap_or_default())
                .collect();
            assert_eq!(
                heads.len(),
                1,
                "{name}: not exactly one head: {}",
                histories[0]
            );
            let head = heads[0];
            let winner = winners
                .iter()
                .find(|&&i| self.acks[i].version == head)
                .unwrap_or_else(|| {
                    panic!(
                        "{name}: head is {head}, but the rule picks {:?} among candidates {:?} (history {})",
                        winners.iter().map(|&i| &self.acks[i].version).collect::<Vec<_>>(),
                        candidates.iter().map(|&i| &self.acks[i].version).collect::<Vec<_>>(),
                        histories[0]
                    )
                });
            let want = &self.acks[*winner];

            // Conflicts: writes on two sides of a partition must be listed, with the same
            // winner; a name whose writes the ledger orders causally must not be.
            let concurrent = candidates.iter().any(|&a| {
                candidates.iter().any(|&b| {
                    matches!((self.acks[a].partition, self.acks[b].partition),
                        (Some((pa, sa)), Some((pb, sb))) if pa == pb && sa != sb)
                })
            });
            match listed.get(*name) {
                Some(c) => {
                    assert!(
                        candidates.len() > 1,
                        "{name}: listed as a conflict but its writes are causally ordered: {c}"
                    );
                    assert_eq!(
                        c["winner"], head,
                        "{name}: conflict winner is not the head: {c}"
                    );
                    let vs: BTreeSet<&str> = c["versions"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v["version"].as_str()).collect())
                        .unwrap_or_default();
                    for &i in &candidates {
                        if concurrent {
                            assert!(
                                vs.contains(self.acks[i].version.as_str()),
                                "{name}: conflict lacks {}: {c}",
                                self.acks[i].version
                            );
                        }
                    }
                }
                None => assert!(
                    !concurrent,
                    "{name}: concurrent writes on two sides of a partition, but `conflicts` does not list it"
                ),
            }

            // Readable byte-identical from every host.
            for c in &clients {
                let (bytes, version) = c.download(name);
                assert_eq!(
                    version, want.version,
                    "{name}: {} downloads another version",
                    c.name
                );
                assert_eq!(
                    blake3::hash(&bytes).to_hex().as_str(),
                    want.blake3,
                    "{name}: bytes from {} differ from the acknowledged upload",
                    c.name
                );
            }
        }
        Verdict {
            names: by_name.len(),
            versions,
            conflicts: listed.len(),
        }
    }
}

/// Conflicts as a comparable set: name -> (winner, version ids).
fn normalized_conflicts(v: &Value) -> BTreeMap<String, (String, BTreeSet<String>)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let versions = c["versions"]
                        .as_array()
                        .map(|vs| {
                            vs.iter()
                                .filter_map(|x| x["version"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        (
                            c["winner"].as_str().unwrap_or_default().to_owned(),
                            versions,
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
