//! The heartbeat worker: tells every known controller, every `interval`, who this chunkserver
//! is, how full it is, its inventory digest and the chunks added or removed since the last
//! report that controller acknowledged.
//!
//! # Data flow
//!
//! On each tick the worker takes one [`InventorySnapshot`] of the [`TrackedStore`] (totals
//! and log position, consistent with each other) and, per controller, the [`Delta`] since
//! that controller's acknowledged position. Calls run concurrently, each with a deadline; a
//! controller whose previous call is still running skips the tick, so a dead or slow
//! controller never delays the others. A controller's position advances only when it answers.
//! When the log cannot describe what a controller missed (dropped entries, or a controller
//! first met after a restart while chunks exist), the heartbeat carries no deltas: the
//! controller cannot explain the digest and pulls the inventory with ListChunks.
//!
//! The set of controllers starts from the configuration and grows with every address a
//! controller lists in its answer (bounded by [`MAX_CONTROLLERS`]).
//!
//! [`ControllerSet`] is the pure core (positions and reachability); [`HeartbeatWorker`] does
//! the IO.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use redcloud_proto::MAX_MESSAGE_SIZE;
use redcloud_proto::controller::registry_service_client::RegistryServiceClient;
use redcloud_proto::controller::{HeartbeatRequest, HeartbeatResponse};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::id::ChunkId;
use crate::inventory_log::Delta;
use crate::lineage::Lineage;
use crate::metrics::{Metrics, add};
use crate::node::{NodeIdentity, is_host_port};
use crate::store::{InventorySnapshot, TrackedStore};

/// Default time between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Default deadline for one heartbeat call, connecting included.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most inventory changes in one heartbeat (about 1.7 MB of ids); the rest go in the next.
pub const MAX_DELTAS_PER_HEARTBEAT: usize = 50_000;
/// Most controllers reported to; addresses learned beyond this are ignored.
pub const MAX_CONTROLLERS: usize = 256;

/// How and to whom the worker reports.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// Controllers to start from (`host:port`); more are learned from their answers.
    pub controllers: Vec<String>,
    /// Time between heartbeats.
    pub interval: Duration,
    /// Deadline for one call.
    pub timeout: Duration,
    /// Most inventory changes per heartbeat.
    pub max_deltas: usize,
    /// The node credential every heartbeat carries (empty in insecure mode).
    pub credential: tonic::metadata::MetadataMap,
    /// How controllers are dialed (TLS, or plaintext in insecure mode).
    pub transport: redcloud_proto::transport::Transport,
}

impl HeartbeatConfig {
    /// Defaults, reporting to `controllers`.
    pub fn new(controllers: Vec<String>) -> Self {
        Self {
            controllers,
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            max_deltas: MAX_DELTAS_PER_HEARTBEAT,
            credential: tonic::metadata::MetadataMap::new(),
            transport: redcloud_proto::transport::Transport::plaintext(),
        }
    }
}

/// Whether a controller answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Untried,
    Reachable,
    Unreachable,
}

/// What a call's outcome changed about a controller, so the worker logs each change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth more than a debug line.
    Same,
    /// The controller answered for the first time.
    FirstContact,
    /// The controller answered after failing.
    CameBack,
    /// The controller failed after answering (or on the first try).
    WentDown,
}

#[derive(Debug)]
struct Controller {
    /// Log position of the last heartbeat this controller acknowledged.
    acked: Option<u64>,
    reach: Reach,
    in_flight: bool,
}

/// Every controller the chunkserver reports to, with what each has acknowledged.
#[derive(Debug)]
pub struct ControllerSet {
    controllers: BTreeMap<String, Controller>,
    limit: usize,
}

impl ControllerSet {
    /// The configured controllers (at most `limit` are kept).
    pub fn new(configured: &[String], limit: usize) -> Self {
        let mut set = Self {
            controllers: BTreeMap::new(),
            limit,
        };
        set.learn(configured);
        set
    }

    /// Adds the well-formed `host:port` addresses not yet known, while under the limit;
    /// answers the ones added.
    pub fn learn(&mut self, addresses: &[String]) -> Vec<String> {
        let mut added = Vec::new();
        for address in addresses {
            if self.controllers.len() >= self.limit {
                break;
            }
            if is_host_port(address) && !self.controllers.contains_key(address) {
                let controller = Controller {
                    acked: None,
                    reach: Reach::Untried,
                    in_flight: false,
                };
                self.controllers.insert(address.clone(), controller);
                added.push(address.clone());
            }
        }
        added
    }

    /// Number of controllers known.
    pub fn len(&self) -> usize {
        self.controllers.len()
    }

    /// Whether no controller is known.
    pub fn is_empty(&self) -> bool {
        self.controllers.is_empty()
    }

    /// Controllers with no call in flight, each with its acknowledged position.
    pub fn due(&self) -> Vec<(String, Option<u64>)> {
        self.controllers
            .iter()
            .filter(|(_, c)| !c.in_flight)
            .map(|(address, c)| (address.clone(), c.acked))
            .collect()
    }

