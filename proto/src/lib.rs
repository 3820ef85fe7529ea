//! The redcloud wire protocol, and what every node shares about the wire.
//!
//! `chunk` is the chunkserver's `ChunkService`; `controller` holds the client API
//! (`ControllerService`), the chunkserver registry (`RegistryService`) and the operator API
//! (`AdminService`). The `.proto` files under `proto/` are the source of truth. Besides the
//! generated code this crate holds the limits both ends of every stream agree on, [`trust`]
//! (the cluster secret and the credentials and grants derived from it, checked by every
//! server), [`tls`] (the cluster CA derived from the secret and node certificates),
//! [`transport`] (every gRPC client and server is built there, with one set of limits) and
//! [`local`] (data directories created private and durably).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod chunk {
    tonic::include_proto!("redcloud.chunk.v1");
}

pub mod controller {
    tonic::include_proto!("redcloud.controller.v1");
}

pub mod local;
pub mod tls;
pub mod transport;
pub mod trust;

/// Largest chunk a chunkserver accepts.
pub const MAX_CHUNK_SIZE: usize = 8 << 20;

/// Bytes per data frame in `WriteChunk` and `ReadChunk` streams.
pub const FRAME_SIZE: usize = 256 << 10;

/// Limit on one decoded or encoded gRPC message: a frame plus headroom for framing, and
/// large enough for a page of inventory or a plan of many chunks.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// HTTP/2 stream and connection windows: tonic's defaults (64 KiB) cap a loopback stream at a
/// few hundred MiB/s; 8 MiB windows let one stream move several GiB/s.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// HTTP/2 and TCP keepalives on every gRPC server and client: a peer that vanished without
/// closing its connection (a dead host, a deleted network namespace) is noticed within about
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` instead of holding the connection open forever.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Requests a controller serves at once per client connection, and its deadline per request.
pub const CONTROLLER_CONCURRENCY_PER_CONNECTION: usize = 64;
pub const CONTROLLER_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
