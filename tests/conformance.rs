//! WebSocket conformance (PROTOCOL.md §1 "WebSocket conformance (RFC 6455)", the handshake
//! refusals and the Origin rule), seen from a raw TCP client written in this file so it can
//! send what no WebSocket library would: unmasked frames, reserved bits and opcodes,
//! headers whose payload never follows.
//!
//! Covered: framing errors close with 1002 and the close handshake then ends in EOF; a
//! valid client close is answered and the connection ends; invalid UTF-8 closes with 1007
//! while a character split across fragments is fine; frames and messages over
//! `--max-frame-bytes` are refused with 1009 from their header alone; a client that keeps
//! sending when it is closed (4029, 1009, 1008) still reads the close code; client pings
//! count against the upstream rate limit; a slow consumer reads whole frames and then 4008;
//! `Sec-WebSocket-Version` other than 13 gets 426; the Origin rule (same origin, exact and
//! wildcard `--allowed-origins`, `*`); and 500 connections sending garbage leave the hub
//! healthy and serving.

mod common;

use std::io;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

// ---------------------------------------------------------------------------------------
// 1002: framing errors, and the close handshake that follows
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn framing_errors_close_with_1002_and_the_close_handshake_ends_in_eof() {
    let hub = Hub::start(&[]).await;

    let mut new_message_inside_unfinished = frame(false, 0, TEXT, true, br#"{"type":"#, None);
    new_message_inside_unfinished.extend(frame(true, 0, TEXT, true, br#"{"type":"ping"}"#, None));
    let mut long_close = 1000u16.to_be_bytes().to_vec();
    long_close.extend([b'r'; 124]);

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "an unmasked text frame".into(),
            frame(true, 0, TEXT, false, PING_JSON, None),
        ),
        (
            "RSV1 set".into(),
            frame(true, 0b100, TEXT, true, PING_JSON, None),
        ),
        (
            "RSV2 set".into(),
            frame(true, 0b010, TEXT, true, PING_JSON, None),
        ),
        (
            "RSV3 set".into(),
            frame(true, 0b001, TEXT, true, PING_JSON, None),
        ),
        (
            "reserved data opcode 0x3".into(),
            frame(true, 0, 0x3, true, b"x", None),
        ),
        (
            "reserved control opcode 0xB".into(),
            frame(true, 0, 0xB, true, b"x", None),
        ),
        (
            "a fragmented ping (FIN=0)".into(),
            frame(false, 0, PING, true, b"", None),
        ),
        (
            "a ping with a 126-byte payload (16-bit length form)".into(),
            frame(true, 0, PING, true, &[b'p'; 126], None),
        ),
        (
            "a pong with a 126-byte payload".into(),
            frame(true, 0, PONG, true, &[b'p'; 126], None),
        ),
        (
            "a close frame with a 126-byte payload".into(),
            frame(true, 0, CLOSE, true, &long_close, None),
        ),
        (
            "a continuation without a started message".into(),
            frame(true, 0, CONT, true, b"x", None),
        ),
        (
            "a new text frame inside an unfinished fragmented message".into(),
            new_message_inside_unfinished,
        ),
        (
            "a close frame with a 1-byte payload".into(),
            frame(true, 0, CLOSE, true, &[0x03], None),
        ),
    ];
    for code in [999u16, 1005, 1006, 1015, 2999, 5000] {
        cases.push((
            format!("a close frame with code {code}"),
            close_frame(code, b""),
        ));
    }

    // One new connection per case; they run side by side so close-grace waits overlap.
    let port = hub.port;
    let runs = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, bytes))| fails_with(port, format!("p{i}"), what, bytes, 1002));
    futures_util::future::join_all(runs).await;
}

