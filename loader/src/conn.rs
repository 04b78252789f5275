//! Opening connections and reading them: one task per connection records when its session
//! is ready and message latencies (from the timestamp inside each payload) into shared
//! counters.
//!
//! Three kinds of client, chosen with `--proto` and `--transport`:
//! - herald over WebSocket (`/websocket/<user>`): ready at the `welcome` frame; each
//!   `message` frame wraps the published payload in its `data`.
//! - herald over SSE (`GET /sse/<user>`): ready at the `welcome` event; `message` events
//!   carry the same frame in their `data:` line.
//! - NATS inside WebSocket frames to a nats-server `websocket` listener (`--proto nats-ws`,
//!   the comparison peer): CONNECT, SUB `<prefix>.user.<id>` and `<prefix>.broadcast` (the
//!   subjects herald subscribes to), PING; ready at the PONG; each `MSG` payload is the
//!   published payload itself.
//!
//! Either way the payload holds `"t":<ns since the epoch>` and `"seq":<n>`, read from
//! whatever text carries it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::{nats_proto, sse, Common, Proto, Transport};

const SHARDS: usize = 64;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds")
}

/// Counters every reader task writes to.
pub struct Shared {
    /// Sessions that became ready (herald's welcome, NATS's PONG after the subscriptions).
    pub welcomed: AtomicUsize,
    pub closed: AtomicUsize,
    pub deliveries: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub first_delivery_ns: AtomicU64,
    /// Connections that failed after the handshake (protocol error, `-ERR`, bad frame).
    pub errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Latency in nanoseconds, sharded to keep lock contention low.
    latency: Vec<Mutex<Histogram<u64>>>,
    /// The same for payloads marked `"b":1` (the soak's broadcasts, kept apart from its
    /// addressed messages).
    latency_marked: Vec<Mutex<Histogram<u64>>>,
    /// Per message sequence: how many sessions got it, and the slowest arrival.
    pub per_seq_count: Vec<AtomicU64>,
    pub per_seq_max_ns: Vec<AtomicU64>,
    pub progress: Notify,
}

impl Shared {
    pub fn new(seqs: usize) -> Arc<Shared> {
        Arc::new(Shared {
            welcomed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            deliveries: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            first_delivery_ns: AtomicU64::new(u64::MAX),
            errors: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            latency: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            latency_marked: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            per_seq_count: (0..seqs).map(|_| AtomicU64::new(0)).collect(),
            per_seq_max_ns: (0..seqs).map(|_| AtomicU64::new(0)).collect(),
            progress: Notify::new(),
        })
    }

