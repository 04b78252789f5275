//! The byte stream a Session actor owns outright, with no buffers while idle, and the two
//! futures that move its bytes.
//!
//! A WebSocket session owns its TCP stream: after the handshake herald takes it out of the
//! HTTP layer (see `http::websocket`), so a connection costs its socket, its actor and its
//! index entries, not the HTTP dispatcher's buffers. An SSE session writes into a [`Pipe`]
//! whose far end is its HTTP response body. Reads go into a buffer allocated only while
//! bytes are being parsed; writes are appended to one outbound buffer (the session's
//! byte-bounded queue), coalesced, and written with non-blocking writes when the socket is
//! writable, from futures that run inside the actor (`Reader`, `Flusher`), so no extra
//! task exists per connection.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::outbound;
pub use super::pipe::{Pipe, PipeBody};

/// What a session writes to and reads from.
pub enum Socket {
    Tcp(TcpStream),
    /// The writing end of a response body (SSE): it never yields input, and reports the
    /// peer gone once the body is dropped.
    Pipe(Pipe),
}

impl Socket {
    pub fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Tcp(s) => s.poll_read_ready(cx),
            Socket::Pipe(p) => p.poll_gone(cx),
        }
    }

    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.try_read_buf(buf),
            Socket::Pipe(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    pub fn poll_write_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Tcp(s) => s.poll_write_ready(cx),
            Socket::Pipe(p) => p.poll_write_ready(cx),
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.try_write(buf),
            Socket::Pipe(p) => p.try_write(buf),
        }
    }

    /// End the connection gracefully: read and drop what the peer already sent (closing
    /// a socket with unread input makes the kernel answer with a reset, which can destroy
    /// the close frame still on its way), then send FIN.
    pub fn finish(&self) {
        if let Socket::Pipe(p) = self {
            p.end();
        }
        if let Socket::Tcp(s) = self {
            let mut scratch = [0u8; 4096];
            for _ in 0..64 {
                match s.try_read(&mut scratch) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Something that owns a socket and an outbound buffer (the Session actor).
pub trait Endpoint: actix::Actor<Context = actix::Context<Self>> {
    fn socket(&self) -> &Socket;
    fn inbound(&mut self) -> &mut BytesMut;
    fn outbound(&mut self) -> &mut outbound::OutQueue;
    /// `n` bytes of the outbound queue reached the socket.
    fn on_written(&mut self, n: usize);
    /// New bytes are in `inbound()`: parse what is complete. Returns false to stop reading.
    fn on_input(&mut self, ctx: &mut actix::Context<Self>) -> bool;
    /// The peer closed the connection or the socket failed.
    fn on_gone(&mut self, ctx: &mut actix::Context<Self>);
    /// Everything queued reached the socket.
    fn on_flushed(&mut self, ctx: &mut actix::Context<Self>);
}

/// Reads per wake-up before yielding, so one busy client cannot starve the others on the
/// same thread.
const READS_PER_WAKE: usize = 16;
/// Read chunk; the buffer exists only while bytes are waiting to be parsed.
const READ_CHUNK: usize = 4096;

/// Reads the socket for as long as the actor lives.
pub struct Reader;

impl<A: Endpoint> actix::ActorFuture<A> for Reader {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut actix::Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        for _ in 0..READS_PER_WAKE {
            match act.socket().poll_read_ready(task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            let mut buf = std::mem::take(act.inbound());
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            let res = act.socket().try_read_buf(&mut buf);
            *act.inbound() = buf;
            match res {
                Ok(0) => {
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
                Ok(_) => {
                    if !act.on_input(ctx) {
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
            release_if_empty(act.inbound());
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Writes the outbound buffer until it is empty, then ends (the session starts a new one
/// when it queues more). Frames queued while a write is pending go out in the same write.
pub struct Flusher;

impl<A: Endpoint> actix::ActorFuture<A> for Flusher {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut actix::Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        loop {
            if act.outbound().is_empty() {
                act.on_flushed(ctx);
                return Poll::Ready(());
            }
            match act.socket().poll_write_ready(task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            let out = std::mem::take(act.outbound());
            let res = act.socket().try_write(out.bytes());
            *act.outbound() = out;
            match res {
                Ok(n) => act.on_written(n),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    act.on_gone(ctx);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// Give an empty buffer's memory back unless it is small: idle sessions hold nothing.
pub(crate) fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 1024 {
        *buf = BytesMut::new();
    }
}
