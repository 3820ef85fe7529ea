//! The repair worker: every pass it refreshes the set of live chunks (when the metadata
//! changed), plans with [`super::plan`], and orders `ReplicateChunk` on target chunkservers
//! with bounded concurrency and per-chunk exponential backoff. It also finishes drains: a
//! draining server whose every chunk has enough copies elsewhere is marked removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::plan::{self, Health, Order, Server};
use crate::clock::wall_ms;
use crate::record::{ChunkHash, ChunkserverState};
use crate::service::Shared;

/// Tunables of the repair loop.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    pub interval: Duration,
    /// Copies in flight at once (per controller).
    pub concurrency: usize,
    /// Deadline of one copy.
    pub copy_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Orders kept from one planning pass to start as earlier copies finish.
    pub queue_limit: usize,
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
        }
    }
}

/// Per-chunk retry state after a failed copy.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

struct Worker {
    shared: Arc<Shared>,
    config: RepairConfig,
    tasks: JoinSet<(Order, Result<(), String>)>,
    in_flight: HashSet<ChunkHash>,
    backoff: HashMap<ChunkHash, Backoff>,
    /// Metadata digest the live set was computed from.
    live_digest: Option<[u8; 32]>,
    /// Planned orders not started yet, fewest replicas first; refilled by every pass and
    /// drained as copies finish, so the pipe stays full between passes.
    queue: std::collections::VecDeque<Order>,
    /// Chunkserver id -> address, as of the last pass.
    addresses: HashMap<String, String>,
}

/// Runs the repair loop until `shutdown` turns true.
pub async fn run(shared: Arc<Shared>, config: RepairConfig, mut shutdown: watch::Receiver<bool>) {
    let mut w = Worker {
        shared,
        config,
        tasks: JoinSet::new(),
        in_flight: HashSet::new(),
        backoff: HashMap::new(),
        live_digest: None,
        queue: std::collections::VecDeque::new(),
        addresses: HashMap::new(),
    };
    let mut tick = tokio::time::interval(w.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => w.pass().await,
            Some(done) = w.tasks.join_next(), if !w.tasks.is_empty() => w.finished(done),
        }
    }
    w.tasks.abort_all();
}

impl Worker {
    #[tracing::instrument(skip(self), level = "debug")]
    async fn pass(&mut self) {
        if let Err(e) = self.refresh_live().await {
            tracing::warn!(error = %e, "cannot read live chunks");
            return;
        }
        let members = match self
            .shared
            .meta
            .call(|s| (s.chunkservers(), s.settings()))
            .await
        {
            Ok((Ok(m), Ok(settings))) => (m, settings),
            _ => return,
        };
        let (members, settings) = members;
        let now_ms = wall_ms();
        let now = Instant::now();
        self.backoff.retain(|_, b| b.until > now);
        let busy: HashSet<ChunkHash> = self
            .in_flight
            .iter()
            .chain(self.backoff.keys())
            .copied()
            .collect();
        let mut controllers: Vec<String> = self
            .shared
            .peers
            .lock()
            .connected
            .iter()
            .map(|p| p.to_string())
            .collect();
        controllers.push(self.shared.node_id.clone());
        controllers.sort();
        let live = self.shared.live.snapshot();

        let (the_plan, addresses, draining) = {
            let mut reg = self.shared.registry.lock();
            for m in &members {
                reg.set_membership(&m.id, m.state);
            }
            let servers: Vec<Server> = reg
                .servers()
                .map(|s| Server {
                    id: s.id.clone(),
                    zone: s.zone.clone(),
                    free_bytes: s.free_bytes(),
                    health: reg.health(s, now_ms),
                })
                .collect();
            let addresses: HashMap<String, String> = reg
                .servers()
                .map(|s| (s.id.clone(), s.address.clone()))
                .collect();
            let input = plan::Input {
                policy: settings.replication,
                servers: &servers,
                holders: reg.holders(),
                me: &self.shared.node_id,
                controllers: &controllers,
                busy: &busy,
                max_orders: self.config.queue_limit,
            };
            let p = plan::plan(&input, live.iter().map(|(c, s)| (*c, *s)));
            let draining: Vec<String> = servers
                .iter()
                .filter(|s| s.health == Health::Draining)
                .filter(|s| drained(&reg, &s.id, &p, &live))
                .map(|s| s.id.clone())
                .collect();
            (p, addresses, draining)
        };

        let counters = &self.shared.repair;
        counters
            .under_replicated
            .store(the_plan.under_replicated, Ordering::Relaxed);
        counters.lost.store(the_plan.lost, Ordering::Relaxed);
        counters
            .total_chunks
            .store(live.len() as u64, Ordering::Relaxed);
        self.addresses = addresses;
        self.queue = the_plan.orders.into();
        self.start_queued();

        for id in draining {
            tracing::info!(%id, "drain complete; removing chunkserver");
            let _ = self
                .shared
                .meta
                .mutate(move |s| {
                    let c = s.set_chunkserver_state(&id, ChunkserverState::Removed, wall_ms())?;
                    Ok(((), c.into_iter().collect()))
                })
                .await;
        }
    }

