//! ReadChunk, HasChunks and ListChunks over a real socket.

mod common;

use bytes::{Bytes, BytesMut};
use common::{chunk, has, start, wire};
use redcloud_chunk::ChunkId;
use redcloud_chunk::client::{self, ChunkClient};
use redcloud_chunk::service::MAX_HAS_CHUNKS;
use redcloud_proto::FRAME_SIZE;
use redcloud_proto::chunk::{HasChunksRequest, ListChunksRequest, ReadChunkRequest};
use tonic::{Code, Status};

/// Reads `length` bytes at `offset` (0: to the end); answers the bytes, the chunk size from
/// the first frame and the number of frames.
async fn read_range(
    client: &mut ChunkClient,
    id: &ChunkId,
    offset: u64,
    length: u64,
) -> Result<(Bytes, u64, usize), Status> {
    let request = ReadChunkRequest {
        id: wire(id),
        offset,
        length,
    };
    let mut frames = client.read_chunk(request).await?.into_inner();
    let (mut bytes, mut size, mut count) = (BytesMut::new(), None, 0);
    while let Some(frame) = frames.message().await? {
        size.get_or_insert(frame.chunk_size);
        assert!(frame.data.len() <= FRAME_SIZE);
        bytes.extend_from_slice(&frame.data);
        count += 1;
    }
    Ok((bytes.freeze(), size.expect("at least one frame"), count))
}

#[tokio::test]
async fn reads_stream_frames_and_serve_ranges() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, bytes) = chunk(1, 3 * FRAME_SIZE + 7);
    client::write_chunk(
        &mut client,
        id,
        bytes.clone(),
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();
    let size = bytes.len() as u64;

    let (whole, reported, frames) = read_range(&mut client, &id, 0, 0).await.unwrap();
    assert_eq!((whole, reported, frames), (bytes.clone(), size, 4));
    let (part, reported, _) = read_range(&mut client, &id, 1000, 300_000).await.unwrap();
    assert_eq!((part, reported), (bytes.slice(1000..301_000), size));
    let (tail, _, _) = read_range(&mut client, &id, size - 5, 0).await.unwrap();
    assert_eq!(tail, bytes.slice(bytes.len() - 5..));
    let (empty, reported, frames) = read_range(&mut client, &id, size, 0).await.unwrap();
    assert_eq!((empty.len(), reported, frames), (0, size, 1));

    for (offset, length) in [(size + 1, 0), (0, size + 1), (size - 1, 2), (u64::MAX, 10)] {
        let status = read_range(&mut client, &id, offset, length)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{offset}+{length}");
        assert!(
            status.message().contains(&id.to_string()),
            "{}",
            status.message()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_chunks_are_not_found_and_malformed_ids_invalid() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (id, _) = chunk(2, 10);
    let status = client::read_chunk(&mut client, id, &tonic::metadata::MetadataMap::new())
        .await
        .unwrap_err();
    let client::ClientError::Status(status) = status else {
        panic!("{status}")
    };
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains(&id.to_string()),
        "{}",
        status.message()
    );

    let short = Bytes::from(vec![1u8; 31]);
    let request = ReadChunkRequest {
        id: short.clone(),
        offset: 0,
        length: 0,
    };
    assert_eq!(
        client.read_chunk(request).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let request = HasChunksRequest {
        ids: vec![wire(&id), short.clone()],
        touch: false,
    };
    let status = client.has_chunks(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("ids[1]"), "{}", status.message());
    let request = ListChunksRequest {
        after: short,
        page_size: 10,
        limit: 0,
    };
    assert_eq!(
        client.list_chunks(request).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test]
async fn has_chunks_answers_in_order_and_bounds_the_batch() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (a, a_bytes) = chunk(3, 10);
    let (b, _) = chunk(4, 10);
    client::write_chunk(
        &mut client,
        a,
        a_bytes,
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        has(&mut client, &[b, a, b, a]).await,
        [false, true, false, true]
    );
    assert!(has(&mut client, &[]).await.is_empty());
    let too_many = HasChunksRequest {
        ids: vec![wire(&a); MAX_HAS_CHUNKS + 1],
        touch: false,
    };
    let status = client.has_chunks(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("limit"), "{}", status.message());
    let at_limit = HasChunksRequest {
        ids: vec![wire(&a); MAX_HAS_CHUNKS],
        touch: false,
    };
    assert_eq!(
        client
            .has_chunks(at_limit)
            .await
            .unwrap()
            .into_inner()
            .present
            .len(),
        MAX_HAS_CHUNKS
    );
    server.stop().await;
}

/// Lists with the given request; answers the pages.
async fn list(client: &mut ChunkClient, request: ListChunksRequest) -> Vec<Vec<(ChunkId, u64)>> {
    let mut stream = client.list_chunks(request).await.unwrap().into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        let entries = page
            .chunks
            .iter()
            .map(|e| (ChunkId::from_slice(&e.id).unwrap(), e.size));
        pages.push(entries.collect());
    }
    pages
}

#[tokio::test]
async fn list_chunks_pages_through_the_inventory_in_id_order() {
    let server = start(None).await;
    let mut client = server.client().await;
    let mut expected = Vec::new();
    for seed in 0..25 {
        let (id, bytes) = chunk(100 + seed, 10 + seed as usize);
        client::write_chunk(
            &mut client,
            id,
            bytes.clone(),
            &tonic::metadata::MetadataMap::new(),
        )
        .await
        .unwrap();
        expected.push((id, bytes.len() as u64));
    }
    expected.sort();

    let pages = list(
        &mut client,
        ListChunksRequest {
            after: Bytes::new(),
            page_size: 10,
            limit: 0,
        },
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    assert_eq!(pages.concat(), expected);

    let after = wire(&expected[4].0);
    let pages = list(
        &mut client,
        ListChunksRequest {
            after,
            page_size: 4,
            limit: 7,
        },
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3]);
    assert_eq!(pages.concat(), expected[5..12]);

    let after = wire(&expected[24].0);
    assert!(
        list(
            &mut client,
            ListChunksRequest {
                after,
                page_size: 0,
                limit: 0
            }
        )
        .await
        .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_chunk_reads_as_data_loss_and_is_then_gone() {
    let server = start(None).await;
    let mut client = server.client().await;
    let (good, good_bytes) = chunk(5, 200_000);
    let (bad, bad_bytes) = chunk(6, 200_000);
    client::write_chunk(
        &mut client,
        good,
        good_bytes.clone(),
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();
    client::write_chunk(
        &mut client,
        bad,
        bad_bytes.clone(),
        &tonic::metadata::MetadataMap::new(),
    )
    .await
    .unwrap();
    assert!(server.store.corrupt_for_test(&bad).unwrap());

    let status = read_range(&mut client, &bad, 0, 10).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(
        status.message().contains(&bad.to_string()),
        "{}",
        status.message()
    );
    assert_eq!(has(&mut client, &[good, bad]).await, [true, false]);
    assert_eq!(
        client::read_chunk(&mut client, good, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        good_bytes
    );
    // A good copy can be written again, as repair would.
    assert!(
        !client::write_chunk(
            &mut client,
            bad,
            bad_bytes.clone(),
            &tonic::metadata::MetadataMap::new()
        )
        .await
        .unwrap()
    );
    assert_eq!(
        client::read_chunk(&mut client, bad, &tonic::metadata::MetadataMap::new())
            .await
            .unwrap(),
        bad_bytes
    );
    server.stop().await;
}
