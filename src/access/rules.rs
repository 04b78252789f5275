//! The access rules in memory: per user, the newest revocation by `iat`, revocations by
//! `jti`, and a block (or the unblock that lifted it). Pure data: what a token may do is a
//! lookup, never a network round trip.

use std::collections::HashMap;

use herald_proto::access::{AccessKind, AccessRule, AccessSlot};

/// What a token carries that a rule can match.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenMark<'a> {
    /// `iat`, seconds since the epoch.
    pub issued_at: Option<u64>,
    pub jti: Option<&'a str>,
}

/// Why a session may not be (or stay) open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The token was revoked: 401 at the handshake, 4003 live.
    Revoked,
    /// The user is blocked: 403 at the handshake, 4004 live.
    Blocked,
}

/// How long an unblock is remembered, so a block kept before it and read late (a pod
/// loading the kept rules while the unblock goes by) cannot come back.
pub const UNBLOCK_MEMORY_SECS: u64 = 600;

#[derive(Debug, Default)]
struct UserRules {
    before: Option<AccessRule>,
    block: Option<AccessRule>,
    jtis: HashMap<String, AccessRule>,
}

impl UserRules {
    fn slot_mut(&mut self, slot: &AccessSlot) -> Option<&mut Option<AccessRule>> {
        match slot {
            AccessSlot::Before => Some(&mut self.before),
            AccessSlot::Block => Some(&mut self.block),
            AccessSlot::Jti(_) => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.before.is_none() && self.block.is_none() && self.jtis.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = &AccessRule> {
        self.before
            .iter()
            .chain(self.block.iter())
            .chain(self.jtis.values())
    }
}

/// Every user's rules.
#[derive(Debug, Default)]
pub struct Rules {
    users: HashMap<String, UserRules>,
    count: usize,
}

impl Rules {
    /// Take a change unless a newer one of the same rule is known. Returns whether it was
    /// taken.
    pub fn apply(&mut self, rule: AccessRule) -> bool {
        let user = self.users.entry(rule.user.clone()).or_default();
        let slot = rule.slot();
        let taken = match user.slot_mut(&slot) {
            Some(current) => {
                if current.as_ref().is_some_and(|c| c.at_ms > rule.at_ms) {
                    false
                } else {
                    if current.is_none() {
                        self.count += 1;
                    }
                    *current = Some(rule);
                    true
                }
            }
            None => {
                let AccessSlot::Jti(jti) = slot else {
                    return false;
                };
                match user.jtis.get(&jti) {
                    Some(c) if c.at_ms > rule.at_ms => false,
                    existing => {
                        if existing.is_none() {
                            self.count += 1;
                        }
                        user.jtis.insert(jti, rule);
                        true
                    }
                }
            }
        };
        taken
    }

    /// Whether a session of `user` with this token may be open at `now` (seconds).
    pub fn check(&self, user: &str, token: TokenMark<'_>, now: u64) -> Result<(), Denied> {
        let Some(rules) = self.users.get(user) else {
            return Ok(());
        };
        if let Some(AccessKind::Block { until }) = rules.block.as_ref().map(|r| &r.kind) {
            if *until > now {
                return Err(Denied::Blocked);
            }
        }
        if let Some(r) = &rules.before {
            if let AccessKind::RevokeBefore { before } = r.kind {
                if r.expires > now && token.issued_at.is_none_or(|iat| iat < before) {
                    return Err(Denied::Revoked);
                }
            }
        }
        if let Some(jti) = token.jti {
            if rules.jtis.get(jti).is_some_and(|r| r.expires > now) {
                return Err(Denied::Revoked);
            }
        }
        Ok(())
    }

    /// Forget the rules that stopped mattering by `now`; returns them (so their kept
    /// copies can be deleted too).
    pub fn sweep(&mut self, now: u64) -> Vec<AccessRule> {
        let mut gone = Vec::new();
        self.users.retain(|_, rules| {
            for slot in [&mut rules.before, &mut rules.block] {
                if slot.as_ref().is_some_and(|r| r.expires <= now) {
                    gone.extend(slot.take());
                }
            }
            rules.jtis.retain(|_, r| {
                let keep = r.expires > now;
                if !keep {
                    gone.push(r.clone());
                }
                keep
            });
            !rules.is_empty()
        });
        self.count -= gone.len();
        gone
    }

    /// Rules held (unblocks still remembered included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every rule held, for a snapshot on disk.
    pub fn all(&self) -> Vec<AccessRule> {
        self.users
            .values()
            .flat_map(UserRules::all)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: &str, kind: AccessKind, at_ms: u64, expires: u64) -> AccessRule {
        AccessRule {
            user: user.into(),
            kind,
            at_ms,
            expires,
        }
    }

    fn mark(iat: Option<u64>, jti: Option<&str>) -> TokenMark<'_> {
        TokenMark {
            issued_at: iat,
            jti,
        }
    }

    #[test]
    fn revoking_by_iat_refuses_older_tokens_and_those_without_iat() {
        let mut r = Rules::default();
        r.apply(rule(
            "u1",
            AccessKind::RevokeBefore { before: 100 },
            1,
            1_000,
        ));
        assert_eq!(
            r.check("u1", mark(Some(99), None), 150),
            Err(Denied::Revoked)
        );
        assert_eq!(r.check("u1", mark(None, None), 150), Err(Denied::Revoked));
        assert_eq!(r.check("u1", mark(Some(100), None), 150), Ok(()));
        assert_eq!(r.check("u2", mark(Some(1), None), 150), Ok(()));
        // Once the revoked tokens would have expired, the rule no longer matters.
        assert_eq!(r.check("u1", mark(Some(99), None), 1_000), Ok(()));
    }

    #[test]
    fn revoking_by_jti_refuses_that_token_only() {
        let mut r = Rules::default();
        r.apply(rule(
            "u1",
            AccessKind::RevokeJti { jti: "a".into() },
            1,
            1_000,
        ));
        assert_eq!(
            r.check("u1", mark(Some(5), Some("a")), 10),
            Err(Denied::Revoked)
        );
        assert_eq!(r.check("u1", mark(Some(5), Some("b")), 10), Ok(()));
        assert_eq!(r.check("u1", mark(Some(5), None), 10), Ok(()));
    }

    #[test]
    fn a_block_holds_until_its_time_and_an_unblock_lifts_it() {
        let mut r = Rules::default();
        r.apply(rule("u1", AccessKind::Block { until: 500 }, 10, 500));
        assert_eq!(
            r.check("u1", mark(Some(400), None), 100),
            Err(Denied::Blocked)
        );
        assert_eq!(r.check("u1", mark(Some(400), None), 500), Ok(()));
        assert!(r.apply(rule("u1", AccessKind::Unblock, 20, 700)));
        assert_eq!(r.check("u1", mark(Some(400), None), 100), Ok(()));
        // The block read late (older) does not come back.
        assert!(!r.apply(rule("u1", AccessKind::Block { until: 500 }, 10, 500)));
        assert_eq!(r.check("u1", mark(Some(400), None), 100), Ok(()));
    }

    #[test]
    fn the_newer_change_wins_and_sweeping_forgets_expired_rules() {
        let mut r = Rules::default();
        assert!(r.apply(rule("u1", AccessKind::RevokeBefore { before: 200 }, 5, 300)));
        assert!(!r.apply(rule("u1", AccessKind::RevokeBefore { before: 100 }, 4, 300)));
        assert_eq!(
            r.check("u1", mark(Some(150), None), 10),
            Err(Denied::Revoked)
        );
        r.apply(rule("u1", AccessKind::RevokeJti { jti: "x".into() }, 6, 50));
        r.apply(rule("u2", AccessKind::Block { until: 40 }, 6, 40));
        assert_eq!(r.len(), 3);
        let gone = r.sweep(50);
        assert_eq!(gone.len(), 2);
        assert_eq!(r.len(), 1);
        assert_eq!(r.all().len(), 1);
        assert_eq!(r.sweep(300).len(), 1);
        assert!(r.is_empty());
    }
}
