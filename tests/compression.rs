//! permessage-deflate (RFC 7692, PROTOCOL §1) over raw TCP: negotiated only with
//! `--compression` and only when the client asks, always without context takeover; frames
//! from `--compression-min-bytes` on go compressed (RSV1), the same bytes to every
//! recipient; compressed client frames are inflated, and a decompression bomb closes with
//! 1009.

mod common;

use std::io::Write;

use common::*;
use flate2::write::DeflateEncoder;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Frame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Upgrade with `extensions` offered; returns the 101's head and the connection.
async fn upgrade(port: u16, user: &str, extensions: Option<&str>) -> (String, Raw) {
    let mut stream = timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut req = format!(
        "GET /websocket/{user} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    if let Some(e) = extensions {
        req.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send upgrade");
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
    };
    let end = loop {
        if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        raw.fill().await;
    };
    let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
    raw.buf.drain(..end);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (head, raw)
}

fn extension_header(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("sec-websocket-extensions:")
            .map(|v| v.trim().to_string())
    })
}

impl Raw {
    async fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .expect("read");
        assert!(n > 0, "the connection ended");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next whole server frame (pings skipped).
    async fn frame(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => {
                        let b: [u8; 8] = self.buf[2..10].try_into().expect("8 bytes");
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    assert_eq!(b0 & 0x30, 0, "RSV2/RSV3 set");
                    let f = Frame {
                        rsv1: b0 & 0x40 != 0,
                        opcode: b0 & 0x0f,
                        payload,
                    };
                    if f.opcode == 0x9 {
                        continue;
                    }
                    return f;
                }
            }
            self.fill().await;
        }
    }

    async fn send(&mut self, rsv1: bool, opcode: u8, payload: &[u8]) {
        let mut out = vec![0x80 | if rsv1 { 0x40 } else { 0 } | opcode];
        let len = payload.len();
        if len <= 125 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend((len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend((len as u64).to_be_bytes());
        }
        out.extend(MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        timeout(WAIT, self.stream.write_all(&out))
            .await
            .expect("write timed out")
            .expect("write");
    }

    async fn text(&mut self) -> (bool, Value) {
        let f = self.frame().await;
        assert_eq!(f.opcode, 0x1, "a text frame");
        let bytes = if f.rsv1 {
            inflate(&f.payload)
        } else {
            f.payload
        };
        (f.rsv1, serde_json::from_slice(&bytes).expect("JSON"))
    }

    async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame().await;
            if f.opcode == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }
}

/// A message inflated as a client does (RFC 7692 §7.2.2): the tail put back, then a sync
/// flush; a message without context takeover never ends its deflate stream.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(input.len() * 8);
    while (d.total_in() as usize) < input.len() {
        out.reserve(64 * 1024);
        let at = d.total_in() as usize;
        d.decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
            .expect("inflate");
    }
    out
}

fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(payload).expect("deflate");
    e.flush().expect("sync flush");
    let mut out = e.finish().expect("deflate");
    // A sync flush ends in 00 00 ff ff, which the sender takes off (RFC 7692 §7.2.1).
    while out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}

fn order(bytes: usize) -> Value {
    let line = json!({"sku": "A-100", "qty": 2, "price": "19.90", "note": "no onions"});
    let mut items = Vec::new();
    while serde_json::to_vec(&items).expect("json").len() < bytes {
        items.push(line.clone());
    }
    json!({ "order": "o-1", "items": items })
}

#[tokio::test]
async fn negotiated_sessions_get_large_frames_compressed_and_the_same_bytes_each() {
    let hub = Hub::secured(&["--compression"]).await;
    let t = token("u1", 60, None);
    let path_user = format!("u1?token={t}");
    let (head, mut a) = upgrade(hub.port, &path_user, Some(OFFER)).await;
    assert_eq!(
        extension_header(&head).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    let (_, mut b) = upgrade(hub.port, &path_user, Some("permessage-deflate")).await;
    let (_, mut plain) = upgrade(hub.port, &path_user, None).await;
    for raw in [&mut a, &mut b, &mut plain] {
        let (_, welcome) = raw.text().await;
        assert_eq!(welcome["type"], "welcome");
    }

    let big = order(2048);
    let (status, _) = hub.publish(json!({"user": "u1", "data": big})).await;
    assert_eq!(status, 202);
    let fa = a.frame().await;
    let fb = b.frame().await;
    assert!(fa.rsv1 && fb.rsv1, "a 2 KB frame goes compressed");
    assert_eq!(
        fa.payload, fb.payload,
        "compressed once: the same bytes to each"
    );
    let msg: Value = serde_json::from_slice(&inflate(&fa.payload)).expect("JSON");
    assert_eq!(msg["data"], big);
    let (compressed, msg) = plain.text().await;
    assert!(!compressed, "a session that did not ask gets it plain");
    assert_eq!(msg["data"], big);
    let wire = fa.payload.len();
    let json_len = serde_json::to_vec(&msg).expect("json").len();
    assert!(
        wire * 3 < json_len,
        "{wire} bytes on the wire for {json_len}"
    );

    // Below --compression-min-bytes: plain.
    hub.publish(json!({"user": "u1", "data": "hi"})).await;
    let (compressed, msg) = a.text().await;
    assert!(!compressed);
    assert_eq!(msg["data"], "hi");

    // A compressed client frame is read like any other.
    a.send(true, 0x1, &deflate(br#"{"type":"ping"}"#)).await;
    let (_, pong) = a.text().await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_1009() {
    let hub = Hub::secured(&["--compression", "--max-frame-bytes", "65536"]).await;
    let t = token("u1", 60, None);
    let (_, mut raw) = upgrade(hub.port, &format!("u1?token={t}"), Some(OFFER)).await;
    raw.text().await;
    let bomb = deflate(&vec![b' '; 50 * 1024 * 1024]);
    assert!(bomb.len() < 65536, "the bomb itself is under the limit");
    raw.send(true, 0x1, &bomb).await;
    assert_eq!(raw.close_code().await, 1009);
    // The hub is fine afterwards.
    let (_, mut next) = upgrade(hub.port, &format!("u1?token={t}"), Some(OFFER)).await;
    next.text().await;
}

#[tokio::test]
async fn without_the_flag_the_extension_is_declined_and_rsv1_is_a_protocol_error() {
    let hub = Hub::secured(&[]).await;
    let t = token("u1", 60, None);
    let (head, mut raw) = upgrade(hub.port, &format!("u1?token={t}"), Some(OFFER)).await;
    assert_eq!(extension_header(&head), None, "{head}");
    raw.text().await;
    hub.publish(json!({"user": "u1", "data": order(2048)}))
        .await;
    let (compressed, _) = raw.text().await;
    assert!(!compressed);
    raw.send(true, 0x1, &deflate(br#"{"type":"ping"}"#)).await;
    assert_eq!(raw.close_code().await, 1002);
}