    /// Records that a call to `address` started.
    pub fn sending(&mut self, address: &str) {
        if let Some(c) = self.controllers.get_mut(address) {
            c.in_flight = true;
        }
    }

    /// Records that `address` acknowledged a heartbeat bringing it to position `through`.
    pub fn succeeded(&mut self, address: &str, through: u64) -> Transition {
        let Some(c) = self.controllers.get_mut(address) else {
            return Transition::Same;
        };
        c.in_flight = false;
        c.acked = Some(c.acked.map_or(through, |acked| acked.max(through)));
        let transition = match c.reach {
            Reach::Untried => Transition::FirstContact,
            Reach::Unreachable => Transition::CameBack,
            Reach::Reachable => Transition::Same,
        };
        c.reach = Reach::Reachable;
        transition
    }

    /// Records that a heartbeat to `address` failed; its position stays where it was.
    pub fn failed(&mut self, address: &str) -> Transition {
        let Some(c) = self.controllers.get_mut(address) else {
            return Transition::Same;
        };
        c.in_flight = false;
        let transition = match c.reach {
            Reach::Unreachable => Transition::Same,
            Reach::Untried | Reach::Reachable => Transition::WentDown,
        };
        c.reach = Reach::Unreachable;
        transition
    }
}

/// The outcome of one heartbeat call.
struct Reply {
    address: String,
    through: u64,
    result: Result<HeartbeatResponse, String>,
}

type Call = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// What woke the worker.
enum Event {
    Tick,
    Reply(Reply),
    Stop,
}

/// The background worker named "heartbeat".
pub struct HeartbeatWorker {
    store: Arc<TrackedStore>,
    metrics: Arc<Metrics>,
    node: NodeIdentity,
    lineage: Arc<Lineage>,
    config: HeartbeatConfig,
    controllers: ControllerSet,
    clients: HashMap<String, RegistryServiceClient<Channel>>,
    stop: CancellationToken,
}

impl HeartbeatWorker {
    /// The worker's name in logs and status.
    pub const NAME: &'static str = "heartbeat";

    /// Starts the worker; it runs until `stop` is cancelled (at once when no controller is
    /// configured).
    pub fn spawn(
        store: Arc<TrackedStore>,
        metrics: Arc<Metrics>,
        node: NodeIdentity,
        lineage: Arc<Lineage>,
        config: HeartbeatConfig,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let worker = Self {
            controllers: ControllerSet::new(&config.controllers, MAX_CONTROLLERS),
            store,
            metrics,
            node,
            lineage,
            config,
            clients: HashMap::new(),
            stop,
        };
        let span = tracing::info_span!("worker", name = Self::NAME);
        tokio::spawn(worker.run().instrument(span))
    }

    async fn run(mut self) {
        if self.controllers.is_empty() {
            tracing::info!("no controllers configured; not heartbeating");
            return;
        }
        tracing::info!(
            controllers = self.controllers.len(),
            interval = ?self.config.interval,
            "heartbeat started"
        );
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut calls = FuturesUnordered::<Call>::new();
        loop {
            let event = tokio::select! {
                () = self.stop.cancelled() => Event::Stop,
                _ = ticker.tick() => Event::Tick,
                Some(reply) = calls.next() => Event::Reply(reply),
            };
            match event {
                Event::Stop => break,
                Event::Tick => calls.extend(self.handle_tick().await),
                Event::Reply(reply) => self.handle_reply(reply),
            }
        }
        // Calls still in flight are dropped: the controllers will hear from us after a restart.
        tracing::info!("heartbeat stopped");
    }

    /// Starts a heartbeat to every controller that has no call in flight.
    async fn handle_tick(&mut self) -> Vec<Call> {
        let due = self.controllers.due();
        if due.is_empty() {
            return Vec::new();
        }
        let store = self.store.clone();
        let positions: Vec<Option<u64>> = due.iter().map(|(_, acked)| *acked).collect();
        let max_deltas = self.config.max_deltas;
        let planned = tokio::task::spawn_blocking(move || {
            let snapshot = store.snapshot();
            let mut deltas = HashMap::new();
            for acked in positions {
                deltas
                    .entry(acked)
                    .or_insert_with(|| store.delta(acked, &snapshot, max_deltas));
            }
            (snapshot, deltas)
        })
        .await;
        let Ok((snapshot, deltas)) = planned else {
            tracing::warn!("could not read the inventory for a heartbeat");
            return Vec::new();
        };
        let requests: HashMap<Option<u64>, (HeartbeatRequest, u64)> = deltas
            .into_iter()
            .map(|(acked, delta)| (acked, (self.request(&snapshot, &delta), delta.through)))
            .collect();
        let mut calls = Vec::with_capacity(due.len());
        for (address, acked) in due {
            let (request, through) = requests[&acked].clone();
            match self.client(&address) {
                Ok(client) => {
                    self.controllers.sending(&address);
                    calls.push(call(
                        client,
                        request,
                        self.config.credential.clone(),
                        self.config.timeout,
                        address,
                        through,
                    ));
                }
                Err(why) => self.handle_reply(Reply {
                    address,
                    through,
                    result: Err(why),
                }),
            }
        }
        calls
    }

