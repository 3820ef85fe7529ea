//! A cluster of real `redcloud` processes on loopback for end-to-end tests: controllers and
//! chunkservers started from the built binary, each with its own data directory and log, and
//! a client runner with its own `$REDCLOUD_HOME`. Every process is stopped (by pid) when the
//! cluster is dropped, even when a test fails; every wait is bounded.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_redcloud");

/// Finds `count` consecutive free ports spaced as a dev cluster needs them (base, base+100,
/// base+200, base+300), starting at a pseudo-random base so parallel tests do not collide.
pub fn free_base(count: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    for attempt in 0..200u64 {
        let base = 20_000
            + ((seed.wrapping_mul(6_364_136_223_846_793_005) >> 33) + attempt * 7919) % 400 * 100;
        let base = base as u16;
        let all_free = (0..4u16).all(|block| {
            (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + block * 100 + i)).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

/// The cluster secret's file name in a test cluster's directory.
pub const SECRET_FILE: &str = "cluster.secret";

/// Writes a new cluster secret into `dir` (mode 0600).
pub fn write_secret(dir: &Path) -> PathBuf {
    let path = dir.join(SECRET_FILE);
    if !path.exists() {
        redcloud_proto::trust::ClusterSecret::generate()
            .and_then(|s| s.write_new(&path))
            .expect("write the cluster secret");
    }
    path
}

pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, args: Vec<String>, log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        // Every node of a test cluster reads the cluster's secret, kept beside its logs.
        let child = Command::new(BIN)
            .args(&args)
            .env("REDCLOUD_SECRET_FILE", log.with_file_name(SECRET_FILE))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start redcloud");
        Proc {
            name: name.to_owned(),
            child: Some(child),
            args,
            log,
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded), then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            term(c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let mut p = Proc::spawn(&self.name, self.args.clone(), self.log.clone());
        self.child = p.child.take();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn term(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base: u16,
    pub controllers: Vec<Proc>,
    pub chunkservers: Vec<Proc>,
}

impl Cluster {
    pub fn controller_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base + i as u16)
    }
    pub fn chunkserver_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base + 100 + i as u16)
    }
    pub fn controller_list(&self) -> String {
        (0..self.controllers.len())
            .map(|i| self.controller_addr(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts `nc` controllers and `ns` chunkservers and waits until every controller sees
    /// every chunkserver.
    pub fn start(nc: usize, ns: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_base(nc.max(ns) as u16 + 1);
        write_secret(dir.path());
        let mut c = Cluster {
            dir,
            base,
            controllers: Vec::new(),
            chunkservers: Vec::new(),
        };
        for i in 0..nc {
            let mut args = vec![
                "controller".to_string(),
                "--data".into(),
                c.path(&format!("controller-{i}")),
                "--listen".into(),
                c.controller_addr(i),
                "--p2p-listen".into(),
                format!("/ip4/127.0.0.1/tcp/{}", base + 200 + i as u16),
                "--metrics-listen".into(),
                format!("127.0.0.1:{}", base + 300 + i as u16),
                "--no-mdns".into(),
                "--heartbeat-timeout-ms".into(),
                "3000".into(),
            ];
            for j in (0..nc).filter(|j| *j != i) {
                args.push("--bootstrap".into());
                args.push(format!("127.0.0.1:{}", base + 200 + j as u16));
            }
            let log = c.dir.path().join(format!("controller-{i}.log"));
            c.controllers
                .push(Proc::spawn(&format!("controller-{i}"), args, log));
        }
        for i in 0..ns {
            c.add_chunkserver_at(i);
        }
        c.wait_for(
            Duration::from_secs(60),
            "every controller sees every chunkserver",
            |c| {
                (0..nc).all(|i| {
                    c.status(i)
                        .map(|s| {
                            s["chunkservers"]
                                .as_array()
                                .map(|a| a.iter().filter(|x| x["state"] == "active").count())
                                == Some(ns)
                        })
                        .unwrap_or(false)
                })
            },
        );
        c
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Starts chunkserver number `i` (a new one when `i` is past the end).
    pub fn add_chunkserver_at(&mut self, i: usize) {
        let args = vec![
            "chunkserver".to_string(),
            "--data".into(),
            self.path(&format!("chunkserver-{i}")),
            "--listen".into(),
            self.chunkserver_addr(i),
            "--controller".into(),
            self.controller_list(),
            "--scrub-rate".into(),
            "0".into(),
        ];
        let log = self.dir.path().join(format!("chunkserver-{i}.log"));
        self.chunkservers
            .push(Proc::spawn(&format!("chunkserver-{i}"), args, log));
    }

    /// `redcloud status --json` from controller `i` (no failover).
    pub fn status(&self, i: usize) -> Option<Value> {
        let out = Command::new(BIN)
            .args(["--controller", &self.controller_addr(i), "--json", "status"])
            .env("REDCLOUD_HOME", self.dir.path().join("status-home"))
            // The operator's view of the cluster (and its CA) comes from the secret.
            .env("REDCLOUD_SECRET_FILE", self.dir.path().join(SECRET_FILE))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Polls `ok` until it holds or `limit` passes (then panics with the logs' tails).
    pub fn wait_for(&self, limit: Duration, what: &str, ok: impl Fn(&Cluster) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if ok(self) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                self.dump_logs();
                panic!("timed out after {limit:?} waiting until {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn dump_logs(&self) {
        for p in self.controllers.iter().chain(&self.chunkservers) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!("--- {} (last lines) ---", p.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// A client with its own home directory, talking to every controller.
    pub fn client(&self, name: &str) -> Client {
        let home = self.dir.path().join(format!("home-{name}"));
        std::fs::create_dir_all(&home).expect("home");
        Client {
            home,
            controllers: self.controller_list(),
        }
    }
}

pub struct Client {
    pub home: PathBuf,
    pub controllers: String,
}

impl Client {
    /// Runs `redcloud ARGS` with `stdin` and returns its output.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let secret = self.home.parent().map(|d| d.join(SECRET_FILE));
        let mut child = Command::new(BIN)
            .args(args)
            .envs(secret.map(|s| ("REDCLOUD_SECRET_FILE", s)))
            .env("REDCLOUD_HOME", &self.home)
            .env("REDCLOUD_CONTROLLERS", &self.controllers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run client");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("client output")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "redcloud {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ok(&full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {out}"))
    }

    /// Runs and asserts failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "redcloud {args:?}: expected exit {code}, stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn register_and_login(&self, user: &str) {
        let out = self.run_with_stdin(&["register", user, "--password-stdin"], "secret-pw\n");
        assert!(
            out.status.success(),
            "register: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.run_with_stdin(&["login", user, "--password-stdin"], "secret-pw\n");
        assert!(
            out.status.success(),
            "login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces. The seed is mixed
/// first, so neighbouring seeds (20 and 21) give unrelated streams, not the same one.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}
