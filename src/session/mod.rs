//! Session actor: one per connection, whatever its transport (WebSocket or SSE, behind
//! [`wire::Wire`]). It owns the connection's socket, reads and answers client frames
//! (`inbound`), queues server frames in a byte-bounded outbound buffer, sends heartbeats
//! when the Registry says so and enforces the per-session limits.
//!
//! Writing never blocks the actor: frames are appended to the outbound buffer and written
//! when the socket is writable (by the thread's shard, or the session's `io::Writer`), so
//! a client that stops reading fills the buffer (and is closed with 4008) instead of
//! stalling anything. Message frames reach the buffer from the shard without passing
//! through this actor's mailbox (see `io`). Liveness is stamped into
//! an atomic that the Registry's sweep reads, so eviction does not depend on the socket
//! either. Lifecycle: indexed by the Registry before the handshake answer, started with the
//! socket, and `Detach`ed from the Registry when it stops.

mod inbound;
pub mod io;
pub mod outbound;
pub mod pipe;
mod refresh;
pub mod socket;
pub mod wire;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use bytes::BytesMut;
use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use herald_proto::frame::Token;
use herald_proto::{CloseCode, ServerFrame, Subjects};

use crate::auth::{AuthConfig, Identity};
use crate::bus::Bus;
use crate::config::SessionLimits;
use crate::ids::SessionId;
use crate::link::Link;
use crate::mailbox::ForSession;
use crate::message::Frame;
use crate::metrics::Metrics;
use crate::registry::{Attach, Detach, Refusal, Registry};
use io::{LocalEntry, Reader, SessionIo, SharedIo, Writer};
use socket::Socket;
use wire::{Inbound, Violation, Wire};

/// Topics one session may follow at once.
pub const MAX_TOPICS_PER_SESSION: usize = 128;
/// Bad frames tolerated (each answered with an error frame) before closing with 1008.
pub const MAX_BAD_FRAMES: u32 = 5;
/// Frames refused by the rate limit (the first answered with an error frame) before
/// closing with 4029; the count restarts when a frame is accepted again.
pub const MAX_RATE_STRIKES: u32 = 10;

/// What a session sends first: its welcome frame, then the messages it recovered.
pub struct Opening {
    pub welcome: String,
    pub replay: Vec<Frame>,
}

/// What the pod shares with every session.
pub struct SessionShared {
    pub registry: Addr<Registry>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub metrics: Arc<Metrics>,
    pub pod: String,
    pub limits: SessionLimits,
    /// How `refresh` tokens are verified: the handshake's configuration.
    pub auth: Arc<AuthConfig>,
    /// Where messages are kept, if anywhere: receipts are kept beside them.
    pub store: Option<Arc<dyn crate::store::Store>>,
    /// Revocations and blocks, checked again at `refresh`.
    pub access: Arc<crate::access::AccessList>,
}

/// The upstream rate limiter. `MonotonicClock` (std `Instant`) rather than the default
/// clock: creating the default one per session calibrated a TSC clock each time, about a
/// tenth of the CPU of a reconnect storm (docs/performance.md).
type Limiter =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// The close handshake in progress: the session sent (or queued) its close frame and
/// waits for the peer's, reading and discarding everything else, for at most the close
/// grace.
#[derive(Debug, Default)]
struct Closing {
    sent: bool,
    peer_closed: bool,
    /// The input broke the framing again after the close: it is ignored from now on.
    deaf: bool,
}

pub struct Session {
    id: SessionId,
    identity: Identity,
    shared: Arc<SessionShared>,
    /// Socket, wire, outbound queue and topics, shared with the thread's shard.
    io: SharedIo,
    /// Keeps the session in its thread's table while it lives.
    _local: LocalEntry,
    /// Not started yet: the socket, handed to `io` when the actor starts.
    socket: Option<Socket>,
    /// Bytes read but not yet parsed (empty and unallocated while idle).
    inbound: BytesMut,
    link: Arc<Link>,
    limiter: Limiter,
    rate_strikes: u32,
    bad_frames: u32,
    closing: Option<Closing>,
    detach_reason: &'static str,
    welcome: Option<String>,
    /// Recovered messages, sent right after the welcome (before any live frame).
    replay: Vec<Frame>,
    /// `refresh` tokens in arrival order; the first is being verified.
    refreshes: VecDeque<Token>,
}

