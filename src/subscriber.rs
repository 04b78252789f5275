//! Subscriber actor: owns the pod's delivery subscriptions (users, topics, broadcast) and
//! turns what arrives into deliveries for the Registry. The control subjects belong to the
//! control plane (`control`).
//!
//! Interest routing: `<prefix>.user.<id>` is subscribed exactly while the Registry holds a
//! session of that user (`Interest::Add` on the first, `Interest::Remove` after the last),
//! never through a wildcard. Broadcast is one subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::stream::{self, AbortHandle, Abortable, SelectAll, StreamExt};
use herald_proto::{
    Subjects, HEADER_DEVICE, HEADER_EVENT, HEADER_LAST_SEQUENCE, HEADER_MSG_ID, HEADER_SEQUENCE,
};
use std::task::Waker;
use tokio::sync::oneshot;

use crate::bus::{Bus, BusMessage, Subscription};
use crate::handoff::InFlight;
use crate::ids::{DeviceId, UserId};
use crate::mailbox::{AwaitInterest, Interest};
use crate::message::{encode_frame, new_message_id, Delivery, Target};
use crate::registry::{Deliver, Registry};
use crate::store::feed::{Feed, LiveMsg, Output as FeedOutput};
use crate::store::{Audience, Store};

/// The device a user message is for, from its `Herald-Device`: `Some(None)` for every
/// session of the user, `None` for nobody (a device no session can have must not fall back
/// to everyone).
fn device_target(subject: &str, header: Option<&str>) -> Option<Option<DeviceId>> {
    match header.map(DeviceId::parse) {
        None => Some(None),
        Some(Ok(d)) => Some(Some(d)),
        Some(Err(_)) => {
            tracing::debug!(subject = %subject, "dropping message with an invalid Herald-Device");
            None
        }
    }
}

/// Retry a failed subscribe after this long.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// Someone waiting for a subscription to be in place; durable live feeds answer with
/// their baseline (see [`AwaitInterest`]).
type Waiter = oneshot::Sender<Option<u64>>;

/// Retry a failed JetStream read (baseline or fill) after this long.
const DURABLE_RETRY: Duration = Duration::from_millis(500);
/// Messages per read while filling a gap or resyncing.
const FILL_CHUNK: usize = 1000;

pub struct Subscriber {
    bus: Arc<dyn Bus>,
    registry: Addr<Registry>,
    subjects: Subjects,
    subs: HashMap<String, SubState>,
    /// Every active subscription, merged.
    streams: SelectAll<Abortable<Subscription>>,
    pump_waker: Option<Waker>,
    /// Subjects go onto the bus's one interest stream instead of a stream each.
    shared_interest: bool,
    seen: crate::dedup::RecentIds,
    /// Deliveries waiting in the Registry's mailbox (bounded).
    deliveries: Arc<InFlight>,
    /// Durable mode: the stream, and each interesting user's live feed by live subject.
    durable: Option<Arc<dyn Store>>,
    feeds: HashMap<String, Feed<Option<Delivery>>>,
    baseline_waiters: HashMap<String, Vec<Waiter>>,
}

enum SubState {
    /// Subscribe in flight; `wanted` turns false if interest ended meanwhile.
    Pending { wanted: bool, waiters: Vec<Waiter> },
    /// Subscribed; aborting the handle ends the stream, which unsubscribes on the bus. No
    /// handle: the subject is on the bus's shared interest stream.
    Active(Option<AbortHandle>),
}

impl Subscriber {
    pub fn new(
        registry: Addr<Registry>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        deliveries: Arc<InFlight>,
        durable: Option<Arc<dyn Store>>,
    ) -> Self {
        Subscriber {
            bus,
            registry,
            subjects,
            subs: HashMap::new(),
            streams: SelectAll::new(),
            pump_waker: None,
            shared_interest: false,
            seen: crate::dedup::RecentIds::default(),
            deliveries,
            durable,
            feeds: HashMap::new(),
            baseline_waiters: HashMap::new(),
        }
    }

    fn add(&mut self, subject: String, queue: Option<String>, ctx: &mut Context<Self>) {
        match self.subs.get_mut(&subject) {
            Some(SubState::Pending { wanted, .. }) => *wanted = true,
            Some(SubState::Active(_)) => {}
            None => {
                self.subs.insert(
                    subject.clone(),
                    SubState::Pending {
                        wanted: true,
                        waiters: Vec::new(),
                    },
                );
                self.start_subscribe(subject, queue, ctx);
            }
        }
    }

