//! The redcloud chunkserver: stores immutable, content-addressed chunks and serves them over
//! gRPC. It knows nothing about files; controllers and clients decide what chunks mean.
//!
//! # Data flow
//!
//! - **Write**: a client streams a header (id, size) and data frames to
//!   [`service::ChunkServiceImpl`], which buffers at most the declared size, then hands the
//!   bytes to a [`store::ChunkStore`] on the blocking pool. The store checks that the bytes hash
//!   to the id (BLAKE3, [`id::ChunkId`]) and writes chunk and info in one synced batch
//!   ([`store::RocksStore`]), so an acknowledged chunk survives a crash. Anything short of that
//!   stores nothing.
//! - **Read**: the store re-hashes the chunk before returning it; a copy that fails is deleted
//!   and the client gets DATA_LOSS. The service streams the requested range in frames.
//! - **Replicate**: on a controller's order the server pulls chunks from another chunkserver
//!   with the [`client`] helpers over a kept connection ([`pool`]), verifies them and stores
//!   them like writes: one chunk per ReplicateChunk, or many per ReplicateChunks, read a few
//!   at a time and stored in groups with one synced write each. Pulls have their own buffer
//!   budget, apart from the one reads and writes use.
//! - **Scrub**: [`scrub::ScrubWorker`] re-reads every chunk at a bounded byte rate, so
//!   bit rot is found (and the bad copy dropped) before anyone needs the chunk.
//! - **Reclaim**: [`reclaim::ReclaimWorker`] asks the store now and then to give back the
//!   space of deleted chunks; the RocksDB store rewrites its live blobs only once enough
//!   garbage has piled up, so steady writes are not rewritten by compactions.
//! - **Report**: `Info` gives capacity, usage, chunk count, the inventory digest (XOR of all
//!   ids) and scrub counters; [`metrics::Metrics`] counts the rest.
//! - **Heartbeat**: [`store::TrackedStore`] wraps the store and records every chunk added or
//!   removed in a bounded [`inventory_log`]; [`heartbeat::HeartbeatWorker`] sends each
//!   controller, every couple of seconds, the totals, the digest and the changes since the
//!   report that controller last acknowledged, and learns the other controllers from the
//!   answers.
//!
//! [`error`] is the one place store errors become gRPC statuses. [`run`] is the entry point
//! of `redcloud chunkserver`: it takes an already-bound listener and a shutdown future.

pub mod client;
pub mod error;
pub mod heartbeat;
pub mod id;
pub mod inventory_log;
pub mod lineage;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod reclaim;
pub mod scrub;
pub mod server;
pub mod service;
pub mod store;

pub use id::ChunkId;
pub use node::ChunkserverConfig;
pub use server::{Chunkserver, run};
pub use store::{
    ChunkStore, Deletion, MemoryStore, PutOutcome, RocksOptions, RocksStore, StoreError,
    TrackedStore,
};
