//! WriteChunk and DeleteChunk over a real socket: what gets stored, and every way a write is
//! refused with nothing stored.

mod common;

use bytes::Bytes;
use std::time::Duration;

use common::{chunk, has, lineage_ids, start, wait_until, wire};
use redcloud_chunk::ChunkId;
use redcloud_chunk::client::{self, write_requests};
use redcloud_chunk::metrics::{Rejection, get};
use redcloud_proto::MAX_CHUNK_SIZE;
use redcloud_proto::chunk::write_chunk_request::Msg;
use redcloud_proto::chunk::{DeleteChunkRequest, WriteChunkRequest, WriteHeader};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn header(id: Bytes, size: u64) -> WriteChunkRequest {
    WriteChunkRequest {
        msg: Some(Msg::Header(WriteHeader { id, size })),
    }
}

fn data(bytes: Bytes) -> WriteChunkRequest {
    WriteChunkRequest {
        msg: Some(Msg::Data(bytes)),
    }
}

#[tokio::test]
async fn a_chunk_of_exactly_8_mib_round_trips() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(1, MAX_CHUNK_SIZE);
    assert!(
        !client::write_chunk(
            &mut client,
            id,
            bytes.clone(),
            &tonic::metadata::MetadataMap::new()
        )
        .await
        .unwrap()
    );
    assert_eq!(
        client::read_chunk(&mut client, id, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        bytes
    );
    server.stop().await;
}

#[tokio::test]
async fn writing_a_stored_chunk_again_reports_already_present() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(2, 100_000);
    assert!(
        !client::write_chunk(
            &mut client,
            id,
            bytes.clone(),
            &tonic::metadata::MetadataMap::new()
        )
        .await
        .unwrap()
    );
    assert!(
        client::write_chunk(&mut client, id, bytes, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap()
    );
    assert_eq!(server.store.stats().chunk_count, 1);
    server.stop().await;
}

#[tokio::test]
async fn bytes_that_do_not_match_the_id_are_refused_and_not_stored() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (claimed, _) = chunk(3, 5000);
    let (actual, sent) = chunk(4, 5000);
    let requests = tokio_stream::iter([header(wire(&claimed), 5000), data(sent)]);
    let status = client.write_chunk(requests).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&claimed.to_string()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&actual.to_string()),
        "{}",
        status.message()
    );
    assert_eq!(has(&mut client, &[claimed, actual]).await, [false, false]);
    assert_eq!(server.metrics.rejected(Rejection::HashMismatch), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_id_is_an_invalid_argument() {
    let server = start(None).await;
    let mut client = server.client().await;
    let requests = tokio_stream::iter([
        header(Bytes::from(vec![0u8; 31]), 1),
        data(Bytes::from_static(b"x")),
    ]);
    let status = client.write_chunk(requests).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("31 bytes"),
        "{}",
        status.message()
    );
    let status = client
        .delete_chunk(DeleteChunkRequest {
            id: Bytes::from(vec![0u8; 31]),
            min_age_ms: 0,
            lineage: lineage_ids(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn the_first_message_must_be_the_header() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(5, 10);
    let requests = tokio_stream::iter([data(bytes.clone()), header(wire(&id), 10)]);
    let status = client.write_chunk(requests).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("header"), "{}", status.message());
    let requests = tokio_stream::iter([header(wire(&id), 10), header(wire(&id), 10), data(bytes)]);
    assert_eq!(
        client.write_chunk(requests).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(has(&mut client, &[id]).await, [false]);
    server.stop().await;
}

#[tokio::test]
async fn a_declared_size_over_8_mib_is_refused_before_any_data() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, _) = chunk(6, 10);
    let requests = tokio_stream::iter([header(wire(&id), MAX_CHUNK_SIZE as u64 + 1)]);
    let status = client.write_chunk(requests).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&id.to_string()),
        "{}",
        status.message()
    );
    assert_eq!(server.metrics.rejected(Rejection::TooLarge), 1);
    server.stop().await;
}

