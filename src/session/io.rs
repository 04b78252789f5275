//! What a session shares with the shard of its thread: its socket, wire, outbound queue
//! and topics, behind one `Rc<RefCell<_>>` ([`SharedIo`]), and the thread's table of them.
//!
//! Sharding: every worker thread runs one shard (`shard::Shard`). A session lives on the
//! thread that accepted its connection and is listed in that thread's table from the
//! moment the Registry may count it (before its handshake is answered) until its actor is
//! gone. The shard queues message frames straight into [`SessionIo`] and writes them in
//! one pass per wake-up; the session's own [`Writer`] takes over only when a write could
//! not finish (the socket is full) or for the session's own frames. Both run on the same
//! thread, so a `RefCell` is all the coordination there is: no borrow is held across a
//! call into the other side.
//!
//! Invariant: whenever the queue is not empty, either the shard has it on its list to
//! write at the end of the current wake-up, or the session's writer has been woken (or
//! waits for the socket to become writable).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::BytesMut;
use herald_proto::CloseCode;

use super::outbound::OutQueue;
use super::socket::Socket;
use super::wire::Wire;
use super::Session;
use crate::ids::SessionId;
use crate::link::Link;
use crate::mailbox::{ForSession, SessionHandle};

/// The part of a session its shard writes to.
pub struct SessionIo {
    socket: Option<Socket>,
    pub(super) wire: Box<dyn Wire>,
    pub(super) out: OutQueue,
    link: Arc<Link>,
    /// `--outbound-queue-bytes`.
    limit: usize,
    /// The session runs and its welcome is queued: frames may be written.
    started: bool,
    /// The session is closing: no more message frames.
    pub(super) closing: bool,
    pub(super) topics: HashSet<String>,
    /// The session's writer, parked while the queue is empty.
    writer: Option<Waker>,
    /// To ask the session to close when its queue overflows.
    handle: SessionHandle,
}

pub type SharedIo = Rc<RefCell<SessionIo>>;

/// What [`SessionIo::offer`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued; `first` when the queue was empty (someone must write it).
    Queued { first: bool },
    /// The queue is full: not queued (the session is told to close with 4008).
    Dropped,
    /// Not for this session any more (closing, or no longer following the topic).
    Skipped,
}

impl SessionIo {
    pub fn new(wire: Box<dyn Wire>, link: Arc<Link>, limit: usize, handle: SessionHandle) -> Self {
        SessionIo {
            socket: None,
            wire,
            out: OutQueue::default(),
            link,
            limit,
            started: false,
            closing: false,
            topics: HashSet::new(),
            writer: None,
            handle,
        }
    }

    /// Queue a message frame within the session's byte budget: compressed (computed at
    /// most once per message, in `deflated`, and shared) where the wire negotiated it.
    pub fn offer(
        &mut self,
        frame: &[u8],
        deflated: &std::sync::OnceLock<bytes::Bytes>,
        topic: Option<&str>,
    ) -> Offer {
        if self.closing || topic.is_some_and(|t| !self.topics.contains(t)) {
            return Offer::Skipped;
        }
        let compressed = match self.wire.deflate_from() {
            Some(min) if frame.len() >= min => {
                Some(deflated.get_or_init(|| crate::http::websocket::deflate::deflate(frame)))
            }
            _ => None,
        };
        let len = match compressed {
            Some(c) => self.wire.deflated_frame_len(c.len()),
            None => self.link.frame_len(frame),
        };
        if !self.link.reserve(len, self.limit) {
            if self.link.overflow() {
                self.handle
                    .do_send(ForSession::Close(CloseCode::SlowConsumer));
            }
            return Offer::Dropped;
        }
        let first = self.out.is_empty();
        match compressed {
            Some(c) => self.wire.frame_deflated(self.out.frames(), c),
            None => self.wire.frame(self.out.frames(), frame),
        }
        Offer::Queued { first }
    }

    /// Write what is queued now, without waiting; what does not fit is left to the
    /// session's writer, which is woken for it.
    pub fn write_now(&mut self) {
        if !self.started || self.out.is_empty() {
            return;
        }
        if let Some(socket) = &self.socket {
            if let Ok(n) = socket.try_write(self.out.bytes()) {
                self.written(n);
            }
        }
        if !self.out.is_empty() {
            self.wake_writer();
        }
    }

    fn written(&mut self, n: usize) {
        let wire = &self.wire;
        self.out.written(n, |buf| wire.queued_frame_len(buf));
        self.link.release(n);
        if self.wire.alive_on_write() {
            self.link.seen(crate::clock::now_ms());
        }
    }

