//! NATS engine (async-nats). The connection carries the pod name; several URLs (a NATS
//! cluster) are accepted and the client fails over and reconnects forever.
//!
//! Subscriptions survive reconnects: the client re-sends them to whichever server it
//! reconnects to, so interest routing heals by itself after an outage. While
//! disconnected, `publish` fails fast instead of buffering, so a browser's upstream frame
//! is answered with an error rather than lost silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Bus, BusError, BusMessage, Outbound, Subscription};
use crate::metrics::Metrics;

/// How long a subscribe waits for the server to confirm it (a PING round trip).
const SUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    /// Connections made so far (1 after the first, +1 per reconnect).
    connections: Arc<AtomicU64>,
}

impl NatsBus {
    /// Connect to any of `urls`, retrying until one answers.
    pub async fn connect(
        urls: &[String],
        name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<NatsBus, BusError> {
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| BusError::Other(format!("NATS URL {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let events = metrics.clone();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            // The first URL is this pod's own NATS node; the rest are fallbacks.
            .retain_servers_order()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(5))
            .connection_timeout(Duration::from_secs(3))
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).min(2_000))
            })
            .event_callback(move |event| {
                let metrics = events.clone();
                let counted = counted.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            counted.fetch_add(1, Ordering::AcqRel);
                            metrics.bus_connected.set(1);
                            tracing::info!("NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            metrics.bus_connected.set(0);
                            tracing::warn!("NATS disconnected; reconnecting");
                        }
                        other => tracing::info!(event = %other, "NATS event"),
                    }
                }
            });
        let client = async_nats::connect_with_options(addrs, options)
            .await
            .map_err(|e| BusError::Other(e.to_string()))?;
        // retry_on_initial_connect returns before the first connection: wait for it so
        // the pod only reports ready once NATS is really there.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("NATS not reachable yet; serving as not ready until it is");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            connections.fetch_max(1, Ordering::AcqRel);
        }
        Ok(NatsBus {
            client,
            connections,
        })
    }

    /// The client, for JetStream (durable mode).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }
}

fn to_header_map(headers: &[(String, String)]) -> Option<async_nats::HeaderMap> {
    if headers.is_empty() {
        return None;
    }
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    Some(map)
}

fn from_message(m: async_nats::Message) -> BusMessage {
    let headers = m
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(k, vs)| vs.first().map(|v| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    BusMessage {
        subject: m.subject.to_string(),
        reply: m.reply.map(|r| r.to_string()),
        headers,
        payload: m.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, msg: Outbound) -> Result<(), BusError> {
        if !self.is_connected() {
            return Err(BusError::Disconnected);
        }
        let headers = to_header_map(&msg.headers);
        let res = match (msg.reply, headers) {
            (Some(reply), Some(h)) => {
                self.client
                    .publish_with_reply_and_headers(msg.subject, reply, h, msg.payload)
                    .await
            }
            (Some(reply), None) => {
                self.client
                    .publish_with_reply(msg.subject, reply, msg.payload)
                    .await
            }
            (None, Some(h)) => {
                self.client
                    .publish_with_headers(msg.subject, h, msg.payload)
                    .await
            }
            (None, None) => self.client.publish(msg.subject, msg.payload).await,
        };
        res.map_err(|e| BusError::Other(e.to_string()))
    }

    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, BusError> {
        let sub = match queue {
            Some(q) => self.client.queue_subscribe(subject, q).await,
            None => self.client.subscribe(subject).await,
        }
        .map_err(|e| BusError::Other(e.to_string()))?;
        // The SUB is only in place once the server has processed it; a PING/PONG round
        // trip proves that. While disconnected it is re-sent on reconnect anyway.
        let _ = tokio::time::timeout(SUBSCRIBE_CONFIRM_TIMEOUT, self.client.flush()).await;
        // A "no responders" status is the server talking, not a message for the hub.
        let messages = sub
            .filter(|m| std::future::ready(m.status != Some(async_nats::StatusCode::NO_RESPONDERS)))
            .map(from_message);
        Ok(Box::pin(messages))
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn engine(&self) -> &'static str {
        "nats"
    }

    fn connection_generation(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }
}
