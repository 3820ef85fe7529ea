//! Many uploads' calls, sent together: plans and commits to the controller, chunk writes to
//! each chunkserver.
//!
//! When one command uploads many files, each file still plans and commits on its own, but its
//! PlanUpload and CommitFile go to a [`Bulk`] queue instead of the controller. A task per kind
//! sends whatever is waiting as one call (at most [`MAX_FILES`] files), with at most
//! `IN_FLIGHT` calls of that kind at once: the requests that arrive while a call runs make up
//! the next one, so batches grow with the load (group commit) and a lone file is never held
//! back waiting for company.
//!
//! - Plans: the files' chunks go in one PlanUpload (a plan is per chunk, whatever the file), and
//!   each file gets back the plans of its own chunks.
//! - Commits: one CommitFiles. The controller confirms the batch's chunks with one HasChunks
//!   per chunkserver and writes its versions in one durable write; each file still gets its own
//!   answer, and a controller without CommitFiles (an older version) gets one CommitFile each.
//!
//! - Chunks ([`ChunkWrites`]): one WriteChunks per chunkserver carries up to 8 MiB of chunks,
//!   of one file or many, each with its own grant, stored with one synced write. Batches of a
//!   large file's chunks reach the size from which the chunkserver writes their bytes once,
//!   without its WAL.
//!
//! Files with many chunks (more than [`MAX_BATCHED_CHUNKS`]) and forced plans (the rewrite of
//! chunks a commit found lacking) skip the queues: their calls are large or rare already.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use parking_lot::Mutex;
use redcloud_chunk::client::{self, ClientError};
use redcloud_chunk::id::ChunkId;
use redcloud_chunk::pool::ChunkPool;
use redcloud_proto::controller::{
    ChunkPlan, ChunkRef, CommitFileOutcome, CommitFileRequest, CommitFileResponse,
    CommitFilesRequest, PlanUploadRequest, PlanUploadResponse,
};
use redcloud_proto::trust::grant_metadata;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::authed;
use super::connect::{Controllers, status_error};

/// Most files in one batched call (the controller takes up to 1,024 commits per call).
pub const MAX_FILES: usize = 256;
/// Files with more chunks than this plan and commit on their own, so that a batch stays far
/// below the controller's limit of chunks per call.
pub const MAX_BATCHED_CHUNKS: usize = 64;
/// Batched calls of one kind running at once.
const IN_FLIGHT: usize = 2;

/// Where uploads send their plans and commits: straight to the controller, or through the
/// batching queues.
#[derive(Debug, Clone)]
pub struct Bulk {
    queues: Option<Queues>,
}

#[derive(Debug, Clone)]
struct Queues {
    plans: Queue<Vec<ChunkRef>, PlanUploadResponse>,
    commits: Queue<CommitFileRequest, CommitFileResponse>,
}

impl Bulk {
    /// Every plan and commit its own call (one file).
    pub fn direct() -> Bulk {
        Bulk { queues: None }
    }

    /// Plans and commits gathered into batches by background tasks, which end when the last
    /// clone of the returned value is dropped.
    pub fn batched(ctl: &Controllers, token: &str) -> Bulk {
        let token: Arc<str> = token.into();
        let (c, t) = (ctl.clone(), token.clone());
        let plans = Queue::start(
            FILE_LIMITS,
            |_| 0,
            move |batch| {
                let (mut ctl, token) = (c.clone(), t.clone());
                async move { send_plans(&mut ctl, &token, batch).await }
            },
        );
        let (c, t) = (ctl.clone(), token);
        let commits = Queue::start(
            FILE_LIMITS,
            |_| 0,
            move |batch| {
                let (mut ctl, token) = (c.clone(), t.clone());
                async move { send_commits(&mut ctl, &token, batch).await }
            },
        );
        Bulk {
            queues: Some(Queues { plans, commits }),
        }
    }

    /// Plans `chunks` (`force`: all as new, no deduplication).
    pub async fn plan(
        &self,
        ctl: &mut Controllers,
        token: &str,
        chunks: Vec<ChunkRef>,
        force: bool,
    ) -> Result<PlanUploadResponse> {
        match &self.queues {
            Some(q) if !force && chunks.len() <= MAX_BATCHED_CHUNKS => q.plans.call(chunks).await,
            _ => plan_one(ctl, token, chunks, force).await,
        }
    }

