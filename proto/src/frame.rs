//! The JSON text frames of a WebSocket session (docs/protocol.md §1).
//!
//! `ServerFrame` is what herald sends; `ClientFrame` what a browser sends. Message frames
//! are encoded through [`MessageFrame`], which borrows everything, so the hub builds the
//! bytes of a published message exactly once and shares them among its recipients.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where a delivered message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    User,
    Broadcast,
    Topic,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Broadcast => "broadcast",
            Source::Topic => "topic",
        }
    }
}

/// A frame herald sends to a browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    Welcome {
        session: String,
        user: String,
        pod: String,
        heartbeat_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replayed: Option<u64>,
    },
    Message {
        id: String,
        cursor: String,
        source: Source,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Owned form for readers (services, tests); herald encodes through [`MessageFrame`].
        data: serde_json::Value,
    },
    Pong,
    Subscribed {
        topic: String,
    },
    /// The answer to a `refresh`: the session now expires at `exp` (seconds since the
    /// epoch). `exp` is absent only in unsigned mode for a token without one; the topics
    /// the new token no longer allows were unsubscribed and are listed (omitted when none).
    Refreshed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unsubscribed: Vec<String>,
    },
    Error {
        code: String,
        message: String,
    },
}

impl ServerFrame {
    pub fn error(code: &str, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The frame as JSON text. Serialising these types cannot fail (no maps with non-string
    /// keys, no fallible `Serialize` impls), so the fallback is never taken in practice.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            String::from(r#"{"type":"error","code":"internal","message":"encoding failed"}"#)
        })
    }
}

/// A borrowed `message` frame: serialises to the same JSON as `ServerFrame::Message`.
#[derive(Debug, Serialize)]
pub struct MessageFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub cursor: &'a str,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    pub data: &'a RawValue,
}

impl<'a> MessageFrame<'a> {
    pub fn new(id: &'a str, cursor: &'a str, source: Source, data: &'a RawValue) -> Self {
        MessageFrame {
            kind: "message",
            id,
            cursor,
            source,
            topic: None,
            event: None,
            data,
        }
    }
}

/// A frame a browser sends.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    Ping,
    /// `data` is kept as the exact JSON text the client sent.
    Publish {
        event: Option<String>,
        data: Option<Box<RawValue>>,
    },
    Subscribe {
        topic: String,
    },
    Unsubscribe {
        topic: String,
    },
    /// New credentials for the session (docs/protocol.md §1, `refresh`).
    Refresh {
        token: Token,
    },
    /// A delivery receipt for a message the session received (§5c).
    Ack {
        id: String,
        status: String,
    },
}

/// The status of an `ack` without one.
pub const DEFAULT_ACK_STATUS: &str = "received";
/// Longest message id an `ack` may name (the HTTP publish's `id` limit).
pub const MAX_ACK_ID_BYTES: usize = 256;