    fn on_ready(&self) {
        self.welcomed.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    fn on_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(e);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    /// A delivery: `text` holds the published payload (alone or inside a herald frame).
    /// False when it carries no timestamp and sequence (not one of the loader's messages).
    fn on_delivery(&self, conn: usize, text: &str) -> bool {
        let (Some(t), Some(seq)) = (number_after(text, "\"t\":"), number_after(text, "\"seq\":"))
        else {
            return false;
        };
        let now = now_ns();
        let lat = now.saturating_sub(t).max(1_000);
        let shards = if text.contains("\"b\":1") {
            &self.latency_marked
        } else {
            &self.latency
        };
        if let Ok(mut h) = shards[conn % SHARDS].lock() {
            let _ = h.record(lat.min(120_000_000_000));
        }
        if let Some(c) = self.per_seq_count.get(seq as usize) {
            c.fetch_add(1, Ordering::Relaxed);
            self.per_seq_max_ns[seq as usize].fetch_max(lat, Ordering::Relaxed);
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        self.first_delivery_ns.fetch_min(now, Ordering::Relaxed);
        true
    }

    /// All latency shards merged (marked payloads too).
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in self.latency.iter().chain(&self.latency_marked) {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }

    /// The latency of unmarked and of marked (`"b":1`) payloads since the last call, each
    /// merged, and every shard emptied (for figures per interval).
    pub fn take_latency(&self) -> (Histogram<u64>, Histogram<u64>) {
        let take = |shards: &[Mutex<Histogram<u64>>]| {
            let mut all = new_histogram();
            for shard in shards {
                if let Ok(mut h) = shard.lock() {
                    let _ = all.add(&*h);
                    h.reset();
                }
            }
            all
        };
        (take(&self.latency), take(&self.latency_marked))
    }
}

/// One connection's own state, for scenarios that close and reopen connections (`soak`):
/// whether its session is ready, what it received, and a way to close it.
#[derive(Default)]
pub struct Slot {
    pub ready: AtomicBool,
    pub received: AtomicU64,
    close: Notify,
}

impl Slot {
    /// Ask the reader to close the connection (a close frame, then the socket).
    pub fn close(&self) {
        self.close.notify_one();
    }
}

/// What a reader task reports to.
struct Tap {
    shared: Arc<Shared>,
    conn: usize,
    slot: Option<Arc<Slot>>,
    read_delay: Duration,
    /// Acknowledge every message (herald over WebSocket): a `received` receipt.
    ack: bool,
}

impl Tap {
    fn ready(&self) {
        if let Some(s) = &self.slot {
            s.ready.store(true, Ordering::Release);
        }
        self.shared.on_ready();
    }

    async fn delivery(&self, text: &str) {
        if self.shared.on_delivery(self.conn, text) {
            if let Some(s) = &self.slot {
                s.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A slow reader: the socket is not read meanwhile, so the server's queue grows.
        if !self.read_delay.is_zero() {
            tokio::time::sleep(self.read_delay).await;
        }
    }

    /// Resolves when the scenario asks this connection to close.
    async fn closing(&self) {
        match &self.slot {
            Some(s) => s.close.notified().await,
            None => std::future::pending().await,
        }
    }

    fn closed(&self) {
        if let Some(s) = &self.slot {
            s.ready.store(false, Ordering::Release);
        }
        self.shared.closed.fetch_add(1, Ordering::Relaxed);
        self.shared.progress.notify_waiters();
    }
}

/// The JSON string value that follows `key` (which ends with its opening quote).
fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// An HS256 token for `user`, valid for an hour (the claims `herald token` writes).
pub fn sign_token(user: &str, secret: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = serde_json::json!({ "sub": user, "exp": exp });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Where and as whom connection `i` connects.
pub fn target(c: &Common, i: usize) -> (SocketAddr, Ipv4Addr, String) {
    let hub = c.hubs[i % c.hubs.len()];
    let ip = c.first_source_ip as usize + i % c.source_ips.max(1) as usize;
    let src = Ipv4Addr::new(127, 0, 0, ip.min(254) as u8);
    (
        hub,
        src,
        format!("{}{}", c.user_prefix, i / c.sessions_per_user.max(1)),
    )
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A TCP connection from connection `i`'s source address to its hub.
async fn tcp(c: &Common, i: usize) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let (hub, src, _) = target(c, i);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src.into(), 0))?;
    let stream = socket.connect(hub).await?;
    stream.set_nodelay(true)?;
    Ok((stream, hub))
}

/// The query string of a herald session: `token=` (when signing) and `since=`.
fn herald_query(c: &Common, user: &str, since: Option<&str>) -> anyhow::Result<String> {
    let mut q = String::new();
    if let Some(secret) = &c.jwt_secret {
        q.push_str("?token=");
        q.push_str(&sign_token(user, secret)?);
    }
    if let Some(since) = since {
        // Cursors are `<hex>-<digits>`: nothing to escape.
        q.push(if q.is_empty() { '?' } else { '&' });
        q.push_str("since=");
        q.push_str(since);
    }
    Ok(q)
}

async fn websocket(stream: TcpStream, url: &str) -> anyhow::Result<Ws> {
    // Small buffers: the loader holds thousands of mostly idle connections (the library's
    // defaults reserve 128 KiB each).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// Connect as connection `i` (its source address and hub) to herald's WebSocket endpoint
/// for `user`, with `since` as the resume cursor when given. Returns once the handshake is
/// done.
pub async fn connect(c: &Common, i: usize, user: &str, since: Option<&str>) -> anyhow::Result<Ws> {
    let (stream, hub) = tcp(c, i).await?;
    let url = format!(
        "ws://{hub}/websocket/{user}{}",
        herald_query(c, user, since)?
    );
    websocket(stream, &url).await
}

/// Open connection `i` for `user` with the configured protocol and transport and spawn its
/// reader; returns once the connection's handshake (WebSocket upgrade, SSE response
/// headers) is done: the reader counts the session ready later. Dropping the handle does
/// not close the connection; aborting the task or [`Slot::close`] does.
pub async fn open(
    c: &Common,
    i: usize,
    user: &str,
    shared: Arc<Shared>,
    slot: Option<Arc<Slot>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tap = Tap {
        shared,
        conn: i,
        slot,
        read_delay: Duration::from_millis(c.read_delay_ms),
        ack: c.ack,
    };
    Ok(match (c.proto, c.transport) {
        (Proto::Herald, Transport::Ws) => {
            let ws = connect(c, i, user, None).await?;
            tokio::spawn(read_herald_ws(ws, tap))
        }
        (Proto::Herald, Transport::Sse) => {
            let (stream, hub) = tcp(c, i).await?;
            let path = format!("/sse/{user}{}", herald_query(c, user, None)?);
            let stream = sse::open(stream, &hub.to_string(), &path).await?;
            tokio::spawn(read_herald_sse(stream, tap))
        }
        (Proto::NatsWs, _) => {
            let (stream, hub) = tcp(c, i).await?;
            let ws = websocket(stream, &format!("ws://{hub}/")).await?;
            let hello = nats_proto::handshake(&c.subject_prefix, user);
            tokio::spawn(read_nats_ws(ws, hello, tap))
        }
    })
}

async fn read_herald_ws(mut ws: Ws, tap: Tap) {
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = tap.closing() => {
                let _ = ws.close(None).await;
                break;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if t.starts_with(r#"{"type":"welcome""#) {
                    tap.ready();
                } else {
                    tap.delivery(t.as_str()).await;
                    if tap.ack {
                        if let Some(id) = string_after(t.as_str(), "\"id\":\"") {
                            let ack =
                                format!(r#"{{"type":"ack","id":"{id}","status":"received"}}"#);
                            if ws.send(Message::text(ack)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                tap.shared.on_error(format!("herald WebSocket: {e}"));
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    tap.closed();
}

async fn read_herald_sse(mut stream: sse::Stream, tap: Tap) {
    loop {
        let event = tokio::select! {
            e = stream.next_event() => e,
            () = tap.closing() => break,
        };
        match event {
            Ok(Some(e)) => match e.event.as_str() {
                "welcome" => tap.ready(),
                "message" => tap.delivery(&e.data).await,
                // herald's close (code and reason); the stream ends after it.
                "close" => break,
                _ => {}
            },
            Ok(None) => break,
            Err(e) => {
                tap.shared.on_error(format!("herald SSE: {e:#}"));
                break;
            }
        }
    }
    tap.closed();
}

/// NATS inside WebSocket binary frames: after the server's INFO, `hello` (CONNECT, SUBs,
/// PING); ready at the first PONG; server PINGs answered; each MSG is a delivery.
async fn read_nats_ws(mut ws: Ws, hello: Vec<u8>, tap: Tap) {
    let mut parser = nats_proto::Parser::default();
    let mut hello = Some(hello);
    let mut ready = false;
    let result: anyhow::Result<()> = async {
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                () = tap.closing() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            };
            match msg {
                Some(Ok(Message::Binary(b))) => parser.feed(&b),
                Some(Ok(Message::Text(t))) => parser.feed(t.as_bytes()),
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Err(e)) => anyhow::bail!("nats-server WebSocket: {e}"),
                Some(Ok(_)) => continue,
            }
            while let Some(op) = parser.next()? {
                match op {
                    nats_proto::Op::Info => {
                        if let Some(h) = hello.take() {
                            ws.send(Message::binary(h)).await?;
                        }
                    }
                    nats_proto::Op::Ping => ws.send(Message::binary(&b"PONG\r\n"[..])).await?,
                    nats_proto::Op::Pong => {
                        if !ready {
                            ready = true;
                            tap.ready();
                        }
                    }
                    nats_proto::Op::Ok => {}
                    nats_proto::Op::Err(e) => anyhow::bail!("nats-server said -ERR {e}"),
                    nats_proto::Op::Msg { payload, .. } => {
                        tap.delivery(&String::from_utf8_lossy(payload)).await
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        tap.shared.on_error(format!("{e:#}"));
    }
    tap.closed();
}

/// The soft limit on open files of this process (from /proc), if known.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process has used, in seconds, from /proc.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks; USER_HZ is 100 on every platform herald targets.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn timestamps_are_read_from_the_frame() {
        let f =
            r#"{"type":"message","id":"x","cursor":"x","source":"user","data":{"t":1234,"seq":7}}"#;
        assert_eq!(number_after(f, "\"t\":"), Some(1234));
        assert_eq!(number_after(f, "\"seq\":"), Some(7));
        assert_eq!(number_after(f, "\"nope\":"), None);
    }

    #[test]
    fn timestamps_are_read_from_a_bare_payload() {
        // What a NATS subscriber gets: the published payload itself.
        let p = r#"{"t":1700000000000000000,"seq":42}"#;
        assert_eq!(number_after(p, "\"t\":"), Some(1_700_000_000_000_000_000));
        assert_eq!(number_after(p, "\"seq\":"), Some(42));
    }
}
