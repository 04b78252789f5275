//! A published message on its way to sessions: where it goes, and its frame, encoded once.
//!
//! The frame is a `ByteString` (ref-counted bytes, known UTF-8): every recipient session
//! queues a clone of the same allocation, so a broadcast costs one serialisation.

use std::time::Instant;

use base64::Engine;
use bytestring::ByteString;
use herald_proto::frame::{MessageFrame, Source};
use serde_json::value::RawValue;

use crate::ids::{DeviceId, UserId};

/// An encoded frame, shared by all its recipients.
pub type Frame = ByteString;

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every session of the user, or only those opened with `device`.
    User {
        user: UserId,
        device: Option<DeviceId>,
    },
    Broadcast,
    Topic(String),
}

impl Target {
    pub fn source(&self) -> Source {
        match self {
            Target::User { .. } => Source::User,
            Target::Broadcast => Source::Broadcast,
            Target::Topic(_) => Source::Topic,
        }
    }
}

/// A message ready for fan-out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub target: Target,
    pub frame: Frame,
    /// When the message reached this pod, for the delivery latency histogram.
    pub received_at: Instant,
    /// Durable mode: the message's sequence in the stream (user messages only).
    pub seq: Option<u64>,
}

/// The `data` of a frame: the payload verbatim when it is JSON, a JSON string when it is
/// other UTF-8, otherwise `{"base64": "..."}`.
pub fn payload_to_data(payload: &[u8]) -> Data<'_> {
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(payload) {
        return Data::Borrowed(raw);
    }
    let json = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::to_string(text),
        Err(_) => serde_json::to_string(&serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(payload)
        })),
    };
    // Serialising a string or a one-field object always yields valid JSON.
    let json = json.unwrap_or_else(|_| "null".to_string());
    Data::Owned(RawValue::from_string(json).unwrap_or_else(|_| null_raw()))
}

/// The `data` JSON of a frame, borrowed from the payload when it already is JSON.
pub enum Data<'a> {
    Borrowed(&'a RawValue),
    Owned(Box<RawValue>),
}

impl std::ops::Deref for Data<'_> {
    type Target = RawValue;
    fn deref(&self) -> &RawValue {
        match self {
            Data::Borrowed(r) => r,
            Data::Owned(b) => b,
        }
    }
}

fn null_raw() -> Box<RawValue> {
    // "null" is valid JSON; this cannot fail.
    RawValue::from_string("null".to_string()).expect("literal JSON")
}

/// Encode a `message` frame once.
pub fn encode_frame(
    id: &str,
    cursor: &str,
    source: Source,
    topic: Option<&str>,
    event: Option<&str>,
    payload: &[u8],
) -> Frame {
    let data = payload_to_data(payload);
    let mut frame = MessageFrame::new(id, cursor, source, &data);
    frame.topic = topic;
    frame.event = event;
    // Borrowed strings and a RawValue always serialise.
    let text = serde_json::to_string(&frame).unwrap_or_default();
    ByteString::from(text)
}

/// A new message id: time-ordered, unique.
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_embedded_verbatim_stringified_or_base64() {
        assert_eq!(payload_to_data(br#"{"a":[1,2]}"#).get(), r#"{"a":[1,2]}"#);
        assert_eq!(payload_to_data(b"42").get(), "42");
        assert_eq!(payload_to_data(b"hello \"x\"").get(), r#""hello \"x\"""#);
        assert_eq!(payload_to_data(b"").get(), r#""""#);
        assert_eq!(payload_to_data(&[0xff, 0x00]).get(), r#"{"base64":"/wA="}"#);
    }

    #[test]
    fn frame_is_valid_json_with_every_field() {
        let f = encode_frame(
            "m1",
            "c1",
            Source::Topic,
            Some("t.a"),
            Some("tick"),
            b"not json",
        );
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["topic"], "t.a");
        assert_eq!(v["event"], "tick");
        assert_eq!(v["data"], "not json");
        assert_eq!(v["source"], "topic");
    }
}
