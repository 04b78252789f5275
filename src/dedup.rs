//! Recently seen message ids per subject, so a service that re-publishes a message with the
//! same `Nats-Msg-Id` (a retry after a timeout, say) does not deliver it twice.
//!
//! Bounded twice: ids are forgotten after [`WINDOW`], and at most [`CAPACITY`] are kept
//! (the oldest go first), so a flood of unique ids costs bounded memory.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How long an id is remembered (JetStream's default duplicate window).
pub const WINDOW: Duration = Duration::from_secs(120);
/// Most ids remembered at once.
pub const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct RecentIds {
    set: HashSet<(String, String)>,
    order: VecDeque<(Instant, String, String)>,
}

impl RecentIds {
    /// True when `id` was already seen on `subject` within the window; records it if not.
    pub fn seen_before(&mut self, subject: &str, id: &str, now: Instant) -> bool {
        while let Some((t, _, _)) = self.order.front() {
            if now.duration_since(*t) < WINDOW && self.order.len() < CAPACITY {
                break;
            }
            if let Some((_, s, i)) = self.order.pop_front() {
                self.set.remove(&(s, i));
            }
        }
        let key = (subject.to_string(), id.to_string());
        if self.set.contains(&key) {
            return true;
        }
        self.order.push_back((now, key.0.clone(), key.1.clone()));
        self.set.insert(key);
        false
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_window_are_caught_and_forgotten_after_it() {
        let mut r = RecentIds::default();
        let t0 = Instant::now();
        assert!(!r.seen_before("h.user.u1", "m1", t0));
        assert!(r.seen_before("h.user.u1", "m1", t0 + Duration::from_secs(1)));
        // The same id on another subject is another message.
        assert!(!r.seen_before("h.user.u2", "m1", t0));
        assert!(!r.seen_before("h.user.u1", "m2", t0 + WINDOW));
        assert!(!r.seen_before("h.user.u1", "m1", t0 + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let mut r = RecentIds::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY + 10 {
            r.seen_before("s", &i.to_string(), t0);
        }
        assert!(r.len() <= CAPACITY);
        assert!(!r.is_empty());
    }
}
