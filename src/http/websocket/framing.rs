//! Server frames on a WebSocket (RFC 6455): unmasked text, ping, pong and close frames,
//! and the session's [`Wire`] for this transport.

use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::BytesMut;

use super::decoder::Decoder;
use crate::link::FrameLen;
use crate::session::wire::{Inbound, Violation, Wire};

/// Largest header of a server frame (2 bytes + 8 bytes of length).
pub const MAX_HEADER: usize = 10;

/// Bytes a text frame of `payload` bytes takes on the wire.
pub fn text_frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

/// [`text_frame_len`] as a session's frame measure.
pub fn text_frame_len_of(json: &[u8]) -> usize {
    text_frame_len(json.len())
}

/// Length of the server frame at the front of `buf` (header included). Server frames are
/// unmasked, and the queue only ever holds whole frames from a frame boundary on.
pub fn queued_frame_len(buf: &[u8]) -> usize {
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

/// Append a text frame.
pub fn text(out: &mut BytesMut, payload: &[u8]) {
    Parser::write_message(out, payload, OpCode::Text, true, false);
}

/// Append a text frame whose payload is permessage-deflate compressed (RSV1 set).
pub fn text_deflated(out: &mut BytesMut, payload: &[u8]) {
    let len = payload.len();
    out.reserve(text_frame_len(len));
    out.extend_from_slice(&[0x80 | 0x40 | 0x1]);
    match len {
        0..=125 => out.extend_from_slice(&[len as u8]),
        126..=65535 => {
            out.extend_from_slice(&[126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[127]);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

pub fn ping(out: &mut BytesMut) {
    Parser::write_message(out, b"", OpCode::Ping, true, false);
}

pub fn pong(out: &mut BytesMut, payload: &[u8]) {
    Parser::write_message(out, payload, OpCode::Pong, true, false);
}

pub fn close(out: &mut BytesMut, code: u16, reason: &str) {
    let reason = CloseReason {
        code: actix_http::ws::CloseCode::Other(code),
        description: Some(reason.to_string()),
    };
    Parser::write_close(out, Some(reason), false);
}

/// One WebSocket session's wire: its inbound decoder and the frame encoders.
pub struct WebSocketWire {
    decoder: Decoder,
    /// permessage-deflate negotiated: frames from this size on go compressed.
    deflate_from: Option<usize>,
}

impl WebSocketWire {
    pub fn new(max_message: usize) -> WebSocketWire {
        WebSocketWire::with_deflate(max_message, None)
    }

    /// A wire for a connection that negotiated permessage-deflate when `deflate_from` is
    /// set (the smallest frame sent compressed).
    pub fn with_deflate(max_message: usize, deflate_from: Option<usize>) -> WebSocketWire {
        WebSocketWire {
            decoder: Decoder::with_deflate(max_message, deflate_from.is_some()),
            deflate_from,
        }
    }
}

impl Wire for WebSocketWire {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn frame_len(&self) -> FrameLen {
        text_frame_len_of
    }

    fn frame(&self, out: &mut BytesMut, json: &[u8]) {
        text(out, json);
    }

    fn deflate_from(&self) -> Option<usize> {
        self.deflate_from
    }

    fn frame_deflated(&self, out: &mut BytesMut, deflated: &[u8]) {
        text_deflated(out, deflated);
    }

    fn deflated_frame_len(&self, n: usize) -> usize {
        text_frame_len(n)
    }

    fn queued_frame_len(&self, buf: &[u8]) -> usize {
        queued_frame_len(buf)
    }

    fn heartbeat(&self, out: &mut BytesMut) {
        ping(out);
    }

    fn pong(&self, out: &mut BytesMut, payload: &[u8]) {
        pong(out, payload);
    }

    fn close(&self, out: &mut BytesMut, code: u16, reason: &str) {
        close(out, code, reason);
    }

    fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Inbound>, Violation> {
        self.decoder.next(input)
    }

    fn discard(&mut self) {
        self.decoder.discard();
    }

    fn peer_answers_close(&self) -> bool {
        true
    }

    fn alive_on_write(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_unmasked_with_the_right_opcode() {
        let mut out = BytesMut::new();
        text(&mut out, b"hi");
        assert_eq!(&out[..], &[0x81, 2, b'h', b'i']);
        out.clear();
        ping(&mut out);
        assert_eq!(&out[..], &[0x89, 0]);
        out.clear();
        close(&mut out, 4001, "replaced");
        assert_eq!(out[0], 0x88);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 4001);
        assert_eq!(&out[4..], b"replaced");
        out.clear();
        text(&mut out, &vec![b'x'; 70_000]);
        assert_eq!(out[1], 127, "64-bit length form");
        assert_eq!(out.len(), 70_000 + MAX_HEADER);
    }

    #[test]
    fn compressed_frames_carry_rsv1_and_measure_like_text() {
        for n in [0, 125, 126, 65_535, 65_536] {
            let mut out = BytesMut::new();
            text_deflated(&mut out, &vec![b'x'; n]);
            assert_eq!(out[0], 0xC1);
            assert_eq!(out.len(), text_frame_len(n));
            let mut plain = BytesMut::new();
            text(&mut plain, &vec![b'x'; n]);
            assert_eq!(
                &out[1..],
                &plain[1..],
                "the same header past the first byte"
            );
            assert_eq!(queued_frame_len(&out), text_frame_len(n));
        }
    }

    #[test]
    fn the_measures_match_the_encoding() {
        for n in [0, 125, 126, 65_535, 65_536] {
            let mut out = BytesMut::new();
            text(&mut out, &vec![b'x'; n]);
            assert_eq!(out.len(), text_frame_len(n));
            out.extend_from_slice(b"next");
            assert_eq!(queued_frame_len(&out), text_frame_len(n));
        }
    }
}
