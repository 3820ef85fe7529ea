//! Time for the controller's IO layer. Pure code takes `now` as an argument; this is where
//! "now" comes from, per node (several in-process test controllers never share a clock).
//!
//! Three readings:
//! - [`NodeClock::raw_ms`]: the machine's wall clock plus the test-only offset
//!   (`--clock-offset-ms`, so a fault test can run a controller minutes or days off);
//! - [`NodeClock::now_ms`]: the raw clock plus the correction [`crate::skew`] derives from the
//!   cluster's clocks. Every timestamp and every time-based decision uses this reading;
//! - [`NodeClock::mono_ms`]: milliseconds since the process started, for durations (grace
//!   periods, liveness), so a wall clock jump can neither shorten nor stretch them.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::skew::{ClockHealth, SkewEstimator};

/// Default largest tolerated skew between controllers (and their chunkservers).
pub const DEFAULT_MAX_SKEW_MS: u64 = 30_000;
/// Samples older than this no longer count.
const SAMPLE_MAX_AGE_MS: u64 = 60_000;

/// The machine's wall clock in ms since the Unix epoch, uncorrected (for tools and tests;
/// a running controller reads its [`NodeClock`]).
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One controller's clock.
#[derive(Debug)]
pub struct NodeClock {
    test_offset_ms: i64,
    started: Instant,
    max_skew_ms: u64,
    skew: Mutex<SkewEstimator>,
    /// The last evaluation, for readers that must not re-evaluate.
    health: Mutex<Option<ClockHealth>>,
}

impl NodeClock {
    pub fn new(test_offset_ms: i64, max_skew_ms: u64) -> Self {
        NodeClock {
            test_offset_ms,
            started: Instant::now(),
            max_skew_ms,
            skew: Mutex::new(SkewEstimator::new(max_skew_ms, SAMPLE_MAX_AGE_MS)),
            health: Mutex::new(None),
        }
    }

    /// Largest tolerated skew.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// The machine's wall clock (plus the test offset), in ms since the Unix epoch.
    pub fn raw_ms(&self) -> u64 {
        (system_ms() as i64)
            .saturating_add(self.test_offset_ms)
            .max(0) as u64
    }

    /// The corrected wall clock: what timestamps and time-based decisions use.
    pub fn now_ms(&self) -> u64 {
        let correction = self.skew.lock().correction_ms();
        (self.raw_ms() as i64).saturating_add(correction).max(0) as u64
    }

    /// Milliseconds since this process started; never jumps.
    pub fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records a witness's wall clock `their_ms`, read at our raw time `our_raw_ms` (for a
    /// round trip, the midpoint of send and receive).
    pub fn witness(&self, who: &str, their_ms: u64, our_raw_ms: u64) {
        let offset = (their_ms as i64).saturating_sub(our_raw_ms as i64);
        let now = self.mono_ms();
        self.skew.lock().sample(who, offset, now);
    }

    /// Re-evaluates the skew (and the correction) from the fresh samples.
    pub fn evaluate(&self) -> ClockHealth {
        let now = self.mono_ms();
        let h = self.skew.lock().evaluate(now);
        *self.health.lock() = Some(h);
        h
    }

    /// The last evaluation (evaluating now if there was none).
    pub fn health(&self) -> ClockHealth {
        let last = *self.health.lock();
        last.unwrap_or_else(|| self.evaluate())
    }
}

/// Re-evaluates the clock every second, logs every change of its state, and pulls the HLC
/// back to the (corrected) wall clock when it runs ahead of it (see
/// `MetaStore::rebase_clock`): a controller that learns its clock was fast stops stamping
/// the future.
pub async fn watch(
    clock: std::sync::Arc<NodeClock>,
    meta: crate::handle::MetaHandle,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use crate::skew::ClockState;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let h = clock.evaluate();
        if last != Some(h.state) {
            match h.state {
                ClockState::Skewed => tracing::warn!(
                    median_offset_ms = h.median_offset_ms,
                    witnesses = h.witnesses,
                    "clock disagrees with its peers and chunkservers by more than {} ms and \
                     they cannot say who is right: no time-based destructive action (trash \
                     purge) until it agrees",
                    clock.max_skew_ms()
                ),
                ClockState::Corrected => tracing::warn!(
                    correction_ms = h.correction_ms,
                    witnesses = h.witnesses,
                    "clock disagrees with the majority of its peers and chunkservers; using \
                     their time"
                ),
                ClockState::Ok | ClockState::Unknown => {
                    tracing::info!(state = h.state.name(), "clock state")
                }
            }
            last = Some(h.state);
        }
        if h.state == ClockState::Skewed {
            continue;
        }
        let now = clock.now_ms();
        let slack = clock.max_skew_ms();
        if let Ok(true) = meta.call(move |s| s.rebase_clock(now, slack)).await {
            metrics.clock_rebases.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skew::ClockState;

    #[test]
    fn offset_shifts_raw_and_correction_shifts_now() {
        let day = 24 * 3600 * 1000u64;
        let c = NodeClock::new(8 * day as i64, DEFAULT_MAX_SKEW_MS);
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(c.raw_ms() >= real + 8 * day - 1_000);
        // Three witnesses with true time outvote us.
        for w in ["a", "b", "c"] {
            c.witness(w, real, c.raw_ms());
        }
        assert_eq!(c.evaluate().state, ClockState::Corrected);
        assert!(c.now_ms().abs_diff(real) < 5_000, "corrected to true time");
        assert!(c.mono_ms() < 60_000);
    }
}
