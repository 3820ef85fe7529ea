//! `data_path`: what a user of a cluster of one controller and one chunkserver (one durable
//! copy, as `cp` + `sync` makes one) sees, beside the disk in the same run.
//!
//! - upload: one large file through the client library (`upload`, acknowledged = durable on
//!   the chunkserver and committed on the controller), against the median of three `cp` +
//!   `fsync` of the same file;
//! - download: the same file to a new file (`download`, verified and fsync'd), against the
//!   median of three plain copies;
//! - small files: many 4 KiB files in one call (`upload_many`, as one `redcloud add` of many
//!   files), in files per second, the median of three calls each with new files, beside
//!   copying the same directory and syncing it.
//!
//! Each small-file call starts after a `sync`, so that it does not pay for the writeback of
//! the gigabytes the large file left dirty (the reference copies start the same way).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redcloud::client::connect::Controllers;
use redcloud::client::{download, upload};
use redcloud::session::Session;
use redcloud_meta::node::{self, ControllerConfig};
use tokio::net::TcpListener;

use crate::Profile;
use crate::chunk_path::start_chunkserver;
use crate::repair::{login, wait_status};
use crate::results::{Report, Target, mib_s, ms};

const BENCH: &str = "data_path";
const HEARTBEAT: Duration = Duration::from_millis(200);
const SMALL_FILE: usize = 4096;
/// Timed `upload_many` calls of small files (the figure is their median).
const ROUNDS: usize = 3;

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut times = (0..runs).map(|_| f()).collect::<Result<Vec<_>>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// `cp src dst` (and `sync` when `durable`): a fresh destination each time.
fn copy_file(src: &Path, dst: &Path, durable: bool) -> Result<Duration> {
    let _ = std::fs::remove_file(dst);
    let start = Instant::now();
    std::fs::copy(src, dst)?;
    if durable {
        std::fs::File::open(dst)?.sync_all()?;
    }
    let took = start.elapsed();
    std::fs::remove_file(dst)?;
    Ok(took)
}

/// `cp -r src dst && sync`: every file copied, then all of them made durable.
fn copy_dir_synced(src: &Path, dst: &Path) -> Result<Duration> {
    let _ = std::fs::remove_dir_all(dst);
    let start = Instant::now();
    std::fs::create_dir(dst)?;
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        std::fs::copy(entry.path(), &to)?;
        copies.push(to);
    }
    // `sync` flushes everything dirty; syncing each copy and the directory is the same work
    // without touching the rest of the machine.
    for c in &copies {
        std::fs::File::open(c)?.sync_all()?;
    }
    std::fs::File::open(dst)?.sync_all()?;
    let took = start.elapsed();
    std::fs::remove_dir_all(dst)?;
    Ok(took)
}

/// `count` files of [`SMALL_FILE`] random bytes named `{prefix}{i}` in a new directory `dir`.
async fn small_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    seed: u64,
) -> Result<Vec<(PathBuf, String)>> {
    let (dir, prefix) = (dir.to_owned(), prefix.to_owned());
    blocking(move || {
        std::fs::create_dir(&dir)?;
        (0..count)
            .map(|i| {
                let name = format!("{prefix}{i:05}");
                let path = dir.join(&name);
                std::fs::write(&path, crate::data(SMALL_FILE, seed + i as u64))?;
                Ok((path, name))
            })
            .collect()
    })
    .await
}

/// Uploads `files` with `tag` in one `upload_many` (one `redcloud add` of many files); an
/// error if any file failed.
pub(crate) async fn upload_all(
    controllers: &mut Controllers,
    session: &mut Session,
    files: &[(PathBuf, String)],
    tag: &str,
) -> Result<()> {
    let options = upload::UploadOptions {
        quiet: true,
        ..Default::default()
    };
    let results = upload::upload_many(
        controllers,
        session,
        files,
        &[tag.to_string()],
        &options,
        |_, _| {},
    )
    .await?;
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(e.context("uploading the small files")),
        None => Ok(()),
    }
}

