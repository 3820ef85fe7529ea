//! Real `redcloud` processes on separate hosts made of Linux network namespaces.
//!
//! A [`Lab`] brings up hosts with `scripts/netns-lab.sh` (host `i` is `10.77.0.i`, all joined by
//! a bridge in its own namespace), starts controllers and chunkservers inside them with
//! `ip netns exec`, runs CLI commands from any host, and injects faults: partitions, lossy and
//! one-way links, `kill -9`, restarts, late joiners, clock offsets. Dropping the lab kills its
//! processes (by pid) and deletes its namespaces, even when a test panics; after a failure the
//! logs are kept and their directory printed.
//!
//! Every wait is bounded and polls a condition; labs run one at a time (a file lock), since
//! every scenario starts about six daemons on a small machine.
//!
//! Where the lab cannot run (not root, no `ip`), [`Lab::up`] prints a loud `SKIPPED:` line and
//! returns `None`; with `REDCLOUD_NETNS_REQUIRED=1` (CI sets it) it fails instead.

#![allow(dead_code)]

pub mod client;
pub mod oracle;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use client::Client;
#[allow(unused_imports)] // not every test binary uses the ledger
pub use oracle::Ledger;

pub const BIN: &str = env!("CARGO_BIN_EXE_redcloud");
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/netns-lab.sh");

pub const CONTROLLER_PORT: u16 = 7100;
pub const CHUNKSERVER_PORT: u16 = 7200;
pub const P2P_PORT: u16 = 7300;
/// Chunkservers silent this long are marked failed (the default is 6 s; tests want speed).
pub const HEARTBEAT_TIMEOUT_MS: u64 = 3_000;

/// Log lines that must never appear: a reused Automerge actor (duplicate sequence numbers),
/// replicated changes refused, a panic.
const FORBIDDEN_LOG_LINES: [&str; 3] = ["duplicate seq", "changes refused", "panicked at"];

/// The address of host `i`.
pub fn ip(host: usize) -> String {
    format!("10.77.0.{host}")
}

pub fn controller_addr(host: usize) -> String {
    format!("{}:{CONTROLLER_PORT}", ip(host))
}

