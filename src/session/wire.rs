//! The seam between a session and its transport: how server frames, heartbeats and closes
//! look on the wire, and what the client's stream carries back.
//!
//! A Session knows limits, takeover, presence and recovery; its `Wire` knows the bytes.
//! The WebSocket (`http::websocket`) frames text and answers pings, and its close is a
//! handshake the peer answers; Server-Sent Events (`http::sse`) write events into a
//! response body, hear nothing on the stream (client frames arrive as POSTs) and end the
//! stream after the close event.

use bytes::BytesMut;

use crate::link::FrameLen;

/// Something the client sent on the session's own stream, complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A whole text message, valid UTF-8.
    Text(String),
    /// A whole binary message.
    Binary(BytesMut),
    Ping(BytesMut),
    Pong,
    /// The client's Close frame: its code, if it carried one.
    Close(Option<u16>),
}

/// Why the connection must fail, and the close code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A framing error: 1002.
    Protocol(&'static str),
    /// A text message (or close reason) that is not UTF-8: 1007.
    BadUtf8,
    /// A frame or message over the limit: 1009.
    TooBig,
}

impl Violation {
    pub fn code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::BadUtf8 => 1007,
            Violation::TooBig => 1009,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::BadUtf8 => "text is not valid UTF-8",
            Violation::TooBig => "frame larger than the limit",
        }
    }
}

/// A transport's wire format, as one session sees it.
pub trait Wire: 'static {
    /// The transport's name in metrics and logs (`websocket`, `sse`).
    fn name(&self) -> &'static str;
    /// How many bytes [`Wire::frame`] appends for a frame; the Registry reserves exactly
    /// this before it queues a message frame for the session.
    fn frame_len(&self) -> FrameLen;
    /// The length of the whole frame at the front of `buf`, which starts at a frame
    /// boundary of what this wire wrote (the outbound queue keeps frames whole).
    fn queued_frame_len(&self, buf: &[u8]) -> usize;
    /// Append one server frame (its JSON).
    fn frame(&self, out: &mut BytesMut, json: &[u8]);
    /// With permessage-deflate negotiated: message frames of at least this many bytes go
    /// compressed ([`Wire::frame_deflated`]); `None` = never.
    fn deflate_from(&self) -> Option<usize> {
        None
    }
    /// Append a message frame whose payload is already compressed, once for every
    /// recipient.
    fn frame_deflated(&self, out: &mut BytesMut, deflated: &[u8]) {
        self.frame(out, deflated);
    }
    /// Bytes [`Wire::frame_deflated`] appends for a compressed payload of `n` bytes.
    fn deflated_frame_len(&self, n: usize) -> usize {
        n
    }
    /// Append a heartbeat.
    fn heartbeat(&self, out: &mut BytesMut);
    /// Append the answer to a client's ping.
    fn pong(&self, out: &mut BytesMut, payload: &[u8]);
    /// Append the close (a WebSocket Close frame, an SSE `close` event).
    fn close(&self, out: &mut BytesMut, code: u16, reason: &str);
    /// The next complete item in `input`, consuming what it used.
    fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Inbound>, Violation>;
    /// The session is closing: skip data from now on, report only the peer's close.
    fn discard(&mut self);
    /// Whether the peer answers a close (the WebSocket handshake): the session then waits
    /// for that answer within the close grace; otherwise it ends once the close is out.
    fn peer_answers_close(&self) -> bool;
    /// Whether writes are the sign of life (a stream the client cannot speak on is alive
    /// while it can be written); otherwise only what the client sends is.
    fn alive_on_write(&self) -> bool;
}
