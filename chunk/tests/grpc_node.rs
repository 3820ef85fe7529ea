//! Whole-node behaviour over real sockets: replication between servers, Info, scrub, and
//! `run` with its persisted node id.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{DEADLINE, chunk, has, start, start_with, wait_until, wire};
use redcloud_chunk::client::{self, ClientError};
use redcloud_chunk::id::ChunkId;
use redcloud_chunk::scrub::ScrubConfig;
use redcloud_chunk::{ChunkserverConfig, run};
use redcloud_proto::chunk::{
    InfoRequest, InfoResponse, ReplicateChunkRequest, ReplicateChunksRequest, ReplicateOutcome,
};
use redcloud_proto::transport::Transport;
use tokio::net::TcpListener;
use tonic::Code;

/// Writes every chunk of `chunks` to `client`'s server.
async fn write_all(client: &mut client::ChunkClient, chunks: &[(ChunkId, bytes::Bytes)]) {
    let none = tonic::metadata::MetadataMap::new();
    for (id, bytes) in chunks {
        client::write_chunk(client, *id, bytes.clone(), &none)
            .await
            .unwrap();
    }
}

async fn info(client: &mut client::ChunkClient) -> InfoResponse {
    client.info(InfoRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn replicate_copies_a_chunk_from_another_server() {
    let (source, target) = (start(None).await, start(None).await);
    let (id, bytes) = chunk(1, 3 << 20);
    client::write_chunk(
        &mut source.client().await,
        id,
        bytes.clone(),
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();

    let mut client = target.client().await;
    let request = ReplicateChunkRequest {
        id: wire(&id),
        source: source.addr.clone(),
    };
    let answer = client
        .replicate_chunk(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.already_present);
    assert_eq!(answer.size, bytes.len() as u64);
    assert_eq!(
        client::read_chunk(&mut client, id, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        bytes
    );
    let again = client.replicate_chunk(request).await.unwrap().into_inner();
    assert!(again.already_present);
    source.stop().await;
    target.stop().await;
}

/// A TCP proxy to `to` that counts the connections it accepts.
async fn counting_proxy(to: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// A repair fill pulls many chunks from one source: they share one kept connection instead of
/// a TCP (and TLS) handshake each.
#[tokio::test]
async fn replication_from_one_source_keeps_one_connection() {
    let (source, target) = (start(None).await, start(None).await);
    let (via, accepted) = counting_proxy(source.addr.clone()).await;
    let chunks: Vec<_> = (0..6).map(|seed| chunk(40 + seed, 100_000)).collect();
    let mut to_source = source.client().await;
    let none = tonic::metadata::MetadataMap::new();
    write_all(&mut to_source, &chunks).await;
    let mut client = target.client().await;
    for (id, bytes) in &chunks {
        let request = ReplicateChunkRequest {
            id: wire(id),
            source: via.clone(),
        };
        let answer = tokio::time::timeout(DEADLINE, client.replicate_chunk(request))
            .await
            .expect("replication answers in time")
            .unwrap()
            .into_inner();
        assert_eq!(answer.size, bytes.len() as u64);
        assert_eq!(
            &client::read_chunk(&mut client, *id, &none).await.unwrap(),
            bytes
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection to the source"
    );
    source.stop().await;
    target.stop().await;
}

/// A repair fill's batch: many chunks from one source in one call, small and large, one the
/// target holds already and one the source lacks. Each is answered on its own, the copies are
/// the bytes, and a second call finds them all present.
#[tokio::test]
async fn replicate_many_copies_each_chunk_and_answers_each_on_its_own() {
    let (source, target) = (start(None).await, start(None).await);
    let none = tonic::metadata::MetadataMap::new();
    let mut chunks: Vec<_> = (0..300).map(|seed| chunk(1000 + seed, 4096)).collect();
    chunks.push(chunk(2000, 3 << 20));
    chunks.push(chunk(2001, 5 << 20));
    let mut to_source = source.client().await;
    write_all(&mut to_source, &chunks).await;
    let mut client = target.client().await;
    let (held, _) = &chunks[7];
    client::write_chunk(&mut client, *held, chunks[7].1.clone(), &none)
        .await
        .unwrap();
    let (absent, _) = chunk(3000, 100);
    let mut ids: Vec<_> = chunks.iter().map(|(id, _)| wire(id)).collect();
    ids.insert(100, wire(&absent));
    let request = ReplicateChunksRequest {
        source: source.addr.clone(),
        ids,
    };
    let answer = tokio::time::timeout(DEADLINE, client.replicate_chunks(request.clone()))
        .await
        .expect("replication answers in time")
        .unwrap()
        .into_inner()
        .chunks;
    assert_eq!(answer.len(), chunks.len() + 1);
    let lacking = &answer[100];
    assert!(!lacking.stored);
    assert!(
        lacking.error.contains(&absent.to_string()),
        "{}",
        lacking.error
    );
    assert!(lacking.error.contains(&source.addr), "{}", lacking.error);
    let copied: Vec<&ReplicateOutcome> = answer
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 100)
        .map(|(_, a)| a)
        .collect();
    for (i, ((id, bytes), a)) in chunks.iter().zip(copied).enumerate() {
        assert!(a.stored, "chunk {i}: {}", a.error);
        assert_eq!(a.already_present, id == held, "chunk {i}");
        assert_eq!(a.size, bytes.len() as u64);
        assert_eq!(
            &client::read_chunk(&mut client, *id, &none).await.unwrap(),
            bytes
        );
    }
    assert_eq!(has(&mut client, &[absent]).await, [false]);

    let again = client.replicate_chunks(request).await.unwrap().into_inner();
    let present = again.chunks.iter().filter(|a| a.already_present).count();
    assert_eq!(present, chunks.len());
    source.stop().await;
    target.stop().await;
}

/// Two chunkservers filling each other at once, with more batches than either has buffers:
/// a pull waits on the other server's reads, so pulls must not take the buffers reads need
/// (each side would wait for the other until the reads time out).
#[tokio::test]
async fn servers_filling_each_other_at_once_both_finish() {
    let (a, b) = (start(None).await, start(None).await);
    let none = tonic::metadata::MetadataMap::new();
    const CALLS: u64 = 8;
    const PER_CALL: u64 = 40;
    // Every chunk is written first, so that all the calls start together.
    let mut requests = Vec::new();
    // What each puller must end up holding: its index in [a, b], id and bytes.
    let mut expected = Vec::new();
    for (holder, puller, puller_index, base) in [(&a, &b, 1, 10_000), (&b, &a, 0, 20_000)] {
        let mut to_holder = holder.client().await;
        for call in 0..CALLS {
            let chunks: Vec<_> = (0..PER_CALL)
                .map(|i| chunk(base + call * PER_CALL + i, 4096))
                .collect();
            write_all(&mut to_holder, &chunks).await;
            expected.extend(chunks.iter().map(|c| (puller_index, c.clone())));
            let request = ReplicateChunksRequest {
                source: holder.addr.clone(),
                ids: chunks.iter().map(|(id, _)| wire(id)).collect(),
            };
            requests.push((puller.client().await, request));
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for (mut to_puller, request) in requests {
        calls.spawn(async move { to_puller.replicate_chunks(request).await });
    }
    let all = async {
        let mut stored = 0;
        while let Some(answer) = calls.join_next().await {
            let answer = answer.unwrap().unwrap().into_inner();
            stored += answer.chunks.iter().filter(|c| c.stored).count();
        }
        stored
    };
    let stored = tokio::time::timeout(DEADLINE, all)
        .await
        .expect("both fills finish in time");
    assert_eq!(stored as u64, 2 * CALLS * PER_CALL);
    let mut clients = [a.client().await, b.client().await];
    for (puller, (id, bytes)) in &expected {
        let copy = client::read_chunk(&mut clients[*puller], *id, &none).await;
        assert_eq!(&copy.unwrap(), bytes, "chunk {id} on its puller");
    }
    a.stop().await;
    b.stop().await;
}

/// A batch naming too many chunks, a malformed id or no source is refused whole, and nothing
/// of it is copied.
#[tokio::test]
async fn replicate_many_refuses_a_malformed_batch() {
    let (source, target) = (start(None).await, start(None).await);
    let none = tonic::metadata::MetadataMap::new();
    let (id, bytes) = chunk(4000, 1000);
    client::write_chunk(&mut source.client().await, id, bytes, &none)
        .await
        .unwrap();
    let mut client = target.client().await;
    let limit = redcloud_chunk::service::MAX_REPLICATE_IDS;
    let bad = [
        (vec![wire(&id); limit + 1], source.addr.clone(), "limit"),
        (
            vec![wire(&id), bytes::Bytes::from_static(b"short")],
            source.addr.clone(),
            "ids[1]",
        ),
        (vec![wire(&id)], String::new(), "source"),
    ];
    for (ids, source, names) in bad {
        let status = client
            .replicate_chunks(ReplicateChunksRequest { source, ids })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains(names), "{}", status.message());
    }
    assert_eq!(has(&mut client, &[id]).await, [false]);
    source.stop().await;
    target.stop().await;
}

#[tokio::test]
async fn replicate_from_a_dead_or_empty_source_is_unavailable_naming_it() {
    let (empty_source, target) = (start(None).await, start(None).await);
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let (id, _) = chunk(2, 1000);
    let mut client = target.client().await;
    for source in [dead, empty_source.addr.clone()] {
        let request = ReplicateChunkRequest {
            id: wire(&id),
            source: source.clone(),
        };
        let status = tokio::time::timeout(DEADLINE, client.replicate_chunk(request))
            .await
            .expect("replication gives up in time")
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        assert!(status.message().contains(&source), "{}", status.message());
        assert!(
            status.message().contains(&id.to_string()),
            "{}",
            status.message()
        );
    }
    assert_eq!(has(&mut client, &[id]).await, [false]);
    empty_source.stop().await;
    target.stop().await;
}

#[tokio::test]
async fn info_reports_identity_usage_and_the_xor_digest() {
    let server = start(Some(100 << 20)).await;
    let mut client = server.client().await;
    let mut xor = [0u8; 32];
    let mut used = 0;
    for seed in 0..5 {
        let (id, bytes) = chunk(10 + seed, 1000 * (seed as usize + 1));
        client::write_chunk(
            &mut client,
            id,
            bytes.clone(),
            &tonic::metadata::MetadataMap::new(),
        )
        .await
        .unwrap();
        xor.iter_mut().zip(id.0).for_each(|(x, b)| *x ^= b);
        used += bytes.len() as u64;
    }
    let info = info(&mut client).await;
    assert_eq!(
        (info.id.as_str(), info.address.as_str(), info.zone.as_str()),
        ("cs-test", server.addr.as_str(), "z1")
    );
    assert_eq!(
        (info.chunk_count, info.used_bytes, info.capacity_bytes),
        (5, used, 100 << 20)
    );
    assert_eq!(info.inventory_digest[..], xor);
    assert!(info.scrub.is_some());
    server.stop().await;
}

#[tokio::test]
async fn scrub_finds_drops_and_counts_a_corrupt_chunk() {
    let scrub = ScrubConfig {
        rate_bytes_per_sec: 1 << 30,
        pause_between_passes: Duration::from_millis(20),
    };
    let server = start_with(None, scrub).await;
    let mut client = server.client().await;
    let chunks: Vec<_> = (0..3).map(|seed| chunk(20 + seed, 300_000)).collect();
    for (id, bytes) in &chunks {
        client::write_chunk(
            &mut client,
            *id,
            bytes.clone(),
            &tonic::metadata::MetadataMap::new(),
        )
        .await
        .unwrap();
    }
    assert!(server.store.corrupt_for_test(&chunks[1].0).unwrap());
    let addr = server.addr.clone();
    wait_until("scrub reports the corrupt chunk", || {
        let addr = addr.clone();
        async move {
            let mut client = client::connect(&addr, &Transport::plaintext())
                .await
                .unwrap();
            info(&mut client).await.scrub.unwrap().corrupt_found == 1
        }
    })
    .await;
    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();
    assert_eq!(has(&mut client, &ids).await, [true, false, true]);
    let report = info(&mut client).await;
    assert_eq!(report.chunk_count, 2);
    let scrub = report.scrub.unwrap();
    assert!(
        scrub.chunks_checked >= 3 && scrub.bytes_checked >= 600_000,
        "{scrub:?}"
    );
    assert_eq!(
        client::read_chunk(&mut client, ids[2], &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        chunks[2].1
    );
    server.stop().await;
}

/// Runs `run` on a fresh loopback listener; answers its address, a stop switch and the task.
async fn spawn_run(
    config: ChunkserverConfig,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, listener, async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

#[tokio::test]
async fn run_keeps_its_node_id_and_chunks_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChunkserverConfig::new(dir.path());
    config.capacity = Some(10 << 20);
    config.scrub_rate = 0;
    // This test is about the node's identity, not its gate (see tests/trust.rs).
    config.insecure = true;
    let (id, bytes) = chunk(30, 50_000);

    let (addr, stop, task) = spawn_run(config.clone()).await;
    let mut client = client::connect(&addr, &Transport::plaintext())
        .await
        .unwrap();
    let first = info(&mut client).await;
    assert!(first.id.starts_with("cs-"), "{}", first.id);
    assert_eq!(
        (first.address.as_str(), first.capacity_bytes),
        (addr.as_str(), 10 << 20)
    );
    client::write_chunk(
        &mut client,
        id,
        bytes.clone(),
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();
    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let (addr, stop, task) = spawn_run(config).await;
    let mut client = client::connect(&addr, &Transport::plaintext())
        .await
        .unwrap();
    let second = info(&mut client).await;
    assert_eq!(second.id, first.id);
    assert_eq!(
        second.inventory_digest,
        first
            .inventory_digest
            .iter()
            .zip(id.0)
            .map(|(a, b)| a ^ b)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        client::read_chunk(&mut client, id, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        bytes
    );
    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn run_refuses_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChunkserverConfig::new(dir.path());
    config.insecure = true;
    config.zone = String::new();
    let (_, _stop, task) = spawn_run(config).await;
    let err = tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("zone"), "{err}");
}

#[tokio::test]
async fn connecting_to_nothing_fails_within_the_connect_timeout() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let err = tokio::time::timeout(DEADLINE, client::connect(&dead, &Transport::plaintext()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&dead), "{err}");
}
