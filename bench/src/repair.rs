//! `repair_fill`: a new chunkserver joins a cluster whose other chunkserver holds the chunks
//! of some files; the controller's repair loop orders copies until it holds every chunk. Two
//! cases: 1 GiB in large files (chunks of about 1 MiB), and many 4 KiB files (a chunk each,
//! uploaded in one `upload_many`). The reference copies the same bytes between two
//! directories in this process, a file per chunk (1 MiB pieces of the large files, the small
//! files as they are), each written and `fdatasync`'d. Detection (the first heartbeat making
//! the server active) is reported apart from the fill.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redcloud::client::connect::Controllers;
use redcloud::client::upload;
use redcloud::session::Session;
use redcloud_meta::node::{self, ControllerConfig};
use redcloud_proto::controller as pb;
use redcloud_proto::controller::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;

use crate::Profile;
use crate::chunk_path::start_chunkserver;
use crate::results::{Report, Target, mib_s, ms};

const BENCH: &str = "repair_fill";
const LIMIT: Duration = Duration::from_secs(600);
const HEARTBEAT: Duration = Duration::from_millis(200);

async fn api(addr: &str) -> Result<ControllerServiceClient<tonic::transport::Channel>> {
    let channel = crate::cluster::bench_transport()
        .endpoint(addr)?
        .connect()
        .await?;
    Ok(ControllerServiceClient::new(channel))
}

pub(crate) async fn status(addr: &str) -> Result<pb::StatusResponse> {
    let mut request = tonic::Request::new(pb::StatusRequest {});
    *request.metadata_mut() =
        redcloud_proto::trust::admin_metadata(&crate::cluster::bench_secret());
    Ok(api(addr).await?.status(request).await?.into_inner())
}

pub(crate) async fn login(addr: &str) -> Result<String> {
    let mut c = api(addr).await?;
    let _ = c
        .register(pb::RegisterRequest {
            user: "bench".into(),
            password: "bench-password".into(),
        })
        .await;
    Ok(c.login(pb::LoginRequest {
        user: "bench".into(),
        password: "bench-password".into(),
    })
    .await?
    .into_inner()
    .token)
}

