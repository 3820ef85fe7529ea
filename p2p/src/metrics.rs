//! Counters of the network layer, updated by the event loop and read through
//! [`crate::Handle::metrics`]. All are monotonic since start.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Live counters (atomics shared between the event loop and handles).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Metrics`].
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

metrics! {
    /// Gossip messages this node published.
    gossip_published,
    /// Payload bytes of gossip messages this node published.
    gossip_published_bytes,
    /// Gossip messages received from peers (before validation).
    gossip_received,
    /// Payload bytes of gossip messages received.
    gossip_received_bytes,
    /// Received gossip messages the application rejected.
    gossip_rejected,
    /// Requests sent to peers.
    requests_sent,
    /// Payload bytes of requests sent.
    request_bytes_sent,
    /// Responses received to our requests.
    responses_received,
    /// Our requests that failed (timeout, dial failure, connection closed, refused).
    requests_failed,
    /// Requests received from peers.
    requests_received,
    /// Payload bytes of requests received.
    request_bytes_received,
    /// Accepted inbound requests that then failed (no response in time, connection closed,
    /// reply dropped).
    inbound_failures,
    /// Payloads refused for size: our publishes/requests/responses and peers' oversize frames.
    rejected_oversize,
    /// Inbound connections that failed to upgrade (garbage on the wire, wrong protocol).
    rejected_malformed,
    /// Gossip events dropped because the application's event queue was full.
    dropped_gossip,
    /// Inbound requests refused because the event queue was full (the requester sees an error).
    dropped_requests,
    /// Dials started (to known peers and bootstrap addresses).
    dials,
    /// Dials that failed.
    dial_failures,
    /// Connections established.
    connections_opened,
    /// Connections closed.
    connections_closed,
    /// Peers disconnected because they belong to another cluster.
    foreign_peers,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    add(counter, 1);
}
