//! The chunkserver's trust boundary over real sockets: a node started with a cluster secret
//! refuses every call without a credential, takes internal calls only from nodes of its
//! cluster, and reads or writes one chunk only for a valid grant of that chunk and access.

use std::time::Duration;

use bytes::Bytes;
use redcloud_chunk::client::{self, ClientError};
use redcloud_chunk::{ChunkId, ChunkserverConfig, run};
use redcloud_proto::chunk::ReadChunkRequest;
use redcloud_proto::chunk::{
    DeleteChunkRequest, HasChunksRequest, InfoRequest, ListChunksRequest, ReplicateChunkRequest,
    ReplicateChunksRequest,
};
use redcloud_proto::tls::ClusterCa;
use redcloud_proto::transport::Transport;
use redcloud_proto::trust::{Access, ClusterSecret, Gate, grant_metadata};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::metadata::MetadataMap;

const DEADLINE: Duration = Duration::from_secs(30);

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes([11; 32])
}

/// How the cluster's nodes and clients dial: TLS verified against the CA of [`secret`].
fn tls() -> Transport {
    Transport::tls(
        ClusterCa::from_secret(&secret())
            .unwrap()
            .cert_pem()
            .as_bytes(),
    )
}

fn chunk(seed: u8, len: usize) -> (ChunkId, Bytes) {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
    (ChunkId::of(&bytes), Bytes::from(bytes))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn secured() -> (
    String,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChunkserverConfig::new(dir.path());
    config.scrub_rate = 0;
    config.secret = Some(secret());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, listener, async {
        let _ = rx.await;
    }));
    (addr, dir, tx, task)
}

fn code(e: ClientError) -> Code {
    match e {
        ClientError::Status(s) => s.code(),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test]
async fn a_node_without_a_secret_refuses_to_start_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = ChunkserverConfig::new(dir.path());
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("redcloud secret") && err.contains("--insecure"),
        "{err}"
    );
}

