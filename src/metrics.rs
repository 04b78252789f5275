//! Prometheus metrics: one registry, every name prefixed `herald_`, exposed on /metrics.
//!
//! Hot paths increment per message or per fan-out batch, never per recipient lookup, so a
//! broadcast to many sessions costs a handful of atomic adds here.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SourceLabel {
    user,
    broadcast,
    topic,
    upstream,
}

impl From<herald_proto::frame::Source> for SourceLabel {
    fn from(s: herald_proto::frame::Source) -> Self {
        match s {
            herald_proto::frame::Source::User => SourceLabel::user,
            herald_proto::frame::Source::Broadcast => SourceLabel::broadcast,
            herald_proto::frame::Source::Topic => SourceLabel::topic,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: SourceLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

/// Outcomes of an HTTP publish that waited for a receipt.
pub const AWAIT_ANSWERED: &str = "answered";
pub const AWAIT_TIMED_OUT: &str = "timed_out";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// `reason` of the access metrics.
pub const ACCESS_REVOKED: &str = "revoked";
pub const ACCESS_BLOCKED: &str = "blocked";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Why a control message was ignored: no source pod, or one not in the live pod table.
pub const CONTROL_EMPTY_SOURCE: &str = "empty_source";
pub const CONTROL_UNKNOWN_POD: &str = "unknown_pod";

/// Every metric herald exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub users: Gauge,
    pub messages_in: Family<SourceLabels, Counter>,
    pub messages_out: Family<SourceLabels, Counter>,
    pub bytes_out: Counter,
    pub closes: Family<CodeLabels, Counter>,
    pub handshake_refusals: Family<StatusLabels, Counter>,
    pub delivery_latency: Histogram,
    pub bus_connected: Gauge,
    pub draining: Gauge,
    pub bad_frames: Counter,
    /// Frames not queued because the recipient's outbound limit was reached.
    pub slow_consumer_drops: Counter,
    pub registry_entries: Family<MapLabels, Gauge>,
    pub topics: Gauge,
    pub topic_subscriptions: Gauge,
    /// Pod-to-pod control messages not acted on, by reason.
    pub control_ignored: Family<ReasonLabels, Counter>,
    /// Running sessions by transport (`websocket`, `sse`).
    pub sessions: Family<TransportLabels, Gauge>,
    pub sessions_opened: Family<TransportLabels, Counter>,
    /// Embedded stores (memory, disk): messages and bytes kept, appends, evictions.
    pub store_messages: Gauge,
    pub store_bytes: Gauge,
    pub store_appends: Counter,
    pub store_append_failures: Counter,
    pub store_evicted_retention: Counter,
    pub store_evicted_memory: Counter,
    pub store_commit_seconds: Histogram,
    /// Delivery receipts (§5c): acks published, HTTP publishes waiting for one, and how
    /// those waits ended (`answered`, `timed_out`).
    pub receipts: Counter,
    pub awaits_pending: Gauge,
    pub awaits: Family<OutcomeLabels, Counter>,
    /// Rebalancing (§4): sessions shed, and the pod's bound (0 while it would not shed).
    pub rebalance_shed: Counter,
    pub rebalance_bound: Gauge,
    /// Revocations and blocks (§6): rules held, handshakes and refreshes refused, and
    /// live sessions closed because of them, by reason (`revoked`, `blocked`).
    pub access_rules: Gauge,
    pub access_refused: Family<ReasonLabels, Counter>,
    pub access_closed: Family<ReasonLabels, Counter>,
}

/// The JWKS key cache's health (`--jwt-jwks-url`).
///
/// Process-wide, unlike [`Metrics`]: the key set belongs to the configuration, which is
/// loaded before the pod's `Metrics` exist and is handed around without them. Every
/// `Metrics` registry exports these same series (0 without a JWKS URL).
#[derive(Clone, Default)]
pub struct JwksMetrics {
    /// 1 while the last refresh failed (the last good set stays in use).
    pub stale: Gauge,
    /// Usable keys (RS256 and ES256 with a `kid`) in the set in use.
    pub keys: Gauge,
    pub refresh_failures: Counter,
}

/// The process's [`JwksMetrics`].
pub fn jwks() -> &'static JwksMetrics {
    static JWKS: std::sync::OnceLock<JwksMetrics> = std::sync::OnceLock::new();
    JWKS.get_or_init(JwksMetrics::default)
}

impl Metrics {
    /// A session started on `transport`.
    pub fn transport_opened(&self, transport: &'static str) {
        let labels = TransportLabels { transport };
        self.sessions.get_or_create(&labels).inc();
        self.sessions_opened.get_or_create(&labels).inc();
    }

