//! Clocks: a process-wide monotonic clock in milliseconds, cheap enough to stamp every
//! client frame (sessions store "last seen" in an atomic that the Registry's sweep reads),
//! and wall-clock milliseconds for times compared across pods.

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Milliseconds since the Unix epoch (wall clock, comparable across pods).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
