//! The heartbeat over real sockets: a chunkserver reporting to fake controllers (tonic
//! servers on 127.0.0.1 that record every report), which replay the deltas the way the
//! registry does and compare the result with what the chunkserver really holds.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DEADLINE, chunk, wait_until, wire};
use futures::StreamExt as _;
use redcloud_chunk::client::{self, ChunkClient};
use redcloud_chunk::heartbeat::HeartbeatConfig;
use redcloud_chunk::metrics::{Metrics, get};
use redcloud_chunk::node::NodeIdentity;
use redcloud_chunk::scrub::ScrubConfig;
use redcloud_chunk::{
    ChunkId, ChunkStore, Chunkserver, ChunkserverConfig, MemoryStore, TrackedStore, run,
};
use redcloud_proto::chunk::{DeleteChunkRequest, InfoRequest, ListChunksRequest};
use redcloud_proto::controller::registry_service_server::{RegistryService, RegistryServiceServer};
use redcloud_proto::controller::{HeartbeatRequest, HeartbeatResponse};
use redcloud_proto::transport::Transport;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const INTERVAL: Duration = Duration::from_millis(100);
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// What a fake controller heard, and what it answers. Survives the controller's restarts,
/// like a registry that kept its state.
#[derive(Clone, Default)]
struct Recorder {
    reports: Arc<Mutex<Vec<HeartbeatRequest>>>,
    answer: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl RegistryService for Recorder {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.reports.lock().unwrap().push(request.into_inner());
        Ok(Response::new(HeartbeatResponse {
            controllers: self.answer.lock().unwrap().clone(),
            inventory_requested: false,
            controller_id: "fake".into(),
            lineage: LINEAGE.iter().map(|s| s.to_string()).collect(),
        }))
    }
}

/// The metadata store incarnation every fake controller reports.
const LINEAGE: [&str; 1] = ["store0"];

impl Recorder {
    fn reports(&self) -> Vec<HeartbeatRequest> {
        self.reports.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.reports.lock().unwrap().len()
    }

    fn answer_with(&self, controllers: &[&str]) {
        *self.answer.lock().unwrap() = controllers.iter().map(|c| (*c).to_owned()).collect();
    }
}

/// A fake controller serving `RegistryService` on a loopback port.
struct FakeController {
    addr: String,
    recorder: Recorder,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl FakeController {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Recorder::default())
    }

    fn serve(listener: TcpListener, recorder: Recorder) -> Self {
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener);
        let task = tokio::spawn(
            Server::builder()
                .add_service(RegistryServiceServer::new(recorder.clone()))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            recorder,
            stop,
            task,
        }
    }

    /// Stops serving (closing its connections); answers what it recorded.
    async fn stop(self) -> Recorder {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("fake controller stops")
            .unwrap()
            .unwrap();
        self.recorder
    }
}

/// A chunkserver on a tracked in-memory store, heartbeating every [`INTERVAL`].
struct Node {
    addr: String,
    store: Arc<TrackedStore>,
    metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    async fn start(controllers: &[&str], log_capacity: usize) -> Self {
        let inner: Arc<dyn ChunkStore> = Arc::new(MemoryStore::default());
        let store = Arc::new(TrackedStore::new(inner, log_capacity));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = NodeIdentity {
            id: "cs-heartbeat".into(),
            address: addr.clone(),
            zone: "z1".into(),
        };
        let scrub = ScrubConfig {
            rate_bytes_per_sec: 0,
            ..ScrubConfig::default()
        };
        let heartbeat = HeartbeatConfig {
            interval: INTERVAL,
            timeout: CALL_TIMEOUT,
            ..HeartbeatConfig::new(controllers.iter().map(|c| (*c).to_owned()).collect())
        };
        let server = Chunkserver::tracked(store.clone(), node, scrub).with_heartbeat(heartbeat);
        let metrics = server.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            metrics,
            stop,
            task,
        }
    }

    async fn client(&self) -> ChunkClient {
        client::connect(&self.addr, &Transport::plaintext())
            .await
            .unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("chunkserver stops")
            .unwrap()
            .unwrap();
    }
}