    /// Commits one file: its answer, or why it was refused.
    pub async fn commit(
        &self,
        ctl: &mut Controllers,
        token: &str,
        request: CommitFileRequest,
    ) -> Result<CommitFileResponse> {
        match &self.queues {
            Some(q) if request.chunks.len() <= MAX_BATCHED_CHUNKS => q.commits.call(request).await,
            _ => commit_one(ctl, token, request).await,
        }
    }
}

/// Chunk writes to chunkservers, sent together: one queue per chunkserver, whose task sends
/// what is waiting as one WriteChunks call (at most `BATCH_BYTES` and the server's limit of
/// chunks), `IN_FLIGHT` calls at once. A chunkserver without WriteChunks (an older version)
/// gets one WriteChunk per chunk.
#[derive(Debug, Clone)]
pub struct ChunkWrites {
    pool: ChunkPool,
    queues: Arc<Mutex<HashMap<String, Queue<ChunkWrite, bool>>>>,
}

/// One chunk to write: id, bytes and its write grant.
type ChunkWrite = (ChunkId, Bytes, String);

/// Most chunk bytes in one WriteChunks call (the chunkserver's limit). The chunkserver writes
/// a batch's bytes once, without its WAL, from `redcloud_chunk::store::WRITE_ONCE_MIN` on.
const BATCH_BYTES: usize = redcloud_proto::MAX_CHUNK_SIZE;
/// Most chunks in one WriteChunks call (the chunkserver's limit).
const BATCH_CHUNKS: usize = redcloud_chunk::service::MAX_BATCH_CHUNKS;
/// Most queues kept, one per chunkserver; past it writes go one stream each.
const MAX_QUEUES: usize = 1_024;

impl ChunkWrites {
    /// Queues that write over `pool`'s connections; their tasks end when the last clone is
    /// dropped.
    pub fn new(pool: ChunkPool) -> ChunkWrites {
        ChunkWrites {
            pool,
            queues: Arc::default(),
        }
    }

    /// Writes one chunk to `addr` with its grant, in its chunkserver's next batch: answers
    /// whether it was already stored.
    pub async fn write(&self, addr: &str, id: ChunkId, data: Bytes, grant: &str) -> Result<bool> {
        let queue = {
            let mut queues = self.queues.lock();
            match queues.get(addr) {
                Some(queue) => Some(queue.clone()),
                None if queues.len() < MAX_QUEUES => {
                    let queue = self.start(addr);
                    queues.insert(addr.to_owned(), queue.clone());
                    Some(queue)
                }
                None => None,
            }
        };
        match queue {
            Some(queue) => queue.call((id, data, grant.to_owned())).await,
            None => write_one(&self.pool, addr, (id, data, grant.to_owned())).await,
        }
    }

    fn start(&self, addr: &str) -> Queue<ChunkWrite, bool> {
        let limits = Limits {
            jobs: BATCH_CHUNKS,
            weight: BATCH_BYTES,
        };
        let (pool, addr) = (self.pool.clone(), addr.to_owned());
        Queue::start(
            limits,
            |(_, data, _)| data.len(),
            move |batch| {
                let (pool, addr) = (pool.clone(), addr.clone());
                async move { send_batch(&pool, &addr, batch).await }
            },
        )
    }
}

/// Writes one batch of chunks to `addr`.
async fn send_batch(pool: &ChunkPool, addr: &str, batch: Vec<Job<ChunkWrite, bool>>) {
    let (chunks, answers): (Vec<ChunkWrite>, Vec<_>) = batch.into_iter().unzip();
    let sent = async {
        let mut c = pool.get(addr).await?;
        client::write_chunks(&mut c, chunks.clone(), &MetadataMap::new()).await
    }
    .await;
    match sent {
        Ok(present) => {
            for (present, answer) in present.into_iter().zip(answers) {
                let _ = answer.send(Ok(present));
            }
        }
        Err(ClientError::Status(s)) if s.code() == Code::Unimplemented => {
            for (chunk, answer) in chunks.into_iter().zip(answers) {
                let _ = answer.send(write_one(pool, addr, chunk).await);
            }
        }
        Err(e) => {
            pool.forget(addr);
            let e = anyhow!("{e}");
            answer_all(chunks.into_iter().zip(answers).collect(), &e);
        }
    }
}

