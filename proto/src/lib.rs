//! Herald's wire contract in types: frames exchanged with browsers, close codes, the NATS
//! subjects services publish to, and the pod-to-pod control messages.
//!
//! This crate depends on serde, serde_json and bincode only (no async runtime), so a Rust
//! service can use it to publish to herald or to read its events.
//!
//! # Layout
//! - [`frame`]: `ClientFrame` / `ServerFrame`, the JSON text frames of a WebSocket session.
//! - [`access`]: token revocations and user blocks as pods share and keep them.
//! - [`close`]: close codes and whether a client should reconnect after each.
//! - [`control`]: pod-to-pod control messages and the one bincode codec.
//! - [`subjects`]: every NATS subject name, built in exactly one place.
//! - [`events`]: JSON events herald publishes for services (presence, pod lifecycle).

#![forbid(unsafe_code)]

pub mod access;
pub mod close;
pub mod control;
pub mod events;
pub mod frame;
pub mod subjects;

pub use close::CloseCode;
pub use frame::{ClientFrame, ServerFrame};
pub use subjects::Subjects;

/// NATS header naming the event of a published message.
pub const HEADER_EVENT: &str = "Herald-Event";
/// NATS header restricting a user message to that user's sessions opened with this device.
pub const HEADER_DEVICE: &str = "Herald-Device";
/// NATS header carrying the id of the session that published an upstream frame.
pub const HEADER_SESSION: &str = "Herald-Session";
/// NATS header carrying the pod that published an upstream frame.
pub const HEADER_POD: &str = "Herald-Pod";
/// NATS header with the publisher's message id (also used by JetStream for de-duplication).
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Set by JetStream on a republished message: its sequence in the stream.
pub const HEADER_SEQUENCE: &str = "Nats-Sequence";
/// Set by JetStream on a republished message: the sequence of the previous message on the
/// same subject (0 for the first).
pub const HEADER_LAST_SEQUENCE: &str = "Nats-Last-Sequence";

/// True when `s` is a valid id token: 1 to 128 bytes of `A-Z a-z 0-9 _ - =`.
///
/// User and device ids become NATS subject tokens, so `.`, `*`, `>` and white space must
/// never pass this check.
pub fn is_valid_id(s: &str) -> bool {
    is_valid_token(s, 128)
}

/// True when `s` is a valid topic name: 1 to 8 tokens joined by `.`, each token 1 to 64
/// bytes of `A-Z a-z 0-9 _ - =`.
pub fn is_valid_topic(s: &str) -> bool {
    let mut count = 0;
    for token in s.split('.') {
        count += 1;
        if count > 8 || !is_valid_token(token, 64) {
            return false;
        }
    }
    count >= 1
}

/// NATS-style pattern matching, used for subjects and for the `topics` claim of a
/// token: `*` matches exactly one token, a final `>` matches one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return p.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn is_valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_charset_only() {
        assert!(is_valid_id("u1"));
        assert!(is_valid_id("A-z_0=9"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(&"a".repeat(129)));
        for bad in ["", "a.b", "a*", "a>", "a b", "é", "a/b"] {
            assert!(!is_valid_id(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn patterns_follow_nats_rules() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("*.b.>", "x.b.c.d"));
        assert!(subject_matches(">", "anything.at.all"));
        // `>` only counts as the last token.
        assert!(!subject_matches("a.>.c", "a.b.c"));
        assert!(subject_matches("orders.*", "orders.store-42"));
        assert!(!subject_matches("orders.*", "payments.store-42"));
    }

    #[test]
    fn topics_are_one_to_eight_tokens() {
        assert!(is_valid_topic("store-42"));
        assert!(is_valid_topic("orders.store-42"));
        assert!(is_valid_topic("a.b.c.d.e.f.g.h"));
        assert!(!is_valid_topic("a.b.c.d.e.f.g.h.i"));
        assert!(!is_valid_topic("a..b"));
        assert!(!is_valid_topic(".a"));
        assert!(!is_valid_topic("a.*"));
        assert!(!is_valid_topic(&"x".repeat(65)));
    }
}
