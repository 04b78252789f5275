//! Every NATS subject herald uses, built in exactly one place from the configured prefix.
//!
//! Callers pass ids and topics that were validated at the edge (`is_valid_id`,
//! `is_valid_topic`), so a subject can never gain a wildcard or an extra token here.

/// Subject builder for one prefix (default `herald`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Subjects {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.user.<id>`: every session of that user, on every pod.
    pub fn user(&self, user: &str) -> String {
        format!("{}.user.{user}", self.prefix)
    }

    /// The user id of a `<prefix>.user.<id>` subject.
    pub fn user_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.strip(subject, "user.")
    }

    /// `<prefix>.user.>`: every user subject (what the durable stream captures).
    pub fn user_any(&self) -> String {
        format!("{}.user.>", self.prefix)
    }

    /// `<prefix>.live.user.<id>`: durable mode's live feed of a user, republished by the
    /// stream after each message is stored.
    pub fn live_user(&self, user: &str) -> String {
        format!("{}.live.user.{user}", self.prefix)
    }

    /// `<prefix>.live.user.>`: where the stream republishes.
    pub fn live_user_any(&self) -> String {
        format!("{}.live.user.>", self.prefix)
    }

    /// The user id of a `<prefix>.live.user.<id>` subject.
    pub fn live_user_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.strip(subject, "live.user.")
    }

    /// `<prefix>.broadcast`: every session on every pod.
    pub fn broadcast(&self) -> String {
        format!("{}.broadcast", self.prefix)
    }

    /// `<prefix>.topic.<topic>`: every session following that topic.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.topic.{topic}", self.prefix)
    }

    /// The topic of a `<prefix>.topic.<topic>` subject.
    pub fn topic_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.strip(subject, "topic.")
    }

    /// `<prefix>.up.<id>`: client `publish` frames, for services.
    pub fn up(&self, user: &str) -> String {
        format!("{}.up.{user}", self.prefix)
    }

    /// `<prefix>.receipts.<id>`: delivery receipts of the user's sessions (§5c).
    pub fn receipts(&self, user: &str) -> String {
        format!("{}.receipts.{user}", self.prefix)
    }

    /// `<prefix>.user.<id>.receipts`: where the JetStream store keeps the user's receipts,
    /// inside the stream of `<prefix>.user.>`, under a subject no session listens to.
    pub fn kept_receipts(&self, user: &str) -> String {
        format!("{}.user.{user}.receipts", self.prefix)
    }

    /// `<prefix>.receipts.>`: every user's receipts (one subscription per pod that awaits).
    pub fn receipts_any(&self) -> String {
        format!("{}.receipts.>", self.prefix)
    }

    /// The user of a `<prefix>.receipts.<id>` subject.
    pub fn receipts_user_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".receipts.")
            .filter(|u| !u.is_empty() && !u.contains('.'))
    }

    /// `<prefix>.events.presence.<id>`: session connect/disconnect events.
    pub fn presence_event(&self, user: &str) -> String {
        format!("{}.events.presence.{user}", self.prefix)
    }

    /// `<prefix>.events.presence.*`: every user's presence events (the cluster-wide
    /// per-user limit listens to the other pods').
    pub fn presence_event_any(&self) -> String {
        format!("{}.events.presence.*", self.prefix)
    }

    /// The user of a `<prefix>.events.presence.<id>` subject.
    pub fn presence_event_user_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.strip(subject, "events.presence.")
            .filter(|u| !u.is_empty() && !u.contains('.'))
    }

    /// `<prefix>.events.pod`: pod up/draining/down events.
    pub fn pod_event(&self) -> String {
        format!("{}.events.pod", self.prefix)
    }

    /// `<prefix>.presence.<id>`: cluster-wide presence by request/reply.
    pub fn presence_request(&self, user: &str) -> String {
        format!("{}.presence.{user}", self.prefix)
    }

    /// The user id of a `<prefix>.presence.<id>` request subject.
    pub fn presence_user_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.strip(subject, "presence.")
    }

    /// `<prefix>.presence.*`: what a pod listens on to answer presence requests.
    pub fn presence_request_any(&self) -> String {
        format!("{}.presence.*", self.prefix)
    }

    /// `<prefix>.ctl.all`: control messages every pod receives.
    pub fn ctl_all(&self) -> String {
        format!("{}.ctl.all", self.prefix)
    }

    /// `<prefix>.ctl.query`: scatter requests every pod answers (presence, stats).
    pub fn ctl_query(&self) -> String {
        format!("{}.ctl.query", self.prefix)
    }

    /// `<prefix>.ctl.takeover`: cluster-wide takeover counting, answered by one pod.
    pub fn ctl_takeover(&self) -> String {
        format!("{}.ctl.takeover", self.prefix)
    }

    fn strip<'a>(&self, subject: &'a str, kind: &str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?
            .strip_prefix(kind)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new("herald")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        let s = Subjects::new("hx");
        assert_eq!(s.user("u1"), "hx.user.u1");
        assert_eq!(s.user_of("hx.user.u1"), Some("u1"));
        assert_eq!(s.user_of("hy.user.u1"), None);
        assert_eq!(s.broadcast(), "hx.broadcast");
        assert_eq!(s.topic("a.b"), "hx.topic.a.b");
        assert_eq!(s.topic_of("hx.topic.a.b"), Some("a.b"));
        assert_eq!(s.up("u1"), "hx.up.u1");
        assert_eq!(s.presence_event("u1"), "hx.events.presence.u1");
        assert_eq!(s.pod_event(), "hx.events.pod");
        assert_eq!(s.presence_request("u1"), "hx.presence.u1");
    }
}