impl Session {
    /// The reserved session `reserved` on `socket`; `inbound` holds bytes the client sent
    /// right after its handshake, if any.
    pub fn new(
        reserved: Reserved,
        identity: Identity,
        shared: Arc<SessionShared>,
        socket: Socket,
        inbound: BytesMut,
        opening: Opening,
    ) -> (Context<Session>, Session) {
        let Reserved {
            id,
            ctx,
            io,
            local,
            link,
            ..
        } = reserved;
        let rate = NonZeroU32::new(shared.limits.upstream_rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        let session = Session {
            id,
            identity,
            io,
            _local: local,
            socket: Some(socket),
            inbound,
            link,
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                MonotonicClock,
            ),
            rate_strikes: 0,
            bad_frames: 0,
            closing: None,
            detach_reason: "client",
            welcome: Some(opening.welcome),
            replay: opening.replay,
            refreshes: VecDeque::new(),
            shared,
        };
        (ctx, session)
    }

    fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    fn send_frame(&mut self, frame: &ServerFrame, ctx: &mut Context<Self>) {
        self.push_text(frame.to_json().as_bytes(), ctx);
    }

    /// Queue a frame of the session's own, or close with 4008 when the queue would pass
    /// its limit.
    fn push_text(&mut self, text: &[u8], ctx: &mut Context<Self>) {
        if self.is_closing() {
            return;
        }
        self.queue_own(ctx, |wire, out| wire.frame(out, text));
    }

    /// Queue what `encode` writes (a frame of the session's own) if it fits the queue;
    /// a full queue closes with 4008.
    fn queue_own(&mut self, ctx: &mut Context<Self>, encode: impl Fn(&dyn Wire, &mut BytesMut)) {
        let mut bytes = BytesMut::new();
        encode(&*self.io.borrow().wire, &mut bytes);
        if self.reserve(bytes.len(), ctx) {
            self.io.borrow_mut().out.frames().extend_from_slice(&bytes);
            self.flush();
        }
    }

    /// Reserve room for a frame of the session's own; a full queue closes with 4008.
    fn reserve(&mut self, n: usize, ctx: &mut Context<Self>) -> bool {
        if self
            .link
            .reserve(n, self.shared.limits.outbound_queue_bytes)
        {
            return true;
        }
        tracing::debug!(session = %self.id, queued = self.link.queued(), "outbound queue full");
        self.begin_close(CloseCode::SlowConsumer, ctx);
        false
    }

    /// Wake the writer. It runs after the messages already in the mailbox, so frames
    /// queued in one burst leave in one write.
    fn flush(&self) {
        self.io.borrow().wake_writer();
    }

    /// Close with `code` (a decision of this session or of the Registry).
    fn begin_close(&mut self, code: CloseCode, ctx: &mut Context<Self>) {
        if self.is_closing() {
            return;
        }
        self.shared.metrics.closed(code.code());
        self.detach_reason = code.reason();
        if code == CloseCode::SlowConsumer {
            // The client is behind: what it has not started reading is dropped, so the
            // close frame is next in line.
            let dropped = self.io.borrow_mut().out.drop_unstarted();
            self.link.release(dropped);
        }
        self.close_with(code.code(), code.reason(), ctx);
    }

    /// Fail the connection for a framing violation (1002, 1007, 1009).
    fn fail(&mut self, violation: Violation, ctx: &mut Context<Self>) {
        // The bytes that broke the framing are dropped; what follows is parsed afresh, so
        // a client that reads the close frame and answers it is still heard.
        self.inbound.clear();
        if let Some(closing) = self.closing.as_mut() {
            // Broken again while closing: stop listening; the close frame still goes out.
            closing.deaf = true;
            return;
        }
        tracing::debug!(session = %self.id, why = violation.describe(), "websocket framing violation");
        let code = violation.code();
        self.shared.metrics.closed(code);
        self.detach_reason = match violation {
            Violation::TooBig => CloseCode::TooBig.reason(),
            _ => "protocol",
        };
        self.close_with(code, violation.describe(), ctx);
    }

