//! Shared helpers for the chunkserver's socket tests: start a server on 127.0.0.1:0 with a
//! store in a temporary directory, connect to it, stop it.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redcloud_chunk::client::{self, ChunkClient};
use redcloud_chunk::metrics::Metrics;
use redcloud_chunk::node::NodeIdentity;
use redcloud_chunk::scrub::ScrubConfig;
use redcloud_chunk::store::conformance::test_chunk;
use redcloud_chunk::{ChunkId, ChunkStore, Chunkserver, RocksOptions, RocksStore};
use redcloud_proto::transport::Transport;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any test waits for something to happen.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A chunkserver running in this process on a RocksDB store in a temporary directory.
pub struct TestServer {
    pub addr: String,
    pub store: Arc<dyn ChunkStore>,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

/// Starts a server whose store accepts `capacity` bytes (`None`: the free disk space).
pub async fn start(capacity: Option<u64>) -> TestServer {
    start_with(
        capacity,
        ScrubConfig {
            rate_bytes_per_sec: 0,
            ..ScrubConfig::default()
        },
    )
    .await
}

/// Starts a server with the given scrub settings.
pub async fn start_with(capacity: Option<u64>, scrub: ScrubConfig) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ChunkStore> =
        Arc::new(RocksStore::open(dir.path(), RocksOptions { capacity }).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = NodeIdentity {
        id: "cs-test".into(),
        address: addr.clone(),
        zone: "z1".into(),
    };
    // The cluster state this server has served: deletes must come from a controller that has
    // seen it (see `redcloud_chunk::lineage`).
    let lineage = redcloud_chunk::lineage::Lineage::in_memory();
    lineage.learn(&lineage_ids()).unwrap();
    let server = Chunkserver::new(store.clone(), node, scrub).with_lineage(Arc::new(lineage));
    let metrics = server.metrics();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        store,
        metrics,
        shutdown: Some(tx),
        task: Some(task),
        _dir: dir,
    }
}

impl TestServer {
    pub async fn client(&self) -> ChunkClient {
        client::connect(&self.addr, &Transport::plaintext())
            .await
            .unwrap()
    }

    /// Stops the server and checks that it shut down cleanly.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// The lineage test servers start with: a delete must carry it.
pub fn lineage_ids() -> Vec<String> {
    vec!["store0".to_owned()]
}

/// Chunk number `seed` of `len` bytes, with its id.
pub fn chunk(seed: u64, len: usize) -> (ChunkId, Bytes) {
    let bytes = Bytes::from(test_chunk(seed, len));
    (ChunkId::of(&bytes), bytes)
}

/// The wire form of an id.
pub fn wire(id: &ChunkId) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

/// Which of `ids` the server says it has.
pub async fn has(client: &mut ChunkClient, ids: &[ChunkId]) -> Vec<bool> {
    let request = redcloud_proto::chunk::HasChunksRequest {
        ids: ids.iter().map(wire).collect(),
        touch: false,
    };
    client
        .has_chunks(request)
        .await
        .unwrap()
        .into_inner()
        .present
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
