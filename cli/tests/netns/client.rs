//! The `redcloud` CLI run inside a lab host: its own `$REDCLOUD_HOME` (session), a list of
//! controllers to try, and a hard time limit on every command.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::BIN;
use super::oracle::Ack;

/// No CLI command may take longer than this (its own call timeouts are 30 s).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

pub struct Client {
    pub name: String,
    pub ns: String,
    pub home: PathBuf,
    pub controllers: Vec<String>,
    /// Where files to upload are written and downloads land.
    pub work: PathBuf,
}

impl Client {
    /// Runs `redcloud ARGS` with `stdin`, killing it (by pid) past [`COMMAND_LIMIT`].
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN])
            .args(["--controller", &self.controllers.join(",")])
            .args(args)
            .env("REDCLOUD_HOME", &self.home)
            .envs(
                self.home
                    .parent()
                    .map(|d| ("REDCLOUD_SECRET_FILE", d.join("cluster.secret"))),
            )
            .env_remove("REDCLOUD_CONTROLLERS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the redcloud client");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
        drop(input);
        // Outputs are small; read them in threads so a full pipe never blocks the child.
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut v);
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut v);
            v
        });
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for client") {
                break s;
            }
            if start.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let s = child.wait().expect("reap client");
                eprintln!(
                    "[{}] redcloud {args:?} killed after {COMMAND_LIMIT:?}",
                    self.name
                );
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: out_t.join().unwrap_or_default(),
            stderr: err_t.join().unwrap_or_default(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "[{} via {:?}] redcloud {args:?} failed ({}): {}",
            self.name,
            self.controllers,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redcloud --json ARGS`, parsed; `None` when the command fails.
    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `redcloud --json ARGS`, parsed; panics when the command fails.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ok(&full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {out}"))
    }

    /// The same user's session, talking to other controllers (shares the session file, so
    /// the causal context `last_write_hlc` carries over).
    pub fn via(&self, controllers: &[usize]) -> Client {
        Client {
            name: self.name.clone(),
            ns: self.ns.clone(),
            home: self.home.clone(),
            controllers: controllers
                .iter()
                .map(|h| super::controller_addr(*h))
                .collect(),
            work: self.work.clone(),
        }
    }

    /// Registers (ignoring "exists", so two clients can share a user) and logs in.
    pub fn login(&self, user: &str) {
        let _ = self.run_with_stdin(&["register", user, "--password-stdin"], "lab-password\n");
        let out = self.run_with_stdin(&["login", user, "--password-stdin"], "lab-password\n");
        assert!(
            out.status.success(),
            "[{}] login {user}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Uploads `data` as `name` with `tag`; `Err(stderr)` when the upload is not acknowledged.
    pub fn try_add(&self, name: &str, data: &[u8], tag: &str) -> Result<Ack, String> {
        let dir = self.work.join(format!("up-{}", self.name));
        std::fs::create_dir_all(&dir).expect("upload dir");
        let path = dir.join(name);
        std::fs::write(&path, data).expect("write upload");
        let started = Instant::now();
        let out = self.run(&["--json", "add", path.to_str().unwrap(), "--tag", tag]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad JSON from add {name}: {e}"));
        let f = &v[0];
        let want = blake3::hash(data).to_hex().to_string();
        assert_eq!(f["name"], name, "add --json: {v}");
        assert_eq!(
            f["blake3"],
            want.as_str(),
            "add acknowledged other bytes: {v}"
        );
        Ok(Ack {
            name: name.to_owned(),
            version: f["version"].as_str().expect("version").to_owned(),
            blake3: want,
            size: data.len() as u64,
            chunks: f["chunks"].as_u64().expect("chunks"),
            session: self.home.clone(),
            // Only a client with one controller knows which controller committed the write.
            controller: (self.controllers.len() == 1).then(|| self.controllers[0].clone()),
            hlc: f["hlc"].as_u64(),
            started,
            acked: Instant::now(),
            partition: None,
        })
    }

    pub fn add(&self, name: &str, data: &[u8], tag: &str) -> Ack {
        self.try_add(name, data, tag).unwrap_or_else(|e| {
            panic!(
                "[{} via {:?}] upload of {name} not acknowledged: {e}",
                self.name, self.controllers
            )
        })
    }

    /// Downloads the current version of `name`: (bytes, version id), or `Err(stderr)`.
    pub fn try_download(&self, name: &str) -> Result<(Vec<u8>, String), String> {
        let dir = self.work.join(format!("down-{}", self.name));
        std::fs::create_dir_all(&dir).expect("download dir");
        let path = dir.join(name);
        let out = self.run(&[
            "--json",
            "download",
            name,
            "-o",
            path.to_str().unwrap(),
            "--force",
        ]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad JSON from download {name}: {e}"));
        let bytes = std::fs::read(&path).expect("downloaded file");
        Ok((bytes, v["version"].as_str().unwrap_or_default().to_owned()))
    }

    /// Downloads version `version` of `name`: its bytes, or `Err(stderr)`.
    pub fn try_download_version(&self, name: &str, version: &str) -> Result<Vec<u8>, String> {
        let dir = self.work.join(format!("down-{}", self.name));
        std::fs::create_dir_all(&dir).expect("download dir");
        let path = dir.join(format!("{name}@{version}"));
        let out = self.run(&[
            "--json",
            "download",
            name,
            "--version",
            version,
            "-o",
            path.to_str().unwrap(),
            "--force",
        ]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(std::fs::read(&path).expect("downloaded file"))
    }

    pub fn download(&self, name: &str) -> (Vec<u8>, String) {
        self.try_download(name).unwrap_or_else(|e| {
            panic!(
                "[{} via {:?}] download of {name} failed: {e}",
                self.name, self.controllers
            )
        })
    }
}
