//! What a session shares with the Registry without a message: its last sign of life (read
//! by the idle sweep) and the bytes waiting for it anywhere in the pod (its mailbox and its
//! outbound queue), so the fan-out can refuse a frame before it is queued.
//!
//! The byte count is the session's outbound limit made pod-wide: the Registry reserves a
//! frame's bytes before it sends the frame to the session's mailbox, the session reserves
//! its own frames (pongs, errors, pings) before queueing them, and bytes are released when
//! they reach the socket or are dropped. However fast messages are published, one
//! session's frames in flight never pass its `--outbound-queue-bytes`.
//!
//! A frame's size on the wire depends on the session's transport, so the link carries the
//! transport's measure ([`FrameLen`]): the Registry reserves and the session releases the
//! same number for the same frame.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Bytes a message frame takes on a transport's wire.
pub type FrameLen = fn(&[u8]) -> usize;

pub struct Link {
    last_seen_ms: AtomicU64,
    queued: AtomicUsize,
    overflowed: AtomicBool,
    frame_len: FrameLen,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("last_seen_ms", &self.last_seen_ms)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(now_ms: u64, frame_len: FrameLen) -> Link {
        Link {
            last_seen_ms: AtomicU64::new(now_ms),
            queued: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            frame_len,
        }
    }

    /// Bytes `frame` takes on this session's wire.
    pub fn frame_len(&self, frame: &[u8]) -> usize {
        (self.frame_len)(frame)
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Reserve `n` bytes within `limit`; false (and nothing reserved) when they do not fit.
    pub fn reserve(&self, n: usize, limit: usize) -> bool {
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > limit {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Count `n` bytes regardless of the limit (the close frame).
    pub fn force(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Mark the session as over its limit; true only the first time, so one close is sent.
    pub fn overflow(&self) -> bool {
        !self.overflowed.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit() {
        let link = Link::new(0, |f| f.len());
        assert!(link.reserve(600, 1000));
        assert!(!link.reserve(500, 1000));
        assert_eq!(link.queued(), 600);
        link.release(600);
        assert!(link.reserve(1000, 1000));
        assert!(link.overflow());
        assert!(!link.overflow(), "only the first overflow asks for a close");
    }
}