    fn start_subscribe(&mut self, subject: String, queue: Option<String>, ctx: &mut Context<Self>) {
        let bus = self.bus.clone();
        let s = subject.clone();
        let q = queue.clone();
        let shared = self.shared_interest && queue.is_none();
        ctx.spawn(
            async move {
                if shared {
                    bus.add_interest(s).await.map(|()| None)
                } else {
                    bus.subscribe(s, q).await.map(Some)
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| act.subscribed(subject, queue, res, ctx)),
        );
    }

    fn subscribed(
        &mut self,
        subject: String,
        queue: Option<String>,
        res: Result<Option<Subscription>, crate::bus::BusError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(SubState::Pending { wanted, waiters }) = self.subs.remove(&subject) else {
            return;
        };
        match res {
            Ok(sub) if wanted => {
                let handle = sub.map(|sub| {
                    let (stream, handle) = stream::abortable(sub);
                    self.streams.push(stream);
                    if let Some(w) = &self.pump_waker {
                        w.wake_by_ref();
                    }
                    handle
                });
                self.subs.insert(subject.clone(), SubState::Active(handle));
                if self.is_live_feed(&subject) {
                    // Ready once the baseline is known: waiters get it then.
                    self.feeds.insert(subject.clone(), Feed::default());
                    self.baseline_waiters.insert(subject.clone(), waiters);
                    self.fetch_baseline(subject, ctx);
                } else {
                    waiters.into_iter().for_each(|w| {
                        let _ = w.send(None);
                    });
                }
            }
            Ok(sub) => {
                // Interest ended while subscribing: a stream unsubscribes when dropped.
                if sub.is_none() {
                    self.bus.remove_interest(&subject);
                }
                waiters.into_iter().for_each(|w| {
                    let _ = w.send(None);
                })
            }
            Err(e) if wanted => {
                tracing::warn!(subject = %subject, error = %e, "subscribe failed; retrying");
                self.subs
                    .insert(subject.clone(), SubState::Pending { wanted, waiters });
                ctx.run_later(RESUBSCRIBE_DELAY, move |act, ctx| {
                    if act.subs.contains_key(&subject) {
                        act.start_subscribe(subject, queue, ctx);
                    }
                });
            }
            Err(_) => waiters.into_iter().for_each(|w| {
                let _ = w.send(None);
            }),
        }
    }

    fn remove(&mut self, subject: &str) {
        match self.subs.get_mut(subject) {
            Some(SubState::Pending { wanted, .. }) => *wanted = false,
            Some(SubState::Active(handle)) => {
                match handle {
                    // The aborted stream ends at its next poll and is dropped from the
                    // set, which unsubscribes on the bus.
                    Some(handle) => handle.abort(),
                    None => self.bus.remove_interest(subject),
                }
                self.subs.remove(subject);
            }
            None => {}
        }
        self.feeds.remove(subject);
        for w in self.baseline_waiters.remove(subject).unwrap_or_default() {
            let _ = w.send(None);
        }
    }

    fn is_live_feed(&self, subject: &str) -> bool {
        self.durable.is_some() && self.subjects.live_user_of(subject).is_some()
    }

    /// The stream and the user of a durable live subject (None outside durable mode).
    fn live_feed_of(&self, subject: &str) -> Option<(Arc<dyn Store>, UserId)> {
        let user = self.subjects.live_user_of(subject)?;
        Some((self.durable.clone()?, UserId::parse(user).ok()?))
    }

    /// Learn the newest kept sequence of the feed's user, so the feed knows where live
    /// delivery starts (and sessions where their replay ends).
    fn fetch_baseline(&mut self, subject: String, ctx: &mut Context<Self>) {
        let Some((durable, user)) = self.live_feed_of(&subject) else {
            return;
        };
        ctx.spawn(
            async move { durable.last_seq(&user).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let Some(feed) = act.feeds.get_mut(&subject) else {
                        return;
                    };
                    match res {
                        Ok(baseline) => {
                            let out = feed.established(baseline);
                            for w in act.baseline_waiters.remove(&subject).unwrap_or_default() {
                                let _ = w.send(Some(baseline));
                            }
                            act.apply(&subject, out, ctx);
                        }
                        Err(e) => {
                            tracing::warn!(subject = %subject, error = %e, "durable baseline not read; retrying");
                            ctx.run_later(DURABLE_RETRY, move |act, ctx| {
                                if act.feeds.contains_key(&subject) {
                                    act.fetch_baseline(subject, ctx);
                                }
                            });
                        }
                    }
                }),
        );
    }

