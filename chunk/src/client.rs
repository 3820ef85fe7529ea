//! Talking to a chunkserver: connect with the shared limits, and write or read whole chunks.
//!
//! The CLI (uploads and downloads), the controller (repair) and the chunkserver itself
//! (ReplicateChunk) all use these helpers, so every client streams with the same frame size,
//! message limits and HTTP/2 windows as the server.

use bytes::{Bytes, BytesMut};
use redcloud_proto::chunk::chunk_service_client::ChunkServiceClient;
use redcloud_proto::chunk::write_chunk_request::Msg;
use redcloud_proto::chunk::{
    ChunkWrite, ReadChunkRequest, WriteChunkRequest, WriteChunksRequest, WriteHeader,
};
use redcloud_proto::transport::Transport;
use redcloud_proto::{FRAME_SIZE, MAX_CHUNK_SIZE, MAX_MESSAGE_SIZE};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use crate::id::ChunkId;

/// A `ChunkService` client over one HTTP/2 connection.
pub type ChunkClient = ChunkServiceClient<Channel>;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The chunkserver could not be reached.
    #[error("cannot reach chunkserver {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What went wrong.
        #[source]
        source: tonic::transport::Error,
    },
    /// The chunkserver answered with an error status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The chunkserver sent bytes that do not hash to the chunk id.
    #[error("chunk {expected}: received bytes hash to {actual}")]
    HashMismatch {
        /// The chunk asked for.
        expected: ChunkId,
        /// The hash of what arrived.
        actual: ChunkId,
    },
    /// The chunkserver broke the stream protocol (sizes that do not add up).
    #[error("chunk {id}: {message}")]
    Protocol {
        /// The chunk being read.
        id: ChunkId,
        /// What was wrong.
        message: String,
    },
}

/// An endpoint for `addr` (`host:port` or a URI) over `transport`, with the shared limits.
pub fn endpoint(addr: &str, transport: &Transport) -> Result<Endpoint, tonic::transport::Error> {
    transport.endpoint(addr)
}

