//! Registry actor: the pod's single owner of session state. It attaches and detaches
//! sessions, keeps the user and device indexes, enforces limits and takeovers, evicts idle
//! and expired sessions, answers local presence, fans messages out and drains the pod.
//!
//! Lifecycle: a session is attached before its WebSocket upgrade completes (so refusals
//! are plain HTTP) and leaves the index either when it reports `Detach` or, for closes
//! the Registry decides (eviction, takeover, kick, drain), at once — a session whose
//! socket no longer drains cannot keep itself registered.

pub mod access;
pub mod index;
pub mod remote;
pub mod shed;
pub mod user_limit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use herald_proto::control::Control;
use herald_proto::events::PresenceEvent;
use herald_proto::{CloseCode, Subjects};
use tokio::sync::oneshot;

use crate::auth::Identity;
use crate::bus::{Bus, Outbound};
use crate::ids::{DeviceId, SessionId, UserId};
use crate::link::Link;
use crate::mailbox::{
    AwaitInterest, ForSession, Interest, InterestHandle, Recipients, SessionHandle, ShardDeliver,
    ShardHandle,
};
use crate::message::{Delivery, Target};
use crate::metrics::{MapLabels, Metrics, SourceLabel, SourceLabels};
pub use index::{Entry, Index, Limits, Refusal};
pub use shed::Shed;

/// How often the sweep looks for idle and expired sessions, at most.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pings are sent in this many slices per heartbeat, so they are spread over the interval
/// instead of leaving in one burst.
const PING_SLICES: u32 = 100;
/// Durable mode: longest wait at attach for the user's feed to learn where the stream
/// stands; past it the handshake is refused with 503.
const DURABLE_ATTACH_WAIT: Duration = Duration::from_secs(5);
/// Drain closes sessions in slices this often.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Everything the Registry needs from the rest of the pod.
pub struct RegistryDeps {
    pub limits: Limits,
    /// WebSocket ping interval.
    pub heartbeat: Duration,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub pod: String,
    pub metrics: Arc<Metrics>,
    /// Other pods may exist: announce takeovers on the control subject.
    pub clustered: bool,
    /// Durable mode: users' live traffic comes from the stream's republished subjects.
    pub durable: bool,
    /// Deliveries the Subscriber handed over and this Registry has not handled yet.
    pub deliveries: Arc<crate::handoff::InFlight>,
    /// Revocations and blocks: checked again at attach, enforced on live sessions.
    pub access: Arc<crate::access::AccessList>,
}

pub struct Registry {
    index: Index<SessionHandle>,
    deps: RegistryDeps,
    subscriber: Option<InterestHandle>,
    /// Every worker thread's shard, by shard id.
    shards: Vec<Option<ShardHandle>>,
    draining: bool,
    drain: Option<DrainState>,
    /// Session-topic pairs, for the gauge.
    topic_subscriptions: i64,
    ping_slice: u64,
    /// Durable mode: the sequence of the last message fanned out to each user with local
    /// sessions. A session attached now gets every later one live, so its replay ends here.
    last_seq: std::collections::HashMap<UserId, u64>,
    /// The users' sessions on other pods, for the cluster-wide per-user limit.
    remote: remote::RemoteSessions,
    /// Clients shed for rebalancing lately.
    shed_recently: shed::ShedRecently,
}

