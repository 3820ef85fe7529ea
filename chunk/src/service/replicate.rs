//! ReplicateChunks: many chunks pulled from one source in one call, what the repair loop
//! sends to fill a chunkserver.
//!
//! The chunks this server lacks are read from the source over its kept connection,
//! [`PIPELINE`] reads at once, each verified against its id as it arrives. They are stored
//! in groups of up to `MAX_BATCH_CHUNKS` chunks and `MAX_CHUNK_SIZE` bytes, one synced write
//! per group (`ChunkStore::put_many`), so a fill of small chunks costs a durable write per
//! group instead of one per chunk. Each chunk is answered on its own: a chunk the source
//! cannot give, or a group the store refuses, fails only its own chunks.
//!
//! Memory: the call holds `PIPELINE + 1` pull permits (the reads in flight and the group),
//! each standing for at most one chunk's worth of bytes.

use bytes::Bytes;
use futures::StreamExt;
use redcloud_proto::chunk::{ReplicateChunksRequest, ReplicateChunksResponse, ReplicateOutcome};
use tonic::Status;

use super::{ChunkServiceImpl, MAX_BATCH_CHUNKS, REPLICATE_TIMEOUT};
use crate::client;
use crate::error::{parse_id, store_status};
use crate::id::ChunkId;
use crate::metrics::{Rejection, add};
use crate::store::{MAX_CHUNK_SIZE, PutOutcome};

/// Most chunks one ReplicateChunks call may name.
pub const MAX_REPLICATE_IDS: usize = 1_024;
/// Reads from the source in flight at once within one call.
pub const PIPELINE: usize = 4;

/// Chunks read and waiting to be stored together: their place in the answer, id and bytes.
#[derive(Default)]
struct Group {
    chunks: Vec<(usize, ChunkId, Bytes)>,
    bytes: u64,
}

impl Group {
    /// Whether `len` more bytes would take the group past one write's limits.
    fn full_for(&self, len: u64) -> bool {
        self.chunks.len() >= MAX_BATCH_CHUNKS || self.bytes + len > MAX_CHUNK_SIZE
    }
}

fn failed(error: String) -> ReplicateOutcome {
    ReplicateOutcome {
        stored: false,
        already_present: false,
        size: 0,
        error,
    }
}

fn stored(size: u64, already_present: bool) -> ReplicateOutcome {
    ReplicateOutcome {
        stored: true,
        already_present,
        size,
        error: String::new(),
    }
}

impl ChunkServiceImpl {
    pub(super) async fn replicate_many(
        &self,
        request: ReplicateChunksRequest,
    ) -> Result<ReplicateChunksResponse, Status> {
        let source = request.source;
        if source.is_empty() {
            return Err(self.refuse(
                Rejection::Malformed,
                Status::invalid_argument("ReplicateChunks: the source is empty"),
            ));
        }
        if request.ids.len() > MAX_REPLICATE_IDS {
            let message = format!(
                "ReplicateChunks: {} ids exceed the limit of {MAX_REPLICATE_IDS}",
                request.ids.len()
            );
            return Err(self.refuse(Rejection::TooLarge, Status::invalid_argument(message)));
        }
        let ids = request
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("ids[{i}]"), id))
            .collect::<Result<Vec<ChunkId>, Status>>()
            .map_err(|s| self.refuse(Rejection::Malformed, s))?;

        let lookup = ids.clone();
        let known = self
            .blocking(move |store| lookup.iter().map(|id| store.info(id)).collect::<Vec<_>>())
            .await?;
        let mut answers: Vec<Option<ReplicateOutcome>> = vec![None; ids.len()];
        let mut missing = Vec::new();
        for (i, (id, info)) in ids.iter().zip(known).enumerate() {
            match info {
                Ok(Some(info)) => answers[i] = Some(stored(info.size, true)),
                Ok(None) => missing.push((i, *id)),
                Err(e) => answers[i] = Some(failed(store_status(e, Some(id)).message().into())),
            }
        }

        if !missing.is_empty() {
            // The reads in flight and the group being stored: each at most one chunk's worth.
            let _permits = self.pull_permits(PIPELINE as u32 + 1).await?;
            self.pull(&source, missing, &mut answers).await;
        }
        let chunks = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| failed("left unanswered".into())))
            .collect();
        Ok(ReplicateChunksResponse { chunks })
    }

    /// Reads `missing` from `source` and stores them, answering each in `answers`.
    async fn pull(
        &self,
        source: &str,
        missing: Vec<(usize, ChunkId)>,
        answers: &mut [Option<ReplicateOutcome>],
    ) {
        let source_client = match self.sources.get(source).await {
            Ok(c) => c,
            Err(e) => {
                self.sources.forget(source);
                add(
                    &self.metrics.replication_source_failures,
                    missing.len() as u64,
                );
                for (i, id) in missing {
                    answers[i] = Some(failed(format!(
                        "chunk {id}: replication source {source} failed: {e}"
                    )));
                }
                return;
            }
        };
        let credential = self.gate.node_metadata();
        let mut reads = futures::stream::iter(missing.into_iter().map(|(i, id)| {
            let (mut c, credential) = (source_client.clone(), credential.clone());
            async move {
                let read = client::read_chunk(&mut c, id, &credential);
                let r = match tokio::time::timeout(REPLICATE_TIMEOUT, read).await {
                    Ok(Ok(bytes)) => Ok(bytes),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {REPLICATE_TIMEOUT:?}")),
                };
                (i, id, r)
            }
        }))
        .buffer_unordered(PIPELINE);
        let mut group = Group::default();
        while let Some((i, id, read)) = reads.next().await {
            match read {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    if group.full_for(len) {
                        self.store_group(std::mem::take(&mut group), answers).await;
                    }
                    group.bytes += len;
                    group.chunks.push((i, id, bytes));
                }
                Err(why) => {
                    self.sources.forget(source);
                    add(&self.metrics.replication_source_failures, 1);
                    let message = format!("chunk {id}: replication source {source} failed: {why}");
                    tracing::warn!("{message}");
                    answers[i] = Some(failed(message));
                }
            }
        }
        self.store_group(group, answers).await;
    }

    /// Stores `group` in one durable write and answers its chunks.
    async fn store_group(&self, group: Group, answers: &mut [Option<ReplicateOutcome>]) {
        if group.chunks.is_empty() {
            return;
        }
        let (places, batch): (Vec<usize>, Vec<(ChunkId, Bytes)>) = group
            .chunks
            .into_iter()
            .map(|(i, id, bytes)| (i, (id, bytes)))
            .unzip();
        let sizes: Vec<u64> = batch.iter().map(|(_, b)| b.len() as u64).collect();
        match self.store_many(batch).await {
            Ok(outcomes) => {
                for ((i, outcome), size) in places.into_iter().zip(outcomes).zip(sizes) {
                    answers[i] = Some(stored(size, outcome == PutOutcome::AlreadyPresent));
                }
            }
            Err(status) => {
                for i in places {
                    answers[i] = Some(failed(status.message().to_owned()));
                }
            }
        }
    }
}
