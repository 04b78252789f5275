//! The Registry's state as plain data: sessions, the user and device indexes, takeover
//! history and the limits, with time passed in so unit tests control it.
//!
//! Invariants: every session id in `users` and `devices` is in `sessions`; a user key
//! exists only while it has at least one session; takeover history holds only entries
//! younger than the takeover window (pruned by [`Index::sweep`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_proto::CloseCode;

use crate::ids::{DeviceId, SessionId, UserId};
use crate::link::Link;

/// More than this many takeovers of one device within [`TAKEOVER_WINDOW`] → 429.
pub const MAX_TAKEOVERS: usize = 3;
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(10);

/// One attached session. `H` is how the actor reaches it (an `Addr` in production, a
/// plain value in tests).
#[derive(Debug)]
pub struct Entry<H> {
    pub user: UserId,
    pub device: Option<DeviceId>,
    pub handle: H,
    /// The session's last sign of life and queued bytes, written by the session.
    pub link: Arc<Link>,
    /// Token expiry, seconds since the epoch.
    pub expires_at: Option<u64>,
    /// The token's `iat` and `jti`, matched by revocations.
    pub issued_at: Option<u64>,
    pub token_id: Option<Arc<str>>,
    /// When the session attached, ms since the epoch (compared with takeover kicks from
    /// other pods).
    pub attached_ms: u64,
    /// Topics the session follows.
    pub topics: Vec<Arc<str>>,
    /// The shard (worker thread) the session runs on.
    pub shard: usize,
}

/// Why a connection is refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Draining,
    PodFull,
    TooManySessions,
    TooManyTakeovers,
    /// The token was revoked while the handshake was under way.
    Revoked,
    /// The user was blocked while the handshake was under way.
    Blocked,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Draining | Refusal::PodFull => 503,
            Refusal::TooManySessions | Refusal::TooManyTakeovers => 429,
            Refusal::Revoked => 401,
            Refusal::Blocked => 403,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Draining => "pod is draining",
            Refusal::PodFull => "pod is at its connection limit",
            Refusal::TooManySessions => "too many sessions for this user",
            Refusal::TooManyTakeovers => "too many takeovers of this device",
            Refusal::Revoked => "token revoked",
            Refusal::Blocked => "user blocked",
        }
    }
}

/// What admitting a session implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The local session of the same user and device that the new one replaces.
    pub replaces: Option<SessionId>,
}

/// Result of removing a session.
#[derive(Debug)]
pub struct Removed<H> {
    pub entry: Entry<H>,
    /// The user has no session left on this pod.
    pub last_of_user: bool,
    /// Topics this session was the last local follower of.
    pub topics_emptied: Vec<Arc<str>>,
}

/// The limits the index enforces, as configured.
pub use crate::config::RegistryLimits as Limits;

/// Sessions and their indexes.
#[derive(Debug)]
pub struct Index<H> {
    limits: Limits,
    sessions: HashMap<SessionId, Entry<H>>,
    users: HashMap<UserId, Vec<SessionId>>,
    devices: HashMap<(UserId, DeviceId), SessionId>,
    takeovers: HashMap<(UserId, DeviceId), VecDeque<Instant>>,
    topics: HashMap<Arc<str>, Vec<SessionId>>,
    /// Sessions removed from the index by a close the Registry decided whose actors have
    /// not stopped yet: they still hold a socket, so they still count as connections.
    closing: HashSet<SessionId>,
}

impl<H> Index<H> {
    pub fn new(limits: Limits) -> Self {
        Index {
            limits,
            sessions: HashMap::new(),
            users: HashMap::new(),
            devices: HashMap::new(),
            takeovers: HashMap::new(),
            topics: HashMap::new(),
            closing: HashSet::new(),
        }
    }

    /// A session left the index but its connection is still closing.
    pub fn mark_closing(&mut self, id: SessionId) {
        self.closing.insert(id);
    }

    /// A closing session's actor stopped; true if it was closing.
    pub fn closed(&mut self, id: SessionId) -> bool {
        self.closing.remove(&id)
    }

    /// Connections on this pod: indexed sessions and those still closing.
    pub fn open_connections(&self) -> usize {
        self.sessions.len() + self.closing.len()
    }

    /// Decide whether a new session may attach, without changing anything.
    pub fn admit(
        &self,
        user: &UserId,
        device: Option<&DeviceId>,
        now: Instant,
    ) -> Result<Admission, Refusal> {
        let replaces = device.and_then(|d| self.devices.get(&(user.clone(), d.clone())).copied());
        if let Some(d) = device {
            if self.recent_takeovers(user, d, now) >= MAX_TAKEOVERS {
                return Err(Refusal::TooManyTakeovers);
            }
        }
        let net_new = usize::from(replaces.is_none());
        if self.open_connections() + net_new > self.limits.max_connections {
            return Err(Refusal::PodFull);
        }
        let of_user = self.users.get(user).map_or(0, Vec::len);
        if of_user + net_new > self.limits.max_sessions_per_user {
            return Err(Refusal::TooManySessions);
        }
        Ok(Admission { replaces })
    }