#[tokio::test]
async fn a_valid_client_close_is_answered_with_a_close_frame_then_eof() {
    let hub = Hub::start(&[]).await;
    let cases: [(Option<u16>, &[u8]); 5] = [
        (None, b""),
        (Some(1000), b""),
        (Some(1001), b"going away"),
        (Some(3000), b""),
        (Some(4999), b"bye"),
    ];
    for (i, (code, reason)) in cases.into_iter().enumerate() {
        let what = format!("client close {code:?}");
        let mut raw = open(hub.port, &format!("c{i}")).await;
        let bytes = match code {
            Some(c) => close_frame(c, reason),
            None => frame(true, 0, CLOSE, true, b"", None),
        };
        send(&mut raw.wr, &bytes).await;
        let answer = read_until_close(&mut raw.rd, WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: the connection ended without a close frame"));
        // An empty close payload reads as 1005 (no status code).
        let sent = code.unwrap_or(1005);
        assert!(
            answer == 1000 || answer == sent,
            "{what}: answered with close {answer}, expected 1000 or {sent}"
        );
        expect_eof(&mut raw.rd, WAIT, &what).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1007: UTF-8
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_closes_with_1007_but_a_character_split_across_fragments_is_accepted() {
    let hub = Hub::start(&[]).await;

    let mut invalid_once_assembled =
        frame(false, 0, TEXT, true, br#"{"type":"ping","note":""#, None);
    invalid_once_assembled.extend(frame(true, 0, CONT, true, &[0xff, b'"', b'}'], None));
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            "a text frame of bytes ff fe".into(),
            frame(true, 0, TEXT, true, &[0xff, 0xfe], None),
        ),
        (
            "a fragmented text message with an invalid byte in its last fragment".into(),
            invalid_once_assembled,
        ),
        (
            "a text message ending inside a 2-byte character".into(),
            frame(true, 0, TEXT, true, &[b'"', 0xc3], None),
        ),
    ];
    let port = hub.port;
    let runs = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, bytes))| fails_with(port, format!("x{i}"), what, bytes, 1007));
    futures_util::future::join_all(runs).await;

    // A valid message whose "é" (c3 a9) is split between two fragments, with a ping
    // (allowed between fragments) in the middle: one JSON pong and one WebSocket pong.
    let text = r#"{"type":"ping","note":"é"}"#.as_bytes();
    let split = text
        .iter()
        .position(|&b| b == 0xc3)
        .expect("the text has an é")
        + 1;
    let mut raw = open(hub.port, "ok").await;
    let mut bytes = frame(false, 0, TEXT, true, &text[..split], None);
    bytes.extend(frame(true, 0, PING, true, b"mid", None));
    bytes.extend(frame(true, 0, CONT, true, &text[split..], None));
    send(&mut raw.wr, &bytes).await;
    let deadline = Instant::now() + WAIT;
    let (mut control_pong, mut json_pong) = (false, false);
    while !(control_pong && json_pong) {
        match raw.rd.next_msg(deadline).await {
            None => panic!(
                "split-character message: no answer within {WAIT:?} \
                 (WebSocket pong: {control_pong}, JSON pong: {json_pong})"
            ),
            Some(Msg::Control(PONG, payload)) => {
                assert_eq!(payload, b"mid", "a pong echoes its ping's payload");
                control_pong = true;
            }
            Some(Msg::Control(_, _)) => {}
            Some(Msg::Text(v)) => {
                assert_eq!(v, json!({"type": "pong"}), "answer to the fragmented ping");
                json_pong = true;
            }
            Some(Msg::Close(code)) => panic!("split-character message: closed with {code}"),
            Some(Msg::Ended(how)) => panic!("split-character message: connection ended: {how}"),
        }
    }
    // Still usable afterwards.
    send(&mut raw.wr, &frame(true, 0, TEXT, true, PING_JSON, None)).await;
    let v = next_text(&mut raw.rd, WAIT, "pong after the fragmented message").await;
    assert_eq!(v, json!({"type": "pong"}));
}