    /// Learns from one call's outcome: advance or keep the controller's position, log a
    /// change of reachability once, learn the controllers it knows.
    fn handle_reply(&mut self, reply: Reply) {
        let address = reply.address;
        match reply.result {
            Ok(response) => {
                add(&self.metrics.heartbeats_sent, 1);
                match self.controllers.succeeded(&address, reply.through) {
                    Transition::FirstContact => {
                        tracing::info!(controller = %address, "reporting to controller");
                    }
                    Transition::CameBack => {
                        tracing::info!(controller = %address, "controller reachable again");
                    }
                    Transition::Same | Transition::WentDown => {}
                }
                if response.inventory_requested {
                    tracing::debug!(controller = %address, "controller will pull the inventory");
                }
                for learned in self.controllers.learn(&response.controllers) {
                    tracing::info!(controller = %learned, from = %address, "learned controller");
                }
                match self.lineage.learn(&response.lineage) {
                    Ok(true) => tracing::info!(from = %address, lineage = ?self.lineage.known(),
                        "learned cluster lineage"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot persist the cluster lineage"),
                }
            }
            Err(error) => {
                add(&self.metrics.heartbeats_failed, 1);
                if self.controllers.failed(&address) == Transition::WentDown {
                    tracing::warn!(controller = %address, %error, "controller unreachable; will keep trying");
                } else {
                    tracing::debug!(controller = %address, %error, "heartbeat failed");
                }
            }
        }
    }

    fn request(&self, snapshot: &InventorySnapshot, delta: &Delta) -> HeartbeatRequest {
        let stats = &snapshot.stats;
        HeartbeatRequest {
            id: self.node.id.clone(),
            address: self.node.address.clone(),
            zone: self.node.zone.clone(),
            capacity_bytes: stats.capacity_bytes,
            used_bytes: stats.used_bytes,
            chunk_count: stats.chunk_count,
            inventory_digest: Bytes::copy_from_slice(&delta.digest),
            added: delta.added.iter().map(wire).collect(),
            removed: delta.removed.iter().map(wire).collect(),
            wall_ms: crate::store::now_ms(),
            lineage: self.lineage.known(),
        }
    }

    /// The client for `address`, created on first use. The channel connects lazily and
    /// reconnects by itself, so a controller that comes back is reached again.
    fn client(&mut self, address: &str) -> Result<RegistryServiceClient<Channel>, String> {
        if let Some(client) = self.clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = crate::client::endpoint(address, &self.config.transport)
            .map_err(|e| format!("bad controller address {address:?}: {e}"))?
            .connect_timeout(self.config.timeout)
            .timeout(self.config.timeout);
        let client = RegistryServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        self.clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

/// One heartbeat call, bounded by `timeout`.
fn call(
    mut client: RegistryServiceClient<Channel>,
    request: HeartbeatRequest,
    credential: tonic::metadata::MetadataMap,
    timeout: Duration,
    address: String,
    through: u64,
) -> Call {
    Box::pin(async move {
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = credential;
        let result = match tokio::time::timeout(timeout, client.heartbeat(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        Reply {
            address,
            through,
            result,
        }
    })
}

fn wire(id: &ChunkId) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn learning_keeps_well_formed_new_addresses_up_to_the_limit() {
        let mut set = ControllerSet::new(&names(&["c1:7000"]), 3);
        let added = set.learn(&names(&[
            "c1:7000", "nonsense", "c2:7000", "c3:7000", "c4:7000",
        ]));
        assert_eq!(added, names(&["c2:7000", "c3:7000"]));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn positions_advance_only_on_success() {
        let mut set = ControllerSet::new(&names(&["a:1", "b:1"]), 10);
        assert_eq!(set.due(), [("a:1".into(), None), ("b:1".into(), None)]);
        set.sending("a:1");
        set.sending("b:1");
        assert!(set.due().is_empty(), "a call in flight skips the tick");
        assert_eq!(set.succeeded("a:1", 5), Transition::FirstContact);
        assert_eq!(set.failed("b:1"), Transition::WentDown);
        assert_eq!(set.due(), [("a:1".into(), Some(5)), ("b:1".into(), None)]);
        assert_eq!(set.failed("a:1"), Transition::WentDown);
        assert_eq!(set.failed("a:1"), Transition::Same, "warned once");
        assert_eq!(set.due()[0], ("a:1".into(), Some(5)));
        assert_eq!(set.succeeded("a:1", 9), Transition::CameBack);
        assert_eq!(set.succeeded("a:1", 12), Transition::Same);
        assert_eq!(set.due()[0], ("a:1".into(), Some(12)));
    }
}