fn id_of(bytes: &[u8]) -> ChunkId {
    ChunkId::from_slice(bytes).unwrap()
}

fn ids(list: &[bytes::Bytes]) -> BTreeSet<ChunkId> {
    list.iter().map(|b| id_of(b)).collect()
}

fn digest_of<'a>(ids: impl IntoIterator<Item = &'a ChunkId>) -> Vec<u8> {
    let mut digest = [0u8; 32];
    for id in ids {
        for (d, b) in digest.iter_mut().zip(id.0) {
            *d ^= b;
        }
    }
    digest.to_vec()
}

/// A controller's view after applying `reports` in order, as the registry does (the added,
/// then the removed of each report).
fn replay(reports: &[HeartbeatRequest]) -> BTreeSet<ChunkId> {
    let mut view = BTreeSet::new();
    for report in reports {
        view.extend(ids(&report.added));
        for id in ids(&report.removed) {
            view.remove(&id);
        }
    }
    view
}

/// Every chunk the server lists.
async fn inventory(client: &mut ChunkClient) -> BTreeSet<ChunkId> {
    let mut stream = client
        .list_chunks(ListChunksRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut all = BTreeSet::new();
    while let Some(page) = stream.next().await {
        all.extend(page.unwrap().chunks.iter().map(|c| id_of(&c.id)));
    }
    all
}

/// Writes chunks `seeds` over gRPC; answers their ids.
async fn write(client: &mut ChunkClient, seeds: std::ops::Range<u64>) -> Vec<ChunkId> {
    let mut written = Vec::new();
    for seed in seeds {
        let (id, bytes) = chunk(seed, 1000 + seed as usize);
        client::write_chunk(client, id, bytes, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap();
        written.push(id);
    }
    written
}

async fn delete(client: &mut ChunkClient, id: &ChunkId) {
    let request = DeleteChunkRequest {
        id: wire(id),
        min_age_ms: 0,
        lineage: LINEAGE.iter().map(|s| s.to_string()).collect(),
    };
    assert!(
        client
            .delete_chunk(request)
            .await
            .unwrap()
            .into_inner()
            .existed
    );
}

/// Waits until replaying `recorder`'s reports gives the server's inventory and the newest
/// report's digest is that inventory's digest.
async fn wait_in_sync(recorder: &Recorder, client: &mut ChunkClient, what: &str) {
    let truth = inventory(client).await;
    wait_until(what, || {
        let reports = recorder.reports();
        let ok = replay(&reports) == truth
            && reports
                .last()
                .is_some_and(|r| r.inventory_digest == digest_of(&truth));
        async move { ok }
    })
    .await;
}

#[tokio::test]
async fn the_first_heartbeat_after_a_restart_reports_identity_totals_and_digest_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChunkserverConfig::new(dir.path());
    config.id = Some("cs-first".into());
    config.zone = "z9".into();
    config.capacity = Some(10 << 20);
    config.scrub_rate = 0;
    config.heartbeat_interval = INTERVAL;
    config.insecure = true;

    // First life: no controllers; three chunks stored.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config.clone(), listener, async {
        let _ = stopped.await;
    }));
    let stored = write(
        &mut client::connect(&addr, &Transport::plaintext())
            .await
            .unwrap(),
        0..3,
    )
    .await;
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Second life: reporting to a controller that never heard of this server.
    let controller = FakeController::start().await;
    config.controllers = vec![controller.addr.clone()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, listener, async {
        let _ = stopped.await;
    }));
    let recorder = controller.recorder.clone();
    wait_until("the first heartbeat", || {
        let heard = recorder.count() > 0;
        async move { heard }
    })
    .await;
    let first = recorder.reports()[0].clone();
    assert_eq!(
        (
            first.id.as_str(),
            first.address.as_str(),
            first.zone.as_str()
        ),
        ("cs-first", addr.as_str(), "z9")
    );
    assert_eq!(first.capacity_bytes, 10 << 20);
    assert_eq!(first.used_bytes, 1000 + 1001 + 1002);
    assert_eq!(first.chunk_count, 3);
    assert_eq!(first.inventory_digest, digest_of(&stored));
    assert!(
        first.added.is_empty() && first.removed.is_empty(),
        "the log started after the chunks were stored, so no deltas: the controller pulls"
    );

    // From then on, changes arrive as deltas.
    let mut client = client::connect(&addr, &Transport::plaintext())
        .await
        .unwrap();
    let new = write(&mut client, 10..11).await;
    wait_until("the new chunk is reported", || {
        let added: BTreeSet<_> = recorder
            .reports()
            .iter()
            .flat_map(|r| ids(&r.added))
            .collect();
        let done = added == new.iter().copied().collect();
        async move { done }
    })
    .await;
    let last = recorder.reports().last().unwrap().clone();
    assert_eq!(last.chunk_count, 4);
    assert_eq!(last.inventory_digest, digest_of(stored.iter().chain(&new)));

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    controller.stop().await;
}

