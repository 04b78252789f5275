//! Inbound WebSocket framing (RFC 6455, server side): turns the bytes a client sent into
//! whole messages and control frames, and decides which violations fail the connection
//! and with which code.
//!
//! Limits are enforced on headers, before payloads arrive: a frame, or a fragmented
//! message's running total, that announces more than `max_message` bytes fails with 1009
//! as soon as its length is known, so its payload is never buffered. What the decoder
//! holds at rest is therefore bounded: the message being assembled plus one incomplete
//! frame, at most `max_message + MAX_CLIENT_HEADER` bytes, plus one control frame
//! (at most [`MAX_CONTROL_FRAME`]) that may interleave a fragmented message.
//!
//! After the session starts closing, [`Decoder::discard`] switches to skipping: data
//! payloads are dropped as they arrive, without buffering, and only the peer's Close frame
//! is still reported.

use bytes::{Buf, BytesMut};

pub use crate::session::wire::{Inbound, Violation};

/// Largest header of a client frame: 2 bytes, 8 bytes of length, 4 bytes of mask.
pub const MAX_CLIENT_HEADER: usize = 14;
/// Largest control frame a client may send: a 6-byte header and 125 bytes of payload.
pub const MAX_CONTROL_FRAME: usize = 6 + 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A fragmented message in progress.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// RSV1 on its first frame: permessage-deflate compressed.
    compressed: bool,
    bytes: BytesMut,
}

/// The inbound state of one connection.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
    partial: Option<Partial>,
    /// Closing: skip data frames instead of decoding them.
    discarding: bool,
    /// Payload bytes of the frame being skipped that have not arrived yet.
    skip: u64,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    rsv1: bool,
    opcode: u8,
    len: u64,
    /// Header bytes including the mask.
    size: usize,
    mask: [u8; 4],
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder::with_deflate(max_message, false)
    }

    /// A decoder for a connection that negotiated permessage-deflate (`deflate`).
    pub fn with_deflate(max_message: usize, deflate: bool) -> Decoder {
        Decoder {
            max_message,
            deflate,
            partial: None,
            discarding: false,
            skip: 0,
        }
    }

    /// From now on, drop data frames unread (the session is closing).
    pub fn discard(&mut self) {
        self.discarding = true;
        self.partial = None;
    }

    /// Bytes held in the message being assembled.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.bytes.len())
    }

    /// Take the next complete item from `buf`, consuming its bytes. `Ok(None)`: more bytes
    /// are needed (what is left in `buf` is less than one frame).
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Violation> {
        loop {
            if self.skip > 0 {
                let n = (buf.len() as u64).min(self.skip);
                buf.advance(n as usize);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let Some(header) = self.header(buf)? else {
                return Ok(None);
            };
            let total = header.size as u64 + header.len;
            if self.discarding && header.opcode != OP_CLOSE {
                let have = buf.len() as u64;
                let take = have.min(total);
                buf.advance(take as usize);
                self.skip = total - take;
                continue;
            }
            if (buf.len() as u64) < total {
                return Ok(None);
            }
            buf.advance(header.size);
            let mut payload = buf.split_to(header.len as usize);
            unmask(&mut payload, header.mask);
            if let Some(item) = self.frame(header.fin, header.rsv1, header.opcode, payload)? {
                return Ok(Some(item));
            }
        }
    }

    /// Parse and check the header at the front of `buf`, without consuming it. Every check
    /// that the header alone allows happens as soon as the bytes it needs are there.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, Violation> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let rsv1 = b0 & 0x40 != 0;
        // RSV1 belongs to permessage-deflate, and only on a message's first frame.
        let rsv1_allowed = self.deflate && matches!(opcode, OP_TEXT | OP_BINARY);
        if b0 & 0x30 != 0 || (rsv1 && !rsv1_allowed) {
            return Err(Violation::Protocol(
                "reserved bits set without an extension",
            ));
        }
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(Violation::Protocol("reserved opcode")),
        }
        if control && !fin {
            return Err(Violation::Protocol("fragmented control frame"));
        }
        if !self.discarding {
            match (opcode, &self.partial) {
                (OP_CONTINUATION, None) => {
                    return Err(Violation::Protocol(
                        "continuation without a started message",
                    ))
                }
                (OP_TEXT | OP_BINARY, Some(_)) => {
                    return Err(Violation::Protocol("new message inside an unfinished one"))
                }
                _ => {}
            }
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let len7 = b1 & 0x7f;
        if control && len7 > 125 {
            return Err(Violation::Protocol("control frame over 125 bytes"));
        }
        let (len, len_size) = match len7 {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let len = u64::from_be_bytes(a);
                    if len >> 63 != 0 {
                        return Err(Violation::Protocol("frame length with the top bit set"));
                    }
                    (len, 8)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        if !control && !self.discarding {
            let before = self.held() as u64;
            if before.saturating_add(len) > self.max_message as u64 {
                return Err(Violation::TooBig);
            }
        }
        let size = 2 + len_size + 4;
        let Some(m) = buf.get(size - 4..size) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            rsv1,
            opcode,
            len,
            size,
            mask: [m[0], m[1], m[2], m[3]],
        }))
    }

    /// One whole frame; returns an item when it completes one.
    fn frame(
        &mut self,
        fin: bool,
        rsv1: bool,
        opcode: u8,
        payload: BytesMut,
    ) -> Result<Option<Inbound>, Violation> {
        match opcode {
            OP_PING => Ok(Some(Inbound::Ping(payload))),
            OP_PONG => Ok(Some(Inbound::Pong)),
            OP_CLOSE => close_frame(&payload).map(|c| Some(Inbound::Close(c))),
            OP_TEXT | OP_BINARY if fin => self.finish(opcode == OP_TEXT, rsv1, payload).map(Some),
            OP_TEXT | OP_BINARY => {
                self.partial = Some(Partial {
                    text: opcode == OP_TEXT,
                    compressed: rsv1,
                    bytes: payload,
                });
                Ok(None)
            }
            _ => {
                // A continuation: `header` made sure a message is in progress.
                let Some(mut partial) = self.partial.take() else {
                    return Err(Violation::Protocol(
                        "continuation without a started message",
                    ));
                };
                partial.bytes.extend_from_slice(&payload);
                if fin {
                    self.finish(partial.text, partial.compressed, partial.bytes)
                        .map(Some)
                } else {
                    self.partial = Some(partial);
                    Ok(None)
                }
            }
        }
    }
}

