//! One monotonic clock in milliseconds for everything live state times:
//! ejections, rate-limit buckets, `/clusters`. Kept in an integer so it fits
//! an atomic.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process's first look at the clock.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