struct DrainState {
    pending: Vec<SessionId>,
    total: usize,
    started: Instant,
    window: Duration,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Registry {
    pub fn new(deps: RegistryDeps) -> Registry {
        Registry {
            index: Index::new(deps.limits),
            deps,
            subscriber: None,
            shards: Vec::new(),
            draining: false,
            drain: None,
            topic_subscriptions: 0,
            ping_slice: 0,
            last_seq: std::collections::HashMap::new(),
            remote: remote::RemoteSessions::default(),
            shed_recently: shed::ShedRecently::new(),
        }
    }

    /// The subject a user's messages reach this pod on.
    fn user_subject(&self, user: &UserId) -> String {
        if self.deps.durable {
            self.deps.subjects.live_user(user.as_str())
        } else {
            self.deps.subjects.user(user.as_str())
        }
    }

    fn update_gauges(&self) {
        let m = &self.deps.metrics;
        m.connections.set(self.index.open_connections() as i64);
        m.users.set(self.index.users() as i64);
        m.topics.set(self.index.topic_count() as i64);
        m.topic_subscriptions.set(self.topic_subscriptions);
    }

    fn publish(&self, msg: Outbound) {
        let bus = self.deps.bus.clone();
        actix::spawn(async move {
            if let Err(e) = bus.publish(msg).await {
                tracing::debug!(error = %e, "event not published");
            }
        });
    }

    fn presence_event(
        &self,
        user: &UserId,
        session: SessionId,
        device: Option<&DeviceId>,
        reason: Option<&str>,
        at_ms: u64,
    ) {
        let event = PresenceEvent {
            user: user.to_string(),
            event: if reason.is_some() {
                "disconnect"
            } else {
                "connect"
            }
            .to_string(),
            session: session.to_string(),
            device: device.map(|d| d.to_string()),
            pod: self.deps.pod.clone(),
            reason: reason.map(str::to_string),
            // A connect carries the attach time: every pod orders the user's sessions by it.
            at: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
            )
            .to_string(),
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        self.publish(Outbound::new(
            self.deps.subjects.presence_event(user.as_str()),
            payload,
        ));
    }

    /// Remove a session from every index and tell whoever needs to know.
    fn forget(&mut self, id: SessionId, reason: &str) -> Option<Entry<SessionHandle>> {
        let removed = self.index.remove(id)?;
        let entry = removed.entry;
        if let Some(sub) = &self.subscriber {
            if removed.last_of_user {
                sub.interest
                    .do_send(Interest::Remove(self.user_subject(&entry.user)));
            }
        }
        if removed.last_of_user {
            self.last_seq.remove(&entry.user);
        }
        if let Some(sub) = &self.subscriber {
            for topic in &removed.topics_emptied {
                sub.interest
                    .do_send(Interest::Remove(self.deps.subjects.topic(topic)));
            }
        }
        self.topic_subscriptions -= entry.topics.len() as i64;
        self.presence_event(
            &entry.user,
            id,
            entry.device.as_ref(),
            Some(reason),
            crate::clock::wall_ms(),
        );
        self.update_gauges();
        self.check_drained();
        Some(entry)
    }

    /// Close a session the Registry decided to end, and forget it now. Its connection
    /// counts until its actor stops (after the close handshake).
    fn close(&mut self, id: SessionId, code: CloseCode) {
        if let Some(entry) = self.forget(id, code.reason()) {
            self.index.mark_closing(id);
            self.update_gauges();
            entry.handle.do_send(ForSession::Close(code));
        }
    }

    /// Ping one slice of the sessions: over one heartbeat every session gets one ping,
    /// with one pod-wide timer instead of one per session.
    fn ping_slice(&mut self) {
        let slices = u64::from(PING_SLICES);
        let slice = self.ping_slice % slices;
        self.ping_slice = self.ping_slice.wrapping_add(1);
        for (id, e) in self.index.all() {
            if id.slot(slices) == slice {
                e.handle.do_send(ForSession::Heartbeat);
            }
        }
    }

    fn sweep(&mut self) {
        let now_ms = crate::clock::now_ms();
        let found = self
            .index
            .sweep(Instant::now(), now_ms, crate::auth::now_secs());
        for (id, code) in found {
            tracing::debug!(session = %id, code = code.code(), "evicting");
            self.close(id, code);
        }
        for (map, n) in self.index.sizes() {
            self.deps
                .metrics
                .registry_entries
                .get_or_create(&MapLabels { map })
                .set(n as i64);
        }
    }

    fn drain_tick(&mut self) {
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        let elapsed = drain.started.elapsed();
        let due = if drain.window.is_zero() || elapsed >= drain.window {
            drain.total
        } else {
            // Spread evenly: by time t, t/window of the sessions are closed.
            ((drain.total as f64) * elapsed.as_secs_f64() / drain.window.as_secs_f64()).ceil()
                as usize
        };
        let closed = drain.total - drain.pending.len();
        let take = due.saturating_sub(closed).min(drain.pending.len());
        let batch: Vec<SessionId> = drain.pending.drain(..take).collect();
        for id in batch {
            self.close(id, CloseCode::Restart);
        }
        self.check_drained();
    }

    fn check_drained(&mut self) {
        // Sessions that left on their own need no closing: once none is left, the drain
        // is done, even if the window has not run out.
        let done = self.drain.is_some() && self.index.connections() == 0;
        if done {
            if let Some(d) = self.drain.take() {
                tracing::info!(
                    sessions = d.total,
                    took_ms = d.started.elapsed().as_millis() as u64,
                    "drain complete"
                );
                for w in d.waiters {
                    let _ = w.send(());
                }
            }
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = (self.deps.limits.idle_timeout / 4)
            .clamp(Duration::from_millis(50), MAX_SWEEP_INTERVAL);
        ctx.run_interval(every, |act, _| act.sweep());
        ctx.run_interval(DRAIN_TICK, |act, _| act.drain_tick());
        let every = (self.deps.heartbeat / PING_SLICES).max(Duration::from_millis(1));
        ctx.run_interval(every, |act, _| act.ping_slice());
    }
}

/// Connect the Registry to the pod's Subscriber (they reference each other).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSubscriber(pub InterestHandle);

impl Handler<SetSubscriber> for Registry {
    type Result = ();
    fn handle(&mut self, msg: SetSubscriber, _: &mut Context<Self>) {
        self.subscriber = Some(msg.0);
    }
}

/// Attach a new session. Resolves once messages for its user reach this pod, so a
/// welcome sent after it never precedes lost messages. In durable mode it resolves with
/// the sequence after which the session is sent everything live: a replay ends there.
#[derive(Message)]
#[rtype(result = "Result<Option<u64>, Refusal>")]
pub struct Attach {
    pub id: SessionId,
    pub identity: Identity,
    pub session: SessionHandle,
    pub link: Arc<Link>,
    /// The shard the session runs on (see [`AddShard`]).
    pub shard: usize,
}

impl Handler<Attach> for Registry {
    type Result = ResponseFuture<Result<Option<u64>, Refusal>>;

    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Box::pin(async { Err(Refusal::Draining) });
        }
        let now = Instant::now();
        let attached_ms = crate::clock::wall_ms();
        // A revocation that arrived while the handshake was under way still holds.
        if let Err(denied) = self
            .deps
            .access
            .check(&msg.identity.user, msg.identity.token_mark())
        {
            return Box::pin(async move { Err(access::refusal(denied)) });
        }
        let Identity {
            user,
            device,
            expires_at,
            issued_at,
            token_id,
            ..
        } = msg.identity;
        let admission = match self.index.admit(&user, device.as_ref(), now) {
            Ok(a) => a,
            Err(r) => return Box::pin(async move { Err(r) }),
        };
        // The limit counts the user's sessions on every pod this pod has heard of.
        let staying_here =
            self.index.of_user(&user, None).count() - usize::from(admission.replaces.is_some());
        let elsewhere = self.remote_sessions(&user, device.as_ref().map(|d| d.as_str()));
        if elsewhere > 0 && staying_here + elsewhere + 1 > self.deps.limits.max_sessions_per_user {
            return Box::pin(async { Err(Refusal::TooManySessions) });
        }
        if let (Some(old), Some(d)) = (admission.replaces, device.as_ref()) {
            self.close(old, CloseCode::Replaced);
            self.index.record_takeover(&user, d, now);
            if self.deps.clustered {
                self.announce(Control::Replaced {
                    user: user.to_string(),
                    device: d.to_string(),
                    from_pod: self.deps.pod.clone(),
                });
            }
        }
        if let (Some(d), true) = (device.as_ref(), self.deps.clustered) {
            // The same device may be open on another pod: that pod closes it with 4001.
            self.announce(Control::Kick {
                user: user.to_string(),
                device: Some(d.to_string()),
                except: Some(msg.id.to_string()),
                before_ms: Some(attached_ms),
                code: CloseCode::Replaced.code(),
                from_pod: self.deps.pod.clone(),
            });
        }
        let subject = self.user_subject(&user);
        let first = self.index.insert(
            msg.id,
            Entry {
                user: user.clone(),
                device: device.clone(),
                handle: msg.session,
                link: msg.link,
                expires_at,
                issued_at,
                token_id,
                attached_ms,
                topics: Vec::new(),
                shard: msg.shard,
            },
        );
        self.presence_event(&user, msg.id, device.as_ref(), None, attached_ms);
        self.update_gauges();
        let known = self.last_seq.get(&user).copied();
        let Some(subscriber) = self.subscriber.clone() else {
            return Box::pin(async move { Ok(known) });
        };
        if first {
            subscriber.interest.do_send(Interest::Add(subject.clone()));
        }
        let durable = self.deps.durable;
        Box::pin(async move {
            // If the bus is down the interest comes back with it; the session may wait. In
            // durable mode the wait includes reading the stream, which may be down: bounded.
            let ask = subscriber.wait.send(AwaitInterest(subject));
            let baseline = if durable {
                tokio::time::timeout(DURABLE_ATTACH_WAIT, ask)
                    .await
                    .ok()
                    .and_then(|r| r.ok().flatten())
            } else {
                ask.await.ok().flatten()
            };
            // A message fanned out before this session was indexed is newer than the
            // feed's baseline; without one, everything after the baseline reaches it.
            Ok(known.or(baseline))
        })
    }
}

