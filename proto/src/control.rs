//! Pod-to-pod control messages on `<prefix>.ctl.*` and the one bincode codec for them.
//!
//! bincode 2.0.1 is pinned (3.0 is an empty release and the crate is unmaintained), so every
//! encode and decode goes through [`encode`] and [`decode`]: swapping the format later
//! touches this file only.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Broadcast to every pod on `<prefix>.ctl.all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Close the user's sessions with `code`: all of them, or only those opened with
    /// `device`; never the session `except` (the new session of a takeover).
    Kick {
        user: String,
        device: Option<String>,
        except: Option<String>,
        /// Only sessions attached before this time (ms since the epoch). A takeover kick
        /// carries the new session's attach time, so a kick that arrives late can never
        /// close a session opened after the one that sent it.
        before_ms: Option<u64>,
        code: u16,
        from_pod: String,
    },
    /// A takeover happened for this user and device; every pod counts it so the takeover
    /// limit holds cluster-wide.
    Replaced {
        user: String,
        device: String,
        from_pod: String,
    },
    /// A pod's periodic liveness beacon, with its counts.
    Beacon {
        pod: String,
        /// When this run of the pod started (ms since the epoch): tells a stalled pod
        /// from a restarted one.
        started: u64,
        draining: bool,
        connections: u64,
        users: u64,
    },
    /// A pod is leaving on purpose (drain finished).
    Leaving { pod: String },
    /// A token revocation, a block or an unblock, made through this pod's API.
    Access {
        rule: crate::access::AccessRule,
        from_pod: String,
    },
}

/// A scatter request on `<prefix>.ctl.query`; every live pod answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    Presence {
        user: String,
    },
    Stats,
    /// A pod starting up: every live pod records it and answers with [`QueryReply::Here`],
    /// so the pods know each other before the new one reports ready.
    Hello {
        pod: String,
        started: u64,
    },
    /// A client frame for an SSE session (PROTOCOL §5b), POSTed to any pod: the pod
    /// holding session `session` of `user` hands it over and answers `found`.
    ClientFrame {
        user: String,
        session: String,
        frame: String,
    },
}

/// One pod's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    Presence {
        pod: String,
        sessions: u64,
    },
    Stats {
        pod: String,
        connections: u64,
        users: u64,
        topics: u64,
    },
    /// Whether this pod held the session of a [`Query::ClientFrame`] (and handed the
    /// frame over).
    ClientFrame {
        pod: String,
        found: bool,
    },
    /// A live pod's answer to [`Query::Hello`]: what its beacon would say.
    Here {
        pod: String,
        started: u64,
        connections: u64,
        users: u64,
    },
}

/// Why a control payload could not be decoded.
#[derive(Debug)]
pub struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad control payload: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 20 }>()
}

/// Encode a control message. Encoding these plain types into a Vec cannot fail.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

/// Decode a control message received from the network.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(v, _)| v)
        .map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trips() {
        let k = Control::Kick {
            user: "u1".into(),
            device: Some("d".into()),
            except: None,
            before_ms: Some(1),
            code: 4001,
            from_pod: "p".into(),
        };
        assert_eq!(decode::<Control>(&encode(&k)).unwrap(), k);
        let q = QueryReply::Stats {
            pod: "p".into(),
            connections: 3,
            users: 2,
            topics: 1,
        };
        assert_eq!(decode::<QueryReply>(&encode(&q)).unwrap(), q);
        assert!(decode::<Control>(b"\xff\xff\xff").is_err());
    }
}
