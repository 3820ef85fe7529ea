//! Hybrid logical clock: a `u64` timestamp `(wall ms << 16) | logical counter`.
//!
//! The clock is pure: callers pass the wall time in (`wall_ms`), the IO layer reads
//! `SystemTime`. Timestamps order versions that are causally concurrent (see `resolve`), so
//! the clock must never run backwards, not even across restarts: the store persists
//! [`Clock::high_water`] with every commit and resumes from it.

use std::fmt;

/// Bits of a timestamp that hold the logical counter.
const LOGICAL_BITS: u32 = 16;

/// Default tolerance for remote timestamps ahead of our wall clock: one hour, so a controller
/// running minutes ahead is still accepted, while a clock set to next year is not.
pub const DEFAULT_MAX_AHEAD_MS: u64 = 60 * 60 * 1000;

/// A hybrid logical clock timestamp. Ordered as a plain `u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp of a wall time with logical counter 0.
    pub fn from_wall_ms(wall_ms: u64) -> Self {
        Timestamp(wall_ms << LOGICAL_BITS)
    }

    /// The wall-clock part in milliseconds since the Unix epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter part.
    pub fn logical(self) -> u64 {
        self.0 & ((1 << LOGICAL_BITS) - 1)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// A remote timestamp was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error(
        "remote timestamp {remote_ms} ms is {} ms ahead of local wall time {local_ms} ms \
         (more than the allowed {max_ahead_ms} ms); the clock was not advanced",
        remote_ms - local_ms
    )]
    TooFarAhead {
        remote_ms: u64,
        local_ms: u64,
        max_ahead_ms: u64,
    },
}

/// A hybrid logical clock.
///
/// Laws: successive [`Clock::tick`]s return strictly increasing timestamps whatever the wall
/// times passed in; after [`Clock::observe`] accepts `r`, the next tick is greater than `r`.
/// The one exception is [`Clock::rebase`], which a controller uses after learning that its
/// own wall clock ran far ahead.
#[derive(Clone, Debug)]
pub struct Clock {
    last: Timestamp,
    max_ahead_ms: u64,
    rejected: u64,
}

impl Clock {
    /// A clock that never issues a timestamp at or below `high_water` (0 for a new node).
    pub fn resume(high_water: Timestamp, max_ahead_ms: u64) -> Self {
        Clock {
            last: high_water,
            max_ahead_ms,
            rejected: 0,
        }
    }

    /// The next timestamp: greater than every timestamp issued or accepted so far, and at
    /// least `wall_ms`. When the wall clock stands still or goes backwards the logical counter
    /// grows; if it overflows 16 bits it carries into the millisecond part, which stays
    /// monotonic.
    pub fn tick(&mut self, wall_ms: u64) -> Timestamp {
        let physical = Timestamp::from_wall_ms(wall_ms);
        self.last = if physical > self.last {
            physical
        } else {
            Timestamp(self.last.0 + 1)
        };
        self.last
    }

    /// Merge a timestamp seen from elsewhere (a replicated change, a client's causal context).
    /// A timestamp more than `max_ahead_ms` beyond `wall_ms` is rejected and counted, and the
    /// clock is not dragged forward by it.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> Result<(), ClockError> {
        if remote.wall_ms() > wall_ms.saturating_add(self.max_ahead_ms) {
            self.rejected += 1;
            return Err(ClockError::TooFarAhead {
                remote_ms: remote.wall_ms(),
                local_ms: wall_ms,
                max_ahead_ms: self.max_ahead_ms,
            });
        }
        self.last = self.last.max(remote);
        Ok(())
    }

    /// Moves the clock to `to`, backwards if need be (see `MetaStore::rebase_clock`).
    pub fn rebase(&mut self, to: Timestamp) {
        self.last = to;
    }

    /// The greatest timestamp issued or accepted; persist it to resume after a restart.
    pub fn high_water(&self) -> Timestamp {
        self.last
    }

    /// How many remote timestamps were rejected as too far ahead.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_even_when_wall_goes_backwards() {
        let mut c = Clock::resume(Timestamp(0), DEFAULT_MAX_AHEAD_MS);
        let a = c.tick(1_000);
        let b = c.tick(1_000);
        let d = c.tick(500);
        let e = c.tick(2_000);
        assert!(a < b && b < d && d < e);
        assert_eq!(a, Timestamp::from_wall_ms(1_000));
        assert_eq!(d.wall_ms(), 1_000);
        assert_eq!(d.logical(), 2);
        assert_eq!(e, Timestamp::from_wall_ms(2_000));
    }

    #[test]
    fn observe_merges_so_next_tick_is_later() {
        let mut c = Clock::resume(Timestamp(0), DEFAULT_MAX_AHEAD_MS);
        let remote = Timestamp::from_wall_ms(5_000).0 + 7;
        c.observe(Timestamp(remote), 1_000).unwrap();
        let t = c.tick(1_000);
        assert_eq!(t.0, remote + 1);
    }

    #[test]
    fn ten_minutes_ahead_is_accepted() {
        let mut c = Clock::resume(Timestamp(0), DEFAULT_MAX_AHEAD_MS);
        let now = 1_700_000_000_000;
        c.observe(Timestamp::from_wall_ms(now + 10 * 60 * 1000), now)
            .unwrap();
        assert_eq!(c.rejected(), 0);
        assert!(c.tick(now).wall_ms() >= now + 10 * 60 * 1000);
    }

    #[test]
    fn too_far_ahead_is_rejected_counted_and_not_merged() {
        let mut c = Clock::resume(Timestamp(0), 1_000);
        let before = c.tick(10_000);
        let err = c
            .observe(Timestamp::from_wall_ms(11_001), 10_000)
            .unwrap_err();
        assert_eq!(
            err,
            ClockError::TooFarAhead {
                remote_ms: 11_001,
                local_ms: 10_000,
                max_ahead_ms: 1_000
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("11001") && msg.contains("10000"), "{msg}");
        assert_eq!(c.rejected(), 1);
        assert_eq!(c.high_water(), before);
        // Exactly at the limit is fine.
        c.observe(Timestamp::from_wall_ms(11_000), 10_000).unwrap();
        assert_eq!(c.rejected(), 1);
    }

    #[test]
    fn resume_from_high_water_never_goes_backwards() {
        let mut c = Clock::resume(Timestamp(0), DEFAULT_MAX_AHEAD_MS);
        c.tick(9_000);
        let hw = c.tick(9_000);
        // Restart with a wall clock that jumped back 8 seconds.
        let mut r = Clock::resume(hw, DEFAULT_MAX_AHEAD_MS);
        assert!(r.tick(9_000 - 8_000) > hw);
    }
}
