//! The gRPC `ChunkService`: decodes requests, runs the store on the blocking pool, encodes
//! answers. Every refusal goes through [`crate::error`] so clients see one clear line.
//!
//! Memory is bounded: a chunk being written or read is buffered whole (at most
//! `MAX_CHUNK_SIZE`), and at most [`MAX_TRANSFERS`] such buffers exist at once, plus
//! [`MAX_PULLS`] for chunks being pulled from another chunkserver (ReplicateChunk(s)). The
//! two are apart because a pull waits on the other server's transfers: two servers filling
//! each other with all their transfers held by pulls would each wait for the other until the
//! reads time out. Serving a read or a write waits on no other server. A caller that
//! stops sending a write or stops taking a read's frames for [`STREAM_IDLE_TIMEOUT`] loses
//! its stream and its buffer, so stalled callers cannot hold the transfer slots.

mod replicate;

pub use replicate::MAX_REPLICATE_IDS;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use redcloud_proto::FRAME_SIZE;
use redcloud_proto::chunk::chunk_service_server::ChunkService;
use redcloud_proto::chunk::write_chunk_request::Msg;
use redcloud_proto::chunk::{
    ChunkEntry, DeleteChunkRequest, DeleteChunkResponse, HasChunksRequest, HasChunksResponse,
    InfoRequest, InfoResponse, ListChunksRequest, ListChunksResponse, ReadChunkRequest,
    ReadChunkResponse, ReplicateChunkRequest, ReplicateChunkResponse, ReplicateChunksRequest,
    ReplicateChunksResponse, ScrubStats, WriteChunkRequest, WriteChunkResponse, WriteChunksRequest,
    WriteChunksResponse,
};
use redcloud_proto::trust::{Access, Gate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::client;
use crate::error::{id_status, join_status, parse_id, rejection_of, store_status};
use crate::id::ChunkId;
use crate::lineage::Lineage;
use crate::metrics::{Gauge, Metrics, Rejection, add, get};
use crate::node::NodeIdentity;
use crate::pool::ChunkPool;
use crate::store::{
    ChunkStore, Deletion, MAX_CHUNK_SIZE, PutOutcome, StoreError, now_ms, slice_range,
};

/// Most chunk buffers (writes, reads, replications) held at once: 32 x 8 MiB = 256 MiB.
pub const MAX_TRANSFERS: usize = 32;
/// Most chunk buffers held at once by pulls from other chunkservers: 16 x 8 MiB = 128 MiB.
pub const MAX_PULLS: usize = 16;
/// Most chunks in one WriteChunks call (its bytes are limited to `MAX_CHUNK_SIZE`).
pub const MAX_BATCH_CHUNKS: usize = 1_024;
/// Most ids in one HasChunks request.
pub const MAX_HAS_CHUNKS: usize = 100_000;
/// Entries per ListChunks page when the request does not say.
pub const DEFAULT_LIST_PAGE: usize = 1_000;
/// Most entries per ListChunks page (about 450 KB encoded).
pub const MAX_LIST_PAGE: usize = 10_000;
/// Longest wait for the next frame of a write, or for a reader to take the next frame of a
/// read (25 KiB/s at the frame size: far below any working link).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for fetching a chunk from a replication source.
pub const REPLICATE_TIMEOUT: Duration = Duration::from_secs(60);

/// `ChunkService` over any [`ChunkStore`].
pub struct ChunkServiceImpl {
    store: Arc<dyn ChunkStore>,
    metrics: Arc<Metrics>,
    node: NodeIdentity,
    lineage: Arc<Lineage>,
    transfers: Arc<Semaphore>,
    /// Buffers of chunks pulled from other chunkservers (see the module docs).
    pulls: Arc<Semaphore>,
    /// Who may call what: nodes of the cluster for internal calls, grant holders for reads
    /// and writes of one chunk.
    gate: Gate,
    /// Kept connections to other chunkservers (ReplicateChunk pulls from a source): a
    /// repair fill pulls many chunks from one source, each over the same connection.
    sources: ChunkPool,
}

/// `n` permits of `semaphore`, or UNAVAILABLE once it is closed (shutdown).
async fn permits(semaphore: &Arc<Semaphore>, n: u32) -> Result<OwnedSemaphorePermit, Status> {
    semaphore
        .clone()
        .acquire_many_owned(n)
        .await
        .map_err(|_| Status::unavailable("chunkserver is shutting down"))
}

type FrameStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ChunkServiceImpl {
    /// A service answering from `store`, counting into `metrics`.
    pub fn new(
        store: Arc<dyn ChunkStore>,
        metrics: Arc<Metrics>,
        node: NodeIdentity,
        lineage: Arc<Lineage>,
        gate: Gate,
        transport: redcloud_proto::transport::Transport,
    ) -> Self {
        Self {
            store,
            metrics,
            node,
            lineage,
            transfers: Arc::new(Semaphore::new(MAX_TRANSFERS)),
            pulls: Arc::new(Semaphore::new(MAX_PULLS)),
            gate,
            sources: ChunkPool::new(transport),
        }
    }

    /// Refuses a caller that is not a node of the cluster.
    fn node_only(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.gate
            .require_node(md)
            .map_err(|s| self.refuse(Rejection::Unauthenticated, s))
    }

    /// Refuses a caller with neither the node credential nor a grant for `access` to `id`.
    fn granted(
        &self,
        md: &tonic::metadata::MetadataMap,
        access: Access,
        id: &ChunkId,
    ) -> Result<(), Status> {
        self.gate
            .require_grant(md, access, id.as_bytes(), crate::store::now_ms())
            .map_err(|s| self.refuse(Rejection::Unauthenticated, s))
    }

    /// Runs `work` on the blocking pool: store calls may wait on the disk.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn ChunkStore) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&*store))
            .await
            .map_err(join_status)
    }

    async fn transfer_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        permits(&self.transfers, 1).await
    }

    /// Room for `n` chunks pulled from another chunkserver.
    async fn pull_permits(&self, n: u32) -> Result<OwnedSemaphorePermit, Status> {
        permits(&self.pulls, n).await
    }

    fn refuse(&self, why: Rejection, status: Status) -> Status {
        self.metrics.reject(why);
        status
    }

    /// Stores verified bytes, counting the outcome.
    async fn store_chunk(&self, id: ChunkId, bytes: Bytes) -> Result<PutOutcome, Status> {
        let size = bytes.len() as u64;
        match self.blocking(move |store| store.put(&id, &bytes)).await? {
            Ok(outcome) => {
                self.count_write(outcome, size);
                Ok(outcome)
            }
            Err(e) => Err(self.refused_write(e, Some(&id))),
        }
    }

    /// Stores `batch` in one durable write (all or nothing), counting the outcomes.
    async fn store_many(&self, batch: Vec<(ChunkId, Bytes)>) -> Result<Vec<PutOutcome>, Status> {
        let sizes: Vec<u64> = batch.iter().map(|(_, b)| b.len() as u64).collect();
        match self.blocking(move |store| store.put_many(&batch)).await? {
            Ok(outcomes) => {
                for (&outcome, size) in outcomes.iter().zip(sizes) {
                    self.count_write(outcome, size);
                }
                Ok(outcomes)
            }
            // A hash mismatch names its chunk; nothing of the batch was stored.
            Err(e) => Err(self.refused_write(e, None)),
        }
    }

    /// Counts one chunk write that succeeded.
    fn count_write(&self, outcome: PutOutcome, size: u64) {
        match outcome {
            PutOutcome::Stored => {
                add(&self.metrics.chunks_written, 1);
                add(&self.metrics.bytes_written, size);
            }
            PutOutcome::AlreadyPresent => add(&self.metrics.writes_already_present, 1),
        }
    }

    /// A write the store refused: logged, counted under its rejection counter if it has one,
    /// and turned into the caller's status.
    fn refused_write(&self, e: StoreError, id: Option<&ChunkId>) -> Status {
        match id {
            Some(id) => tracing::info!(chunk = %id, error = %e, "write refused"),
            None => tracing::info!(error = %e, "batch write refused"),
        }
        if let Some(why) = rejection_of(&e) {
            self.metrics.reject(why);
        }
        store_status(e, id)
    }

    /// Collects the data frames of a WriteChunk stream: exactly `size` bytes, or an error.
    async fn receive(
        &self,
        id: ChunkId,
        size: u64,
        stream: &mut Streaming<WriteChunkRequest>,
    ) -> Result<Bytes, Status> {
        // `size` was checked against MAX_CHUNK_SIZE, so this allocation is bounded.
        let mut bytes = BytesMut::with_capacity(size as usize);
        loop {
            let next = tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await;
            let message = match next {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => break,
                Err(_) => {
                    let got = bytes.len();
                    let message = format!(
                        "chunk {id}: write stream stalled after {got} of {size} bytes (nothing \
                         for {STREAM_IDLE_TIMEOUT:?}); nothing stored"
                    );
                    tracing::info!("{message}");
                    add(&self.metrics.stalled_streams, 1);
                    return Err(
                        self.refuse(Rejection::Truncated, Status::deadline_exceeded(message))
                    );
                }
                Ok(Err(e)) => {
                    let got = bytes.len();
                    let message = format!(
                        "chunk {id}: write stream broke after {got} of {size} bytes ({}); nothing stored",
                        e.message()
                    );
                    tracing::info!("{message}");
                    return Err(self.refuse(Rejection::Truncated, Status::aborted(message)));
                }
            };
            match message.msg {
                Some(Msg::Data(data)) if (bytes.len() + data.len()) as u64 <= size => {
                    bytes.extend_from_slice(&data);
                }
                Some(Msg::Data(_)) => {
                    let message =
                        format!("chunk {id}: more bytes than the {size} declared; nothing stored");
                    return Err(self.refuse(Rejection::TooLarge, Status::invalid_argument(message)));
                }
                Some(Msg::Header(_)) | None => {
                    let message = format!(
                        "chunk {id}: only the first message may be a header, and every later one must carry data"
                    );
                    return Err(
                        self.refuse(Rejection::Malformed, Status::invalid_argument(message))
                    );
                }
            }
        }
        if bytes.len() as u64 != size {
            let got = bytes.len();
            let message = format!(
                "chunk {id}: stream ended after {got} of {size} declared bytes; nothing stored"
            );
            return Err(self.refuse(Rejection::Truncated, Status::invalid_argument(message)));
        }
        Ok(bytes.freeze())
    }
}