/// Wraps a channel in a client with the shared message size limits.
pub fn with_limits(channel: Channel) -> ChunkClient {
    ChunkServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Connects to the chunkserver at `addr` (`host:port` or a URI) over `transport`.
pub async fn connect(addr: &str, transport: &Transport) -> Result<ChunkClient, ClientError> {
    let connect_error = |source| ClientError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let channel = endpoint(addr, transport)
        .map_err(connect_error)?
        .connect()
        .await
        .map_err(connect_error)?;
    Ok(with_limits(channel))
}

/// The request stream of a WriteChunk call: the header, then frames of at most `FRAME_SIZE`.
pub fn write_requests(id: ChunkId, bytes: Bytes) -> impl Iterator<Item = WriteChunkRequest> {
    let header = Msg::Header(WriteHeader {
        id: Bytes::copy_from_slice(id.as_bytes()),
        size: bytes.len() as u64,
    });
    let frames = (0..bytes.len())
        .step_by(FRAME_SIZE)
        .map(move |start| Msg::Data(bytes.slice(start..(start + FRAME_SIZE).min(bytes.len()))));
    std::iter::once(header)
        .chain(frames)
        .map(|msg| WriteChunkRequest { msg: Some(msg) })
}

/// Writes one chunk; answers whether it was already stored. `credential` is the metadata the
/// chunkserver checks: a write grant from PlanUpload, or a node's credential (see
/// `redcloud_proto::trust`).
pub async fn write_chunk(
    client: &mut ChunkClient,
    id: ChunkId,
    bytes: Bytes,
    credential: &MetadataMap,
) -> Result<bool, ClientError> {
    let mut request = tonic::Request::new(tokio_stream::iter(write_requests(id, bytes)));
    *request.metadata_mut() = credential.clone();
    let response = client.write_chunk(request).await?;
    Ok(response.into_inner().already_present)
}

/// Writes many small chunks in one WriteChunks call, each with its write grant (empty when
/// `credential` is a node's): answers, per chunk, whether it was already stored. The server
/// takes at most `MAX_BATCH_CHUNKS` chunks and `MAX_CHUNK_SIZE` bytes per call.
pub async fn write_chunks(
    client: &mut ChunkClient,
    chunks: Vec<(ChunkId, Bytes, String)>,
    credential: &MetadataMap,
) -> Result<Vec<bool>, ClientError> {
    let count = chunks.len();
    let mut request = tonic::Request::new(WriteChunksRequest {
        chunks: chunks
            .into_iter()
            .map(|(id, data, grant)| ChunkWrite {
                id: Bytes::copy_from_slice(id.as_bytes()),
                data,
                grant,
            })
            .collect(),
    });
    *request.metadata_mut() = credential.clone();
    let present = client
        .write_chunks(request)
        .await?
        .into_inner()
        .already_present;
    if present.len() != count {
        return Err(ClientError::Status(tonic::Status::internal(format!(
            "WriteChunks answered {} of {count} chunks",
            present.len()
        ))));
    }
    Ok(present)
}

/// Reads a whole chunk and checks that its bytes hash to `id`. `credential`: a read grant from
/// Resolve, or a node's credential.
pub async fn read_chunk(
    client: &mut ChunkClient,
    id: ChunkId,
    credential: &MetadataMap,
) -> Result<Bytes, ClientError> {
    let protocol = |message: String| ClientError::Protocol { id, message };
    let mut request = tonic::Request::new(ReadChunkRequest {
        id: Bytes::copy_from_slice(id.as_bytes()),
        offset: 0,
        length: 0,
    });
    *request.metadata_mut() = credential.clone();
    let mut frames = client.read_chunk(request).await?.into_inner();
    let mut size = None;
    let mut bytes = BytesMut::new();
    while let Some(frame) = frames.message().await? {
        let expected = match size {
            Some(size) => size,
            None => {
                let declared = frame.chunk_size;
                if declared > MAX_CHUNK_SIZE as u64 {
                    return Err(protocol(format!(
                        "declared size {declared} exceeds the limit"
                    )));
                }
                // Bounded by MAX_CHUNK_SIZE just above.
                bytes.reserve(declared as usize);
                *size.insert(declared)
            }
        };
        if (bytes.len() + frame.data.len()) as u64 > expected {
            return Err(protocol(format!(
                "server sent more than the {expected} bytes declared"
            )));
        }
        bytes.extend_from_slice(&frame.data);
    }
    let expected = size.ok_or_else(|| protocol("server sent no frames".to_owned()))?;
    if bytes.len() as u64 != expected {
        let got = bytes.len();
        return Err(protocol(format!(
            "stream ended after {got} of {expected} bytes"
        )));
    }
    let actual = ChunkId::of(&bytes);
    if actual != id {
        return Err(ClientError::HashMismatch {
            expected: id,
            actual,
        });
    }
    Ok(bytes.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_are_a_header_then_frames_that_add_up() {
        let bytes = Bytes::from(vec![7u8; 2 * FRAME_SIZE + 5]);
        let id = ChunkId::of(&bytes);
        let requests: Vec<_> = write_requests(id, bytes.clone()).collect();
        assert_eq!(requests.len(), 4);
        let Some(Msg::Header(header)) = &requests[0].msg else {
            panic!("first message is not a header")
        };
        assert_eq!(
            (&header.id[..], header.size),
            (&id.0[..], bytes.len() as u64)
        );
        let mut joined = Vec::new();
        for request in &requests[1..] {
            let Some(Msg::Data(data)) = &request.msg else {
                panic!("data expected")
            };
            assert!(data.len() <= FRAME_SIZE);
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, bytes);
    }

    #[test]
    fn an_empty_chunk_is_just_a_header() {
        let requests: Vec<_> = write_requests(ChunkId::of(b""), Bytes::new()).collect();
        assert_eq!(requests.len(), 1);
    }
}