    pub fn wake_writer(&self) {
        if let Some(w) = &self.writer {
            w.wake_by_ref();
        }
    }

    /// The session starts on `socket`: `opening` (welcome, replay) goes ahead of any
    /// frame the shard queued before.
    pub(super) fn start(&mut self, socket: Socket, opening: impl FnOnce(&dyn Wire, &mut BytesMut)) {
        let early = std::mem::take(self.out.frames());
        let before = self.out.len();
        opening(&*self.wire, self.out.frames());
        // Counted, never refused: the opening is bounded (--max-replay).
        self.link.force(self.out.len() - before);
        self.out.frames().extend_from_slice(&early);
        self.socket = Some(socket);
        self.started = true;
    }

    pub(super) fn socket(&self) -> Option<&Socket> {
        self.socket.as_ref()
    }
}

thread_local! {
    /// The sessions of this thread's shards, by shard. One pod has one shard per thread;
    /// a process running several pods on one thread (benches, tests) has one per pod.
    static LOCAL: RefCell<HashMap<usize, HashMap<SessionId, SharedIo>>> =
        RefCell::new(HashMap::new());
}

/// A session's place in its shard's table; leaving the table when dropped, so a session
/// whose handshake failed after the Registry admitted it leaves no trace.
pub struct LocalEntry {
    shard: usize,
    id: SessionId,
}

impl LocalEntry {
    pub fn register(shard: usize, id: SessionId, io: SharedIo) -> LocalEntry {
        LOCAL.with(|l| l.borrow_mut().entry(shard).or_default().insert(id, io));
        LocalEntry { shard, id }
    }
}

impl Drop for LocalEntry {
    fn drop(&mut self) {
        LOCAL.with(|l| {
            if let Some(table) = l.borrow_mut().get_mut(&self.shard) {
                table.remove(&self.id);
            }
        });
    }
}

/// Run `f` over the sessions of `shard` (which must be one of this thread's).
pub fn with_local<R>(shard: usize, f: impl FnOnce(&HashMap<SessionId, SharedIo>) -> R) -> R {
    LOCAL.with(|l| match l.borrow().get(&shard) {
        Some(table) => f(table),
        None => f(&HashMap::new()),
    })
}

/// Writes the session's queue whenever it is not empty and the shard could not: its own
/// frames, and whatever did not fit the socket at once. Parks while the queue is empty.
pub struct Writer;

impl actix::ActorFuture<Session> for Writer {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Session,
        ctx: &mut actix::Context<Session>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        loop {
            let io = act.io.clone();
            let mut io = io.borrow_mut();
            if io.out.is_empty() {
                if !io
                    .writer
                    .as_ref()
                    .is_some_and(|w| w.will_wake(task.waker()))
                {
                    io.writer = Some(task.waker().clone());
                }
                drop(io);
                act.on_flushed(ctx);
                return Poll::Pending;
            }
            let Some(socket) = io.socket.as_ref() else {
                return Poll::Pending;
            };
            match socket.poll_write_ready(task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    drop(io);
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            match socket.try_write(io.out.bytes()) {
                Ok(n) => io.written(n),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    drop(io);
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// Reads per wake-up before yielding, so one busy client cannot starve the others on the
/// same thread.
const READS_PER_WAKE: usize = 16;
/// Read chunk; the buffer exists only while bytes are waiting to be parsed.
const READ_CHUNK: usize = 4096;

/// Reads the socket for as long as the actor lives.
pub struct Reader;

impl actix::ActorFuture<Session> for Reader {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Session,
        ctx: &mut actix::Context<Session>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        for _ in 0..READS_PER_WAKE {
            let io = act.io.clone();
            let res = {
                let io = io.borrow();
                let Some(socket) = io.socket() else {
                    return Poll::Pending;
                };
                match socket.poll_read_ready(task) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Ready(Ok(())) => {
                        if act.inbound.capacity() - act.inbound.len() < READ_CHUNK / 2 {
                            act.inbound.reserve(READ_CHUNK);
                        }
                        socket.try_read_buf(&mut act.inbound)
                    }
                }
            };
            match res {
                Ok(0) => {
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
                Ok(_) => {
                    if !act.parse_input(ctx) {
                        return Poll::Ready(());
                    }
                }
                // Readiness was stale; the next poll registers for the next wake-up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
            }
            super::socket::release_if_empty(&mut act.inbound);
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}
