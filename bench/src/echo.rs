//! The tonic reference of `chunk_path`: the chunk service's own protocol served from memory
//! with no hashing and no disk, so a write or read through it costs only the client, tonic,
//! HTTP/2 and loopback TCP, with the same message sizes and window settings as a chunkserver.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use parking_lot::Mutex;
use redcloud_proto::chunk::chunk_service_server::{ChunkService, ChunkServiceServer};
use redcloud_proto::chunk::write_chunk_request::Msg;
use redcloud_proto::chunk::{
    DeleteChunkRequest, DeleteChunkResponse, HasChunksRequest, HasChunksResponse, InfoRequest,
    InfoResponse, ListChunksRequest, ListChunksResponse, ReadChunkRequest, ReadChunkResponse,
    ReplicateChunkRequest, ReplicateChunkResponse, ReplicateChunksRequest, ReplicateChunksResponse,
    WriteChunkRequest, WriteChunkResponse, WriteChunksRequest, WriteChunksResponse,
};
use redcloud_proto::{FRAME_SIZE, MAX_MESSAGE_SIZE};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

type Frames<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Keeps written chunks in memory by id; reads stream them back.
#[derive(Default, Clone)]
pub struct Echo {
    chunks: Arc<Mutex<HashMap<Bytes, Bytes>>>,
}

#[tonic::async_trait]
impl ChunkService for Echo {
    async fn write_chunk(
        &self,
        request: Request<Streaming<WriteChunkRequest>>,
    ) -> Result<Response<WriteChunkResponse>, Status> {
        let mut stream = request.into_inner();
        let mut id = Bytes::new();
        let mut data = BytesMut::new();
        while let Some(m) = stream.message().await? {
            match m.msg {
                Some(Msg::Header(h)) => {
                    id = h.id;
                    data.reserve(h.size as usize);
                }
                Some(Msg::Data(d)) => data.extend_from_slice(&d),
                None => {}
            }
        }
        self.chunks.lock().insert(id, data.freeze());
        Ok(Response::new(WriteChunkResponse {
            already_present: false,
        }))
    }

    type ReadChunkStream = Frames<ReadChunkResponse>;

    async fn read_chunk(
        &self,
        request: Request<ReadChunkRequest>,
    ) -> Result<Response<Self::ReadChunkStream>, Status> {
        let id = request.into_inner().id;
        let data = self
            .chunks
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found("no such chunk"))?;
        let size = data.len() as u64;
        let frames = data.len().div_ceil(FRAME_SIZE).max(1);
        let stream = futures::stream::iter((0..frames).map(move |i| {
            let start = i * FRAME_SIZE;
            Ok(ReadChunkResponse {
                data: data.slice(start..(start + FRAME_SIZE).min(data.len())),
                chunk_size: if i == 0 { size } else { 0 },
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write_chunks(
        &self,
        _request: Request<WriteChunksRequest>,
    ) -> Result<Response<WriteChunksResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn has_chunks(
        &self,
        _request: Request<HasChunksRequest>,
    ) -> Result<Response<HasChunksResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn delete_chunk(
        &self,
        _request: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    type ListChunksStream = Frames<ListChunksResponse>;

    async fn list_chunks(
        &self,
        _request: Request<ListChunksRequest>,
    ) -> Result<Response<Self::ListChunksStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn replicate_chunk(
        &self,
        _request: Request<ReplicateChunkRequest>,
    ) -> Result<Response<ReplicateChunkResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn replicate_chunks(
        &self,
        _request: Request<ReplicateChunksRequest>,
    ) -> Result<Response<ReplicateChunksResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

/// Serves an [`Echo`] on `listener` with the chunkserver's window and message settings until
/// the returned task is aborted.
pub fn serve(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let service = ChunkServiceServer::new(Echo::default())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    // TLS like a chunkserver's, so the reference pays what the chunkserver pays on the wire.
    let identity = redcloud_proto::tls::ClusterCa::from_secret(&crate::cluster::bench_secret())
        .and_then(|ca| ca.issue())
        .expect("the bench CA issues certificates");
    tokio::spawn(async move {
        let incoming = redcloud_proto::transport::incoming(listener);
        let Ok(mut server) = redcloud_proto::transport::server(Some(&identity)) else {
            return;
        };
        let _ = server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    })
}
