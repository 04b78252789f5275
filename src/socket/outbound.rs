//! The outbound queue of one connection: encoded server frames waiting for the socket, in
//! one buffer so frames queued in one wake-up leave in one write.
//!
//! It knows where the frame that is partly written ends, so a slow consumer's queue can
//! drop every frame not yet started without cutting one in half (the client's parser must
//! stay in step to read the close frame that follows).

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

    /// `n` bytes from the front reached the socket.
    pub fn written(&mut self, n: usize) {
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
        super::release_if_empty(&mut self.buf);
    }

    /// Drop every frame not started yet; returns how many bytes were dropped.
    pub fn drop_unstarted(&mut self) -> usize {
        let dropped = self.buf.len() - self.head_rest;
        self.buf.truncate(self.head_rest);
        dropped
    }
}

/// Length of the server frame at the front of `buf` (header included). Server frames are
/// unmasked, and the queue only ever holds whole frames from a frame boundary on.
fn frame_len(buf: &[u8]) -> usize {
    let len7 = buf.get(1).map_or(0, |b| b & 0x7f);
    match len7 {
        126 => {
            4 + buf
                .get(2..4)
                .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let len = buf.get(2..10).map_or(0, |b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            });
            10 + len as usize
        }
        n => 2 + usize::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_keeps_the_rest_of_a_partly_written_frame() {
        let mut q = OutQueue::default();
        super::super::text(q.frames(), &[b'a'; 10]); // 12 bytes
        super::super::text(q.frames(), &[b'b'; 300]); // 304 bytes
        super::super::text(q.frames(), &[b'c'; 5]); // 7 bytes
        q.written(12 + 100);
        assert_eq!(q.drop_unstarted(), 7);
        assert_eq!(q.len(), 204);
        q.written(204);
        assert!(q.is_empty());
        super::super::text(q.frames(), b"x");
        assert_eq!(q.drop_unstarted(), 3, "a frame boundary: nothing is kept");
    }
}
