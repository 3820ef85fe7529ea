//! Uploading a file: chunk it, ask a controller which chunks are new and where they go, write
//! those directly to chunkservers (several at once), then commit the version.
//!
//! A chunk counts as written once `write_quorum` chunkservers acknowledged it (each
//! acknowledgement is durable on that server); if a target fails, the next one offered by the
//! plan is tried. The controller commits only when the chunkservers themselves confirm the
//! quorum's copies of every chunk; it names the chunks that fall short, which are written
//! again (to fresh targets) before the commit is retried. A commit accepted with fewer copies
//! because fewer chunkservers are active is reported as degraded.
//!
//! While an upload runs longer than the plan's hold interval, a background task asks the
//! controller to hold the chunks written so far, so garbage collection never takes them
//! before the commit.
//!
//! Many files ([`upload_many`]) go up several at once over one set of chunkserver
//! connections, so a small file costs its round trips' latency once per batch of files rather
//! than once per file, and their plans and commits go to the controller in batches
//! ([`Bulk`]), so they share calls, HasChunks and fsyncs. Small chunks go to each
//! chunkserver in WriteChunks batches ([`ChunkWrites`]), so they share calls and the
//! chunkserver's synced write too.
//! Chunk bodies in flight are bounded in bytes across all of them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use redcloud_chunk::id::ChunkId;
use redcloud_proto::controller::{
    ChunkPlan, ChunkRef, CommitFileRequest, FileInfo, HoldChunksRequest,
};

use super::authed;
use super::bulk::{Bulk, ChunkWrites};
use super::chunking::{self, ChunkSpan};
use super::connect::Controllers;
use super::progress;
use crate::session::Session;
use redcloud_chunk::pool::ChunkPool;

/// Chunks written at the same time by one upload: about three WriteChunks batches of 1 MiB
/// chunks, so that while a chunkserver stores two, the next fills up to the size from which it
/// writes chunk bytes once (see `bulk::ChunkWrites`). `IN_FLIGHT_BYTES` bounds their memory.
const PARALLEL_CHUNKS: usize = 24;
/// Files uploaded at the same time by [`upload_many`]. Small files are latency-bound (a few
/// round trips each), so many go at once; memory stays bounded by `IN_FLIGHT_BYTES` and
/// `PARALLEL_CHUNKING`.
pub const PARALLEL_FILES: usize = 256;
/// Files larger than one chunk being chunked at the same time (each needs the chunker's
/// buffers, about 5 MiB, and a core).
const PARALLEL_CHUNKING: usize = 4;
/// Chunk bytes read into memory and not yet acknowledged, across all files of one command.
const IN_FLIGHT_BYTES: usize = 64 << 20;
/// The unit of [`Shared::budget`]'s permits.
const BUDGET_UNIT: usize = 1 << 10;
/// Commits tried before giving up when chunks keep lacking copies.
const COMMIT_ATTEMPTS: usize = 3;

/// What an upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub file: FileInfo,
    pub chunks: usize,
    /// Chunks actually sent (the rest were already stored).
    pub chunks_sent: usize,
    pub bytes_sent: u64,
    /// Committed with fewer copies than the write quorum (fewer chunkservers active).
    pub degraded: bool,
    /// Fewest confirmed copies of any chunk, and the quorum asked for.
    pub copies: u32,
    pub quorum: u32,
}

/// How an upload behaves beyond what it uploads.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// The time between the starts of a file's chunk writes, however many run at once (the
    /// first waits it too): a crude bandwidth cap for slow or shared links, and how tests make
    /// an upload outlast the GC grace period.
    pub pace: Option<std::time::Duration>,
    /// No per-file progress bars (many files at once show one bar for all).
    pub quiet: bool,
}

/// What every upload of one command shares: connections to chunkservers and the budget of
/// chunk bytes in memory.
#[derive(Debug, Clone)]
struct Shared {
    /// Chunk writes over one set of connections, small chunks in batches per chunkserver.
    writes: ChunkWrites,
    budget: Arc<tokio::sync::Semaphore>,
    chunking: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn new(ctl: &Controllers) -> Shared {
        Shared {
            writes: ChunkWrites::new(ChunkPool::new(ctl.transport().clone())),
            budget: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_BYTES / BUDGET_UNIT)),
            chunking: Arc::new(tokio::sync::Semaphore::new(PARALLEL_CHUNKING)),
        }
    }

    /// Waits until `len` more chunk bytes fit in memory.
    async fn reserve(&self, len: u64) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let units = usize::try_from(len.div_ceil(BUDGET_UNIT as u64))
            .unwrap_or(usize::MAX)
            .clamp(1, IN_FLIGHT_BYTES / BUDGET_UNIT);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        self.budget
            .acquire_many(units)
            .await
            .map_err(|_| anyhow!("upload budget closed"))
    }
}

