//! In-process controllers on 127.0.0.1 for the replication benchmarks, assembled from the
//! controller's own parts exactly as `redcloud_meta::node::start` wires them (p2p network,
//! replication task, metadata owner thread, RocksDB document storage), minus the gRPC server
//! and the repair and GC workers, which play no part in replication. The storage carries a
//! [`ProbeStorage`] so every apply is timestamped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redcloud_meta::clock::NodeClock;
use redcloud_meta::files::NewVersion;
use redcloud_meta::handle::MetaHandle;
use redcloud_meta::metrics::Metrics;
use redcloud_meta::peers::Peers;
use redcloud_meta::replication::{Replication, ReplicationConfig, ReplicationParts};
use redcloud_meta::{Commit, MetaStore, NodeId, RocksStorage};
use redcloud_p2p::{Handle, PeerId};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::probe::{Applied, ProbeStorage};

/// The cluster secret of every benchmark node: benchmarks run with security on.
pub fn bench_secret() -> redcloud_proto::trust::ClusterSecret {
    redcloud_proto::trust::ClusterSecret::from_bytes([7; 32])
}

/// How benchmark clients dial: TLS verified against the CA of [`bench_secret`], as users do.
pub fn bench_transport() -> redcloud_proto::transport::Transport {
    let ca = redcloud_proto::tls::ClusterCa::from_secret(&bench_secret())
        .expect("the CA derives from any secret");
    redcloud_proto::transport::Transport::tls(ca.cert_pem().as_bytes())
}

/// The cluster name every benchmark node uses.
pub const CLUSTER: &str = "bench";
/// The user owning every benchmark file.
pub const USER: &str = "bench";

/// One running controller core.
pub struct Node {
    pub index: usize,
    pub meta: MetaHandle,
    pub net: Handle,
    pub metrics: Arc<Metrics>,
    pub peer: PeerId,
    /// `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
    pub addr: String,
    pub port: u16,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    _dir: TempDir,
}

/// A set of nodes sharing one probe channel.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub events: mpsc::UnboundedReceiver<Applied>,
    events_tx: mpsc::UnboundedSender<Applied>,
    sync_interval: Duration,
}

