//! Session actor: one per WebSocket connection. It reads client frames, writes server
//! frames through a bounded outbound queue, pings every heartbeat and enforces the
//! per-session limits (frame size, upstream rate, bad frames, queue bytes).
//!
//! Writing never blocks the actor: a spawned writer drains the queue into the socket while
//! the actor keeps handling messages, so a client that stops reading fills the queue (and
//! is closed with 4008) instead of stalling anything. Liveness is stamped into an atomic
//! the Registry's sweep reads, so eviction does not depend on this actor's socket either.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseReason, ProtocolError};
use bytes::Bytes;
use bytestring::ByteString;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_proto::frame::error_code;
use herald_proto::{
    ClientFrame, CloseCode, ServerFrame, Subjects, HEADER_DEVICE, HEADER_EVENT, HEADER_POD,
    HEADER_SESSION,
};

use crate::auth::Identity;
use crate::bus::{Bus, Outbound};
use crate::config::SessionLimits;
use crate::ids::SessionId;
use crate::message::Frame;
use crate::metrics::{Metrics, SourceLabel, SourceLabels};
use crate::registry::{Detach, Follow, Registry, Unfollow};

/// Topics one session may follow at once.
pub const MAX_TOPICS_PER_SESSION: usize = 128;
/// Bad frames tolerated (each answered with an error frame) before closing with 1008.
pub const MAX_BAD_FRAMES: u32 = 5;
/// Frames refused by the rate limit (the first answered with an error frame) before
/// closing with 4029; the count restarts when a frame is accepted again.
pub const MAX_RATE_STRIKES: u32 = 10;
/// After deciding to close, give the close frame this long to reach the socket, then drop
/// the connection regardless: a client that stopped reading cannot hold it open.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the pod shares with every session.
pub struct SessionShared {
    pub registry: Addr<Registry>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub metrics: Arc<Metrics>,
    pub pod: String,
    pub limits: SessionLimits,
}

enum Out {
    Text(ByteString),
    Ping,
    Pong(Bytes),
    Close(CloseCode),
}

