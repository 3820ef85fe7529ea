//! Many uploads' controller calls, sent together.
//!
//! When one command uploads many files, each file still plans and commits on its own, but its
//! PlanUpload and CommitFile go to a [`Bulk`] queue instead of the controller. A task per kind
//! sends whatever is waiting as one call (at most [`MAX_FILES`] files), with at most
//! [`IN_FLIGHT`] calls of that kind at once: the requests that arrive while a call runs make up
//! the next one, so batches grow with the load (group commit) and a lone file is never held
//! back waiting for company.
//!
//! - Plans: the files' chunks go in one PlanUpload (a plan is per chunk, whatever the file), and
//!   each file gets back the plans of its own chunks.
//! - Commits: one CommitFiles. The controller confirms the batch's chunks with one HasChunks
//!   per chunkserver and writes its versions in one durable write; each file still gets its own
//!   answer, and a controller without CommitFiles (an older version) gets one CommitFile each.
//!
//! Files with many chunks (more than [`MAX_BATCHED_CHUNKS`]) and forced plans (the rewrite of
//! chunks a commit found lacking) skip the queues: their calls are large or rare already.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use redcloud_proto::controller::{
    ChunkPlan, ChunkRef, CommitFileOutcome, CommitFileRequest, CommitFileResponse,
    CommitFilesRequest, PlanUploadRequest, PlanUploadResponse,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
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
        let plans = Queue::start(move |batch| {
            let (mut ctl, token) = (c.clone(), t.clone());
            async move { send_plans(&mut ctl, &token, batch).await }
        });
        let (c, t) = (ctl.clone(), token);
        let commits = Queue::start(move |batch| {
            let (mut ctl, token) = (c.clone(), t.clone());
            async move { send_commits(&mut ctl, &token, batch).await }
        });
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

impl<Q: Send + 'static, A: Send + 'static> Queue<Q, A> {
    /// Starts the task: `send` sends one batch and answers every job in it.
    fn start<S, F>(send: S) -> Self
    where
        S: Fn(Vec<Job<Q, A>>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job<Q, A>>(MAX_FILES);
        tokio::spawn(async move {
            let calls = Arc::new(Semaphore::new(IN_FLIGHT));
            loop {
                let Ok(permit) = calls.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_FILES {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
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