impl Decoder {
    /// A whole message: inflated first when compressed (never past `max_message`).
    fn finish(&self, text: bool, compressed: bool, bytes: BytesMut) -> Result<Inbound, Violation> {
        let bytes = if compressed {
            BytesMut::from(&super::deflate::inflate(&bytes, self.max_message)?[..])
        } else {
            bytes
        };
        if !text {
            return Ok(Inbound::Binary(bytes));
        }
        String::from_utf8(bytes.to_vec())
            .map(Inbound::Text)
            .map_err(|_| Violation::BadUtf8)
    }
}

/// The code of a Close frame, checked: no 1-byte payload, a code a peer may send, and a
/// UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Violation::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| Violation::BadUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Codes a peer may put in a Close frame: the registered ones that are not reserved for
/// local use (1004, 1005, 1006, 1015), and the ranges for libraries and applications.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    pub(crate) fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Inbound>, Violation> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = d.next(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    #[test]
    fn whole_and_fragmented_text_decode() {
        let mut d = Decoder::new(1024);
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x01, b"hel"));
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x80, b"lo"));
        let items = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            items,
            vec![
                Inbound::Text("hello".into()),
                Inbound::Ping(BytesMut::from(&b"p"[..])),
                Inbound::Text("hello".into()),
            ]
        );
    }

    #[test]
    fn framing_errors_are_1002() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", vec![0x81, 0x01, b'x']),
            ("rsv1", frame(0xC1, b"x")),
            ("rsv3", frame(0x91, b"x")),
            ("opcode 3", frame(0x83, b"x")),
            ("opcode 11", frame(0x8B, b"x")),
            ("fragmented ping", frame(0x09, b"x")),
            ("long ping", frame(0x89, &[0u8; 126])),
            ("continuation first", frame(0x80, b"x")),
            ("close 1 byte", frame(0x88, &[3])),
            ("close 999", frame(0x88, &999u16.to_be_bytes())),
            ("close 1005", frame(0x88, &1005u16.to_be_bytes())),
            ("close 5000", frame(0x88, &5000u16.to_be_bytes())),
        ];
        for (what, bytes) in cases {
            let mut d = Decoder::new(1024);
            assert_eq!(
                decode_all(&mut d, &bytes).map_err(Violation::code),
                Err(1002),
                "{what}"
            );
        }
        let mut d = Decoder::new(1024);
        let mut bytes = frame(0x01, b"a");
        bytes.extend(frame(0x81, b"b"));
        assert_eq!(
            decode_all(&mut d, &bytes),
            Err(Violation::Protocol("new message inside an unfinished one"))
        );
    }

    #[test]
    fn invalid_utf8_is_1007_and_valid_close_codes_pass() {
        let mut d = Decoder::new(1024);
        assert_eq!(
            decode_all(&mut d, &frame(0x81, &[0xff, 0xfe])),
            Err(Violation::BadUtf8)
        );
        for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
            let mut d = Decoder::new(1024);
            let items = decode_all(&mut d, &frame(0x88, &code.to_be_bytes())).unwrap();
            assert_eq!(items, vec![Inbound::Close(Some(code))]);
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut d = Decoder::new(1024);
        // 2^40 bytes announced, header only.
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(decode_all(&mut d, &head[..10]), Err(Violation::TooBig));
        // The running total of a fragmented message, checked at the next header.
        let mut d = Decoder::new(1024);
        let mut bytes = frame(0x01, &[b'a'; 800]);
        bytes.extend_from_slice(&[0x80, 0x80 | 126, 0x03, 0x20]);
        assert_eq!(decode_all(&mut d, &bytes), Err(Violation::TooBig));
    }

    #[test]
    fn discarding_skips_data_without_holding_it_and_still_sees_close() {
        let mut d = Decoder::new(1024);
        d.discard();
        let big = frame(0x82, &[7u8; 5000]);
        let mut buf = BytesMut::from(&big[..3000]);
        assert_eq!(d.next(&mut buf), Ok(None));
        assert!(buf.is_empty(), "skipped bytes are not kept");
        let mut rest = BytesMut::from(&big[3000..]);
        rest.extend_from_slice(&frame(0x88, &1000u16.to_be_bytes()));
        assert_eq!(d.next(&mut rest), Ok(Some(Inbound::Close(Some(1000)))));
    }
}
