//! `redcloud controller`: wires the metadata store, replication, the gRPC services and the
//! background workers into one node, in steps that tests and benchmarks reuse:
//!
//! 1. [`open_store`]: load (or create) the node key, whose peer id is the node id; open the
//!    metadata store with a fresh Automerge actor (a new incarnation); check the shard count;
//!    seed the settings of a new cluster; make sure this controller has a token key.
//! 2. [`start_network`]: the libp2p swarm, whose protocol names carry the cluster name and
//!    shard count (controllers of differently shaped clusters cannot talk), and this
//!    controller's entry in the cluster document.
//! 3. [`components`]: the parts that own the controller's state.
//! 4. [`spawn_workers`]: replication, repair, GC, the clock watch and the metrics endpoint,
//!    each supervised (restarted if it ever stops before shutdown).
//! 5. [`serve`]: the gRPC services until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redcloud_proto::controller::admin_service_server::AdminServiceServer;
use redcloud_proto::controller::controller_service_server::ControllerServiceServer;
use redcloud_proto::controller::registry_service_server::RegistryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::Tokens;
use crate::clock::{self, NodeClock};
use crate::cluster::ReplicationPolicy;
use crate::collector::{self, GcConfig, GcParts};
use crate::directory::Directory;
use crate::handle::MetaHandle;
use crate::metrics::Metrics;
use crate::names::NodeId;
use crate::peers::Peers;
use crate::repair::worker::{self as repair_worker, RepairConfig, RepairParts};
use crate::replication::{Replication, ReplicationConfig, ReplicationParts};
use crate::service::admin::AdminApi;
use crate::service::registry_api::RegistryApi;
use crate::service::{Api, ApiSettings, Components};
use crate::storage::RocksStorage;
use crate::store::{self, Commit, MetaStore};
use crate::workers::{WorkerBoard, supervise};

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
    /// Seeds the replication policy of a new cluster (`all` or a number); `None` leaves the
    /// default (`all`). Never changes an existing cluster's policy: see `set-replication`.
    pub replication: Option<String>,
    /// Shard count of a new cluster; `None`: the store's own, or the default for a new one.
    /// An existing store with a different count refuses to start.
    pub shards: Option<u32>,
    /// Seeds the trash retention of a new cluster.
    pub trash_retention_ms: Option<u64>,
    pub gc_grace_ms: u64,
    pub gc_interval: Duration,
    pub repair_interval: Duration,
    pub sync_interval: Duration,
    pub token_ttl_ms: u64,
    /// Largest tolerated clock skew between this controller and its witnesses.
    pub max_clock_skew_ms: u64,
    /// Test only: shift this process's wall clock.
    pub clock_offset_ms: i64,
    /// The cluster secret (`--secret-file`): credentials, grants, token keys and the p2p
    /// network key derive from it.
    pub secret: Option<redcloud_proto::trust::ClusterSecret>,
    /// Certificates an operator brings instead of the ones derived from the secret.
    pub tls: redcloud_proto::tls::TlsFiles,
    /// Run without a secret: everyone is let in. Flagged in the logs and `status`.
    pub insecure: bool,
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
            replication: None,
            shards: None,
            trash_retention_ms: None,
            gc_grace_ms: 3_600_000,
            gc_interval: Duration::from_secs(10),
            repair_interval: Duration::from_secs(1),
            sync_interval: Duration::from_secs(1),
            token_ttl_ms: crate::auth::DEFAULT_TOKEN_TTL_MS,
            max_clock_skew_ms: clock::DEFAULT_MAX_SKEW_MS,
            clock_offset_ms: 0,
            secret: None,
            tls: redcloud_proto::tls::TlsFiles::default(),
            insecure: false,
        }
    }
}

impl ControllerConfig {
    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.secret.is_none() && !self.insecure {
            bail!(
                "secret: no cluster secret: make one with `redcloud secret > FILE` (chmod \
                 600), pass --secret-file FILE (or set $REDCLOUD_SECRET_FILE), or start with \
                 --insecure"
            );
        }
        if self.token_ttl_ms == 0 || self.token_ttl_ms > crate::auth::MAX_TOKEN_TTL_MS {
            bail!(
                "token_ttl_ms: {} is outside 1..={} (30 days)",
                self.token_ttl_ms,
                crate::auth::MAX_TOKEN_TTL_MS
            );
        }
        if self.write_quorum == 0 {
            bail!("write_quorum: must be at least 1");
        }
        if self.heartbeat_timeout_ms < 500 {
            bail!(
                "heartbeat_timeout_ms: {} is too short (>= 500)",
                self.heartbeat_timeout_ms
            );
        }
        if let Some(r) = &self.replication {
            r.parse::<ReplicationPolicy>()
                .map_err(|e| anyhow::anyhow!("replication: {e}"))?;
        }
        if let Some(s) = self.shards
            && (s == 0 || s > store::MAX_SHARDS)
        {
            bail!("shards: must be 1..={}", store::MAX_SHARDS);
        }
        if self.max_clock_skew_ms < 100 {
            bail!(
                "max_clock_skew_ms: {} is too small (>= 100)",
                self.max_clock_skew_ms
            );
        }
        Ok(())
    }
}

