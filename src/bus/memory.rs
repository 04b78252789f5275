//! In-process bus for standalone mode and tests: NATS subject semantics (wildcards, queue
//! groups, request/reply inboxes) without a network.
//!
//! Subscriptions are queues bounded at [`MAX_QUEUED`] messages: the only consumer is the pod's own Subscriber
//! actor, which drains them as fast as it hands messages on. A queue allocates nothing
//! until a message arrives (a channel would allocate a block of slots per subscription,
//! and standalone mode has one subscription per connected user).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use futures_util::Stream;

use super::{subject_matches, Bus, BusError, BusMessage, Outbound, Subscription};

/// Messages one subscription may hold before new ones are dropped (async-nats's default
/// subscription capacity), so a consumer that falls behind cannot grow memory without bound.
const MAX_QUEUED: usize = 65_536;

/// Messages waiting for one subscription, and who to wake when one arrives.
#[derive(Default)]
struct Inbox {
    messages: VecDeque<BusMessage>,
    waker: Option<Waker>,
}

type SharedInbox = Arc<Mutex<Inbox>>;

fn lock_inbox(inbox: &SharedInbox) -> std::sync::MutexGuard<'_, Inbox> {
    inbox.lock().unwrap_or_else(|p| p.into_inner())
}

struct Sub {
    pattern: String,
    queue: Option<String>,
    inbox: SharedInbox,
}

#[derive(Default)]
struct Inner {
    // Exact subjects are looked up directly; only wildcard patterns are scanned, so an
    // addressed publish costs one hash lookup however many users are subscribed.
    exact: HashMap<String, Vec<u64>>,
    wildcard: Vec<u64>,
    subs: HashMap<u64, Sub>,
    queue_turn: u64,
}

/// The in-process engine.
#[derive(Clone, Default)]
pub struct MemoryBus {
    // A std Mutex: critical sections are short and never await.
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping delivery, so recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MemorySubscription {
    id: u64,
    bus: MemoryBus,
    inbox: SharedInbox,
}

impl Stream for MemorySubscription {
    type Item = BusMessage;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        let mut inbox = lock_inbox(&self.inbox);
        match inbox.messages.pop_front() {
            Some(m) => Poll::Ready(Some(m)),
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let mut inner = self.bus.lock();
        if let Some(sub) = inner.subs.remove(&self.id) {
            if let Some(ids) = inner.exact.get_mut(&sub.pattern) {
                ids.retain(|i| *i != self.id);
                if ids.is_empty() {
                    inner.exact.remove(&sub.pattern);
                }
            }
            inner.wildcard.retain(|i| *i != self.id);
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, msg: Outbound) -> Result<(), BusError> {
        self.publish_now(msg)
    }

    fn publish_now(&self, msg: Outbound) -> Result<(), BusError> {
        let mut inner = self.lock();
        let mut targets: Vec<u64> = inner.exact.get(&msg.subject).cloned().unwrap_or_default();
        targets.extend(inner.wildcard.iter().copied().filter(|id| {
            inner
                .subs
                .get(id)
                .is_some_and(|s| subject_matches(&s.pattern, &msg.subject))
        }));
        // Queue groups: one member of each group gets the message, taking turns.
        let mut groups: HashMap<String, Vec<u64>> = HashMap::new();
        let mut plain = Vec::new();
        for id in targets {
            match inner.subs.get(&id).and_then(|s| s.queue.clone()) {
                Some(q) => groups.entry(q).or_default().push(id),
                None => plain.push(id),
            }
        }
        inner.queue_turn = inner.queue_turn.wrapping_add(1);
        for members in groups.values() {
            plain.push(members[(inner.queue_turn as usize) % members.len()]);
        }
        let delivered = BusMessage {
            subject: msg.subject,
            reply: msg.reply,
            headers: msg.headers,
            payload: msg.payload,
        };
        let mut wake = Vec::new();
        for id in plain {
            if let Some(sub) = inner.subs.get(&id) {
                let mut inbox = lock_inbox(&sub.inbox);
                if inbox.messages.len() >= MAX_QUEUED {
                    // As NATS does with a slow subscriber: drop rather than grow.
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                    if n.is_multiple_of(10_000) {
                        tracing::warn!(subject = %delivered.subject, dropped = n + 1, "in-process bus: subscriber too slow, messages dropped");
                    }
                    continue;
                }
                inbox.messages.push_back(delivered.clone());
                wake.extend(inbox.waker.take());
            }
        }
        drop(inner);
        wake.into_iter().for_each(Waker::wake);
        Ok(())
    }

    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, BusError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = SharedInbox::default();
        let mut inner = self.lock();
        if subject.split('.').any(|t| t == "*" || t == ">") {
            inner.wildcard.push(id);
        } else {
            inner.exact.entry(subject.clone()).or_default().push(id);
        }
        inner.subs.insert(
            id,
            Sub {
                pattern: subject,
                queue,
                inbox: inbox.clone(),
            },
        );
        drop(inner);
        Ok(Box::pin(MemorySubscription {
            id,
            bus: self.clone(),
            inbox,
        }))
    }

    fn new_inbox(&self) -> String {
        format!("_INBOX.{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn engine(&self) -> &'static str {
        "memory"
    }
}