    /// Carry out what a feed decided: pass deliveries on, start a fill.
    fn apply(&mut self, subject: &str, out: FeedOutput<Option<Delivery>>, ctx: &mut Context<Self>) {
        // `None`: kept for a device no session can have; it only moves the feed on.
        for delivery in out.deliver.into_iter().filter_map(|(_, d)| d) {
            self.forward(delivery);
        }
        if let Some((after, upto)) = out.fill {
            self.fill(subject.to_string(), after, upto, ctx);
        }
    }

    /// Read the feed's user's kept messages after `after` (up to `upto`) and hand them to
    /// the feed, retrying while the stream cannot be read.
    fn fill(&mut self, subject: String, after: u64, upto: Option<u64>, ctx: &mut Context<Self>) {
        let Some((durable, user)) = self.live_feed_of(&subject) else {
            return;
        };
        tracing::debug!(subject = %subject, after, ?upto, "filling a gap from the stream");
        ctx.spawn(
            async move {
                let mut all = Vec::new();
                let mut from = after;
                loop {
                    let read = durable
                        .read(&user, from, upto, Audience::All, FILL_CHUNK)
                        .await?;
                    if let Some(last) = read.messages.last() {
                        from = last.seq;
                    }
                    let more = read.more;
                    all.extend(read.messages);
                    if !more {
                        return Ok::<_, crate::store::StoreError>((user, all));
                    }
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok((user, stored)) => {
                    let Some(feed) = act.feeds.get_mut(&subject) else {
                        return;
                    };
                    tracing::debug!(subject = %subject, filled = stored.len(), "gap filled");
                    let now = Instant::now();
                    let messages = stored
                        .into_iter()
                        .map(|s| {
                            let device = device_target(&subject, s.device.as_deref());
                            let delivery = device.map(|device| Delivery {
                                target: Target::User {
                                    user: user.clone(),
                                    device,
                                },
                                frame: s.frame,
                                received_at: now,
                                seq: Some(s.seq),
                            });
                            (s.seq, delivery)
                        })
                        .collect();
                    let out = feed.filled(messages);
                    act.apply(&subject, out, ctx);
                }
                Err(e) => {
                    tracing::warn!(subject = %subject, error = %e, "durable fill failed; retrying");
                    ctx.run_later(DURABLE_RETRY, move |act, ctx| {
                        if act.feeds.get(&subject).is_some_and(|f| f.is_filling()) {
                            act.fill(subject, after, upto, ctx);
                        }
                    });
                }
            }),
        );
    }

    fn forward(&mut self, delivery: Delivery) {
        self.deliveries.started();
        self.registry.do_send(Deliver(delivery));
    }

    /// A republished message of durable mode: put in order by the user's feed.
    fn on_live(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        let received_at = Instant::now();
        let Some((durable, user)) = self.live_feed_of(&msg.subject) else {
            return;
        };
        let Some(seq) = msg
            .header(HEADER_SEQUENCE)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            tracing::debug!(subject = %msg.subject, "live message without Nats-Sequence dropped");
            return;
        };
        let prev = msg
            .header(HEADER_LAST_SEQUENCE)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        // Kept in order even when its device is invalid; it is then delivered to nobody.
        let device = device_target(&msg.subject, msg.header(HEADER_DEVICE));
        let stored = durable.stored(
            seq,
            msg.header(HEADER_MSG_ID),
            msg.header(HEADER_EVENT),
            msg.header(HEADER_DEVICE).map(str::to_string),
            &msg.payload,
        );
        let delivery = device.map(|device| Delivery {
            target: Target::User { user, device },
            frame: stored.frame,
            received_at,
            seq: Some(seq),
        });
        let subject = msg.subject;
        let Some(feed) = self.feeds.get_mut(&subject) else {
            return;
        };
        let out = feed.live(LiveMsg {
            seq,
            prev,
            item: delivery,
        });
        self.apply(&subject, out, ctx);
    }

    fn on_message(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        if self.durable.is_some() && self.subjects.live_user_of(&msg.subject).is_some() {
            return self.on_live(msg, ctx);
        }
        let received_at = Instant::now();
        let subjects = &self.subjects;
        let target = if let Some(user) = subjects.user_of(&msg.subject) {
            let Ok(user) = UserId::parse(user) else {
                return;
            };
            let Some(device) = device_target(&msg.subject, msg.header(HEADER_DEVICE)) else {
                return;
            };
            Target::User { user, device }
        } else if msg.subject == subjects.broadcast() {
            Target::Broadcast
        } else if let Some(topic) = subjects.topic_of(&msg.subject) {
            Target::Topic(topic.to_string())
        } else {
            tracing::debug!(subject = %msg.subject, "message on an unexpected subject");
            return;
        };
        let id = match msg.header(HEADER_MSG_ID).filter(|s| !s.is_empty()) {
            Some(id) => {
                if self.seen.seen_before(&msg.subject, id, received_at) {
                    tracing::debug!(subject = %msg.subject, "duplicate Nats-Msg-Id dropped");
                    return;
                }
                id.to_string()
            }
            None => new_message_id(),
        };
        let topic = match &target {
            Target::Topic(t) => Some(t.as_str()),
            _ => None,
        };
        let frame = encode_frame(
            &id,
            &id,
            target.source(),
            topic,
            msg.header(HEADER_EVENT),
            &msg.payload,
        );
        self.forward(Delivery {
            target,
            frame,
            received_at,
            seq: None,
        });
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Pump);
        if let Some(shared) = self.bus.take_interest_stream() {
            self.streams.push(stream::abortable(shared).0);
            self.shared_interest = true;
        }
        let broadcast = self.subjects.broadcast();
        self.add(broadcast, None, ctx);
    }
}