impl Registry {
    fn announce(&self, control: Control) {
        let payload = herald_proto::control::encode(&control);
        self.publish(Outbound::new(self.deps.subjects.ctl_all(), payload));
    }
}

/// A session ended on its own (client close, socket gone, or after a close the
/// Registry already decided, in which case it is no longer indexed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub id: SessionId,
    pub reason: &'static str,
}

impl Handler<Detach> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Detach, _: &mut Context<Self>) {
        if self.index.closed(msg.id) {
            self.update_gauges();
            self.check_drained();
        } else {
            self.forget(msg.id, msg.reason);
        }
    }
}

/// A session decided to close by itself (slow consumer, bad frames, idle, a framing
/// violation): it is offline from now, not when its close handshake ends. The Registry
/// forgets it at once (presence answers, the disconnect event) and keeps counting it
/// against the connection limit until its actor stops ([`Detach`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Departing {
    pub id: SessionId,
    pub reason: &'static str,
}

impl Handler<Departing> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Departing, _: &mut Context<Self>) {
        // Not indexed: the Registry decided this close and forgot it already.
        if self.index.get(msg.id).is_some() {
            self.forget(msg.id, msg.reason);
            self.index.mark_closing(msg.id);
            self.update_gauges();
        }
    }
}

/// Fan a message out to its local recipients.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Delivery);

