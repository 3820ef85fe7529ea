//! `redcloud controller`: wires the metadata store, replication, the gRPC services and the
//! background workers into one node.
//!
//! Start-up: load (or create) the node key, whose peer id is the node id; open the metadata
//! store with a fresh Automerge actor (a new incarnation); make sure this controller has a
//! token-signing secret and is listed in the cluster document; start the p2p network and the
//! replication task; start repair, GC and the metrics endpoint; serve gRPC until shutdown.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use parking_lot::{Mutex, RwLock};
use redcloud_proto::controller::controller_service_server::ControllerServiceServer;
use redcloud_proto::controller::registry_service_server::RegistryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{self, wall_ms};
use crate::cluster::ReplicationPolicy;
use crate::collector::{self, GcConfig};
use crate::handle::MetaHandle;
use crate::metrics::Metrics;
use crate::names::NodeId;
use crate::registry::Registry;
use crate::repair::worker::{self as repair_worker, RepairConfig};
use crate::replication::{PeerView, Replication, ReplicationConfig, SharedPeers};
use crate::service::registry_api::RegistryApi;
use crate::service::{Api, ApiSettings, RepairCounters, Shared};
use crate::storage::RocksStorage;
use crate::store::{self, MetaStore};

/// Everything a controller needs; `Default` gives a working single-node setup.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub cluster: String,
    pub p2p_listen: String,
    /// Bootstrap entries; empty tries the DNS alias `controller`.
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub metrics_listen: Option<String>,
    /// gRPC address others use to reach this controller (default: derived from the listener).
    pub advertise: Option<String>,
    pub heartbeat_timeout_ms: u64,
    pub write_quorum: u32,
    /// `all` or a number; written to the cluster document when it differs.
    pub replication: String,
    pub shards: u32,
    pub gc_grace_ms: u64,
    pub gc_interval: Duration,
    pub repair_interval: Duration,
    pub sync_interval: Duration,
    pub token_ttl_ms: u64,
    /// Test only: shift this process's wall clock.
    pub clock_offset_ms: i64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./redcloud-data/controller"),
            cluster: "redcloud".into(),
            p2p_listen: "/ip4/0.0.0.0/tcp/7300".into(),
            bootstrap: Vec::new(),
            mdns: true,
            metrics_listen: None,
            advertise: None,
            heartbeat_timeout_ms: 6_000,
            write_quorum: 2,
            replication: "all".into(),
            shards: store::DEFAULT_SHARDS,
            gc_grace_ms: 3_600_000,
            gc_interval: Duration::from_secs(10),
            repair_interval: Duration::from_secs(1),
            sync_interval: Duration::from_secs(1),
            token_ttl_ms: 7 * 24 * 3600 * 1000,
            clock_offset_ms: 0,
        }
    }
}

impl ControllerConfig {
    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.write_quorum == 0 {
            bail!("write_quorum: must be at least 1");
        }
        if self.heartbeat_timeout_ms < 500 {
            bail!(
                "heartbeat_timeout_ms: {} is too short (>= 500)",
                self.heartbeat_timeout_ms
            );
        }
        self.replication
            .parse::<ReplicationPolicy>()
            .map_err(|e| anyhow::anyhow!("replication: {e}"))?;
        if self.shards == 0 || self.shards > store::MAX_SHARDS {
            bail!("shards: must be 1..={}", store::MAX_SHARDS);
        }
        Ok(())
    }
}

/// A running controller. Tests use it to reach the node's parts (to partition it, say).
pub struct Controller {
    pub shared: Arc<Shared>,
    pub net: redcloud_p2p::Handle,
    pub grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.shared.node_id)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

/// Runs a controller on `listener` until `shutdown` resolves.
pub async fn run(
    config: ControllerConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let node = start(config, listener).await?;
    tracing::info!(node = %node.shared.node_id, grpc = %node.grpc_addr, "controller running");
    shutdown.await;
    node.stop().await;
    Ok(())
}

