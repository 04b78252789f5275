//! The per-user session limit across the cluster (PROTOCOL §4): this pod's view of the
//! user's sessions on other pods ([`super::remote`]), kept from their presence events, is
//! counted at the handshake (429 when the limit is already reached), and when sessions
//! were admitted on several pods at the same moment, the newest beyond the limit are
//! closed with 4009 as soon as the events cross (each pod closes its own among them).
//! No cluster round trip on a handshake: the count is local.

use actix::prelude::*;
use herald_proto::events::PresenceEvent;
use herald_proto::CloseCode;

use super::remote::{over_limit, RemoteSession};
use super::Registry;
use crate::ids::{SessionId, UserId};

/// A presence event from the bus (another pod's, or this pod's own: ignored).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePresence(pub PresenceEvent);

/// Pods that went down or left: their sessions no longer count.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PodsGone(pub Vec<String>);

impl Handler<RemotePresence> for Registry {
    type Result = ();
    fn handle(&mut self, RemotePresence(e): RemotePresence, _: &mut Context<Self>) {
        if e.pod == self.deps.pod {
            return;
        }
        match e.event.as_str() {
            "connect" => {
                let at_ms = humantime::parse_rfc3339(&e.at)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or_else(crate::clock::wall_ms, |d| d.as_millis() as u64);
                self.remote.connected(
                    &e.user,
                    RemoteSession {
                        session: e.session,
                        pod: e.pod,
                        device: e.device,
                        at_ms,
                    },
                );
                self.enforce_user_limit(&e.user);
            }
            "disconnect" => self.remote.disconnected(&e.user, &e.session),
            _ => {}
        }
    }
}

impl Handler<PodsGone> for Registry {
    type Result = ();
    fn handle(&mut self, PodsGone(pods): PodsGone, _: &mut Context<Self>) {
        for pod in pods {
            self.remote.pod_gone(&pod);
        }
    }
}

impl Registry {
    /// The user's sessions on other pods that a new one (with `device`) would sit beside.
    pub(super) fn remote_sessions(&self, user: &UserId, device: Option<&str>) -> usize {
        self.remote.count_staying(user.as_str(), device)
    }

    /// Close this pod's sessions of `user` that are among the newest beyond the limit.
    pub(super) fn enforce_user_limit(&mut self, user: &str) {
        let Ok(uid) = UserId::parse(user) else { return };
        let limit = self.deps.limits.max_sessions_per_user;
        let local: Vec<(u64, String, SessionId)> = self
            .index
            .of_user(&uid, None)
            .map(|(id, e)| (e.attached_ms, id.to_string(), id))
            .collect();
        let remote = self.remote.of(user);
        if local.is_empty() || local.len() + remote.len() <= limit {
            return;
        }
        let mut all: Vec<(u64, &str, bool)> = local
            .iter()
            .map(|(at, id, _)| (*at, id.as_str(), true))
            .chain(remote.iter().map(|r| (r.at_ms, r.session.as_str(), false)))
            .collect();
        let closing: Vec<SessionId> = over_limit(&mut all, limit)
            .into_iter()
            .filter_map(|id| {
                local
                    .iter()
                    .find(|(_, s, _)| s == id)
                    .map(|(_, _, sid)| *sid)
            })
            .collect();
        for id in closing {
            tracing::debug!(user, session = %id, "over the user's session limit across the cluster");
            self.close(id, CloseCode::OverUserLimit);
        }
    }
}