#[tokio::test]
async fn deltas_carry_writes_and_deletes_and_add_up_to_the_inventory() {
    let controller = FakeController::start().await;
    let node = Node::start(&[&controller.addr], 100_000).await;
    let recorder = controller.recorder.clone();
    let mut client = node.client().await;
    wait_until("the first heartbeat", || {
        let heard = recorder.count() > 0;
        async move { heard }
    })
    .await;
    let first = recorder.reports()[0].clone();
    assert_eq!(first.chunk_count, 0);
    assert_eq!(first.inventory_digest, vec![0; 32]);

    let written: BTreeSet<_> = write(&mut client, 0..5).await.into_iter().collect();
    wait_until("the writes are reported", || {
        let added: BTreeSet<_> = recorder
            .reports()
            .iter()
            .flat_map(|r| ids(&r.added))
            .collect();
        let done = added == written;
        async move { done }
    })
    .await;
    assert!(recorder.reports().iter().all(|r| r.removed.is_empty()));

    let gone = *written.iter().next().unwrap();
    delete(&mut client, &gone).await;
    wait_until("the delete is reported", || {
        let done = recorder
            .reports()
            .iter()
            .any(|r| ids(&r.removed) == [gone].into());
        async move { done }
    })
    .await;

    // A change made through the store (as the scrubber does) is reported too.
    let (direct, bytes) = chunk(99, 123);
    node.store.put(&direct, &bytes).unwrap();
    wait_in_sync(&recorder, &mut client, "the controller's view matches").await;
    let view = replay(&recorder.reports());
    assert!(view.contains(&direct) && !view.contains(&gone) && view.len() == 5);
    assert_eq!(recorder.reports().last().unwrap().chunk_count, 5);
    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.inventory_digest, digest_of(&view));
    assert!(get(&node.metrics.heartbeats_sent) >= recorder.count() as u64 - 1);
    // Once a controller answered, every report carries the lineage it learned (controllers
    // check it before deleting anything) and the server's clock (a skew witness).
    let last = recorder.reports().last().unwrap().clone();
    assert_eq!(last.lineage, LINEAGE);
    assert!(last.wall_ms > 1_600_000_000_000, "{}", last.wall_ms);

    node.stop().await;
    controller.stop().await;
}