/// A running controller. Tests use it to reach the node's parts (to partition it, say).
pub struct Controller {
    pub parts: Arc<Components>,
    pub net: redcloud_p2p::Handle,
    pub grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.parts.node_id)
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
    tracing::info!(node = %node.parts.node_id, grpc = %node.grpc_addr, "controller running");
    shutdown.await;
    node.stop().await;
    Ok(())
}

/// An opened metadata store and the identity it belongs to.
pub struct OpenedStore {
    pub store: MetaStore,
    pub keypair: redcloud_p2p::Keypair,
    pub node_id: String,
}

/// Step 1: the node key and the metadata store (see the module doc).
pub async fn open_store(config: &ControllerConfig, clock: &NodeClock) -> Result<OpenedStore> {
    // Private (0700) and durable: it holds the node key and the metadata.
    redcloud_proto::local::create_private_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let keypair = redcloud_p2p::load_or_create_keypair(&config.data_dir.join("node.key"))?;
    let node_id = keypair.public().to_peer_id().to_string();
    let meta_path = config.data_dir.join("meta");
    let storage = tokio::task::spawn_blocking(move || RocksStorage::open(&meta_path))
        .await?
        .with_context(|| format!("opening metadata in {}", config.data_dir.display()))?;
    let mut store_config = store::Config::new(NodeId::new(node_id.clone())?);
    store_config.shards = config.shards.unwrap_or(store::DEFAULT_SHARDS);
    store_config.max_clock_ahead_ms = config.max_clock_skew_ms;
    let mut store = MetaStore::open(Box::new(storage), store_config)?;
    if let Some(want) = config.shards
        && want != store.shards()
    {
        bail!(
            "shards: this data directory holds a cluster with {} shards; --shards {want} cannot \
             change it (the shard count is fixed when a cluster is created; start without \
             --shards, or with --shards {})",
            store.shards(),
            store.shards()
        );
    }
    let now = clock.now_ms();
    if let Some(r) = &config.replication {
        let policy: ReplicationPolicy = r.parse()?;
        let current = store.settings()?.replication;
        if store.seed_replication(policy, now)?.is_none() && current != policy {
            tracing::warn!(
                flag = %policy, cluster = %current,
                "--replication only seeds a new cluster; this cluster keeps its policy \
                 (change it with `redcloud set-replication`)"
            );
        }
    }
    if let Some(ms) = config.trash_retention_ms
        && store.created()
    {
        store.set_trash_retention(ms, now)?;
    }
    if config.secret.is_none() {
        // Insecure mode only: token keys live in the cluster document.
        store.ensure_secret(now)?;
    }
    Ok(OpenedStore {
        store,
        keypair,
        node_id,
    })
}

/// The p2p cluster name: the configured name and the shard count, so controllers of
/// differently shaped clusters never exchange data.
pub fn network_name(cluster: &str, shards: u32) -> String {
    format!("{cluster}-s{shards}")
}

/// Step 2: the p2p network, and this controller's entry in the cluster document.
pub async fn start_network(
    config: &ControllerConfig,
    opened: &mut OpenedStore,
    address: &str,
    clock: &NodeClock,
) -> Result<(redcloud_p2p::Handle, mpsc::Receiver<redcloud_p2p::Event>)> {
    let shards = opened.store.shards();
    let mut net_config = redcloud_p2p::Config::new(
        network_name(&config.cluster, shards),
        opened.keypair.clone(),
    );
    net_config.listen = vec![
        config
            .p2p_listen
            .parse()
            .with_context(|| format!("p2p-listen: {:?} is not a multiaddr", config.p2p_listen))?,
    ];
    net_config.mdns = config.mdns;
    // Only nodes holding the cluster secret can connect at all.
    net_config.private_key = config.secret.as_ref().map(|s| s.p2p_key());
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
    let node = NodeId::new(opened.node_id.clone())?;
    opened
        .store
        .upsert_controller(&node, address, &p2p_addrs, clock.now_ms())?;
    Ok((net, events))
}

/// Who this controller is on the network, and how it dials other nodes.
#[derive(Debug, Clone)]
pub struct Local {
    pub node_id: String,
    /// The gRPC address it advertises.
    pub address: String,
    pub transport: redcloud_proto::transport::Transport,
}

