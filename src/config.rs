//! Command line and environment configuration: parsed and validated once, then handed
//! down as small by-value sub-configs.
//!
//! Every `serve` setting is a flag and a `HERALD_*` variable; the flag wins (clap's rule).
//! Durations take human forms (`500ms`, `25s`, `2m`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Realtime push hub: browsers on WebSockets, services on NATS or HTTP.
#[derive(Debug, Parser)]
#[command(name = "herald", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (the default).
    Serve(ServeArgs),
    /// Print a JWT for a user, signed with the configured key (for trials and tests).
    Token(TokenArgs),
    /// Publish a message through NATS, or through the HTTP API with --http.
    Publish(PublishArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 25s, 2m)"))
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address:port to serve on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Comma-separated NATS URLs; unset = standalone mode.
    #[arg(long, env = "HERALD_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// Prefix of every NATS subject.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
    /// HS256 secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Path to a PEM public key (RS256/ES256).
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Key for /api/v1/*; unset = API refused unless herald is bound to loopback.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Name of this pod [default: host name].
    #[arg(long, env = "HERALD_POD_NAME")]
    pub pod_name: Option<String>,
    /// WebSocket ping interval.
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "25s", value_parser = duration)]
    pub heartbeat: Duration,
    /// Close 4002 after this long without a sign of life.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Connections per pod; beyond it 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Sessions per user; beyond it 429.
    #[arg(long, env = "HERALD_MAX_SESSIONS_PER_USER", default_value_t = 16)]
    pub max_sessions_per_user: usize,
    /// Inbound frame limit in bytes; beyond it close 1009.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,
    /// Outbound queue per session in bytes; beyond it close 4008.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE_BYTES", default_value_t = 1_048_576)]
    pub outbound_queue_bytes: usize,
    /// Client frames per second per session (burst 2x); beyond it error, then 4029.
    #[arg(long, env = "HERALD_UPSTREAM_RATE", default_value_t = 50)]
    pub upstream_rate: u32,
    /// On SIGTERM: readiness 503, sessions closed with 1012 spread over this window.
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Keep user messages in JetStream for recovery (requires NATS).
    #[arg(long, env = "HERALD_DURABLE", default_value_t = false)]
    pub durable: bool,
    /// How long durable messages are kept.
    #[arg(long, env = "HERALD_RETENTION", default_value = "24h", value_parser = duration)]
    pub retention: Duration,
    /// Most messages replayed on one reconnect.
    #[arg(long, env = "HERALD_MAX_REPLAY", default_value_t = 1000)]
    pub max_replay: u64,
    /// JetStream replicas of the durable stream.
    #[arg(long, env = "HERALD_DURABLE_REPLICAS", default_value_t = 1)]
    pub durable_replicas: usize,
    /// Origins allowed besides same-origin (comma-separated: exact origins,
    /// `https://*.example.com`, or `*`).
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// How long a closing session waits for the peer's close frame.
    #[arg(long, env = "HERALD_CLOSE_GRACE", default_value = "2s", value_parser = duration)]
    pub close_grace: Duration,
    /// TCP accept backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "HERALD_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub device: Option<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub ttl: Duration,
    /// Topic patterns the token allows (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// HS256 secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM private key (RS256/ES256) to sign with instead of the secret.
    #[arg(long, env = "HERALD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["user", "broadcast", "topic"])))]
pub struct PublishArgs {
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub broadcast: bool,
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long)]
    pub event: Option<String>,
    /// Deliver only to the user's sessions opened with this device.
    #[arg(long)]
    pub device: Option<String>,
    /// Message id (Nats-Msg-Id).
    #[arg(long)]
    pub id: Option<String>,
    /// Publish through the HTTP API of this herald instead of NATS.
    #[arg(long)]
    pub http: Option<String>,
    /// Over NATS: publish a user message through JetStream to the durable stream and
    /// print its cursor (the HTTP API does this by itself in durable mode).
    #[arg(long, env = "HERALD_DURABLE", default_value_t = false)]
    pub durable: bool,
    #[arg(long, env = "HERALD_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The payload: JSON is delivered as is, other text as a JSON string.
    pub data: String,
}

/// Per-session limits, copied into every session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub upstream_rate: u32,
    /// How long a closing session waits for the peer's close frame.
    pub close_grace: Duration,
}

/// Limits the Registry enforces.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    pub max_connections: usize,
    pub max_sessions_per_user: usize,
    pub idle_timeout: Duration,
    /// Per session: the fan-out refuses frames past it (the session's limit, pod-wide).
    pub outbound_queue_bytes: usize,
}

/// Durable mode's settings.
#[derive(Debug, Clone, Copy)]
pub struct DurableConfig {
    pub retention: Duration,
    pub max_replay: u64,
    pub replicas: usize,
}

/// Validated configuration of `herald serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub nats_urls: Vec<String>,
    pub subject_prefix: String,
    pub auth: crate::auth::AuthConfig,
    pub api_key: Option<String>,
    pub pod_name: String,
    pub session: SessionLimits,
    pub registry: RegistryLimits,
    pub drain_timeout: Duration,
    /// Durable mode (JetStream retention and recovery), when enabled.
    pub durable: Option<DurableConfig>,
    pub allowed_origins: crate::origin::AllowedOrigins,
    pub listen_backlog: u32,
    pub log_format: LogFormat,
}

impl Config {
    /// Check every setting and report all problems at once, before anything starts.
    pub fn from_args(args: ServeArgs) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let nats_urls: Vec<String> = args
            .nats_url
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if !args.subject_prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) {
            problems.push(format!(
                "--subject-prefix {:?}: use dot-separated tokens of A-Z a-z 0-9 _ -",
                args.subject_prefix
            ));
        }
        let auth = match crate::auth::AuthConfig::load(
            args.jwt_secret.as_deref(),
            args.jwt_public_key.as_deref(),
        ) {
            Ok(a) => a,
            Err(e) => {
                problems.push(e.to_string());
                crate::auth::AuthConfig::Unsigned
            }
        };
        if matches!(auth, crate::auth::AuthConfig::Unsigned) && !args.listen.ip().is_loopback() {
            problems.push(format!(
                "no JWT key configured (--jwt-secret or --jwt-public-key) while listening on {}: \
                 unsigned connections are only allowed on a loopback address",
                args.listen
            ));
        }
        if args.heartbeat.is_zero() {
            problems.push("--heartbeat must be above zero".into());
        }
        if args.idle_timeout <= args.heartbeat {
            problems.push(format!(
                "--idle-timeout ({}) must be longer than --heartbeat ({}): clients answer pings",
                humantime::format_duration(args.idle_timeout),
                humantime::format_duration(args.heartbeat)
            ));
        }
        if args.max_connections == 0 || args.max_sessions_per_user == 0 {
            problems
                .push("--max-connections and --max-sessions-per-user must be at least 1".into());
        }
        if args.max_frame_bytes < 128 {
            problems.push("--max-frame-bytes must be at least 128".into());
        }
        if args.outbound_queue_bytes < 1024 {
            problems.push("--outbound-queue-bytes must be at least 1024".into());
        }
        if args.upstream_rate == 0 {
            problems.push("--upstream-rate must be at least 1".into());
        }
        let durable = if args.durable {
            if nats_urls.is_empty() {
                problems.push("--durable needs NATS with JetStream (--nats-url)".into());
            }
            if args.retention.is_zero() {
                problems.push("--retention must be above zero".into());
            }
            if args.max_replay == 0 {
                problems.push("--max-replay must be at least 1".into());
            }
            if !(1..=5).contains(&args.durable_replicas) {
                problems.push("--durable-replicas must be between 1 and 5".into());
            }
            Some(DurableConfig {
                retention: args.retention,
                max_replay: args.max_replay,
                replicas: args.durable_replicas,
            })
        } else {
            None
        };
        let allowed_origins = match crate::origin::AllowedOrigins::parse(&args.allowed_origins) {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("--allowed-origins: {e}"));
                crate::origin::AllowedOrigins::default()
            }
        };
        if args.close_grace.is_zero() {
            problems.push("--close-grace must be above zero".into());
        }
        if args.listen_backlog == 0 {
            problems.push("--listen-backlog must be at least 1".into());
        }
        let pod_name = args
            .pod_name
            .clone()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(default_pod_name);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            listen: args.listen,
            nats_urls,
            subject_prefix: args.subject_prefix,
            auth,
            api_key: args.api_key.filter(|k| !k.is_empty()),
            pod_name,
            session: SessionLimits {
                heartbeat: args.heartbeat,
                idle_timeout: args.idle_timeout,
                max_frame_bytes: args.max_frame_bytes,
                outbound_queue_bytes: args.outbound_queue_bytes,
                upstream_rate: args.upstream_rate,
                close_grace: args.close_grace,
            },
            registry: RegistryLimits {
                max_connections: args.max_connections,
                max_sessions_per_user: args.max_sessions_per_user,
                idle_timeout: args.idle_timeout,
                outbound_queue_bytes: args.outbound_queue_bytes,
            },
            allowed_origins,
            listen_backlog: args.listen_backlog,
            drain_timeout: args.drain_timeout,
            durable,
            log_format: args.log_format,
        })
    }

    pub fn standalone(&self) -> bool {
        self.nats_urls.is_empty()
    }
}

fn default_pod_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = parse(&[]);
        let cfg = Config::from_args(cli.serve).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert!(cfg.standalone());
        assert_eq!(cfg.subject_prefix, "herald");
        assert_eq!(cfg.session.heartbeat, Duration::from_secs(25));
        assert_eq!(cfg.session.idle_timeout, Duration::from_secs(60));
        assert_eq!(cfg.registry.max_connections, 100_000);
        assert_eq!(cfg.registry.max_sessions_per_user, 16);
        assert_eq!(cfg.session.max_frame_bytes, 65_536);
        assert_eq!(cfg.session.outbound_queue_bytes, 1_048_576);
        assert_eq!(cfg.session.upstream_rate, 50);
        assert_eq!(cfg.drain_timeout, Duration::from_secs(20));
        assert_eq!(cfg.session.close_grace, Duration::from_secs(2));
        assert_eq!(cfg.listen_backlog, 4096);
        assert!(cfg.allowed_origins.is_empty());
    }

    #[test]
    fn human_durations_and_url_lists_parse() {
        let cli = parse(&[
            "serve",
            "--heartbeat",
            "500ms",
            "--idle-timeout",
            "2m",
            "--nats-url",
            "nats://a:1,nats://b:2",
        ]);
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve expected")
        };
        let cfg = Config::from_args(args).unwrap();
        assert_eq!(cfg.session.heartbeat, Duration::from_millis(500));
        assert_eq!(cfg.session.idle_timeout, Duration::from_secs(120));
        assert_eq!(cfg.nats_urls, vec!["nats://a:1", "nats://b:2"]);
    }

    #[test]
    fn unsigned_mode_is_refused_off_loopback_and_all_problems_are_listed() {
        let cli = parse(&["--listen", "0.0.0.0:8080", "--heartbeat", "90s"]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("no JWT key"));
        assert!(problems[1].contains("--idle-timeout"));
    }
}
