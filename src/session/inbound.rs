//! Client frames of a session: ping, publish (to `<prefix>.up.<userId>`), ack (a receipt
//! on `<prefix>.receipts.<userId>`), subscribe and unsubscribe (`refresh` is in
//! `refresh.rs`), with the bad-frame budget. (The upstream rate limit is checked before a
//! frame gets here, for WebSocket pings too.)

use actix::prelude::*;
use bytes::Bytes;
use herald_proto::frame::error_code;
use herald_proto::{
    ClientFrame, CloseCode, ServerFrame, HEADER_DEVICE, HEADER_EVENT, HEADER_POD, HEADER_SESSION,
};

use super::{Session, MAX_BAD_FRAMES, MAX_TOPICS_PER_SESSION};
use crate::bus::Outbound;
use crate::metrics::{SourceLabel, SourceLabels};
use crate::registry::{Follow, Unfollow};

impl Session {
    pub(super) fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Ping) => self.send_frame(&ServerFrame::Pong, ctx),
            Ok(ClientFrame::Publish { event: Some(e), .. }) if e.contains(['\r', '\n']) => {
                // The event travels as a NATS header, where a line break ends the block.
                self.bad_frame("event may not contain CR or LF", ctx)
            }
            Ok(ClientFrame::Publish { event, data }) => self.publish_upstream(event, data, ctx),
            Ok(ClientFrame::Subscribe { topic }) => self.subscribe(topic, ctx),
            Ok(ClientFrame::Unsubscribe { topic }) => {
                if self.io.borrow_mut().topics.remove(&topic) {
                    self.shared
                        .registry
                        .do_send(Unfollow { id: self.id, topic });
                }
            }
            Ok(ClientFrame::Refresh { token }) => self.refresh(token, ctx),
            Ok(ClientFrame::Ack { id, status }) => self.ack(id, status, ctx),
            // A bad ack changes nothing: an error frame, not a step towards 1008.
            Err(e) if e.1 == error_code::BAD_ACK => {
                self.send_frame(&ServerFrame::error(error_code::BAD_ACK, &e.0), ctx)
            }
            Err(e) => self.bad_frame(&e.0, ctx),
        }
    }

    fn subscribe(&mut self, topic: String, ctx: &mut Context<Self>) {
        if !herald_proto::is_valid_topic(&topic) {
            let msg = "topic: 1 to 8 dot-separated tokens of A-Z a-z 0-9 _ - =, each 1 to 64 bytes";
            return self.send_frame(&ServerFrame::error(error_code::BAD_TOPIC, msg), ctx);
        }
        if !crate::auth::topic_allowed(&self.identity, &topic) {
            let msg = format!("the token does not allow topic {topic}");
            return self.send_frame(&ServerFrame::error(error_code::FORBIDDEN, msg), ctx);
        }
        if !self.io.borrow().topics.contains(&topic)
            && self.io.borrow().topics.len() >= MAX_TOPICS_PER_SESSION
        {
            let msg = format!("at most {MAX_TOPICS_PER_SESSION} topics per session");
            return self.send_frame(&ServerFrame::error(error_code::TOO_MANY_TOPICS, msg), ctx);
        }
        self.io.borrow_mut().topics.insert(topic.clone());
        let follow = self.shared.registry.send(Follow {
            id: self.id,
            topic: topic.clone(),
        });
        ctx.spawn(follow.into_actor(self).map(move |res, act, ctx| {
            // Unsubscribed meanwhile, or the session is gone: no reply.
            if matches!(res, Ok(true)) && act.io.borrow().topics.contains(&topic) {
                act.send_frame(&ServerFrame::Subscribed { topic }, ctx);
            }
        }));
    }

    pub(super) fn bad_frame(&mut self, why: &str, ctx: &mut Context<Self>) {
        self.bad_frames += 1;
        self.shared.metrics.bad_frames.inc();
        if self.bad_frames > MAX_BAD_FRAMES {
            self.begin_close(CloseCode::PolicyViolation, ctx);
        } else {
            self.send_frame(&ServerFrame::error(error_code::BAD_FRAME, why), ctx);
        }
    }

    /// A delivery receipt: published once on `<prefix>.receipts.<user>`. The session can
    /// only speak for its own user; an id it never got is published all the same (a
    /// receipt names the session and device that sent it, so it cannot pass for another's).
    fn ack(&mut self, id: String, status: String, ctx: &mut Context<Self>) {
        let shared = &self.shared;
        let user = self.identity.user.as_str();
        let receipt = herald_proto::events::Receipt {
            id,
            user: user.to_string(),
            session: self.id.to_string(),
            device: self.identity.device.as_ref().map(ToString::to_string),
            pod: shared.pod.clone(),
            status,
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        let payload = match serde_json::to_vec(&receipt) {
            Ok(p) => Bytes::from(p),
            Err(_) => return,
        };
        shared.metrics.receipts.inc();
        let msg = Outbound::new(shared.subjects.receipts(user), payload);
        let bus = shared.bus.clone();
        let store = shared.store.clone();
        ctx.spawn(
            async move {
                // Published first (a waiting publisher hears it without the store's
                // write), then kept beside the message where messages are kept; an id
                // never kept is published all the same, and not kept.
                let published = bus.publish(msg).await;
                if let Some(store) = store {
                    if let Err(e) = store.keep_receipt(&receipt).await {
                        tracing::warn!(error = %e, "a receipt was not kept");
                    }
                }
                published
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                if let Err(e) = res {
                    tracing::debug!(session = %act.id, error = %e, "receipt not published");
                    act.send_frame(
                        &ServerFrame::error(
                            error_code::UNAVAILABLE,
                            "receipt not published: the bus is unavailable",
                        ),
                        ctx,
                    );
                }
            }),
        );
    }

    fn publish_upstream(
        &mut self,
        event: Option<String>,
        data: Option<Box<serde_json::value::RawValue>>,
        ctx: &mut Context<Self>,
    ) {
        let shared = &self.shared;
        let payload = data.map_or_else(
            || Bytes::from_static(b"null"),
            |d| Bytes::from(String::from(Box::<str>::from(d))),
        );
        let mut msg = Outbound::new(shared.subjects.up(self.identity.user.as_str()), payload)
            .header(HEADER_SESSION, self.id.to_string())
            .header(HEADER_POD, shared.pod.clone());
        if let Some(e) = event {
            msg = msg.header(HEADER_EVENT, e);
        }
        if let Some(d) = &self.identity.device {
            msg = msg.header(HEADER_DEVICE, d.to_string());
        }
        shared
            .metrics
            .messages_in
            .get_or_create(&SourceLabels {
                source: SourceLabel::upstream,
            })
            .inc();
        let bus = shared.bus.clone();
        ctx.spawn(
            async move { bus.publish(msg).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    if let Err(e) = res {
                        tracing::debug!(session = %act.id, error = %e, "upstream publish failed");
                        act.send_frame(
                            &ServerFrame::error(
                                error_code::UNAVAILABLE,
                                "message not published: the bus is unavailable",
                            ),
                            ctx,
                        );
                    }
                }),
        );
    }
}