/// Step 3: the controller's parts around a running metadata owner.
pub fn components(
    config: &ControllerConfig,
    local: Local,
    meta: MetaHandle,
    clock: Arc<NodeClock>,
    tokens: Tokens,
    members: HashMap<String, (String, String)>,
) -> Arc<Components> {
    let gate = redcloud_proto::trust::Gate::new(config.secret.as_ref());
    let transport = local.transport;
    Arc::new(Components {
        node_id: local.node_id,
        address: local.address,
        meta,
        clock,
        directory: Arc::new(Directory::new(config.heartbeat_timeout_ms, members)),
        peers: Arc::new(Peers::default()),
        live: Default::default(),
        tokens: Arc::new(tokens),
        repair: Default::default(),
        gc: Default::default(),
        metrics: Arc::new(Metrics::default()),
        workers: Arc::new(WorkerBoard::default()),
        settings: ApiSettings {
            write_quorum: config.write_quorum,
            hold_interval_ms: (config.gc_grace_ms / 4).max(100),
        },
        chunks: crate::chunk_client::Dialer::new(gate.clone(), transport),
        gate,
        logins: Default::default(),
        hashers: Default::default(),
    })
}

/// Step 4: every background worker, supervised.
pub async fn spawn_workers(
    config: &ControllerConfig,
    parts: &Arc<Components>,
    net: redcloud_p2p::Handle,
    events: mpsc::Receiver<redcloud_p2p::Event>,
    commits: mpsc::Receiver<Commit>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>> {
    let board = parts.workers.clone();
    let mut tasks = Vec::new();

    // Replication owns the event and commit queues; a restarted worker takes them over.
    let queues = Arc::new(tokio::sync::Mutex::new((events, commits)));
    let rparts = ReplicationParts {
        net,
        meta: parts.meta.clone(),
        peers: parts.peers.clone(),
        clock: parts.clock.clone(),
        metrics: parts.metrics.clone(),
    };
    let rconfig = ReplicationConfig {
        interval: config.sync_interval,
        ..ReplicationConfig::default()
    };
    let s = stop.clone();
    tasks.push(tokio::spawn(supervise(
        "replication",
        board.clone(),
        stop.clone(),
        move || {
            let queues = queues.clone();
            let worker = Replication::new(rparts.clone(), rconfig.clone());
            let s = s.clone();
            async move {
                let mut q = queues.lock_owned().await;
                let (events, commits) = &mut *q;
                worker.run(events, commits, s).await;
            }
        },
    )));

    let repair = RepairParts {
        node_id: parts.node_id.clone(),
        meta: parts.meta.clone(),
        clock: parts.clock.clone(),
        directory: parts.directory.clone(),
        peers: parts.peers.clone(),
        live: parts.live.clone(),
        status: parts.repair.clone(),
        metrics: parts.metrics.clone(),
        chunks: parts.chunks.clone(),
    };
    let repair_config = RepairConfig {
        interval: config.repair_interval,
        ..RepairConfig::default()
    };
    let s = stop.clone();
    tasks.push(tokio::spawn(supervise(
        "repair",
        board.clone(),
        stop.clone(),
        move || repair_worker::run(repair.clone(), repair_config.clone(), s.clone()),
    )));

    let gc = GcParts {
        node_id: parts.node_id.clone(),
        meta: parts.meta.clone(),
        clock: parts.clock.clone(),
        directory: parts.directory.clone(),
        peers: parts.peers.clone(),
        live: parts.live.clone(),
        status: parts.gc.clone(),
        metrics: parts.metrics.clone(),
        chunks: parts.chunks.clone(),
    };
    let gc_config = GcConfig {
        interval: config.gc_interval,
        grace_ms: config.gc_grace_ms,
        ..GcConfig::default()
    };
    let s = stop.clone();
    tasks.push(tokio::spawn(supervise(
        "gc",
        board.clone(),
        stop.clone(),
        move || collector::run(gc.clone(), gc_config.clone(), s.clone()),
    )));

    let (c, m, metrics, s) = (
        parts.clock.clone(),
        parts.meta.clone(),
        parts.metrics.clone(),
        stop.clone(),
    );
    tasks.push(tokio::spawn(supervise(
        "clock",
        board.clone(),
        stop.clone(),
        move || clock::watch(c.clone(), m.clone(), metrics.clone(), s.clone()),
    )));

    if let Some(addr) = &config.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics-listen: cannot listen on {addr}"))?;
        let l = Arc::new(l);
        let (p, s) = (parts.clone(), stop.clone());
        tasks.push(tokio::spawn(supervise(
            "metrics",
            board.clone(),
            stop.clone(),
            move || crate::http::serve_metrics(l.clone(), p.clone(), s.clone()),
        )));
    }
    Ok(tasks)
}