/// Uploads `path` as `name` with `tags`.
pub async fn upload(
    ctl: &mut Controllers,
    session: &mut Session,
    path: &Path,
    name: &str,
    tags: &[String],
) -> Result<Uploaded> {
    upload_with(ctl, session, path, name, tags, &UploadOptions::default()).await
}

/// [`upload`] with options.
pub async fn upload_with(
    ctl: &mut Controllers,
    session: &mut Session,
    path: &Path,
    name: &str,
    tags: &[String],
    options: &UploadOptions,
) -> Result<Uploaded> {
    let shared = Shared::new(ctl);
    let token = session.token.clone();
    let after = session.last_write_hlc;
    let bulk = Bulk::direct();
    let up = upload_one(
        ctl, &shared, &token, after, path, name, tags, options, &bulk,
    )
    .await?;
    session.observe_write(up.file.hlc)?;
    Ok(up)
}

/// Uploads `files` (each a path and the name to store it under) with `tags`, up to
/// [`PARALLEL_FILES`] at once. One file's failure does not stop the others: every file gets
/// its own result, handed to `done` in the order given as soon as it and every file before it
/// finished, and returned in that order.
pub async fn upload_many(
    ctl: &mut Controllers,
    session: &mut Session,
    files: &[(PathBuf, String)],
    tags: &[String],
    options: &UploadOptions,
    mut done: impl FnMut(usize, &Result<Uploaded>),
) -> Result<Vec<Result<Uploaded>>> {
    check_distinct(files)?;
    // One connection to the controller for all of them, made before they fan out.
    ctl.ready().await?;
    let shared = Shared::new(ctl);
    let token = session.token.clone();
    let after = session.last_write_hlc;
    let ctl_template = ctl.clone();
    let bulk = Bulk::batched(ctl, &token);
    let mut results = Vec::with_capacity(files.len());
    let mut uploads = futures::stream::iter(files.iter().map(|(path, name)| {
        let mut ctl = ctl_template.clone();
        let shared = shared.clone();
        let token = token.clone();
        let bulk = bulk.clone();
        async move {
            upload_one(
                &mut ctl, &shared, &token, after, path, name, tags, options, &bulk,
            )
            .await
        }
    }))
    .buffered(PARALLEL_FILES);
    while let Some(result) = uploads.next().await {
        done(results.len(), &result);
        results.push(result);
    }
    let newest = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|u| u.file.hlc)
        .max();
    if let Some(hlc) = newest {
        session.observe_write(hlc)?;
    }
    Ok(results)
}