/// Messages handled per wake-up before yielding to the mailbox.
const MESSAGES_PER_WAKE: usize = 256;

/// Drains every subscription. All of them live in one `SelectAll`, which polls only the
/// streams that were woken: adding each subscription to the actor context instead would
/// poll every one of them on every message, which is quadratic with thousands of users.
struct Pump;

impl ActorFuture<Subscriber> for Pump {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut Subscriber,
        ctx: &mut Context<Subscriber>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        for _ in 0..MESSAGES_PER_WAKE {
            if !act.deliveries.has_room(task.waker()) {
                // The Registry is behind: leave messages in the bus's bounded buffers.
                return Poll::Pending;
            }
            match act.streams.poll_next_unpin(task) {
                Poll::Ready(Some(msg)) => act.on_message(msg, ctx),
                // Nothing to read (or no subscription at all): wait for a message, or
                // for a subscription to be added, which the set itself does not signal.
                Poll::Ready(None) | Poll::Pending => {
                    if !act
                        .pump_waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(task.waker()))
                    {
                        act.pump_waker = Some(task.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Handler<Interest> for Subscriber {
    type Result = ();
    fn handle(&mut self, msg: Interest, ctx: &mut Context<Self>) {
        match msg {
            Interest::Add(s) => self.add(s, None, ctx),
            Interest::Remove(s) => self.remove(&s),
        }
    }
}

impl Handler<AwaitInterest> for Subscriber {
    type Result = ResponseFuture<Option<u64>>;
    fn handle(&mut self, msg: AwaitInterest, _: &mut Context<Self>) -> Self::Result {
        let waiters = match self.subs.get_mut(&msg.0) {
            Some(SubState::Pending { waiters, .. }) => Some(waiters),
            _ => match self.feeds.get(&msg.0) {
                Some(feed) => match feed.baseline() {
                    Some(b) => return Box::pin(async move { Some(b) }),
                    None => self.baseline_waiters.get_mut(&msg.0),
                },
                None => None,
            },
        };
        match waiters {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Box::pin(async move { rx.await.ok().flatten() })
            }
            None => Box::pin(async { None }),
        }
    }
}

/// Durable mode: live traffic may have been missed (the bus reconnected) or the stream
/// was re-created (`reset`: sequences start over); every feed reads the stream again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    pub reset: bool,
}

impl Handler<Resync> for Subscriber {
    type Result = ();
    fn handle(&mut self, msg: Resync, ctx: &mut Context<Self>) {
        let subjects: Vec<String> = self.feeds.keys().cloned().collect();
        tracing::info!(
            feeds = subjects.len(),
            reset = msg.reset,
            "durable feeds resync from the stream"
        );
        for subject in subjects {
            if let Some(feed) = self.feeds.get_mut(&subject) {
                let out = feed.resync(msg.reset);
                self.apply(&subject, out, ctx);
            }
        }
    }
}
