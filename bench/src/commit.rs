//! `metadata_commit`: file-add commits per second through a controller's metadata layer
//! (the owner thread, RocksDB persistence with a synced write per commit, and gossip to a
//! connected peer), against the bare Automerge commit loop writing the same keys in the same
//! run. The metadata store on in-memory storage is reported too, to show where time goes.

use std::time::{Duration, Instant};

use anyhow::Result;
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ObjType, ROOT};
use redcloud_meta::{MemStorage, MetaStore, NodeId};

use crate::Profile;
use crate::cluster::{Cluster, USER, version};
use crate::results::{Report, Target};

const BENCH: &str = "metadata_commit";
const SHARDS: usize = 16;
/// Commits in flight against the controller (as many concurrent API calls would be).
const IN_FLIGHT: usize = 16;
/// Files per job in the batched case: what one CommitFiles of an `add` of many files carries
/// (`redcloud::client::bulk::MAX_FILES`).
const BATCH: usize = 256;
/// Batched jobs in flight (the client's batched calls of one kind at once).
const BATCHES_IN_FLIGHT: usize = 2;

/// Bare Automerge: one transaction per file putting a version record, the head and a tag,
/// spread over 16 documents as the store shards them. Returns commits per second.
pub fn bare_loop(count: usize) -> f64 {
    let record = crate::data(120, 1);
    let mut docs: Vec<(Automerge, [automerge::ObjId; 3])> = (0..SHARDS)
        .map(|_| {
            let mut doc = Automerge::new();
            let mut tx = doc.transaction();
            let maps = ["versions", "heads", "tags"]
                .map(|name| tx.put_object(ROOT, name, ObjType::Map).expect("fresh root"));
            tx.commit();
            (doc, maps)
        })
        .collect();
    let start = Instant::now();
    for i in 0..count {
        let (doc, [versions, heads, tags]) = &mut docs[i % SHARDS];
        let key = format!("{USER}/f-{i}");
        let vid = format!("{i:016x}");
        let mut tx = doc.transaction();
        let _ = tx.put(&*versions, format!("{key}\0{vid}"), record.clone());
        let _ = tx.put(&*heads, key.as_str(), vid.as_str());
        let _ = tx.put(&*tags, format!("{key}\0t"), i as u64);
        tx.commit_with(CommitOptions::default().with_time(i as i64));
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// `MetaStore::add_version` on in-memory storage. Returns commits per second.
pub fn store_loop(count: usize) -> Result<f64> {
    let mut store = MetaStore::open(
        Box::new(MemStorage::new()),
        redcloud_meta::Config::new(NodeId::new("commit-bench")?),
    )?;
    let start = Instant::now();
    for i in 0..count {
        store.add_version(
            USER,
            &format!("f-{i}"),
            version(1, 2),
            redcloud_meta::clock::system_ms(),
            None,
        )?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Runs `metadata_commit`.
pub async fn run(report: &mut Report, profile: Profile) -> Result<()> {
    let case = &format!("file add, {} build", crate::build());
    let bare = tokio::task::spawn_blocking(move || bare_loop(profile.pick(20_000, 500))).await?;
    let mem = tokio::task::spawn_blocking(move || store_loop(profile.pick(10_000, 500))).await??;

    let count = profile.pick(4_000, 100);
    let cluster = Cluster::start(2, Duration::from_secs(1)).await?;
    cluster.wait_mesh(Duration::from_secs(60)).await?;
    cluster.wait_equal(Duration::from_secs(60)).await?;
    let meta = cluster.nodes[0].meta.clone();
    let start = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..count {
        if writes.len() >= IN_FLIGHT
            && let Some(r) = writes.join_next().await
        {
            r??;
        }
        let meta = meta.clone();
        writes.spawn(async move {
            meta.mutate(move |s| {
                let (_, c) = s.add_version(
                    USER,
                    &format!("c-{i}"),
                    version(1, 2),
                    redcloud_meta::clock::system_ms(),
                    None,
                )?;
                Ok(((), vec![c]))
            })
            .await
        });
    }
    while let Some(r) = writes.join_next().await {
        r??;
    }
    let took = start.elapsed();
    let controller = count as f64 / took.as_secs_f64();
    let replicated = cluster.wait_equal(Duration::from_secs(60)).await?;
    let batched = batched_loop(&meta, profile.pick(20_000, 512)).await?;
    let replicated_batched = cluster.wait_equal(Duration::from_secs(60)).await?;
    cluster.stop().await;

    report.info(BENCH, case, "bare Automerge commits", bare, "/s");
    report.info(BENCH, case, "MetaStore on memory storage", mem, "/s");
    report.info(
        BENCH,
        case,
        "controller (RocksDB, replication on)",
        controller,
        "/s",
    );
    report.info(
        BENCH,
        case,
        "peer caught up after the last commit",
        replicated.as_secs_f64() * 1e3,
        "ms",
    );
    report.figure(
        BENCH,
        case,
        "controller / bare Automerge",
        controller / bare,
        "x",
        Some(Target::AtLeast(0.8)),
        "",
    );
    report.info(
        BENCH,
        case,
        "MetaStore (memory) / bare Automerge",
        mem / bare,
        "x",
    );
    report.info(
        BENCH,
        case,
        "controller, 256 files per job (CommitFiles of a bulk add)",
        batched,
        "/s",
    );
    report.info(
        BENCH,
        case,
        "peer caught up after the last batch",
        replicated_batched.as_secs_f64() * 1e3,
        "ms",
    );
    report.figure(
        BENCH,
        case,
        "controller, 256 files per job / bare Automerge",
        batched / bare,
        "x",
        Some(Target::AtLeast(0.5)),
        "",
    );
    Ok(())
}

/// `count` file adds through the controller's owner thread in jobs of [`BATCH`] files
/// (`MetaStore::add_versions`, as CommitFiles runs them), [`BATCHES_IN_FLIGHT`] at once.
/// Returns files per second.
async fn batched_loop(meta: &redcloud_meta::handle::MetaHandle, count: usize) -> Result<f64> {
    let start = Instant::now();
    let mut jobs = tokio::task::JoinSet::new();
    for first in (0..count).step_by(BATCH) {
        if jobs.len() >= BATCHES_IN_FLIGHT
            && let Some(r) = jobs.join_next().await
        {
            r??;
        }
        let files: Vec<redcloud_meta::NewFile> = (first..count.min(first + BATCH))
            .map(|i| (format!("b-{i}"), version(1, 2), None))
            .collect();
        let meta = meta.clone();
        jobs.spawn(async move {
            meta.mutate(move |s| {
                let (answers, commits) =
                    s.add_versions(USER, files, redcloud_meta::clock::system_ms());
                for a in answers {
                    a?;
                }
                Ok(((), commits))
            })
            .await
        });
    }
    while let Some(r) = jobs.join_next().await {
        r??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
