//! `herald-load`: a load generator for herald over real connections on loopback.
//!
//! Scenarios: `idle` (hold N connections, report connect rate and the server's RSS per
//! connection), `broadcast` (M broadcasts via NATS to N connections: deliveries/s and
//! latency), `addressed` (R messages/s via NATS to random users: latency and loss),
//! `storm` (N clients connect at once: time until all are ready), `replay` (durable
//! mode: M messages stored for one user, then reconnects with `since=` timed until the
//! last replayed message has arrived) and `soak` (N connections churning, addressed and
//! broadcast traffic for a long time: RSS and p99 per interval, total loss). Each run
//! prints a human summary and one JSON line with every figure. `--read-delay-ms` turns
//! every client into a slow reader (for herald's outbound bound: `idle` holds them while
//! another tool publishes).
//!
//! Clients speak herald's protocol over WebSocket (default) or SSE (`--transport sse`), or,
//! with `--proto nats-ws`, the NATS protocol to a nats-server `websocket` listener (the
//! peer herald is compared with): they subscribe to the subjects herald would subscribe to
//! for them, and the loader publishes over plain NATS exactly as for herald.
//!
//! One process can hold a little under 20,000 sockets (the open-file limit is 20,000): past
//! that, run several loader processes (and several herald pods). Source addresses are
//! spread over 127.0.0.0/8 so one address's ephemeral ports never run out.

mod conn;
mod http_pub;
mod nats_proto;
mod report;
mod scenarios;
mod sse;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// herald's protocol (`/websocket/<user>` or `/sse/<user>`).
    Herald,
    /// NATS inside WebSocket frames, to a nats-server `websocket` listener (no TLS).
    NatsWs,
}

/// How herald clients connect (`--proto herald` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
}