/// Writes one chunk in its own WriteChunk stream.
async fn write_one(pool: &ChunkPool, addr: &str, (id, data, grant): ChunkWrite) -> Result<bool> {
    let written = async {
        let mut c = pool.get(addr).await?;
        client::write_chunk(&mut c, id, data, &grant_metadata(&grant)).await
    }
    .await;
    if written.is_err() {
        pool.forget(addr);
    }
    Ok(written?)
}

type Job<Q, A> = (Q, oneshot::Sender<Result<A>>);

/// Requests of one kind waiting to be sent together, and the task that sends them.
#[derive(Debug)]
struct Queue<Q, A> {
    jobs: mpsc::Sender<Job<Q, A>>,
}

impl<Q, A> Clone for Queue<Q, A> {
    fn clone(&self) -> Self {
        Queue {
            jobs: self.jobs.clone(),
        }
    }
}

/// How large one batch of a [`Queue`] may grow.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Most jobs.
    jobs: usize,
    /// Most total weight (see [`Queue::start`]); a job heavier than this goes alone.
    weight: usize,
}

/// Plans and commits: counted by file.
const FILE_LIMITS: Limits = Limits {
    jobs: MAX_FILES,
    weight: usize::MAX,
};

impl<Q: Send + 'static, A: Send + 'static> Queue<Q, A> {
    /// Starts the task: `send` sends one batch and answers every job in it. A batch takes
    /// what is waiting, up to `limits`, each job weighing `weigh(job)`.
    fn start<S, F>(limits: Limits, weigh: fn(&Q) -> usize, send: S) -> Self
    where
        S: Fn(Vec<Job<Q, A>>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job<Q, A>>(limits.jobs);
        tokio::spawn(async move {
            let calls = Arc::new(Semaphore::new(IN_FLIGHT));
            // A job that did not fit in the last batch starts the next one.
            let mut carried: Option<Job<Q, A>> = None;
            loop {
                let Ok(permit) = calls.clone().acquire_owned().await else {
                    return;
                };
                let first = match carried.take() {
                    Some(job) => job,
                    None => match rx.recv().await {
                        Some(job) => job,
                        None => return,
                    },
                };
                let mut weight = weigh(&first.0);
                let mut batch = vec![first];
                while batch.len() < limits.jobs {
                    match rx.try_recv() {
                        Ok(job) if weight.saturating_add(weigh(&job.0)) > limits.weight => {
                            carried = Some(job);
                            break;
                        }
                        Ok(job) => {
                            weight = weight.saturating_add(weigh(&job.0));
                            batch.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let sent = send(batch);
                tokio::spawn(async move {
                    sent.await;
                    drop(permit);
                });
            }
        });
        Queue { jobs: tx }
    }

    async fn call(&self, request: Q) -> Result<A> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((request, tx))
            .await
            .map_err(|_| anyhow!("the batching task ended"))?;
        rx.await.map_err(|_| anyhow!("the batching task ended"))?
    }
}

async fn plan_one(
    ctl: &mut Controllers,
    token: &str,
    chunks: Vec<ChunkRef>,
    force: bool,
) -> Result<PlanUploadResponse> {
    let request = PlanUploadRequest { chunks, force };
    ctl.call(|mut c| {
        let req = authed(request.clone(), token);
        async move { c.plan_upload(req).await.map(|r| r.into_inner()) }
    })
    .await
}

async fn commit_one(
    ctl: &mut Controllers,
    token: &str,
    request: CommitFileRequest,
) -> Result<CommitFileResponse> {
    ctl.call(|mut c| {
        let req = authed(request.clone(), token);
        async move { c.commit_file(req).await.map(|r| r.into_inner()) }
    })
    .await
}

/// Plans the chunks of every file of `batch` in one call. If the controller refuses the merged
/// request as invalid, each file asks on its own, so that one bad file cannot fail the others.
async fn send_plans(
    ctl: &mut Controllers,
    token: &str,
    batch: Vec<Job<Vec<ChunkRef>, PlanUploadResponse>>,
) {
    let mut seen = HashSet::new();
    let chunks: Vec<ChunkRef> = batch
        .iter()
        .flat_map(|(refs, _)| refs.iter())
        .filter(|r| seen.insert(r.id.clone()))
        .cloned()
        .collect();
    let request = PlanUploadRequest {
        chunks,
        force: false,
    };
    let sent = ctl
        .call(|mut c| {
            let req = authed(request.clone(), token);
            let answer = async move { c.plan_upload(req).await.map(|r| r.into_inner()) };
            fallback_on(Code::InvalidArgument, answer)
        })
        .await;
    match sent {
        Ok(Some(plan)) => {
            let by_id: HashMap<Bytes, ChunkPlan> =
                plan.chunks.into_iter().map(|p| (p.id.clone(), p)).collect();
            for (refs, answer) in batch {
                let chunks: Option<Vec<ChunkPlan>> =
                    refs.iter().map(|r| by_id.get(&r.id).cloned()).collect();
                let _ = answer.send(
                    chunks
                        .map(|chunks| PlanUploadResponse {
                            chunks,
                            write_quorum: plan.write_quorum,
                            hold_interval_ms: plan.hold_interval_ms,
                        })
                        .ok_or_else(|| anyhow!("the controller's plan left out chunks")),
                );
            }
        }
        Ok(None) => {
            for (refs, answer) in batch {
                let _ = answer.send(plan_one(ctl, token, refs, false).await);
            }
        }
        Err(e) => answer_all(batch, &e),
    }
}

/// Commits every file of `batch` in one CommitFiles call.
async fn send_commits(
    ctl: &mut Controllers,
    token: &str,
    batch: Vec<Job<CommitFileRequest, CommitFileResponse>>,
) {
    let (files, answers): (Vec<CommitFileRequest>, Vec<_>) = batch.into_iter().unzip();
    let call = CommitFilesRequest { files };
    let sent = ctl
        .call(|mut c| {
            let req = authed(call.clone(), token);
            let answer = async move { c.commit_files(req).await.map(|r| r.into_inner()) };
            // A controller that predates CommitFiles.
            fallback_on(Code::Unimplemented, answer)
        })
        .await;
    let requests = call.files;
    match sent {
        Ok(Some(response)) if response.files.len() == answers.len() => {
            for (outcome, answer) in response.files.into_iter().zip(answers) {
                let _ = answer.send(outcome_result(outcome));
            }
        }
        Ok(Some(response)) => {
            let why = anyhow!(
                "the controller answered {} of {} commits",
                response.files.len(),
                answers.len()
            );
            answer_all(requests.into_iter().zip(answers).collect(), &why);
        }
        Ok(None) => {
            for (request, answer) in requests.into_iter().zip(answers) {
                let _ = answer.send(commit_one(ctl, token, request).await);
            }
        }
        Err(e) => answer_all(requests.into_iter().zip(answers).collect(), &e),
    }
}

/// `answer`, where a refusal with `code` becomes `None`: the caller then asks file by file.
async fn fallback_on<T>(
    code: Code,
    answer: impl Future<Output = Result<T, Status>>,
) -> Result<Option<T>, Status> {
    match answer.await {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == code => Ok(None),
        Err(s) => Err(s),
    }
}

/// Gives every job of a failed call the call's error.
fn answer_all<Q, A>(batch: Vec<Job<Q, A>>, e: &anyhow::Error) {
    for (_, answer) in batch {
        let _ = answer.send(Err(anyhow!("{e:#}")));
    }
}

fn outcome_result(outcome: CommitFileOutcome) -> Result<CommitFileResponse> {
    match outcome.response {
        Some(response) if outcome.code == 0 => Ok(response),
        _ if outcome.code != 0 => Err(status_error(Status::new(
            Code::from(outcome.code),
            outcome.error,
        ))),
        _ => Err(anyhow!(
            "the controller answered a commit with neither file nor error"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use futures::StreamExt;
    use redcloud_proto::chunk::chunk_service_server::{ChunkService, ChunkServiceServer};
    use redcloud_proto::chunk::write_chunk_request::Msg;
    use redcloud_proto::chunk::*;
    use redcloud_proto::transport::{self, Transport};
    use tonic::{Request, Response, Streaming};

    use super::*;

    /// A chunkserver of a version before WriteChunks: it stores what WriteChunk streams bring
    /// and answers UNIMPLEMENTED to WriteChunks, as tonic does for an unknown method.
    #[derive(Default, Clone)]
    struct OldChunkserver {
        stored: Arc<Mutex<BTreeMap<ChunkId, Bytes>>>,
    }

    type Stream<T> = futures::stream::BoxStream<'static, Result<T, Status>>;

    fn absent<T>() -> Result<T, Status> {
        Err(Status::unimplemented("not in this version"))
    }

    #[tonic::async_trait]
    impl ChunkService for OldChunkserver {
        async fn write_chunk(
            &self,
            request: Request<Streaming<WriteChunkRequest>>,
        ) -> Result<Response<WriteChunkResponse>, Status> {
            let mut stream = request.into_inner();
            let (mut id, mut data) = (None, Vec::new());
            while let Some(frame) = stream.next().await {
                match frame?.msg {
                    Some(Msg::Header(header)) => {
                        id = Some(
                            ChunkId::from_slice(&header.id)
                                .map_err(|e| Status::invalid_argument(e.to_string()))?,
                        );
                    }
                    Some(Msg::Data(bytes)) => data.extend_from_slice(&bytes),
                    None => {}
                }
            }
            let id = id.ok_or_else(|| Status::invalid_argument("no header"))?;
            if ChunkId::of(&data) != id {
                return Err(Status::invalid_argument("hash mismatch"));
            }
            let before = self.stored.lock().insert(id, Bytes::from(data));
            Ok(Response::new(WriteChunkResponse {
                already_present: before.is_some(),
            }))
        }
        async fn write_chunks(
            &self,
            _: Request<WriteChunksRequest>,
        ) -> Result<Response<WriteChunksResponse>, Status> {
            absent()
        }
        type ReadChunkStream = Stream<ReadChunkResponse>;
        async fn read_chunk(
            &self,
            _: Request<ReadChunkRequest>,
        ) -> Result<Response<Self::ReadChunkStream>, Status> {
            absent()
        }
        async fn has_chunks(
            &self,
            _: Request<HasChunksRequest>,
        ) -> Result<Response<HasChunksResponse>, Status> {
            absent()
        }
        async fn delete_chunk(
            &self,
            _: Request<DeleteChunkRequest>,
        ) -> Result<Response<DeleteChunkResponse>, Status> {
            absent()
        }
        type ListChunksStream = Stream<ListChunksResponse>;
        async fn list_chunks(
            &self,
            _: Request<ListChunksRequest>,
        ) -> Result<Response<Self::ListChunksStream>, Status> {
            absent()
        }
        async fn replicate_chunk(
            &self,
            _: Request<ReplicateChunkRequest>,
        ) -> Result<Response<ReplicateChunkResponse>, Status> {
            absent()
        }
        async fn replicate_chunks(
            &self,
            _: Request<ReplicateChunksRequest>,
        ) -> Result<Response<ReplicateChunksResponse>, Status> {
            absent()
        }
        async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
            absent()
        }
    }

    #[tokio::test]
    async fn a_chunkserver_without_write_chunks_gets_every_chunk_one_stream_each() {
        let server = OldChunkserver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ChunkServiceServer::new(server.clone()))
                .serve_with_incoming(transport::incoming(listener)),
        );
        let writes = ChunkWrites::new(ChunkPool::new(Transport::plaintext()));
        // Small and large chunks, written at once so that they share batches.
        let chunks: Vec<(ChunkId, Bytes)> = [3_000usize, 70_000, 1 << 20, 2 << 20, 5, 900_000]
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let data: Bytes = (0..len).map(|b| (b * 31 + i * 7) as u8).collect();
                (ChunkId::of(&data), data)
            })
            .collect();
        let answers = tokio::time::timeout(
            Duration::from_secs(20),
            futures::future::join_all(
                chunks
                    .iter()
                    .map(|(id, data)| writes.write(&addr, *id, data.clone(), "grant")),
            ),
        )
        .await
        .expect("the writes finish");
        for answer in answers {
            assert!(!answer.expect("written despite UNIMPLEMENTED"));
        }
        let stored = server.stored.lock().clone();
        assert_eq!(stored.len(), chunks.len());
        for (id, data) in &chunks {
            assert_eq!(&stored[id], data);
        }
        serving.abort();
    }
}
