//! `metadata_scale`: save, load, resident memory, and `list TAG` and `status` latency of the
//! metadata for 100k and 1M files.
//!
//! The files are added through `MetaStore::add_version` on in-memory storage (fast to fill);
//! one file in `RARE_EVERY` also carries the tag `rare`, and `MetaStore::list` of that tag
//! is timed (ten calls, then one after a new file): what a user's `list rare` costs the
//! metadata thread when the tag is selective; and so is what `status` reads (the live file
//! count and the conflict counts), first, second and after the new file. The load child times
//! the first of each after the load too: what a restarted controller answers with.
//! "Save" is compacting every document (`Automerge::save`) plus writing the snapshots to the
//! controller's RocksDB storage with synced writes; "load" is `MetaStore::open` on that
//! storage, measured in a child process (this bench binary re-executed) so its resident memory
//! before and after the load is the documents' alone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redcloud_meta::{MemStorage, MetaStore, NodeId, RocksStorage};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use crate::Profile;
use crate::cluster::{Cluster, USER, version};
use crate::results::{Report, Target, ms};

const BENCH: &str = "metadata_scale";
/// Environment variable that turns the bench binary into the load child.
pub const CHILD_ENV: &str = "REDCLOUD_BENCH_SCALE_LOAD";
/// The node id of the saved store, for the load child.
const NODE_ENV: &str = "REDCLOUD_BENCH_SCALE_NODE";
/// Anti-entropy period of the catch-up controllers (the controller's default).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// The catch-up measurement gives up after this long.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1200);
/// One file in this many carries the tag [`RARE`].
const RARE_EVERY: usize = 10_000;
const RARE: &str = "rare";
/// Timed `list` calls per size.
const LIST_CALLS: usize = 10;

/// What the load child reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct Loaded {
    pub files: usize,
    pub load_s: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    /// The first `list` of the rare tag and the first status counts after the load, in ms.
    pub first_list_ms: f64,
    pub first_status_ms: f64,
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The child's work: open the store saved in `dir` and report time and memory.
pub fn child_load(dir: &Path) -> Result<Loaded> {
    let storage = RocksStorage::open(dir.join("meta"))?;
    let rss_before = rss_bytes();
    let start = Instant::now();
    let store = MetaStore::open(
        Box::new(storage),
        redcloud_meta::Config::new(NodeId::new(std::env::var(NODE_ENV)?)?),
    )?;
    let load_s = start.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let start = Instant::now();
    store.list(USER, &[RARE.to_owned()])?;
    let first_list_ms = ms(start.elapsed());
    let start = Instant::now();
    let files = store.file_count()?;
    store.conflict_counts()?;
    let first_status_ms = ms(start.elapsed());
    Ok(Loaded {
        files,
        load_s,
        rss_before,
        rss_after,
        first_list_ms,
        first_status_ms,
    })
}

