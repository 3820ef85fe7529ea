//! Starting and stopping a chunkserver: open the store, start the scrub, reclaim and heartbeat
//! workers, serve gRPC on a listener the caller bound, and wind everything down when
//! `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redcloud_proto::MAX_MESSAGE_SIZE;
use redcloud_proto::chunk::chunk_service_server::ChunkServiceServer;
use redcloud_proto::tls::NodeTls;
use redcloud_proto::transport::{self, Transport};
use redcloud_proto::trust::Gate;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::heartbeat::{HeartbeatConfig, HeartbeatWorker};
use crate::inventory_log::DEFAULT_INVENTORY_LOG_CAPACITY;
use crate::lineage::Lineage;
use crate::metrics::Metrics;
use crate::node::{self, ChunkserverConfig, NodeIdentity, STORE_DIR};
use crate::reclaim::{RECLAIM_CHECK_INTERVAL, ReclaimWorker};
use crate::scrub::{ScrubConfig, ScrubWorker};
use crate::service::ChunkServiceImpl;
use crate::store::{ChunkStore, RocksOptions, RocksStore, TrackedStore};

/// How long open requests may run on after a shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Server-side deadline for a request's response (a whole upload or replication).
pub const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A chunkserver ready to serve: a store, its identity and its background work.
pub struct Chunkserver {
    store: Arc<TrackedStore>,
    metrics: Arc<Metrics>,
    node: NodeIdentity,
    scrub: ScrubConfig,
    heartbeat: HeartbeatConfig,
    lineage: Arc<Lineage>,
    gate: Gate,
    tls: NodeTls,
}

impl Chunkserver {
    /// A chunkserver over `store` (wrapped in a [`TrackedStore`] with the default log
    /// capacity), known to others as `node`, reporting to no controller.
    pub fn new(store: Arc<dyn ChunkStore>, node: NodeIdentity, scrub: ScrubConfig) -> Self {
        let tracked = TrackedStore::new(store, DEFAULT_INVENTORY_LOG_CAPACITY);
        Self::tracked(Arc::new(tracked), node, scrub)
    }

    /// A chunkserver over an already tracked store. Every change must go through `store`
    /// (not the store it wraps), or the heartbeat's deltas miss it.
    pub fn tracked(store: Arc<TrackedStore>, node: NodeIdentity, scrub: ScrubConfig) -> Self {
        Self {
            store,
            metrics: Arc::new(Metrics::default()),
            node,
            scrub,
            heartbeat: HeartbeatConfig::new(Vec::new()),
            lineage: Arc::new(Lineage::in_memory()),
            gate: Gate::default(),
            tls: NodeTls {
                client: Transport::plaintext(),
                server: None,
            },
        }
    }

    /// Checks callers with `gate` (default: lets everyone in, as `--insecure`). Heartbeats
    /// carry the gate's node credential.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// Serves TLS with `tls.server` and dials other nodes with `tls.client` (default:
    /// plaintext both ways, as `--insecure`).
    pub fn with_tls(mut self, tls: NodeTls) -> Self {
        self.tls = tls;
        self
    }

    /// Guards deletes with `lineage` (default: an empty one kept in memory).
    pub fn with_lineage(mut self, lineage: Arc<Lineage>) -> Self {
        self.lineage = lineage;
        self
    }

    /// Reports to the controllers in `config` (none: no heartbeat).
    pub fn with_heartbeat(mut self, config: HeartbeatConfig) -> Self {
        self.heartbeat = config;
        self
    }

    /// The store the server writes through, with its change log.
    pub fn store(&self) -> Arc<TrackedStore> {
        self.store.clone()
    }

    /// The live counters (also reported by `Info` and `Metrics::render_prometheus`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves `ChunkService` on `listener` until `shutdown` resolves, then drains open
    /// requests and stops the scrub, reclaim and heartbeat workers.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let local = listener
            .local_addr()
            .context("reading the listener's address")?;
        let stop = CancellationToken::new();
        let scrub = ScrubWorker::spawn(
            self.store.clone(),
            self.metrics.clone(),
            self.scrub,
            stop.clone(),
        );
        let reclaim =
            ReclaimWorker::spawn(self.store.clone(), RECLAIM_CHECK_INTERVAL, stop.clone());
        let mut heartbeat_config = self.heartbeat;
        heartbeat_config.credential = self.gate.node_metadata();
        heartbeat_config.transport = self.tls.client.clone();
        let heartbeat = HeartbeatWorker::spawn(
            self.store.clone(),
            self.metrics.clone(),
            self.node.clone(),
            self.lineage.clone(),
            heartbeat_config,
            stop.clone(),
        );
        tracing::info!(id = %self.node.id, %local, address = %self.node.address, "chunkserver serving");
        if !self.gate.secure() {
            tracing::warn!(
                "INSECURE: no cluster secret; any caller may read, write and delete chunks"
            );
        }
        if self.tls.server.is_none() {
            tracing::warn!("INSECURE: serving plaintext gRPC (no TLS)");
        }
        let service = ChunkServiceImpl::new(
            self.store,
            self.metrics,
            self.node,
            self.lineage,
            self.gate,
            self.tls.client.clone(),
        );
        let service = ChunkServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let incoming = transport::incoming(listener);
        let served = transport::server(self.tls.server.as_ref())
            .context("TLS identity")?
            .timeout(SERVER_REQUEST_TIMEOUT)
            .add_service(service);
        // Requests in flight get SHUTDOWN_GRACE to finish; connections whose peers vanished
        // without closing them do not hold the process after that.
        let (fired, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = fired.send(());
        };
        let serving = served.serve_with_incoming_shutdown(incoming, signal);
        let served = tokio::select! {
            r = serving => r,
            _ = async {
                let _ = fired_rx.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
                Ok(())
            }
        };
        stop.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, scrub).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, reclaim).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, heartbeat).await;
        tracing::info!(%local, "chunkserver stopped");
        served.with_context(|| format!("serving ChunkService on {local}"))
    }
}

/// Runs a chunkserver from `config` on `listener` until `shutdown` resolves: the entry point
/// of `redcloud chunkserver`.
pub async fn run(
    config: ChunkserverConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    let id = match config.id.clone() {
        Some(id) => id,
        None => tokio::task::spawn_blocking(move || node::load_or_create_node_id(&data_dir))
            .await?
            .context("loading the node id")?,
    };
    let store_dir = config.data_dir.join(STORE_DIR);
    let options = RocksOptions {
        capacity: config.capacity,
    };
    let store =
        tokio::task::spawn_blocking(move || RocksStore::open(&store_dir, options)).await??;
    let lineage = Lineage::open(&config.data_dir).context("loading the lineage")?;
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    let node = NodeIdentity {
        id,
        address: node::advertised_address(config.advertise.as_deref(), local, &config.controllers),
        zone: config.zone.clone(),
    };
    let scrub = ScrubConfig {
        rate_bytes_per_sec: config.scrub_rate,
        ..ScrubConfig::default()
    };
    let store = TrackedStore::new(Arc::new(store), config.inventory_log_capacity);
    let heartbeat = HeartbeatConfig {
        interval: config.heartbeat_interval,
        ..HeartbeatConfig::new(config.controllers)
    };
    let gate = Gate::new(config.secret.as_ref());
    let tls = NodeTls::new(config.secret.as_ref(), &config.tls)?;
    Chunkserver::tracked(Arc::new(store), node, scrub)
        .with_heartbeat(heartbeat)
        .with_gate(gate)
        .with_tls(tls)
        .with_lineage(Arc::new(lineage))
        .serve(listener, shutdown)
        .await
}
