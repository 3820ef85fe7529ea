//! The crate's one error type.

use std::time::Duration;

use libp2p::PeerId;

/// Everything that can go wrong talking to the network layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field is invalid; the message names the field.
    #[error("invalid p2p config: {0}")]
    Config(String),
    /// A bootstrap entry could not be parsed.
    #[error("invalid bootstrap entry {entry:?}: {reason}")]
    Bootstrap { entry: String, reason: String },
    /// Reading or writing the node key failed.
    #[error("node key {path}: {reason}")]
    Keypair { path: String, reason: String },
    /// Building the transport or binding a listener failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A message or request exceeds its size limit. Gossip callers fall back to sync.
    #[error("payload of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// No connected peer is subscribed to the cluster topic. Harmless: sync catches up.
    #[error("no peer is subscribed to the cluster topic")]
    NoPeers,
    /// Every subscribed peer's send queue is full (they are slow); the message was not sent.
    #[error("send queues of all {0} subscribed peers are full")]
    InsufficientPeers(usize),
    /// These exact bytes were published recently (message ids are content hashes).
    #[error("identical message already published")]
    Duplicate,
    /// Gossipsub refused to publish for another reason (signing, transform).
    #[error("publish failed: {0}")]
    Publish(String),
    /// The request got no response within the deadline.
    #[error("request to {peer} timed out after {after:?}")]
    Timeout { peer: PeerId, after: Duration },
    /// The request failed: dial failure, connection closed, remote refused or reset the stream
    /// (for example because the request exceeded the remote's size limit).
    #[error("request to {peer} failed: {reason}")]
    RequestFailed { peer: PeerId, reason: String },
    /// The inbound request this reply belongs to has already timed out or its connection closed.
    #[error("the requester is gone (request timed out or connection closed)")]
    ReplyClosed,
    /// Dialing an address failed immediately.
    #[error("dial {addr}: {reason}")]
    Dial { addr: String, reason: String },
    /// The event loop has stopped (after [`crate::Handle::shutdown`] or a panic).
    #[error("the p2p event loop has stopped")]
    Shutdown,
}
