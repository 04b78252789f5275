//! Session actor: one per WebSocket connection. It owns the connection's socket, reads and
//! answers client frames (`inbound`), queues server frames in a byte-bounded outbound
//! buffer, pings when the Registry says so (every heartbeat) and enforces the per-session
//! limits.
//!
//! Writing never blocks the actor: frames are appended to the outbound buffer and written
//! by a `Flusher` when the socket is writable, so a client that stops reading fills the
//! buffer (and is closed with 4008) instead of stalling anything. Liveness is stamped into
//! an atomic that the Registry's sweep reads, so eviction does not depend on the socket
//! either. Lifecycle: indexed by the Registry before the handshake answer, started with the
//! socket, and `Detach`ed from the Registry when it stops.

mod inbound;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::{OpCode, Parser, ProtocolError};
use bytes::BytesMut;
use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use herald_proto::{CloseCode, ServerFrame, Subjects};

use crate::auth::Identity;
use crate::bus::Bus;
use crate::config::SessionLimits;
use crate::ids::SessionId;
use crate::message::Frame;
use crate::metrics::Metrics;
use crate::registry::{Attach, Detach, Refusal, Registry};
use crate::socket::{self, Endpoint, Flusher, Reader, Socket};

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

/// The upstream rate limiter. `MonotonicClock` (std `Instant`) rather than the default
/// clock: creating the default one per session calibrated a TSC clock each time, about a
/// tenth of the CPU of a reconnect storm (docs/performance.md).
type Limiter =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

pub struct Session {
    id: SessionId,
    identity: Identity,
    shared: Arc<SessionShared>,
    socket: Socket,
    /// Bytes read but not yet parsed (empty and unallocated while idle).
    inbound: BytesMut,
    /// Encoded frames not yet written: the outbound queue, bounded in bytes.
    outbound: BytesMut,
    /// A fragmented message being reassembled: its opcode and bytes so far.
    fragments: Option<(OpCode, BytesMut)>,
    flushing: bool,
    last_seen: Arc<AtomicU64>,
    limiter: Limiter,
    rate_strikes: u32,
    bad_frames: u32,
    closing: bool,
    detach_reason: &'static str,
    welcome: Option<String>,
    topics: HashSet<String>,
}

impl Session {
    /// A session on `socket`; `inbound` holds bytes the client sent right after its
    /// handshake, if any.
    pub fn new(
        id: SessionId,
        identity: Identity,
        shared: Arc<SessionShared>,
        socket: Socket,
        inbound: BytesMut,
        last_seen: Arc<AtomicU64>,
        welcome: String,
    ) -> Session {
        let rate = NonZeroU32::new(shared.limits.upstream_rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Session {
            id,
            identity,
            socket,
            inbound,
            outbound: BytesMut::new(),
            fragments: None,
            flushing: false,
            last_seen,
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                MonotonicClock,
            ),
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
        self.push_text(frame.to_json().as_bytes(), ctx);
    }

    /// Queue a text frame, or close with 4008 when the queue would pass its limit.
    fn push_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.outbound.len() + text.len() + socket::MAX_HEADER
            > self.shared.limits.outbound_queue_bytes
        {
            tracing::debug!(session = %self.id, queued = self.outbound.len(), "outbound queue full");
            self.begin_close(CloseCode::SlowConsumer, ctx);
            return;
        }
        socket::text(&mut self.outbound, text);
        self.flush(ctx);
    }

