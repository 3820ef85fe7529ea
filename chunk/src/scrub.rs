//! The scrub worker: walks the store in id order re-hashing every chunk at a bounded byte
//! rate, so bit rot is found before a reader needs the chunk.
//!
//! Reading through [`ChunkStore::get`] is the whole check: the store verifies the hash and
//! drops a corrupt copy itself. The worker counts what it saw (in [`Metrics`], reported by
//! `Info.scrub`); the inventory digest changes with the drop, so the controllers notice the
//! missing replica and repair restores it from another chunkserver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::id::ChunkId;
use crate::metrics::{Metrics, add};
use crate::store::{ChunkStore, StoreError, now_ms};

/// Chunks listed per step of a pass.
pub const SCRUB_BATCH: usize = 256;
/// Default hashing budget: a terabyte per ~9 hours, a small share of one disk's bandwidth.
pub const DEFAULT_SCRUB_RATE: u64 = 32 << 20;
/// Default rest between the end of one pass and the start of the next.
pub const DEFAULT_PASS_PAUSE: Duration = Duration::from_secs(3600);

/// How hard the scrub worker works.
#[derive(Debug, Clone, Copy)]
pub struct ScrubConfig {
    /// Bytes hashed per second at most; 0 disables scrubbing.
    pub rate_bytes_per_sec: u64,
    /// Rest between passes.
    pub pause_between_passes: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        Self {
            rate_bytes_per_sec: DEFAULT_SCRUB_RATE,
            pause_between_passes: DEFAULT_PASS_PAUSE,
        }
    }
}

/// The background worker named "scrub".
pub struct ScrubWorker {
    store: Arc<dyn ChunkStore>,
    metrics: Arc<Metrics>,
    config: ScrubConfig,
    stop: CancellationToken,
}

/// Whether the worker should go on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl ScrubWorker {
    /// The worker's name in logs and status.
    pub const NAME: &'static str = "scrub";

    /// Starts the worker; it runs until `stop` is cancelled.
    pub fn spawn(
        store: Arc<dyn ChunkStore>,
        metrics: Arc<Metrics>,
        config: ScrubConfig,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let worker = Self {
            store,
            metrics,
            config,
            stop,
        };
        let span = tracing::info_span!("worker", name = Self::NAME);
        tokio::spawn(worker.run().instrument(span))
    }

    async fn run(self) {
        if self.config.rate_bytes_per_sec == 0 {
            tracing::info!("scrub disabled (rate 0)");
            return;
        }
        tracing::info!(rate = self.config.rate_bytes_per_sec, "scrub started");
        while self.pass().await == Flow::Continue {
            if self.rest(self.config.pause_between_passes).await == Flow::Stop {
                break;
            }
        }
        tracing::info!("scrub stopped");
    }

    /// One walk over the whole store in id order.
    async fn pass(&self) -> Flow {
        let mut after = None;
        loop {
            let store = self.store.clone();
            let batch =
                match tokio::task::spawn_blocking(move || store.list(after, SCRUB_BATCH)).await {
                    Ok(Ok(batch)) => batch,
                    failed => {
                        tracing::warn!(?failed, "scrub cannot list chunks; retrying after a pause");
                        return self.rest(self.config.pause_between_passes).await;
                    }
                };
            let Some(&(last, _)) = batch.last() else {
                add(&self.metrics.scrub_passes_completed, 1);
                return Flow::Continue;
            };
            for (id, size) in batch {
                if self.check(id, size).await == Flow::Stop {
                    return Flow::Stop;
                }
            }
            after = Some(last);
        }
    }

    /// Re-hashes one chunk, then waits long enough to keep to the byte rate.
    async fn check(&self, id: ChunkId, size: u64) -> Flow {
        let started = Instant::now();
        let store = self.store.clone();
        let checked = tokio::task::spawn_blocking(move || {
            store.get(&id)?;
            store.mark_verified(&id, now_ms())
        })
        .await;
        match checked {
            Ok(Ok(())) => {
                add(&self.metrics.scrub_chunks_checked, 1);
                add(&self.metrics.scrub_bytes_checked, size);
            }
            Ok(Err(StoreError::Corrupt(_))) => {
                add(&self.metrics.scrub_chunks_checked, 1);
                add(&self.metrics.scrub_corrupt_found, 1);
                tracing::warn!(chunk = %id, "scrub found a corrupt chunk and dropped it");
            }
            // Deleted since it was listed: nothing to check.
            Ok(Err(StoreError::NotFound(_))) => {}
            failed => tracing::warn!(chunk = %id, ?failed, "scrub could not check chunk"),
        }
        self.rest(pace(size, self.config.rate_bytes_per_sec).saturating_sub(started.elapsed()))
            .await
    }

    async fn rest(&self, duration: Duration) -> Flow {
        tokio::select! {
            () = self.stop.cancelled() => Flow::Stop,
            () = tokio::time::sleep(duration) => Flow::Continue,
        }
    }
}

/// How long hashing `size` bytes may take at `rate` bytes per second.
fn pace(size: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(size as f64 / rate.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::store::conformance::test_chunk;

    #[test]
    fn pace_spreads_bytes_over_time() {
        assert_eq!(pace(1 << 20, 1 << 20), Duration::from_secs(1));
        assert_eq!(pace(512 << 10, 1 << 20), Duration::from_millis(500));
        assert_eq!(pace(0, 1 << 20), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_byte_rate_bounds_a_pass() {
        let store = Arc::new(MemoryStore::default());
        for i in 0..4 {
            let bytes = test_chunk(i, 100_000);
            store.put(&ChunkId::of(&bytes), &bytes).unwrap();
        }
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let config = ScrubConfig {
            rate_bytes_per_sec: 1_000_000,
            pause_between_passes: Duration::from_secs(3600),
        };
        let started = Instant::now();
        let worker = ScrubWorker::spawn(store, metrics.clone(), config, stop.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::metrics::get(&metrics.scrub_passes_completed) == 0 {
            assert!(Instant::now() < deadline, "no pass within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 400 kB at 1 MB/s takes at least 0.4 s.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(crate::metrics::get(&metrics.scrub_chunks_checked), 4);
        assert_eq!(crate::metrics::get(&metrics.scrub_bytes_checked), 400_000);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .unwrap()
            .unwrap();
    }
}