impl Handler<Deliver> for Registry {
    type Result = ();
    fn handle(&mut self, Deliver(d): Deliver, _: &mut Context<Self>) {
        self.deps.deliveries.done();
        if let (Some(seq), Target::User { user, .. }) = (d.seq, &d.target) {
            if self.index.has_user(user) {
                self.last_seq.insert(user.clone(), seq);
            }
        }
        // One message per shard with recipients; the shards queue and count.
        match &d.target {
            Target::Broadcast => {
                let deflated = Arc::default();
                for shard in self.shards.iter().flatten() {
                    shard.do_send(ShardDeliver {
                        frame: d.frame.clone(),
                        deflated: Arc::clone(&deflated),
                        to: Recipients::All,
                        topic: None,
                    });
                }
            }
            Target::User { user, device } => {
                let per = per_shard(self.shards.len(), self.index.of_user(user, device.as_ref()));
                self.send_to_shards(per, &d.frame, None);
            }
            Target::Topic(topic) => {
                let per = per_shard(self.shards.len(), self.index.followers(topic));
                let topic: Arc<str> = Arc::from(topic.as_str());
                self.send_to_shards(per, &d.frame, Some(topic));
            }
        }
        let source: SourceLabel = d.target.source().into();
        let m = &self.deps.metrics;
        m.messages_in.get_or_create(&SourceLabels { source }).inc();
        m.delivery_latency
            .observe(d.received_at.elapsed().as_secs_f64());
    }
}

