//! WebSocket close codes herald sends and whether a client should reconnect after each.

/// A close code of docs/protocol.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseCode {
    /// 1000: normal close.
    Normal,
    /// 1008: repeated bad frames.
    PolicyViolation,
    /// 1009: a frame larger than the limit.
    TooBig,
    /// 1012: server restart or pod draining.
    Restart,
    /// 4001: replaced by a newer session of the same user and device.
    Replaced,
    /// 4002: no sign of life within the idle timeout.
    Idle,
    /// 4003: the token expired.
    TokenExpired,
    /// 4004: disconnected by an operator.
    Disconnected,
    /// 4008: outbound queue over its limit.
    SlowConsumer,
    /// 4029: upstream rate limit.
    RateLimited,
    /// 1013: try again later, the pod admits connections slower than they arrive.
    TryAgainLater,
    /// 4009: over the user's session limit, counted across the cluster.
    OverUserLimit,
    /// 1012 with reason `rebalance`: shed so the cluster's pods even out (§4).
    Rebalance,
    /// 4003 with reason `token_revoked`: the session's token was revoked (§6).
    Revoked,
    /// 4004 with reason `blocked`: the user was blocked by an operator (§6).
    Blocked,
}

impl CloseCode {
    pub const ALL: [CloseCode; 15] = [
        CloseCode::Normal,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::Restart,
        CloseCode::Replaced,
        CloseCode::Idle,
        CloseCode::TokenExpired,
        CloseCode::Disconnected,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
        CloseCode::TryAgainLater,
        CloseCode::OverUserLimit,
        // The same code as Restart, another reason: `from_code` answers Restart.
        CloseCode::Rebalance,
        // Same codes as TokenExpired and Disconnected, other reasons.
        CloseCode::Revoked,
        CloseCode::Blocked,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Restart => 1012,
            CloseCode::Replaced => 4001,
            CloseCode::Idle => 4002,
            CloseCode::TokenExpired => 4003,
            CloseCode::Disconnected => 4004,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4029,
            CloseCode::TryAgainLater => 1013,
            CloseCode::OverUserLimit => 4009,
            CloseCode::Rebalance => 1012,
            CloseCode::Revoked => 4003,
            CloseCode::Blocked => 4004,
        }
    }

    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a client should reconnect after this close (§1 table).
    pub fn should_reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::Restart
                | CloseCode::Idle
                | CloseCode::TokenExpired
                | CloseCode::SlowConsumer
                | CloseCode::RateLimited
                | CloseCode::TryAgainLater
                | CloseCode::Rebalance
                | CloseCode::Revoked
        )
    }

    /// The short reason sent in the close frame and used in presence events and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::PolicyViolation => "policy",
            CloseCode::TooBig => "too_big",
            CloseCode::Restart => "restart",
            CloseCode::Replaced => "replaced",
            CloseCode::Idle => "idle",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Disconnected => "disconnected",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::TryAgainLater => "try_again_later",
            CloseCode::OverUserLimit => "over_user_limit",
            CloseCode::Rebalance => "rebalance",
            CloseCode::Revoked => "token_revoked",
            CloseCode::Blocked => "blocked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reconnect_rules_match_the_table() {
        for c in CloseCode::ALL {
            let back = CloseCode::from_code(c.code());
            assert!(
                back == Some(c)
                    || (c == CloseCode::Rebalance && back == Some(CloseCode::Restart))
                    || (c == CloseCode::Revoked && back == Some(CloseCode::TokenExpired))
                    || (c == CloseCode::Blocked && back == Some(CloseCode::Disconnected))
            );
        }
        let reconnect: Vec<u16> = CloseCode::ALL
            .into_iter()
            .filter(|c| c.should_reconnect())
            .map(CloseCode::code)
            .collect();
        assert_eq!(
            reconnect,
            vec![1012, 4002, 4003, 4008, 4029, 1013, 1012, 4003]
        );
        assert_eq!(CloseCode::from_code(1001), None);
    }
}