/// Whether two files hold the same bytes, compared 1 MiB at a time.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// Waits until the kernel has written back everything dirty (`sync`), so that a case does not
/// pay for the writeback of the one before.
async fn settle() -> Result<()> {
    let status = tokio::process::Command::new("sync").status().await?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Runs `data_path`.
pub async fn run(report: &mut Report, profile: Profile) -> Result<()> {
    let size: usize = profile.pick(1 << 30, 16 << 20);
    let small: usize = profile.pick(1000, 50);
    let work = tempfile::tempdir()?;
    let config = ControllerConfig {
        data_dir: work.path().join("controller"),
        cluster: "data-path-bench".into(),
        p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
        mdns: false,
        write_quorum: 1,
        secret: Some(crate::cluster::bench_secret()),
        ..ControllerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let controller = node::start(config, listener).await?;
    let ctl = controller.grpc_addr.to_string();
    let cs = start_chunkserver(
        &work.path().join("chunkserver"),
        std::slice::from_ref(&ctl),
        HEARTBEAT,
    )
    .await?;
    wait_status(&ctl, "the chunkserver is active", |s| {
        s.chunkservers.iter().any(|c| c.state == "active")
    })
    .await?;
    let mut session = Session {
        user: "bench".into(),
        token: login(&ctl).await?,
        last_write_hlc: 0,
    };
    let mut controllers = Controllers::new(vec![ctl.clone()], crate::cluster::bench_transport());

    // The large file and its references.
    let big = work.path().join("big.bin");
    let b = big.clone();
    blocking(move || Ok(std::fs::write(&b, crate::data(size, 4242))?)).await?;
    let (b, scratch) = (big.clone(), work.path().join("copy.bin"));
    let (cp_sync, cp) = blocking(move || {
        Ok((
            median(3, || copy_file(&b, &scratch, true))?,
            median(3, || copy_file(&b, &scratch, false))?,
        ))
    })
    .await?;
    let case = format!("{} MiB, {} build", size >> 20, crate::build());
    let start = Instant::now();
    upload::upload(
        &mut controllers,
        &mut session,
        &big,
        "big.bin",
        &["t".to_string()],
    )
    .await
    .context("uploading the large file")?;
    let up = start.elapsed();
    let out = work.path().join("big.out");
    let start = Instant::now();
    download::download(&mut controllers, &session, "big.bin", None, &out, false)
        .await
        .context("downloading the large file")?;
    let down = start.elapsed();
    let (b, o) = (big.clone(), out.clone());
    if !blocking(move || same_bytes(&b, &o)).await? {
        bail!("the downloaded file differs from the uploaded one");
    }
    let bytes = size as u64;
    report.info(
        BENCH,
        &case,
        "reference: cp + fsync (median of 3)",
        mib_s(bytes, cp_sync),
        "MiB/s",
    );
    report.info(
        BENCH,
        &case,
        "reference: cp (median of 3)",
        mib_s(bytes, cp),
        "MiB/s",
    );
    report.info(BENCH, &case, "upload (durable)", mib_s(bytes, up), "MiB/s");
    report.figure(
        BENCH,
        &case,
        "upload: cp + fsync time / upload time",
        cp_sync.as_secs_f64() / up.as_secs_f64(),
        "x",
        Some(Target::AtLeast(0.7)),
        "",
    );
    report.info(
        BENCH,
        &case,
        "download to a file",
        mib_s(bytes, down),
        "MiB/s",
    );
    report.figure(
        BENCH,
        &case,
        "download: cp time / download time",
        cp.as_secs_f64() / down.as_secs_f64(),
        "x",
        Some(Target::AtLeast(0.8)),
        "",
    );

    // Many small files in one call (three calls, new files each time), and (for comparison)
    // another set of the same size one upload at a time, as `add` did before it uploaded files
    // together.
    let mut sets = Vec::new();
    for round in 0..ROUNDS {
        let dir = work.path().join(format!("small{round}"));
        let seed = 9_000 + 10_000 * round as u64;
        sets.push(small_files(&dir, &format!("s{round}-"), small, seed).await?);
    }
    let one_by_one = small_files(&work.path().join("single"), "q", small, 90_000).await?;
    let (d, copy) = (work.path().join("small0"), work.path().join("small-copy"));
    settle().await?;
    let reference = blocking(move || median(3, || copy_dir_synced(&d, &copy))).await?;
    let mut takes = Vec::with_capacity(ROUNDS);
    for files in &sets {
        settle().await?;
        let start = Instant::now();
        upload_all(&mut controllers, &mut session, files, "small").await?;
        takes.push(start.elapsed());
    }
    takes.sort();
    let took = takes[ROUNDS / 2];
    settle().await?;
    let start = Instant::now();
    for (path, name) in &one_by_one {
        upload::upload(
            &mut controllers,
            &mut session,
            path,
            name,
            &["single".to_string()],
        )
        .await
        .with_context(|| format!("uploading {name}"))?;
    }
    let single = start.elapsed();
    let case = format!("{small} x 4 KiB, {} build", crate::build());
    let rate = |t: Duration| small as f64 / t.as_secs_f64().max(1e-9);
    report.info(
        BENCH,
        &case,
        "reference: cp -r + sync (median of 3)",
        rate(reference),
        "files/s",
    );
    report.info(BENCH, &case, "reference time", ms(reference), "ms");
    report.figure(
        BENCH,
        &case,
        "one add of all files (median of 3)",
        rate(took),
        "files/s",
        Some(Target::AtLeast(3000.0)),
        "",
    );
    report.info(
        BENCH,
        &case,
        "one add: slowest of 3",
        rate(takes[ROUNDS - 1]),
        "files/s",
    );
    report.info(
        BENCH,
        &case,
        "one add: fastest of 3",
        rate(takes[0]),
        "files/s",
    );
    report.info(BENCH, &case, "one file at a time", rate(single), "files/s");

    let _ = cs.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), cs.task).await;
    controller.stop().await;
    Ok(())
}
