//! Waiting for delivery receipts (PROTOCOL §5c): an HTTP publish with `await` is answered
//! as soon as a matching receipt exists, whichever pod the acking session is on.
//!
//! One subscription per pod on `<prefix>.receipts.>`, made when the first publish awaits
//! and kept, feeds every waiter: a thousand waiting publishes cost a map entry each, not a
//! NATS subscription each. A waiter is registered before its message is published, so a
//! receipt cannot slip between the publish and the wait; receipts seen in the last
//! [`RECENT_WINDOW`] are remembered too, so a publish repeated with the id of a message
//! already acknowledged is answered at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_proto::events::Receipt;
use herald_proto::Subjects;
use tokio::sync::{oneshot, OnceCell};

use crate::bus::{Bus, BusError};
use crate::metrics::Metrics;

/// How long a receipt is remembered for publishes that start waiting after it.
pub const RECENT_WINDOW: Duration = Duration::from_secs(120);
/// Most receipts remembered at once.
const RECENT_CAPACITY: usize = 50_000;
/// Longest wait an HTTP publish may ask for.
pub const MAX_AWAIT: Duration = Duration::from_secs(60);

/// Which receipt a publish waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Any status when absent.
    pub status: Option<String>,
    /// Any device when absent.
    pub device: Option<String>,
}

impl Wanted {
    pub fn matches(&self, r: &Receipt) -> bool {
        self.status.as_ref().is_none_or(|s| *s == r.status)
            && self
                .device
                .as_ref()
                .is_none_or(|d| r.device.as_deref() == Some(d.as_str()))
    }
}

struct Waiter {
    token: u64,
    wanted: Wanted,
    tx: oneshot::Sender<Receipt>,
}

#[derive(Default)]
struct State {
    /// By (user, message id).
    waiters: HashMap<(String, String), Vec<Waiter>>,
    recent: HashMap<(String, String), Vec<Receipt>>,
    order: VecDeque<(Instant, (String, String))>,
}

pub struct Receipts {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    metrics: Arc<Metrics>,
    listening: OnceCell<()>,
    state: Mutex<State>,
    next_token: AtomicU64,
}

/// A registered wait; dropping it unregisters.
pub struct Wait {
    receipts: Arc<Receipts>,
    key: (String, String),
    token: u64,
    rx: Option<oneshot::Receiver<Receipt>>,
}

