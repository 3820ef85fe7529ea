//! The repair worker: every pass it reads the metadata facts (with a live chunk set stamped by
//! the digest it was computed from), plans with [`super::plan`], gathers the orders into
//! batches of one target and source ([`super::batch`]) and sends each as one
//! `ReplicateChunks` to the target, with bounded concurrency and per-chunk exponential
//! backoff. A target that predates `ReplicateChunks` gets one `ReplicateChunk` per chunk.
//!
//! It also finishes drains, on proof only: [`super::drain::check`] must pass on current
//! knowledge, then every copy it counts is confirmed by a fresh `HasChunks` on the server
//! holding it, and only then is the server marked removed (and only if it is still draining).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::drain::{self, DrainInput, DrainServer};
use super::plan::{self, Health, Order, Server};
use crate::clock::NodeClock;
use crate::directory::{Directory, Target};
use crate::handle::MetaHandle;
use crate::live::LiveSet;
use crate::metrics::{Counter, Gauge, Metrics};
use crate::peers::Peers;
use crate::proof;
use crate::record::ChunkHash;
use crate::service::confirm;

/// Tunables of the repair loop.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    pub interval: Duration,
    /// Copy calls in flight at once (per controller), each a batch of up to
    /// [`super::batch::MAX_BATCH_CHUNKS`] chunks.
    pub concurrency: usize,
    /// Deadline of one copy call.
    pub copy_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Orders kept from one planning pass to start as earlier copies finish.
    pub queue_limit: usize,
    /// A peer counts as in sync if its metadata equalled ours this recently (drain proof).
    pub sync_freshness: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            concurrency: 8,
            copy_timeout: Duration::from_secs(120),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            queue_limit: 100_000,
            sync_freshness: Duration::from_secs(10),
        }
    }
}

/// Progress of the repair loop, shown by `status` and `/metrics`.
#[derive(Debug, Default)]
pub struct RepairStatus {
    pub queued: Gauge,
    pub in_flight: Gauge,
    pub done: Counter,
    pub failed: Counter,
    pub total_chunks: Gauge,
    pub under_replicated: Gauge,
    pub lost: Gauge,
    /// Draining servers and why each is not retired yet.
    pub drains: Mutex<BTreeMap<String, String>>,
}

/// What the repair worker works with.
#[derive(Debug, Clone)]
pub struct RepairParts {
    pub node_id: String,
    pub meta: MetaHandle,
    pub clock: Arc<NodeClock>,
    pub directory: Arc<Directory>,
    pub peers: Arc<Peers>,
    pub live: Arc<LiveSet>,
    pub status: Arc<RepairStatus>,
    pub metrics: Arc<Metrics>,
    pub chunks: crate::chunk_client::Dialer,
}

/// What became of each order of one copy call.
type Copied = Vec<(Order, Result<(), String>)>;

/// Per-chunk retry state after a failed copy.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

struct Worker {
    parts: RepairParts,
    config: RepairConfig,
    tasks: JoinSet<Copied>,
    /// The chunks of each running copy call, to release them if its task fails.
    running: HashMap<tokio::task::Id, Vec<ChunkHash>>,
    in_flight: HashSet<ChunkHash>,
    backoff: HashMap<ChunkHash, Backoff>,
    /// Planned orders not started yet, fewest replicas first; refilled by every pass and
    /// drained as copies finish, so the pipe stays full between passes.
    queue: VecDeque<Order>,
    /// Chunkserver id -> address, as of the last pass.
    addresses: HashMap<String, String>,
}

/// Runs the repair loop until `shutdown` turns true.
pub async fn run(parts: RepairParts, config: RepairConfig, mut shutdown: watch::Receiver<bool>) {
    let mut w = Worker {
        parts,
        config,
        tasks: JoinSet::new(),
        running: HashMap::new(),
        in_flight: HashSet::new(),
        backoff: HashMap::new(),
        queue: VecDeque::new(),
        addresses: HashMap::new(),
    };
    let mut tick = tokio::time::interval(w.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => w.pass().await,
            Some(done) = w.tasks.join_next_with_id(), if !w.tasks.is_empty() => w.finished(done),
        }
    }
    w.tasks.abort_all();
}

