//! The messages the pod's actors send each other, defined below all of them: sessions, the
//! Registry and the Subscriber know each other only through these types and the
//! `Recipient`s that carry them, so none of the three imports another.
//!
//! Direction of knowledge: sessions, shards and the control plane send to the Registry
//! (its own messages, `registry::*`); the Registry reaches sessions through
//! [`SessionHandle`], shards through [`ShardHandle`] and the Subscriber through
//! [`InterestHandle`]; the Subscriber sends `registry::Deliver`.

use std::sync::Arc;

use actix::prelude::*;
use herald_proto::CloseCode;

use crate::ids::SessionId;
use crate::message::Frame;

/// Something for a session to do. (Message frames do not travel this way: the session's
/// shard queues them directly, see [`ShardDeliver`].)
#[derive(Message)]
#[rtype(result = "()")]
pub enum ForSession {
    /// Send a heartbeat (a WebSocket ping, an SSE comment). The Registry sends these every
    /// heartbeat, spread over the interval, so sessions need no timer of their own.
    Heartbeat,
    /// Close with a code the Registry decided.
    Close(CloseCode),
    /// A client frame that reached the pod another way than the session's own stream
    /// (an SSE session's POST): handled as if the session had read it.
    ClientFrame(String),
}

/// A message frame for sessions of one shard (the sessions running on one worker thread):
/// the Registry sends one per shard that has recipients, and the shard queues the shared
/// frame into each recipient's outbound buffer without a message per session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardDeliver {
    pub frame: Frame,
    /// The frame compressed (permessage-deflate), made by the first session that needs it
    /// and shared by every shard: one compression per message.
    pub deflated: Arc<std::sync::OnceLock<bytes::Bytes>>,
    pub to: Recipients,
    /// Set for topic messages: a session that unsubscribed since the fan-out is skipped,
    /// so an unsubscribe stops delivery at once.
    pub topic: Option<Arc<str>>,
}

/// Which of a shard's sessions get a frame.
pub enum Recipients {
    /// Every session of the shard (a broadcast).
    All,
    Sessions(Vec<SessionId>),
}

/// How the Registry reaches a shard.
pub type ShardHandle = Recipient<ShardDeliver>;

/// How the Registry reaches a session, whatever its transport.
pub type SessionHandle = Recipient<ForSession>;

/// Start or end interest in a subject.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Interest {
    Add(String),
    Remove(String),
}

/// Resolves once the subject's subscription is in place (at once if it already is, or if
/// nobody wants it). A durable live feed resolves once its baseline is known, with the
/// baseline: every message after it reaches the Registry after this answer.
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct AwaitInterest(pub String);

/// How the Registry reaches the Subscriber.
#[derive(Clone)]
pub struct InterestHandle {
    pub interest: Recipient<Interest>,
    pub wait: Recipient<AwaitInterest>,
}