#[tonic::async_trait]
impl ChunkService for ChunkServiceImpl {
    #[tracing::instrument(skip_all)]
    async fn write_chunk(
        &self,
        request: Request<Streaming<WriteChunkRequest>>,
    ) -> Result<Response<WriteChunkResponse>, Status> {
        let md = request.metadata().clone();
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(WriteChunkRequest {
                msg: Some(Msg::Header(header)),
            }) => header,
            _ => {
                let status =
                    Status::invalid_argument("WriteChunk: the first message must be the header");
                return Err(self.refuse(Rejection::Malformed, status));
            }
        };
        let id = parse_id("header.id", &header.id)
            .map_err(|status| self.refuse(Rejection::Malformed, status))?;
        self.granted(&md, Access::Write, &id)?;
        if header.size > MAX_CHUNK_SIZE {
            let err = StoreError::TooLarge {
                size: header.size,
                max: MAX_CHUNK_SIZE,
            };
            return Err(self.refuse(Rejection::TooLarge, store_status(err, Some(&id))));
        }
        let _permit = self.transfer_permit().await?;
        let _in_progress = Gauge::raise(&self.metrics.writes_in_progress);
        let bytes = self.receive(id, header.size, &mut stream).await?;
        let outcome = self.store_chunk(id, bytes).await?;
        Ok(Response::new(WriteChunkResponse {
            already_present: outcome == PutOutcome::AlreadyPresent,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn write_chunks(
        &self,
        request: Request<WriteChunksRequest>,
    ) -> Result<Response<WriteChunksResponse>, Status> {
        let md = request.metadata().clone();
        let chunks = request.into_inner().chunks;
        if chunks.len() > MAX_BATCH_CHUNKS {
            let message = format!(
                "WriteChunks: {} chunks exceed the limit of {MAX_BATCH_CHUNKS}; nothing stored",
                chunks.len()
            );
            return Err(self.refuse(Rejection::TooLarge, Status::invalid_argument(message)));
        }
        let total: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
        if total > MAX_CHUNK_SIZE {
            let message = format!(
                "WriteChunks: {total} bytes exceed the limit of {MAX_CHUNK_SIZE} per call; \
                 nothing stored"
            );
            return Err(self.refuse(Rejection::TooLarge, Status::invalid_argument(message)));
        }
        let now = now_ms();
        let mut batch = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.into_iter().enumerate() {
            let id = parse_id(&format!("chunks[{i}].id"), &chunk.id)
                .map_err(|status| self.refuse(Rejection::Malformed, status))?;
            let grant = (!chunk.grant.is_empty()).then_some(chunk.grant.as_bytes());
            self.gate
                .require_grant_in(&md, grant, Access::Write, id.as_bytes(), now)
                .map_err(|s| self.refuse(Rejection::Unauthenticated, s))?;
            batch.push((id, chunk.data));
        }
        // The call's bytes (at most one chunk's worth) count as one transfer.
        let _permit = self.transfer_permit().await?;
        let _in_progress = Gauge::raise(&self.metrics.writes_in_progress);
        let outcomes = self.store_many(batch).await?;
        let already_present = outcomes
            .iter()
            .map(|&o| o == PutOutcome::AlreadyPresent)
            .collect();
        Ok(Response::new(WriteChunksResponse { already_present }))
    }

    type ReadChunkStream = FrameStream<ReadChunkResponse>;

    #[tracing::instrument(skip_all)]
    async fn read_chunk(
        &self,
        request: Request<ReadChunkRequest>,
    ) -> Result<Response<Self::ReadChunkStream>, Status> {
        let md = request.metadata().clone();
        let request = request.into_inner();
        let id = parse_id("id", &request.id)?;
        self.granted(&md, Access::Read, &id)?;
        let permit = self.transfer_permit().await?;
        let bytes = self
            .blocking(move |store| store.get(&id))
            .await?
            .map_err(|e| {
                if matches!(e, StoreError::Corrupt(_)) {
                    add(&self.metrics.corrupt_reads, 1);
                }
                store_status(e, Some(&id))
            })?;
        let size = bytes.len() as u64;
        let end = match request.length {
            0 => size.max(request.offset),
            length => request.offset.saturating_add(length),
        };
        let data =
            slice_range(&bytes, request.offset..end).map_err(|e| store_status(e, Some(&id)))?;
        add(&self.metrics.reads, 1);
        add(&self.metrics.bytes_read, data.len() as u64);
        // At least one frame, so the client always learns the chunk size.
        let count = data.len().div_ceil(FRAME_SIZE).max(1);
        let frames = (0..count).map(move |i| {
            let start = i * FRAME_SIZE;
            ReadChunkResponse {
                data: data.slice(start..(start + FRAME_SIZE).min(data.len())),
                chunk_size: if i == 0 { size } else { 0 },
            }
        });
        let stalled = self.metrics.clone();
        Ok(Response::new(paced(id, frames, count, permit, move || {
            add(&stalled.stalled_streams, 1)
        })))
    }

    #[tracing::instrument(skip_all)]
    async fn has_chunks(
        &self,
        request: Request<HasChunksRequest>,
    ) -> Result<Response<HasChunksResponse>, Status> {
        self.node_only(request.metadata())?;
        let request = request.into_inner();
        let (raw, touch) = (request.ids, request.touch);
        if raw.len() > MAX_HAS_CHUNKS {
            let message = format!(
                "HasChunks: {} ids exceed the limit of {MAX_HAS_CHUNKS}",
                raw.len()
            );
            return Err(Status::invalid_argument(message));
        }
        let ids = raw
            .iter()
            .enumerate()
            .map(|(i, id)| ChunkId::from_slice(id).map_err(|e| id_status(&format!("ids[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let present = self
            .blocking(move |store| {
                if touch {
                    store.touch_many(&ids, now_ms())
                } else {
                    store.contains_many(&ids)
                }
            })
            .await?
            .map_err(|e| store_status(e, None))?;
        Ok(Response::new(HasChunksResponse { present }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_chunk(
        &self,
        request: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        self.node_only(request.metadata())?;
        let request = request.into_inner();
        let id = parse_id("id", &request.id)?;
        if request.lineage.len() > crate::lineage::MAX_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "DeleteChunk: {} lineage entries exceed the limit of {}",
                request.lineage.len(),
                crate::lineage::MAX_ENTRIES
            )));
        }
        if let Some(why) = self.lineage.refuse_delete(&request.lineage) {
            add(&self.metrics.deletes_refused, 1);
            tracing::warn!(chunk = %id, reason = %why, "delete refused");
            return Err(Status::failed_precondition(format!(
                "chunk {id}: delete refused: {why}"
            )));
        }
        let min_age_ms = request.min_age_ms;
        let deletion = self
            .blocking(move |store| store.delete_if_older(&id, min_age_ms, now_ms()))
            .await?
            .map_err(|e| store_status(e, Some(&id)))?;
        if deletion == Deletion::Deleted {
            add(&self.metrics.chunks_deleted, 1);
            tracing::debug!(chunk = %id, "deleted");
        }
        Ok(Response::new(DeleteChunkResponse {
            existed: deletion != Deletion::Absent,
            kept_young: deletion == Deletion::KeptYoung,
        }))
    }

    type ListChunksStream = FrameStream<ListChunksResponse>;

    #[tracing::instrument(skip_all)]
    async fn list_chunks(
        &self,
        request: Request<ListChunksRequest>,
    ) -> Result<Response<Self::ListChunksStream>, Status> {
        self.node_only(request.metadata())?;
        let request = request.into_inner();
        let mut after = match request.after.is_empty() {
            true => None,
            false => Some(parse_id("after", &request.after)?),
        };
        let page_size = match request.page_size {
            0 => DEFAULT_LIST_PAGE,
            n => (n as usize).min(MAX_LIST_PAGE),
        };
        let mut remaining = match request.limit {
            0 => u64::MAX,
            n => n,
        };
        let store = self.store.clone();
        // Pages are read lazily, as the client consumes them (HTTP/2 flow control pushes back).
        let stream = async_stream::try_stream! {
            while remaining > 0 {
                let want = page_size.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let store = store.clone();
                let page = tokio::task::spawn_blocking(move || store.list(after, want))
                    .await
                    .map_err(join_status)?
                    .map_err(|e| store_status(e, None))?;
                let Some(&(last, _)) = page.last() else { break };
                let full = page.len() == want;
                after = Some(last);
                remaining -= page.len() as u64;
                let chunks = page
                    .into_iter()
                    .map(|(id, size)| ChunkEntry { id: Bytes::copy_from_slice(id.as_bytes()), size })
                    .collect();
                yield ListChunksResponse { chunks };
                if !full {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn replicate_chunk(
        &self,
        request: Request<ReplicateChunkRequest>,
    ) -> Result<Response<ReplicateChunkResponse>, Status> {
        self.node_only(request.metadata())?;
        let request = request.into_inner();
        let id = parse_id("id", &request.id)?;
        let source = request.source;
        if source.is_empty() {
            return Err(Status::invalid_argument(format!(
                "chunk {id}: replication source is empty"
            )));
        }
        let known = self.blocking(move |store| store.info(&id)).await?;
        if let Some(info) = known.map_err(|e| store_status(e, Some(&id)))? {
            return Ok(Response::new(ReplicateChunkResponse {
                already_present: true,
                size: info.size,
            }));
        }
        let _permit = self.pull_permits(1).await?;
        let fetch = async {
            let mut source_client = self.sources.get(&source).await?;
            client::read_chunk(&mut source_client, id, &self.gate.node_metadata()).await
        };
        let bytes = match tokio::time::timeout(REPLICATE_TIMEOUT, fetch).await {
            Ok(Ok(bytes)) => bytes,
            failed => {
                self.sources.forget(&source);
                add(&self.metrics.replication_source_failures, 1);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {REPLICATE_TIMEOUT:?}"),
                };
                let message = format!("chunk {id}: replication source {source} failed: {why}");
                tracing::warn!("{message}");
                return Err(Status::unavailable(message));
            }
        };
        let size = bytes.len() as u64;
        let outcome = self.store_chunk(id, bytes).await?;
        tracing::debug!(chunk = %id, %source, "replicated");
        Ok(Response::new(ReplicateChunkResponse {
            already_present: outcome == PutOutcome::AlreadyPresent,
            size,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn replicate_chunks(
        &self,
        request: Request<ReplicateChunksRequest>,
    ) -> Result<Response<ReplicateChunksResponse>, Status> {
        self.node_only(request.metadata())?;
        self.replicate_many(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.node_only(request.metadata())?;
        let stats = self.store.stats();
        let m = &self.metrics;
        Ok(Response::new(InfoResponse {
            id: self.node.id.clone(),
            address: self.node.address.clone(),
            zone: self.node.zone.clone(),
            capacity_bytes: stats.capacity_bytes,
            used_bytes: stats.used_bytes,
            chunk_count: stats.chunk_count,
            inventory_digest: Bytes::copy_from_slice(&stats.inventory_digest),
            scrub: Some(ScrubStats {
                chunks_checked: get(&m.scrub_chunks_checked),
                bytes_checked: get(&m.scrub_bytes_checked),
                corrupt_found: get(&m.scrub_corrupt_found),
                passes_completed: get(&m.scrub_passes_completed),
            }),
        }))
    }
}

/// The response stream of a read: a task hands `frames` over one at a time and gives up (its
/// buffer and `permit` with it) when the reader takes none for [`STREAM_IDLE_TIMEOUT`]; the
/// reader then sees DEADLINE_EXCEEDED instead of a short stream.
fn paced(
    id: ChunkId,
    frames: impl Iterator<Item = ReadChunkResponse> + Send + 'static,
    count: usize,
    permit: OwnedSemaphorePermit,
    on_stall: impl FnOnce() + Send + 'static,
) -> FrameStream<ReadChunkResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _permit = permit;
        for frame in frames {
            match tokio::time::timeout(STREAM_IDLE_TIMEOUT, tx.send(frame)).await {
                Ok(Ok(())) => {}
                // The reader went away.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(%id, "read stream stalled; dropped");
                    on_stall();
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold((rx, 0usize), move |(mut rx, sent)| async move {
        match rx.recv().await {
            Some(frame) => Some((Ok(frame), (rx, sent + 1))),
            None if sent < count => {
                let message = format!(
                    "chunk {id}: the reader took no frame for {STREAM_IDLE_TIMEOUT:?}; stream dropped"
                );
                // Ends the stream after this error.
                Some((Err(Status::deadline_exceeded(message)), (rx, count)))
            }
            None => None,
        }
    });
    Box::pin(stream)
}