impl Cluster {
    /// Starts `n` nodes; each bootstraps from every node started before it (as a DNS alias
    /// resolving to all controllers would give it), so the cluster is fully connected.
    pub async fn start(n: usize, sync_interval: Duration) -> Result<Cluster> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            events,
            events_tx,
            sync_interval,
        };
        for _ in 0..n {
            cluster.add().await?;
        }
        Ok(cluster)
    }

    /// Starts one more node, bootstrapping from all the others.
    pub async fn add(&mut self) -> Result<()> {
        self.add_from(
            tempfile::tempdir()?,
            redcloud_p2p::Keypair::generate_ed25519(),
        )
        .await
    }

    /// Starts one more node on the metadata in `dir/meta` (empty, or written for the node id
    /// of `keypair`'s peer id), bootstrapping from all the others.
    pub async fn add_from(&mut self, dir: TempDir, keypair: redcloud_p2p::Keypair) -> Result<()> {
        let bootstrap = self.nodes.iter().map(|n| n.addr.clone()).collect();
        let node = start_node(
            self.nodes.len(),
            dir,
            keypair,
            bootstrap,
            self.sync_interval,
            self.events_tx.clone(),
        )
        .await?;
        self.nodes.push(node);
        Ok(())
    }

    /// Stops delivering probe events (a bulk transfer would queue a copy of every change).
    pub fn ignore_events(&mut self) {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(tx);
        self.events = rx;
    }

    /// Waits until every node is connected to every other and has at least `min(n - 1, 5)`
    /// peers in its gossip mesh (gossipsub's `mesh_n_low`). Returns how long that took.
    pub async fn wait_mesh(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let n = self.nodes.len();
        let want_mesh = (n - 1).min(5);
        loop {
            let mut ready = true;
            for node in &self.nodes {
                let peers = node.net.peers().await?.len();
                let mesh = node.net.gossip_peers().await?.len();
                if peers < n - 1 || mesh < want_mesh {
                    ready = false;
                    break;
                }
            }
            if ready {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("mesh of {n} nodes not formed after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every node has the same metadata digest.
    pub async fn wait_equal(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let mut digests = Vec::new();
            for node in &self.nodes {
                digests.push(node.meta.call(|s| s.digest()).await?);
            }
            if digests.windows(2).all(|w| w[0] == w[1]) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("nodes did not converge within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Forgets every probe event received so far.
    pub fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Stops every node.
    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

async fn start_node(
    index: usize,
    dir: TempDir,
    keypair: redcloud_p2p::Keypair,
    bootstrap: Vec<String>,
    sync_interval: Duration,
    events: mpsc::UnboundedSender<Applied>,
) -> Result<Node> {
    let peer = keypair.public().to_peer_id();
    let path = dir.path().join("meta");
    let storage = tokio::task::spawn_blocking(move || RocksStorage::open(&path))
        .await?
        .context("opening the metadata storage")?;
    let probe = ProbeStorage {
        inner: storage,
        node: index,
        events,
        pending: Vec::new(),
    };
    let node_id = NodeId::new(peer.to_string())?;
    // A saved store of many files takes seconds to open: off the async threads.
    let store = tokio::task::spawn_blocking(move || {
        MetaStore::open(Box::new(probe), redcloud_meta::Config::new(node_id))
    })
    .await??;
    let mut config = redcloud_p2p::Config::new(CLUSTER, keypair);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.mdns = false;
    config.private_key = Some(bench_secret().p2p_key());
    config.bootstrap = bootstrap;
    let (net, net_events) = redcloud_p2p::spawn(config).await?;
    let listen = net.listen_addrs().await?;
    let first = listen.first().context("no listen address")?;
    // `/ip4/127.0.0.1/tcp/<port>`
    let text = first.to_string();
    let port = text
        .rsplit('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let addr = format!("{first}/p2p/{peer}");
    let (meta, commits) = MetaHandle::spawn(store);
    let metrics = Arc::new(Metrics::default());
    let replication = Replication::new(
        ReplicationParts {
            net: net.clone(),
            meta: meta.clone(),
            peers: Arc::new(Peers::default()),
            clock: Arc::new(NodeClock::new(0, redcloud_meta::clock::DEFAULT_MAX_SKEW_MS)),
            metrics: metrics.clone(),
        },
        ReplicationConfig {
            interval: sync_interval,
            ..ReplicationConfig::default()
        },
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let (mut net_events, mut commits) = (net_events, commits);
        replication
            .run(&mut net_events, &mut commits, stop_rx)
            .await;
    });
    Ok(Node {
        index,
        meta,
        net,
        metrics,
        peer,
        addr,
        port,
        stop,
        task,
        _dir: dir,
    })
}

impl Node {
    /// Adds a new file version named `name` and returns its commit.
    pub async fn write(&self, name: String, seed: u8) -> Result<Commit> {
        let commit = self
            .meta
            .mutate(move |s| {
                let (_, c) = s.add_version(
                    USER,
                    &name,
                    version(seed, 2),
                    redcloud_meta::clock::system_ms(),
                    None,
                )?;
                Ok((c.clone(), vec![c]))
            })
            .await?;
        Ok(commit)
    }

    /// Stops the replication task, the network and the metadata owner.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let _ = self.net.shutdown().await;
        self.meta.shutdown().await;
    }
}

/// A small file version: `chunks` chunks of one byte each, tagged `t`.
pub fn version(seed: u8, chunks: usize) -> NewVersion {
    let chunks: Vec<([u8; 32], u64)> = (0..chunks)
        .map(|i| {
            let mut h = [seed; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            (h, 1)
        })
        .collect();
    NewVersion {
        size: chunks.len() as u64,
        blake3: [seed; 32],
        chunks,
        tags: vec!["t".into()],
    }
}