    /// Queue the close frame behind what is queued, start discarding input, and give the
    /// handshake at most the close grace.
    fn close_with(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        let mut io = self.io.borrow_mut();
        io.closing = true;
        self.closing = Some(Closing {
            // A peer that cannot answer the close is done once it is written.
            peer_closed: !io.wire.peer_answers_close(),
            ..Closing::default()
        });
        io.wire.discard();
        let before = io.out.len();
        let SessionIo { wire, out, .. } = &mut *io;
        wire.close(out.frames(), code, reason);
        self.link.force(io.out.len() - before);
        io.wake_writer();
        drop(io);
        // Offline from the decision on, not after the close handshake.
        self.shared.registry.do_send(crate::registry::Departing {
            id: self.id,
            reason: self.detach_reason,
        });
        ctx.run_later(self.shared.limits.close_grace, |act, ctx| {
            tracing::debug!(session = %act.id, "close grace over");
            act.finish(ctx);
        });
    }

    /// The close handshake is over (or given up): end the TCP connection and the actor.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        if let Some(socket) = self.io.borrow().socket() {
            socket.finish();
        }
        ctx.stop();
    }

    fn alive(&self) {
        self.link.seen(crate::clock::now_ms());
    }

    /// Count a client frame against the upstream rate limit; false when it is refused.
    fn within_rate(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.limiter.check().is_ok() {
            self.rate_strikes = 0;
            return true;
        }
        self.rate_strikes += 1;
        if self.rate_strikes == 1 {
            let msg = format!(
                "more than {} frames per second",
                self.shared.limits.upstream_rate
            );
            self.send_frame(
                &ServerFrame::error(herald_proto::frame::error_code::RATE_LIMITED, msg),
                ctx,
            );
        }
        if self.rate_strikes >= MAX_RATE_STRIKES {
            self.begin_close(CloseCode::RateLimited, ctx);
        }
        false
    }

    /// One complete item from the client.
    fn on_inbound(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        self.alive();
        if let Inbound::Close(code) = item {
            return self.on_peer_close(code, ctx);
        }
        if self.is_closing() {
            return;
        }
        match item {
            Inbound::Text(text) => {
                if self.within_rate(ctx) {
                    self.on_text(&text, ctx);
                }
            }
            Inbound::Binary(_) => {
                if self.within_rate(ctx) {
                    self.bad_frame("binary frames are not accepted; send JSON text", ctx);
                }
            }
            Inbound::Ping(payload) => {
                if self.within_rate(ctx) {
                    self.queue_own(ctx, |wire, out| wire.pong(out, &payload));
                }
            }
            Inbound::Pong | Inbound::Close(_) => {}
        }
    }

    fn on_peer_close(&mut self, code: Option<u16>, ctx: &mut Context<Self>) {
        match &mut self.closing {
            Some(closing) => {
                closing.peer_closed = true;
                if closing.sent {
                    self.finish(ctx);
                }
            }
            None => {
                let code = code.unwrap_or(1005);
                self.shared.metrics.closed(code);
                self.detach_reason = "client";
                // Answer with the same code (RFC 6455 §5.5.1), then end once it is out.
                let answer = if code == 1005 { 1000 } else { code };
                self.close_with(answer, "", ctx);
                if let Some(c) = self.closing.as_mut() {
                    c.peer_closed = true;
                }
            }
        }
    }

    /// Decode every complete item in `inbound`. Returns false once reading should stop.
    fn parse_input(&mut self, ctx: &mut Context<Self>) -> bool {
        loop {
            if self.closing.as_ref().is_some_and(|c| c.deaf) {
                self.inbound.clear();
                return true;
            }
            let decoded = self.io.borrow_mut().wire.decode(&mut self.inbound);
            match decoded {
                Ok(Some(item)) => self.on_inbound(item, ctx),
                Ok(None) => return true,
                Err(v) => self.fail(v, ctx),
            }
            if self.finished(ctx) {
                return false;
            }
        }
    }

    fn finished(&self, ctx: &Context<Self>) -> bool {
        matches!(ctx.state(), ActorState::Stopping | ActorState::Stopped)
    }
}

