//! Randomized fault schedules, Jepsen style, on real `redcloud` processes in network-namespace
//! hosts (see `netns/`).
//!
//! From a seed, a schedule of phases: in each, the **nemesis** injects one fault (a partition
//! into halves, one host cut off, a one-way or lossy link, `kill -9` of a controller or a
//! chunkserver, a clock jump of minutes or days, a wiped controller rejoining, a drain or an
//! undrain, a new chunkserver) while **clients** (two users on three hosts, each on its own
//! controller) add files and new versions, delete, restore, edit tags and download. Every
//! acknowledged operation is recorded with its version id and HLC; an operation whose outcome
//! is unknown (a timeout) is recorded as maybe-applied.
//!
//! After healing and quiescence the **checker** asserts what users depend on:
//! - every controller holds the same metadata (digests) and the same history of every file;
//! - every acknowledged version is in that history, with its hash and size;
//! - each file's head is the result of an operation that no other known operation on the file
//!   causally follows, and among writes certainly concurrent (two sides of one partition) the
//!   one the winner rule picks (highest HLC, then origin, then version id);
//! - a later write in a client session carries a higher HLC than the session's earlier one;
//! - every retained version downloads byte-identical from every controller's host (so no
//!   chunk of a retained version was ever deleted), every chunk is on every active chunkserver
//!   (the policy is `all`), none under-replicated or lost;
//! - no daemon died and no log holds a panic.
//!
//! CI runs the seeds in [`CI_SEEDS`]; `REDCLOUD_JEPSEN_SEEDS=1,2,3` runs others (a failing
//! seed is printed and replays the same schedule), `scripts/soak.sh N` runs N random seeds.
//! Controllers run with a short GC grace (2 s), so orphan collection runs during the faults.

mod common;
mod netns;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use netns::{Client, Discovery, Lab};
use serde_json::Value;

/// The seeds CI runs.
const CI_SEEDS: [u64; 3] = [11, 29, 47];
/// Phases per schedule (override: `REDCLOUD_JEPSEN_PHASES`).
const PHASES: usize = 10;
/// Client operations per phase.
const OPS_PER_PHASE: usize = 6;
const HOSTS: usize = 5;
/// Controllers run on these hosts.
const CONTROLLERS: [usize; 3] = [1, 2, 3];
/// Chunkservers at the start; host 5 may get one later.
const CHUNKSERVERS: [usize; 4] = [1, 2, 3, 4];
const NEW_CHUNKSERVER_HOST: usize = 5;
/// Bound on quiescence after the last fault.
const CONVERGE: Duration = Duration::from_secs(150);
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Trash retention of the cluster: short, so deleted files are purged during a run.
const TRASH_RETENTION: Duration = Duration::from_secs(10);
const TRASH_RETENTION_ARG: &str = "10000";
/// How many times the check reads a file's history from every host before calling a
/// difference divergence (a purge in flight reaches the hosts one after another).
const HISTORY_READS: usize = 3;

/// SplitMix64: small, seedable, good enough to pick faults and operations.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// The schedule: pure, from the seed.

#[derive(Clone, Debug, PartialEq)]
enum Fault {
    Quiet,
    /// Two groups of hosts that cannot reach each other.
    Halves(Vec<usize>, Vec<usize>),
    /// One host cut off from all others.
    Isolate(usize),
    /// `from` cannot send to `to`.
    OneWay(usize, usize),
    Lossy(usize, usize, u32),
    KillController(usize),
    KillChunkserver(usize),
    /// The controller restarts with its clock this far off.
    ClockJump(usize, i64),
    /// The controller's data directory is deleted; it rejoins as a new node.
    Wipe(usize),
    Drain(usize),
    Undrain(usize),
    NewChunkserver,
}

#[derive(Clone, Debug)]
enum Op {
    Add {
        client: usize,
        name: usize,
        seed: u64,
        size: usize,
    },
    Delete {
        client: usize,
        name: usize,
    },
    Restore {
        client: usize,
        name: usize,
        pick: usize,
    },
    Tag {
        client: usize,
        name: usize,
        add: bool,
    },
    Download {
        client: usize,
        name: usize,
    },
}