    /// Takeovers of this device still inside the window.
    pub fn recent_takeovers(&self, user: &UserId, device: &DeviceId, now: Instant) -> usize {
        self.takeovers
            .get(&(user.clone(), device.clone()))
            .map_or(0, |h| {
                h.iter()
                    .filter(|t| now.duration_since(**t) < TAKEOVER_WINDOW)
                    .count()
            })
    }

    /// Count a takeover of this device (local, or announced by another pod).
    pub fn record_takeover(&mut self, user: &UserId, device: &DeviceId, now: Instant) {
        let history = self
            .takeovers
            .entry((user.clone(), device.clone()))
            .or_default();
        history.push_back(now);
        while history.len() > MAX_TAKEOVERS + 1 {
            history.pop_front();
        }
    }

    /// Insert an admitted session. Returns true when it is the user's first on this pod.
    pub fn insert(&mut self, id: SessionId, entry: Entry<H>) -> bool {
        let user = entry.user.clone();
        if let Some(d) = &entry.device {
            self.devices.insert((user.clone(), d.clone()), id);
        }
        self.sessions.insert(id, entry);
        let list = self.users.entry(user).or_default();
        list.push(id);
        list.len() == 1
    }

    /// Remove a session; `None` when it is not (or no longer) attached.
    pub fn remove(&mut self, id: SessionId) -> Option<Removed<H>> {
        let entry = self.sessions.remove(&id)?;
        if let Some(d) = &entry.device {
            let key = (entry.user.clone(), d.clone());
            if self.devices.get(&key) == Some(&id) {
                self.devices.remove(&key);
            }
        }
        let mut last_of_user = false;
        if let Some(list) = self.users.get_mut(&entry.user) {
            list.retain(|s| *s != id);
            if list.is_empty() {
                self.users.remove(&entry.user);
                last_of_user = true;
            }
        }
        let mut topics_emptied = Vec::new();
        for topic in &entry.topics {
            if self.unindex_topic(topic, id) {
                topics_emptied.push(topic.clone());
            }
        }
        Some(Removed {
            entry,
            last_of_user,
            topics_emptied,
        })
    }

    /// Remove `id` from a topic's followers; true when nobody follows it any more.
    fn unindex_topic(&mut self, topic: &str, id: SessionId) -> bool {
        let Some(list) = self.topics.get_mut(topic) else {
            return false;
        };
        list.retain(|s| *s != id);
        if list.is_empty() {
            self.topics.remove(topic);
            true
        } else {
            false
        }
    }

    /// Make a session follow a topic. Returns `Some(first)` — whether it is the topic's
    /// first local follower — or `None` when the session is unknown or already follows it.
    pub fn follow(&mut self, id: SessionId, topic: &str) -> Option<bool> {
        let entry = self.sessions.get_mut(&id)?;
        if entry.topics.iter().any(|t| &**t == topic) {
            return None;
        }
        let key: Arc<str> = match self.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        entry.topics.push(key.clone());
        let list = self.topics.entry(key).or_default();
        list.push(id);
        Some(list.len() == 1)
    }

