//! JSON events herald publishes for services: session presence and pod lifecycle (§3),
//! delivery receipts (§5c), and the presence answer shared by request/reply and the HTTP
//! API.

use serde::{Deserialize, Serialize};

/// Published on `<prefix>.events.presence.<user>` when a session opens or closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub user: String,
    /// `connect` or `disconnect`.
    pub event: String,
    pub session: String,
    pub device: Option<String>,
    pub pod: String,
    /// Why the session closed (`idle`, `replaced`, `client`, …); absent on connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339 time of the event.
    pub at: String,
}

/// Published on `<prefix>.receipts.<user>` for every `ack` a session of the user sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The acknowledged message's id.
    pub id: String,
    pub user: String,
    pub session: String,
    pub device: Option<String>,
    pub pod: String,
    /// What the application did with it (`received`, `printed`, …).
    pub status: String,
    /// RFC 3339 time of the ack.
    pub at: String,
}

/// Published on `<prefix>.events.pod`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodEvent {
    pub pod: String,
    /// `up`, `draining` or `down`.
    pub event: String,
    pub at: String,
}

/// Cluster-wide presence of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    pub online: bool,
    pub sessions: u64,
    pub pods: Vec<String>,
}

/// Cluster-wide connection counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub connections: u64,
    /// Sum over pods: a user connected to two pods counts on each.
    pub users: u64,
    /// Sum over pods of the topics each pod has followers for.
    pub topics: u64,
    pub pods: Vec<PodStats>,
}

/// One pod's share of [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodStats {
    pub pod: String,
    pub connections: u64,
    pub users: u64,
    pub topics: u64,
}