    /// Make sure a Flusher runs. It runs after the messages already in the mailbox, so
    /// frames queued in one burst leave in one write.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flushing && !self.outbound.is_empty() {
            self.flushing = true;
            ctx.spawn(Flusher);
        }
    }

    /// Close with `code`: queue the close frame behind what is already queued, and stop
    /// once it is written or after CLOSE_GRACE, whichever comes first.
    fn begin_close(&mut self, code: CloseCode, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.shared.metrics.closed(code.code());
        self.detach_reason = code.reason();
        self.close_with(code.code(), code.reason(), ctx);
    }

    fn close_with(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.closing = true;
        socket::close(&mut self.outbound, code, reason);
        self.flush(ctx);
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    fn alive(&self) {
        self.last_seen
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }

    /// One complete client frame.
    fn on_frame(&mut self, opcode: OpCode, payload: BytesMut, ctx: &mut Context<Self>) {
        match opcode {
            OpCode::Text => match std::str::from_utf8(&payload) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => self.bad_frame("text frame is not valid UTF-8", ctx),
            },
            OpCode::Binary => self.bad_frame("binary frames are not accepted; send JSON text", ctx),
            OpCode::Ping => {
                if !self.closing {
                    socket::pong(&mut self.outbound, &payload);
                    self.flush(ctx);
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let code = Parser::try_parse_close_payload(&payload)
                    .ok()
                    .flatten()
                    .map_or(1005, |r| u16::from(r.code));
                if !self.closing {
                    self.shared.metrics.closed(code);
                    self.detach_reason = "client";
                    // Answer the close handshake, then stop once it is written.
                    self.close_with(CloseCode::Normal.code(), "", ctx);
                }
            }
            OpCode::Continue | OpCode::Bad => self.on_protocol_error(ProtocolError::BadOpCode, ctx),
        }
    }

    /// Parse every complete frame in `inbound`, reassembling fragmented messages.
    fn parse_input(&mut self, ctx: &mut Context<Self>) -> bool {
        let max = self.shared.limits.max_frame_bytes;
        loop {
            let parsed = Parser::parse(&mut self.inbound, true, max);
            let (fin, opcode, payload) = match parsed {
                Ok(Some(frame)) => frame,
                Ok(None) => return true,
                Err(e) => {
                    self.on_protocol_error(e, ctx);
                    return false;
                }
            };
            let payload = payload.unwrap_or_default();
            match (opcode, fin, self.fragments.take()) {
                (OpCode::Continue, _, None) => {
                    self.on_protocol_error(ProtocolError::ContinuationNotStarted, ctx);
                    return false;
                }
                (OpCode::Continue, fin, Some((op, mut buf))) => {
                    if buf.len() + payload.len() > max {
                        self.on_protocol_error(ProtocolError::Overflow, ctx);
                        return false;
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        self.on_frame(op, buf, ctx);
                    } else {
                        self.fragments = Some((op, buf));
                    }
                }
                (OpCode::Text | OpCode::Binary, false, None) => {
                    self.fragments = Some((opcode, payload))
                }
                (OpCode::Text | OpCode::Binary, _, Some(_)) => {
                    self.on_protocol_error(ProtocolError::ContinuationStarted, ctx);
                    return false;
                }
                (op, _, pending) => {
                    // Control frames may arrive between the fragments of a message.
                    self.fragments = pending;
                    self.on_frame(op, payload, ctx);
                }
            }
        }
    }

    fn on_protocol_error(&mut self, err: ProtocolError, ctx: &mut Context<Self>) {
        if matches!(err, ProtocolError::Overflow) {
            self.begin_close(CloseCode::TooBig, ctx);
        } else {
            tracing::debug!(session = %self.id, error = %err, "websocket protocol error");
            self.begin_close(CloseCode::PolicyViolation, ctx);
        }
    }
}

impl Endpoint for Session {
    fn socket(&self) -> &Socket {
        &self.socket
    }

    fn inbound(&mut self) -> &mut BytesMut {
        &mut self.inbound
    }

    fn outbound(&mut self) -> &mut BytesMut {
        &mut self.outbound
    }

    fn on_input(&mut self, ctx: &mut Context<Self>) -> bool {
        self.alive();
        self.parse_input(ctx)
    }

    fn on_gone(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            self.shared.metrics.closed(1006);
            self.detach_reason = "gone";
        }
        self.closing = true;
        ctx.stop();
    }

    fn on_flushed(&mut self, ctx: &mut Context<Self>) {
        self.flushing = false;
        if self.closing {
            // The close frame is out: drop the connection.
            ctx.stop();
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(w) = self.welcome.take() {
            self.push_text(w.as_bytes(), ctx);
        }
        ctx.spawn(Reader);
        // Bytes that arrived with the handshake (a protocol error there closes the session).
        if !self.inbound.is_empty() {
            self.parse_input(ctx);
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.shared.registry.do_send(Detach {
            id: self.id,
            reason: self.detach_reason,
        });
        Running::Stop
    }
}

/// A session the Registry has indexed but that does not run yet: its context, whose
/// address the Registry holds, and its liveness stamp.
pub struct Reserved {
    pub ctx: Context<Session>,
    pub last_seen: Arc<AtomicU64>,
}

/// Index a new session before it runs. The actor's address exists before the actor does,
/// so the Registry can admit (or refuse) it while the handshake is still plain HTTP.
pub async fn reserve(
    registry: &Addr<Registry>,
    id: SessionId,
    identity: &Identity,
) -> Result<Result<Reserved, Refusal>, MailboxError> {
    let last_seen = Arc::new(AtomicU64::new(crate::clock::now_ms()));
    let ctx: Context<Session> = Context::new();
    let attach = Attach {
        id,
        identity: identity.clone(),
        session: ctx.address(),
        last_seen: last_seen.clone(),
    };
    Ok(registry
        .send(attach)
        .await?
        .map(|()| Reserved { ctx, last_seen }))
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
        self.push_text(msg.frame.as_bytes(), ctx);
    }
}

/// Send a WebSocket ping. The Registry sends these every heartbeat, spread over the
/// interval, so sessions need no timer of their own.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

impl Handler<Heartbeat> for Session {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, ctx: &mut Context<Self>) {
        if !self.closing {
            socket::ping(&mut self.outbound);
            self.flush(ctx);
        }
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
