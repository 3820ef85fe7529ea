//! Slowing down password guessing, and keeping argon2 off the metadata thread.
//!
//! [`Limiter`] counts failed logins per user name and per client address. After a few free
//! failures each further one blocks that key for a doubling delay (1 s up to a minute); a
//! success clears the user's count. Pure: callers pass the time. At most [`MAX_KEYS`] keys are
//! remembered (the stalest are dropped first), so guessing under many names cannot grow it.
//!
//! [`Hashers`] is the bounded pool argon2 runs in: hashing and verifying cost tens of
//! milliseconds and megabytes each by design, so they run on the blocking pool behind a
//! semaphore instead of the thread that owns the metadata.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Failed logins for one user name before delays start.
pub const FREE_USER_FAILURES: u32 = 5;
/// Failed logins from one address (any names) before delays start.
pub const FREE_ADDRESS_FAILURES: u32 = 20;
/// Registrations from one address before delays start (each one grows the replicated
/// cluster document).
pub const FREE_REGISTRATIONS_PER_ADDRESS: u32 = 20;
/// A key with no failure for this long starts afresh.
pub const FORGET_AFTER_MS: u64 = 15 * 60_000;
/// Longest block.
pub const MAX_BLOCK_MS: u64 = 60_000;
/// Keys remembered at most.
pub const MAX_KEYS: usize = 10_000;
/// argon2 computations at once.
pub const HASHERS: usize = 2;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    failures: u32,
    blocked_until_ms: u64,
    last_ms: u64,
}

#[derive(Debug, Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, Entry>>,
}

impl Limiter {
    /// `Err(ms)`: `key` is blocked for `ms` more.
    pub fn check(&self, key: &str, now_ms: u64) -> Result<(), u64> {
        match self.keys.lock().get(key) {
            Some(e) if e.blocked_until_ms > now_ms => Err(e.blocked_until_ms - now_ms),
            _ => Ok(()),
        }
    }

    /// Records a failed login for `key`, allowed `free` failures before blocking.
    pub fn failed(&self, key: &str, free: u32, now_ms: u64) {
        let mut keys = self.keys.lock();
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            // Drop the stalest tenth.
            let mut by_age: Vec<(u64, String)> =
                keys.iter().map(|(k, e)| (e.last_ms, k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(MAX_KEYS / 10) {
                keys.remove(&k);
            }
        }
        let e = keys.entry(key.to_owned()).or_default();
        if now_ms.saturating_sub(e.last_ms) > FORGET_AFTER_MS {
            // Quiet for long enough: start afresh.
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_ms = now_ms;
        if e.failures > free {
            let doublings = (e.failures - free - 1).min(16);
            let block = (1_000u64 << doublings).min(MAX_BLOCK_MS);
            e.blocked_until_ms = now_ms + block;
        }
    }

    /// A successful login: `key` starts afresh.
    pub fn succeeded(&self, key: &str) {
        self.keys.lock().remove(key);
    }
}

/// The bounded pool argon2 runs in.
#[derive(Debug, Clone)]
pub struct Hashers {
    permits: Arc<Semaphore>,
}

impl Default for Hashers {
    fn default() -> Self {
        Hashers {
            permits: Arc::new(Semaphore::new(HASHERS)),
        }
    }
}

impl Hashers {
    /// Runs `work` on the blocking pool once a permit is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tonic::Status> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| tonic::Status::unavailable("shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| tonic::Status::internal(format!("password check failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_blocks_and_success_clears() {
        let l = Limiter::default();
        for _ in 0..3 {
            l.failed("u:a", 3, 0);
            assert!(l.check("u:a", 0).is_ok());
        }
        l.failed("u:a", 3, 0);
        assert_eq!(l.check("u:a", 0), Err(1_000));
        l.failed("u:a", 3, 1_000);
        assert_eq!(l.check("u:a", 1_000), Err(2_000));
        for _ in 0..30 {
            l.failed("u:a", 3, 5_000);
        }
        assert_eq!(l.check("u:a", 5_000), Err(MAX_BLOCK_MS));
        assert!(l.check("u:a", 5_000 + MAX_BLOCK_MS).is_ok());
        assert!(l.check("u:b", 0).is_ok(), "other names are not blocked");
        l.succeeded("u:a");
        assert!(l.check("u:a", 5_000).is_ok());
        // Counts fade after a quiet spell.
        for _ in 0..3 {
            l.failed("u:c", 2, 0);
        }
        assert!(l.check("u:c", 0).is_err());
        l.failed("u:c", 2, FORGET_AFTER_MS + 10);
        assert!(l.check("u:c", FORGET_AFTER_MS + 10).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = Limiter::default();
        for i in 0..(MAX_KEYS + 500) {
            l.failed(&format!("u:{i}"), 1, i as u64);
        }
        assert!(l.keys.lock().len() <= MAX_KEYS);
    }
}