/// Recipients grouped by the shard they run on (shard ids are small and dense).
fn per_shard<'a, H: 'a>(
    shards: usize,
    entries: impl Iterator<Item = (SessionId, &'a Entry<H>)>,
) -> Vec<Vec<SessionId>> {
    let mut per: Vec<Vec<SessionId>> = Vec::new();
    for (id, e) in entries {
        if per.len() <= e.shard {
            per.resize_with((e.shard + 1).max(shards), Vec::new);
        }
        per[e.shard].push(id);
    }
    per
}

impl Registry {
    fn send_to_shards(
        &self,
        per: Vec<Vec<SessionId>>,
        frame: &crate::message::Frame,
        topic: Option<Arc<str>>,
    ) {
        let deflated: Arc<std::sync::OnceLock<bytes::Bytes>> = Arc::default();
        for (shard, ids) in per.into_iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            if let Some(Some(handle)) = self.shards.get(shard) {
                handle.do_send(ShardDeliver {
                    frame: frame.clone(),
                    deflated: Arc::clone(&deflated),
                    to: Recipients::Sessions(ids),
                    topic: topic.clone(),
                });
            }
        }
    }
}

/// A worker thread's shard, introduced before any of its sessions attaches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddShard {
    pub id: usize,
    pub shard: ShardHandle,
}

impl Handler<AddShard> for Registry {
    type Result = ();
    fn handle(&mut self, msg: AddShard, _: &mut Context<Self>) {
        if self.shards.len() <= msg.id {
            self.shards.resize_with(msg.id + 1, || None);
        }
        self.shards[msg.id] = Some(msg.shard);
    }
}

/// Close a user's local sessions: all, or those of one device; never `except`.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Kick {
    pub user: UserId,
    pub device: Option<DeviceId>,
    pub except: Option<String>,
    /// Only sessions attached before this time (ms since the epoch).
    pub before_ms: Option<u64>,
    pub code: CloseCode,
}

impl Handler<Kick> for Registry {
    type Result = usize;
    fn handle(&mut self, msg: Kick, _: &mut Context<Self>) -> usize {
        let ids: Vec<SessionId> = self
            .index
            .of_user(&msg.user, msg.device.as_ref())
            .filter(|(_, e)| msg.before_ms.is_none_or(|before| e.attached_ms < before))
            .map(|(id, _)| id)
            .filter(|id| msg.except.as_deref() != Some(id.to_string().as_str()))
            .collect();
        for id in &ids {
            self.close(*id, msg.code);
        }
        if msg.code == CloseCode::Replaced && !ids.is_empty() {
            if let Some(d) = &msg.device {
                self.index.record_takeover(&msg.user, d, Instant::now());
                if self.deps.clustered {
                    self.announce(Control::Replaced {
                        user: msg.user.to_string(),
                        device: d.to_string(),
                        from_pod: self.deps.pod.clone(),
                    });
                }
            }
        }
        ids.len()
    }
}

/// Another pod replaced a session of this device: count it for the takeover limit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TakeoverNoted {
    pub user: UserId,
    pub device: DeviceId,
}

impl Handler<TakeoverNoted> for Registry {
    type Result = ();
    fn handle(&mut self, msg: TakeoverNoted, _: &mut Context<Self>) {
        self.index
            .record_takeover(&msg.user, &msg.device, Instant::now());
    }
}

/// Sessions of a user on this pod.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct LocalPresence(pub UserId);

impl Handler<LocalPresence> for Registry {
    type Result = u64;
    fn handle(&mut self, msg: LocalPresence, _: &mut Context<Self>) -> u64 {
        self.index.of_user(&msg.0, None).count() as u64
    }
}

/// Hand a client frame to a session of `user` on this pod (an SSE session's POST);
/// false when this pod holds no such session.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ClientFrameFor {
    pub user: UserId,
    pub id: SessionId,
    pub frame: String,
}

impl Handler<ClientFrameFor> for Registry {
    type Result = bool;
    fn handle(&mut self, msg: ClientFrameFor, _: &mut Context<Self>) -> bool {
        match self.index.get(msg.id) {
            Some(e) if e.user == msg.user => {
                e.handle.do_send(ForSession::ClientFrame(msg.frame));
                true
            }
            _ => false,
        }
    }
}

/// This pod's connection and user counts.
#[derive(Message)]
#[rtype(result = "LocalCounts")]
pub struct LocalStats;

