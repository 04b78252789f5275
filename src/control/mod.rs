//! The control plane: what pods tell each other on `<prefix>.ctl.*` and the presence
//! request subject. The [`ControlPlane`] actor owns those subscriptions and acts on what
//! arrives: takeover kicks and counts, beacons and goodbyes into the live-pod table
//! ([`pods`]), scatter queries (presence, stats, hello, SSE client frames) answered from
//! this pod's Registry, and cluster-wide presence requests. [`cluster`] asks the same
//! questions of every pod; [`beacon`] announces this pod and declares silent ones down.

pub mod beacon;
pub mod cluster;
pub mod pods;
pub mod rebalance;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use herald_proto::control::{self, Control, Query, QueryReply};
use herald_proto::Subjects;

use crate::bus::{Bus, BusMessage, Outbound, Subscription};
use crate::ids::{DeviceId, SessionId, UserId};
use crate::registry::{ClientFrameFor, Kick, LocalPresence, LocalStats, Registry, TakeoverNoted};
use cluster::Cluster;
use pods::PodTable;

/// Queue group of the presence request/reply subject: one pod answers for the cluster.
const PRESENCE_QUEUE: &str = "herald-presence";

/// How long a control message from a pod not known yet waits for that pod's hello or
/// beacon (one beacon interval and a margin) before it is ignored.
const UNKNOWN_SOURCE_GRACE: Duration = Duration::from_millis(1500);

/// Retry a failed subscribe after this long.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

pub struct ControlPlane {
    bus: Arc<dyn Bus>,
    registry: Addr<Registry>,
    subjects: Subjects,
    pod: String,
    pods: Arc<PodTable>,
    cluster: Cluster,
    subscriptions: Vec<Subscription>,
}

impl ControlPlane {
    /// Subscribe to the control subjects (retrying while the bus refuses), then run. The
    /// subscriptions are in place when this returns, so the pod can announce itself.
    pub async fn start(cluster: Cluster) -> Addr<ControlPlane> {
        let subjects = cluster.subjects.clone();
        let wanted = [
            (subjects.ctl_all(), None),
            (subjects.ctl_query(), None),
            (
                subjects.presence_request_any(),
                Some(PRESENCE_QUEUE.to_string()),
            ),
            // The other pods' sessions, for the cluster-wide per-user limit.
            (subjects.presence_event_any(), None),
        ];
        let mut subscriptions = Vec::new();
        for (subject, queue) in wanted {
            loop {
                match cluster.bus.subscribe(subject.clone(), queue.clone()).await {
                    Ok(sub) => {
                        subscriptions.push(sub);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(subject = %subject, error = %e, "control subscribe failed; retrying");
                        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                    }
                }
            }
        }
        ControlPlane {
            bus: cluster.bus.clone(),
            registry: cluster.registry.clone(),
            subjects,
            pod: cluster.pods.me().to_string(),
            pods: cluster.pods.clone(),
            cluster,
            subscriptions,
        }
        .start()
    }

    fn on_message(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        if msg.subject == self.subjects.ctl_all() {
            self.on_control(&msg, ctx);
        } else if msg.subject == self.subjects.ctl_query() {
            self.on_query(msg, ctx);
        } else if self.subjects.presence_event_user_of(&msg.subject).is_some() {
            match serde_json::from_slice::<herald_proto::events::PresenceEvent>(&msg.payload) {
                Ok(e) if e.pod != self.pod => self
                    .registry
                    .do_send(crate::registry::user_limit::RemotePresence(e)),
                Ok(_) => {}
                Err(_) => tracing::debug!(subject = %msg.subject, "not a presence event"),
            }
        } else if let Some(user) = self.subjects.presence_user_of(&msg.subject) {
            let user = user.to_string();
            self.on_presence_request(user, msg.reply, ctx);
        } else {
            tracing::debug!(subject = %msg.subject, "control message on an unexpected subject");
        }
    }

    /// Count and log a control message that is not acted on.
    fn ignored(&self, reason: &'static str, source: &str, what: &'static str) {
        // Debug only: whoever can publish there could flood the log otherwise.
        tracing::debug!(source, reason, what, "ignoring a control message");
        self.cluster
            .metrics
            .control_ignored
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    }