#[tokio::test]
async fn every_call_without_a_credential_is_refused() {
    let (addr, _dir, stop, task) = secured().await;
    let node = Gate::new(Some(&secret())).node_metadata();
    let none = MetadataMap::new();
    let (id, bytes) = chunk(3, 70_000);
    let mut c = client::connect(&addr, &tls()).await.unwrap();

    let e = client::write_chunk(&mut c, id, bytes.clone(), &none)
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::Unauthenticated);
    // A node of the cluster may write (repair and replication do).
    client::write_chunk(&mut c, id, bytes.clone(), &node)
        .await
        .unwrap();
    let e = client::read_chunk(&mut c, id, &none).await.unwrap_err();
    assert_eq!(code(e), Code::Unauthenticated);

    let wire = Bytes::copy_from_slice(id.as_bytes());
    let s = c
        .has_chunks(HasChunksRequest {
            ids: vec![wire.clone()],
            touch: false,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .delete_chunk(DeleteChunkRequest {
            id: wire.clone(),
            min_age_ms: 0,
            lineage: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .list_chunks(ListChunksRequest {
            after: Bytes::new(),
            page_size: 10,
            limit: 0,
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .replicate_chunk(ReplicateChunkRequest {
            id: wire.clone(),
            source: addr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .replicate_chunks(ReplicateChunksRequest {
            source: addr.clone(),
            ids: vec![wire.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c.info(InfoRequest {}).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);

    // A node of another cluster (another secret) is an outsider too.
    let outsider = Gate::new(Some(&ClusterSecret::from_bytes([12; 32])));
    let s = c
        .info(outsider.node_request(InfoRequest {}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // The chunk is still there, unharmed.
    assert_eq!(client::read_chunk(&mut c, id, &node).await.unwrap(), bytes);
    assert!(
        c.info(Gate::new(Some(&secret())).node_request(InfoRequest {}))
            .await
            .is_ok()
    );

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_grant_opens_one_chunk_for_one_access_until_it_expires() {
    let (addr, _dir, stop, task) = secured().await;
    let key = secret().grant_key();
    let (x, x_bytes) = chunk(5, 40_000);
    let (y, y_bytes) = chunk(7, 40_000);
    let later = now_ms() + 60_000;
    let mut c = client::connect(&addr, &tls()).await.unwrap();

    let write_x = grant_metadata(&key.sign(Access::Write, x.as_bytes(), later));
    // A write grant for X does not write Y.
    let e = client::write_chunk(&mut c, y, y_bytes.clone(), &write_x)
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);
    client::write_chunk(&mut c, x, x_bytes.clone(), &write_x)
        .await
        .unwrap();
    // ...nor reads X.
    let e = client::read_chunk(&mut c, x, &write_x).await.unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);

    let read_x = grant_metadata(&key.sign(Access::Read, x.as_bytes(), later));
    assert_eq!(
        client::read_chunk(&mut c, x, &read_x).await.unwrap(),
        x_bytes
    );
    // A read grant for X does not read Y (written by a node).
    let node = Gate::new(Some(&secret())).node_metadata();
    client::write_chunk(&mut c, y, y_bytes, &node)
        .await
        .unwrap();
    let e = client::read_chunk(&mut c, y, &read_x).await.unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);

    // Expired, forged and foreign grants are refused.
    let expired = grant_metadata(&key.sign(Access::Read, x.as_bytes(), now_ms() - 1));
    let e = client::read_chunk(&mut c, x, &expired).await.unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);
    let text = key.sign(Access::Read, x.as_bytes(), later);
    let forged = grant_metadata(&text.replace(&later.to_string(), &(later + 1).to_string()));
    let e = client::read_chunk(&mut c, x, &forged).await.unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);
    let foreign = ClusterSecret::from_bytes([13; 32]).grant_key();
    let foreign = grant_metadata(&foreign.sign(Access::Read, x.as_bytes(), later));
    let e = client::read_chunk(&mut c, x, &foreign).await.unwrap_err();
    assert_eq!(code(e), Code::PermissionDenied);

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The status code a WriteChunks call that must fail was refused with.
async fn refusal(
    c: &mut client::ChunkClient,
    chunks: Vec<(ChunkId, Bytes, String)>,
    md: &MetadataMap,
) -> Code {
    code(client::write_chunks(c, chunks, md).await.unwrap_err())
}

#[tokio::test]
async fn a_batch_write_needs_a_grant_for_every_chunk_and_stores_all_or_nothing() {
    let (addr, _dir, stop, task) = secured().await;
    let key = secret().grant_key();
    let later = now_ms() + 60_000;
    let node = Gate::new(Some(&secret())).node_metadata();
    let none = MetadataMap::new();
    let chunks: Vec<(ChunkId, Bytes)> = (20..25).map(|seed| chunk(seed, 3_000)).collect();
    let granted = |access: Access| -> Vec<(ChunkId, Bytes, String)> {
        chunks
            .iter()
            .map(|(id, b)| (*id, b.clone(), key.sign(access, id.as_bytes(), later)))
            .collect()
    };
    let mut c = client::connect(&addr, &tls()).await.unwrap();
    let held = |c: &mut client::ChunkClient| {
        let mut c = c.clone();
        let node = node.clone();
        let ids: Vec<Bytes> = chunks
            .iter()
            .map(|(id, _)| Bytes::copy_from_slice(id.as_bytes()))
            .collect();
        async move {
            let mut request = tonic::Request::new(HasChunksRequest { ids, touch: false });
            *request.metadata_mut() = node;
            c.has_chunks(request).await.unwrap().into_inner().present
        }
    };

    // No grants and no node credential: refused.
    let bare: Vec<_> = chunks
        .iter()
        .map(|(id, b)| (*id, b.clone(), String::new()))
        .collect();
    assert_eq!(refusal(&mut c, bare, &none).await, Code::Unauthenticated);
    // One chunk's grant is for reading, or for another chunk: the whole call is refused.
    let mut wrong_access = granted(Access::Write);
    wrong_access[3].2 = key.sign(Access::Read, chunks[3].0.as_bytes(), later);
    assert_eq!(
        refusal(&mut c, wrong_access, &none).await,
        Code::PermissionDenied
    );
    let mut wrong_chunk = granted(Access::Write);
    wrong_chunk[1].2 = wrong_chunk[0].2.clone();
    assert_eq!(
        refusal(&mut c, wrong_chunk, &none).await,
        Code::PermissionDenied
    );
    // One chunk's bytes do not match its id: refused, nothing stored.
    let mut lying = granted(Access::Write);
    lying[2].1 = chunks[4].1.clone();
    assert_eq!(refusal(&mut c, lying, &none).await, Code::InvalidArgument);
    assert_eq!(
        held(&mut c).await,
        vec![false; chunks.len()],
        "a refused call stored chunks"
    );

    // Every grant right: all stored, and a second call finds them present.
    let present = client::write_chunks(&mut c, granted(Access::Write), &none)
        .await
        .unwrap();
    assert_eq!(present, vec![false; chunks.len()]);
    assert_eq!(held(&mut c).await, vec![true; chunks.len()]);
    let present = client::write_chunks(&mut c, granted(Access::Write), &none)
        .await
        .unwrap();
    assert_eq!(present, vec![true; chunks.len()]);
    for (id, bytes) in &chunks {
        assert_eq!(
            &client::read_chunk(&mut c, *id, &node).await.unwrap(),
            bytes
        );
    }

    // Past the limits: refused whole, with the limit named.
    let too_many: Vec<_> = (0..=redcloud_chunk::service::MAX_BATCH_CHUNKS)
        .map(|i| {
            let (id, b) = chunk(1, i % 200 + 1);
            (id, b, String::new())
        })
        .collect();
    match client::write_chunks(&mut c, too_many, &node)
        .await
        .unwrap_err()
    {
        ClientError::Status(s) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().contains("limit"), "{}", s.message());
        }
        other => panic!("expected a status, got {other}"),
    }

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn only_a_tls_client_that_trusts_the_cluster_ca_gets_through() {
    let (addr, _dir, stop, task) = secured().await;
    let node = Gate::new(Some(&secret())).node_metadata();
    let (id, bytes) = chunk(9, 10_000);
    let mut c = client::connect(&addr, &tls()).await.unwrap();
    client::write_chunk(&mut c, id, bytes.clone(), &node)
        .await
        .unwrap();

    // Plaintext: the server speaks TLS only, so no call completes, credential or not.
    let plain = tokio::time::timeout(DEADLINE, async {
        let mut p = client::connect(&addr, &Transport::plaintext()).await?;
        client::read_chunk(&mut p, id, &node).await
    })
    .await
    .expect("a plaintext client gets an answer, not a hang");
    assert!(plain.is_err(), "a plaintext client read a chunk");

    // TLS trusting another cluster's CA: the server's certificate does not verify.
    let other = ClusterCa::from_secret(&ClusterSecret::from_bytes([12; 32])).unwrap();
    let wrong_ca = Transport::tls(other.cert_pem().as_bytes());
    let wrong = tokio::time::timeout(DEADLINE, async {
        let mut w = client::connect(&addr, &wrong_ca).await?;
        client::read_chunk(&mut w, id, &node).await
    })
    .await
    .expect("an untrusting client gets an answer, not a hang");
    assert!(wrong.is_err(), "a client trusting another CA read a chunk");

    // The right CA reads it.
    assert_eq!(client::read_chunk(&mut c, id, &node).await.unwrap(), bytes);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// 64 read streams of an 8 MiB chunk whose caller never takes a frame, all on one connection
/// (twice the chunkserver's transfer slots): a legitimate read on another connection still
/// gets its bytes, because a stream nobody reads is dropped after the idle timeout and frees
/// its slot.
#[tokio::test]
async fn stalled_read_streams_do_not_block_a_legitimate_read() {
    let (addr, _dir, stop, task) = secured().await;
    let node = Gate::new(Some(&secret())).node_metadata();
    let (id, bytes) = chunk(13, 8 << 20);
    let mut c = client::connect(&addr, &tls()).await.unwrap();
    client::write_chunk(&mut c, id, bytes.clone(), &node)
        .await
        .unwrap();

    let stalled_conn = client::connect(&addr, &tls()).await.unwrap();
    let mut stalled = Vec::new();
    let mut opening = Vec::new();
    for _ in 0..64 {
        let mut s = stalled_conn.clone();
        let request = Gate::new(Some(&secret())).node_request(ReadChunkRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
            offset: 0,
            length: 0,
        });
        // Each call is opened (its response awaited in a task) and its stream never read.
        opening.push(tokio::spawn(async move { s.read_chunk(request).await }));
    }
    // Let the server hand out its transfer slots to the stalled streams first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let legit = tokio::time::timeout(Duration::from_secs(60), async {
        let mut fresh = client::connect(&addr, &tls()).await.unwrap();
        client::read_chunk(&mut fresh, id, &node).await
    })
    .await
    .expect("a legitimate read completes while 64 streams stall");
    assert_eq!(legit.unwrap(), bytes);

    // The stalled callers hold their (unread) streams until the legitimate read is done.
    for o in opening {
        if let Ok(Ok(Ok(response))) = tokio::time::timeout(DEADLINE, o).await {
            stalled.push(response);
        }
    }
    drop(stalled);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A write stream whose caller sends the header and then nothing is dropped after the idle
/// timeout with a clear error; nothing is stored.
#[tokio::test]
async fn a_stalled_write_is_dropped_and_stores_nothing() {
    use redcloud_proto::chunk::write_chunk_request::Msg;
    use redcloud_proto::chunk::{WriteChunkRequest, WriteHeader};
    let (addr, _dir, stop, task) = secured().await;
    let gate = Gate::new(Some(&secret()));
    let (id, _) = chunk(15, 100_000);
    let mut c = client::connect(&addr, &tls()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WriteChunkRequest {
        msg: Some(Msg::Header(WriteHeader {
            id: Bytes::copy_from_slice(id.as_bytes()),
            size: 100_000,
        })),
    })
    .await
    .unwrap();
    let request = gate.node_request(tokio_stream::wrappers::ReceiverStream::new(rx));
    let answer = tokio::time::timeout(Duration::from_secs(60), c.write_chunk(request))
        .await
        .expect("the server gives up on a stalled write");
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("stalled"), "{status:?}");
    drop(tx);
    let e = client::read_chunk(&mut c, id, &gate.node_metadata())
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::NotFound);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A chunkserver asked to stop while a caller holds a read stream open and unread (a
/// caller that vanished looks the same from here) stops within its shutdown grace, instead
/// of waiting for the caller.
#[tokio::test]
async fn a_chunkserver_stops_promptly_with_a_caller_that_went_silent() {
    let (addr, _dir, stop, task) = secured().await;
    let node = Gate::new(Some(&secret())).node_metadata();
    let (id, bytes) = chunk(17, 8 << 20);
    let mut c = client::connect(&addr, &tls()).await.unwrap();
    client::write_chunk(&mut c, id, bytes, &node).await.unwrap();
    // Enough unread streams on one connection to fill its flow-control window.
    let mut held = Vec::new();
    for _ in 0..4 {
        let request = Gate::new(Some(&secret())).node_request(ReadChunkRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
            offset: 0,
            length: 0,
        });
        held.push(c.read_chunk(request).await.unwrap());
    }
    let asked = std::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the chunkserver stops")
        .unwrap()
        .unwrap();
    // Well under the stream idle timeout (10 s): the shutdown grace (5 s) cut it off.
    assert!(
        asked.elapsed() < Duration::from_secs(9),
        "stopping took {:?}",
        asked.elapsed()
    );
    drop(held);
}