#[derive(Clone, Debug)]
struct Phase {
    fault: Fault,
    /// How long the fault acts before the clients start, and after they finish (ms): long
    /// enough, at times, for heartbeats to time out (3 s) and the sides to notice.
    dwell_ms: u64,
    ops: Vec<Op>,
}

/// (user, host) of each client; each talks to the controller on its host.
const CLIENTS: [(&str, usize); 4] = [("alice", 1), ("alice", 2), ("bob", 3), ("bob", 1)];
const NAMES: [&str; 3] = ["a", "b", "c"];

fn schedule(seed: u64, phases: usize) -> Vec<Phase> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for _ in 0..phases {
        let fault = match rng.below(13) {
            0 => Fault::Quiet,
            1 | 2 => {
                let mut a = Vec::new();
                let mut b = Vec::new();
                for h in 1..=HOSTS {
                    if rng.below(2) == 0 {
                        a.push(h)
                    } else {
                        b.push(h)
                    }
                }
                if a.is_empty() || b.is_empty() {
                    Fault::Isolate(rng.pick(&CONTROLLERS))
                } else {
                    Fault::Halves(a, b)
                }
            }
            3 => Fault::Isolate(1 + rng.below(HOSTS)),
            4 => {
                let a = rng.pick(&CONTROLLERS);
                let b = 1 + (a + rng.below(HOSTS - 1)) % HOSTS;
                Fault::OneWay(a, b)
            }
            5 => {
                let a = rng.pick(&CONTROLLERS);
                let b = rng.pick(&CONTROLLERS);
                let b = if a == b { 1 + a % 3 } else { b };
                Fault::Lossy(a, b, 20 + 10 * rng.below(4) as u32)
            }
            6 => Fault::KillController(rng.pick(&CONTROLLERS)),
            7 => Fault::KillChunkserver(rng.pick(&CHUNKSERVERS)),
            8 => {
                let offset = match rng.below(4) {
                    0 => 3 * 60_000,
                    1 => -5 * 60_000,
                    2 => 8 * DAY_MS,
                    _ => -3 * DAY_MS,
                };
                Fault::ClockJump(rng.pick(&CONTROLLERS), offset)
            }
            9 => Fault::Wipe(rng.pick(&CONTROLLERS)),
            10 => Fault::Drain(rng.pick(&CHUNKSERVERS)),
            11 => Fault::Undrain(rng.pick(&CHUNKSERVERS)),
            _ => Fault::NewChunkserver,
        };
        let ops = (0..OPS_PER_PHASE)
            .map(|_| {
                let client = rng.below(CLIENTS.len());
                let name = rng.below(NAMES.len());
                match rng.below(10) {
                    0..=3 => Op::Add {
                        client,
                        name,
                        seed: rng.next(),
                        size: 50_000 + rng.below(1_500_000),
                    },
                    4 => Op::Delete { client, name },
                    5 => Op::Restore {
                        client,
                        name,
                        pick: rng.below(64),
                    },
                    6 => Op::Tag {
                        client,
                        name,
                        add: rng.below(2) == 0,
                    },
                    _ => Op::Download { client, name },
                }
            })
            .collect();
        let dwell_ms = 500 + 500 * rng.below(8) as u64;
        out.push(Phase {
            fault,
            dwell_ms,
            ops,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The history: what the clients were told.

#[derive(Clone, Debug, PartialEq)]
enum Effect {
    /// A new head version with this content (add or restore).
    Put {
        version: String,
        blake3: String,
        size: u64,
        hlc: u64,
    },
    Delete,
}

#[derive(Clone, Debug)]
struct Record {
    user: &'static str,
    name: &'static str,
    client: usize,
    /// The controller (host) and its incarnation (bumped by a wipe).
    controller: (usize, u32),
    effect: Effect,
    started: Instant,
    /// `None`: the outcome is unknown (the command failed in a way that may have committed).
    acked: Option<Instant>,
    /// (partition number, side) when made during a partition.
    side: Option<(u32, usize)>,
    /// Content hash of a maybe-applied add.
    maybe_blake3: Option<String>,
}

#[derive(Default)]
struct History {
    records: Vec<Record>,
    barriers: Vec<Instant>,
    /// Content hashes uploaded per (user, name), acknowledged or not.
    contents: HashMap<(&'static str, &'static str), BTreeSet<String>>,
}

impl History {
    /// `a` is known to be causally before `b`: acknowledged before `b` started, and either the
    /// same controller incarnation committed both, or every controller held the same metadata
    /// in between.
    fn before(&self, a: &Record, b: &Record) -> bool {
        let Some(acked) = a.acked else {
            return false;
        };
        if acked >= b.started {
            return false;
        }
        a.controller == b.controller || self.barriers.iter().any(|t| acked <= *t && *t <= b.started)
    }
}

// ---------------------------------------------------------------------------------------------
// The driver.

struct Run {
    seed: u64,
    lab: Lab,
    clients: Vec<Client>,
    history: History,
    /// Incarnation per controller host.
    epoch: HashMap<usize, u32>,
    /// Current partition: number and groups.
    partition: Option<(u32, Vec<Vec<usize>>)>,
    partitions: u32,
    drained: BTreeSet<usize>,
    chunkservers: Vec<usize>,
    /// Controller ids replaced by a wipe, to forget once the new node runs.
    forgotten: Vec<String>,
}

fn ctl(h: usize) -> String {
    format!("ctl{h}")
}

fn cs(h: usize) -> String {
    format!("cs{h}")
}

/// `history NAME` as JSON; a file purged from the trash (or never created) has an empty one.
fn history_of(c: &Client, name: &str) -> Value {
    let out = c.run(&["--json", "history", name]);
    if out.status.success() {
        return serde_json::from_slice(&out.stdout).expect("history JSON");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found"),
        "[{}] history {name}: {err}",
        c.name
    );
    Value::Array(Vec::new())
}

/// The command was refused before it could change anything (so it certainly did not apply).
fn refused(stderr: &str) -> bool {
    let e = stderr.to_lowercase();
    [
        "not found",
        "unauthenticated",
        "invalid",
        "no file",
        "does not exist",
    ]
    .iter()
    .any(|w| e.contains(w))
}

fn data(seed: u64, size: usize) -> Vec<u8> {
    common::bytes(size, seed)
}

impl Run {
    fn start(seed: u64) -> Option<Run> {
        let mut lab = Lab::up(&format!("jepsen-{seed}"), HOSTS)?;
        for &h in &CONTROLLERS {
            lab.start_controller_with(
                h,
                Discovery::Bootstrap(CONTROLLERS.to_vec()),
                0,
                &[
                    "--gc-grace-ms",
                    "2000",
                    "--trash-retention-ms",
                    TRASH_RETENTION_ARG,
                ],
            );
        }
        for &h in &CHUNKSERVERS {
            lab.start_chunkserver(h, &CONTROLLERS);
        }
        lab.wait_for(CONVERGE, "the cluster is up", |l| {
            l.converged(&CONTROLLERS, &CHUNKSERVERS, 0)
        });
        let clients: Vec<Client> = CLIENTS
            .iter()
            .enumerate()
            .map(|(i, (user, host))| {
                let c = lab.client(&format!("{user}-{i}"), *host, &[*host]);
                c.login(user);
                c
            })
            .collect();
        Some(Run {
            seed,
            lab,
            clients,
            history: History::default(),
            epoch: CONTROLLERS.iter().map(|h| (*h, 0)).collect(),
            partition: None,
            partitions: 0,
            drained: BTreeSet::new(),
            chunkservers: CHUNKSERVERS.to_vec(),
            forgotten: Vec::new(),
        })
    }

    fn side_of(&self, host: usize) -> Option<(u32, usize)> {
        let (n, groups) = self.partition.as_ref()?;
        groups
            .iter()
            .position(|g| g.contains(&host))
            .map(|side| (*n, side))
    }

    fn chunkserver_id(&self, host: usize) -> Option<String> {
        let addr = format!("{}:{}", netns::ip(host), netns::CHUNKSERVER_PORT);
        CONTROLLERS.iter().find_map(|&c| {
            self.lab.status(c).and_then(|s| {
                s["chunkservers"].as_array().and_then(|a| {
                    a.iter()
                        .find(|x| x["address"] == addr.as_str())
                        .and_then(|x| x["id"].as_str().map(str::to_owned))
                })
            })
        })
    }

    fn admin(&self, args: &[&str]) -> bool {
        // Admin commands need no session; any controller that answers will do.
        CONTROLLERS
            .iter()
            .any(|&h| self.lab.client("admin", h, &[h]).run(args).status.success())
    }

    /// Waits (bounded, without failing) until every running controller holds the same
    /// metadata; records a barrier when they do.
    fn try_barrier(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.lab.metadata_equal(&CONTROLLERS) {
                self.history.barriers.push(Instant::now());
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    }

    fn inject(&mut self, fault: &Fault) {
        eprintln!("[jepsen {}] nemesis: {fault:?}", self.seed);
        match fault {
            Fault::Quiet => {}
            Fault::Halves(a, b) => {
                self.lab.partition(&[a.as_slice(), b.as_slice()]);
                self.partitions += 1;
                self.partition = Some((self.partitions, vec![a.clone(), b.clone()]));
            }
            Fault::Isolate(h) => {
                let rest: Vec<usize> = (1..=HOSTS).filter(|x| x != h).collect();
                self.lab.partition(&[rest.as_slice(), &[*h]]);
                self.partitions += 1;
                self.partition = Some((self.partitions, vec![rest, vec![*h]]));
            }
            Fault::OneWay(a, b) => self.lab.oneway(*a, *b),
            Fault::Lossy(a, b, p) => self.lab.lossy(*a, *b, *p),
            Fault::KillController(h) => self.lab.kill9(&ctl(*h)),
            Fault::KillChunkserver(h) => {
                if self.lab.is_up(&cs(*h)) {
                    self.lab.kill9(&cs(*h));
                }
            }
            Fault::ClockJump(h, offset) => {
                self.lab.kill9(&ctl(*h));
                self.lab.restart_with_clock(&ctl(*h), *offset);
            }
            Fault::Wipe(h) => {
                // Wiping a controller that alone holds acknowledged writes loses them by the
                // operator's hand: wipe only once every controller holds the same metadata.
                if !self.try_barrier(Duration::from_secs(60)) {
                    eprintln!("[jepsen {}] no barrier; wipe skipped", self.seed);
                    return;
                }
                let old = self
                    .lab
                    .status(*h)
                    .and_then(|s| s["controller"]["id"].as_str().map(str::to_owned));
                self.lab.kill9(&ctl(*h));
                self.lab.wipe(&ctl(*h));
                self.lab.restart(&ctl(*h));
                *self.epoch.entry(*h).or_default() += 1;
                if let Some(old) = old {
                    self.forgotten.push(old);
                }
            }
            Fault::Drain(h) => {
                if let Some(id) = self.chunkserver_id(*h)
                    && self.admin(&["drain", &id])
                {
                    self.drained.insert(*h);
                }
            }
            Fault::Undrain(h) => {
                if let Some(id) = self.chunkserver_id(*h)
                    && self.admin(&["undrain", &id])
                {
                    self.drained.remove(h);
                }
            }
            Fault::NewChunkserver => {
                if !self.lab.has_node(&cs(NEW_CHUNKSERVER_HOST)) {
                    self.lab
                        .start_chunkserver(NEW_CHUNKSERVER_HOST, &CONTROLLERS);
                    self.chunkservers.push(NEW_CHUNKSERVER_HOST);
                }
            }
        }
    }

    /// Ends the phase's fault: heal the network, restart what was killed.
    fn recover(&mut self) {
        self.lab.heal();
        self.lab.clear_faults();
        self.partition = None;
        for h in CONTROLLERS {
            if !self.lab.is_up(&ctl(h)) {
                self.lab.restart(&ctl(h));
            }
        }
        for h in self.chunkservers.clone() {
            if !self.lab.is_up(&cs(h)) {
                self.lab.restart(&cs(h));
            }
        }
    }

    fn record(&mut self, client: usize, name: usize, effect: Effect, started: Instant, ok: bool) {
        let (user, host) = CLIENTS[client];
        let maybe_blake3 = match (&effect, ok) {
            (Effect::Put { blake3, .. }, false) => Some(blake3.clone()),
            _ => None,
        };
        self.history.records.push(Record {
            user,
            name: NAMES[name],
            client,
            controller: (host, self.epoch[&host]),
            effect,
            started,
            acked: ok.then(Instant::now),
            side: self.side_of(host),
            maybe_blake3,
        });
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Add {
                client,
                name,
                seed,
                size,
            } => {
                let (user, _) = CLIENTS[*client];
                let bytes = data(*seed, *size);
                let hash = blake3::hash(&bytes).to_hex().to_string();
                self.history
                    .contents
                    .entry((user, NAMES[*name]))
                    .or_default()
                    .insert(hash.clone());
                let started = Instant::now();
                let tag = format!("n-{}", NAMES[*name]);
                match self.clients[*client].try_add(NAMES[*name], &bytes, &tag) {
                    Ok(ack) => self.record(
                        *client,
                        *name,
                        Effect::Put {
                            version: ack.version,
                            blake3: ack.blake3,
                            size: ack.size,
                            hlc: ack.hlc.unwrap_or(0),
                        },
                        started,
                        true,
                    ),
                    Err(_) => self.record(
                        *client,
                        *name,
                        Effect::Put {
                            version: String::new(),
                            blake3: hash,
                            size: bytes.len() as u64,
                            hlc: 0,
                        },
                        started,
                        false,
                    ),
                }
            }
            Op::Delete { client, name } => {
                let started = Instant::now();
                let tag = format!("n-{}", NAMES[*name]);
                let out = self.clients[*client].run(&["--json", "delete", &tag]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let deleted = out.status.success()
                    && serde_json::from_str::<Value>(&text).is_ok_and(|v| {
                        v["deleted"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|n| n == NAMES[*name]))
                    });
                let refused = refused(&String::from_utf8_lossy(&out.stderr))
                    || (out.status.success() && !deleted);
                if deleted {
                    self.record(*client, *name, Effect::Delete, started, true);
                } else if !refused {
                    self.record(*client, *name, Effect::Delete, started, false);
                }
            }
            Op::Restore { client, name, pick } => {
                let (user, _) = CLIENTS[*client];
                let versions: Vec<&Record> = self
                    .history
                    .records
                    .iter()
                    .filter(|r| r.user == user && r.name == NAMES[*name] && r.acked.is_some())
                    .filter(|r| matches!(r.effect, Effect::Put { .. }))
                    .collect();
                if versions.is_empty() {
                    return;
                }
                let Effect::Put {
                    version,
                    blake3,
                    size,
                    ..
                } = versions[pick % versions.len()].effect.clone()
                else {
                    return;
                };
                let started = Instant::now();
                let out = self.clients[*client].run(&["--json", "restore", NAMES[*name], &version]);
                if out.status.success() {
                    let v: Value = serde_json::from_slice(&out.stdout).expect("restore JSON");
                    assert_eq!(v["blake3"], blake3.as_str(), "restore answered other bytes");
                    self.record(
                        *client,
                        *name,
                        Effect::Put {
                            version: v["version"].as_str().unwrap_or_default().to_owned(),
                            blake3,
                            size,
                            hlc: v["hlc"].as_u64().unwrap_or(0),
                        },
                        started,
                        true,
                    );
                } else {
                    if !refused(&String::from_utf8_lossy(&out.stderr)) {
                        self.record(
                            *client,
                            *name,
                            Effect::Put {
                                version: String::new(),
                                blake3,
                                size,
                                hlc: 0,
                            },
                            started,
                            false,
                        );
                    }
                }
            }
            Op::Tag { client, name, add } => {
                let tag = format!("n-{}", NAMES[*name]);
                let args: [&str; 4] = if *add {
                    ["add-tags", &tag, "--add", "extra"]
                } else {
                    ["delete-tags", &tag, "--remove", "extra"]
                };
                let _ = self.clients[*client].run(&args);
            }
            Op::Download { client, name } => {
                let (user, _) = CLIENTS[*client];
                if let Ok((bytes, _)) = self.clients[*client].try_download(NAMES[*name]) {
                    let hash = blake3::hash(&bytes).to_hex().to_string();
                    let known = self
                        .history
                        .contents
                        .get(&(user, NAMES[*name]))
                        .is_some_and(|c| c.contains(&hash));
                    assert!(
                        known,
                        "seed {}: {user}/{} downloaded bytes nobody uploaded",
                        self.seed, NAMES[*name]
                    );
                }
            }
        }
    }

    /// Heals everything, undrains, forgets wiped identities, and waits for quiescence.
    fn quiesce(&mut self) {
        self.recover();
        for h in self.drained.clone() {
            if let Some(id) = self.chunkserver_id(h) {
                assert!(self.admin(&["undrain", &id]), "undrain {h}");
            }
        }
        self.drained.clear();
        for id in self.forgotten.clone() {
            assert!(
                self.admin(&["forget-controller", &id]),
                "forget-controller {id}"
            );
        }
        let css = self.chunkservers.clone();
        let took = self.lab.wait_for(CONVERGE, "every replica converges", |l| {
            let Some(total) = l.status(1).and_then(|s| s["chunks"]["total"].as_u64()) else {
                return false;
            };
            l.converged(&CONTROLLERS, &css, total)
        });
        self.lab.measured("quiescence after the last fault", took);
    }

    fn check(&mut self) {
        let hosts = CONTROLLERS;
        let checked_at = Instant::now();
        let mut by_file: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for (i, r) in self.history.records.iter().enumerate() {
            by_file.entry((r.user, r.name)).or_default().push(i);
        }
        let mut versions_checked = 0;
        let mut purged = 0;
        for ((user, name), idx) in &by_file {
            let readers: Vec<Client> = hosts
                .iter()
                .map(|&h| {
                    let c = self.lab.client(&format!("check-{user}-{h}"), h, &[h]);
                    c.login(user);
                    c
                })
                .collect();
            // The trash may expire while the check runs, and a purge reaches the hosts one by
            // one: histories that differ are read again, a bounded number of times.
            let mut histories: Vec<Value> = Vec::new();
            // When the history used below was read: a purge it shows happened before this.
            let mut read_at = checked_at;
            for attempt in 1..=HISTORY_READS {
                histories = readers.iter().map(|c| history_of(c, name)).collect();
                read_at = Instant::now();
                if histories.iter().all(|h| h == &histories[0]) || attempt == HISTORY_READS {
                    break;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            for (c, h) in readers.iter().zip(&histories).skip(1) {
                assert_eq!(
                    h, &histories[0],
                    "{user}/{name}: history on {} differs",
                    c.name
                );
            }
            let history: BTreeMap<String, &Value> = histories[0]
                .as_array()
                .expect("history array")
                .iter()
                .map(|v| (v["version"].as_str().unwrap_or_default().to_owned(), v))
                .collect();
            let recs: Vec<&Record> = idx.iter().map(|&i| &self.history.records[i]).collect();

            // A delete that has been in the trash for the whole retention by `at` (by real
            // time: no controller can know it longer) may have been purged, with every version
            // before it. A delete may follow a write that started at `written` unless it was
            // acknowledged before: one still in flight can reach the controllers after the
            // write, whatever the order in which the clients saw their answers.
            let purged_by_at = |written: Instant, at: Instant| {
                recs.iter().any(|d| {
                    d.effect == Effect::Delete
                        && d.acked.is_none_or(|a| a > written)
                        && at.saturating_duration_since(d.started) >= TRASH_RETENTION
                })
            };
            // Trash age counts to when this file's history was read, not to when the check
            // began: the files before it take seconds to check, and a purge in that time is
            // legitimate (it made seed 47 fail once).
            let purged_by = |written: Instant| purged_by_at(written, read_at);
            let deletes = || {
                recs.iter()
                    .filter(|d| d.effect == Effect::Delete)
                    .map(|d| {
                        format!(
                            "delete by client {} started {:?} before the read, {}",
                            d.client,
                            read_at.saturating_duration_since(d.started),
                            d.acked.map_or("not acknowledged".to_owned(), |a| format!(
                                "acknowledged {:?} after it started",
                                a.saturating_duration_since(d.started)
                            ))
                        )
                    })
                    .collect::<Vec<_>>()
            };
            // Nothing acknowledged is lost (but to an expired trash).
            for r in recs.iter().filter(|r| r.acked.is_some()) {
                if let Effect::Put {
                    version,
                    blake3,
                    size,
                    ..
                } = &r.effect
                {
                    let Some(v) = history.get(version) else {
                        assert!(
                            purged_by(r.started),
                            "{user}/{name}: acknowledged {version} missing, and no delete that \
                             may follow it has been in the trash for {TRASH_RETENTION:?}: {} \
                             (put started {:?} before the read; {:#?})",
                            histories[0],
                            read_at.saturating_duration_since(r.started),
                            deletes()
                        );
                        purged += 1;
                        continue;
                    };
                    assert_eq!(v["blake3"], blake3.as_str(), "{user}/{name} {version}");
                    assert_eq!(v["size"], *size, "{user}/{name} {version}");
                    assert_eq!(v["deleted"], false, "{user}/{name} {version}");
                }
            }
            let deletes_acked = recs
                .iter()
                .filter(|r| r.acked.is_some() && r.effect == Effect::Delete)
                .count();
            let tombstones = history.values().filter(|v| v["deleted"] == true).count();
            let first = recs.iter().map(|r| r.started).min().unwrap_or(checked_at);
            assert!(
                tombstones >= deletes_acked.min(1) || purged_by(first),
                "{user}/{name}: {deletes_acked} acknowledged deletes, no tombstone: {}",
                histories[0]
            );

            // A session's later write carries a higher HLC.
            for a in &recs {
                for b in &recs {
                    if let (
                        Some(acked),
                        Effect::Put { hlc: ha, .. },
                        Some(_),
                        Effect::Put { hlc: hb, .. },
                    ) = (a.acked, &a.effect, b.acked, &b.effect)
                        && a.client == b.client
                        && acked < b.started
                        && *ha > 0
                        && *hb > 0
                    {
                        assert!(
                            ha < hb,
                            "{user}/{name}: session order broken ({ha} >= {hb})"
                        );
                    }
                }
            }

            // The head.
            if history.is_empty() {
                // Purged entirely (checked above): no head to check.
                continue;
            }
            let heads: Vec<&&Value> = history.values().filter(|v| v["head"] == true).collect();
            assert_eq!(heads.len(), 1, "{user}/{name}: one head: {}", histories[0]);
            let head = heads[0];
            let frontier: Vec<&Record> = recs
                .iter()
                .copied()
                // A maybe-applied operation hides nothing: it may not have happened.
                .filter(|a| {
                    !recs
                        .iter()
                        .any(|b| b.acked.is_some() && self.history.before(a, b))
                })
                .collect();
            let head_ok = frontier.iter().any(|r| match &r.effect {
                Effect::Delete => head["deleted"] == true,
                Effect::Put {
                    version, blake3, ..
                } => {
                    head["deleted"] == false
                        && (head["version"] == version.as_str()
                            || (r.acked.is_none() && head["blake3"] == blake3.as_str())
                            || r.maybe_blake3.as_deref() == head["blake3"].as_str())
                }
            });
            assert!(
                head_ok,
                "{user}/{name}: head {head} is not the result of any operation no other \
                 follows: {frontier:#?}"
            );
            // Writes certainly concurrent (two sides of one partition), all acknowledged: the
            // winner rule picks the highest (hlc, origin, version).
            let all_acked_puts = frontier.iter().all(|r| {
                r.acked.is_some() && matches!(r.effect, Effect::Put { .. }) && r.side.is_some()
            });
            let one_partition = frontier
                .iter()
                .map(|r| r.side.map(|s| s.0))
                .collect::<BTreeSet<_>>()
                .len()
                == 1;
            let two_sides = frontier
                .iter()
                .map(|r| r.side)
                .collect::<BTreeSet<_>>()
                .len()
                == frontier.len();
            if frontier.len() > 1 && all_acked_puts && one_partition && two_sides {
                let key = |r: &Record| match &r.effect {
                    Effect::Put { version, .. } => {
                        let v = history[version];
                        (
                            v["hlc"].as_u64().unwrap_or(0),
                            v["origin"].as_str().unwrap_or_default().to_owned(),
                            version.clone(),
                        )
                    }
                    Effect::Delete => unreachable!(),
                };
                let best = frontier.iter().map(|r| key(r)).max().unwrap();
                assert_eq!(
                    head["version"],
                    best.2.as_str(),
                    "{user}/{name}: concurrent writes, the winner rule picks {best:?}: {}",
                    histories[0]
                );
            }

            // Every retained version reads byte-identical from every host.
            for (version, v) in &history {
                if v["deleted"] == true {
                    continue;
                }
                // Deletes that could have purged this version: those that may follow its write.
                let written = recs
                    .iter()
                    .find(|r| matches!(&r.effect, Effect::Put { version: v, .. } if v == version))
                    .map_or(first, |r| r.started);
                for c in &readers {
                    let bytes = match c.try_download_version(name, version) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            // Purged since the history was read, by a delete whose trash has
                            // expired by now: not lost. Anything else is.
                            let listed = history_of(c, name).as_array().is_some_and(|a| {
                                a.iter().any(|v| v["version"] == version.as_str())
                            });
                            if e.contains("not found")
                                && !listed
                                && purged_by_at(written, Instant::now())
                            {
                                purged += 1;
                                break;
                            }
                            panic!(
                                "{user}/{name}@{version} does not download on {}: {e}",
                                c.name
                            )
                        }
                    };
                    assert_eq!(
                        blake3::hash(&bytes).to_hex().as_str(),
                        v["blake3"].as_str().unwrap_or_default(),
                        "{user}/{name}@{version}: bytes on {}",
                        c.name
                    );
                    versions_checked += 1;
                }
            }
        }
        let acked = self
            .history
            .records
            .iter()
            .filter(|r| r.acked.is_some())
            .count();
        eprintln!(
            "[jepsen {}] checked {} files, {acked} acknowledged operations, {versions_checked} \
             version downloads, {purged} acknowledged versions purged from an expired trash",
            self.seed,
            by_file.len()
        );
        self.lab.finish();
    }
}

/// Prints the seed of a failing run, so it can be replayed.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n*** jepsen seed {} failed; replay: REDCLOUD_JEPSEN_SEEDS={} cargo nextest run \
                 -p redcloud --test jepsen\n",
                self.0, self.0
            );
        }
    }
}