#[tokio::test]
async fn a_controller_named_in_an_answer_starts_receiving_heartbeats() {
    let (first, second) = (FakeController::start().await, FakeController::start().await);
    first
        .recorder
        .answer_with(&[&first.addr, &second.addr, "not an address"]);
    let node = Node::start(&[&first.addr], 100_000).await;
    let mut client = node.client().await;
    write(&mut client, 0..4).await;

    // The second controller learns everything since the (empty) start from deltas.
    wait_in_sync(
        &second.recorder,
        &mut client,
        "the learned controller is in sync",
    )
    .await;
    wait_in_sync(
        &first.recorder,
        &mut client,
        "the first controller is in sync",
    )
    .await;
    let report = second.recorder.reports()[0].clone();
    assert_eq!(report.id, "cs-heartbeat");

    node.stop().await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn dead_controllers_do_not_hold_up_live_ones_and_a_returning_one_catches_up() {
    let live = FakeController::start().await;
    let returning = FakeController::start().await;
    // Nothing listens here: connections are refused.
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    // A listener that never accepts: calls hang until their deadline.
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let node = Node::start(
        &[&live.addr, &refused, &hung_addr, &returning.addr],
        100_000,
    )
    .await;
    let mut client = node.client().await;

    let before = write(&mut client, 0..2).await;
    wait_in_sync(
        &returning.recorder,
        &mut client,
        "the returning one is in sync",
    )
    .await;

    // The hung controller's 500 ms deadline does not slow the 100 ms beat to the live one.
    let start = live.recorder.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beats = live.recorder.count() - start;
    assert!(
        beats >= 4,
        "only {beats} heartbeats in 1 s at a 100 ms interval"
    );

    // While one controller is down, the inventory changes.
    let port = returning.addr.clone();
    let recorder = returning.stop().await;
    let heard_before_restart = recorder.count();
    let after = write(&mut client, 10..13).await;
    delete(&mut client, &before[0]).await;
    wait_in_sync(
        &live.recorder,
        &mut client,
        "the live controller is in sync",
    )
    .await;
    assert!(get(&node.metrics.heartbeats_failed) > 0);

    // Back on the same port with the state it had: it receives what it missed as deltas.
    let listener = TcpListener::bind(&port).await.unwrap();
    let returned = FakeController::serve(listener, recorder.clone());
    wait_in_sync(&recorder, &mut client, "the returned controller caught up").await;
    let missed = &recorder.reports()[heard_before_restart..];
    let added: BTreeSet<_> = missed.iter().flat_map(|r| ids(&r.added)).collect();
    let removed: BTreeSet<_> = missed.iter().flat_map(|r| ids(&r.removed)).collect();
    assert_eq!(added, after.iter().copied().collect());
    assert_eq!(removed, [before[0]].into());

    drop(hung);
    node.stop().await;
    live.stop().await;
    returned.stop().await;
}

#[tokio::test]
async fn a_controller_behind_a_truncated_log_gets_no_deltas_and_the_true_digest() {
    let controller = FakeController::start().await;
    let node = Node::start(&[&controller.addr], 4).await;
    let mut client = node.client().await;
    write(&mut client, 0..2).await;
    wait_in_sync(
        &controller.recorder,
        &mut client,
        "in sync before the outage",
    )
    .await;

    let port = controller.addr.clone();
    let recorder = controller.stop().await;
    let heard = recorder.count();
    let written = write(&mut client, 10..20).await;
    let (oldest, head) = node.store.log_bounds();
    assert!(oldest > 3 && head == 12, "log holds {oldest}..={head}");

    let returned = FakeController::serve(TcpListener::bind(&port).await.unwrap(), recorder.clone());
    wait_until("a heartbeat after the outage", || {
        let done = recorder.count() > heard;
        async move { done }
    })
    .await;
    let report = recorder.reports()[heard].clone();
    assert!(report.added.is_empty() && report.removed.is_empty());
    assert_eq!(report.chunk_count, 12);
    let truth = inventory(&mut client).await;
    assert_eq!(truth.len(), 12);
    assert!(written.iter().all(|id| truth.contains(id)));
    assert_eq!(report.inventory_digest, digest_of(&truth));
    // What the controller would now do: pull the inventory, then follow deltas again.
    let more = write(&mut client, 30..31).await;
    wait_until("deltas resume after the reset", || {
        let done = recorder.reports()[heard..]
            .iter()
            .any(|r| ids(&r.added) == more.iter().copied().collect());
        async move { done }
    })
    .await;

    node.stop().await;
    returned.stop().await;
}
