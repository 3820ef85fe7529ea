//! `redcloud dev`: a local cluster on loopback for trying redcloud out and for tests.
//!
//! Starts N controllers and M chunkservers as child processes of this binary, each with its
//! data under one directory (so a restart picks up where it left off) and its log in
//! `DIR/logs/`. Controllers find each other through bootstrap addresses (mDNS is off so two
//! dev clusters on one machine never mix); chunkservers report to every controller. Ctrl-C
//! (or SIGTERM) stops every child and waits for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::args::DevArgs;

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Ports of one dev cluster, derived from the base port.
#[derive(Debug, Clone)]
pub struct Layout {
    pub base: u16,
    pub controllers: u16,
    pub chunkservers: u16,
}

impl Layout {
    pub fn controller_grpc(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + i)
    }
    pub fn chunkserver(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + 100 + i)
    }
    pub fn controller_p2p(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + 200 + i)
    }
    pub fn controller_metrics(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + 300 + i)
    }
    fn validate(&self) -> Result<()> {
        if self.controllers == 0 || self.chunkservers == 0 {
            bail!("--controllers and --chunkservers must be at least 1");
        }
        if self.controllers > 99 || self.chunkservers > 99 {
            bail!("at most 99 controllers and 99 chunkservers (ports are spaced by 100)");
        }
        if u32::from(self.base) + 400 > u32::from(u16::MAX) {
            bail!(
                "--base-port {} leaves no room for the cluster's ports",
                self.base
            );
        }
        Ok(())
    }
}

struct Node {
    name: String,
    child: Child,
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(args: DevArgs) -> Result<()> {
    let layout = Layout {
        base: args.base_port,
        controllers: args.controllers,
        chunkservers: args.chunkservers,
    };
    layout.validate()?;
    // Listen for Ctrl-C and SIGTERM before starting anything, so a signal that arrives while
    // the nodes start still stops every one of them.
    let mut signals = Signals::new()?;
    let logs = args.data.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let exe = std::env::current_exe().context("cannot find the redcloud binary")?;
    // The dev cluster runs with security on: one secret for all its nodes, kept in its data
    // directory (the CLI finds it there for operator commands).
    let secret_file = args.data.join("cluster.secret");
    if !secret_file.exists() {
        redcloud_proto::trust::ClusterSecret::generate()?.write_new(&secret_file)?;
    }
    // Its CA certificate, for clients without the secret (the CLI finds it there).
    let secret = redcloud_proto::trust::ClusterSecret::load(&secret_file)?;
    let ca = redcloud_proto::tls::ClusterCa::from_secret(&secret)?;
    fs::write(args.data.join("ca.pem"), ca.cert_pem())
        .with_context(|| format!("writing {}", args.data.join("ca.pem").display()))?;
    let mut nodes = Vec::new();
    let started = start_all(&exe, &args.data, &logs, &layout, &mut nodes).await;
    if let Err(e) = started {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    let controllers: Vec<String> = (0..layout.controllers)
        .map(|i| layout.controller_grpc(i))
        .collect();
    println!(
        "redcloud dev cluster running (data in {}):",
        args.data.display()
    );
    for i in 0..layout.controllers {
        println!(
            "  controller {i}  grpc {}  metrics http://{}/metrics",
            layout.controller_grpc(i),
            layout.controller_metrics(i)
        );
    }
    for i in 0..layout.chunkservers {
        println!("  chunkserver {i} grpc {}", layout.chunkserver(i));
    }
    println!("logs in {}", logs.display());
    if layout.base != 7100 || layout.controllers != 3 {
        println!("point the client at it with:");
        println!("  export REDCLOUD_CONTROLLERS={}", controllers.join(","));
    }
    println!("try:  redcloud register alice && redcloud login alice");
    println!("      redcloud add README.md --tag docs && redcloud list docs");
    println!("press Ctrl-C to stop");

    let outcome = watch(&mut nodes, &mut signals).await;
    println!("stopping...");
    stop_all(&mut nodes).await;
    outcome
}

async fn start_all(
    exe: &Path,
    data: &Path,
    logs: &Path,
    layout: &Layout,
    nodes: &mut Vec<Node>,
) -> Result<()> {
    let all_controllers: Vec<String> = (0..layout.controllers)
        .map(|i| layout.controller_grpc(i))
        .collect();
    for i in 0..layout.controllers {
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--data".into(),
            path_arg(&data.join(format!("controller-{i}"))),
            "--listen".into(),
            layout.controller_grpc(i),
            "--advertise".into(),
            layout.controller_grpc(i),
            "--p2p-listen".into(),
            format!("/ip4/127.0.0.1/tcp/{}", layout.base + 200 + i),
            "--metrics-listen".into(),
            layout.controller_metrics(i),
            "--no-mdns".into(),
            "--secret-file".into(),
            path_arg(&data.join("cluster.secret")),
        ];
        for j in (0..layout.controllers).filter(|j| *j != i) {
            args.push("--bootstrap".into());
            args.push(layout.controller_p2p(j));
        }
        nodes.push(spawn(
            exe,
            &args,
            &logs.join(format!("controller-{i}.log")),
            format!("controller {i}"),
        )?);
    }
    for i in 0..layout.chunkservers {
        let args: Vec<String> = vec![
            "chunkserver".into(),
            "--data".into(),
            path_arg(&data.join(format!("chunkserver-{i}"))),
            "--listen".into(),
            layout.chunkserver(i),
            "--advertise".into(),
            layout.chunkserver(i),
            "--controller".into(),
            all_controllers.join(","),
            "--secret-file".into(),
            path_arg(&data.join("cluster.secret")),
        ];
        nodes.push(spawn(
            exe,
            &args,
            &logs.join(format!("chunkserver-{i}.log")),
            format!("chunkserver {i}"),
        )?);
    }
    // A node that cannot start (port in use, bad data dir) exits at once: report it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in nodes.iter_mut() {
        if let Some(status) = n.child.try_wait()? {
            bail!(
                "{} exited at start ({status}); see its log in {}",
                n.name,
                logs.display()
            );
        }
    }
    Ok(())
}

fn spawn(exe: &Path, args: &[String], log: &Path, name: String) -> Result<Node> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        // Its nodes trust the CA derived from its own secret, whatever the caller's shell says.
        .env_remove("REDCLOUD_CA")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Node { name, child })
}

/// Ctrl-C and SIGTERM, registered once.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

/// Waits for Ctrl-C or SIGTERM; reports children that die meanwhile.
async fn watch(nodes: &mut [Node], signals: &mut Signals) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => return Ok(()),
            _ = signals.terminate.recv() => return Ok(()),
            _ = tick.tick() => {
                for n in nodes.iter_mut() {
                    if let Ok(Some(status)) = n.child.try_wait() {
                        eprintln!("warning: {} exited ({status}); the rest keep running", n.name);
                        n.name.push_str(" (exited)");
                    }
                }
            }
        }
    }
}

async fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            terminate(pid);
        }
    }
    for n in nodes.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, n.child.wait())
            .await
            .is_err()
        {
            let _ = n.child.kill().await;
        }
    }
}

/// Sends SIGTERM to a child we started.
#[allow(unsafe_code)]
fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid of our own child and a valid signal has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn path_arg(p: &Path) -> String {
    PathBuf::from(p).to_string_lossy().into_owned()
}
