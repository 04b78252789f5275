//! The outbound queue of one connection: encoded server frames waiting for the socket, in
//! one buffer so frames queued in one wake-up leave in one write.
//!
//! It knows where the frame that is partly written ends (measured by the session's wire),
//! so a slow consumer's queue can drop every frame not yet started without cutting one in
//! half (the client's parser must stay in step to read the close frame that follows).

use bytes::{Buf, BytesMut};

#[derive(Debug, Default)]
pub struct OutQueue {
    buf: BytesMut,
    /// Bytes at the front of `buf` that finish a frame already partly written.
    head_rest: usize,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Where encoders append whole frames.
    pub fn frames(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// `n` bytes from the front reached the socket. `frame_len` measures the whole
    /// frame at the front of a buffer (the wire's [`Wire::queued_frame_len`]).
    ///
    /// [`Wire::queued_frame_len`]: super::wire::Wire::queued_frame_len
    pub fn written(&mut self, n: usize, frame_len: impl Fn(&[u8]) -> usize) {
        let n = n.min(self.buf.len());
        let mut left = n;
        let mut pos = 0;
        let rest = left.min(self.head_rest);
        self.head_rest -= rest;
        left -= rest;
        pos += rest;
        while left > 0 {
            let total = frame_len(&self.buf[pos..]);
            if left >= total {
                left -= total;
                pos += total;
            } else {
                self.head_rest = total - left;
                left = 0;
            }
        }
        self.buf.advance(n);
        super::socket::release_if_empty(&mut self.buf);
    }

    /// Drop every frame not started yet; returns how many bytes were dropped.
    pub fn drop_unstarted(&mut self) -> usize {
        let dropped = self.buf.len() - self.head_rest;
        self.buf.truncate(self.head_rest);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of this test: one length byte, then that many bytes.
    fn len(buf: &[u8]) -> usize {
        1 + usize::from(buf[0])
    }

    fn frame(q: &mut OutQueue, n: u8) {
        q.frames().extend_from_slice(&[n]);
        q.frames().extend_from_slice(&vec![b'x'; usize::from(n)]);
    }

    #[test]
    fn dropping_keeps_the_rest_of_a_partly_written_frame() {
        let mut q = OutQueue::default();
        frame(&mut q, 11); // 12 bytes
        frame(&mut q, 255); // 256 bytes
        frame(&mut q, 6); // 7 bytes
        q.written(12 + 100, len);
        assert_eq!(q.drop_unstarted(), 7);
        assert_eq!(q.len(), 156);
        q.written(156, len);
        assert!(q.is_empty());
        frame(&mut q, 2);
        assert_eq!(q.drop_unstarted(), 3, "a frame boundary: nothing is kept");
    }
}