impl Receipts {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects, metrics: Arc<Metrics>) -> Arc<Receipts> {
        Arc::new(Receipts {
            bus,
            subjects,
            metrics,
            listening: OnceCell::new(),
            state: Mutex::new(State::default()),
            next_token: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make sure this pod hears every receipt (once; resolves when the subscription is in
    /// place). Call within the pod's runtime.
    pub async fn listen(self: &Arc<Self>) -> Result<(), BusError> {
        self.listening
            .get_or_try_init(|| async {
                let mut sub = self
                    .bus
                    .subscribe(self.subjects.receipts_any(), None)
                    .await?;
                let me = Arc::downgrade(self);
                actix::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        let Some(me) = me.upgrade() else { return };
                        match serde_json::from_slice::<Receipt>(&msg.payload) {
                            Ok(r)
                                if me.subjects.receipts_user_of(&msg.subject) == Some(&r.user) =>
                            {
                                me.on_receipt(r)
                            }
                            _ => tracing::debug!(subject = %msg.subject, "not a receipt; ignored"),
                        }
                    }
                });
                tracing::info!("listening for delivery receipts");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Wait for a receipt of `user`'s message `id` matching `wanted`; register before the
    /// message is published.
    pub fn register(self: &Arc<Self>, user: &str, id: &str, wanted: Wanted) -> Wait {
        let key = (user.to_string(), id.to_string());
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        let seen = state
            .recent
            .get(&key)
            .and_then(|rs| rs.iter().find(|r| wanted.matches(r)).cloned());
        match seen {
            Some(r) => {
                let _ = tx.send(r);
            }
            None => {
                state
                    .waiters
                    .entry(key.clone())
                    .or_default()
                    .push(Waiter { token, wanted, tx });
                self.metrics.awaits_pending.inc();
            }
        }
        Wait {
            receipts: self.clone(),
            key,
            token,
            rx: Some(rx),
        }
    }

    fn on_receipt(&self, r: Receipt) {
        let key = (r.user.clone(), r.id.clone());
        let mut state = self.lock();
        let now = Instant::now();
        while let Some((t, _)) = state.order.front() {
            if now.duration_since(*t) < RECENT_WINDOW && state.order.len() < RECENT_CAPACITY {
                break;
            }
            if let Some((_, old)) = state.order.pop_front() {
                state.recent.remove(&old);
            }
        }
        if let Some(waiters) = state.waiters.remove(&key) {
            let (hit, rest): (Vec<Waiter>, Vec<Waiter>) =
                waiters.into_iter().partition(|w| w.wanted.matches(&r));
            for w in hit {
                self.metrics.awaits_pending.dec();
                let _ = w.tx.send(r.clone());
            }
            if !rest.is_empty() {
                state.waiters.insert(key.clone(), rest);
            }
        }
        state.order.push_back((now, key.clone()));
        state.recent.entry(key).or_default().push(r);
    }

    fn unregister(&self, key: &(String, String), token: u64) {
        let mut state = self.lock();
        if let Some(waiters) = state.waiters.get_mut(key) {
            let before = waiters.len();
            waiters.retain(|w| w.token != token);
            if waiters.len() < before {
                self.metrics.awaits_pending.dec();
            }
            if waiters.is_empty() {
                state.waiters.remove(key);
            }
        }
    }
}

impl Wait {
    /// The receipt, or None when `timeout` passed first.
    pub async fn receipt(mut self, timeout: Duration) -> Option<Receipt> {
        let rx = self.rx.take()?;
        let got = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        let outcome = if got.is_some() {
            crate::metrics::AWAIT_ANSWERED
        } else {
            crate::metrics::AWAIT_TIMED_OUT
        };
        self.receipts
            .metrics
            .awaits
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
        got
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.receipts.unregister(&self.key, self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;

    fn receipt(id: &str, status: &str, device: Option<&str>) -> Receipt {
        Receipt {
            id: id.into(),
            user: "u1".into(),
            session: "s".into(),
            device: device.map(Into::into),
            pod: "p".into(),
            status: status.into(),
            at: "t".into(),
        }
    }

    fn receipts() -> Arc<Receipts> {
        Receipts::new(
            Arc::new(MemoryBus::new()),
            Subjects::new("h"),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn a_wait_gets_the_first_matching_receipt_and_others_keep_waiting() {
        let r = receipts();
        let printed = r.register(
            "u1",
            "m1",
            Wanted {
                status: Some("printed".into()),
                device: None,
            },
        );
        let any = r.register("u1", "m1", Wanted::default());
        let on_pos = r.register(
            "u1",
            "m1",
            Wanted {
                status: None,
                device: Some("pos".into()),
            },
        );
        r.on_receipt(receipt("m1", "received", None));
        let got = any.receipt(Duration::from_secs(1)).await;
        assert_eq!(got.map(|g| g.status).as_deref(), Some("received"));
        r.on_receipt(receipt("m1", "printed", Some("pos")));
        assert!(printed.receipt(Duration::from_secs(1)).await.is_some());
        assert!(on_pos.receipt(Duration::from_secs(1)).await.is_some());
        assert_eq!(r.lock().waiters.len(), 0);
    }

    #[tokio::test]
    async fn a_receipt_seen_before_the_wait_counts_and_a_timeout_unregisters() {
        let r = receipts();
        r.on_receipt(receipt("m2", "printed", None));
        let early = r.register("u1", "m2", Wanted::default());
        assert!(early.receipt(Duration::from_millis(10)).await.is_some());
        let late = r.register("u1", "m3", Wanted::default());
        assert!(late.receipt(Duration::from_millis(10)).await.is_none());
        assert_eq!(r.lock().waiters.len(), 0, "a timed-out wait is gone");
    }
}
