//! Starting and stopping a chunkserver: open the store, start the scrub and heartbeat
//! workers, serve gRPC on a listener the caller bound, and wind everything down when
//! `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redcloud_proto::chunk::chunk_service_server::ChunkServiceServer;
use redcloud_proto::trust::Gate;
use redcloud_proto::{CONNECTION_WINDOW, MAX_MESSAGE_SIZE, STREAM_WINDOW};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::heartbeat::{HeartbeatConfig, HeartbeatWorker};
use crate::inventory_log::DEFAULT_INVENTORY_LOG_CAPACITY;
use crate::lineage::Lineage;
use crate::metrics::Metrics;
use crate::node::{self, ChunkserverConfig, NodeIdentity, STORE_DIR};
use crate::scrub::{ScrubConfig, ScrubWorker};
use crate::service::ChunkServiceImpl;
use crate::store::{ChunkStore, RocksOptions, RocksStore, TrackedStore};

/// Concurrent requests per HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
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
        }
    }

    /// Checks callers with `gate` (default: lets everyone in, as `--insecure`). Heartbeats
    /// carry the gate's node credential.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
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
    /// requests and stops the scrub and heartbeat workers.
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
        let mut heartbeat_config = self.heartbeat;
        heartbeat_config.credential = self.gate.node_metadata();
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
        let service =
            ChunkServiceImpl::new(self.store, self.metrics, self.node, self.lineage, self.gate);
        let service = ChunkServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(redcloud_proto::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(redcloud_proto::KEEPALIVE_TIMEOUT))
            .tcp_keepalive(Some(redcloud_proto::KEEPALIVE_INTERVAL))
            .max_frame_size(crate::client::MAX_H2_FRAME)
            .timeout(SERVER_REQUEST_TIMEOUT)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        stop.cancel();
        let _ = scrub.await;
        let _ = heartbeat.await;
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
        address: node::advertised_address(config.advertise.as_deref(), local),
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
    Chunkserver::tracked(Arc::new(store), node, scrub)
        .with_heartbeat(heartbeat)
        .with_gate(gate)
        .with_lineage(Arc::new(lineage))
        .serve(listener, shutdown)
        .await
}