/// Runs `metadata_scale` for each size of the profile.
pub async fn run(report: &mut Report, profile: Profile) -> Result<()> {
    let sizes: &[usize] = match profile {
        Profile::Full => &[100_000, 1_000_000],
        Profile::Quick => &[5_000],
    };
    for &files in sizes {
        let mut r = tokio::task::spawn_blocking(move || one(files)).await??;
        let (dir, keypair) = r.saved.take().context("the saved store")?;
        let caught = catch_up(dir, keypair, files + 1).await?;
        let case = format!("{}k files", files / 1000);
        let per_100k = 100_000.0 / files as f64;
        report.info(
            BENCH,
            &case,
            "fill (add_version, memory storage)",
            r.fill_rate,
            "files/s",
        );
        report.figure(
            BENCH,
            &case,
            "longest metadata call while filling",
            ms(r.longest_add),
            "ms",
            Some(Target::AtMost(50.0)),
            "the slowest add_version, compactions included: a list or status waits behind it",
        );
        report.figure(
            BENCH,
            &case,
            "load rate after a crash",
            (files + 1) as f64 / r.crash_load.as_secs_f64(),
            "files/s",
            Some(Target::AtLeast(100_000.0)),
            "MetaStore::open of the uncompacted store (snapshots plus increments), in process",
        );
        report.info(
            BENCH,
            &case,
            "saved size per file",
            r.saved_bytes as f64 / files as f64,
            "B",
        );
        report.info(
            BENCH,
            &case,
            "save: Automerge::save of all docs",
            ms(r.save.0),
            "ms",
        );
        report.info(
            BENCH,
            &case,
            "save: synced RocksDB write",
            ms(r.save.1),
            "ms",
        );
        report.figure(
            BENCH,
            &case,
            "save per 100k files",
            ms(r.save.0 + r.save.1) * per_100k,
            "ms",
            Some(Target::AtMost(150.0)),
            "",
        );
        report.info(
            BENCH,
            &case,
            "list of a rare tag: fastest call",
            ms(r.list[0]),
            "ms",
        );
        report.figure(
            BENCH,
            &case,
            "list of a rare tag: slowest call",
            ms(r.list[r.list.len() - 1]),
            "ms",
            Some(Target::AtMost(50.0)),
            &format!(
                "{LIST_CALLS} calls of MetaStore::list returning {} files",
                files.div_ceil(RARE_EVERY)
            ),
        );
        report.figure(
            BENCH,
            &case,
            "list of a rare tag after one new file",
            ms(r.list_after_write),
            "ms",
            Some(Target::AtMost(50.0)),
            "",
        );
        report.figure(
            BENCH,
            &case,
            "status counts: first call",
            ms(r.status[0]),
            "ms",
            Some(Target::AtMost(50.0)),
            "file_count and conflict_counts, as status reads them",
        );
        report.info(
            BENCH,
            &case,
            "status counts: second call",
            ms(r.status[1]),
            "ms",
        );
        report.figure(
            BENCH,
            &case,
            "status counts after one new file",
            ms(r.status[2]),
            "ms",
            Some(Target::AtMost(50.0)),
            "",
        );
        report.info(BENCH, &case, "load time", r.loaded.load_s * 1e3, "ms");
        report.figure(
            BENCH,
            &case,
            "first list of a rare tag after the load",
            r.loaded.first_list_ms,
            "ms",
            Some(Target::AtMost(50.0)),
            "a restarted controller's first list",
        );
        report.figure(
            BENCH,
            &case,
            "first status counts after the load",
            r.loaded.first_status_ms,
            "ms",
            Some(Target::AtMost(50.0)),
            "",
        );
        report.figure(
            BENCH,
            &case,
            "load rate",
            r.loaded.files as f64 / r.loaded.load_s,
            "files/s",
            Some(Target::AtLeast(100_000.0)),
            "",
        );
        report.figure(
            BENCH,
            &case,
            "catch-up of a new controller",
            caught.took.as_secs_f64(),
            "s",
            Some(Target::AtMost(60.0)),
            "from its start to equal metadata, over 127.0.0.1",
        );
        report.info(
            BENCH,
            &case,
            "catch-up: bytes exchanged per file",
            caught.bytes as f64 / files as f64,
            "B",
        );
        report.info(
            BENCH,
            &case,
            "catch-up: requests",
            caught.requests as f64,
            "",
        );
        report.figure(
            BENCH,
            &case,
            "resident memory per file",
            r.loaded.rss_after.saturating_sub(r.loaded.rss_before) as f64 / files as f64,
            "B",
            Some(Target::AtMost(500.0)),
            "RSS growth of a fresh process across MetaStore::open",
        );
    }
    Ok(())
}

struct Scale {
    fill_rate: f64,
    /// The slowest `add_version` of the fill, with its share of compactions (a clone of the
    /// document, or all of a save when compacting inline): any call queued behind it on the
    /// metadata thread waits as long.
    longest_add: Duration,
    /// `MetaStore::open` of the store as a crash leaves it (not compacted).
    crash_load: Duration,
    saved_bytes: usize,
    save: (std::time::Duration, std::time::Duration),
    /// Times of the `list` calls, fastest first.
    list: Vec<std::time::Duration>,
    /// The list call after one more file was added.
    list_after_write: std::time::Duration,
    /// `status`'s counts: first call, second call, after one more file.
    status: [std::time::Duration; 3],
    loaded: Loaded,
    /// The saved store's directory and its node's key, for the catch-up.
    saved: Option<(TempDir, redcloud_p2p::Keypair)>,
}

