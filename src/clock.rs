//! A process-wide monotonic clock in milliseconds, cheap enough to stamp every client
//! frame: sessions store "last seen" in an atomic that the Registry's sweep reads.

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
