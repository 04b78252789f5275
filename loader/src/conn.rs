//! Opening connections and reading them: one task per connection records welcomes and
//! message latencies (from the timestamp inside each payload) into shared counters.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::Common;

const SHARDS: usize = 64;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Counters every reader task writes to.
pub struct Shared {
    pub welcomed: AtomicUsize,
    pub closed: AtomicUsize,
    pub deliveries: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub first_delivery_ns: AtomicU64,
    /// Latency in nanoseconds, sharded to keep lock contention low.
    latency: Vec<Mutex<Histogram<u64>>>,
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
            latency: (0..SHARDS)
                .map(|_| {
                    Mutex::new(
                        Histogram::new_with_bounds(1_000, 120_000_000_000, 3)
                            .expect("valid bounds"),
                    )
                })
                .collect(),
            per_seq_count: (0..seqs).map(|_| AtomicU64::new(0)).collect(),
            per_seq_max_ns: (0..seqs).map(|_| AtomicU64::new(0)).collect(),
            progress: Notify::new(),
        })
    }

    fn on_text(&self, conn: usize, text: &str) {
        if text.starts_with(r#"{"type":"welcome""#) {
            self.welcomed.fetch_add(1, Ordering::Relaxed);
            self.progress.notify_waiters();
            return;
        }
        let (Some(t), Some(seq)) = (number_after(text, "\"t\":"), number_after(text, "\"seq\":"))
        else {
            return;
        };
        let now = now_ns();
        let lat = now.saturating_sub(t).max(1_000);
        if let Ok(mut h) = self.latency[conn % SHARDS].lock() {
            let _ = h.record(lat.min(120_000_000_000));
        }
        if let Some(c) = self.per_seq_count.get(seq as usize) {
            c.fetch_add(1, Ordering::Relaxed);
            self.per_seq_max_ns[seq as usize].fetch_max(lat, Ordering::Relaxed);
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        self.first_delivery_ns.fetch_min(now, Ordering::Relaxed);
    }

    /// All latency shards merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds");
        for shard in &self.latency {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }
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

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connect as connection `i` (its source address and hub) for `user`, with `since` as the
/// resume cursor when given. Returns once the handshake is done.
pub async fn connect(c: &Common, i: usize, user: &str, since: Option<&str>) -> anyhow::Result<Ws> {
    let (hub, src, _) = target(c, i);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src.into(), 0))?;
    let stream = socket.connect(hub).await?;
    stream.set_nodelay(true)?;
    let mut url = format!("ws://{hub}/websocket/{user}");
    let mut sep = '?';
    if let Some(secret) = &c.jwt_secret {
        let token = sign_token(user, secret)?;
        url.push(sep);
        url.push_str("token=");
        url.push_str(&token);
        sep = '&';
    }
    if let Some(since) = since {
        // Cursors are `<hex>-<digits>`: nothing to escape.
        url.push(sep);
        url.push_str("since=");
        url.push_str(since);
    }
    // Small buffers: the loader holds thousands of mostly idle connections (the library's
    // defaults reserve 128 KiB each).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)).await?;
    Ok(ws)
}

/// Open connection `i` and spawn its reader. Returns a handle that closes it when dropped.
pub async fn open(
    c: &Common,
    i: usize,
    user: &str,
    shared: Arc<Shared>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut ws = connect(c, i, user, None).await?;
    let read_delay = Duration::from_millis(c.read_delay_ms);
    Ok(tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    shared.on_text(i, t.as_str());
                    // A slow reader: the socket is not read meanwhile, so herald's queue grows.
                    if !read_delay.is_zero() {
                        tokio::time::sleep(read_delay).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        shared.closed.fetch_add(1, Ordering::Relaxed);
        shared.progress.notify_waiters();
    }))
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
}