/// Starts a controller and returns once it serves.
pub async fn start(config: ControllerConfig, listener: TcpListener) -> Result<Controller> {
    config.validate()?;
    clock::set_offset_ms(config.clock_offset_ms);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let keypair = redcloud_p2p::load_or_create_keypair(&config.data_dir.join("node.key"))?;
    let node_id = keypair.public().to_peer_id().to_string();
    let grpc_addr = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| advertised(grpc_addr));

    let meta_path = config.data_dir.join("meta");
    let storage = tokio::task::spawn_blocking(move || RocksStorage::open(&meta_path))
        .await?
        .with_context(|| format!("opening metadata in {}", config.data_dir.display()))?;
    let mut store_config = store::Config::new(NodeId::new(node_id.clone())?);
    store_config.shards = config.shards;
    let mut store = MetaStore::open(Box::new(storage), store_config)?;
    let now = wall_ms();
    let (signing, _) = store.ensure_secret(now)?;
    let policy: ReplicationPolicy = config.replication.parse()?;
    if store.settings()?.replication != policy {
        store.set_replication(policy, now)?;
    }
    let secrets = store.secrets()?;

    let mut net_config = redcloud_p2p::Config::new(config.cluster.clone(), keypair);
    net_config.listen = vec![
        config
            .p2p_listen
            .parse()
            .with_context(|| format!("p2p-listen: {:?} is not a multiaddr", config.p2p_listen))?,
    ];
    net_config.mdns = config.mdns;
    net_config.bootstrap = if config.bootstrap.is_empty() {
        default_bootstrap().await
    } else {
        config.bootstrap.clone()
    };
    let (net, events) = redcloud_p2p::spawn(net_config).await?;
    let p2p_addrs: Vec<String> = net
        .listen_addrs()
        .await
        .unwrap_or_default()
        .iter()
        .map(|a| a.to_string())
        .collect();
    store.upsert_controller(&NodeId::new(node_id.clone())?, &address, &p2p_addrs, now)?;
    let members: HashMap<String, (String, String)> = store
        .chunkservers()?
        .into_iter()
        .map(|c| (c.id, (c.address, c.zone)))
        .collect();
    // Everything written above reaches peers through anti-entropy when they connect.
    let (meta, commits) = MetaHandle::spawn(store);

    let metrics = Arc::new(Metrics::default());
    let peers: SharedPeers = Arc::new(Mutex::new(PeerView::default()));
    let shared = Arc::new(Shared {
        node_id: node_id.clone(),
        address,
        meta: meta.clone(),
        registry: Mutex::new(Registry::new(config.heartbeat_timeout_ms)),
        peers: peers.clone(),
        metrics: metrics.clone(),
        settings: ApiSettings {
            write_quorum: config.write_quorum,
            token_ttl_ms: config.token_ttl_ms,
        },
        secrets: RwLock::new(secrets),
        signing,
        live: Default::default(),
        repair: RepairCounters::default(),
        members: Mutex::new(members),
        pulling: Mutex::new(HashSet::new()),
    });

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let replication = Replication::new(
        net.clone(),
        meta,
        ReplicationConfig {
            interval: config.sync_interval,
            ..ReplicationConfig::default()
        },
        peers,
        metrics,
    );
    tasks.push(tokio::spawn(replication.run(
        events,
        commits,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(repair_worker::run(
        shared.clone(),
        RepairConfig {
            interval: config.repair_interval,
            ..RepairConfig::default()
        },
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(collector::run(
        shared.clone(),
        GcConfig {
            interval: config.gc_interval,
            grace_ms: config.gc_grace_ms,
            ..GcConfig::default()
        },
        stop_rx.clone(),
    )));
    if let Some(addr) = &config.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics-listen: cannot listen on {addr}"))?;
        tasks.push(tokio::spawn(crate::http::serve_metrics(
            l,
            shared.clone(),
            stop_rx.clone(),
        )));
    }

    let api = ControllerServiceServer::new(Api {
        shared: shared.clone(),
    })
    .max_decoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
    .max_encoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE);
    let registry = RegistryServiceServer::new(RegistryApi {
        shared: shared.clone(),
    })
    .max_decoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
    .max_encoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE);
    let mut stop_server = stop_rx.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(redcloud_proto::STREAM_WINDOW)
            .initial_connection_window_size(redcloud_proto::CONNECTION_WINDOW)
            .add_service(api)
            .add_service(registry)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop_server.changed().await;
                },
            ),
    );
    Ok(Controller {
        shared,
        net,
        grpc_addr,
        stop,
        tasks,
        server,
    })
}

impl Controller {
    /// Stops serving, stops the workers and the network, and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = self.net.shutdown().await;
        self.shared.meta.shutdown().await;
    }
}

/// `controller` when that name resolves (Docker's round-robin alias), else nothing.
async fn default_bootstrap() -> Vec<String> {
    let found = tokio::net::lookup_host("controller:7300")
        .await
        .map(|mut addrs| addrs.next().is_some())
        .unwrap_or(false);
    if found {
        vec!["controller:7300".into()]
    } else {
        Vec::new()
    }
}

/// The address to advertise for a listener: its own IP, or for an unspecified IP the
/// address of the interface that holds the default route (found by connecting a UDP socket,
/// which sends nothing), or loopback when there is none.
pub fn advertised(local: SocketAddr) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified());
    match routed {
        Some(ip) => SocketAddr::new(ip, local.port()).to_string(),
        None => SocketAddr::new([127, 0, 0, 1].into(), local.port()).to_string(),
    }
}
