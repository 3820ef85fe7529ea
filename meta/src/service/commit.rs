//! Committing uploaded files: CommitFile for one, CommitFiles for a batch.
//!
//! A batch is what makes small files cheap: its chunks are confirmed with one HasChunks per
//! active chunkserver (with `touch`, so GC cannot take them before the commit), and its
//! versions are written by one job on the metadata owner, so they share one fsync. Each file
//! is still judged on its own: a file that is malformed, or whose chunks lack the write
//! quorum's confirmed copies, is refused or reported `missing` without holding back the rest.
//! Nothing is acknowledged before its version is durable.

use std::collections::HashSet;

use bytes::Bytes;
use redcloud_proto::controller as pb;
use tonic::Status;

use super::errors::{self, invalid};
use super::{Components, MAX_CHUNKS_PER_CALL, after, confirm, require_tags};
use crate::files::NewVersion;
use crate::record::ChunkHash;
use crate::repair::plan::Health;

/// Most files one CommitFiles may name. Their chunks together stay within
/// [`MAX_CHUNKS_PER_CALL`].
pub const MAX_FILES_PER_COMMIT: usize = 1_024;

/// One file of a commit, checked: everything the controller can judge without asking a
/// chunkserver.
struct Checked {
    name: String,
    version: NewVersion,
    after: u64,
    /// The file's distinct chunks, in order of first appearance.
    distinct: Vec<ChunkHash>,
}

/// Checks one file of a commit (the controller enforces the file model whatever the client
/// checked): tags present and valid, a valid name, 32-byte hashes, sizes that add up.
fn check(r: pb::CommitFileRequest) -> Result<Checked, Status> {
    require_tags("tags", &r.tags)?;
    if r.chunks.len() > MAX_CHUNKS_PER_CALL {
        return Err(invalid(
            "chunks",
            format!("at most {MAX_CHUNKS_PER_CALL} per file"),
        ));
    }
    let blake3: [u8; 32] = r.blake3[..]
        .try_into()
        .map_err(|_| invalid("blake3", "must be 32 bytes"))?;
    let mut chunks = Vec::with_capacity(r.chunks.len());
    let mut total = 0u64;
    for c in &r.chunks {
        if c.size > redcloud_proto::MAX_CHUNK_SIZE as u64 {
            return Err(invalid(
                "chunks.size",
                format!("{} is over the chunk limit", c.size),
            ));
        }
        chunks.push((super::chunk_hash(&c.id, "chunks.id")?, c.size));
        total = total.saturating_add(c.size);
    }
    if total != r.size {
        return Err(invalid(
            "size",
            format!("chunks add up to {total} bytes, not {}", r.size),
        ));
    }
    crate::names::validate_name(&r.name).map_err(errors::status)?;
    for t in &r.tags {
        crate::names::validate_tag(t).map_err(errors::status)?;
    }
    let mut seen = HashSet::new();
    let distinct = chunks
        .iter()
        .map(|(h, _)| *h)
        .filter(|h| seen.insert(*h))
        .collect();
    Ok(Checked {
        name: r.name,
        version: NewVersion {
            size: r.size,
            blake3,
            chunks,
            tags: r.tags,
        },
        after: r.after,
        distinct,
    })
}

