//! The reclaim worker: asks the store, every [`RECLAIM_CHECK_INTERVAL`], to give back the
//! disk space of deleted chunks ([`ChunkStore::reclaim_space`]).
//!
//! The store decides whether a pass is worth it (the RocksDB store waits for enough garbage
//! that rewriting the live chunks is cheap per byte given back), so most checks cost a
//! property read. A pass runs on the blocking pool and may take as long as rewriting the
//! store; stopping the worker does not wait for one in progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{ChunkStore, StoreError};

/// How often the worker asks the store whether a reclaim pass is due.
pub const RECLAIM_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// One reclaim call: [`ChunkStore::reclaim_space`] of the served store.
type Reclaim = Arc<dyn Fn() -> Result<u64, StoreError> + Send + Sync>;

/// The background worker named "reclaim".
pub struct ReclaimWorker {
    reclaim: Reclaim,
    interval: Duration,
    stop: CancellationToken,
}

impl ReclaimWorker {
    /// The worker's name in logs.
    pub const NAME: &'static str = "reclaim";

    /// Starts the worker for `store`; it checks every `interval` until `stop` is cancelled.
    pub fn spawn(
        store: Arc<dyn ChunkStore>,
        interval: Duration,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        Self::spawn_with(Arc::new(move || store.reclaim_space()), interval, stop)
    }

    fn spawn_with(reclaim: Reclaim, interval: Duration, stop: CancellationToken) -> JoinHandle<()> {
        let worker = Self {
            reclaim,
            interval,
            stop,
        };
        let span = tracing::info_span!("worker", name = Self::NAME);
        tokio::spawn(worker.run().instrument(span))
    }

    async fn run(self) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
            let reclaim = self.reclaim.clone();
            let pass = tokio::task::spawn_blocking(move || reclaim());
            tokio::select! {
                () = self.stop.cancelled() => break,
                // A pass that ran is logged by the store, with what it found and freed.
                done = pass => if !matches!(done, Ok(Ok(_))) {
                    tracing::warn!(?done, "reclaiming the space of deleted chunks failed");
                },
            }
        }
        tracing::debug!("reclaim stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn the_worker_asks_the_store_until_stopped() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let reclaim: Reclaim = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        });
        let stop = CancellationToken::new();
        let worker = ReclaimWorker::spawn_with(reclaim, Duration::from_millis(5), stop.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker never asked"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the worker stops when told")
            .unwrap();
        // A call already handed to the blocking pool may still run; no new one starts (at the
        // 5 ms interval, 50 ms would see about ten).
        let after = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            calls.load(Ordering::SeqCst) <= after + 1,
            "asked again after it was stopped"
        );
    }
}