// ---------------------------------------------------------------------------------------
// 1009: refused from the header alone
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_frame_or_message_is_refused_with_1009_from_its_header_alone() {
    let hub = Hub::start(&["--max-frame-bytes", "1024"]).await;

    // Only headers (with their mask keys) are sent: the payload never follows, so a
    // server that waited for it would never answer.
    let mut fragmented = frame(false, 0, TEXT, true, &[b'x'; 800], None);
    fragmented.extend(frame(true, 0, CONT, true, b"", Some(800)));
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            "a text frame header announcing 2^40 bytes (64-bit length form)".into(),
            frame(true, 0, TEXT, true, b"", Some(1 << 40)),
        ),
        (
            "a text frame header announcing 2000 bytes (16-bit length form)".into(),
            frame(true, 0, TEXT, true, b"", Some(2000)),
        ),
        (
            "an 800-byte fragment, then a continuation header announcing 800 more".into(),
            fragmented,
        ),
    ];
    let port = hub.port;
    let runs = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, bytes))| fails_with(port, format!("b{i}"), what, bytes, 1009));
    futures_util::future::join_all(runs).await;
}

// ---------------------------------------------------------------------------------------
// A client still sending when it is closed reads the code
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_reads_4029_while_still_sending() {
    let hub = Hub::start(&["--upstream-rate", "5"]).await;
    let publish = frame(true, 0, TEXT, true, br#"{"type":"publish","data":1}"#, None);
    let code = flood_until_close(hub.port, "f1", Vec::new(), publish.repeat(32)).await;
    assert_eq!(
        code,
        Some(4029),
        "a client flooding publish frames must read 4029"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_still_being_sent_reads_1009() {
    let hub = Hub::start(&["--max-frame-bytes", "1024"]).await;
    let header = frame(true, 0, TEXT, true, b"", Some(1 << 40));
    let garbage = XorShift::new(7).bytes(16 * 1024);
    let code = flood_until_close(hub.port, "f2", header, garbage).await;
    assert_eq!(
        code,
        Some(1009),
        "a client still sending a huge payload must read 1009"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_text_flood_reads_1008() {
    let hub = Hub::start(&[]).await;
    let garbage = frame(true, 0, TEXT, true, b"garbage", None);
    let code = flood_until_close(hub.port, "f3", Vec::new(), garbage.repeat(32)).await;
    assert_eq!(
        code,
        Some(1008),
        "a client flooding bad frames must read 1008"
    );
}

// ---------------------------------------------------------------------------------------
// Client pings and the upstream rate limit
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn client_pings_count_against_the_upstream_rate_limit() {
    let hub = Hub::start(&["--upstream-rate", "5"]).await;
    let mut raw = open(hub.port, "u1").await;
    let pings = frame(true, 0, PING, true, b"p", None).repeat(200);
    send(&mut raw.wr, &pings).await;
    let mut pongs = 0;
    let code = read_until_close_with(&mut raw.rd, WAIT, |m| {
        if matches!(m, Msg::Control(PONG, _)) {
            pongs += 1;
        }
    })
    .await;
    assert_eq!(
        code,
        Some(4029),
        "200 pings back to back at 5/s (after {pongs} pongs)"
    );
    // Burst is 2x the rate: about 10 pings pass, certainly not 200.
    assert!(
        pongs <= 20,
        "{pongs} of 200 pings answered under a rate of 5/s"
    );
}

// ---------------------------------------------------------------------------------------
// Slow consumer: whole frames, then 4008
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_consumer_reads_whole_frames_then_4008() {
    let hub = Hub::start(&["--outbound-queue-bytes", "65536", "--close-grace", "5s"]).await;
    let mut raw = open(hub.port, "u1").await;
    let data = "x".repeat(8000);
    // The client does not read: publish until the socket buffers and the 64 KiB queue are
    // full and the hub decides 4008 (around a few hundred 8 KB messages), then start
    // reading at once, well within the close grace.
    let mut published = 0;
    let mut closed = false;
    while published < 1000 {
        let (status, body) = hub.publish(json!({"user": "u1", "data": data})).await;
        assert_eq!(status, 202, "publish #{published}: {body}");
        published += 1;
        if hub.metric("herald_closes_total{code=\"4008\"}").await >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "no 4008 after {published} messages of 8 KB to a client that does not read"
    );
    let mut messages = 0;
    let code = read_until_close_with(&mut raw.rd, WAIT, |m| {
        if let Msg::Text(v) = m {
            assert_eq!(v["type"], "message", "frame #{messages} before the close");
            assert_eq!(
                v["data"].as_str(),
                Some(data.as_str()),
                "frame #{messages} before the close carries the whole payload"
            );
            messages += 1;
        }
    })
    .await;
    assert_eq!(
        code,
        Some(4008),
        "after {messages} whole message frames ({published} published)"
    );
    assert!(
        messages > 0,
        "the socket buffers held no message frame at all"
    );
    let _ = timeout(WAIT, raw.wr.write_all(&close_frame(4008, b""))).await;
    expect_eof(&mut raw.rd, WAIT, "after the 4008 close handshake").await;
}

// ---------------------------------------------------------------------------------------
// Handshake refusals: version and Origin
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_version_other_than_13_gets_426_naming_13() {
    let hub = Hub::start(&[]).await;
    let (head, _raw) = upgrade(hub.port, "/websocket/u1", "8", None).await;
    assert_eq!(head.status, 426, "{}", head.text);
    assert_eq!(
        head.header("sec-websocket-version").map(str::trim),
        Some("13"),
        "a 426 names the supported version: {}",
        head.text
    );
    // Version 13 on the same hub upgrades.
    let (head, _raw) = upgrade(hub.port, "/websocket/u1", "13", None).await;
    assert_eq!(head.status, 101, "{}", head.text);
}

#[tokio::test]
async fn origins_are_accepted_when_same_origin_or_allowed_exactly_or_by_wildcard() {
    let hub = Hub::start(&[
        "--allowed-origins",
        "https://app.example,https://*.shop.example",
    ])
    .await;
    let same = format!("http://127.0.0.1:{}", hub.port);
    let cases = [
        (Some(same.as_str()), 101),
        (Some("https://app.example"), 101),
        (Some("https://a.shop.example"), 101),
        (Some("https://evil.example"), 403),
        (Some("https://shop.example.evil.example"), 403),
        (Some("null"), 403),
        (None, 101),
    ];
    for (i, (origin, want)) in cases.into_iter().enumerate() {
        let (head, _raw) = upgrade(hub.port, &format!("/websocket/o{i}"), "13", origin).await;
        assert_eq!(head.status, want, "Origin: {origin:?}\n{}", head.text);
    }
}

#[tokio::test]
async fn allowed_origins_star_accepts_any_origin() {
    let hub = Hub::start(&["--allowed-origins", "*"]).await;
    let (head, _raw) = upgrade(
        hub.port,
        "/websocket/u1",
        "13",
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(head.status, 101, "{}", head.text);
}

#[tokio::test]
async fn without_allowed_origins_only_the_same_origin_passes() {
    let hub = Hub::start(&[]).await;
    let (head, _raw) = upgrade(
        hub.port,
        "/websocket/u1",
        "13",
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(head.status, 403, "cross-site origin\n{}", head.text);
    let same = format!("http://127.0.0.1:{}", hub.port);
    let (head, _raw) = upgrade(hub.port, "/websocket/u2", "13", Some(same.as_str())).await;
    assert_eq!(head.status, 101, "same origin\n{}", head.text);
}

// ---------------------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_hub_survives_500_connections_sending_garbage() {
    let hub = Hub::start(&[]).await;
    // In batches of 100 at once.
    for batch in 0..5u64 {
        let conns = (0..100u64).map(|i| garbage_connection(hub.port, batch * 100 + i));
        futures_util::future::join_all(conns).await;
    }
    let health = timeout(WAIT, reqwest::get(format!("{}/healthz", hub.http())))
        .await
        .expect("/healthz timed out after the garbage")
        .expect("/healthz request");
    assert_eq!(health.status(), 200);

    let (mut ws, _) = connect(&hub.ws_url("after", "")).await;
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    let (status, body) = hub
        .publish(json!({"user": "after", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["data"], json!({"n": 1}), "{m}");
    // Every garbage session is gone; only the normal client remains.
    hub.wait_json("/api/v1/stats", WAIT, |v| v["connections"] == 1)
        .await;
}

/// Handshake as `g{i}`, send 2 KiB of seeded pseudo-random bytes, drop the connection.
async fn garbage_connection(port: u16, i: u64) {
    let (head, mut raw) = upgrade(port, &format!("/websocket/g{i}"), "13", None).await;
    assert_eq!(head.status, 101, "garbage connection {i}\n{}", head.text);
    let bytes = XorShift::new(i + 1).bytes(2048);
    // The hub may close first; only that it survives matters.
    let _ = timeout(WAIT, raw.wr.write_all(&bytes)).await;
}

// ---------------------------------------------------------------------------------------
// The raw client's own encoding and parsing (no hub involved)
// ---------------------------------------------------------------------------------------

#[test]
fn the_raw_client_encodes_and_parses_frames_as_rfc_6455_says() {
    // RFC 6455 §5.7: a masked "Hello" with mask 37 fa 21 3d.
    assert_eq!(
        frame(true, 0, TEXT, true, b"Hello", None),
        [0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
    let f = frame(true, 0, TEXT, true, b"", Some(1 << 40));
    assert_eq!(f.len(), 2 + 8 + 4);
    assert_eq!(&f[..2], &[0x81u8, 0x80 | 127]);
    assert_eq!(&f[2..10], &(1u64 << 40).to_be_bytes());
    let f = frame(false, 0b100, PING, false, &[0; 126], None);
    assert_eq!(&f[..4], &[0x49u8, 126, 0, 126]);
    assert_eq!(f.len(), 4 + 126);

    let mut wire = vec![0x81u8, 5];
    wire.extend(b"Hello");
    wire.extend([0x89, 126, 0, 200]);
    wire.extend([7u8; 200]);
    let (a, used) = parse_frame(&wire).expect("a whole frame");
    assert_eq!(
        (a.fin, a.opcode, &a.payload[..]),
        (true, TEXT, &b"Hello"[..])
    );
    assert!(
        parse_frame(&wire[used..used + 150]).is_none(),
        "a partial frame waits"
    );
    let (b, used_b) = parse_frame(&wire[used..]).expect("the 16-bit length frame");
    assert_eq!(
        (b.opcode, b.payload.len(), used + used_b),
        (PING, 200, wire.len())
    );
    let mut long = vec![0x82u8, 127];
    long.extend(70_000u64.to_be_bytes());
    long.extend(vec![1u8; 70_000]);
    let (c, used_c) = parse_frame(&long).expect("the 64-bit length frame");
    assert_eq!((c.payload.len(), used_c), (70_000, long.len()));

    assert_eq!(close_code(&[]), 1005);
    assert_eq!(close_code(&[0x0f, 0xa0, b'o', b'k']), 4000);
}

// =======================================================================================
// The raw client
// =======================================================================================

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const PING_JSON: &[u8] = br#"{"type":"ping"}"#;
/// The sample nonce of RFC 6455 §1.3 and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The masking key of RFC 6455 §5.7's examples.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// A server frame longer than this means the parser lost its place in the stream.
const MAX_SERVER_FRAME: u64 = 16 << 20;

/// A raw WebSocket connection after its handshake: split so a task can keep writing while
/// the test reads.
struct Raw {
    rd: FrameReader,
    wr: OwnedWriteHalf,
}

/// The response head of a handshake.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    /// The whole head, for failure messages.
    text: String,
}

impl Head {
    fn parse(text: String) -> Head {
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Head {
            status,
            headers,
            text,
        }
    }

    /// A header's value; names compare case-insensitively.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One server frame.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// What reading the stream yields at the frame level.
enum Event {
    Frame(Frame),
    /// The peer closed the connection at a frame boundary (read returned 0).
    Eof,
    /// The peer closed the connection this many bytes into a frame.
    Truncated(usize),
    /// The read failed (e.g. connection reset).
    Error(io::Error),
}

/// What reading the stream yields at the message level.
enum Msg {
    /// A whole text message (fragments assembled), parsed as JSON.
    Text(Value),
    /// A ping or pong with its payload.
    Control(u8, Vec<u8>),
    /// A close frame's code (1005 when it carried none).
    Close(u16),
    /// The connection ended without a close frame: how.
    Ended(String),
}

/// Reads server frames (which are never masked) from a buffered read half.
struct FrameReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    /// A fragmented text message from the server, not finished yet.
    partial: Option<Vec<u8>>,
}

impl FrameReader {
    /// Read once more into the buffer: `None` when the deadline passed first, else the
    /// read's result (0 = EOF).
    async fn fill(&mut self, deadline: Instant) -> Option<io::Result<usize>> {
        let mut chunk = [0u8; 16 * 1024];
        let res = timeout_at(deadline, self.rd.read(&mut chunk)).await.ok()?;
        if let Ok(n) = res {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Some(res)
    }

    /// The HTTP response head, up to and without its blank line; bytes after it (frames
    /// the server sent right away) stay buffered.
    async fn read_head(&mut self, within: Duration) -> Head {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return Head::parse(text);
            }
            assert!(self.buf.len() < 64 * 1024, "response head over 64 KiB");
            match self.fill(deadline).await {
                None => panic!(
                    "no response head within {within:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Some(Ok(0)) => panic!(
                    "connection closed before the response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("read error before the response head: {e}"),
            }
        }
    }

    /// The next frame or the end of the stream; `None` when the deadline passed first.
    async fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            if let Some((f, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(Event::Frame(f));
            }
            match self.fill(deadline).await? {
                Ok(0) if self.buf.is_empty() => return Some(Event::Eof),
                Ok(0) => return Some(Event::Truncated(self.buf.len())),
                Ok(_) => {}
                Err(e) => return Some(Event::Error(e)),
            }
        }
    }

    /// The next message, control frame or close; `None` when the deadline passed first.
    /// Text messages must be valid UTF-8 JSON: a parser out of step with the stream would
    /// not produce that.
    async fn next_msg(&mut self, deadline: Instant) -> Option<Msg> {
        loop {
            let f = match self.next_event(deadline).await? {
                Event::Frame(f) => f,
                Event::Eof => return Some(Msg::Ended("EOF".into())),
                Event::Truncated(n) => {
                    return Some(Msg::Ended(format!("EOF {n} bytes into a frame")))
                }
                Event::Error(e) => return Some(Msg::Ended(format!("read error: {e}"))),
            };
            match f.opcode {
                CLOSE => {
                    assert!(f.fin, "the server sent a fragmented close frame");
                    return Some(Msg::Close(close_code(&f.payload)));
                }
                PING | PONG => {
                    assert!(f.fin, "the server sent a fragmented control frame");
                    return Some(Msg::Control(f.opcode, f.payload));
                }
                TEXT if self.partial.is_none() => {
                    if f.fin {
                        return Some(Msg::Text(json_text(&f.payload)));
                    }
                    self.partial = Some(f.payload);
                }
                CONT if self.partial.is_some() => {
                    if let Some(buf) = self.partial.as_mut() {
                        buf.extend_from_slice(&f.payload);
                    }
                    if f.fin {
                        let whole = self.partial.take().unwrap_or_default();
                        return Some(Msg::Text(json_text(&whole)));
                    }
                }
                op => panic!(
                    "unexpected server frame: opcode {op:#x}, fin {}, {} bytes, \
                     inside a fragmented message: {}",
                    f.fin,
                    f.payload.len(),
                    self.partial.is_some()
                ),
            }
        }
    }
}

/// Parse one whole server frame at the start of `buf`: the frame and the bytes it used,
/// or `None` when more bytes are needed.
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    assert_eq!(b1 & 0x80, 0, "the server sent a masked frame");
    assert_eq!(b0 & 0x70, 0, "the server sent a frame with RSV bits set");
    let (len, at) = match b1 & 0x7f {
        126 => {
            let bytes = buf.get(2..4)?;
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
        }
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().expect("8 length bytes");
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    assert!(
        len <= MAX_SERVER_FRAME,
        "implausible server frame length {len}: the stream is out of step"
    );
    let end = at + len as usize;
    let payload = buf.get(at..end)?.to_vec();
    let f = Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload,
    };
    Some((f, end))
}

/// A close frame's code: 1005 when it carries none. Its reason must be UTF-8.
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [] => 1005,
        [_] => panic!("the server sent a close frame with a 1-byte payload"),
        [hi, lo, reason @ ..] => {
            assert!(
                std::str::from_utf8(reason).is_ok(),
                "the server's close reason is not UTF-8: {reason:?}"
            );
            u16::from_be_bytes([*hi, *lo])
        }
    }
}

/// A server text message as JSON.
fn json_text(payload: &[u8]) -> Value {
    let text = std::str::from_utf8(payload).expect("a server text frame is valid UTF-8");
    serde_json::from_str(text).unwrap_or_else(|e| {
        let preview: String = text.chars().take(200).collect();
        panic!("a server text frame is not JSON ({e}): {preview:?}")
    })
}

/// Encode a client frame. `rsv` holds RSV1..RSV3 as bits 2..0; `announced_len` replaces
/// the payload's length in the header (the payload sent is still `payload`), so a header
/// can promise bytes that never follow. Masked frames use [`MASK`].
fn frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: bool,
    payload: &[u8],
    announced_len: Option<u64>,
) -> Vec<u8> {
    let len = announced_len.unwrap_or(payload.len() as u64);
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0f));
    let mask_bit = if mask { 0x80 } else { 0 };
    if len <= 125 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend((len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend(len.to_be_bytes());
    }
    if mask {
        out.extend(MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked close frame with `code` and `reason`.
fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(true, 0, CLOSE, true, &payload, None)
}

/// Write `bytes`, failing the test if that does not complete within [`WAIT`].
async fn send(wr: &mut OwnedWriteHalf, bytes: &[u8]) {
    timeout(WAIT, wr.write_all(bytes))
        .await
        .expect("write timed out")
        .expect("write failed");
}

/// Connect and send an upgrade request for `path` with this `Sec-WebSocket-Version` and
/// `Origin`; returns the response head and the connection. A 101 must carry the accept
/// value RFC 6455 gives for its sample nonce.
async fn upgrade(port: u16, path: &str, version: &str, origin: Option<&str>) -> (Head, Raw) {
    let stream = timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut raw = Raw {
        rd: FrameReader {
            rd,
            buf: Vec::new(),
            partial: None,
        },
        wr,
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: {version}\r\n"
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    send(&mut raw.wr, req.as_bytes()).await;
    let head = raw.rd.read_head(WAIT).await;
    if head.status == 101 {
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some(ACCEPT),
            "101 with the wrong accept value\n{}",
            head.text
        );
    }
    (head, raw)
}

/// A session of `user` on the standalone hub, after its welcome frame.
async fn open(port: u16, user: &str) -> Raw {
    let (head, mut raw) = upgrade(port, &format!("/websocket/{user}"), "13", None).await;
    assert_eq!(head.status, 101, "upgrade of {user} refused\n{}", head.text);
    let welcome = next_text(&mut raw.rd, WAIT, "welcome").await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    raw
}

/// The next text message as JSON, skipping pings and pongs; fails on a close, the end of
/// the connection, or nothing within `within`.
async fn next_text(rd: &mut FrameReader, within: Duration, what: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        match rd.next_msg(deadline).await {
            None => panic!("{what}: no text frame within {within:?}"),
            Some(Msg::Text(v)) => return v,
            Some(Msg::Control(_, _)) => continue,
            Some(Msg::Close(code)) => panic!("{what}: closed with {code} instead"),
            Some(Msg::Ended(how)) => panic!("{what}: connection ended instead: {how}"),
        }
    }
}

/// Read until a close frame and return its code, passing every text message and control
/// frame before it to `seen`; `None` when the connection ended without one (EOF, reset).
/// Fails if nothing of the kind happens within `within`.
async fn read_until_close_with(
    rd: &mut FrameReader,
    within: Duration,
    mut seen: impl FnMut(&Msg),
) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        match rd.next_msg(deadline).await {
            None => panic!("neither a close frame nor the end of the connection within {within:?}"),
            Some(Msg::Close(code)) => return Some(code),
            Some(Msg::Ended(how)) => {
                eprintln!("the connection ended without a close frame: {how}");
                return None;
            }
            Some(m) => seen(&m),
        }
    }
}

/// [`read_until_close_with`], ignoring what comes before the close.
async fn read_until_close(rd: &mut FrameReader, within: Duration) -> Option<u16> {
    read_until_close_with(rd, within, |_| {}).await
}

/// After the close frames: the next read returns 0 (no frame, no reset) within `within`.
async fn expect_eof(rd: &mut FrameReader, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    match rd.next_event(deadline).await {
        None => panic!("{what}: the TCP connection was still open {within:?} after the close"),
        Some(Event::Eof) => {}
        Some(Event::Frame(f)) => panic!(
            "{what}: a frame (opcode {:#x}, {} bytes) after the close frame",
            f.opcode,
            f.payload.len()
        ),
        Some(Event::Truncated(n)) => {
            panic!("{what}: {n} stray bytes after the close frame, then EOF")
        }
        Some(Event::Error(e)) => {
            panic!("{what}: the connection was reset instead of closed: {e}")
        }
    }
}

/// Open a session as `user`, send `bytes`, and expect a close frame with `want`; then echo
/// a close frame and expect the server to end the TCP connection (EOF, within the close
/// grace at most).
async fn fails_with(port: u16, user: String, what: String, bytes: Vec<u8>, want: u16) {
    let mut raw = open(port, &user).await;
    send(&mut raw.wr, &bytes).await;
    let code = read_until_close(&mut raw.rd, WAIT).await;
    assert_eq!(code, Some(want), "{what}: expected close {want}");
    // The server may already be closing the socket; the echo is best effort.
    let _ = timeout(WAIT, raw.wr.write_all(&close_frame(want, b""))).await;
    expect_eof(&mut raw.rd, WAIT, &what).await;
}

/// Open a session as `user`; a task writes `first` and then `chunk` over and over as fast
/// as it can (stopping only when a write fails) while this reads until the close. Returns
/// the close code (`None`: the connection ended without one) and stops the writer.
async fn flood_until_close(port: u16, user: &str, first: Vec<u8>, chunk: Vec<u8>) -> Option<u16> {
    let Raw { mut rd, mut wr } = open(port, user).await;
    let writer = tokio::spawn(async move {
        if wr.write_all(&first).await.is_err() {
            return;
        }
        loop {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    let code = read_until_close(&mut rd, WAIT).await;
    writer.abort();
    let _ = timeout(WAIT, writer).await;
    code
}

/// xorshift64: seeded pseudo-random bytes, no crate needed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Never zero (a zero state stays zero).
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 32) as u8).collect()
    }
}
