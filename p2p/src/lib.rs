//! redcloud's controller-to-controller network layer, built on libp2p.
//!
//! This crate moves opaque bytes between the controllers of one cluster; it knows nothing about
//! Automerge or files. It offers two transports, matched to their guarantees (DESIGN §4):
//!
//! - **Gossip** (gossipsub, strict signing): best-effort, fast push of small messages to every
//!   controller. Nothing is forwarded until the application has validated it
//!   ([`Handle::report_validation`]). Messages over [`Config::max_gossip_size`] are refused with
//!   [`Error::TooLarge`] so the caller falls back to sync.
//! - **Requests** (request-response over a length-prefixed stream): reliable pairwise exchange
//!   used for the Automerge sync protocol, up to [`Config::max_request_size`] each way.
//!
//! Data flow: [`spawn`] builds the swarm and starts one event loop task that owns it
//! ([`network`]). The rest of the program holds a cloneable [`Handle`] that sends commands with
//! oneshot replies, and reads [`Event`]s from one bounded channel. Discovery combines bootstrap
//! entries ([`bootstrap`]: multiaddrs, `host:port`, DNS aliases resolving to many hosts), mDNS,
//! identify and a cluster-private Kademlia; every peer seen is remembered and redialled with
//! bounded exponential backoff ([`peers`]) unless blocked, so healed partitions reconnect by
//! themselves.
//!
//! Peers of another cluster (different [`Config::cluster`]) speak different protocol names and
//! gossip topics, and are disconnected as soon as identify reveals the mismatch.

pub mod behaviour;
pub mod bootstrap;
pub mod codec;
pub mod config;
mod error;
mod handle;
pub mod metrics;
pub mod network;
pub mod peers;

pub use config::{Config, load_or_create_keypair};
pub use error::Error;
pub use handle::{EVENT_CAPACITY, Event, Handle, ReplyToken, Validation};
pub use libp2p::{Multiaddr, PeerId, gossipsub::MessageId, identity::Keypair};
pub use metrics::MetricsSnapshot;
pub use network::spawn;
