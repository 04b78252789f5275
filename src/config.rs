//! Command line and environment configuration: parsed and validated once, then handed
//! down as small by-value sub-configs.
//!
//! Every `serve` setting is a flag and a `HERALD_*` variable; the flag wins (clap's rule).
//! Durations take human forms (`500ms`, `25s`, `2m`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

// Parsed once at start; the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (the default).
    Serve(ServeArgs),
    /// Print a JWT for a user, signed with the configured key (for trials and tests).
    Token(TokenArgs),
    /// Publish a message through NATS, or through the HTTP API with --http.
    Publish(PublishArgs),
    /// Revoke a user's tokens (issued before a time, or one by its jti), on every pod.
    Revoke(RevokeArgs),
    /// Block a user until a time (closes their sessions with 4004), or lift a block.
    Block(BlockArgs),
}

/// TLS files for herald's NATS connections (the NATS client and the interest connection).
#[derive(Debug, Clone, Default, Args)]
pub struct NatsTlsArgs {
    /// PEM file of the CA certificates that sign the NATS servers' certificates (default:
    /// the system's roots). Given, every NATS connection must use TLS.
    #[arg(long, env = "HERALD_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM file of the client certificate herald presents to NATS (with --nats-tls-key).
    #[arg(long, env = "HERALD_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "HERALD_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsTlsArgs {
    pub fn files(&self) -> crate::bus::tls::NatsTls {
        crate::bus::tls::NatsTls {
            ca: self.nats_tls_ca.clone(),
            cert: self.nats_tls_cert.clone(),
            key: self.nats_tls_key.clone(),
        }
    }
}

/// What is wrong with the `--nats-tls-*` files, if anything.
pub fn nats_tls_problem(nats_urls: &[String], tls: &crate::bus::tls::NatsTls) -> Option<String> {
    if !tls.is_set() {
        return None;
    }
    if nats_urls.is_empty() {
        return Some("--nats-tls-ca, --nats-tls-cert and --nats-tls-key need --nats-url".into());
    }
    tls.client_config().err()
}

/// Where the API of a herald pod is, for `herald revoke` and `herald block`.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// The herald pod's HTTP address (any pod: the change reaches them all).
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub http: String,
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// File holding the API key (trailing line breaks dropped).
    #[arg(long, env = "HERALD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    pub user: String,
    /// Revoke every token issued before this time: unix seconds, or `now`.
    #[arg(long, conflicts_with = "jti")]
    pub before: Option<String>,
    /// Revoke the token with this `jti`.
    #[arg(long)]
    pub jti: Option<String>,
    /// The revoked tokens expire within this long (else the hub's --revocation-ttl).
    #[arg(long, value_parser = duration)]
    pub expires_in: Option<Duration>,
    #[command(flatten)]
    pub api: AccessArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BlockArgs {
    pub user: String,
    /// Blocked until this time (unix seconds).
    #[arg(long, conflicts_with_all = ["for", "remove"])]
    pub until: Option<u64>,
    /// Blocked for this long from now.
    #[arg(long = "for", value_parser = duration, conflicts_with = "remove")]
    pub r#for: Option<Duration>,
    /// Lift the user's block.
    #[arg(long)]
    pub remove: bool,
    #[command(flatten)]
    pub api: AccessArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 25s, 2m)"))
}

/// A share: `2%` or `0.02`, above 0 and at most 1.
fn share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share (examples: 2%, 0.02)"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: a share above 0 and at most 100%"))
    }
}

