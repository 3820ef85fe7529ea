//! The Docker deployment, driven through its own scripts (`docker/scripts/`) on a real Docker
//! engine, as an operator would: a single-node swarm, the overlay `dfs-network`, three
//! controllers and three chunkservers, and the CLI in a container with a directory mounted.
//! Then faults: a controller container killed (the CLI goes on through the `controller`
//! alias), a chunkserver killed (downloads go on), a new chunkserver (filled), and one
//! controller and one chunkserver cut off with `docker network disconnect` (the connected side
//! takes writes, the cut-off controller takes a metadata change from a client in its own
//! network namespace), then reconnected: everything converges.
//!
//! Needs a running Docker engine (as root). Without one it prints SKIPPED, unless
//! `REDCLOUD_DOCKER_REQUIRED=1` (set by `.ci/run`, which installs and starts the engine with
//! `scripts/docker-up.sh`), when it fails. Every wait is bounded; every container is removed
//! by `teardown.sh` at the end, and left-overs of an earlier run at the start.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/scripts");
/// Longest any one script or CLI container may run.
const STEP: Duration = Duration::from_secs(180);
/// Longest wait for the cluster to reach a state.
const WAIT: Duration = Duration::from_secs(120);

fn docker_engine() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `cmd` to completion within [`STEP`], feeding it `stdin`; kills it (by pid) past that.
fn run(mut cmd: Command, stdin: &str) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < STEP {
            std::thread::sleep(Duration::from_millis(200));
            // Gone already: nothing to kill.
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("wait");
    let _ = watchdog.join();
    out
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Deployment {
    /// The operator's directory: secret, CA, the CLI's home and the files it moves.
    dir: tempfile::TempDir,
}

impl Deployment {
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.work())
            .env("REDCLOUD_BIN", env!("CARGO_BIN_EXE_redcloud"))
            .env(
                "REDCLOUD_SECRET_FILE_HOST",
                self.dir.path().join("cluster.secret"),
            )
            .env("REDCLOUD_CA_FILE_HOST", self.dir.path().join("ca.pem"))
            .env("REDCLOUD_CLI_HOME", self.dir.path().join("cli-home"))
            .env_remove("REDCLOUD_SECRET_FILE")
            .env_remove("REDCLOUD_CA")
            .env_remove("REDCLOUD_CLI_NETWORK")
            .env_remove("REDCLOUD_CLI_CONTROLLER");
        c
    }

    /// Runs `docker/scripts/NAME ARGS` and asserts it succeeded; answers its stdout.
    fn script(&self, name: &str, args: &[&str]) -> String {
        let mut c = self.command(&format!("{SCRIPTS}/{name}"));
        c.args(args);
        let out = run(c, "");
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new("docker");
        c.args(args);
        run(c, "")
    }

    /// `run-cli.sh ARGS` with `stdin`, through `controller` (or `via`: `(network, address)`).
    fn cli_via(&self, via: Option<(&str, &str)>, args: &[&str], stdin: &str) -> Output {
        let mut c = self.command(&format!("{SCRIPTS}/run-cli.sh"));
        if let Some((network, address)) = via {
            c.env("REDCLOUD_CLI_NETWORK", network)
                .env("REDCLOUD_CLI_CONTROLLER", address);
        }
        c.args(args);
        run(c, stdin)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_via(None, args, "");
        assert!(out.status.success(), "run-cli {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json` through controller `address` (cluster-wide: the secret is mounted).
    fn status(&self, address: &str) -> Option<Value> {
        let via = ("dfs-network", address);
        let out = self.cli_via(Some(via), &["--json", "status"], "");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait(&self, what: &str, mut ok: impl FnMut(&Deployment) -> bool) -> Duration {
        let start = Instant::now();
        while !ok(self) {
            if start.elapsed() > WAIT {
                for name in [
                    "redcloud-controller-1",
                    "redcloud-controller-3",
                    "redcloud-chunkserver-3",
                    "redcloud-chunkserver-4",
                ] {
                    let logs = self.docker(&["logs", "--tail", "15", name]);
                    eprintln!("--- {name}\n{}", String::from_utf8_lossy(&logs.stderr));
                }
                panic!("timed out after {WAIT:?} waiting until {what}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        start.elapsed()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let mut c = self.command(&format!("{SCRIPTS}/teardown.sh"));
        c.current_dir(self.dir.path());
        let _ = run(c, "");
    }
}

fn chunkserver<'a>(status: &'a Value, address: &str) -> Option<&'a Value> {
    status["chunkservers"]
        .as_array()?
        .iter()
        .find(|c| c["address"] == address)
}

/// Every chunkserver in `addresses` is active in `status` and holds every chunk it knows of.
fn complete(status: &Value, addresses: &[&str]) -> bool {
    let total = status["chunks"]["total"].as_u64().unwrap_or(0);
    total > 0
        && addresses.iter().all(|a| {
            chunkserver(status, a)
                .is_some_and(|c| c["state"] == "active" && c["chunks"].as_u64() == Some(total))
        })
}

#[test]
fn the_swarm_deployment_serves_survives_faults_and_heals() {
    if !docker_engine() {
        assert!(
            std::env::var("REDCLOUD_DOCKER_REQUIRED").as_deref() != Ok("1"),
            "REDCLOUD_DOCKER_REQUIRED=1 but no Docker engine answers (scripts/docker-up.sh \
             starts one)"
        );
        eprintln!("SKIPPED: no Docker engine (scripts/docker-up.sh starts one, as root)");
        return;
    }
    let d = Deployment {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(d.work()).unwrap();
    // Left-overs of an earlier run go first.
    let _ = run(d.command(&format!("{SCRIPTS}/teardown.sh")), "");

    let started = Instant::now();
    d.script("init-network.sh", &[]);
    let built = d.script("build-images.sh", &[]);
    eprintln!("{built}");
    let deploy = Instant::now();
    for _ in 0..3 {
        d.script("run-controller.sh", &[]);
    }
    d.script("scale-chunkserver.sh", &["3"]);
    let cs = [
        "redcloud-chunkserver-1:7200",
        "redcloud-chunkserver-2:7200",
        "redcloud-chunkserver-3:7200",
    ];
    d.wait("3 controllers see 3 active chunkservers", |d| {
        (1..=3).all(|i| {
            d.status(&format!("redcloud-controller-{i}:7100"))
                .is_some_and(|s| {
                    cs.iter()
                        .all(|a| chunkserver(&s, a).is_some_and(|c| c["state"] == "active"))
                })
        })
    });

    // A user, from a directory of their own.
    let register = d.cli_via(
        None,
        &["register", "erin", "--password-stdin"],
        "password-1\n",
    );
    assert!(register.status.success(), "{}", text(&register));
    let login = d.cli_via(None, &["login", "erin", "--password-stdin"], "password-1\n");
    assert!(login.status.success(), "{}", text(&login));
    let one = common::bytes(3 << 20, 61);
    std::fs::write(d.work().join("one.bin"), &one).unwrap();
    d.cli(&["add", "one.bin", "--tag", "swarm"]);
    eprintln!(
        "init-network to a cluster that accepted an upload: {:?} ({:?} after the image was built)",
        started.elapsed(),
        deploy.elapsed()
    );
    assert!(d.cli(&["list", "swarm"]).contains("one.bin"));
    d.cli(&["download", "one.bin", "-o", "one.out"]);
    assert_eq!(std::fs::read(d.work().join("one.out")).unwrap(), one);

    // A controller killed: the CLI goes on through the alias.
    let killed = d.docker(&["stop", "-t", "0", "redcloud-controller-1"]);
    assert!(killed.status.success(), "{}", text(&killed));
    assert!(d.cli(&["list", "swarm"]).contains("one.bin"));
    d.cli(&["download", "one.bin", "-o", "one.b.out", "--force"]);
    assert_eq!(std::fs::read(d.work().join("one.b.out")).unwrap(), one);

    // A chunkserver killed: downloads go on from the others.
    let killed = d.docker(&["stop", "-t", "0", "redcloud-chunkserver-1"]);
    assert!(killed.status.success(), "{}", text(&killed));
    d.cli(&["download", "one.bin", "-o", "one.c.out", "--force"]);
    assert_eq!(std::fs::read(d.work().join("one.c.out")).unwrap(), one);

    // Both come back (the same nodes, from their volumes), and a fourth chunkserver is filled.
    assert!(
        d.docker(&["start", "redcloud-controller-1"])
            .status
            .success()
    );
    d.script("scale-chunkserver.sh", &["4"]);
    let all = [cs[0], cs[1], cs[2], "redcloud-chunkserver-4:7200"];
    let filled = d.wait("the new chunkserver holds every chunk", |d| {
        d.status("redcloud-controller-2:7100")
            .is_some_and(|s| complete(&s, &all))
    });
    eprintln!("new chunkserver filled in {filled:?}");

    // Cut off controller 3 and chunkserver 3.
    for name in ["redcloud-controller-3", "redcloud-chunkserver-3"] {
        let cut = d.docker(&["network", "disconnect", "dfs-network", name]);
        assert!(cut.status.success(), "{}", text(&cut));
    }
    // The connected side takes a new file...
    let two = common::bytes(2 << 20, 62);
    std::fs::write(d.work().join("two.bin"), &two).unwrap();
    d.cli(&["add", "two.bin", "--tag", "swarm"]);
    // ...and the cut-off controller a tag, from a client in its own network namespace.
    let tagged = d.cli_via(
        Some(("container:redcloud-controller-3", "127.0.0.1:7100")),
        &["add-tags", "swarm", "--add", "cut-off"],
        "",
    );
    assert!(tagged.status.success(), "{}", text(&tagged));

    // Heal: everyone converges, and chunkserver 3 receives the chunks it missed.
    let heal = Instant::now();
    for (name, alias) in [
        ("redcloud-controller-3", "controller"),
        ("redcloud-chunkserver-3", "chunkserver"),
    ] {
        let joined = d.docker(&["network", "connect", "--alias", alias, "dfs-network", name]);
        assert!(joined.status.success(), "{}", text(&joined));
    }
    d.wait(
        "every controller has the same metadata and every chunk is everywhere",
        |d| {
            let views: Vec<Value> = (1..=3)
                .filter_map(|i| d.status(&format!("redcloud-controller-{i}:7100")))
                .collect();
            views.len() == 3
                && views.iter().all(|v| {
                    v["controller"]["metadata_digest"] == views[0]["controller"]["metadata_digest"]
                        && complete(v, &all)
                })
        },
    );
    eprintln!("partition healed and converged in {:?}", heal.elapsed());
    // Both sides' changes are there, through the controller that was cut off: the tag it
    // took (on the file it knew) and the file the other side took.
    let via_3 = Some(("dfs-network", "redcloud-controller-3:7100"));
    let tagged = d.cli_via(via_3, &["list", "cut-off"], "");
    assert!(
        String::from_utf8_lossy(&tagged.stdout).contains("one.bin"),
        "{}",
        text(&tagged)
    );
    let listed = d.cli_via(via_3, &["list", "swarm"], "");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("two.bin"),
        "{}",
        text(&listed)
    );
    let tagged_here = d.cli(&["list", "cut-off"]);
    assert!(tagged_here.contains("one.bin"), "{tagged_here}");
    let fetched = d.cli_via(via_3, &["download", "two.bin", "-o", "two.out"], "");
    assert!(fetched.status.success(), "{}", text(&fetched));
    assert_eq!(std::fs::read(d.work().join("two.out")).unwrap(), two);
    eprintln!("docker test took {:?}", started.elapsed());
}
