//! Validated identifiers. Ids are checked once at the edge (handshake, HTTP API), so inner
//! code never re-checks a string and none can put a wildcard into a NATS subject.

use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Accepts 1 to 128 bytes of `A-Z a-z 0-9 _ - =`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if herald_proto::is_valid_id(s) {
                    Ok($name(Arc::from(s)))
                } else {
                    Err(IdError { what: stringify!($name) })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// A user id, as in `/websocket/{userId}` and `<prefix>.user.<id>`.
    UserId
);
id_type!(
    /// A device id (`device=` or the token's `device` claim).
    DeviceId
);

/// An id that failed validation; the message is safe to show to the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} must be 1 to 128 bytes of A-Z a-z 0-9 _ - =")]
pub struct IdError {
    what: &'static str,
}

/// A session id: unique per pod run, short, time-ordered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    pub fn new(n: u64) -> SessionId {
        SessionId(n)
    }

    /// The id as [`fmt::Display`] writes it (hex), from a client; None for anything else.
    pub fn parse(s: &str) -> Option<SessionId> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(SessionId)
    }

    /// Which of `n` slots this session falls in (ids are sequential, so slots fill evenly).
    pub fn slot(self, n: u64) -> u64 {
        self.0 % n.max(1)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_at_construction() {
        assert_eq!(UserId::parse("u-1").unwrap().as_str(), "u-1");
        assert!(UserId::parse("u.1").is_err());
        assert!(DeviceId::parse("").is_err());
        let id = SessionId::new(0x1a2b);
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_eq!(SessionId::parse("xyz"), None);
        assert_eq!(SessionId::parse("+1"), None);
        assert_eq!(
            UserId::parse("a b").unwrap_err().to_string(),
            "UserId must be 1 to 128 bytes of A-Z a-z 0-9 _ - ="
        );
    }
}
