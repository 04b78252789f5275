//! Other pods' sessions, per user, as plain data: what the cluster-wide per-user limit
//! (PROTOCOL §4) counts besides this pod's own. Fed by the presence events every pod
//! publishes on `<prefix>.events.presence.<user>`; a pod that goes down or leaves takes
//! its sessions with it.
//!
//! The newest sessions beyond the limit are the ones to close: every pod orders a user's
//! sessions the same way, by (attach time, session id), from the times the events carry,
//! so each pod closes exactly its own sessions among them and no user is left over.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSession {
    pub session: String,
    pub pod: String,
    pub device: Option<String>,
    /// When it attached, ms since the epoch (its connect event's time).
    pub at_ms: u64,
}

#[derive(Debug, Default)]
pub struct RemoteSessions {
    by_user: HashMap<String, Vec<RemoteSession>>,
}

impl RemoteSessions {
    pub fn connected(&mut self, user: &str, s: RemoteSession) {
        let list = self.by_user.entry(user.to_string()).or_default();
        if !list.iter().any(|r| r.session == s.session) {
            list.push(s);
        }
    }

    pub fn disconnected(&mut self, user: &str, session: &str) {
        if let Some(list) = self.by_user.get_mut(user) {
            list.retain(|r| r.session != session);
            if list.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// Forget every session of `pod` (down or gone).
    pub fn pod_gone(&mut self, pod: &str) {
        self.by_user.retain(|_, list| {
            list.retain(|r| r.pod != pod);
            !list.is_empty()
        });
    }

    pub fn count(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, Vec::len)
    }

    /// The user's sessions elsewhere that a new session with `device` does not replace
    /// (one with the same device is closed with 4001 by its pod).
    pub fn count_staying(&self, user: &str, device: Option<&str>) -> usize {
        self.of(user)
            .iter()
            .filter(|r| device.is_none() || r.device.as_deref() != device)
            .count()
    }

    pub fn of(&self, user: &str) -> &[RemoteSession] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }

    /// Users with sessions on other pods (for the gauge).
    pub fn users(&self) -> usize {
        self.by_user.len()
    }
}

/// Of a user's sessions, given as (attach ms, session id, local?), the local ones beyond
/// the first `limit` in (attach time, id) order: the newest, which must close.
pub fn over_limit<'a>(sessions: &mut [(u64, &'a str, bool)], limit: usize) -> Vec<&'a str> {
    sessions.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    sessions
        .iter()
        .skip(limit)
        .filter(|(_, _, local)| *local)
        .map(|(_, id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(session: &str, pod: &str, at_ms: u64) -> RemoteSession {
        RemoteSession {
            session: session.into(),
            pod: pod.into(),
            device: (session == "a").then(|| "pos".to_string()),
            at_ms,
        }
    }

    #[test]
    fn sessions_come_and_go_with_their_events_and_pods() {
        let mut r = RemoteSessions::default();
        r.connected("u1", s("a", "p1", 1));
        r.connected("u1", s("a", "p1", 1));
        r.connected("u1", s("b", "p2", 2));
        assert_eq!(r.count("u1"), 2);
        assert_eq!(
            r.count_staying("u1", Some("pos")),
            1,
            "the pos session is replaced"
        );
        assert_eq!(r.count_staying("u1", None), 2);
        r.disconnected("u1", "a");
        assert_eq!(r.count("u1"), 1);
        r.pod_gone("p2");
        assert_eq!(r.count("u1"), 0);
        assert_eq!(r.users(), 0);
    }

    #[test]
    fn the_newest_beyond_the_limit_close_wherever_they_are() {
        // Two pods each see all four: each closes only its own among the two newest.
        let mut on_a = vec![
            (10, "a1", true),
            (30, "a2", true),
            (20, "b1", false),
            (40, "b2", false),
        ];
        assert_eq!(over_limit(&mut on_a, 2), vec!["a2"]);
        let mut on_b = vec![
            (10, "a1", false),
            (30, "a2", false),
            (20, "b1", true),
            (40, "b2", true),
        ];
        assert_eq!(over_limit(&mut on_b, 2), vec!["b2"]);
        // A tie in time is broken by the id, the same on every pod.
        let mut tie = vec![(5, "y", true), (5, "x", false)];
        assert_eq!(over_limit(&mut tie, 1), vec!["y"]);
    }
}
