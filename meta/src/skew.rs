//! Clock skew between this controller and the rest of the cluster. Pure: callers pass samples
//! and the monotonic time; [`crate::clock::NodeClock`] does the IO.
//!
//! Witnesses are peers (anti-entropy exchanges carry each side's wall clock) and chunkservers
//! (every heartbeat carries theirs). Each sample is the witness's wall clock minus ours at the
//! moment it was taken; the latest sample per witness counts while it is fresh.
//!
//! Rules (`bound` is the largest tolerated skew):
//! - No fresh witness: [`ClockState::Unknown`]. Nothing to compare with; a lone controller
//!   keeps working on its own clock.
//! - A strict majority of witnesses within `bound` of our clock (after the current
//!   correction): [`ClockState::Ok`] (or [`ClockState::Corrected`] while a correction is in
//!   force).
//! - Otherwise, when at least two witnesses exist and a strict majority of them agree with
//!   their median within `bound`, this controller is the odd one out: the correction becomes
//!   the median and the state [`ClockState::Corrected`].
//! - Otherwise (one witness, or witnesses that disagree among themselves) nobody can tell
//!   whose clock is wrong: [`ClockState::Skewed`]. A skewed controller says so in `status` and
//!   its logs and takes no time-based destructive action (trash purge).
//! - A correction is dropped once the raw clock agrees with the witnesses again (the operator
//!   fixed it), with hysteresis so it does not flap.

use std::collections::HashMap;

/// What the estimator concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockState {
    /// No witness to compare with.
    Unknown,
    /// Agrees with the witnesses.
    Ok,
    /// Disagreed with a majority of witnesses; corrected by their median offset.
    Corrected,
    /// Disagrees with its witnesses and cannot tell who is right.
    Skewed,
}

impl ClockState {
    /// Whether time-based destructive actions (trash purge) may run.
    pub fn trusted(self) -> bool {
        !matches!(self, ClockState::Skewed)
    }

    pub fn name(self) -> &'static str {
        match self {
            ClockState::Unknown => "unknown",
            ClockState::Ok => "ok",
            ClockState::Corrected => "corrected",
            ClockState::Skewed => "skewed",
        }
    }
}

/// One evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockHealth {
    pub state: ClockState,
    /// Median of the witnesses' clocks minus our raw clock, in ms (0 without witnesses).
    pub median_offset_ms: i64,
    /// Correction now applied to the raw clock, in ms.
    pub correction_ms: i64,
    pub witnesses: usize,
    /// Witnesses within `bound` of the median.
    pub agreeing: usize,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    offset_ms: i64,
    at_mono_ms: u64,
}

/// The latest offset sample of every witness, and the correction they justify.
#[derive(Debug)]
pub struct SkewEstimator {
    bound_ms: u64,
    max_age_ms: u64,
    max_witnesses: usize,
    samples: HashMap<String, Sample>,
    correction_ms: i64,
}

impl SkewEstimator {
    /// `bound_ms`: largest tolerated skew; samples older than `max_age_ms` are forgotten.
    pub fn new(bound_ms: u64, max_age_ms: u64) -> Self {
        SkewEstimator {
            bound_ms: bound_ms.max(1),
            max_age_ms,
            max_witnesses: 1024,
            samples: HashMap::new(),
            correction_ms: 0,
        }
    }

    /// Records that `witness`'s clock read `offset_ms` more than our raw clock.
    pub fn sample(&mut self, witness: &str, offset_ms: i64, now_mono_ms: u64) {
        if self.samples.len() >= self.max_witnesses && !self.samples.contains_key(witness) {
            self.expire(now_mono_ms);
            if self.samples.len() >= self.max_witnesses {
                return;
            }
        }
        self.samples.insert(
            witness.to_owned(),
            Sample {
                offset_ms,
                at_mono_ms: now_mono_ms,
            },
        );
    }

    fn expire(&mut self, now_mono_ms: u64) {
        let max_age = self.max_age_ms;
        self.samples
            .retain(|_, s| now_mono_ms.saturating_sub(s.at_mono_ms) <= max_age);
    }

    /// The correction in force (add it to the raw clock).
    pub fn correction_ms(&self) -> i64 {
        self.correction_ms
    }

