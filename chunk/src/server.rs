//! Starting and stopping a chunkserver: open the store, start the scrub worker, serve gRPC
//! on a listener the caller bound, and wind everything down when `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redcloud_proto::chunk::chunk_service_server::ChunkServiceServer;
use redcloud_proto::{CONNECTION_WINDOW, MAX_MESSAGE_SIZE, STREAM_WINDOW};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::metrics::Metrics;
use crate::node::{self, ChunkserverConfig, NodeIdentity, STORE_DIR};
use crate::scrub::{ScrubConfig, ScrubWorker};
use crate::service::ChunkServiceImpl;
use crate::store::{ChunkStore, RocksOptions, RocksStore};

/// Concurrent requests per HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Server-side deadline for a request's response (a whole upload or replication).
pub const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A chunkserver ready to serve: a store, its identity and its background work.
pub struct Chunkserver {
    store: Arc<dyn ChunkStore>,
    metrics: Arc<Metrics>,
    node: NodeIdentity,
    scrub: ScrubConfig,
}

impl Chunkserver {
    /// A chunkserver over `store`, known to others as `node`.
    pub fn new(store: Arc<dyn ChunkStore>, node: NodeIdentity, scrub: ScrubConfig) -> Self {
        Self {
            store,
            metrics: Arc::new(Metrics::default()),
            node,
            scrub,
        }
    }

    /// The live counters (also reported by `Info` and `Metrics::render_prometheus`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves `ChunkService` on `listener` until `shutdown` resolves, then drains open
    /// requests and stops the scrub worker.
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
        tracing::info!(id = %self.node.id, %local, address = %self.node.address, "chunkserver serving");
        let service = ChunkServiceImpl::new(self.store, self.metrics, self.node);
        let service = ChunkServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_frame_size(crate::client::MAX_H2_FRAME)
            .timeout(SERVER_REQUEST_TIMEOUT)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        stop.cancel();
        let _ = scrub.await;
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
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    let node = NodeIdentity {
        id,
        address: node::advertised_address(config.advertise.as_deref(), local),
        zone: config.zone.clone(),
    };
    if !config.controllers.is_empty() {
        // Reporting to controllers arrives with the heartbeat; until then they are only logged.
        tracing::info!(controllers = ?config.controllers, "controllers configured");
    }
    let scrub = ScrubConfig {
        rate_bytes_per_sec: config.scrub_rate,
        ..ScrubConfig::default()
    };
    Chunkserver::new(Arc::new(store), node, scrub)
        .serve(listener, shutdown)
        .await
}