pub struct Session {
    id: SessionId,
    identity: Identity,
    shared: Arc<SessionShared>,
    ws: Option<actix_ws::Session>,
    stream: Option<actix_ws::AggregatedMessageStream>,
    queue: VecDeque<Out>,
    /// Bytes of text frames queued or being written.
    queued_bytes: usize,
    writing: bool,
    last_seen: Arc<AtomicU64>,
    limiter: DefaultDirectRateLimiter,
    rate_strikes: u32,
    bad_frames: u32,
    closing: bool,
    detach_reason: &'static str,
    welcome: Option<String>,
    topics: HashSet<String>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SessionId,
        identity: Identity,
        shared: Arc<SessionShared>,
        ws: actix_ws::Session,
        stream: actix_ws::AggregatedMessageStream,
        last_seen: Arc<AtomicU64>,
        welcome: String,
    ) -> Session {
        let rate = NonZeroU32::new(shared.limits.upstream_rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Session {
            id,
            identity,
            ws: Some(ws),
            stream: Some(stream),
            queue: VecDeque::new(),
            queued_bytes: 0,
            writing: false,
            last_seen,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            rate_strikes: 0,
            bad_frames: 0,
            closing: false,
            detach_reason: "client",
            welcome: Some(welcome),
            topics: HashSet::new(),
            shared,
        }
    }

    fn send_frame(&mut self, frame: &ServerFrame, ctx: &mut Context<Self>) {
        self.push_text(ByteString::from(frame.to_json()), ctx);
    }

    fn push_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.queued_bytes + text.len() > self.shared.limits.outbound_queue_bytes {
            tracing::debug!(session = %self.id, queued = self.queued_bytes, "outbound queue full");
            self.begin_close(CloseCode::SlowConsumer, ctx);
            return;
        }
        self.queued_bytes += text.len();
        self.queue.push_back(Out::Text(text));
        self.pump(ctx);
    }

    fn push_control(&mut self, out: Out, ctx: &mut Context<Self>) {
        if !self.closing {
            self.queue.push_back(out);
            self.pump(ctx);
        }
    }

    /// Start the writer if it is idle: it takes everything queued and writes it in order.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.queue.is_empty() {
            return;
        }
        let Some(mut ws) = self.ws.take() else { return };
        self.writing = true;
        let batch: Vec<Out> = self.queue.drain(..).collect();
        let writer = async move {
            let mut written = 0usize;
            for item in batch {
                let ok = match item {
                    Out::Text(t) => {
                        written += t.len();
                        ws.text(t).await.is_ok()
                    }
                    Out::Ping => ws.ping(b"").await.is_ok(),
                    Out::Pong(b) => ws.pong(&b).await.is_ok(),
                    Out::Close(code) => {
                        let reason = CloseReason {
                            code: actix_ws::CloseCode::Other(code.code()),
                            description: Some(code.reason().to_string()),
                        };
                        let _ = ws.close(Some(reason)).await;
                        return (None, written);
                    }
                };
                if !ok {
                    return (None, written);
                }
            }
            (Some(ws), written)
        };
        ctx.spawn(writer.into_actor(self).map(|(ws, written), act, ctx| {
            act.writing = false;
            act.queued_bytes = act.queued_bytes.saturating_sub(written);
            match ws {
                Some(ws) => {
                    act.ws = Some(ws);
                    act.pump(ctx);
                }
                // Closed by us, or the connection is gone.
                None => ctx.stop(),
            }
        }));
    }

    /// Close with `code`: drop what is queued, send the close frame, and stop within
    /// CLOSE_GRACE whether or not the socket takes it.
    fn begin_close(&mut self, code: CloseCode, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.shared.metrics.closed(code.code());
        self.detach_reason = code.reason();
        self.queue.clear();
        self.queue.push_back(Out::Close(code));
        self.closing = true;
        self.pump(ctx);
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    fn alive(&self) {
        self.last_seen
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if self.limiter.check().is_err() {
            self.rate_strikes += 1;
            if self.rate_strikes == 1 {
                let msg = format!(
                    "more than {} frames per second",
                    self.shared.limits.upstream_rate
                );
                self.send_frame(&ServerFrame::error(error_code::RATE_LIMITED, msg), ctx);
            }
            if self.rate_strikes >= MAX_RATE_STRIKES {
                self.begin_close(CloseCode::RateLimited, ctx);
            }
            return;
        }
        self.rate_strikes = 0;
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Ping) => self.send_frame(&ServerFrame::Pong, ctx),
            Ok(ClientFrame::Publish { event, data }) => self.publish_upstream(event, data, ctx),
            Ok(ClientFrame::Subscribe { topic }) => self.subscribe(topic, ctx),
            Ok(ClientFrame::Unsubscribe { topic }) => {
                if self.topics.remove(&topic) {
                    self.shared
                        .registry
                        .do_send(Unfollow { id: self.id, topic });
                }
            }
            Err(e) => self.bad_frame(&e.0, ctx),
        }
    }

    fn subscribe(&mut self, topic: String, ctx: &mut Context<Self>) {
        if !herald_proto::is_valid_topic(&topic) {
            let msg = "topic: 1 to 8 dot-separated tokens of A-Z a-z 0-9 _ - =, each 1 to 64 bytes";
            return self.send_frame(&ServerFrame::error(error_code::BAD_TOPIC, msg), ctx);
        }
        if !crate::auth::topic_allowed(&self.identity, &topic) {
            let msg = format!("the token does not allow topic {topic}");
            return self.send_frame(&ServerFrame::error(error_code::FORBIDDEN, msg), ctx);
        }
        if !self.topics.contains(&topic) && self.topics.len() >= MAX_TOPICS_PER_SESSION {
            let msg = format!("at most {MAX_TOPICS_PER_SESSION} topics per session");
            return self.send_frame(&ServerFrame::error(error_code::TOO_MANY_TOPICS, msg), ctx);
        }
        self.topics.insert(topic.clone());
        let follow = self.shared.registry.send(Follow {
            id: self.id,
            topic: topic.clone(),
        });
        ctx.spawn(follow.into_actor(self).map(move |res, act, ctx| {
            // Unsubscribed meanwhile, or the session is gone: no reply.
            if matches!(res, Ok(true)) && act.topics.contains(&topic) {
                act.send_frame(&ServerFrame::Subscribed { topic }, ctx);
            }
        }));
    }

    fn bad_frame(&mut self, why: &str, ctx: &mut Context<Self>) {
        self.bad_frames += 1;
        self.shared.metrics.bad_frames.inc();
        if self.bad_frames > MAX_BAD_FRAMES {
            self.begin_close(CloseCode::PolicyViolation, ctx);
        } else {
            self.send_frame(&ServerFrame::error(error_code::BAD_FRAME, why), ctx);
        }
    }

    fn publish_upstream(
        &mut self,
        event: Option<String>,
        data: Option<Box<serde_json::value::RawValue>>,
        ctx: &mut Context<Self>,
    ) {
        let shared = &self.shared;
        let payload = data.map_or_else(
            || Bytes::from_static(b"null"),
            |d| Bytes::from(String::from(Box::<str>::from(d))),
        );
        let mut msg = Outbound::new(shared.subjects.up(self.identity.user.as_str()), payload)
            .header(HEADER_SESSION, self.id.to_string())
            .header(HEADER_POD, shared.pod.clone());
        if let Some(e) = event {
            msg = msg.header(HEADER_EVENT, e);
        }
        if let Some(d) = &self.identity.device {
            msg = msg.header(HEADER_DEVICE, d.to_string());
        }
        shared
            .metrics
            .messages_in
            .get_or_create(&SourceLabels {
                source: SourceLabel::upstream,
            })
            .inc();
        let bus = shared.bus.clone();
        ctx.spawn(
            async move { bus.publish(msg).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    if let Err(e) = res {
                        tracing::debug!(session = %act.id, error = %e, "upstream publish failed");
                        act.send_frame(
                            &ServerFrame::error(
                                error_code::UNAVAILABLE,
                                "message not published: the bus is unavailable",
                            ),
                            ctx,
                        );
                    }
                }),
        );
    }

    fn on_protocol_error(&mut self, err: ProtocolError, ctx: &mut Context<Self>) {
        let too_big = match &err {
            ProtocolError::Overflow => true,
            ProtocolError::Io(e) => e.to_string().contains("maximum continuation size"),
            _ => false,
        };
        if too_big {
            self.begin_close(CloseCode::TooBig, ctx);
        } else {
            tracing::debug!(session = %self.id, error = %err, "websocket protocol error");
            self.begin_close(CloseCode::PolicyViolation, ctx);
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        if let Some(w) = self.welcome.take() {
            self.push_text(ByteString::from(w), ctx);
        }
        ctx.run_interval(self.shared.limits.heartbeat, |act, ctx| {
            act.push_control(Out::Ping, ctx)
        });
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.shared.registry.do_send(Detach {
            id: self.id,
            reason: self.detach_reason,
        });
        Running::Stop
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for Session {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.alive();
        if self.closing {
            return;
        }
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(AggregatedMessage::Binary(_)) => {
                self.bad_frame("binary frames are not accepted; send JSON text", ctx)
            }
            Ok(AggregatedMessage::Ping(payload)) => self.push_control(Out::Pong(payload), ctx),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
                self.shared.metrics.closed(code);
                self.detach_reason = "client";
                self.queue.clear();
                self.queue.push_back(Out::Close(CloseCode::Normal));
                self.closing = true;
                self.pump(ctx);
                ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
            }
            Err(e) => self.on_protocol_error(e, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            self.shared.metrics.closed(1006);
            self.detach_reason = "gone";
        }
        ctx.stop();
    }
}

/// Queue a message frame for this session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Push {
    pub frame: Frame,
    /// Set for topic messages: dropped if the session unsubscribed since the fan-out,
    /// so an unsubscribe stops delivery at once.
    pub topic: Option<Arc<str>>,
}

impl Push {
    pub fn new(frame: Frame) -> Push {
        Push { frame, topic: None }
    }
}

impl Handler<Push> for Session {
    type Result = ();
    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) {
        if let Some(topic) = &msg.topic {
            if !self.topics.contains(&**topic) {
                return;
            }
        }
        self.push_text(msg.frame, ctx);
    }
}

/// Close this session with a code the Registry decided.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close(pub CloseCode);

impl Handler<Close> for Session {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        self.begin_close(msg.0, ctx);
    }
}