    /// A session on `transport` stopped.
    pub fn transport_closed(&self, transport: &'static str) {
        self.sessions
            .get_or_create(&TransportLabels { transport })
            .dec();
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            connections: Gauge::default(),
            users: Gauge::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Counter::default(),
            closes: Family::default(),
            handshake_refusals: Family::default(),
            // 50 µs .. ~1.6 s
            delivery_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            bus_connected: Gauge::default(),
            draining: Gauge::default(),
            bad_frames: Counter::default(),
            slow_consumer_drops: Counter::default(),
            registry_entries: Family::default(),
            topics: Gauge::default(),
            topic_subscriptions: Gauge::default(),
            control_ignored: Family::default(),
            sessions: Family::default(),
            sessions_opened: Family::default(),
            store_messages: Gauge::default(),
            store_bytes: Gauge::default(),
            store_appends: Counter::default(),
            store_append_failures: Counter::default(),
            store_evicted_retention: Counter::default(),
            store_evicted_memory: Counter::default(),
            // 50 µs .. ~1.6 s
            store_commit_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            receipts: Counter::default(),
            awaits_pending: Gauge::default(),
            awaits: Family::default(),
            rebalance_shed: Counter::default(),
            rebalance_bound: Gauge::default(),
            access_rules: Gauge::default(),
            access_refused: Family::default(),
            access_closed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions",
            "Running sessions on this pod, by transport (websocket, sse)",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_opened",
            "Sessions started on this pod, by transport",
            m.sessions_opened.clone(),
        );
        registry.register(
            "connections",
            "Open sessions on this pod (every transport)",
            m.connections.clone(),
        );
        registry.register(
            "users",
            "Distinct users with a session on this pod",
            m.users.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received for delivery, by source (upstream = client publish frames)",
            m.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Message frames queued to sessions, by source",
            m.messages_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Bytes of message frames queued to sessions",
            m.bytes_out.clone(),
        );
        registry.register("closes", "Sessions closed, by close code", m.closes.clone());
        registry.register(
            "handshake_refusals",
            "WebSocket handshakes refused, by HTTP status",
            m.handshake_refusals.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From a message reaching this pod to its frame being queued to every local recipient",
            m.delivery_latency.clone(),
        );
        registry.register(
            "bus_connected",
            "1 when the message bus is connected",
            m.bus_connected.clone(),
        );
        registry.register("draining", "1 while the pod drains", m.draining.clone());
        registry.register(
            "bad_frames",
            "Client frames refused as malformed",
            m.bad_frames.clone(),
        );
        registry.register(
            "slow_consumer_drops",
            "Frames not queued because the session's outbound limit was reached (it closes with 4008)",
            m.slow_consumer_drops.clone(),
        );
        registry.register(
            "topics",
            "Topics with at least one follower on this pod",
            m.topics.clone(),
        );
        registry.register(
            "topic_subscriptions",
            "Session-topic subscriptions on this pod",
            m.topic_subscriptions.clone(),
        );
        registry.register(
            "registry_entries",
            "Entries in the registry's indexes (sessions, users, devices, takeover history)",
            m.registry_entries.clone(),
        );
        registry.register(
            "store_messages",
            "User messages kept for recovery by the embedded store (memory or disk)",
            m.store_messages.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes the embedded store holds (memory engine: accounted bytes; disk: allocated on disk, measured at most once a second)",
            m.store_bytes.clone(),
        );
        registry.register(
            "store_appends",
            "User messages kept by the embedded store",
            m.store_appends.clone(),
        );
        registry.register(
            "store_append_failures",
            "Publishes the embedded store could not keep (answered 503)",
            m.store_append_failures.clone(),
        );
        registry.register(
            "store_evicted_retention",
            "Kept messages dropped because they were older than --retention",
            m.store_evicted_retention.clone(),
        );
        registry.register(
            "store_evicted_memory",
            "Kept messages dropped to stay within --history-memory (memory engine)",
            m.store_evicted_memory.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time of one disk store write transaction, fsync included",
            m.store_commit_seconds.clone(),
        );
        registry.register(
            "receipts",
            "Delivery receipts published: acks sent by this pod's sessions",
            m.receipts.clone(),
        );
        registry.register(
            "awaits_pending",
            "HTTP publishes on this pod waiting for a delivery receipt",
            m.awaits_pending.clone(),
        );
        registry.register(
            "awaits",
            "HTTP publishes that waited for a receipt, by outcome (answered, timed_out)",
            m.awaits.clone(),
        );
        registry.register(
            "rebalance_shed",
            "Sessions this pod closed with 1012 (reason rebalance) to even out the cluster",
            m.rebalance_shed.clone(),
        );
        registry.register(
            "rebalance_bound",
            "Connections above which this pod sheds: --rebalance-above x the cluster's mean (0 while it would not shed: alone, a pod draining or starting)",
            m.rebalance_bound.clone(),
        );
        registry.register(
            "access_rules",
            "Token revocations and user blocks this pod holds",
            m.access_rules.clone(),
        );
        registry.register(
            "access_refused",
            "Handshakes and refreshes refused by a revocation or a block, by reason (revoked, blocked)",
            m.access_refused.clone(),
        );
        registry.register(
            "access_closed",
            "Live sessions closed by a revocation (4003) or a block (4004), by reason",
            m.access_closed.clone(),
        );
        for reason in [ACCESS_REVOKED, ACCESS_BLOCKED] {
            let _ = m.access_refused.get_or_create(&ReasonLabels { reason });
            let _ = m.access_closed.get_or_create(&ReasonLabels { reason });
        }
        for outcome in [AWAIT_ANSWERED, AWAIT_TIMED_OUT] {
            let _ = m.awaits.get_or_create(&OutcomeLabels { outcome });
        }
        let jwks = jwks();
        registry.register(
            "jwks_stale",
            "1 while the last JWKS refresh failed and the last good key set is in use",
            jwks.stale.clone(),
        );
        registry.register(
            "jwks_keys",
            "Usable keys (RS256, ES256) in the JWKS key set in use",
            jwks.keys.clone(),
        );
        registry.register(
            "jwks_refresh_failures",
            "JWKS fetches that failed (unreachable, bad status, or no usable key)",
            jwks.refresh_failures.clone(),
        );
        registry.register(
            "control_ignored",
            "Pod-to-pod control messages ignored: no source pod, or a pod not known alive",
            m.control_ignored.clone(),
        );
        for reason in [CONTROL_EMPTY_SOURCE, CONTROL_UNKNOWN_POD] {
            let _ = m.control_ignored.get_or_create(&ReasonLabels { reason });
        }
        // Series exist from the start at 0, so rate() and alerts work before the first event.
        for status in [400, 401, 429, 503] {
            let _ = m.handshake_refusals.get_or_create(&StatusLabels { status });
        }
        for code in herald_proto::CloseCode::ALL {
            let _ = m.closes.get_or_create(&CodeLabels { code: code.code() });
        }
        for source in [
            SourceLabel::user,
            SourceLabel::broadcast,
            SourceLabel::topic,
            SourceLabel::upstream,
        ] {
            let _ = m.messages_in.get_or_create(&SourceLabels {
                source: source.clone(),
            });
            if source != SourceLabel::upstream {
                let _ = m.messages_out.get_or_create(&SourceLabels { source });
            }
        }
        Metrics { registry, ..m }
    }

    pub fn closed(&self, code: u16) {
        self.closes.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn refused(&self, status: u16) {
        self.handshake_refusals
            .get_or_create(&StatusLabels { status })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_starts_with_herald() {
        let m = Metrics::new();
        m.closed(4001);
        m.refused(401);
        m.messages_out
            .get_or_create(&SourceLabels {
                source: SourceLabel::broadcast,
            })
            .inc_by(3);
        let text = m.render();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("herald_"), "{line}");
        }
        assert!(
            text.contains("herald_closes_total{code=\"4001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_messages_out_total{source=\"broadcast\"} 3"),
            "{text}"
        );
    }
}