    fn on_control(&mut self, msg: &BusMessage, ctx: &mut Context<Self>) {
        let control: Control = match control::decode(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring control message");
                return;
            }
        };
        self.on_control_from(control, true, ctx);
    }

    /// Act on a control message if its source allows: it must name its pod, and unless it
    /// introduces that pod (a beacon), the pod must be known alive. A message from a pod
    /// not known yet waits [`UNKNOWN_SOURCE_GRACE`] once (a pod that just started may
    /// send a kick before its hello or first beacon arrives), then is ignored if its pod
    /// is still unknown.
    fn on_control_from(&mut self, control: Control, first: bool, ctx: &mut Context<Self>) {
        let (source, introduces, what) = match &control {
            Control::Kick { from_pod, .. } => (from_pod, false, "kick"),
            Control::Replaced { from_pod, .. } => (from_pod, false, "replaced"),
            Control::Beacon { pod, .. } => (pod, true, "beacon"),
            Control::Leaving { pod } => (pod, false, "leaving"),
            Control::Access { from_pod, .. } => (from_pod, false, "access"),
        };
        // This pod's own messages come back: it acted on them when it sent them.
        if *source == self.pod {
            return;
        }
        if source.is_empty() {
            return self.ignored(crate::metrics::CONTROL_EMPTY_SOURCE, source, what);
        }
        if !introduces && self.pods.is_unknown(source) {
            if first {
                ctx.run_later(UNKNOWN_SOURCE_GRACE, move |act, ctx| {
                    act.on_control_from(control, false, ctx)
                });
            } else {
                self.ignored(crate::metrics::CONTROL_UNKNOWN_POD, source, what);
            }
            return;
        }
        match control {
            Control::Kick {
                user,
                device,
                except,
                before_ms,
                code,
                ..
            } => {
                let (Ok(user), Some(code)) = (
                    UserId::parse(&user),
                    herald_proto::CloseCode::from_code(code),
                ) else {
                    return;
                };
                let device = device.and_then(|d| DeviceId::parse(&d).ok());
                self.registry.do_send(Kick {
                    user,
                    device,
                    except,
                    before_ms,
                    code,
                });
            }
            Control::Access { rule, .. } => {
                let Ok(user) = UserId::parse(&rule.user) else {
                    return;
                };
                if self.cluster.access.apply(rule) {
                    self.registry
                        .do_send(crate::registry::access::Enforce(user));
                }
            }
            Control::Replaced { user, device, .. } => {
                if let (Ok(user), Ok(device)) = (UserId::parse(&user), DeviceId::parse(&device)) {
                    self.registry.do_send(TakeoverNoted { user, device });
                }
            }
            Control::Beacon {
                pod,
                started,
                draining,
                connections,
                users,
            } => {
                if self
                    .pods
                    .beacon(&pod, started, draining, connections, users)
                {
                    tracing::info!(pod = %pod, "pod declared down is answering again");
                    let (bus, subjects) = (self.bus.clone(), self.subjects.clone());
                    actix::spawn(async move {
                        pods::publish_pod_event(&bus, &subjects, &pod, "up").await;
                    });
                }
            }
            Control::Leaving { pod } => {
                self.pods.leaving(&pod);
                self.registry
                    .do_send(crate::registry::user_limit::PodsGone(vec![pod]));
            }
        }
    }

    /// Answer `<prefix>.presence.<id>` for the whole cluster.
    fn on_presence_request(
        &mut self,
        user: String,
        reply: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(reply) = reply else { return };
        let cluster = self.cluster.clone();
        let bus = self.bus.clone();
        ctx.spawn(
            async move {
                let body = match UserId::parse(&user) {
                    Ok(user) => match cluster.presence(&user).await {
                        Ok(p) => serde_json::to_vec(&p).unwrap_or_default(),
                        Err(e) => {
                            serde_json::to_vec(&serde_json::json!({ "error": e.to_string() }))
                                .unwrap_or_default()
                        }
                    },
                    Err(e) => serde_json::to_vec(&serde_json::json!({ "error": e.to_string() }))
                        .unwrap_or_default(),
                };
                let _ = bus.publish(Outbound::new(reply, body)).await;
            }
            .into_actor(self),
        );
    }

    fn on_query(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        let Some(reply_to) = msg.reply.clone() else {
            return;
        };
        let query: Query = match control::decode(&msg.payload) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring query");
                return;
            }
        };
        if let Query::Hello { pod, started } = &query {
            if *pod == self.pod {
                return;
            }
            if pod.is_empty() {
                return self.ignored(crate::metrics::CONTROL_EMPTY_SOURCE, pod, "hello");
            }
            // Known from now on, before the new pod can report ready.
            self.pods.beacon(pod, *started, false, 0, 0);
        }
        let registry = self.registry.clone();
        let bus = self.bus.clone();
        let pod = self.pod.clone();
        let started = self.pods.started();
        ctx.spawn(
            async move {
                let reply = match query {
                    Query::Presence { user } => {
                        let Ok(user) = UserId::parse(&user) else {
                            return;
                        };
                        let sessions = registry.send(LocalPresence(user)).await.unwrap_or(0);
                        QueryReply::Presence { pod, sessions }
                    }
                    Query::Stats => {
                        let Ok(c) = registry.send(LocalStats).await else {
                            return;
                        };
                        QueryReply::Stats {
                            pod,
                            connections: c.connections,
                            users: c.users,
                            topics: c.topics,
                        }
                    }
                    Query::ClientFrame {
                        user,
                        session,
                        frame,
                    } => {
                        let (Ok(user), Some(id)) =
                            (UserId::parse(&user), SessionId::parse(&session))
                        else {
                            return;
                        };
                        let found = registry
                            .send(ClientFrameFor { user, id, frame })
                            .await
                            .unwrap_or(false);
                        QueryReply::ClientFrame { pod, found }
                    }
                    Query::Hello { .. } => {
                        let c = registry.send(LocalStats).await.ok();
                        QueryReply::Here {
                            pod,
                            started,
                            connections: c.map_or(0, |c| c.connections),
                            users: c.map_or(0, |c| c.users),
                        }
                    }
                };
                let _ = bus
                    .publish(Outbound::new(reply_to, control::encode(&reply)))
                    .await;
            }
            .into_actor(self),
        );
    }
}

impl Actor for ControlPlane {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for sub in std::mem::take(&mut self.subscriptions) {
            ctx.add_stream(sub);
        }
    }
}

impl StreamHandler<BusMessage> for ControlPlane {
    fn handle(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        self.on_message(msg, ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // A subscription ends only with its bus connection, for good: nothing to resume.
        tracing::warn!("a control subscription ended");
    }
}