/// Polls the controller's status until `done` holds; returns the time it took.
pub(crate) async fn wait_status(
    addr: &str,
    what: &str,
    done: impl Fn(&pb::StatusResponse) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(s) = status(addr).await
            && done(&s)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > LIMIT {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn holds_all(s: &pb::StatusResponse, address: &str) -> bool {
    let total = s.chunks.as_ref().map_or(0, |c| c.total);
    total > 0
        && s.chunkservers
            .iter()
            .any(|c| c.address == address && c.chunks == total)
}

/// The reference: copy `src`'s files into `dst`, 1 MiB pieces each fdatasync'd.
fn copy_dir(src: &Path, dst: &Path) -> Result<Duration> {
    let start = Instant::now();
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let bytes = std::fs::read(entry.path())?;
        let mut f = std::fs::File::create(dst.join(entry.file_name()))?;
        f.write_all(&bytes)?;
        f.sync_data()?;
    }
    Ok(start.elapsed())
}

/// What the first chunkserver holds before the new one joins.
#[derive(Clone, Copy)]
enum Files {
    /// `total` bytes in `count` files, uploaded one by one.
    Large { total: usize, count: usize },
    /// `count` files of `size` bytes, uploaded in one `upload_many`.
    Small { count: usize, size: usize },
}

impl Files {
    fn total(self) -> usize {
        match self {
            Files::Large { total, .. } => total,
            Files::Small { count, size } => count * size,
        }
    }

    fn count(self) -> usize {
        match self {
            Files::Large { count, .. } | Files::Small { count, .. } => count,
        }
    }

    fn size(self) -> usize {
        self.total() / self.count()
    }
}

/// Runs `repair_fill`.
pub async fn run(report: &mut Report, profile: Profile) -> Result<()> {
    let total: usize = profile.pick(1 << 30, 32 << 20);
    let large = Files::Large {
        total,
        count: profile.pick(16, 2),
    };
    let build = crate::build();
    fill(
        report,
        &format!("{} MiB, {build} build", total >> 20),
        large,
    )
    .await?;
    let count = profile.pick(4_000, 200);
    let small = Files::Small { count, size: 4096 };
    fill(report, &format!("{count} x 4 KiB, {build} build"), small).await
}

/// One case: upload `files`, start a new chunkserver, time its fill and the reference.
async fn fill(report: &mut Report, case: &str, files: Files) -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = ControllerConfig {
        data_dir: work.path().join("controller"),
        cluster: "repair-bench".into(),
        p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
        mdns: false,
        heartbeat_timeout_ms: 3_000,
        repair_interval: Duration::from_millis(200),
        secret: Some(crate::cluster::bench_secret()),
        ..ControllerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let controller = node::start(config, listener).await?;
    let ctl = controller.grpc_addr.to_string();
    let a = start_chunkserver(
        &work.path().join("a"),
        std::slice::from_ref(&ctl),
        HEARTBEAT,
    )
    .await?;
    wait_status(&ctl, "the first chunkserver is active", |s| {
        s.chunkservers.iter().any(|c| c.state == "active")
    })
    .await?;

    // The files, uploaded through the client.
    let token = login(&ctl).await?;
    let src = work.path().join("files");
    std::fs::create_dir_all(&src)?;
    let mut session = Session {
        user: "bench".into(),
        token,
        last_write_hlc: 0,
    };
    let mut paths = Vec::with_capacity(files.count());
    for i in 0..files.count() {
        let path = src.join(format!("f{i:05}"));
        let (p, size) = (path.clone(), files.size());
        tokio::task::spawn_blocking(move || std::fs::write(&p, crate::data(size, 77 + i as u64)))
            .await??;
        paths.push((path, format!("f{i:05}")));
    }
    let mut controllers = Controllers::new(vec![ctl.clone()], crate::cluster::bench_transport());
    let upload_start = Instant::now();
    match files {
        Files::Large { .. } => {
            for (path, name) in &paths {
                upload::upload(
                    &mut controllers,
                    &mut session,
                    path,
                    name,
                    &["t".to_string()],
                )
                .await
                .with_context(|| format!("uploading {name}"))?;
            }
        }
        Files::Small { .. } => {
            crate::data_path::upload_all(&mut controllers, &mut session, &paths, "t").await?;
        }
    }
    let uploaded = upload_start.elapsed();
    wait_status(&ctl, "the first chunkserver holds every chunk", |s| {
        holds_all(s, &a.addr)
    })
    .await?;
    let chunks = status(&ctl).await?.chunks.map_or(0, |c| c.total);

    // The new chunkserver.
    let start = Instant::now();
    let b = start_chunkserver(
        &work.path().join("b"),
        std::slice::from_ref(&ctl),
        HEARTBEAT,
    )
    .await?;
    let b_addr = b.addr.clone();
    let detected = wait_status(&ctl, "the new chunkserver is active", |s| {
        s.chunkservers
            .iter()
            .any(|c| c.address == b_addr && c.state == "active")
    })
    .await?;
    wait_status(&ctl, "the new chunkserver holds every chunk", |s| {
        holds_all(s, &b_addr)
    })
    .await?;
    let filled = start.elapsed() - detected;

    for s in [a, b] {
        let _ = s.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), s.task).await;
    }
    controller.stop().await;

    // Reference: the same bytes between two directories, 1 MiB pieces.
    let pieces = work.path().join("pieces");
    let copy = work.path().join("copy");
    std::fs::create_dir_all(&pieces)?;
    std::fs::create_dir_all(&copy)?;
    let (p, c) = (pieces.clone(), copy.clone());
    let reference = tokio::task::spawn_blocking(move || -> Result<Duration> {
        for (path, name) in &paths {
            let bytes = std::fs::read(path)?;
            for (j, piece) in bytes.chunks(1 << 20).enumerate() {
                std::fs::write(p.join(format!("{name}-{j}")), piece)?;
            }
        }
        copy_dir(&p, &c)
    })
    .await??;

    let bytes = files.total() as u64;
    report.info(BENCH, case, "chunks", chunks as f64, "");
    report.info(
        BENCH,
        case,
        "upload through the client",
        mib_s(bytes, uploaded),
        "MiB/s",
    );
    report.info(
        BENCH,
        case,
        "detection (start to active)",
        ms(detected),
        "ms",
    );
    report.info(BENCH, case, "fill after detection", ms(filled), "ms");
    report.info(BENCH, case, "fill rate", mib_s(bytes, filled), "MiB/s");
    report.info(
        BENCH,
        case,
        "chunks filled per second",
        chunks as f64 / filled.as_secs_f64().max(1e-9),
        "/s",
    );
    report.info(
        BENCH,
        case,
        "reference: copy with fdatasync",
        ms(reference),
        "ms",
    );
    report.figure(
        BENCH,
        case,
        "fill / copy time",
        filled.as_secs_f64() / reference.as_secs_f64(),
        "x",
        Some(Target::AtMost(1.25)),
        "",
    );
    Ok(())
}
