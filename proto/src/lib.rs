//! The redcloud wire protocol.
//!
//! `chunk` is the chunkserver's `ChunkService`; `controller` holds the client API
//! (`ControllerService`) and the chunkserver registry (`RegistryService`). The `.proto` files
//! under `proto/` are the source of truth; this crate only adds the shared size limits, so
//! both ends of every stream agree on them.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod chunk {
    tonic::include_proto!("redcloud.chunk.v1");
}

pub mod controller {
    tonic::include_proto!("redcloud.controller.v1");
}

pub mod local;
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