impl Worker {
    #[tracing::instrument(skip(self), level = "debug")]
    async fn pass(&mut self) {
        let p = self.parts.clone();
        let facts = match proof::gather(&p.meta, &p.live).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the metadata facts");
                return;
            }
        };
        p.directory.apply_membership(&facts.chunkservers);
        let now = p.clock.mono_ms();
        let now_i = Instant::now();
        self.backoff.retain(|_, b| b.until > now_i);
        let busy: HashSet<ChunkHash> = self
            .in_flight
            .iter()
            .chain(self.backoff.keys())
            .copied()
            .collect();
        let controllers = p.peers.visible_with(&p.node_id);
        let live = &facts.live.chunks;
        // Computed before taking the directory's lock (the check reads the directory too).
        let view = facts
            .check(
                &p.node_id,
                &p.peers,
                &p.directory,
                now,
                self.config.sync_freshness.as_millis() as u64,
            )
            .err()
            .map(|b| b.to_string());

        let (the_plan, addresses, drains) = p.directory.read(|reg| {
            let servers: Vec<Server> = reg
                .servers()
                .map(|s| Server {
                    id: s.id.clone(),
                    zone: s.zone.clone(),
                    free_bytes: s.free_bytes(),
                    health: reg.health(s, now),
                    alive: reg.alive(s, now),
                })
                .collect();
            let addresses: HashMap<String, String> = reg
                .servers()
                .map(|s| (s.id.clone(), s.address.clone()))
                .collect();
            let input = plan::Input {
                policy: facts.settings.replication,
                servers: &servers,
                holders: reg.holders(),
                me: &p.node_id,
                controllers: &controllers,
                busy: &busy,
                max_orders: self.config.queue_limit,
            };
            let the_plan = plan::plan(&input, live.iter().map(|(c, s)| (*c, *s)));
            let drain_servers: Vec<DrainServer> = reg
                .servers()
                .map(|s| DrainServer {
                    id: s.id.clone(),
                    health: reg.health(s, now),
                    inventory_current: reg.alive(s, now) && s.inventory_in_sync(),
                })
                .collect();
            let drains: Vec<(String, Result<drain::Confirmations, String>)> = servers
                .iter()
                .filter(|s| s.health == Health::Draining)
                .map(|s| {
                    let verdict = drain::check(&DrainInput {
                        server: &s.id,
                        policy: facts.settings.replication,
                        servers: &drain_servers,
                        holders: reg.holders(),
                        live,
                        view_not_current: view.clone(),
                    });
                    (s.id.clone(), verdict)
                })
                .collect();
            (the_plan, addresses, drains)
        });

        let st = &p.status;
        st.under_replicated.set(the_plan.under_replicated);
        st.lost.set(the_plan.lost);
        st.total_chunks.set(live.len() as u64);
        self.addresses = addresses;
        self.queue = the_plan.orders.into();
        self.start_queued();

        let mut reasons = BTreeMap::new();
        for (id, verdict) in drains {
            let why = match verdict {
                Ok(confirmations) => match self.finish_drain(&id, confirmations).await {
                    Ok(()) => continue,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            tracing::debug!(%id, reason = %why, "drain not complete yet");
            reasons.insert(id, why);
        }
        *st.drains.lock() = reasons;
    }

    /// Confirms every counted copy with its server, then retires `id`.
    async fn finish_drain(
        &self,
        id: &str,
        confirmations: drain::Confirmations,
    ) -> Result<(), String> {
        for (server, chunks) in confirmations {
            let address = self
                .addresses
                .get(&server)
                .ok_or_else(|| format!("no address for {server}"))?;
            let target = [Target {
                id: server.clone(),
                address: address.clone(),
            }];
            for batch in chunks.chunks(crate::service::MAX_CHUNKS_PER_CALL) {
                let found =
                    confirm::confirm_copies(&self.parts.chunks, &target, batch, false).await;
                if let Some(c) = batch.iter().find(|c| !found.contains_key(*c)) {
                    return Err(format!("{server} did not confirm chunk {}", hex::encode(c)));
                }
            }
        }
        let p = &self.parts;
        let clock = p.clock.clone();
        let server = id.to_owned();
        let retired = p
            .meta
            .mutate(move |s| {
                let c = s.finish_drain(&server, clock.now_ms())?;
                let done = c.is_some();
                Ok((done, c.into_iter().collect()))
            })
            .await
            .map_err(|e| e.to_string())?;
        if retired {
            tracing::info!(%id, "drain complete: every chunk confirmed elsewhere; chunkserver removed");
            p.metrics.drains_completed.inc();
        }
        Ok(())
    }

    /// Starts queued orders, in batches, until the concurrency limit is reached.
    fn start_queued(&mut self) {
        let st = self.parts.status.clone();
        while self.tasks.len() < self.config.concurrency {
            let (in_flight, addresses) = (&self.in_flight, &self.addresses);
            let batch = super::batch::next_batch(&mut self.queue, |o| {
                !in_flight.contains(&o.chunk)
                    && addresses.contains_key(&o.target)
                    && addresses.contains_key(&o.source)
            });
            let Some(first) = batch.first() else {
                break;
            };
            let target = self.addresses[&first.target].clone();
            let source = self.addresses[&first.source].clone();
            for o in &batch {
                self.in_flight.insert(o.chunk);
            }
            self.parts.metrics.repair_started.add(batch.len() as u64);
            st.in_flight.add(batch.len() as u64);
            let timeout = self.config.copy_timeout;
            let chunks = self.parts.chunks.clone();
            let ids = batch.iter().map(|o| o.chunk).collect();
            let task = self.tasks.spawn(async move {
                let copied = tokio::time::timeout(timeout, copy(&chunks, &target, &source, &batch))
                    .await
                    .unwrap_or_else(|_| vec![Err("copy timed out".into()); batch.len()]);
                batch.into_iter().zip(copied).collect()
            });
            self.running.insert(task.id(), ids);
        }
        st.queued.set(self.queue.len() as u64);
    }

    fn finished(&mut self, done: Result<(tokio::task::Id, Copied), tokio::task::JoinError>) {
        let st = self.parts.status.clone();
        let results = match done {
            Ok((id, results)) => {
                self.running.remove(&id);
                results
            }
            Err(e) => {
                // The task panicked: its chunks are free for the next pass to order again.
                tracing::error!(error = %e, "a repair copy task failed");
                for chunk in self.running.remove(&e.id()).unwrap_or_default() {
                    self.in_flight.remove(&chunk);
                    st.in_flight.sub(1);
                }
                Vec::new()
            }
        };
        let mut failed = HashSet::new();
        for (order, result) in results {
            self.in_flight.remove(&order.chunk);
            st.in_flight.sub(1);
            match result {
                Ok(()) => {
                    self.parts.directory.note_stored(&order.target, order.chunk);
                    st.done.inc();
                    self.parts.metrics.repair_done.inc();
                    self.backoff.remove(&order.chunk);
                }
                Err(e) => {
                    tracing::debug!(chunk = %hex::encode(order.chunk), target = %order.target,
                        source = %order.source, error = %e, "repair copy failed");
                    st.failed.inc();
                    self.parts.metrics.repair_failed.inc();
                    let prev = self.backoff.get(&order.chunk).map(|b| b.delay);
                    let delay = prev
                        .map(|d| (d * 2).min(self.config.backoff_max))
                        .unwrap_or(self.config.backoff_min);
                    self.backoff.insert(
                        order.chunk,
                        Backoff {
                            until: Instant::now() + delay,
                            delay,
                        },
                    );
                    failed.insert(order.chunk);
                }
            }
        }
        // Other orders for the failed chunks wait for their backoff too.
        if !failed.is_empty() {
            self.queue.retain(|o| !failed.contains(&o.chunk));
        }
        self.start_queued();
    }
}

