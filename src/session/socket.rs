//! The byte stream a Session actor owns outright, with no buffers while idle, and the two
//! futures that move its bytes.
//!
//! A WebSocket session owns its TCP stream: after the handshake herald takes it out of the
//! HTTP layer (see `http::websocket`), so a connection costs its socket, its actor and its
//! index entries, not the HTTP dispatcher's buffers. An SSE session writes into a [`Pipe`]
//! whose far end is its HTTP response body. Reads go into a buffer allocated only while
//! bytes are being parsed; writes are appended to one outbound buffer (the session's
//! byte-bounded queue), coalesced, and written with non-blocking writes when the socket is
//! writable, by the session's shard or from futures that run inside the actor (see
//! `session::io`), so no extra task exists per connection.

use std::io;
use std::task::{Context as TaskContext, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;

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

/// Give an empty buffer's memory back unless it is small: idle sessions hold nothing.
pub(crate) fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 1024 {
        *buf = BytesMut::new();
    }
}