    /// Starts queued orders until the concurrency limit is reached.
    fn start_queued(&mut self) {
        let counters = &self.shared.repair;
        while self.in_flight.len() < self.config.concurrency {
            let Some(order) = self.queue.pop_front() else {
                break;
            };
            if self.in_flight.contains(&order.chunk) {
                continue;
            }
            let (Some(target), Some(source)) = (
                self.addresses.get(&order.target),
                self.addresses.get(&order.source),
            ) else {
                continue;
            };
            self.in_flight.insert(order.chunk);
            self.shared.metrics.repair_started.inc();
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let (target, source) = (target.clone(), source.clone());
            let timeout = self.config.copy_timeout;
            self.tasks.spawn(async move {
                let r = tokio::time::timeout(timeout, copy(&target, &source, &order.chunk))
                    .await
                    .unwrap_or_else(|_| Err("copy timed out".into()));
                (order, r)
            });
        }
        counters
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    /// Recomputes the live chunk set when the metadata digest moved.
    async fn refresh_live(&mut self) -> Result<(), String> {
        let last = self.live_digest;
        let generation = self.shared.live.begin_refresh();
        let fresh = self
            .shared
            .meta
            .call(move |s| {
                let d = s.digest();
                if Some(d) == last {
                    return Ok(None);
                }
                s.live_chunks().map(|l| Some((d, l)))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let Some((digest, live)) = fresh {
            self.shared
                .live
                .replace(live.into_iter().collect(), generation);
            self.live_digest = Some(digest);
        }
        Ok(())
    }

    fn finished(&mut self, done: Result<(Order, Result<(), String>), tokio::task::JoinError>) {
        let Ok((order, result)) = done else {
            return;
        };
        self.in_flight.remove(&order.chunk);
        let counters = &self.shared.repair;
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.shared
                    .registry
                    .lock()
                    .note_stored(&order.target, order.chunk);
                counters.done.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.repair_done.inc();
                self.backoff.remove(&order.chunk);
            }
            Err(e) => {
                tracing::debug!(chunk = %hex::encode(order.chunk), target = %order.target,
                    source = %order.source, error = %e, "repair copy failed");
                counters.failed.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.repair_failed.inc();
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
                // Other orders for this chunk wait for the backoff too.
                self.queue.retain(|o| o.chunk != order.chunk);
            }
        }
        self.start_queued();
    }
}

/// Whether every live chunk on draining server `id` has its full count of active copies
/// elsewhere (nothing left to move).
fn drained(
    reg: &crate::registry::Registry,
    id: &str,
    p: &plan::Plan,
    live: &HashMap<ChunkHash, u64>,
) -> bool {
    let Some(server) = reg.server(id) else {
        return false;
    };
    let pending: HashSet<&ChunkHash> = p.orders.iter().map(|o| &o.chunk).collect();
    p.under_replicated == 0
        && live
            .keys()
            .filter(|c| server.holds(c))
            .all(|c| !pending.contains(c))
}

/// Orders `target` to pull `chunk` from `source`.
async fn copy(target: &str, source: &str, chunk: &ChunkHash) -> Result<(), String> {
    let mut client = crate::chunk_client::connect(target)
        .await
        .map_err(|e| format!("cannot reach {target}: {e}"))?;
    client
        .replicate_chunk(redcloud_proto::chunk::ReplicateChunkRequest {
            id: Bytes::copy_from_slice(chunk),
            source: source.to_owned(),
        })
        .await
        .map_err(|s| format!("{target} could not copy from {source}: {}", s.message()))?;
    Ok(())
}