/// Why this machine cannot run the lab, if it cannot.
fn unavailable() -> Option<String> {
    // /proc/self belongs to the effective user.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if euid != 0 {
        return Some("not running as root (network namespaces need CAP_NET_ADMIN)".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` not found (run scripts/setup.sh)"));
        }
    }
    None
}

/// Deletes labs left behind by test processes that no longer exist (killed before their
/// `Drop` ran): their ids start with the dead process's pid.
fn reap_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(id) = name
            .strip_prefix("rcl-")
            .and_then(|n| n.strip_suffix("-br"))
        else {
            continue;
        };
        let pid = id.strip_prefix('t').and_then(|r| r.split('-').next());
        if pid
            .is_some_and(|p| p.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{p}")).exists())
        {
            eprintln!("reaping lab {id} left by a test process that is gone");
            let _ = Command::new("bash")
                .arg(SCRIPT)
                .args(["--lab", id, "down"])
                .status();
        }
    }
}

/// Prints a skip where a person will see it: straight to stderr (libtest's capture does not
/// take it) and, since nextest keeps a passing test's output to itself, to the terminal too.
fn shout_skip(msg: &str) {
    use std::io::Write;
    let bar = "!".repeat(78);
    let text = format!("\n{bar}\nSKIPPED: {msg}\n{bar}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = tty.write_all(text.as_bytes());
    }
}

/// How a controller finds its peers.
#[derive(Clone, Debug)]
pub enum Discovery {
    /// mDNS only: no bootstrap address.
    Mdns,
    /// Bootstrap addresses of the controllers on these hosts (mDNS stays on too).
    Bootstrap(Vec<usize>),
}

/// One daemon inside a host. Its pid is the daemon's own (`ip netns exec` execs it).
struct Node {
    name: String,
    host: usize,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, ns: &str) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(&self.args)
            .env(
                "REDCLOUD_SECRET_FILE",
                self.log.with_file_name("cluster.secret"),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start redcloud inside the lab");
        self.child = Some(child);
    }

    /// SIGKILL by pid, then reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

static LABS: AtomicUsize = AtomicUsize::new(0);

pub struct Lab {
    pub id: String,
    pub hosts: usize,
    dir: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    started: Instant,
    /// Held for the lab's life: one lab at a time on this machine.
    _serial: File,
}

impl Lab {
    /// Brings up `hosts` hosts, or prints why it cannot and returns `None`.
    pub fn up(test: &str, hosts: usize) -> Option<Lab> {
        if let Some(why) = unavailable() {
            let msg = format!("network-namespace test `{test}` cannot run here: {why}");
            if std::env::var("REDCLOUD_NETNS_REQUIRED").is_ok_and(|v| v == "1") {
                panic!("{msg} (and REDCLOUD_NETNS_REQUIRED=1)");
            }
            shout_skip(&msg);
            return None;
        }
        let serial = File::create(std::env::temp_dir().join("redcloud-netns-lab.lock"))
            .expect("lab lock file");
        serial.lock().expect("lab lock");
        reap_stale_labs();
        let id = format!(
            "t{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("redcloud-{test}-"))
            .tempdir()
            .expect("tempdir");
        let lab = Lab {
            id,
            hosts,
            dir: Some(dir),
            nodes: Vec::new(),
            started: Instant::now(),
            _serial: serial,
        };
        let secret = lab.dir().join("cluster.secret");
        redcloud_proto::trust::ClusterSecret::generate()
            .and_then(|s| s.write_new(&secret))
            .expect("write the lab's cluster secret");
        let out = lab.script(&["up", &hosts.to_string()]);
        assert!(
            out.status.success(),
            "netns-lab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "[{test}] lab {} up: {hosts} hosts, logs in {}",
            lab.id,
            lab.dir().display()
        );
        Some(lab)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("lab dir").path()
    }

    pub fn ns(&self, host: usize) -> String {
        format!("rcl-{}-h{host}", self.id)
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(SCRIPT)
            .args(["--lab", &self.id])
            .args(args)
            .output()
            .expect("run netns-lab.sh")
    }

    fn fault(&self, args: &[&str]) {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "netns-lab {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // --- daemons ---

    /// Starts the controller `ctl{host}` (gRPC on :7100, libp2p on :7300 of the host's IP).
    pub fn start_controller(&mut self, host: usize, discovery: Discovery, clock_offset_ms: i64) {
        self.start_controller_with(host, discovery, clock_offset_ms, &[]);
    }

    /// [`Lab::start_controller`] with `extra` flags.
    pub fn start_controller_with(
        &mut self,
        host: usize,
        discovery: Discovery,
        clock_offset_ms: i64,
        extra: &[&str],
    ) {
        let mut args: Vec<String> = [
            "controller",
            "--data",
            &self.path(&format!("ctl{host}")),
            "--listen",
            &controller_addr(host),
            "--advertise",
            &controller_addr(host),
            "--p2p-listen",
            &format!("/ip4/{}/tcp/{P2P_PORT}", ip(host)),
            "--metrics-listen",
            &format!("{}:7400", ip(host)),
            "--heartbeat-timeout-ms",
            &HEARTBEAT_TIMEOUT_MS.to_string(),
            "--clock-offset-ms",
            &clock_offset_ms.to_string(),
        ]
        .map(str::to_owned)
        .into();
        if let Discovery::Bootstrap(peers) = discovery {
            for p in peers.into_iter().filter(|p| *p != host) {
                args.push("--bootstrap".into());
                args.push(format!("/ip4/{}/tcp/{P2P_PORT}", ip(p)));
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        self.start_node(&format!("ctl{host}"), host, args);
    }

    /// Starts the chunkserver `cs{host}`, reporting to the controllers on `controllers`.
    pub fn start_chunkserver(&mut self, host: usize, controllers: &[usize]) {
        let addr = format!("{}:{CHUNKSERVER_PORT}", ip(host));
        let list: Vec<String> = controllers.iter().map(|h| controller_addr(*h)).collect();
        let args: Vec<String> = [
            "chunkserver",
            "--data",
            &self.path(&format!("cs{host}")),
            "--listen",
            &addr,
            "--advertise",
            &addr,
            "--controller",
            &list.join(","),
            "--scrub-rate",
            "0",
        ]
        .map(str::to_owned)
        .into();
        self.start_node(&format!("cs{host}"), host, args);
    }

    fn start_node(&mut self, name: &str, host: usize, args: Vec<String>) {
        assert!(!self.nodes.iter().any(|n| n.name == name), "{name} exists");
        let mut node = Node {
            name: name.to_owned(),
            host,
            args,
            log: self.dir().join(format!("{name}.log")),
            child: None,
        };
        node.spawn(&self.ns(host));
        self.nodes.push(node);
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `kill -9`, like a crash or a power cut.
    pub fn kill9(&mut self, name: &str) {
        self.node(name).kill9();
    }

    /// Starts a killed node again with the same flags and data.
    pub fn restart(&mut self, name: &str) {
        let host = self.node(name).host;
        let ns = self.ns(host);
        let node = self.node(name);
        assert!(node.child.is_none(), "{name} is still running");
        node.spawn(&ns);
    }

    /// Whether the node has been started (and may be stopped or running).
    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name)
    }

    /// Whether the node's process is running (not killed).
    pub fn is_up(&mut self, name: &str) -> bool {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .is_some_and(|n| n.child.is_some())
    }

    /// Restarts a killed controller with its clock shifted by `offset_ms` (the test-only
    /// `--clock-offset-ms`): a clock that jumped while it was down.
    pub fn restart_with_clock(&mut self, name: &str, offset_ms: i64) {
        let node = self.node(name);
        if let Some(i) = node.args.iter().position(|a| a == "--clock-offset-ms") {
            node.args[i + 1] = offset_ms.to_string();
        }
        self.restart(name);
    }

    /// Deletes a killed node's data directory: a disk replaced, an operator's `rm -rf`.
    pub fn wipe(&mut self, name: &str) {
        assert!(!self.is_up(name), "{name} is running; kill it first");
        let path = self.path(name);
        let _ = std::fs::remove_dir_all(&path);
    }

    /// Panics (with log tails) if a daemon that should run has exited.
    pub fn assert_running(&mut self) {
        let dead: Vec<String> = self
            .nodes
            .iter_mut()
            .filter(|n| n.child.is_some())
            .filter_map(|n| (!n.is_running()).then_some(n))
            .map(|n| n.name.clone())
            .collect();
        if !dead.is_empty() {
            self.dump_logs();
            panic!("daemons exited unexpectedly: {dead:?}");
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir().join(name).to_string_lossy().into_owned()
    }

    // --- faults ---

    /// Cuts the network into `groups` of hosts (hosts in no group join the first).
    pub fn partition(&self, groups: &[&[usize]]) {
        let groups: Vec<String> = groups
            .iter()
            .map(|g| g.iter().map(usize::to_string).collect::<Vec<_>>().join(" "))
            .collect();
        let mut args = vec!["partition"];
        args.extend(groups.iter().map(String::as_str));
        self.fault(&args);
    }

    pub fn heal(&self) {
        self.fault(&["heal"]);
    }

    /// Drops `percent`% of packets each way between `host` and `peer`.
    pub fn lossy(&self, host: usize, peer: usize, percent: u32) {
        self.fault(&["lossy", &host.to_string(), &ip(peer), &percent.to_string()]);
    }

    /// `host` can no longer send to `peer` (it still receives from it).
    pub fn oneway(&self, host: usize, peer: usize) {
        self.fault(&["oneway", &host.to_string(), &ip(peer)]);
    }

    pub fn clear_faults(&self) {
        self.fault(&["clear-faults"]);
    }

    // --- observing ---

    /// A CLI client on `host` with its own `$REDCLOUD_HOME`, trying `controllers` in order.
    pub fn client(&self, name: &str, host: usize, controllers: &[usize]) -> Client {
        let home = self.dir().join(format!("home-{name}"));
        std::fs::create_dir_all(&home).expect("client home");
        Client {
            name: name.to_owned(),
            ns: self.ns(host),
            home,
            controllers: controllers.iter().map(|h| controller_addr(*h)).collect(),
            work: self.dir().join("files"),
        }
    }

    /// `redcloud status --json` from the controller on `host`, asked from that host.
    pub fn status(&self, host: usize) -> Option<Value> {
        self.client("status", host, &[host]).try_json(&["status"])
    }

    /// Polls `ok` (every 250 ms) until it holds, or panics after `limit` with the logs' tails.
    /// Returns how long it took.
    pub fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        mut ok: impl FnMut(&Lab) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if ok(self) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                self.assert_running();
                self.dump_logs();
                panic!("timed out after {limit:?} waiting until {what}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The controllers on `ctls` are connected to each other (and no others), see every
    /// chunkserver in `active` as active, hold the same metadata (digest), and each counts
    /// `chunks` live chunks, every one of them on every active chunkserver.
    pub fn converged(&self, ctls: &[usize], active: &[usize], chunks: u64) -> bool {
        self.converged_as(ctls, active, chunks, Some(ctls.len() - 1))
    }

    /// [`Lab::converged`] without the check of whom the controllers are connected to.
    pub fn data_converged(&self, ctls: &[usize], active: &[usize], chunks: u64) -> bool {
        self.converged_as(ctls, active, chunks, None)
    }

    fn converged_as(
        &self,
        ctls: &[usize],
        active: &[usize],
        chunks: u64,
        peers: Option<usize>,
    ) -> bool {
        let mut digest = None;
        for &c in ctls {
            let Some(s) = self.status(c) else {
                return false;
            };
            if !status_complete(&s, peers, active, chunks) {
                return false;
            }
            let d = s["controller"]["metadata_digest"].clone();
            if digest.get_or_insert_with(|| d.clone()) != &d {
                return false;
            }
        }
        true
    }

    /// Each controller on `ctls` is connected to exactly `peers` other controllers.
    pub fn peers_are(&self, ctls: &[usize], peers: usize) -> bool {
        ctls.iter().all(|&c| {
            self.status(c)
                .is_some_and(|s| s["controller"]["peers"].as_array().map(Vec::len) == Some(peers))
        })
    }

    /// Metadata digests of the controllers on `ctls` are equal (chunks not considered).
    pub fn metadata_equal(&self, ctls: &[usize]) -> bool {
        let digests: Option<Vec<Value>> = ctls
            .iter()
            .map(|c| {
                self.status(*c)
                    .map(|s| s["controller"]["metadata_digest"].clone())
            })
            .collect();
        digests.is_some_and(|d| d.windows(2).all(|w| w[0] == w[1]))
    }

    /// The end of every scenario: no daemon died unexpectedly, no log holds a forbidden line.
    pub fn finish(&mut self) {
        self.assert_running();
        self.assert_logs_clean();
    }

    /// Panics if any daemon's log holds a forbidden line (see [`FORBIDDEN_LOG_LINES`]).
    pub fn assert_logs_clean(&self) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            for line in text.lines() {
                let lower = line.to_lowercase();
                if let Some(bad) = FORBIDDEN_LOG_LINES.iter().find(|b| lower.contains(*b)) {
                    panic!("{} logged `{bad}`: {line}", n.name);
                }
            }
        }
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            eprintln!("--- {} (last lines of {}) ---", n.name, n.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// Prints a measured duration in a line the issue note collects.
    pub fn measured(&self, what: &str, took: Duration) {
        eprintln!("MEASURED {}: {what}: {:.1} s", self.id, took.as_secs_f64());
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// One controller's status is complete: `peers` other controllers connected (when given),
/// every chunkserver in `active` active, `chunks` live chunks, none under-replicated or lost,
/// all on each of them.
pub fn status_complete(s: &Value, peers: Option<usize>, active: &[usize], chunks: u64) -> bool {
    let total = &s["chunks"]["total"];
    if total != chunks {
        return false;
    }
    if peers.is_some_and(|n| s["controller"]["peers"].as_array().map(Vec::len) != Some(n)) {
        return false;
    }
    let Some(servers) = s["chunkservers"].as_array() else {
        return false;
    };
    let all_active = active.iter().all(|h| {
        let addr = format!("{}:{CHUNKSERVER_PORT}", ip(*h));
        servers
            .iter()
            .any(|cs| cs["address"] == addr && cs["state"] == "active" && &cs["chunks"] == total)
    });
    all_active && s["chunks"]["under_replicated"] == 0 && s["chunks"]["lost"] == 0
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        // Deletes the namespaces; also kills (by pid) anything still running inside them.
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!(
                "netns-lab down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "lab {} failed; logs kept in {}",
                    self.id,
                    dir.keep().display()
                );
            }
        }
    }
}
