//! A socket inside the process: what an SSE session writes comes out of an HTTP response
//! body, with the same readiness rules as a TCP socket. The pipe holds at most
//! [`PIPE_CAPACITY`] bytes (the body's "send buffer"); past that the session's writes wait
//! and its outbound queue fills, so a client that stops reading meets the same limits as
//! on a WebSocket. The body dropped (the client left, or the HTTP layer gave up) makes
//! every wait end with an error, which the session takes as the peer gone.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// Bytes the pipe buffers between the session and the HTTP layer.
pub const PIPE_CAPACITY: usize = 16 * 1024;

#[derive(Default)]
struct State {
    buf: BytesMut,
    /// The body was dropped: nobody reads any more.
    reader_gone: bool,
    /// The session ended the stream: the body ends once `buf` is read.
    ended: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The session waiting to hear that the reader left.
    watcher: Option<Waker>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock leaves plain bytes behind: still usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// The session's end.
pub struct Pipe {
    state: Arc<Mutex<State>>,
}

/// The HTTP layer's end: a stream of body chunks.
pub struct PipeBody {
    state: Arc<Mutex<State>>,
}

/// A connected pair.
pub fn pipe() -> (Pipe, PipeBody) {
    let state = Arc::new(Mutex::new(State::default()));
    (
        Pipe {
            state: state.clone(),
        },
        PipeBody { state },
    )
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "response body dropped")
}

impl Pipe {
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.state);
        if s.reader_gone {
            return Poll::Ready(Err(gone()));
        }
        if s.buf.len() < PIPE_CAPACITY {
            return Poll::Ready(Ok(()));
        }
        s.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut s = lock(&self.state);
        if s.reader_gone {
            return Err(gone());
        }
        let n = data.len().min(PIPE_CAPACITY.saturating_sub(s.buf.len()));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        s.buf.extend_from_slice(&data[..n]);
        wake(&mut s.reader);
        Ok(n)
    }

    /// Ready with an error once the reader is gone; pending until then.
    pub fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.state);
        if s.reader_gone {
            return Poll::Ready(Err(gone()));
        }
        s.watcher = Some(cx.waker().clone());
        Poll::Pending
    }

    /// End the stream after what is buffered.
    pub fn end(&self) {
        let mut s = lock(&self.state);
        s.ended = true;
        wake(&mut s.reader);
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.end();
    }
}

impl Stream for PipeBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut s = lock(&self.state);
        if !s.buf.is_empty() {
            let chunk = s.buf.split().freeze();
            // Give the memory back: an idle stream holds no buffer.
            s.buf = BytesMut::new();
            wake(&mut s.writer);
            return Poll::Ready(Some(Ok(chunk)));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for PipeBody {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.reader_gone = true;
        wake(&mut s.writer);
        wake(&mut s.watcher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn bytes_flow_and_the_end_is_seen() {
        let (w, mut r) = pipe();
        assert_eq!(w.try_write(b"event: x\n\n").expect("room"), 10);
        let chunk = r.next().await.expect("a chunk").expect("no error");
        assert_eq!(&chunk[..], b"event: x\n\n");
        w.end();
        assert!(r.next().await.is_none(), "the body ends after end()");
    }

    #[test]
    fn a_full_pipe_refuses_and_a_dropped_body_is_an_error() {
        let (w, r) = pipe();
        let big = vec![b'x'; PIPE_CAPACITY + 10];
        assert_eq!(w.try_write(&big).expect("room"), PIPE_CAPACITY);
        assert_eq!(
            w.try_write(b"y").expect_err("full").kind(),
            io::ErrorKind::WouldBlock
        );
        drop(r);
        assert_eq!(
            w.try_write(b"y").expect_err("gone").kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
