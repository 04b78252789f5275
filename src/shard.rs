//! Registry shards: one per worker thread, owning the fan-out to the sessions that live on
//! that thread (see `session::io`).
//!
//! The Registry stays the one owner of session state and user-wide rules (limits,
//! takeover, presence, topics), so those stay exact. What it hands a shard is one
//! [`ShardDeliver`] per message and shard — not one mailbox message per recipient — and
//! the shard queues the shared frame into each recipient's buffer, then writes every
//! buffer it touched once, at the end of its wake-up: frames that arrive together leave in
//! one write. A session whose socket cannot take it all is left to its own writer.
//!
//! A write pass over thousands of sessions is done in slices of [`WRITE_SLICE`], giving the
//! mailbox a turn between them, and a message for a few sessions that arrives during a pass
//! is written at once: an addressed message does not wait for a broadcast to reach every
//! other session of the shard. Frames to one session still leave in the order they came,
//! because each write takes the session's whole queue.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::mailbox::{Recipients, ShardDeliver};
use crate::metrics::{Metrics, SourceLabel, SourceLabels};
use crate::registry::{AddShard, Registry};
use crate::session::io::{with_local, Offer, SharedIo};

/// Sessions written per turn of a write pass before the shard yields to its mailbox.
const WRITE_SLICE: usize = 256;
/// A message for at most this many sessions, arriving during a write pass, is written at
/// once instead of at the end of the pass.
const WRITE_AT_ONCE: usize = 16;

/// Shard ids, in the order their threads first took a session.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, once it has one, and the Registry it belongs to.
    static THIS_SHARD: RefCell<Option<(Addr<Registry>, usize)>> = const { RefCell::new(None) };
}

pub struct Shard {
    id: usize,
    metrics: Arc<Metrics>,
    /// Sessions whose queue this wake-up made non-empty: written by [`WriteTouched`].
    touched: Vec<SharedIo>,
    /// The write pass in progress: what is left of the `touched` it took.
    writing: Option<std::vec::IntoIter<SharedIo>>,
}

impl Shard {
    /// The shard of the calling thread, started (and introduced to `registry`) on first
    /// use. Must be called on the thread the session will run on. A thread that meets a
    /// second Registry (a second pod in one process) starts a shard for it.
    pub fn current(registry: &Addr<Registry>, metrics: &Arc<Metrics>) -> usize {
        let known = THIS_SHARD.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(r, _)| r == registry)
                .map(|(_, id)| *id)
        });
        if let Some(id) = known {
            return id;
        }
        let id = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
        let shard = Shard {
            id,
            metrics: metrics.clone(),
            touched: Vec::new(),
            writing: None,
        }
        .start();
        // Sent before any session of this shard attaches (same sender, same queue).
        registry.do_send(AddShard {
            id,
            shard: shard.recipient(),
        });
        THIS_SHARD.with(|c| *c.borrow_mut() = Some((registry.clone(), id)));
        tracing::debug!(shard = id, "shard started on this thread");
        id
    }

    fn offer(&mut self, io: &SharedIo, msg: &ShardDeliver, tally: &mut Tally) {
        match io
            .borrow_mut()
            .offer(msg.frame.as_bytes(), &msg.deflated, msg.topic.as_deref())
        {
            Offer::Queued { first } => {
                tally.sent += 1;
                if first {
                    self.touched.push(io.clone());
                }
            }
            Offer::Dropped => tally.dropped += 1,
            Offer::Skipped => {}
        }
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    dropped: u64,
}

impl Actor for Shard {
    type Context = Context<Self>;
}

impl Handler<ShardDeliver> for Shard {
    type Result = ();

    fn handle(&mut self, msg: ShardDeliver, ctx: &mut Context<Self>) {
        let pass_running = self.writing.is_some() || !self.touched.is_empty();
        let mut tally = Tally::default();
        with_local(self.id, |sessions| match &msg.to {
            Recipients::All => {
                for io in sessions.values() {
                    self.offer(io, &msg, &mut tally);
                }
            }
            Recipients::Sessions(ids) => {
                for id in ids {
                    if let Some(io) = sessions.get(id) {
                        self.offer(io, &msg, &mut tally);
                    }
                }
                if self.writing.is_some() && ids.len() <= WRITE_AT_ONCE {
                    for io in ids.iter().filter_map(|id| sessions.get(id)) {
                        io.borrow_mut().write_now();
                    }
                }
            }
        });
        if !pass_running && !self.touched.is_empty() {
            // Runs after the rest of this wake-up's mailbox: one write per session.
            ctx.spawn(WriteTouched);
        }
        let m = &self.metrics;
        if tally.dropped > 0 {
            m.slow_consumer_drops.inc_by(tally.dropped);
        }
        if tally.sent > 0 {
            let source = if msg.topic.is_some() {
                SourceLabel::topic
            } else if matches!(msg.to, Recipients::All) {
                SourceLabel::broadcast
            } else {
                SourceLabel::user
            };
            m.messages_out
                .get_or_create(&SourceLabels { source })
                .inc_by(tally.sent);
            m.bytes_out.inc_by(tally.sent * msg.frame.len() as u64);
        }
    }
}

/// Writes every session the shard queued frames for, [`WRITE_SLICE`] at a time, until none
/// is left.
struct WriteTouched;

impl ActorFuture<Shard> for WriteTouched {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut Shard,
        _: &mut Context<Shard>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let pass = act
            .writing
            .get_or_insert_with(|| std::mem::take(&mut act.touched).into_iter());
        for io in pass.by_ref().take(WRITE_SLICE) {
            io.borrow_mut().write_now();
        }
        if pass.len() == 0 {
            act.writing = None;
            if act.touched.is_empty() {
                return std::task::Poll::Ready(());
            }
        }
        // More to write: let the mailbox (an addressed message, say) have a turn first.
        task.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
