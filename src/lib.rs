//! Herald: a realtime push hub. Browsers hold WebSocket sessions; services publish to NATS
//! subjects (or the HTTP API) and herald delivers to the right sessions on the right pods.
//!
//! # Layout
//! - [`config`]: flags and `HERALD_*` variables, validated once.
//! - [`server`]: builds a pod (bus, actors, HTTP) and runs it until drained.
//! - [`session`]: Session actor, one per connection whatever its transport; its socket,
//!   outbound queue and the [`session::wire::Wire`] seam transports plug into.
//! - [`registry`]: Registry actor, owner of session state (index, limits, takeover,
//!   eviction, presence, fan-out, drain); [`registry::index`] is its state as plain data.
//! - [`subscriber`]: Subscriber actor, owner of the pod's delivery subscriptions.
//! - [`mailbox`]: the messages sessions, Registry and Subscriber exchange, defined below
//!   all three; [`link`]: what a session shares with the Registry without a message.
//! - [`control`]: the control plane (beacons, pod table, kicks, cluster presence, stats,
//!   SSE client-frame forwarding).
//! - [`bus`]: the `Bus` seam and its engines (`memory`, `nats`); [`store`]: the store seam
//!   for kept messages and its engines (JetStream, disk, memory), cursors and live feeds.
//! - [`admin`]: the `herald revoke` and `herald block` commands.
//! - [`access`]: token revocations and user blocks, held in memory and kept (JetStream
//!   key-value, a file, or memory).
//! - [`auth`]: token extraction and JWT verification; [`ids`]: validated ids;
//!   [`percent`]: percent-decoding of query strings and NATS URL user info.
//! - [`receipts`]: HTTP publishes waiting for delivery receipts, one subscription a pod.
//! - [`message`]: a published message and its frame, encoded once; [`dedup`]: recent
//!   message ids, so a re-published `Nats-Msg-Id` is delivered once.
//! - [`http`]: routes and handlers; the transports, one module per wire format
//!   ([`http::websocket`], [`http::sse`]) sharing [`http::admission`];
//!   [`metrics`]: Prometheus metrics.
//! - [`cli`]: the `token` and `publish` subcommands.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod dedup;
pub mod handoff;
pub mod http;
pub mod ids;
pub mod link;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod origin;
pub mod percent;
pub mod receipts;
pub mod registry;
pub mod server;
pub mod session;
pub mod shard;
pub mod store;
pub mod subscriber;