fn run_seed(seed: u64, phases: usize) {
    let _guard = SeedGuard(seed);
    let plan = schedule(seed, phases);
    eprintln!("[jepsen {seed}] schedule:");
    for (i, p) in plan.iter().enumerate() {
        eprintln!(
            "  phase {i}: {:?} for {} ms around {} ops",
            p.fault,
            p.dwell_ms,
            p.ops.len()
        );
    }
    let Some(mut run) = Run::start(seed) else {
        return;
    };
    let started = Instant::now();
    for phase in &plan {
        run.inject(&phase.fault);
        std::thread::sleep(Duration::from_millis(phase.dwell_ms));
        for op in &phase.ops {
            run.apply(op);
        }
        std::thread::sleep(Duration::from_millis(phase.dwell_ms));
        run.recover();
        run.try_barrier(Duration::from_secs(20));
    }
    eprintln!(
        "[jepsen {seed}] {} phases in {:.0} s",
        plan.len(),
        started.elapsed().as_secs_f64()
    );
    run.quiesce();
    run.check();
}

fn seeds() -> Vec<u64> {
    match std::env::var("REDCLOUD_JEPSEN_SEEDS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| x.trim().parse().expect("REDCLOUD_JEPSEN_SEEDS: numbers"))
            .collect(),
        _ => CI_SEEDS.to_vec(),
    }
}

#[test]
fn randomized_fault_schedules_lose_nothing() {
    let phases = std::env::var("REDCLOUD_JEPSEN_PHASES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(PHASES);
    for seed in seeds() {
        run_seed(seed, phases);
    }
}

#[test]
fn a_seed_always_gives_the_same_schedule() {
    let a = format!("{:?}", schedule(7, PHASES));
    let b = format!("{:?}", schedule(7, PHASES));
    assert_eq!(a, b);
    assert_ne!(a, format!("{:?}", schedule(8, PHASES)));
}
