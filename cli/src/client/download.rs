//! Downloading a file: resolve it with a controller, fetch its chunks in parallel straight
//! from chunkservers (each verified against its BLAKE3 id, falling back to the next replica on
//! any error), write each one at its offset in a temporary file beside the destination as soon
//! as it arrives, sync it, then rename it into place. A failed download leaves no partial file
//! behind.
//!
//! Each byte is hashed once, by the chunk check. The chunk list comes from the controller with
//! the file's record, its sizes must add up to the file's size, and every chunk's bytes must
//! hash to its id, so the file written is the file committed without hashing it a second time
//! as a whole.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use redcloud_chunk::client;
use redcloud_chunk::id::ChunkId;
use redcloud_proto::controller::{ChunkLocation, FileInfo, ResolveRequest};

use super::authed;
use super::connect::Controllers;
use super::progress;
use crate::session::Session;
use redcloud_chunk::pool::ChunkPool;

/// Chunks fetched (and held in memory: at most this many times `MAX_CHUNK_SIZE`) at the same
/// time by one download.
const PARALLEL_CHUNKS: usize = 8;

/// Downloads `name` (its head version, or `version`) to `output`.
pub async fn download(
    ctl: &mut Controllers,
    session: &Session,
    name: &str,
    version: Option<&str>,
    output: &Path,
    force: bool,
) -> Result<FileInfo> {
    if output.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            output.display()
        );
    }
    let token = session.token.clone();
    let req = ResolveRequest {
        name: name.to_owned(),
        version: version.unwrap_or_default().to_owned(),
    };
    let resolved = ctl
        .call(|mut c| {
            let r = authed(req.clone(), &token);
            async move { c.resolve(r).await.map(|r| r.into_inner()) }
        })
        .await?;
    let file = resolved
        .file
        .ok_or_else(|| anyhow!("controller resolved {name} without file details"))?;
    let expected: u64 = resolved.chunks.iter().map(|c| c.size).sum();
    if expected != file.size {
        bail!("controller's chunk list for {name} does not add up to its size");
    }

    let tmp = temp_path(output);
    let mut guard = TempFile {
        path: tmp.clone(),
        keep: false,
    };
    let out = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    out.set_len(file.size)
        .with_context(|| format!("cannot size {}", tmp.display()))?;
    let out = Arc::new(out);

    let bar = progress::bytes_bar(&format!("downloading {name}"), file.size);
    let pool = ChunkPool::new(ctl.transport().clone());
    let mut offset = 0;
    let jobs: Vec<(u64, ChunkLocation)> = resolved
        .chunks
        .into_iter()
        .map(|c| {
            let at = offset;
            offset += c.size;
            (at, c)
        })
        .collect();
    // Chunks are fetched several at once, each in its own task, and written where they belong
    // in whatever order they arrive, so a slow replica holds up only its own chunk.
    let mut fetched = futures::stream::iter(jobs.into_iter().map(|(at, loc)| {
        let pool = pool.clone();
        Aborting(tokio::spawn(async move {
            Ok::<_, anyhow::Error>((at, fetch(&pool, &loc).await?))
        }))
    }))
    .buffer_unordered(PARALLEL_CHUNKS);
    let mut writes = futures::stream::FuturesUnordered::new();
    while let Some(next) = fetched.next().await {
        let (at, data) = next.context("fetch task failed")??;
        let out = out.clone();
        writes.push(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            out.write_all_at(&data, at).map(|()| data.len() as u64)
        }));
        // Bounded: at most PARALLEL_CHUNKS writes (and their buffers) wait at once.
        while writes.len() >= PARALLEL_CHUNKS
            && let Some(done) = writes.next().await
        {
            bar.inc(written(done)?);
        }
    }
    while let Some(done) = writes.next().await {
        bar.inc(written(done)?);
    }
    bar.finish_and_clear();

    out.sync_all().context("flushing the downloaded file")?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move the download to {}", output.display()))?;
    guard.keep = true;
    Ok(file)
}

/// The length of a finished chunk write, or why it failed.
fn written(done: Result<std::io::Result<u64>, tokio::task::JoinError>) -> Result<u64> {
    done.context("write task failed")?
        .context("writing the downloaded file")
}

/// Fetches one chunk from the first replica that returns verified bytes.
async fn fetch(pool: &ChunkPool, loc: &ChunkLocation) -> Result<bytes::Bytes> {
    let id =
        ChunkId::from_slice(&loc.id).map_err(|e| anyhow!("controller sent a bad chunk id: {e}"))?;
    let mut errors = Vec::new();
    let credential = redcloud_proto::trust::grant_metadata(&loc.grant);
    for addr in &loc.addresses {
        let result = async {
            let mut c = pool.get(addr).await?;
            client::read_chunk(&mut c, id, &credential).await
        }
        .await;
        match result {
            Ok(data) if data.len() as u64 == loc.size => return Ok(data),
            Ok(data) => errors.push(format!(
                "{addr}: {} bytes, expected {}",
                data.len(),
                loc.size
            )),
            Err(e) => {
                pool.forget(addr);
                errors.push(format!("{addr}: {e}"));
            }
        }
    }
    if errors.is_empty() {
        bail!("chunk {id}: no chunkserver is known to hold it");
    }
    bail!("chunk {id}: every replica failed ({})", errors.join("; "))
}

fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".to_owned());
    let tmp = format!(".{name}.redcloud-{}.part", std::process::id());
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

/// Removes the temporary file unless the download completed (`keep`).
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A spawned task that is aborted when its handle is dropped (a failed download stops the
/// fetches still running).
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for Aborting<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
