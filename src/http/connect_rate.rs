//! Admission under reconnect storms (PROTOCOL §4, `--connect-rate`): a token bucket per pod
//! with a burst of one second. A handshake over it still completes (101, or the SSE stream)
//! and is closed at once with 1013, which a browser can read, unlike the HTTP status of a
//! refused WebSocket handshake; it is taken before the token is checked or the Registry is
//! asked, so a storm costs the pod as little as possible.

use std::num::NonZeroU32;

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use herald_proto::CloseCode;

type Bucket =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// Handshakes admitted per second; `None` admits all.
pub struct ConnectRate(Option<Bucket>);

impl ConnectRate {
    pub fn new(per_second: u32) -> ConnectRate {
        ConnectRate(
            NonZeroU32::new(per_second).map(|rate| {
                RateLimiter::direct_with_clock(Quota::per_second(rate), MonotonicClock)
            }),
        )
    }

    /// Whether one more handshake may go on now (takes a token when it may).
    pub fn admit(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.check().is_ok())
    }
}

/// The WebSocket close frame that refuses a handshake over the rate (server frames are
/// not masked).
pub fn close_frame() -> Vec<u8> {
    let code = CloseCode::TryAgainLater;
    let reason = code.reason().as_bytes();
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.code().to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_one_second_of_handshakes() {
        let r = ConnectRate::new(5);
        let admitted = (0..20).filter(|_| r.admit()).count();
        assert_eq!(admitted, 5);
        assert!(
            (0..1000).all(|_| ConnectRate::new(0).admit()),
            "0 is unlimited"
        );
    }

    #[test]
    fn the_close_frame_carries_1013() {
        let f = close_frame();
        assert_eq!(&f[..4], &[0x88, f.len() as u8 - 2, 0x03, 0xF5]);
        assert_eq!(&f[4..], b"try_again_later");
    }
}
