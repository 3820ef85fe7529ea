//! Wall-clock time for the controller's IO layer. Pure code takes `now` as an argument; this
//! is where "now" comes from. A test-only offset (`--clock-offset-ms`) shifts it, so a
//! fault-injection test can run a controller minutes ahead or behind the others.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts this process's wall clock (tests only).
pub fn set_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch, shifted by the test offset.
pub fn wall_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (real + OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64
}
