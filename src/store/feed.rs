//! One user's live feed on a pod in durable mode, as plain data: the republished messages
//! put back in stream order, each exactly once, with gaps filled from the stream.
//!
//! Every republished message carries its sequence and its predecessor's on the same
//! subject. The feed starts from a baseline (the newest kept sequence when the pod began
//! to listen) and then passes a message on only when its predecessor is the last one it
//! passed on; a message whose predecessor is missing starts a fill (read the stream after
//! the last one passed on, up to just before it) and everything behind it waits until the
//! fill is in. Duplicates (a sequence at or below the last) are dropped.

use std::collections::VecDeque;

/// Messages held while the baseline or a fill is awaited; past this the newest are
/// dropped, and the next message's predecessor check fills them from the stream.
pub const MAX_HELD: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMsg<T> {
    pub seq: u64,
    /// The previous sequence on the same subject (0 for the first).
    pub prev: u64,
    pub item: T,
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub struct Output<T> {
    /// Pass these on, in this order.
    pub deliver: Vec<(u64, T)>,
    /// Read the stream after this sequence (up to the second, when given) and hand the
    /// result to [`Feed::filled`].
    pub fill: Option<(u64, Option<u64>)>,
}

impl<T> Default for Output<T> {
    fn default() -> Self {
        Output {
            deliver: Vec::new(),
            fill: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Establishing,
    Live,
    Filling,
}

#[derive(Debug)]
pub struct Feed<T> {
    state: State,
    baseline: u64,
    last: u64,
    /// The bound of the fill in flight: once it is in, whatever it did not find up to
    /// there is gone from the store (retention), and waiting for it would never end.
    filling_upto: Option<u64>,
    held: VecDeque<LiveMsg<T>>,
}

impl<T> Default for Feed<T> {
    fn default() -> Self {
        Feed {
            state: State::Establishing,
            baseline: 0,
            last: 0,
            filling_upto: None,
            held: VecDeque::new(),
        }
    }
}

impl<T> Feed<T> {
    /// The baseline, once known.
    pub fn baseline(&self) -> Option<u64> {
        (self.state != State::Establishing).then_some(self.baseline)
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn is_filling(&self) -> bool {
        self.state == State::Filling
    }

    /// The newest kept sequence when listening began.
    pub fn established(&mut self, baseline: u64) -> Output<T> {
        if self.state != State::Establishing {
            return Output::default();
        }
        self.baseline = baseline;
        self.last = baseline;
        self.state = State::Live;
        self.drain()
    }

    /// A republished message arrived.
    pub fn live(&mut self, msg: LiveMsg<T>) -> Output<T> {
        match self.state {
            State::Live => {
                self.hold(msg);
                self.drain()
            }
            State::Establishing | State::Filling => {
                self.hold(msg);
                Output::default()
            }
        }
    }

    /// A fill came back: kept messages after the last one passed on, in order.
    pub fn filled(&mut self, messages: Vec<(u64, T)>) -> Output<T> {
        let mut out = Output::default();
        for (seq, item) in messages {
            if seq > self.last {
                self.last = seq;
                out.deliver.push((seq, item));
            }
        }
        if let Some(upto) = self.filling_upto.take() {
            self.last = self.last.max(upto);
        }
        self.state = State::Live;
        let more = self.drain();
        out.deliver.extend(more.deliver);
        out.fill = more.fill;
        out
    }

    /// Live traffic may have been missed (a reconnect, a re-created stream): read the
    /// stream after the last message passed on, or from the start when `reset`.
    pub fn resync(&mut self, reset: bool) -> Output<T> {
        if reset {
            self.last = 0;
            self.baseline = 0;
        }
        if self.state != State::Live {
            return Output::default();
        }
        self.state = State::Filling;
        self.filling_upto = None;
        Output {
            deliver: Vec::new(),
            fill: Some((self.last, None)),
        }
    }

    fn hold(&mut self, msg: LiveMsg<T>) {
        if self.held.len() >= MAX_HELD {
            return;
        }
        // Republished messages arrive in order; keep the held ones sorted regardless.
        let at = self.held.partition_point(|m| m.seq < msg.seq);
        if self.held.get(at).is_some_and(|m| m.seq == msg.seq) {
            return;
        }
        self.held.insert(at, msg);
    }

    /// Pass on what can be passed on; stop at the first gap.
    fn drain(&mut self) -> Output<T> {
        let mut out = Output::default();
        while let Some(front) = self.held.front() {
            if front.seq <= self.last {
                self.held.pop_front();
                continue;
            }
            if front.prev > self.last {
                self.state = State::Filling;
                self.filling_upto = Some(front.seq - 1);
                out.fill = Some((self.last, Some(front.seq - 1)));
                return out;
            }
            let Some(m) = self.held.pop_front() else {
                break;
            };
            self.last = m.seq;
            out.deliver.push((m.seq, m.item));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64, prev: u64) -> LiveMsg<u64> {
        LiveMsg {
            seq,
            prev,
            item: seq,
        }
    }

    fn seqs(out: &Output<u64>) -> Vec<u64> {
        out.deliver.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn messages_wait_for_the_baseline_and_older_ones_are_dropped() {
        let mut f = Feed::default();
        assert_eq!(f.baseline(), None);
        assert!(f.live(m(5, 3)).deliver.is_empty());
        assert!(f.live(m(8, 5)).deliver.is_empty());
        let out = f.established(5);
        assert_eq!(seqs(&out), vec![8]);
        assert_eq!(f.baseline(), Some(5));
    }

    #[test]
    fn a_missing_predecessor_is_filled_before_what_follows() {
        let mut f = Feed::default();
        f.established(2);
        assert_eq!(seqs(&f.live(m(4, 2))), vec![4]);
        // 6 was lost; 9 names it as its predecessor.
        let out = f.live(m(9, 6));
        assert!(out.deliver.is_empty());
        assert_eq!(out.fill, Some((4, Some(8))));
        assert!(f.live(m(11, 9)).deliver.is_empty(), "waits behind the fill");
        let out = f.filled(vec![(6, 6)]);
        assert_eq!(seqs(&out), vec![6, 9, 11]);
        assert_eq!(out.fill, None);
        assert!(
            f.live(m(11, 9)).deliver.is_empty(),
            "a duplicate is dropped"
        );
    }

    #[test]
    fn a_predecessor_dropped_before_the_fill_is_not_waited_for() {
        let mut f = Feed::default();
        f.established(2);
        let out = f.live(m(9, 6));
        assert_eq!(out.fill, Some((2, Some(8))));
        // 6 expired before the fill read it: 9 goes on anyway, and no second fill starts.
        let out = f.filled(vec![]);
        assert_eq!(seqs(&out), vec![9]);
        assert_eq!(out.fill, None);
    }

    #[test]
    fn resync_reads_after_the_last_and_reset_starts_over() {
        let mut f = Feed::default();
        f.established(7);
        assert_eq!(f.resync(false).fill, Some((7, None)));
        assert_eq!(seqs(&f.filled(vec![(7, 7), (8, 8)])), vec![8]);
        assert_eq!(f.resync(true).fill, Some((0, None)));
        assert_eq!(seqs(&f.filled(vec![(1, 1)])), vec![1]);
        assert_eq!(f.last(), 1);
    }
}
