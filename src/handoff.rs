//! The bound on deliveries handed from the Subscriber to the Registry: the Subscriber
//! stops taking messages off the bus while this many wait in the Registry's mailbox, so a
//! publisher faster than the fan-out fills the bus's bounded subscription buffers (where
//! NATS drops and counts them) instead of growing the pod's memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Waker;

use futures_util::task::AtomicWaker;

/// Deliveries in the Registry's mailbox at most.
pub const MAX_DELIVERIES_IN_FLIGHT: usize = 1024;

#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    waker: AtomicWaker,
}

impl InFlight {
    /// One more delivery handed over.
    pub fn started(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// One delivery handled; wakes the Subscriber if it was waiting for room.
    pub fn done(&self) {
        let before = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(1))
            })
            .unwrap_or(0);
        if before >= MAX_DELIVERIES_IN_FLIGHT {
            self.waker.wake();
        }
    }

    /// True when there is room; otherwise registers `waker` for when there is.
    pub fn has_room(&self, waker: &Waker) -> bool {
        if self.count.load(Ordering::Acquire) < MAX_DELIVERIES_IN_FLIGHT {
            return true;
        }
        self.waker.register(waker);
        // Checked again: the Registry may have made room before the waker was in place.
        self.count.load(Ordering::Acquire) < MAX_DELIVERIES_IN_FLIGHT
    }

    pub fn in_flight(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}