    /// Re-evaluates from the fresh samples, updating the correction.
    pub fn evaluate(&mut self, now_mono_ms: u64) -> ClockHealth {
        self.expire(now_mono_ms);
        let mut offsets: Vec<i64> = self.samples.values().map(|s| s.offset_ms).collect();
        if offsets.is_empty() {
            return ClockHealth {
                state: ClockState::Unknown,
                median_offset_ms: 0,
                correction_ms: self.correction_ms,
                witnesses: 0,
                agreeing: 0,
            };
        }
        offsets.sort_unstable();
        let n = offsets.len();
        let median = if n % 2 == 1 {
            offsets[n / 2]
        } else {
            // Mean of the middle two, without overflow.
            offsets[n / 2 - 1] / 2 + offsets[n / 2] / 2
        };
        let bound = self.bound_ms;
        let within = |center: i64, limit: u64| {
            offsets
                .iter()
                .filter(|o| o.abs_diff(center) <= limit)
                .count()
        };
        let agreeing = within(median, bound);
        // The raw clock agrees with most witnesses again (the operator fixed it): drop the
        // correction (hysteresis: half the bound).
        if self.correction_ms != 0 && within(0, bound / 2) * 2 > n {
            self.correction_ms = 0;
        }
        let state = if within(self.correction_ms, bound) * 2 > n {
            // Most witnesses agree with our (corrected) clock.
            if self.correction_ms == 0 {
                ClockState::Ok
            } else {
                ClockState::Corrected
            }
        } else if n >= 2 && agreeing * 2 > n {
            // Most witnesses agree with each other, not with us: we are the odd one out.
            self.correction_ms = median;
            ClockState::Corrected
        } else {
            ClockState::Skewed
        };
        ClockHealth {
            state,
            median_offset_ms: median,
            correction_ms: self.correction_ms,
            witnesses: n,
            agreeing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn est() -> SkewEstimator {
        SkewEstimator::new(30_000, 60_000)
    }

    #[test]
    fn no_witness_is_unknown_and_trusted() {
        let mut e = est();
        let h = e.evaluate(0);
        assert_eq!(h.state, ClockState::Unknown);
        assert!(h.state.trusted());
        assert_eq!(h.correction_ms, 0);
    }

    #[test]
    fn agreeing_clocks_are_ok() {
        let mut e = est();
        e.sample("a", 120, 0);
        e.sample("b", -300, 0);
        e.sample("c", 40, 0);
        let h = e.evaluate(0);
        assert_eq!(h.state, ClockState::Ok);
        assert_eq!(h.correction_ms, 0);
        assert_eq!(h.agreeing, 3);
    }

    #[test]
    fn a_fast_controller_outvoted_by_its_witnesses_corrects_itself() {
        // We are 8 days fast: every witness reads 8 days behind us.
        let mut e = est();
        for w in ["peer-1", "peer-2", "cs-1", "cs-2"] {
            e.sample(w, -8 * DAY, 0);
        }
        let h = e.evaluate(0);
        assert_eq!(h.state, ClockState::Corrected);
        assert_eq!(h.correction_ms, -8 * DAY);
        assert!(h.state.trusted());
        // Still corrected while the samples say so.
        assert_eq!(e.evaluate(1).state, ClockState::Corrected);
    }

    #[test]
    fn one_witness_cannot_say_who_is_wrong() {
        let mut e = est();
        e.sample("peer", 8 * DAY, 0);
        let h = e.evaluate(0);
        assert_eq!(h.state, ClockState::Skewed);
        assert!(!h.state.trusted());
        assert_eq!(h.correction_ms, 0, "no correction on one witness's word");
    }

    #[test]
    fn witnesses_that_disagree_among_themselves_leave_us_skewed() {
        let mut e = est();
        e.sample("a", 8 * DAY, 0);
        e.sample("b", -8 * DAY, 0);
        let h = e.evaluate(0);
        assert_eq!(h.state, ClockState::Skewed);
        assert_eq!(h.correction_ms, 0);
    }

    #[test]
    fn a_healthy_controller_is_not_moved_by_one_fast_peer() {
        let mut e = est();
        e.sample("fast-peer", 8 * DAY, 0);
        e.sample("peer", 10, 0);
        e.sample("cs-1", -5, 0);
        let h = e.evaluate(0);
        assert_eq!(h.state, ClockState::Ok);
        assert_eq!(h.correction_ms, 0);
    }

    #[test]
    fn correction_is_dropped_once_the_clock_is_fixed() {
        let mut e = est();
        e.sample("a", -DAY, 0);
        e.sample("b", -DAY, 0);
        assert_eq!(e.evaluate(0).correction_ms, -DAY);
        // The operator fixes the clock: witnesses now agree with the raw clock.
        e.sample("a", 5, 1);
        e.sample("b", -5, 1);
        let h = e.evaluate(1);
        assert_eq!(h.state, ClockState::Ok);
        assert_eq!(h.correction_ms, 0);
    }

    #[test]
    fn stale_samples_are_forgotten() {
        let mut e = est();
        e.sample("a", 8 * DAY, 0);
        assert_eq!(e.evaluate(0).state, ClockState::Skewed);
        assert_eq!(e.evaluate(60_001).state, ClockState::Unknown);
    }

    proptest! {
        /// Whatever the samples, a majority of witnesses that agree with each other decide:
        /// after evaluation our corrected clock is within the bound of their median.
        #[test]
        fn majority_always_wins(
            honest in proptest::collection::vec(-20_000i64..20_000, 2..8),
            liars in proptest::collection::vec(-30 * DAY..30 * DAY, 0..3),
            our_error in -30 * DAY..30 * DAY,
        ) {
            prop_assume!(liars.len() < honest.len());
            let mut e = est();
            for (i, o) in honest.iter().enumerate() {
                e.sample(&format!("h{i}"), o - our_error, 0);
            }
            for (i, o) in liars.iter().enumerate() {
                e.sample(&format!("l{i}"), o - our_error, 0);
            }
            let h = e.evaluate(0);
            let corrected_error = our_error + h.correction_ms;
            if h.state != ClockState::Skewed {
                // Within bound of the honest witnesses' spread (their offsets are within 20 s
                // of true time, the bound is 30 s).
                prop_assert!(corrected_error.abs() <= 60_000, "{h:?} error {corrected_error}");
            }
        }
    }
}