impl Session {
    /// The peer closed the connection or the socket failed.
    fn on_gone(&mut self, ctx: &mut Context<Self>) {
        if !self.is_closing() {
            self.shared.metrics.closed(1006);
            self.detach_reason = "gone";
            self.closing = Some(Closing::default());
            self.io.borrow_mut().closing = true;
        }
        ctx.stop();
    }

    /// Everything queued reached the socket.
    fn on_flushed(&mut self, ctx: &mut Context<Self>) {
        if let Some(closing) = self.closing.as_mut() {
            closing.sent = true;
            if closing.peer_closed {
                self.finish(ctx);
            }
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let welcome = self.welcome.take().unwrap_or_default();
        let replay = std::mem::take(&mut self.replay);
        let name = {
            let mut io = self.io.borrow_mut();
            if let Some(socket) = self.socket.take() {
                io.start(socket, |wire, out| {
                    wire.frame(out, welcome.as_bytes());
                    for frame in &replay {
                        wire.frame(out, frame.as_bytes());
                    }
                });
            }
            io.wire.name()
        };
        self.shared.metrics.transport_opened(name);
        ctx.spawn(Writer);
        ctx.spawn(Reader);
        // Bytes that arrived with the handshake.
        if !self.inbound.is_empty() {
            self.parse_input(ctx);
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        let name = self.io.borrow().wire.name();
        self.shared.metrics.transport_closed(name);
        self.shared.registry.do_send(Detach {
            id: self.id,
            reason: self.detach_reason,
        });
        Running::Stop
    }
}

/// A session the Registry has indexed but that does not run yet: its context, whose
/// address the Registry holds, its shared io (already in the thread's table, so frames
/// fanned out from now on are kept for it) and its liveness stamp.
pub struct Reserved {
    pub id: SessionId,
    pub ctx: Context<Session>,
    pub io: SharedIo,
    pub local: LocalEntry,
    pub link: Arc<Link>,
    /// Durable mode: the sequence after which the session gets every message live.
    pub live_after: Option<u64>,
}

/// Index a new session before it runs, on `shard` (this thread's). The actor's address
/// exists before the actor does, so the Registry can admit (or refuse) it while the
/// handshake is still plain HTTP.
pub async fn reserve(
    shared: &SessionShared,
    shard: usize,
    id: SessionId,
    identity: &Identity,
    wire: Box<dyn Wire>,
) -> Result<Result<Reserved, Refusal>, MailboxError> {
    let link = Arc::new(Link::new(crate::clock::now_ms(), wire.frame_len()));
    let ctx: Context<Session> = Context::new();
    let handle = ctx.address().recipient();
    let io = Rc::new(RefCell::new(SessionIo::new(
        wire,
        link.clone(),
        shared.limits.outbound_queue_bytes,
        handle.clone(),
    )));
    let local = LocalEntry::register(shard, id, io.clone());
    let attach = Attach {
        id,
        identity: identity.clone(),
        session: handle,
        link: link.clone(),
        shard,
    };
    Ok(shared
        .registry
        .send(attach)
        .await?
        .map(|live_after| Reserved {
            id,
            ctx,
            io,
            local,
            link,
            live_after,
        }))
}

impl Handler<ForSession> for Session {
    type Result = ();
    fn handle(&mut self, msg: ForSession, ctx: &mut Context<Self>) {
        match msg {
            ForSession::Heartbeat => {
                if !self.is_closing() {
                    self.queue_own(ctx, |wire, out| wire.heartbeat(out));
                }
            }
            ForSession::Close(code) => self.begin_close(code, ctx),
            ForSession::ClientFrame(text) => {
                self.alive();
                if !self.is_closing() && self.within_rate(ctx) {
                    self.on_text(&text, ctx);
                }
            }
        }
    }
}