/// Two files stored under one name in one command would race for which becomes the newer
/// version; that is refused before anything is uploaded.
fn check_distinct(files: &[(PathBuf, String)]) -> Result<()> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for (path, name) in files {
        if let Some(first) = seen.insert(name.as_str(), path.as_path()) {
            bail!(
                "{} and {} would both be stored as {name}; add them in separate commands",
                first.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Uploads one file and commits it, after the session's last write `after`.
#[allow(clippy::too_many_arguments)]
async fn upload_one(
    ctl: &mut Controllers,
    shared: &Shared,
    token: &str,
    after: u64,
    path: &Path,
    name: &str,
    tags: &[String],
    options: &UploadOptions,
    bulk: &Bulk,
) -> Result<Uploaded> {
    let owned: PathBuf = path.to_owned();
    let size_hint = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let bar_for = |what: &str, total: u64| {
        if options.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            progress::bytes_bar(what, total)
        }
    };
    let hash_bar = bar_for(&format!("hashing {name}"), size_hint);
    let bar = hash_bar.clone();
    let chunking_permit = if size_hint > u64::from(chunking::MIN_CHUNK) {
        Some(
            shared
                .chunking
                .acquire()
                .await
                .map_err(|_| anyhow!("upload closed"))?,
        )
    } else {
        None
    };
    let fc =
        tokio::task::spawn_blocking(move || chunking::chunk_file(&owned, |n| bar.set_position(n)))
            .await
            .context("chunking task failed")??;
    drop(chunking_permit);
    hash_bar.finish_and_clear();

    // One entry per distinct chunk: a file may repeat content.
    let mut distinct: HashMap<[u8; 32], ChunkSpan> = HashMap::new();
    for c in &fc.chunks {
        distinct.entry(c.id).or_insert(*c);
    }
    let refs: Vec<ChunkRef> = distinct
        .values()
        .map(|c| ChunkRef {
            id: Bytes::copy_from_slice(&c.id),
            size: c.len,
        })
        .collect();
    let plan = bulk.plan(ctl, token, refs.clone(), false).await?;
    let quorum = plan.write_quorum.max(1) as usize;
    // Every chunk of the file is held while the upload runs (deduplicated ones too: their
    // last other reference could be deleted meanwhile).
    let holder = Holder::start(
        ctl.clone(),
        token.to_owned(),
        distinct.keys().copied().collect(),
        plan.hold_interval_ms,
    );
    let new: Vec<(ChunkSpan, ChunkPlan)> = plan
        .chunks
        .into_iter()
        .filter(|p| !p.exists)
        .map(|p| {
            let id: [u8; 32] = p.id[..]
                .try_into()
                .map_err(|_| anyhow!("controller sent a malformed chunk id"))?;
            let span = *distinct
                .get(&id)
                .ok_or_else(|| anyhow!("controller planned a chunk this file does not have"))?;
            Ok((span, p))
        })
        .collect::<Result<_>>()?;

    let bytes_to_send: u64 = new.iter().map(|(s, _)| s.len).sum();
    let bar = bar_for(&format!("uploading {name}"), bytes_to_send);
    let file =
        Arc::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let chunks_sent = new.len();
    write_all(shared, &file, path, new, quorum, &bar, options).await?;
    bar.finish_and_clear();

    let commit = CommitFileRequest {
        name: name.to_owned(),
        tags: tags.to_vec(),
        size: fc.size,
        blake3: Bytes::copy_from_slice(&fc.blake3),
        chunks: fc
            .chunks
            .iter()
            .map(|c| ChunkRef {
                id: Bytes::copy_from_slice(&c.id),
                size: c.len,
            })
            .collect(),
        after,
    };
    let mut resent = 0;
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        let response = bulk.commit(ctl, token, commit.clone()).await?;
        if response.missing.is_empty() {
            break response;
        }
        if attempt >= COMMIT_ATTEMPTS {
            bail!(
                "{} chunks of {name} lack their {} confirmed copies after {attempt} attempts \
                 (the chunkservers holding them may be failing); nothing was committed",
                response.missing.len(),
                response.quorum
            );
        }
        // Some chunks lack copies (a server died, or a deduplicated copy was collected):
        // write them again to the targets a fresh plan offers, then commit again.
        let missing: Vec<ChunkRef> = response
            .missing
            .iter()
            .filter_map(|id| <[u8; 32]>::try_from(&id[..]).ok())
            .filter_map(|id| distinct.get(&id))
            .map(|c| ChunkRef {
                id: Bytes::copy_from_slice(&c.id),
                size: c.len,
            })
            .collect();
        tracing::warn!(
            chunks = missing.len(),
            "chunks lack copies; writing them again"
        );
        let replan = bulk.plan(ctl, token, missing, true).await?;
        let quorum = replan.write_quorum.max(1) as usize;
        let again: Vec<(ChunkSpan, ChunkPlan)> = replan
            .chunks
            .into_iter()
            .filter_map(|p| {
                let id: [u8; 32] = p.id[..].try_into().ok()?;
                distinct.get(&id).map(|span| (*span, p))
            })
            .collect();
        resent += again.len();
        let bar = bar_for(&format!("re-sending {name}"), 0);
        write_all(shared, &file, path, again, quorum, &bar, options).await?;
        bar.finish_and_clear();
    };
    holder.stop().await;
    let file = response
        .file
        .ok_or_else(|| anyhow!("controller acknowledged the commit without the file"))?;
    Ok(Uploaded {
        file,
        chunks: fc.chunks.len(),
        chunks_sent: chunks_sent + resent,
        bytes_sent: bytes_to_send,
        degraded: response.degraded,
        copies: response.copies,
        quorum: response.quorum,
    })
}

/// Reads and writes `chunks` of `path`, several at once, each to `quorum` of its targets.
async fn write_all(
    shared: &Shared,
    file: &Arc<File>,
    path: &Path,
    chunks: Vec<(ChunkSpan, ChunkPlan)>,
    quorum: usize,
    bar: &indicatif::ProgressBar,
    options: &UploadOptions,
) -> Result<()> {
    let pace = options.pace.map(Pace::new);
    let pace = &pace;
    futures::stream::iter(chunks.into_iter().map(|(span, plan)| {
        let file = file.clone();
        let bar = bar.clone();
        let path = path.to_owned();
        async move {
            if let Some(pace) = pace {
                pace.wait().await;
            }
            let _budget = shared.reserve(span.len).await?;
            let data =
                tokio::task::spawn_blocking(move || chunking::read_span(&file, &span, &path))
                    .await
                    .context("read task failed")??;
            write_replicas(
                shared,
                span.id,
                Bytes::from(data),
                &plan.targets,
                quorum,
                &plan.grant,
            )
            .await?;
            bar.inc(span.len);
            Ok::<_, anyhow::Error>(())
        }
    }))
    .buffer_unordered(PARALLEL_CHUNKS)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// Spaces the starts of chunk writes `every` apart, whatever the parallelism.
struct Pace {
    every: std::time::Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(every: std::time::Duration) -> Pace {
        Pace {
            every,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now() + every),
        }
    }

    /// Waits for this write's turn.
    async fn wait(&self) {
        let turn = {
            let mut next = self.next.lock().await;
            let turn = (*next).max(tokio::time::Instant::now());
            *next = turn + self.every;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }
}

/// Asks the controller, every `interval`, to hold an upload's chunks while it runs.
struct Holder {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Holder {
    fn start(mut ctl: Controllers, token: String, ids: Vec<[u8; 32]>, interval_ms: u64) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        // The controller asks for a quarter of its GC grace; never hammer it faster than this.
        let interval = std::time::Duration::from_millis(interval_ms.max(100));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                for batch in ids.chunks(MAX_IDS_PER_HOLD) {
                    let req = HoldChunksRequest {
                        ids: batch.iter().map(|id| Bytes::copy_from_slice(id)).collect(),
                    };
                    let held = ctl
                        .call(|mut c| {
                            let r = authed(req.clone(), &token);
                            async move { c.hold_chunks(r).await.map(|r| r.into_inner()) }
                        })
                        .await;
                    if let Err(e) = held {
                        tracing::warn!(error = %e, "could not hold the upload's chunks");
                    }
                }
            }
        });
        Holder { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Ids per HoldChunks call (the controller's limit per call).
const MAX_IDS_PER_HOLD: usize = 100_000;

/// Writes one chunk to `quorum` of `targets`: the first `quorum` targets at once, then, for
/// each failure, the next untried target, until `quorum` copies are acknowledged or the
/// targets run out.
async fn write_replicas(
    shared: &Shared,
    id: [u8; 32],
    data: Bytes,
    targets: &[String],
    quorum: usize,
    grant: &str,
) -> Result<()> {
    let id = ChunkId(id);
    let write_one = |addr: String| {
        let data = data.clone();
        async move {
            let result = shared.writes.write(&addr, id, data, grant).await;
            (addr, result)
        }
    };
    let mut untried = targets.iter().cloned();
    let mut running: futures::stream::FuturesUnordered<_> =
        untried.by_ref().take(quorum).map(write_one).collect();
    let mut stored = 0;
    let mut errors = Vec::new();
    while let Some((addr, result)) = running.next().await {
        match result {
            Ok(_) => stored += 1,
            Err(e) => {
                errors.push(format!("{addr}: {e}"));
                if let Some(next) = untried.next() {
                    running.push(write_one(next));
                }
            }
        }
    }
    if stored == 0 {
        bail!(
            "chunk {id}: no chunkserver stored it ({})",
            if errors.is_empty() {
                "no target offered".to_owned()
            } else {
                errors.join("; ")
            }
        );
    }
    if stored < quorum {
        // Fewer live targets than the quorum: the controller will not commit unless the chunk
        // is stored, and repair adds the missing copies.
        tracing::warn!(chunk = %id, stored, quorum, "chunk stored below the write quorum");
    }
    Ok(())
}