/// Commits `files` for `user`; one answer per file, in order. An `Err` of the whole call means
/// nothing was committed (the batch itself was malformed, or no chunkserver can confirm).
pub async fn commit(
    p: &Components,
    user: String,
    files: Vec<pb::CommitFileRequest>,
) -> Result<Vec<Result<pb::CommitFileResponse, Status>>, Status> {
    if files.len() > MAX_FILES_PER_COMMIT {
        return Err(invalid(
            "files",
            format!("at most {MAX_FILES_PER_COMMIT} per call"),
        ));
    }
    let named: usize = files.iter().map(|f| f.chunks.len()).sum();
    if files.len() > 1 && named > MAX_CHUNKS_PER_CALL {
        return Err(invalid(
            "files",
            format!("at most {MAX_CHUNKS_PER_CALL} chunks per call"),
        ));
    }
    let n = files.len();
    // Check names and tags before asking any chunkserver anything.
    let checked: Vec<Result<Checked, Status>> = files.into_iter().map(check).collect();
    let asked: Vec<ChunkHash> = {
        let mut seen = HashSet::new();
        checked
            .iter()
            .flatten()
            .flat_map(|c| c.distinct.iter().copied())
            .filter(|h| seen.insert(*h))
            .collect()
    };
    // The write quorum, confirmed by the active chunkservers themselves (not soft state).
    let active = p.directory.servers_in(p.clock.mono_ms(), &[Health::Active]);
    if active.is_empty() && !asked.is_empty() {
        return Err(Status::unavailable(
            "no active chunkserver to confirm the upload",
        ));
    }
    let wanted = p.settings.write_quorum;
    let quorum = (wanted as usize).min(active.len()).max(1);
    let copies = confirm::confirm_copies(&p.chunks, &active, &asked, true).await;
    for (h, servers) in &copies {
        for s in servers {
            p.directory.note_stored(s, *h);
        }
    }
    let count = |h: &ChunkHash| copies.get(h).map_or(0, Vec::len);

    // Which files can commit; the others are answered now.
    let mut answers: Vec<Result<pb::CommitFileResponse, Status>> = Vec::with_capacity(n);
    let mut pending = Vec::new();
    let mut versions = Vec::new();
    for (index, c) in checked.into_iter().enumerate() {
        // Every slot is overwritten below: by the file's refusal, `missing` or its commit.
        answers.push(Err(Status::internal("file left unanswered")));
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                answers[index] = Err(e);
                continue;
            }
        };
        let fewest = c.distinct.iter().map(count).min().unwrap_or(quorum) as u32;
        let missing: Vec<Bytes> = c
            .distinct
            .iter()
            .filter(|h| count(h) < quorum)
            .map(|h| Bytes::copy_from_slice(h))
            .collect();
        if !missing.is_empty() {
            answers[index] = Ok(pb::CommitFileResponse {
                file: None,
                degraded: false,
                copies: fewest,
                quorum: quorum as u32,
                missing,
            });
            continue;
        }
        pending.push(Pending {
            index,
            fewest,
            degraded: (active.len() as u32) < wanted && !c.distinct.is_empty(),
            chunks: c.version.chunks.clone(),
        });
        versions.push((c.name, c.version, after(c.after)));
    }
    if versions.is_empty() {
        return Ok(answers);
    }

    // One job on the metadata owner for all of them: the versions of one document share one
    // change, and all share one fsync.
    let clock = p.clock.clone();
    let written = p
        .meta
        .mutate(move |s| Ok(s.add_versions(&user, versions, clock.now_ms())))
        .await
        .map_err(errors::status)?;
    for (wrote, done) in written.into_iter().zip(pending) {
        let file = match wrote {
            Ok(file) => file,
            Err(e) => {
                answers[done.index] = Err(errors::status(e));
                continue;
            }
        };
        // The new chunks count as live at once (the repair loop refreshes the rest).
        p.live.add(done.chunks);
        if done.degraded {
            p.metrics.degraded_writes.inc();
            tracing::warn!(file = %file.name, copies = done.fewest, wanted,
                "degraded write: fewer active chunkservers than the write quorum");
        }
        answers[done.index] = Ok(pb::CommitFileResponse {
            file: Some(super::file_info(&file)),
            degraded: done.degraded,
            copies: done.fewest,
            quorum: quorum as u32,
            missing: Vec::new(),
        });
    }
    Ok(answers)
}

/// A file whose chunks have their copies, waiting for its version to be written.
struct Pending {
    /// Its place in the request.
    index: usize,
    fewest: u32,
    degraded: bool,
    chunks: Vec<(ChunkHash, u64)>,
}
