//! The chunkserver's counters: updated by the service and the scrub and heartbeat workers,
//! read by `Info` and rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::StoreStats;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The bytes did not hash to the id.
    HashMismatch,
    /// Declared or sent size over the chunk limit, or more bytes than declared.
    TooLarge,
    /// Capacity exhausted or the disk is full.
    DiskFull,
    /// The stream ended or broke before all declared bytes arrived.
    Truncated,
    /// Malformed request: bad id, missing or repeated header.
    Malformed,
    /// No node credential or valid grant.
    Unauthenticated,
}

impl Rejection {
    const ALL: [Rejection; 6] = [
        Self::HashMismatch,
        Self::TooLarge,
        Self::DiskFull,
        Self::Truncated,
        Self::Malformed,
        Self::Unauthenticated,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::HashMismatch => "hash_mismatch",
            Self::TooLarge => "too_large",
            Self::DiskFull => "disk_full",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Counters since the process started: all monotonic except the gauge `writes_in_progress`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Chunks newly stored by WriteChunk or ReplicateChunk.
    pub chunks_written: AtomicU64,
    /// Bytes of chunks newly stored.
    pub bytes_written: AtomicU64,
    /// Writes of chunks that were already stored (no-ops).
    pub writes_already_present: AtomicU64,
    /// Writes currently receiving data (a gauge).
    pub writes_in_progress: AtomicU64,
    /// Writes and reads dropped because the caller stalled (see `service::STREAM_IDLE_TIMEOUT`).
    pub stalled_streams: AtomicU64,
    /// Refused writes, indexed like `Rejection::ALL`.
    rejected: [AtomicU64; 6],
    /// ReadChunk calls answered with data.
    pub reads: AtomicU64,
    /// Bytes sent by ReadChunk.
    pub bytes_read: AtomicU64,
    /// Reads that found a corrupt copy (answered DATA_LOSS; the copy was dropped).
    pub corrupt_reads: AtomicU64,
    /// Chunks deleted by DeleteChunk.
    pub chunks_deleted: AtomicU64,
    /// Deletes refused because the controller's lineage did not cover this server's.
    pub deletes_refused: AtomicU64,
    /// ReplicateChunk calls that failed because the source could not provide the chunk.
    pub replication_source_failures: AtomicU64,
    /// Chunks whose hash the scrub worker checked.
    pub scrub_chunks_checked: AtomicU64,
    /// Bytes the scrub worker hashed.
    pub scrub_bytes_checked: AtomicU64,
    /// Corrupt copies the scrub worker found (and dropped).
    pub scrub_corrupt_found: AtomicU64,
    /// Complete scrub passes over the store.
    pub scrub_passes_completed: AtomicU64,
    /// Heartbeats a controller acknowledged.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeats that failed or timed out.
    pub heartbeats_failed: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Holds a gauge one higher for as long as it lives, however the work it counts ends.
pub struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    /// Raises `gauge` by one until the returned guard is dropped.
    pub fn raise(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a refused write.
    pub fn reject(&self, why: Rejection) {
        add(&self.rejected[why as usize], 1);
    }

    /// How many writes were refused for `why`.
    pub fn rejected(&self, why: Rejection) -> u64 {
        get(&self.rejected[why as usize])
    }

    /// The counters plus the store's totals in the Prometheus text exposition format.
    pub fn render_prometheus(&self, stats: &StoreStats) -> String {
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "chunks_written",
                "Chunks newly stored.",
                &self.chunks_written,
            ),
            (
                "bytes_written",
                "Bytes of chunks newly stored.",
                &self.bytes_written,
            ),
            (
                "writes_already_present",
                "Writes of already stored chunks.",
                &self.writes_already_present,
            ),
            ("reads", "Chunk reads answered with data.", &self.reads),
            ("bytes_read", "Bytes sent by chunk reads.", &self.bytes_read),
            (
                "corrupt_reads",
                "Reads that found and dropped a corrupt copy.",
                &self.corrupt_reads,
            ),
            (
                "chunks_deleted",
                "Chunks deleted on request.",
                &self.chunks_deleted,
            ),
            (
                "deletes_refused",
                "Deletes refused: the controller had not seen this server's cluster state.",
                &self.deletes_refused,
            ),
            (
                "replication_source_failures",
                "Replications whose source failed.",
                &self.replication_source_failures,
            ),
            (
                "scrub_chunks_checked",
                "Chunks re-hashed by scrub.",
                &self.scrub_chunks_checked,
            ),
            (
                "scrub_bytes_checked",
                "Bytes re-hashed by scrub.",
                &self.scrub_bytes_checked,
            ),
            (
                "scrub_corrupt_found",
                "Corrupt chunks found and dropped by scrub.",
                &self.scrub_corrupt_found,
            ),
            (
                "scrub_passes_completed",
                "Complete scrub passes.",
                &self.scrub_passes_completed,
            ),
            (
                "heartbeats_sent",
                "Heartbeats acknowledged by a controller.",
                &self.heartbeats_sent,
            ),
            (
                "heartbeats_failed",
                "Heartbeats that failed or timed out.",
                &self.heartbeats_failed,
            ),
            (
                "stalled_streams",
                "Writes and reads dropped because the caller stalled.",
                &self.stalled_streams,
            ),
        ];
        let mut out = String::new();
        for (name, help, counter) in counters {
            let name = format!("redcloud_chunk_{name}_total");
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(counter)
            );
        }
        let name = "redcloud_chunk_rejected_writes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Refused writes by reason.\n# TYPE {name} counter"
        );
        for why in Rejection::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                why.label(),
                self.rejected(why)
            );
        }
        let gauges = [
            (
                "writes_in_progress",
                "Writes receiving data now.",
                get(&self.writes_in_progress),
            ),
            ("chunks", "Chunks stored.", stats.chunk_count),
            ("used_bytes", "Bytes of chunks stored.", stats.used_bytes),
            (
                "capacity_bytes",
                "Most chunk bytes accepted.",
                stats.capacity_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let name = format!("redcloud_chunk_{name}");
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_carries_counters_rejections_and_gauges() {
        let metrics = Metrics::default();
        add(&metrics.bytes_written, 1234);
        metrics.reject(Rejection::DiskFull);
        metrics.reject(Rejection::DiskFull);
        let stats = StoreStats {
            chunk_count: 7,
            used_bytes: 99,
            capacity_bytes: 1000,
            inventory_digest: [0; 32],
        };
        let text = metrics.render_prometheus(&stats);
        assert!(
            text.contains("\nredcloud_chunk_bytes_written_total 1234\n"),
            "{text}"
        );
        assert!(text.contains("redcloud_chunk_rejected_writes_total{reason=\"disk_full\"} 2\n"));
        assert!(text.contains("redcloud_chunk_rejected_writes_total{reason=\"truncated\"} 0\n"));
        assert!(text.contains("\nredcloud_chunk_chunks 7\n"));
        // Every sample line is "name[labels] value" with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