#[derive(Debug, Clone, Copy, MessageResponse)]
pub struct LocalCounts {
    pub connections: u64,
    /// Sessions not closing (the rebalancer's count: closing ones are leaving already).
    pub sessions: u64,
    pub users: u64,
    pub topics: u64,
    pub draining: bool,
}

impl Handler<LocalStats> for Registry {
    type Result = LocalCounts;
    fn handle(&mut self, _: LocalStats, _: &mut Context<Self>) -> LocalCounts {
        LocalCounts {
            connections: self.index.open_connections() as u64,
            sessions: self.index.connections() as u64,
            users: self.index.users() as u64,
            topics: self.index.topic_count() as u64,
            draining: self.draining,
        }
    }
}

/// Make a session follow a topic. Resolves to true once the topic's messages reach this
/// pod (so the `subscribed` reply is only sent when delivery has started), false when the
/// session is gone.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Follow {
    pub id: SessionId,
    pub topic: String,
}

impl Handler<Follow> for Registry {
    type Result = ResponseFuture<bool>;
    fn handle(&mut self, msg: Follow, _: &mut Context<Self>) -> Self::Result {
        if self.index.get(msg.id).is_none() {
            return Box::pin(async { false });
        }
        let subject = self.deps.subjects.topic(&msg.topic);
        if let Some(first) = self.index.follow(msg.id, &msg.topic) {
            self.topic_subscriptions += 1;
            self.update_gauges();
            if first {
                if let Some(sub) = &self.subscriber {
                    sub.interest.do_send(Interest::Add(subject.clone()));
                }
            }
        }
        let Some(subscriber) = self.subscriber.clone() else {
            return Box::pin(async { true });
        };
        Box::pin(async move {
            let _ = subscriber.wait.send(AwaitInterest(subject)).await;
            true
        })
    }
}

/// Stop a session following a topic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unfollow {
    pub id: SessionId,
    pub topic: String,
}

impl Handler<Unfollow> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Unfollow, _: &mut Context<Self>) {
        self.unfollow(msg.id, &msg.topic);
    }
}

impl Registry {
    /// Stop `id` following `topic`, dropping the pod's interest when it was the last local
    /// follower.
    fn unfollow(&mut self, id: SessionId, topic: &str) {
        let was_following = self
            .index
            .get(id)
            .is_some_and(|e| e.topics.iter().any(|t| **t == *topic));
        if !was_following {
            return;
        }
        self.topic_subscriptions -= 1;
        if self.index.unfollow(id, topic) {
            if let Some(sub) = &self.subscriber {
                sub.interest
                    .do_send(Interest::Remove(self.deps.subjects.topic(topic)));
            }
        }
        self.update_gauges();
    }
}

/// A session refreshed its token: it expires at `expires_at` from now on (so the sweep no
/// longer closes it with 4003 at the old time), and it stops following the topics the new
/// token does not allow. Sent by the session itself, so it is handled after every
/// `Follow`/`Unfollow` the session sent before.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refreshed {
    pub id: SessionId,
    pub expires_at: Option<u64>,
    pub issued_at: Option<u64>,
    pub token_id: Option<Arc<str>>,
    pub unfollow: Vec<String>,
}

impl Handler<Refreshed> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Refreshed, _: &mut Context<Self>) {
        for topic in &msg.unfollow {
            self.unfollow(msg.id, topic);
        }
        self.index.set_expiry(msg.id, msg.expires_at);
        self.index.set_token(msg.id, msg.issued_at, msg.token_id);
    }
}

/// Stop admitting sessions and close every open one with 1012, spread evenly over
/// `window`. Resolves when no session is left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub window: Duration,
}

impl Handler<Drain> for Registry {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let (tx, rx) = oneshot::channel();
        match self.drain.as_mut() {
            Some(d) => d.waiters.push(tx),
            None => {
                let pending: Vec<SessionId> = self.index.all().map(|(id, _)| id).collect();
                tracing::info!(
                    sessions = pending.len(),
                    window_ms = msg.window.as_millis() as u64,
                    "draining"
                );
                self.drain = Some(DrainState {
                    total: pending.len(),
                    pending,
                    started: Instant::now(),
                    window: msg.window,
                    waiters: vec![tx],
                });
                self.drain_tick();
            }
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
