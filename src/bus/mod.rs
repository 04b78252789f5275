//! The bus seam: publish, subscribe, request/reply over subjects. Two engines sit behind
//! [`Bus`]: [`memory::MemoryBus`] (standalone mode and fast tests) and [`nats::NatsBus`].
//!
//! Subjects follow NATS rules in both engines (`*` one token, final `>` the rest), so code
//! above this seam never knows which engine runs.

pub mod creds;
pub mod interest;
pub mod memory;
pub mod nats;
pub mod tls;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// Message headers, in order (few per message, so a Vec beats a map).
pub type Headers = Vec<(String, String)>;

/// A message received from the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl BusMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Outbound {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Outbound {
        Outbound {
            subject: subject.into(),
            payload: payload.into(),
            ..Outbound::default()
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Outbound {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A live subscription; dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus is not connected")]
    Disconnected,
    #[error("request timed out")]
    Timeout,
    #[error("no responders")]
    NoResponders,
    #[error("bus error: {0}")]
    Other(String),
    #[error("the {0} bus cannot publish without waiting")]
    Unsupported(&'static str),
}

/// What the hub needs from a message bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish one message. Fails fast with `Disconnected` while the bus is unreachable,
    /// so callers can tell a client instead of losing its message silently.
    async fn publish(&self, msg: Outbound) -> Result<(), BusError>;
    /// Publish without waiting, from any thread, where the engine can (the in-process
    /// bus hands the message to its subscribers at once); `Unsupported` elsewhere.
    fn publish_now(&self, msg: Outbound) -> Result<(), BusError> {
        let _ = msg;
        Err(BusError::Unsupported(self.engine()))
    }

    /// Subscribe to a subject (wildcards allowed), optionally in a queue group. Resolves
    /// once the subscription is in place on the bus, so messages published after it
    /// returns are delivered.
    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, BusError>;

    /// Engines that can carry many subscriptions into one stream hand it out here, once:
    /// subjects added with [`Bus::add_interest`] arrive on it, with no per-subscription
    /// stream (or channel) at all. None: use [`Bus::subscribe`] for each subject.
    fn take_interest_stream(&self) -> Option<Subscription> {
        None
    }

    /// Add a subject to the interest stream; resolves once the subscription is in place.
    async fn add_interest(&self, subject: String) -> Result<(), BusError> {
        Err(BusError::Other(format!(
            "{} has no interest stream for {subject}",
            self.engine()
        )))
    }

    /// Remove a subject from the interest stream.
    fn remove_interest(&self, _subject: &str) {}

    /// A fresh unique subject for replies.
    fn new_inbox(&self) -> String;

    /// Whether the bus is connected now.
    fn is_connected(&self) -> bool;

    /// Engine name for logs.
    fn engine(&self) -> &'static str;

    /// Changes each time the bus reconnects (live traffic may have been missed meanwhile).
    fn connection_generation(&self) -> u64 {
        0
    }

    /// Wait (briefly) until what was published has left this process.
    async fn flush(&self) {}

    /// Send a request and wait for the first reply.
    async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        let mut replies = self.request_many(subject, payload, timeout, 1).await?;
        replies.pop().ok_or(BusError::Timeout)
    }

    /// Send a request and collect replies until `expected` arrived or `timeout` passed.
    async fn request_many(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
        expected: usize,
    ) -> Result<Vec<BusMessage>, BusError> {
        use futures_util::StreamExt;
        let inbox = self.new_inbox();
        let mut sub = self.subscribe(inbox.clone(), None).await?;
        self.publish(Outbound {
            subject,
            reply: Some(inbox),
            headers: Vec::new(),
            payload,
        })
        .await?;
        let mut replies = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while replies.len() < expected {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => replies.push(m),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(replies)
    }
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub use herald_proto::subject_matches;