/// Whether `s` is a receipt status: 1 to 32 bytes of `a-z 0-9 _ -`.
pub fn is_valid_status(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Token text from a client frame. Its `Debug` form hides it, so a frame printed in a log
/// never shows a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl Token {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

/// Why a client frame was refused; the text is safe to show the client. `code` is the
/// error frame's code (`bad_frame`, or `bad_ack` for an `ack` that is not one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String, pub &'static str);

impl FrameError {
    fn bad(why: impl Into<String>) -> FrameError {
        FrameError(why.into(), error_code::BAD_FRAME)
    }

    fn bad_ack(why: impl Into<String>) -> FrameError {
        FrameError(why.into(), error_code::BAD_ACK)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

// A flat shape rather than `#[serde(tag)]`: an internally tagged enum buffers its content
// and cannot hold a `RawValue`, and keeping `data` raw is what lets it pass through verbatim.
#[derive(Deserialize)]
struct FlatClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    token: Option<String>,
    // Any JSON here: a wrong type is a `bad_ack`, not an unreadable frame.
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<serde_json::Value>,
}

impl ClientFrame {
    /// Parse one text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let flat: FlatClientFrame = serde_json::from_str(text)
            .map_err(|_| FrameError::bad("frame is not a JSON object with a \"type\""))?;
        let topic = |t: Option<String>| {
            t.ok_or_else(|| FrameError::bad(format!("{} needs a \"topic\"", flat.kind)))
        };
        match flat.kind.as_str() {
            "ping" => Ok(ClientFrame::Ping),
            "publish" => Ok(ClientFrame::Publish {
                event: flat.event,
                data: flat.data,
            }),
            "subscribe" => Ok(ClientFrame::Subscribe {
                topic: topic(flat.topic)?,
            }),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                topic: topic(flat.topic)?,
            }),
            "refresh" => Ok(ClientFrame::Refresh {
                token: Token(
                    flat.token
                        .ok_or_else(|| FrameError::bad("refresh needs a \"token\""))?,
                ),
            }),
            "ack" => ack(flat.id, flat.status),
            other => Err(FrameError::bad(format!(
                "unknown frame type {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

fn ack(
    id: Option<serde_json::Value>,
    status: Option<serde_json::Value>,
) -> Result<ClientFrame, FrameError> {
    let id = match id {
        Some(serde_json::Value::String(id)) if !id.is_empty() && id.len() <= MAX_ACK_ID_BYTES => id,
        Some(serde_json::Value::String(_)) => {
            return Err(FrameError::bad_ack(format!(
                "ack: \"id\" must be 1 to {MAX_ACK_ID_BYTES} bytes"
            )))
        }
        Some(_) => return Err(FrameError::bad_ack("ack: \"id\" must be a string")),
        None => return Err(FrameError::bad_ack("ack needs the message's \"id\"")),
    };
    let status = match status {
        None | Some(serde_json::Value::Null) => DEFAULT_ACK_STATUS.to_string(),
        Some(serde_json::Value::String(s)) if is_valid_status(&s) => s,
        Some(serde_json::Value::String(_)) => {
            return Err(FrameError::bad_ack(
                "ack: \"status\" must be 1 to 32 bytes of a-z 0-9 _ -",
            ))
        }
        Some(_) => return Err(FrameError::bad_ack("ack: \"status\" must be a string")),
    };
    Ok(ClientFrame::Ack { id, status })
}

/// Error codes carried by `error` frames.
pub mod error_code {
    pub const BAD_FRAME: &str = "bad_frame";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BAD_TOPIC: &str = "bad_topic";
    pub const TOO_MANY_TOPICS: &str = "too_many_topics";
    pub const UNAVAILABLE: &str = "unavailable";
    /// A `refresh` token that failed verification, or is for another user or device.
    pub const BAD_TOKEN: &str = "bad_token";
    /// An `ack` without an id, with a bad status, or with fields of the wrong type.
    pub const BAD_ACK: &str = "bad_ack";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_matches_the_owned_form() {
        let data = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        let mut f = MessageFrame::new("m1", "c1", Source::User, &data);
        f.event = Some("order");
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(
            text,
            r#"{"type":"message","id":"m1","cursor":"c1","source":"user","event":"order","data":{"a":1}}"#
        );
        let back: ServerFrame = serde_json::from_str(&text).unwrap();
        match back {
            ServerFrame::Message {
                id, event, data, ..
            } => {
                assert_eq!(id, "m1");
                assert_eq!(event.as_deref(), Some("order"));
                assert_eq!(data, serde_json::json!({"a": 1}));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn client_frames_parse_by_type() {
        let f = ClientFrame::parse(r#"{"type":"ping"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Ping));
        let f = ClientFrame::parse(r#"{"type":"publish","event":"e","data":[1, 2]}"#).unwrap();
        match f {
            ClientFrame::Publish { event, data } => {
                assert_eq!(event.as_deref(), Some("e"));
                assert_eq!(data.unwrap().get(), "[1, 2]");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(ClientFrame::parse(r#"{"type":"nope"}"#).is_err());
        assert!(ClientFrame::parse(r#"{"type":"subscribe"}"#).is_err());
        assert!(ClientFrame::parse("hello").is_err());
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe","topic":"a.b"}"#),
            Ok(ClientFrame::Subscribe { topic }) if topic == "a.b"
        ));
    }

    #[test]
    fn acks_are_validated_with_their_own_error_code() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ack","id":"m1","status":"printed"}"#),
            Ok(ClientFrame::Ack { id, status }) if id == "m1" && status == "printed"
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ack","id":"m1"}"#),
            Ok(ClientFrame::Ack { id, status }) if id == "m1" && status == DEFAULT_ACK_STATUS
        ));
        for bad in [
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","id":""}"#,
            r#"{"type":"ack","id":7}"#,
            r#"{"type":"ack","id":"m1","status":"Printed"}"#,
            r#"{"type":"ack","id":"m1","status":""}"#,
            r#"{"type":"ack","id":"m1","status":["x"]}"#,
            r#"{"type":"ack","id":"m1","status":"0123456789012345678901234567890123"}"#,
        ] {
            let e = ClientFrame::parse(bad).expect_err(bad);
            assert_eq!(e.1, error_code::BAD_ACK, "{bad}");
        }
        assert_eq!(
            ClientFrame::parse(r#"{"type":"nope"}"#)
                .map(|_| ())
                .map_err(|e| e.1),
            Err(error_code::BAD_FRAME)
        );
    }

    #[test]
    fn welcome_omits_recovery_fields_unless_set() {
        let w = ServerFrame::Welcome {
            session: "s".into(),
            user: "u".into(),
            pod: "p".into(),
            heartbeat_ms: 25000,
            recovered: None,
            replayed: None,
        };
        assert_eq!(
            w.to_json(),
            r#"{"type":"welcome","session":"s","user":"u","pod":"p","heartbeat_ms":25000}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn refresh_parses_and_hides_its_token() {
        let f = ClientFrame::parse(r#"{"type":"refresh","token":"a.b.c"}"#).unwrap();
        match &f {
            ClientFrame::Refresh { token } => assert_eq!(token.as_str(), "a.b.c"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!format!("{f:?}").contains("a.b.c"));
        assert!(ClientFrame::parse(r#"{"type":"refresh"}"#).is_err());
        let r = ServerFrame::Refreshed {
            exp: Some(1700000000),
            unsubscribed: Vec::new(),
        };
        assert_eq!(r.to_json(), r#"{"type":"refreshed","exp":1700000000}"#);
        let r = ServerFrame::Refreshed {
            exp: Some(5),
            unsubscribed: vec!["t1".into()],
        };
        assert_eq!(
            r.to_json(),
            r#"{"type":"refreshed","exp":5,"unsubscribed":["t1"]}"#
        );
    }
}