/// A size in bytes: a number with an optional unit (`64MiB`, `512KiB`, `1GiB`, `100MB`).
fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 64MiB, 512KiB, 1GiB, 0)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A secret setting (JWT secret, API key): its `Debug` prints `[redacted]`, so no derived
/// `Debug` of the arguments or the configuration shows it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret given either as `flag` or in the file of `file_flag` (Kubernetes Secret
/// volumes), not both. Trailing line breaks of the file are dropped; an empty file is an
/// error. Messages name the flags and the path, never the content.
pub fn secret_from(
    value: Option<Secret>,
    file: Option<&Path>,
    flag: &str,
    file_flag: &str,
) -> Result<Option<Secret>, String> {
    match (value, file) {
        (Some(_), Some(_)) => Err(format!(
            "{flag} and {file_flag} are both set; configure one"
        )),
        (value, None) => Ok(value),
        (None, Some(path)) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("{file_flag} {}: {e}", path.display()))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("{file_flag} {}: not UTF-8 text", path.display()))?;
            let secret = text.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                return Err(format!("{file_flag} {}: the file is empty", path.display()));
            }
            Ok(Some(Secret(secret.to_string())))
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address:port to serve on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Comma-separated NATS URLs; unset = standalone mode. User and password or a token
    /// may be given in them (`nats://user:pass@host:4222`, `nats://token@host:4222`).
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub nats_url: Vec<String>,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    #[command(flatten)]
    pub nats_tls: NatsTlsArgs,
    /// Prefix of every NATS subject.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
    /// HS256 secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// File holding the HS256 secret (trailing line breaks dropped).
    #[arg(long, env = "HERALD_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Path to a PEM public key (RS256/ES256).
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// URL of a JWKS document (RS256/ES256 keys chosen by the token's kid).
    #[arg(long, env = "HERALD_JWT_JWKS_URL", hide_env_values = true)]
    pub jwt_jwks_url: Option<String>,
    /// Required `aud` claim [default: not checked].
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim [default: not checked].
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Key for /api/v1/*; unset = API refused unless herald is bound to loopback.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// File holding the API key (trailing line breaks dropped).
    #[arg(long, env = "HERALD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
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
    /// Keep user messages durably for recovery: in JetStream with NATS, on disk in
    /// --data-dir standalone.
    #[arg(long, env = "HERALD_DURABLE", default_value_t = false)]
    pub durable: bool,
    /// Standalone --durable: the directory of the embedded store [herald-data, created when
    /// missing; a directory given here must exist].
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Standalone --durable: when a publish is answered. full: after fsync (survives power
    /// loss); data: after fdatasync; os: once the OS has it (survives a process kill, not a
    /// power loss).
    #[arg(long, env = "HERALD_DISK_SYNC", value_enum, default_value = "full")]
    pub disk_sync: DiskSync,
    /// Standalone without --durable: bytes of recent user messages kept in memory for
    /// recovery (0 keeps none).
    #[arg(long, env = "HERALD_HISTORY_MEMORY", default_value = "64MiB", value_parser = byte_size)]
    pub history_memory: u64,
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
    /// Handshakes admitted per second per pod (burst of one second); beyond it the upgrade
    /// completes and is closed with 1013. 0 = unlimited.
    #[arg(long, env = "HERALD_CONNECT_RATE", default_value_t = 0)]
    pub connect_rate: u32,
    /// permessage-deflate (RFC 7692) for clients that ask, without context takeover: each
    /// frame is compressed once and shared by its recipients.
    #[arg(long, env = "HERALD_COMPRESSION", default_value_t = false)]
    pub compression: bool,
    /// With --compression: frames shorter than this go uncompressed.
    #[arg(long, env = "HERALD_COMPRESSION_MIN_BYTES", default_value_t = 256)]
    pub compression_min_bytes: usize,
    /// How long a token revocation is kept when the revoke request gives no `expires`:
    /// set it to the longest lifetime of the tokens you issue.
    #[arg(long, env = "HERALD_REVOCATION_TTL", default_value = "24h", value_parser = duration)]
    pub revocation_ttl: Duration,
    /// Longest wait for a delivery receipt a publish may ask for (`await.timeout_ms`, 60 s at
    /// most); a publish that gives no timeout waits 10 s or this, whichever is shorter.
    #[arg(long, env = "HERALD_MAX_AWAIT", default_value = "60s", value_parser = duration)]
    pub max_await: Duration,
    /// NATS mode: shed sessions with 1012 when this pod holds more than --rebalance-above
    /// times the cluster's mean (after a scale-out).
    #[arg(long, env = "HERALD_REBALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub rebalance: bool,
    /// Shed above this multiple of the mean connections of the ready pods.
    #[arg(long, env = "HERALD_REBALANCE_ABOVE", default_value_t = 1.2)]
    pub rebalance_above: f64,
    /// At most this share of the pod's sessions shed per second (`2%` or `0.02`).
    #[arg(long, env = "HERALD_REBALANCE_RATE", default_value = "2%", value_parser = share)]
    pub rebalance_rate: f64,
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
    pub jwt_secret: Option<Secret>,
    /// File holding the HS256 secret (trailing line breaks dropped).
    #[arg(long, env = "HERALD_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM private key (RS256/ES256) to sign with instead of the secret.
    #[arg(long, env = "HERALD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
    /// Header `kid` (to pick a key out of a JWKS).
    #[arg(long)]
    pub kid: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    pub audience: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Valid only from this long after now (sets `nbf`).
    #[arg(long, value_parser = duration)]
    pub not_before: Option<Duration>,
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
    /// Print the message's cursor on a second line: over NATS, publish a user message
    /// through JetStream to the durable stream; over HTTP, the cursor of the answer.
    #[arg(long, env = "HERALD_DURABLE", default_value_t = false)]
    pub durable: bool,
    /// Wait for a delivery receipt of this status (any status when given without one)
    /// and print it; exit 3 when none came within --timeout.
    #[arg(long = "await", value_name = "STATUS", num_args = 0..=1, default_missing_value = "")]
    pub await_status: Option<String>,
    /// With --await: only a receipt from this device counts.
    #[arg(long)]
    pub await_device: Option<String>,
    /// With --await: how long to wait for the receipt (at most 60s).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub nats_url: Vec<String>,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    #[command(flatten)]
    pub nats_tls: NatsTlsArgs,
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// File holding the API key (trailing line breaks dropped).
    #[arg(long, env = "HERALD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
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
    /// `--compression`: frames of at least this many bytes go compressed to sessions that
    /// negotiated permessage-deflate; `None` = the extension is declined.
    pub deflate_from: Option<usize>,
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

/// When the disk store answers an append (see `store::disk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskSync {
    Full,
    Data,
    Os,
}

/// Where kept messages live (PROTOCOL §5), when anywhere.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// NATS mode with `--durable`.
    JetStream(DurableConfig),
    /// Standalone with `--durable`: `create` when the directory is the default one.
    Disk {
        dir: PathBuf,
        create: bool,
        sync: DiskSync,
        retention: Duration,
        max_replay: u64,
    },
    /// Standalone without `--durable`.
    Memory {
        bytes: usize,
        retention: Duration,
        max_replay: u64,
    },
}

/// The data directory when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "herald-data";

/// Validated configuration of `herald serve`. Its `Debug` leaves the API key out (the JWT
/// key's `Debug` never shows key material).
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub nats_urls: Vec<String>,
    /// NATS credentials file (JWT + NKey seed), checked readable.
    pub nats_creds: Option<PathBuf>,
    /// TLS files for NATS, checked loadable.
    pub nats_tls: crate::bus::tls::NatsTls,
    pub subject_prefix: String,
    pub auth: crate::auth::AuthConfig,
    pub api_key: Option<String>,
    pub pod_name: String,
    pub session: SessionLimits,
    pub registry: RegistryLimits,
    pub drain_timeout: Duration,
    /// Where kept messages live, when anywhere.
    pub store: Option<StoreConfig>,
    pub allowed_origins: crate::origin::AllowedOrigins,
    pub listen_backlog: u32,
    /// Handshakes admitted per second (0 = unlimited).
    pub connect_rate: u32,
    /// How long a revocation without `expires` is kept.
    pub revocation_ttl: Duration,
    /// Longest `await.timeout_ms` a publish may ask for.
    pub max_await: Duration,
    /// Rebalancing after scale-out (NATS mode), when enabled.
    pub rebalance: Option<crate::control::rebalance::Rebalance>,
    pub log_format: LogFormat,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // NATS URLs may carry a user and password or a token: shown without them.
        let nats_urls: Vec<String> = self
            .nats_urls
            .iter()
            .map(|u| crate::auth::jwks::redact_url(u))
            .collect();
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("nats_urls", &nats_urls)
            .field("nats_creds", &self.nats_creds)
            .field("nats_tls", &self.nats_tls)
            .field("subject_prefix", &self.subject_prefix)
            .field("auth", &self.auth)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("pod_name", &self.pod_name)
            .field("session", &self.session)
            .field("registry", &self.registry)
            .field("drain_timeout", &self.drain_timeout)
            .field("store", &self.store)
            .field("allowed_origins", &self.allowed_origins)
            .field("listen_backlog", &self.listen_backlog)
            .field("connect_rate", &self.connect_rate)
            .field("revocation_ttl", &self.revocation_ttl)
            .field("max_await", &self.max_await)
            .field("rebalance", &self.rebalance)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
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
        if let Some(p) = nats_creds_problem(&nats_urls, args.nats_creds.as_deref()) {
            problems.push(p);
        }
        let nats_tls = args.nats_tls.files();
        if let Some(p) = nats_tls_problem(&nats_urls, &nats_tls) {
            problems.push(p);
        }
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
        let key_problems = problems.len();
        let jwt_secret = secret_from(
            args.jwt_secret.clone(),
            args.jwt_secret_file.as_deref(),
            "--jwt-secret",
            "--jwt-secret-file",
        )
        .unwrap_or_else(|p| {
            problems.push(p);
            None
        });
        let settings = crate::auth::JwtSettings {
            secret: jwt_secret.as_ref().map(Secret::expose),
            public_key: args.jwt_public_key.as_deref(),
            jwks_url: args.jwt_jwks_url.as_deref(),
            audience: args.jwt_audience.as_deref(),
            issuer: args.jwt_issuer.as_deref(),
        };
        let auth = crate::auth::AuthConfig::load(&settings).unwrap_or_else(|e| {
            problems.push(e.to_string());
            crate::auth::AuthConfig::Unsigned
        });
        if matches!(auth, crate::auth::AuthConfig::Unsigned)
            && problems.len() == key_problems
            && !args.listen.ip().is_loopback()
        {
            problems.push(format!(
                "no JWT key configured (--jwt-secret, --jwt-secret-file, --jwt-public-key or \
                 --jwt-jwks-url) while listening on {}: unsigned connections are only allowed \
                 on a loopback address",
                args.listen
            ));
        }
        let api_key = secret_from(
            args.api_key.clone(),
            args.api_key_file.as_deref(),
            "--api-key",
            "--api-key-file",
        )
        .unwrap_or_else(|p| {
            problems.push(p);
            None
        });
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
        if args.max_await < Duration::from_millis(1) || args.max_await > crate::receipts::MAX_AWAIT
        {
            problems.push("--max-await must be from 1ms to 60s".into());
        }
        if args.retention.is_zero() {
            problems.push("--retention must be above zero".into());
        }
        if args.max_replay == 0 {
            problems.push("--max-replay must be at least 1".into());
        }
        let store = match (args.durable, nats_urls.is_empty()) {
            (true, false) => {
                if !(1..=5).contains(&args.durable_replicas) {
                    problems.push("--durable-replicas must be between 1 and 5".into());
                }
                Some(StoreConfig::JetStream(DurableConfig {
                    retention: args.retention,
                    max_replay: args.max_replay,
                    replicas: args.durable_replicas,
                }))
            }
            (true, true) => Some(StoreConfig::Disk {
                create: args.data_dir.is_none(),
                sync: args.disk_sync,
                dir: args
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
                retention: args.retention,
                max_replay: args.max_replay,
            }),
            (false, true) if args.history_memory > 0 => Some(StoreConfig::Memory {
                bytes: usize::try_from(args.history_memory).unwrap_or(usize::MAX),
                retention: args.retention,
                max_replay: args.max_replay,
            }),
            (false, _) => None,
        };
        let allowed_origins = match crate::origin::AllowedOrigins::parse(&args.allowed_origins) {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("--allowed-origins: {e}"));
                crate::origin::AllowedOrigins::default()
            }
        };
        if !(args.rebalance_above > 1.0 && args.rebalance_above.is_finite()) {
            problems
                .push("--rebalance-above must be above 1 (1.2: shed above 1.2 x the mean)".into());
        }
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
            nats_creds: args.nats_creds,
            nats_tls,
            subject_prefix: args.subject_prefix,
            auth,
            api_key: api_key
                .map(|k| k.expose().to_string())
                .filter(|k| !k.is_empty()),
            pod_name,
            session: SessionLimits {
                heartbeat: args.heartbeat,
                idle_timeout: args.idle_timeout,
                max_frame_bytes: args.max_frame_bytes,
                outbound_queue_bytes: args.outbound_queue_bytes,
                upstream_rate: args.upstream_rate,
                close_grace: args.close_grace,
                deflate_from: args.compression.then_some(args.compression_min_bytes),
            },
            registry: RegistryLimits {
                max_connections: args.max_connections,
                max_sessions_per_user: args.max_sessions_per_user,
                idle_timeout: args.idle_timeout,
                outbound_queue_bytes: args.outbound_queue_bytes,
            },
            allowed_origins,
            listen_backlog: args.listen_backlog,
            connect_rate: args.connect_rate,
            revocation_ttl: args.revocation_ttl,
            max_await: args.max_await,
            rebalance: args
                .rebalance
                .then_some(crate::control::rebalance::Rebalance {
                    above: args.rebalance_above,
                    rate: args.rebalance_rate,
                }),
            drain_timeout: args.drain_timeout,
            store,
            log_format: args.log_format,
        })
    }

    pub fn standalone(&self) -> bool {
        self.nats_urls.is_empty()
    }
}

/// What is wrong with `--nats-creds`, if anything: it needs `--nats-url`, a readable file,
/// and no other credentials in the URLs.
pub fn nats_creds_problem(nats_urls: &[String], creds: Option<&std::path::Path>) -> Option<String> {
    let path = creds?;
    if nats_urls.is_empty() {
        return Some("--nats-creds needs --nats-url".into());
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return Some(format!("--nats-creds {}: {e}", path.display())),
    };
    if let Ok((_, Some(_))) = crate::bus::nats::parse_urls(nats_urls) {
        return Some(
            "--nats-creds and credentials in --nats-url: give NATS credentials one way only".into(),
        );
    }
    crate::bus::creds::UserCredentials::parse(&text)
        .err()
        .map(|e| format!("--nats-creds {}: {e}", path.display()))
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
    fn nats_creds_is_passed_on_and_checked() {
        let dir = std::env::temp_dir().join(format!("herald-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("herald.creds");
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        std::fs::write(
            &file,
            format!(
                "-----BEGIN NATS USER JWT-----\na.b.c\n------END NATS USER JWT------\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let cli = parse(&["--nats-url", "nats://a:1", "--nats-creds", path]);
        let cfg = Config::from_args(cli.serve).unwrap();
        assert_eq!(cfg.nats_creds.as_deref(), Some(file.as_path()));
        // Without NATS, unreadable, or together with credentials in the URL: refused.
        let problems = Config::from_args(parse(&["--nats-creds", path]).serve).unwrap_err();
        assert!(problems[0].contains("needs --nats-url"), "{problems:?}");
        let missing = dir.join("missing.creds");
        let cli = parse(&[
            "--nats-url",
            "nats://a:1",
            "--nats-creds",
            missing.to_str().unwrap(),
        ]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert!(problems[0].contains("missing.creds"), "{problems:?}");
        let bad = dir.join("bad.creds");
        std::fs::write(&bad, "-----BEGIN NATS USER JWT-----\n").unwrap();
        let cli = parse(&[
            "--nats-url",
            "nats://a:1",
            "--nats-creds",
            bad.to_str().unwrap(),
        ]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert!(problems[0].contains("bad.creds"), "{problems:?}");
        // TLS files: checked at start, and only with NATS.
        let problems = Config::from_args(parse(&["--nats-tls-ca", path]).serve).unwrap_err();
        assert!(problems[0].contains("need --nats-url"), "{problems:?}");
        let cli = parse(&["--nats-url", "nats://a:1", "--nats-tls-ca", path]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert!(problems[0].contains("--nats-tls-ca"), "{problems:?}");
        let cli = parse(&["--nats-url", "nats://u:hidden@a:1", "--nats-creds", path]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert!(
            problems[0].contains("one way only") && !problems[0].contains("hidden"),
            "{problems:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_debug_output_shows_a_secret() {
        let cli = parse(&[
            "--jwt-secret",
            "jwt-very-secret",
            "--api-key",
            "api-very-secret",
            "--nats-url",
            "nats://user:nats-very-secret@a:1",
        ]);
        let shown = format!("{cli:?} {:?}", cli.serve);
        assert!(!shown.contains("jwt-very-secret") && !shown.contains("api-very-secret"));
        let cfg = Config::from_args(cli.serve).unwrap();
        let shown = format!("{cfg:?} {:#?}", cfg);
        for secret in ["jwt-very-secret", "api-very-secret", "nats-very-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("[redacted]") && shown.contains("nats://a:1"),
            "{shown}"
        );
        let Some(Command::Token(token)) =
            parse(&["token", "--user", "u", "--jwt-secret", "tok-very-secret"]).command
        else {
            panic!("token expected")
        };
        assert!(!format!("{token:?}").contains("tok-very-secret"));
        let Some(Command::Publish(publish)) = parse(&[
            "publish",
            "--user",
            "u",
            "--api-key",
            "pub-very-secret",
            "x",
        ])
        .command
        else {
            panic!("publish expected")
        };
        assert!(!format!("{publish:?}").contains("pub-very-secret"));
    }

    #[test]
    fn secrets_are_read_from_files_once_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("herald-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        };
        let jwt = write("jwt", "file-jwt-secret\n");
        let api = write("api", "file-api-key\r\n\n");
        let empty = write("empty", "\n");
        let cli = parse(&["--jwt-secret-file", &jwt, "--api-key-file", &api]);
        let cfg = Config::from_args(cli.serve).unwrap();
        assert_eq!(cfg.api_key.as_deref(), Some("file-api-key"));
        assert!(matches!(cfg.auth, crate::auth::AuthConfig::Jwt(_)));
        assert!(!format!("{cfg:?}").contains("file-"));

        let cli = parse(&[
            "--jwt-secret",
            "flag-secret",
            "--jwt-secret-file",
            &jwt,
            "--api-key-file",
            &empty,
            "--listen",
            "0.0.0.0:8080",
        ]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("--jwt-secret and --jwt-secret-file are both set"));
        assert!(problems[1].contains("--api-key-file") && problems[1].contains("empty"));
        assert!(
            !problems.concat().contains("secret\n") && !problems.concat().contains("flag-secret")
        );
        let missing = dir.join("missing");
        let cli = parse(&["--api-key-file", missing.to_str().unwrap()]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert!(problems[0].starts_with("--api-key-file"), "{problems:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jwks_url_audience_and_issuer_configure_the_verifier() {
        let cli = parse(&[
            "--jwt-jwks-url",
            "https://idp.example/.well-known/jwks.json",
            "--jwt-audience",
            "herald",
            "--jwt-issuer",
            "https://idp.example",
        ]);
        let cfg = Config::from_args(cli.serve).unwrap();
        let shown = format!("{:?}", cfg.auth);
        assert!(
            shown.contains("JWKS https://idp.example/.well-known/jwks.json"),
            "{shown}"
        );
        assert!(shown.contains("herald") && shown.contains("https://idp.example"));
        let cli = parse(&[
            "--jwt-jwks-url",
            "https://idp.example/jwks",
            "--jwt-secret",
            "x",
        ]);
        let problems = Config::from_args(cli.serve).unwrap_err();
        assert!(
            problems[0].contains("configure one key source"),
            "{problems:?}"
        );
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
