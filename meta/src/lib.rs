//! The controller's metadata core: every file version, tag, user and cluster setting, held in
//! Automerge documents that replicate between controllers with no leader.
//!
//! Data flow: the service calls a [`store::MetaStore`] operation (say
//! [`store::MetaStore::add_version`], or `add_versions` for a batch, which puts the files of
//! one document in one change); the store validates the input, ticks its hybrid logical
//! clock ([`hlc`]), writes a flat record into a document ([`document`]), persists the change
//! ([`storage`]) and returns a [`store::Commit`] for the replication layer to push. Peers
//! apply commits and run anti-entropy sync through [`replica`]. Queries read the documents
//! and pick each file's head among concurrent candidates with [`resolve`] (version vectors,
//! [`vv`], then HLC, then origin).
//!
//! The store is pure with respect to time: every call that needs the wall clock takes
//! `wall_ms`, so tests control time.
//!
//! Around the core, the running controller ([`node`]), made of parts that each own their
//! state ([`service::Components`]):
//! - [`handle`]: one thread owns the store; everything else sends it jobs through a
//!   [`handle::MetaHandle`], and every commit a job makes goes to replication. Its documents
//!   are saved (compacted) on a worker thread from a clone (`compactor`), so a large save
//!   never stalls the jobs queued behind it.
//! - [`replication`]: gossip push of each commit and per-peer anti-entropy over the p2p crate;
//!   the anti-entropy protocol itself is IO-free ([`replication::session`]). [`peers`] holds
//!   who is connected and in sync.
//! - [`service`]: the gRPC client API (tokens from [`auth`]), the chunkserver registry API,
//!   which feeds the soft-state [`directory`] (liveness, usage, who holds which chunk, kept by
//!   [`registry`]), and the admin API.
//! - [`repair`] plans ([`repair::plan`], with [`placement`] and [`rendezvous`] ownership),
//!   orders chunk copies in batches per target and source ([`repair::batch`]) and retires
//!   drained servers on proof ([`repair::drain`]);
//!   [`collector`] purges the trash and deletes orphans as [`gc`] plans them. Every
//!   destructive action first asks [`proof`] whether this controller's view is the cluster's.
//! - [`clock`] is each node's wall clock, corrected by the cluster's ([`skew`]); [`live`] the
//!   live chunk set stamped with its metadata digest; [`workers`] supervises every background
//!   task; [`http`] serves Prometheus [`metrics`].

pub mod auth;
pub mod chunk_client;
pub mod clock;
pub mod cluster;
pub mod collector;
mod compactor;
pub mod derived;
pub mod directory;
pub mod document;
pub mod error;
pub mod files;
pub mod gc;
pub mod handle;
pub mod hlc;
pub mod http;
pub mod live;
pub mod metrics;
pub mod names;
pub mod node;
pub mod peers;
pub mod placement;
pub mod proof;
pub mod record;
pub mod registry;
pub mod rendezvous;
pub mod repair;
pub mod replica;
pub mod replication;
pub mod resolve;
pub mod service;
pub mod skew;
pub mod storage;
pub mod store;

pub mod vv;
pub mod workers;

pub use cluster::{ChunkserverView, ControllerView, Login, ReplicationPolicy, Secret, Settings};
pub use document::DocId;
pub use error::MetaError;
pub use files::{ConflictView, FileView, NewFile, NewVersion, PurgeOutcome, VersionView};
pub use hlc::{Clock, ClockError, Timestamp};
pub use names::NodeId;
pub use record::{ChunkHash, ChunkRef, ChunkserverState};
pub use replica::ApplyOutcome;
pub use storage::{DocStorage, MemStorage, RocksStorage, StorageError};
pub use store::{Commit, Config, Limits, MetaStore, PasswordCost, Stats};
pub use vv::{Causality, VersionVector};
