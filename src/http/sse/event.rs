//! Server frames as Server-Sent Events (PROTOCOL §5b), and the session's [`Wire`] for this
//! transport.
//!
//! Each frame is one event: `event: <frame type>`, `id: <cursor>` for messages (so a
//! reconnecting `EventSource` sends `Last-Event-ID`), and the frame's JSON as `data:`
//! lines. Herald writes its frames as compact JSON, but a published JSON payload is
//! embedded verbatim and may hold line breaks between tokens: each line becomes its own
//! `data:` line, which the client joins with `\n` back into the same JSON.

use bytes::{BufMut, BytesMut};

use crate::link::FrameLen;
use crate::session::wire::{Inbound, Violation, Wire};

/// The value of a top-level string field `"key":"..."` in a frame herald encoded. Inside
/// a JSON string every `"` is escaped, so the first unescaped `"key":"` is the field
/// itself; `type` comes first and a message's `cursor` precedes its `data`.
fn field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let needle = format!("\"{key}\":\"");
    let start = json
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?
        + needle.len();
    let len = json[start..].iter().position(|&b| b == b'"')?;
    Some(&json[start..start + len])
}

/// Lines of `data`, split at CR, LF or CRLF (SSE's line ends).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let d = rest?;
        match d.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                rest = None;
                Some(d)
            }
            Some(i) => {
                let skip = if d[i] == b'\r' && d.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&d[i + skip..]);
                Some(&d[..i])
            }
        }
    })
}

/// Write the event for a frame through `put`, piece by piece.
fn event(json: &[u8], mut put: impl FnMut(&[u8])) {
    let kind = field(json, "type").unwrap_or(b"message");
    put(b"event: ");
    put(kind);
    put(b"\n");
    if kind == b"message" {
        if let Some(cursor) = field(json, "cursor") {
            put(b"id: ");
            put(cursor);
            put(b"\n");
        }
    }
    for line in lines(json) {
        put(b"data: ");
        put(line);
        put(b"\n");
    }
    put(b"\n");
}

/// Bytes the event for `json` takes.
pub fn event_len(json: &[u8]) -> usize {
    let mut n = 0;
    event(json, |b| n += b.len());
    n
}

/// Append the event for `json`.
pub fn write_event(out: &mut BytesMut, json: &[u8]) {
    out.reserve(event_len(json));
    event(json, |b| out.put_slice(b));
}

/// The heartbeat: a comment line, which `EventSource` ignores.
pub const PING: &[u8] = b": ping\n\n";

/// The close event: `event: close` with the code and reason of PROTOCOL §1.
pub fn write_close(out: &mut BytesMut, code: u16, reason: &str) {
    let data = serde_json::json!({ "code": code, "reason": reason }).to_string();
    out.put_slice(b"event: close\ndata: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
}

/// An SSE session's wire. Nothing arrives on the stream (client frames come as POSTs), so
/// there is nothing to decode, and a stream is alive while it can be written.
pub struct SseWire;

impl Wire for SseWire {
    fn name(&self) -> &'static str {
        "sse"
    }

    fn frame_len(&self) -> FrameLen {
        event_len
    }

    fn frame(&self, out: &mut BytesMut, json: &[u8]) {
        write_event(out, json);
    }

    fn queued_frame_len(&self, buf: &[u8]) -> usize {
        // Every event ends with its first blank line: no line inside one is empty.
        buf.windows(2)
            .position(|w| w == b"\n\n")
            .map_or(buf.len(), |i| i + 2)
    }

    fn heartbeat(&self, out: &mut BytesMut) {
        out.put_slice(PING);
    }

    fn pong(&self, _: &mut BytesMut, _: &[u8]) {}

    fn close(&self, out: &mut BytesMut, code: u16, reason: &str) {
        write_close(out, code, reason);
    }

    fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Inbound>, Violation> {
        input.clear();
        Ok(None)
    }

    fn discard(&mut self) {}

    fn peer_answers_close(&self) -> bool {
        false
    }

    fn alive_on_write(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(json: &str) -> String {
        let mut out = BytesMut::new();
        write_event(&mut out, json.as_bytes());
        assert_eq!(
            out.len(),
            event_len(json.as_bytes()),
            "the measure is exact"
        );
        String::from_utf8(out.to_vec()).expect("utf-8")
    }

    #[test]
    fn frames_become_events_with_the_cursor_as_id() {
        assert_eq!(
            encoded(r#"{"type":"welcome","session":"1a"}"#),
            "event: welcome\ndata: {\"type\":\"welcome\",\"session\":\"1a\"}\n\n"
        );
        assert_eq!(
            encoded(r#"{"type":"message","id":"m\"cursor\":\"x","cursor":"ab-7","data":{"cursor":"no"}}"#),
            "event: message\nid: ab-7\ndata: {\"type\":\"message\",\"id\":\"m\\\"cursor\\\":\\\"x\",\"cursor\":\"ab-7\",\"data\":{\"cursor\":\"no\"}}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_a_payload_become_data_lines() {
        assert_eq!(
            encoded("{\"type\":\"message\",\"cursor\":\"c\",\"data\":{\r\n\"a\":\r1\n}}"),
            "event: message\nid: c\ndata: {\"type\":\"message\",\"cursor\":\"c\",\"data\":{\ndata: \"a\":\ndata: 1\ndata: }}\n\n"
        );
    }

    #[test]
    fn an_event_ends_at_its_blank_line() {
        let mut out = BytesMut::new();
        write_event(&mut out, b"{\"type\":\"message\",\"data\":{\n}}");
        let first = out.len();
        out.put_slice(PING);
        assert_eq!(SseWire.queued_frame_len(&out), first);
        assert_eq!(SseWire.queued_frame_len(&out[first..]), PING.len());
    }

    #[test]
    fn the_close_event_carries_code_and_reason() {
        let mut out = BytesMut::new();
        write_close(&mut out, 4001, "replaced");
        assert_eq!(
            &out[..],
            b"event: close\ndata: {\"code\":4001,\"reason\":\"replaced\"}\n\n"
        );
    }
}