#[derive(Debug, Parser)]
#[command(
    name = "herald-load",
    about = "Load generator for herald (loopback only)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server address (host:port): herald, or with `--proto nats-ws` nats-server's
    /// websocket listener; repeat for several, connections go round-robin.
    #[arg(long = "hub", default_value = "127.0.0.1:8080", global = true)]
    pub hubs: Vec<SocketAddr>,
    /// Client protocol: herald's, or NATS over WebSocket to nats-server (for comparison).
    #[arg(long, value_enum, default_value_t = Proto::Herald, global = true)]
    pub proto: Proto,
    /// herald transport: WebSocket or Server-Sent Events (`GET /sse/<user>`).
    #[arg(long, value_enum, default_value_t = Transport::Ws, global = true)]
    pub transport: Transport,
    /// NATS URL for publishing (broadcast, addressed and soak scenarios).
    #[arg(long, default_value = "nats://127.0.0.1:4222", global = true)]
    pub nats_url: String,
    #[arg(long, default_value = "herald", global = true)]
    pub subject_prefix: String,
    /// HS256 secret to sign tokens with; unset = no token (herald in unsigned mode).
    #[arg(long, env = "HERALD_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Server process ids whose RSS and CPU to report (herald pods, or with `--proto
    /// nats-ws` the nats-server); repeatable.
    #[arg(long = "herald-pid", visible_alias = "server-pid", global = true)]
    pub herald_pids: Vec<u32>,
    /// nats-server process ids whose CPU (and RSS) to report beside the server's: herald's
    /// bus; repeatable.
    #[arg(long = "nats-pid", global = true)]
    pub nats_pids: Vec<u32>,
    /// Handshakes in flight at once (not for `storm`).
    #[arg(long, default_value_t = 256, global = true)]
    pub concurrency: usize,
    /// Spread source addresses over this many loopback addresses (127.0.0.2 and up).
    #[arg(long, default_value_t = 16, global = true)]
    pub source_ips: u8,
    /// First source address index (127.0.0.<first>); give each loader process its own range.
    #[arg(long, default_value_t = 2, global = true)]
    pub first_source_ip: u8,
    /// User id prefix; give each loader process its own.
    #[arg(long, default_value = "load", global = true)]
    pub user_prefix: String,
    /// Sessions per user: connection i belongs to user i / this (the user's tabs).
    #[arg(long, default_value_t = 1, global = true)]
    pub sessions_per_user: usize,
    /// Slow consumers: each client sleeps this long after every message it reads (0 = none).
    #[arg(long, default_value_t = 0, global = true)]
    pub read_delay_ms: u64,
    /// Publish user messages through the first hub's HTTP API (`POST /api/v1/publish`)
    /// instead of NATS (addressed and replay scenarios): standalone hubs.
    #[arg(long, global = true)]
    pub publish_http: bool,
    /// API key for `--publish-http`.
    #[arg(long, env = "HERALD_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Keep-alive connections publishing at once with `--publish-http` (addressed).
    #[arg(long, default_value_t = 32, global = true)]
    pub http_connections: usize,
    /// Clients acknowledge every message they get (a `received` receipt).
    #[arg(long, global = true)]
    pub ack: bool,
    /// With `--publish-http`: each publish waits for a `received` receipt (`await`), up to
    /// this many milliseconds; the answer's latency is the publish-to-receipt time.
    #[arg(long, global = true)]
    pub await_receipt_ms: Option<u64>,
    /// Give up waiting for deliveries after this long.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Hold N connections; report connect rate, failures and herald RSS per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// How long to hold them after all are open.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// N connections, M broadcasts published via NATS.
    Broadcast {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Broadcasts per second; 0 = all at once, as fast as the publisher can.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Only listen (another process publishes the same number of broadcasts).
        #[arg(long)]
        no_publish: bool,
    },
    /// N users, R messages/s to random users via NATS for S seconds.
    Addressed {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// N clients connect at once (a reconnect storm).
    Storm {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// N connections for a long time: every minute a share of them closes and reconnects,
    /// while addressed messages and broadcasts flow; RSS and latency per interval, and
    /// every message sent checked against what arrived (connections about to close get
    /// no new messages; a grace period lets the last ones arrive).
    Soak {
        #[arg(long, default_value_t = 19000)]
        connections: usize,
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Percent of the connections closed and reopened per minute.
        #[arg(long, default_value_t = 10.0)]
        churn_percent: f64,
        /// Addressed messages per second (to random ready users).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Broadcasts per second.
        #[arg(long, default_value_t = 1.0)]
        broadcast_rate: f64,
        /// How long a connection taken out of the traffic stays open before it closes.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Report every this long.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Durable mode: M messages published through JetStream to one user, then R reconnects
    /// with `since=` the cursor before them, each timed until the M-th replayed message.
    Replay {
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Timed reconnects (all from the same cursor).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Size of each message's JSON payload in bytes (padded).
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-load: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let c = cli.common;
        match cli.scenario {
            Scenario::Idle { connections, hold } => scenarios::idle(&c, connections, hold).await,
            Scenario::Broadcast {
                connections,
                messages,
                rate,
                no_publish,
            } => scenarios::broadcast(&c, connections, messages, rate, !no_publish).await,
            Scenario::Addressed {
                users,
                rate,
                duration,
            } => scenarios::addressed(&c, users, rate, duration).await,
            Scenario::Storm { connections } => scenarios::storm(&c, connections).await,
            Scenario::Soak {
                connections,
                duration,
                churn_percent,
                rate,
                broadcast_rate,
                grace,
                interval,
            } => {
                scenarios::soak(
                    &c,
                    scenarios::SoakPlan {
                        connections,
                        duration,
                        churn_percent,
                        rate,
                        broadcast_rate,
                        grace,
                        interval,
                    },
                )
                .await
            }
            Scenario::Replay {
                messages,
                repeat,
                payload_bytes,
            } => scenarios::replay(&c, messages, repeat, payload_bytes).await,
        }
    });
    match result {
        Ok(report) => {
            report.print();
            if report.ok() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("herald-load: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