fn one(files: usize) -> Result<Scale> {
    // The node id is the peer id of a key, as on a controller: the catch-up serves this store.
    let keypair = redcloud_p2p::Keypair::generate_ed25519();
    let node = NodeId::new(keypair.public().to_peer_id().to_string())?;
    let mut store = MetaStore::open(
        Box::new(MemStorage::new()),
        redcloud_meta::Config::new(node.clone()),
    )?;
    // As on a controller's metadata thread: documents are saved on a worker.
    store.compact_in_background();
    let start = Instant::now();
    let now = redcloud_meta::clock::system_ms();
    let mut longest_add = Duration::ZERO;
    for i in 0..files {
        let mut v = version((i % 251) as u8, 2);
        if i % RARE_EVERY == 0 {
            v.tags.push(RARE.into());
        }
        let call = Instant::now();
        store.add_version(USER, &format!("file-{i:07}"), v, now, None)?;
        longest_add = longest_add.max(call.elapsed());
    }
    let fill_rate = files as f64 / start.elapsed().as_secs_f64();
    // What `status` reads from the metadata: live files and conflicts.
    let status_counts = |store: &MetaStore| -> Result<std::time::Duration> {
        let start = Instant::now();
        let live = store.file_count()?;
        store.conflict_counts()?;
        let took = start.elapsed();
        if live < files {
            bail!("status counted {live} live files of {files}");
        }
        Ok(took)
    };
    let status_cold = status_counts(&store)?;
    let status_warm = status_counts(&store)?;
    let mut list = Vec::with_capacity(LIST_CALLS);
    for _ in 0..LIST_CALLS {
        let start = Instant::now();
        let found = store.list(USER, &[RARE.to_owned()])?;
        list.push(start.elapsed());
        if found.len() != files.div_ceil(RARE_EVERY) {
            bail!("list {RARE} found {} files", found.len());
        }
    }
    list.sort();
    // One more file dirties one document: the next list rereads that document's tags only.
    store.add_version(USER, "file-extra", version(7, 2), now, None)?;
    let start = Instant::now();
    store.list(USER, &[RARE.to_owned()])?;
    let list_after_write = start.elapsed();
    let status_after_write = status_counts(&store)?;
    // What a crash leaves: the documents' last snapshots plus the increments since (up to
    // `compact_after_increments` per document); a clean shutdown compacts instead.
    let uncompacted = store.into_storage();
    let start = Instant::now();
    let mut store = MetaStore::open(uncompacted, redcloud_meta::Config::new(node.clone()))?;
    let crash_load = start.elapsed();
    if store.file_count()? != files + 1 {
        bail!("the store reopened after a crash lost files");
    }
    let docs = store.docs();
    let start = Instant::now();
    store.compact_all()?;
    let automerge_save = start.elapsed();
    let mut memory = store.into_storage();
    let mut snapshots = Vec::new();
    for d in &docs {
        let name = d.to_string();
        let snapshot = memory.load(&name)?.snapshot.context("compacted")?;
        snapshots.push((name, snapshot));
    }
    drop(memory);
    let saved_bytes = snapshots.iter().map(|(_, s)| s.len()).sum();

    let dir = tempfile::tempdir()?;
    let rocks = RocksStorage::open(dir.path().join("meta"))?;
    let mut storage =
        MetaStore::open(Box::new(rocks), redcloud_meta::Config::new(node.clone()))?.into_storage();
    let start = Instant::now();
    for (name, snapshot) in &snapshots {
        storage.compact(name, snapshot)?;
    }
    let rocks_write = start.elapsed();
    drop(storage);
    drop(snapshots);

    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .env(CHILD_ENV, dir.path())
        .env(NODE_ENV, node.as_str())
        .output()
        .context("starting the load child")?;
    if !out.status.success() {
        bail!(
            "load child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("load child printed nothing")?;
    let loaded: Loaded = serde_json::from_str(line)?;
    // The files plus "file-extra".
    if loaded.files != files + 1 {
        bail!("loaded {} files, saved {}", loaded.files, files + 1);
    }
    Ok(Scale {
        fill_rate,
        longest_add,
        crash_load,
        saved_bytes,
        save: (automerge_save, rocks_write),
        list,
        list_after_write,
        status: [status_cold, status_warm, status_after_write],
        loaded,
        saved: Some((dir, keypair)),
    })
}

/// A new controller catching up with one that holds a saved store.
struct CatchUp {
    /// From the newcomer's start to equal digests.
    took: Duration,
    /// Sync requests and answers, both directions, both nodes.
    bytes: u64,
    requests: u64,
}

/// Starts a controller core (network, replication, metadata owner) on the store saved in
/// `dir`, then an empty one that bootstraps from it, and waits until their metadata is equal;
/// checks that the newcomer then lists `files` live files.
async fn catch_up(dir: TempDir, keypair: redcloud_p2p::Keypair, files: usize) -> Result<CatchUp> {
    let mut cluster = Cluster::start(0, SYNC_INTERVAL).await?;
    cluster.ignore_events();
    cluster.add_from(dir, keypair).await?;
    let start = Instant::now();
    cluster.add().await?;
    cluster.wait_equal(CATCH_UP_LIMIT).await?;
    let took = start.elapsed();
    let (mut bytes, mut requests) = (0, 0);
    for n in &cluster.nodes {
        bytes += n.metrics.request_bytes_sent.get() + n.metrics.response_bytes_received.get();
        requests += n.metrics.requests_sent.get();
    }
    let found = cluster.nodes[1].meta.call(|s| s.file_count()).await??;
    cluster.stop().await;
    if found != files {
        bail!("the new controller has {found} live files of {files}");
    }
    Ok(CatchUp {
        took,
        bytes,
        requests,
    })
}