#[tokio::test]
async fn more_bytes_than_declared_are_refused_and_nothing_is_stored() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(7, 1000);
    // The declared size is right for the id, but an extra frame follows.
    let requests = write_requests(id, bytes).chain([data(Bytes::from_static(b"extra"))]);
    let status = client
        .write_chunk(tokio_stream::iter(requests))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("more bytes"),
        "{}",
        status.message()
    );
    assert_eq!(has(&mut client, &[id]).await, [false]);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_that_ends_early_stores_nothing() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(8, 1 << 20);
    // Header and the first frame only: the client closes the stream cleanly but early.
    let requests: Vec<_> = write_requests(id, bytes.clone()).take(2).collect();
    let status = client
        .write_chunk(tokio_stream::iter(requests))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("ended after"),
        "{}",
        status.message()
    );
    assert_eq!(has(&mut client, &[id]).await, [false]);
    assert!(
        !client::write_chunk(&mut client, id, bytes, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        "was stored before"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_write_leaves_nothing_stored() {
    let server = start(None).await;
    let (id, bytes) = chunk(9, 1 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for request in write_requests(id, bytes.clone()).take(2) {
        tx.send(request).await.unwrap();
    }
    let mut client = server.client().await;
    let call = tokio::spawn(async move { client.write_chunk(ReceiverStream::new(rx)).await });
    let metrics = server.metrics.clone();
    wait_until("the server receives the write", || {
        let metrics = metrics.clone();
        async move { get(&metrics.writes_in_progress) == 1 }
    })
    .await;
    // Dropping the call resets the HTTP/2 stream, as a crashed client would.
    call.abort();
    wait_until("the server gives up on the write", || {
        let metrics = metrics.clone();
        async move {
            metrics.rejected(Rejection::Truncated) == 1 && get(&metrics.writes_in_progress) == 0
        }
    })
    .await;
    drop(tx);
    let mut client = server.client().await;
    assert_eq!(has(&mut client, &[id]).await, [false]);
    assert!(
        !client::write_chunk(&mut client, id, bytes, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        "was stored before"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_full_store_refuses_with_resource_exhausted_and_stores_nothing() {
    let server = start(Some(1 << 20)).await;
    let mut client = server.client().await;
    let (fits, fits_bytes) = chunk(10, 700 << 10);
    let (too_much, too_much_bytes) = chunk(11, 700 << 10);
    client::write_chunk(
        &mut client,
        fits,
        fits_bytes,
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();
    let err = client::write_chunk(
        &mut client,
        too_much,
        too_much_bytes,
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap_err();
    let client::ClientError::Status(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains(&too_much.to_string()),
        "{}",
        status.message()
    );
    assert_eq!(has(&mut client, &[fits, too_much]).await, [true, false]);
    server.stop().await;
}

#[tokio::test]
async fn delete_removes_a_chunk_unless_it_is_younger_than_asked() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(12, 1000);
    client::write_chunk(&mut client, id, bytes, &tonic::metadata::MetadataMap::new())
        .await
        .unwrap();
    let hour = 3_600_000;
    let kept = client
        .delete_chunk(DeleteChunkRequest {
            id: wire(&id),
            min_age_ms: hour,
            lineage: lineage_ids(),
        })
        .await;
    let kept = kept.unwrap().into_inner();
    assert!(kept.existed && kept.kept_young);
    assert_eq!(has(&mut client, &[id]).await, [true]);
    let gone = client
        .delete_chunk(DeleteChunkRequest {
            id: wire(&id),
            min_age_ms: 0,
            lineage: lineage_ids(),
        })
        .await;
    let gone = gone.unwrap().into_inner();
    assert!(gone.existed && !gone.kept_young);
    assert_eq!(has(&mut client, &[id]).await, [false]);
    let again = client
        .delete_chunk(DeleteChunkRequest {
            id: wire(&id),
            min_age_ms: 0,
            lineage: lineage_ids(),
        })
        .await;
    assert!(!again.unwrap().into_inner().existed);
    server.stop().await;
}

#[tokio::test]
async fn a_delete_from_a_controller_that_has_not_seen_this_servers_cluster_is_refused() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(13, 1000);
    client::write_chunk(&mut client, id, bytes, &tonic::metadata::MetadataMap::new())
        .await
        .unwrap();
    // A new or wiped controller knows only its own store; one that merged with the cluster
    // knows ours too.
    for lineage in [vec![], vec!["fresh".to_owned()]] {
        let status = client
            .delete_chunk(DeleteChunkRequest {
                id: wire(&id),
                min_age_ms: 0,
                lineage,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("store0"), "{}", status.message());
        assert_eq!(has(&mut client, &[id]).await, [true], "nothing deleted");
    }
    let mut merged = lineage_ids();
    merged.push("fresh".into());
    let gone = client
        .delete_chunk(DeleteChunkRequest {
            id: wire(&id),
            min_age_ms: 0,
            lineage: merged,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.existed);
    assert_eq!(has(&mut client, &[id]).await, [false]);
    server.stop().await;
}

#[tokio::test]
async fn has_chunks_with_touch_keeps_a_chunk_from_an_old_write_young() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(14, 1000);
    client::write_chunk(&mut client, id, bytes, &tonic::metadata::MetadataMap::new())
        .await
        .unwrap();
    let written = server.store.info(&id).unwrap().unwrap().stored_at_ms;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let absent = ChunkId::of(b"absent");
    let present = client
        .has_chunks(redcloud_proto::chunk::HasChunksRequest {
            ids: vec![wire(&id), wire(&absent)],
            touch: true,
        })
        .await
        .unwrap()
        .into_inner()
        .present;
    assert_eq!(present, [true, false]);
    let touched = server.store.info(&id).unwrap().unwrap().stored_at_ms;
    assert!(touched > written, "the touch refreshed the stored-at time");
    assert!(
        !server.store.contains(&absent).unwrap(),
        "touch stores nothing"
    );
    server.stop().await;
}