/// How long each stage of a shutdown may take before what is left is cut off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Step 5: the gRPC services on `listener` until `stop` turns true.
pub fn serve(
    parts: &Arc<Components>,
    listener: TcpListener,
    identity: Option<&redcloud_proto::tls::ServerIdentity>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<(), tonic::transport::Error>>> {
    let max = redcloud_proto::MAX_MESSAGE_SIZE;
    let api = ControllerServiceServer::new(Api {
        parts: parts.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let registry = RegistryServiceServer::new(RegistryApi {
        parts: parts.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let admin = AdminServiceServer::new(AdminApi {
        parts: parts.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let builder = redcloud_proto::transport::server(identity).context("TLS identity")?;
    Ok(tokio::spawn(
        builder
            .concurrency_limit_per_connection(redcloud_proto::CONTROLLER_CONCURRENCY_PER_CONNECTION)
            .timeout(redcloud_proto::CONTROLLER_REQUEST_TIMEOUT)
            .add_service(api)
            .add_service(registry)
            .add_service(admin)
            .serve_with_incoming_shutdown(
                redcloud_proto::transport::incoming(listener),
                async move {
                    let _ = stop.changed().await;
                },
            ),
    ))
}

/// Starts a controller and returns once it serves.
pub async fn start(config: ControllerConfig, listener: TcpListener) -> Result<Controller> {
    config.validate()?;
    let clock = Arc::new(NodeClock::new(
        config.clock_offset_ms,
        config.max_clock_skew_ms,
    ));
    let mut opened = open_store(&config, &clock).await?;
    let grpc_addr = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| advertised(grpc_addr, &config.bootstrap));
    let tls = redcloud_proto::tls::NodeTls::new(config.secret.as_ref(), &config.tls)?;
    if tls.server.is_none() {
        tracing::warn!("INSECURE: serving plaintext gRPC (no TLS)");
    }
    let (net, events) = start_network(&config, &mut opened, &address, &clock).await?;
    let store = &mut opened.store;
    let tokens = match &config.secret {
        Some(secret) => Tokens::from_cluster_secret(secret, config.token_ttl_ms),
        None => {
            tracing::warn!(
                "INSECURE: no cluster secret; internal and admin calls are not authenticated \
                 and token keys travel in the cluster document"
            );
            let (signing, _) = store.ensure_secret(clock.now_ms())?;
            Tokens::new(signing, store.secrets()?, config.token_ttl_ms)
        }
    };
    let members: HashMap<String, (String, String)> = store
        .chunkservers()?
        .into_iter()
        .map(|c| (c.id, (c.address, c.zone)))
        .collect();
    // Everything written so far reaches peers through anti-entropy when they connect.
    let (meta, commits) = MetaHandle::spawn(opened.store);
    let local = Local {
        node_id: opened.node_id,
        address,
        transport: tls.client.clone(),
    };
    let parts = components(&config, local, meta, clock, tokens, members);
    let (stop, stop_rx) = watch::channel(false);
    let tasks = spawn_workers(&config, &parts, net.clone(), events, commits, &stop_rx).await?;
    let server = serve(&parts, listener, tls.server.as_ref(), stop_rx)?;
    Ok(Controller {
        parts,
        net,
        grpc_addr,
        stop,
        tasks,
        server,
    })
}

impl Controller {
    /// Stops serving, stops the workers and the network, and waits for them, within
    /// [`SHUTDOWN_GRACE`] per stage: requests in flight finish, but connections whose peers
    /// vanished without closing them (a dead host, a deleted network namespace) and workers
    /// stuck on such peers are cut off instead of holding the process.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("gRPC connections still open after {SHUTDOWN_GRACE:?}; closing them");
            server.abort();
        }
        let mut tasks = self.tasks;
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!("workers still busy after {SHUTDOWN_GRACE:?}; stopping them");
            tasks.iter().for_each(JoinHandle::abort);
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.net.shutdown()).await;
        // The metadata owner flushes and closes the store: it is given its time.
        self.parts.meta.shutdown().await;
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

/// The address to advertise for a listener (see [`redcloud_proto::local::advertised_address`]):
/// routes are looked up toward the bootstrap peers and the `controller` alias.
pub fn advertised(local: SocketAddr, bootstrap: &[String]) -> String {
    let mut toward: Vec<String> = bootstrap.to_vec();
    toward.push("controller:7100".into());
    redcloud_proto::local::advertised_address(local, &toward)
}