/// Orders `target` to pull the chunks of `batch` from `source`: one result per order, in
/// order.
async fn copy(
    chunks: &crate::chunk_client::Dialer,
    target: &str,
    source: &str,
    batch: &[Order],
) -> Vec<Result<(), String>> {
    let all = |why: String| vec![Err(why); batch.len()];
    let mut client = match chunks.connect(target).await {
        Ok(c) => c,
        Err(e) => return all(format!("cannot reach {target}: {e}")),
    };
    let request = redcloud_proto::chunk::ReplicateChunksRequest {
        source: source.to_owned(),
        ids: batch
            .iter()
            .map(|o| Bytes::copy_from_slice(&o.chunk))
            .collect(),
    };
    match client.replicate_chunks(request).await {
        Ok(answer) => {
            let outcomes = answer.into_inner().chunks;
            if outcomes.len() != batch.len() {
                return all(format!(
                    "{target} answered {} of {} copies",
                    outcomes.len(),
                    batch.len()
                ));
            }
            outcomes
                .into_iter()
                .map(|o| match o.stored {
                    true => Ok(()),
                    false => Err(format!(
                        "{target} could not copy from {source}: {}",
                        o.error
                    )),
                })
                .collect()
        }
        // A chunkserver that predates ReplicateChunks.
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let mut results = Vec::with_capacity(batch.len());
            for o in batch {
                results.push(copy_one(&mut client, target, source, &o.chunk).await);
            }
            results
        }
        Err(s) => all(format!(
            "{target} could not copy from {source}: {}",
            s.message()
        )),
    }
}

/// Orders `target` to pull `chunk` from `source`, alone.
async fn copy_one(
    client: &mut crate::chunk_client::Client,
    target: &str,
    source: &str,
    chunk: &ChunkHash,
) -> Result<(), String> {
    client
        .replicate_chunk(redcloud_proto::chunk::ReplicateChunkRequest {
            id: Bytes::copy_from_slice(chunk),
            source: source.to_owned(),
        })
        .await
        .map_err(|s| format!("{target} could not copy from {source}: {}", s.message()))?;
    Ok(())
}
