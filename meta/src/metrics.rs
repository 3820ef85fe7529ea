//! The controller's metrics, rendered in the Prometheus text format on `/metrics`.
//! Each counter's doc line is its help text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Every counter of one controller.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: Counter,)*
        }

        impl Metrics {
            /// Prometheus text exposition of every counter, plus `gauges` given by the caller.
            pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
                let mut out = String::new();
                $(
                    let help = concat!($($doc),*).trim();
                    let _ = writeln!(out, "# HELP redcloud_{} {}", stringify!($name), help);
                    let _ = writeln!(out, "# TYPE redcloud_{} counter", stringify!($name));
                    let _ = writeln!(out, "redcloud_{} {}", stringify!($name), self.$name.get());
                )*
                for (name, help, value) in gauges {
                    let _ = writeln!(out, "# HELP redcloud_{name} {help}");
                    let _ = writeln!(out, "# TYPE redcloud_{name} gauge");
                    let _ = writeln!(out, "redcloud_{name} {value}");
                }
                out
            }
        }
    };
}

metrics! {
    /// Gossip messages published.
    gossip_sent,
    /// Bytes of gossip published.
    gossip_bytes_sent,
    /// Gossip messages received.
    gossip_received,
    /// Bytes of gossip received.
    gossip_bytes_received,
    /// Commits too large for gossip, announced by heads instead.
    gossip_announcements,
    /// Anti-entropy sessions started.
    sync_sessions,
    /// Sync protocol rounds (one request and its answer).
    sync_rounds,
    /// Requests sent to peers.
    requests_sent,
    /// Bytes of requests sent to peers.
    request_bytes_sent,
    /// Bytes of answers received from peers.
    response_bytes_received,
    /// Requests received from peers.
    requests_received,
    /// Bytes of requests received from peers.
    request_bytes_received,
    /// Malformed or refused messages from peers.
    rejected_messages,
    /// Client API calls.
    api_calls,
    /// Client API calls that failed.
    api_errors,
    /// Chunkserver heartbeats received.
    heartbeats,
    /// Full inventories pulled from chunkservers.
    inventory_pulls,
    /// Repair copies ordered.
    repair_started,
    /// Repair copies completed.
    repair_done,
    /// Repair copies failed.
    repair_failed,
    /// Chunk copies deleted by GC.
    gc_deleted,
    /// Deletes a chunkserver refused (a younger copy, or a lineage it does not cover).
    gc_refused,
    /// Commits acknowledged with fewer copies than the write quorum (fewer active servers).
    degraded_writes,
    /// Commits refused because chunks lacked their quorum of confirmed copies.
    commits_missing_copies,
    /// Draining chunkservers retired after their chunks were confirmed elsewhere.
    drains_completed,
    /// Trash purges skipped because this controller's clock is not trusted.
    purges_skipped_clock,
    /// Times this controller's HLC was pulled back after its wall clock was found wrong.
    clock_rebases,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.gossip_sent.add(3);
        let text = m.render(&[("files", "Live files.", 7.0)]);
        assert!(text.contains("# TYPE redcloud_gossip_sent counter\nredcloud_gossip_sent 3\n"));
        assert!(text.contains("# HELP redcloud_gossip_sent Gossip messages published."));
        assert!(text.contains("redcloud_files 7\n"));
    }
}