    /// Stop a session following a topic. Returns true when nobody follows it any more.
    pub fn unfollow(&mut self, id: SessionId, topic: &str) -> bool {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return false;
        };
        let before = entry.topics.len();
        entry.topics.retain(|t| &**t != topic);
        if entry.topics.len() == before {
            return false;
        }
        self.unindex_topic(topic, id)
    }

    /// A session's token was refreshed: it now expires at `expires_at`. False when the
    /// session is not (or no longer) indexed.
    pub fn set_expiry(&mut self, id: SessionId, expires_at: Option<u64>) -> bool {
        match self.sessions.get_mut(&id) {
            Some(entry) => {
                entry.expires_at = expires_at;
                true
            }
            None => false,
        }
    }

    /// A refreshed session holds a new token: revocations match its `iat` and `jti`.
    pub fn set_token(&mut self, id: SessionId, issued_at: Option<u64>, token_id: Option<Arc<str>>) {
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.issued_at = issued_at;
            entry.token_id = token_id;
        }
    }

    /// Local followers of a topic.
    pub fn followers<'a>(
        &'a self,
        topic: &str,
    ) -> impl Iterator<Item = (SessionId, &'a Entry<H>)> + 'a {
        self.topics
            .get(topic)
            .into_iter()
            .flatten()
            .filter_map(move |id| self.sessions.get(id).map(|e| (*id, e)))
    }

    /// Topics with at least one local follower.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn get(&self, id: SessionId) -> Option<&Entry<H>> {
        self.sessions.get(&id)
    }

    /// Sessions of a user, optionally only those opened with `device`.
    /// Whether the user has a session here.
    pub fn has_user(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    pub fn of_user<'a>(
        &'a self,
        user: &UserId,
        device: Option<&'a DeviceId>,
    ) -> impl Iterator<Item = (SessionId, &'a Entry<H>)> + 'a {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(move |id| self.sessions.get(id).map(|e| (*id, e)))
            .filter(move |(_, e)| device.is_none() || e.device.as_ref() == device)
    }

    pub fn all(&self) -> impl Iterator<Item = (SessionId, &Entry<H>)> {
        self.sessions.iter().map(|(id, e)| (*id, e))
    }

    pub fn connections(&self) -> usize {
        self.sessions.len()
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Sizes of every map, to prove nothing is left behind.
    pub fn sizes(&self) -> [(&'static str, usize); 6] {
        [
            ("closing", self.closing.len()),
            ("sessions", self.sessions.len()),
            ("users", self.users.len()),
            ("devices", self.devices.len()),
            ("takeovers", self.takeovers.len()),
            ("topics", self.topics.len()),
        ]
    }

    /// Sessions to close now: silent past the idle timeout (4002) or with an expired token
    /// (4003). Also forgets takeover history older than the window.
    pub fn sweep(
        &mut self,
        now: Instant,
        now_ms: u64,
        now_secs: u64,
    ) -> Vec<(SessionId, CloseCode)> {
        self.takeovers.retain(|_, h| {
            while h
                .front()
                .is_some_and(|t| now.duration_since(*t) >= TAKEOVER_WINDOW)
            {
                h.pop_front();
            }
            !h.is_empty()
        });
        let idle_ms = self.limits.idle_timeout.as_millis() as u64;
        self.sessions
            .iter()
            .filter_map(|(id, e)| {
                if e.expires_at.is_some_and(|exp| now_secs >= exp) {
                    Some((*id, CloseCode::TokenExpired))
                } else if now_ms.saturating_sub(e.link.last_seen_ms()) >= idle_ms {
                    Some((*id, CloseCode::Idle))
                } else {
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            max_sessions_per_user: 2,
            idle_timeout: Duration::from_secs(60),
            outbound_queue_bytes: 1 << 20,
        }
    }

    fn entry(user: &str, device: Option<&str>, last_seen: u64) -> Entry<()> {
        Entry {
            user: UserId::parse(user).unwrap(),
            device: device.map(|d| DeviceId::parse(d).unwrap()),
            handle: (),
            link: Arc::new(Link::new(last_seen, |f| f.len())),
            expires_at: None,
            issued_at: None,
            token_id: None,
            attached_ms: 0,
            topics: Vec::new(),
            shard: 0,
        }
    }

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn d(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn per_user_and_per_pod_limits_refuse_with_their_status() {
        let mut idx = Index::new(limits());
        let now = Instant::now();
        idx.insert(SessionId::new(1), entry("a", None, 0));
        idx.insert(SessionId::new(2), entry("a", None, 0));
        assert_eq!(idx.admit(&u("a"), None, now), Err(Refusal::TooManySessions));
        assert_eq!(Refusal::TooManySessions.status(), 429);
        idx.insert(SessionId::new(3), entry("b", None, 0));
        idx.insert(SessionId::new(4), entry("c", None, 0));
        assert_eq!(idx.admit(&u("d"), None, now), Err(Refusal::PodFull));
        assert_eq!(Refusal::PodFull.status(), 503);
    }

    #[test]
    fn same_device_is_a_takeover_and_does_not_count_against_limits() {
        let mut idx = Index::new(limits());
        let now = Instant::now();
        idx.insert(SessionId::new(1), entry("a", Some("p"), 0));
        idx.insert(SessionId::new(2), entry("a", None, 0));
        let adm = idx.admit(&u("a"), Some(&d("p")), now).unwrap();
        assert_eq!(adm.replaces, Some(SessionId::new(1)));
        assert_eq!(
            idx.admit(&u("a"), Some(&d("q")), now),
            Err(Refusal::TooManySessions)
        );
    }

    #[test]
    fn takeover_limit_holds_inside_the_window_and_lifts_after_it() {
        let mut idx: Index<()> = Index::new(limits());
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(idx
                .admit(&u("a"), Some(&d("p")), t0 + Duration::from_secs(i))
                .is_ok());
            idx.record_takeover(&u("a"), &d("p"), t0 + Duration::from_secs(i));
        }
        let t = t0 + Duration::from_secs(3);
        assert_eq!(
            idx.admit(&u("a"), Some(&d("p")), t),
            Err(Refusal::TooManyTakeovers)
        );
        // Another device of the same user is unaffected.
        assert!(idx.admit(&u("a"), Some(&d("q")), t).is_ok());
        // Once the first takeover is 10 s old, one more is allowed.
        assert!(idx
            .admit(&u("a"), Some(&d("p")), t0 + TAKEOVER_WINDOW)
            .is_ok());
        // The sweep forgets history older than the window.
        idx.sweep(t0 + Duration::from_secs(13), 0, 0);
        assert_eq!(idx.sizes()[4], ("takeovers", 0));
    }

    #[test]
    fn sweep_finds_idle_and_expired_sessions() {
        let mut idx = Index::new(limits());
        let now = Instant::now();
        idx.insert(SessionId::new(1), entry("a", None, 1_000));
        idx.insert(SessionId::new(2), entry("b", None, 50_000));
        let mut e = entry("c", None, 60_000);
        e.expires_at = Some(100);
        idx.insert(SessionId::new(3), e);
        let mut found = idx.sweep(now, 61_000, 100);
        found.sort();
        assert_eq!(
            found,
            vec![
                (SessionId::new(1), CloseCode::Idle),
                (SessionId::new(3), CloseCode::TokenExpired)
            ]
        );
        assert!(idx.sweep(now, 61_000, 99).len() == 1);
    }

    #[test]
    fn a_refreshed_expiry_replaces_the_old_one_for_the_sweep() {
        let mut idx = Index::new(limits());
        let mut e = entry("a", None, 1_000);
        e.expires_at = Some(100);
        idx.insert(SessionId::new(1), e);
        let now = Instant::now();
        assert_eq!(
            idx.sweep(now, 1_000, 100),
            vec![(SessionId::new(1), CloseCode::TokenExpired)]
        );
        assert!(idx.set_expiry(SessionId::new(1), Some(160)));
        assert!(idx.sweep(now, 1_000, 100).is_empty());
        assert!(idx.sweep(now, 1_000, 159).is_empty());
        assert_eq!(idx.sweep(now, 1_000, 160).len(), 1);
        assert!(
            !idx.set_expiry(SessionId::new(2), Some(1)),
            "unknown session"
        );
    }

    #[test]
    fn removal_cleans_every_index() {
        let mut idx = Index::new(limits());
        assert!(idx.insert(SessionId::new(1), entry("a", Some("p"), 0)));
        assert!(!idx.insert(SessionId::new(2), entry("a", None, 0)));
        assert!(!idx.remove(SessionId::new(1)).unwrap().last_of_user);
        assert!(idx.remove(SessionId::new(1)).is_none());
        assert!(idx.remove(SessionId::new(2)).unwrap().last_of_user);
        assert!(
            idx.sizes().iter().all(|(_, n)| *n == 0),
            "{:?}",
            idx.sizes()
        );
    }

    #[test]
    fn topics_track_followers_and_leave_with_their_sessions() {
        let mut idx = Index::new(limits());
        idx.insert(SessionId::new(1), entry("a", None, 0));
        idx.insert(SessionId::new(2), entry("b", None, 0));
        assert_eq!(idx.follow(SessionId::new(1), "t.x"), Some(true));
        assert_eq!(
            idx.follow(SessionId::new(1), "t.x"),
            None,
            "already following"
        );
        assert_eq!(idx.follow(SessionId::new(2), "t.x"), Some(false));
        assert_eq!(
            idx.follow(SessionId::new(9), "t.x"),
            None,
            "unknown session"
        );
        assert_eq!(idx.followers("t.x").count(), 2);
        assert!(!idx.unfollow(SessionId::new(2), "t.x"));
        assert!(
            !idx.unfollow(SessionId::new(2), "t.x"),
            "not following any more"
        );
        assert_eq!(idx.followers("t.x").count(), 1);
        let removed = idx.remove(SessionId::new(1)).unwrap();
        assert_eq!(
            removed
                .topics_emptied
                .iter()
                .map(|t| &**t)
                .collect::<Vec<_>>(),
            vec!["t.x"]
        );
        assert_eq!(idx.topic_count(), 0);
    }

    #[test]
    fn device_index_keeps_the_newest_session() {
        let mut idx = Index::new(limits());
        idx.insert(SessionId::new(1), entry("a", Some("p"), 0));
        idx.insert(SessionId::new(2), entry("a", Some("p"), 0));
        // Removing the replaced session must not drop the newer one's device entry.
        idx.remove(SessionId::new(1));
        let now = Instant::now();
        assert_eq!(
            idx.admit(&u("a"), Some(&d("p")), now).unwrap().replaces,
            Some(SessionId::new(2))
        );
    }
}
