//! Cluster-wide answers for the HTTP API and presence requests: presence, stats and
//! disconnect, gathered from every live pod over the bus.
//!
//! Each pod answers scatter queries on `<prefix>.ctl.query`; the asker waits for one reply
//! per pod it believes alive, or [`QUERY_TIMEOUT`], whichever comes first, so a dead or
//! slow pod delays an answer by at most that timeout. In standalone mode the only pod is
//! this one and the same path runs over the in-process bus.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::control::{self, Control, Query, QueryReply};
use herald_proto::events::{PodStats, Presence, Stats};
use herald_proto::{CloseCode, Subjects};

use super::pods::PodTable;
use crate::bus::{Bus, BusError, Outbound};
use crate::ids::SessionId;
use crate::ids::UserId;
use crate::metrics::Metrics;
use crate::registry::{ClientFrameFor, Kick, Registry};

/// Longest wait for the pods' replies to a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(750);
/// How long a starting pod collects the live pods' answers to its hello. It cannot know
/// how many pods exist, so it always waits this long; a pod alone is ready after it.
pub const DISCOVERY_WINDOW: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Cluster {
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub pods: Arc<PodTable>,
    /// This pod's Registry: what the cluster asks of every pod, this pod does directly.
    pub registry: actix::Addr<Registry>,
    pub metrics: Arc<Metrics>,
    /// Revocations and blocks this pod holds.
    pub access: Arc<crate::access::AccessList>,
}

impl Cluster {
    async fn scatter(&self, query: &Query) -> Result<Vec<QueryReply>, BusError> {
        let replies = self
            .bus
            .request_many(
                self.subjects.ctl_query(),
                Bytes::from(control::encode(query)),
                QUERY_TIMEOUT,
                self.pods.live_count(),
            )
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| control::decode::<QueryReply>(&m.payload).ok())
            .collect())
    }

    pub async fn presence(&self, user: &UserId) -> Result<Presence, BusError> {
        let replies = self
            .scatter(&Query::Presence {
                user: user.to_string(),
            })
            .await?;
        let mut sessions = 0;
        let mut pods = Vec::new();
        for r in replies {
            if let QueryReply::Presence { pod, sessions: n } = r {
                if n > 0 {
                    sessions += n;
                    pods.push(pod);
                }
            }
        }
        pods.sort();
        pods.dedup();
        Ok(Presence {
            user: user.to_string(),
            online: sessions > 0,
            sessions,
            pods,
        })
    }

    pub async fn stats(&self) -> Result<Stats, BusError> {
        let mut pods: Vec<PodStats> = self
            .scatter(&Query::Stats)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                QueryReply::Stats {
                    pod,
                    connections,
                    users,
                    topics,
                } => Some(PodStats {
                    pod,
                    connections,
                    users,
                    topics,
                }),
                _ => None,
            })
            .collect();
        pods.sort_by(|a, b| a.pod.cmp(&b.pod));
        pods.dedup_by(|a, b| a.pod == b.pod);
        Ok(Stats {
            connections: pods.iter().map(|p| p.connections).sum(),
            users: pods.iter().map(|p| p.users).sum(),
            topics: pods.iter().map(|p| p.topics).sum(),
            pods,
        })
    }

    /// Announce this starting pod and record every live pod that answers; returns how many
    /// did. Each of them has recorded this pod before answering.
    pub async fn discover(&self) -> Result<usize, BusError> {
        let hello = Query::Hello {
            pod: self.pods.me().to_string(),
            started: self.pods.started(),
        };
        let replies = self
            .bus
            .request_many(
                self.subjects.ctl_query(),
                Bytes::from(control::encode(&hello)),
                DISCOVERY_WINDOW,
                usize::MAX,
            )
            .await?;
        let mut found = 0;
        for reply in replies {
            if let Ok(QueryReply::Here {
                pod,
                started,
                connections,
                users,
            }) = control::decode::<QueryReply>(&reply.payload)
            {
                if pod != self.pods.me() {
                    self.pods.beacon(&pod, started, false, connections, users);
                    found += 1;
                }
            }
        }
        self.pods.settle();
        Ok(found)
    }

    /// Hand a client frame to SSE session `id` of `user`, wherever it lives: this pod
    /// directly, else the pod that answers for it. False when no live pod holds it.
    pub async fn client_frame(
        &self,
        user: &UserId,
        id: SessionId,
        frame: String,
    ) -> Result<bool, BusError> {
        let local = ClientFrameFor {
            user: user.clone(),
            id,
            frame: frame.clone(),
        };
        if self.registry.send(local).await.unwrap_or(false) {
            return Ok(true);
        }
        let replies = self
            .scatter(&Query::ClientFrame {
                user: user.to_string(),
                session: id.to_string(),
                frame,
            })
            .await?;
        Ok(replies
            .iter()
            .any(|r| matches!(r, QueryReply::ClientFrame { found: true, .. })))
    }

    /// Close every session of the user, on every pod, with 4004. The kick names this pod
    /// as its source (the others ignore kicks from no pod or an unknown one); this pod
    /// skips its own kick when it comes back and closes its sessions directly instead.
    /// Nothing is closed when the kick cannot be published.
    pub async fn disconnect(&self, user: &UserId) -> Result<(), BusError> {
        let kick = Control::Kick {
            user: user.to_string(),
            device: None,
            except: None,
            before_ms: None,
            code: CloseCode::Disconnected.code(),
            from_pod: self.pods.me().to_string(),
        };
        self.bus
            .publish(Outbound::new(
                self.subjects.ctl_all(),
                control::encode(&kick),
            ))
            .await?;
        let local = Kick {
            user: user.clone(),
            device: None,
            except: None,
            before_ms: None,
            code: CloseCode::Disconnected,
        };
        if let Err(e) = self.registry.send(local).await {
            tracing::warn!(error = %e, "local disconnect not delivered to the registry");
        }
        Ok(())
    }
}

impl Cluster {
    /// A revocation, block or unblock made on this pod: kept (an answered change survives
    /// restarts), applied here and to this pod's sessions, then announced so every other
    /// pod does the same. Returns whether it was kept (see [`AccessList::change`]); Err
    /// when it could not be kept or announced.
    ///
    /// [`AccessList::change`]: crate::access::AccessList::change
    pub async fn change_access(
        &self,
        rule: herald_proto::access::AccessRule,
    ) -> Result<bool, String> {
        let kept = self
            .access
            .change(rule.clone())
            .await
            .map_err(|e| format!("cannot keep the rule: {e}"))?;
        let user = UserId::parse(&rule.user).map_err(|e| e.to_string())?;
        let announce = Control::Access {
            rule,
            from_pod: self.pods.me().to_string(),
        };
        let published = self
            .bus
            .publish(Outbound::new(
                self.subjects.ctl_all(),
                control::encode(&announce),
            ))
            .await;
        if let Err(e) = self
            .registry
            .send(crate::registry::access::Enforce(user))
            .await
        {
            tracing::warn!(error = %e, "access change not delivered to the registry");
        }
        published
            .map(|()| kept)
            .map_err(|e| format!("applied here, but not announced to the other pods: {e}"))
    }
}
