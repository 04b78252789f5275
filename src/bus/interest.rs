//! A NATS connection of herald's own for per-user interest: one TCP connection that holds
//! every `SUB` of the Subscriber's interest subjects (users, topics, broadcast) and hands
//! every message to one channel.
//!
//! Why: async-nats gives each subscription its own channel, and the channel's first block
//! (32 slots of a 184-byte `Message`) is allocated with it — about 5.9 KiB per user held
//! on the pod, most of what an idle connection costs (docs/decisions.md). Here a
//! subscription is a map entry.
//!
//! Scope: plain TCP, with the user/password or token from the URLs. A server that requires
//! TLS, or a credentials file (NKey signatures), is not handled here; the bus then keeps
//! using async-nats subscriptions. The connection fails over across the URLs in order and
//! re-sends every `SUB` after a reconnect, like async-nats; messages published while it is
//! down are lost (durable mode re-reads the stream: the connection generation moves).
//! A `SUB` is confirmed by the `PONG` to the `PING` written after it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::nats::UrlCredentials;
use super::{BusError, BusMessage};

/// Messages waiting for the Subscriber before the connection stops reading (and NATS
/// holds the rest, up to its slow-consumer limit).
const SINK_CAPACITY: usize = 8192;
/// Keepalive: a PING this often; no PONG by the next one means the connection is dead.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Largest control line accepted from the server.
const MAX_LINE: usize = 64 * 1024;

enum Command {
    Sub(String, oneshot::Sender<()>),
    Unsub(String),
}

/// The handle the bus keeps.
pub struct Interest {
    commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    /// The server requires TLS: this connection gave up (see the module docs).
    tls_refused: Arc<AtomicBool>,
}

/// Where to connect.
pub struct Target {
    pub servers: Vec<(String, u16)>,
    pub name: String,
    pub credentials: Option<UrlCredentials>,
}

impl Interest {
    /// Connect (retrying forever in the background) and return the handle and the stream
    /// of every interest message. `generation` moves at every connection made.
    pub fn start(
        target: Target,
        generation: Arc<AtomicU64>,
    ) -> (Interest, mpsc::Receiver<BusMessage>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let (sink, messages) = mpsc::channel(SINK_CAPACITY);
        let connected = Arc::new(AtomicBool::new(false));
        let tls_refused = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(
            target,
            rx,
            sink,
            connected.clone(),
            generation,
            tls_refused.clone(),
        ));
        (
            Interest {
                commands,
                connected,
                tls_refused,
            },
            messages,
        )
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn tls_refused(&self) -> bool {
        self.tls_refused.load(Ordering::Acquire)
    }

    /// Subscribe; resolves once the server has the subscription (or after `wait`, when it
    /// is unreachable: the SUB is sent when it is back).
    pub async fn add(&self, subject: String, wait: Duration) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Sub(subject, tx))
            .map_err(|_| BusError::Other("interest connection stopped".into()))?;
        let _ = tokio::time::timeout(wait, rx).await;
        Ok(())
    }

    pub fn remove(&self, subject: &str) {
        let _ = self.commands.send(Command::Unsub(subject.to_string()));
    }
}

/// The subscriptions, kept across reconnects.
#[derive(Default)]
struct Subs {
    sids: HashMap<String, u64>,
    next_sid: u64,
}

async fn run(
    target: Target,
    mut commands: mpsc::UnboundedReceiver<Command>,
    sink: mpsc::Sender<BusMessage>,
    connected: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    tls_refused: Arc<AtomicBool>,
) {
    let mut subs = Subs::default();
    // Confirmations waiting for a PONG; the ones of a lost connection carry over.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut attempt: u64 = 0;
    loop {
        let (host, port) = &target.servers[(attempt as usize) % target.servers.len()];
        match TcpStream::connect((host.as_str(), *port)).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                match session(
                    stream,
                    &target,
                    &mut subs,
                    &mut commands,
                    &sink,
                    &connected,
                    &generation,
                    &mut waiting,
                )
                .await
                {
                    Ended::Stopped => return,
                    Ended::Tls => {
                        tls_refused.store(true, Ordering::Release);
                        tracing::info!(
                            "NATS requires TLS: interest subscriptions stay on the NATS client"
                        );
                        return;
                    }
                    Ended::Lost(why) => {
                        connected.store(false, Ordering::Release);
                        tracing::warn!(why = %why, "NATS interest connection lost; reconnecting");
                        attempt = 0;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "NATS interest connection: server unreachable");
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis((100 * attempt).min(2_000))).await;
    }
}

enum Ended {
    /// The bus was dropped.
    Stopped,
    Tls,
    Lost(String),
}

#[allow(clippy::too_many_arguments)]
async fn session(
    stream: TcpStream,
    target: &Target,
    subs: &mut Subs,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    sink: &mpsc::Sender<BusMessage>,
    connected: &AtomicBool,
    generation: &AtomicU64,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Ended {
    let (mut read, mut write) = stream.into_split();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // INFO first.
    let info = loop {
        if let Some(line) = take_line(&mut buf) {
            break line;
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ended::Lost("closed before INFO".into()),
            Ok(_) if buf.len() > MAX_LINE => return Ended::Lost("INFO too long".into()),
            Ok(_) => {}
        }
    };
    let info: serde_json::Value = match info.strip_prefix("INFO ") {
        Some(json) => serde_json::from_str(json).unwrap_or_default(),
        None => return Ended::Lost("no INFO".into()),
    };
    if info["tls_required"].as_bool() == Some(true) {
        return Ended::Tls;
    }
    let mut connect = serde_json::json!({
        "verbose": false, "pedantic": false, "lang": "rust", "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1, "headers": true, "no_responders": false, "name": target.name,
    });
    match &target.credentials {
        Some(UrlCredentials::UserPassword { user, password }) => {
            connect["user"] = user.as_str().into();
            connect["pass"] = password.as_str().into();
        }
        Some(UrlCredentials::Token(token)) => connect["auth_token"] = token.as_str().into(),
        None => {}
    }
    let mut out = format!("CONNECT {connect}\r\n");
    for (subject, sid) in &subs.sids {
        out.push_str(&format!("SUB {subject} {sid}\r\n"));
    }
    out.push_str("PING\r\n");
    if write.write_all(out.as_bytes()).await.is_err() {
        return Ended::Lost("write failed".into());
    }
    // The first PONG confirms CONNECT and every SUB re-sent, and what waited for them.
    let mut pongs: VecDeque<Vec<oneshot::Sender<()>>> = VecDeque::new();
    pongs.push_back(std::mem::take(waiting));
    let mut first_pong = true;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut unanswered = 0u32;
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return Ended::Stopped };
                let mut out = String::new();
                let mut confirms = Vec::new();
                let mut next = Some(cmd);
                // Take every command waiting, so a storm of new users is one write.
                while let Some(cmd) = next {
                    match cmd {
                        Command::Sub(subject, done) => {
                            if !subs.sids.contains_key(&subject) {
                                subs.next_sid += 1;
                                out.push_str(&format!("SUB {subject} {}\r\n", subs.next_sid));
                                subs.sids.insert(subject, subs.next_sid);
                            }
                            confirms.push(done);
                        }
                        Command::Unsub(subject) => {
                            if let Some(sid) = subs.sids.remove(&subject) {
                                out.push_str(&format!("UNSUB {sid}\r\n"));
                            }
                        }
                    }
                    next = commands.try_recv().ok();
                }
                if !confirms.is_empty() {
                    out.push_str("PING\r\n");
                    pongs.push_back(confirms);
                }
                if write.write_all(out.as_bytes()).await.is_err() {
                    requeue(waiting, pongs);
                    return Ended::Lost("write failed".into());
                }
            }
            _ = ping.tick() => {
                unanswered += 1;
                if unanswered > 2 {
                    requeue(waiting, pongs);
                    return Ended::Lost("no PONG".into());
                }
                pongs.push_back(Vec::new());
                if write.write_all(b"PING\r\n").await.is_err() {
                    requeue(waiting, pongs);
                    return Ended::Lost("write failed".into());
                }
            }
            n = read.read_buf(&mut buf) => {
                if !matches!(n, Ok(k) if k > 0) {
                    requeue(waiting, pongs);
                    return Ended::Lost("closed by the server".into());
                }
                loop {
                    match parse(&mut buf) {
                        Ok(None) => break,
                        Ok(Some(Op::Msg(m))) => {
                            if sink.send(m).await.is_err() {
                                return Ended::Stopped;
                            }
                        }
                        Ok(Some(Op::Ping)) => {
                            if write.write_all(b"PONG\r\n").await.is_err() {
                                requeue(waiting, pongs);
                                return Ended::Lost("write failed".into());
                            }
                        }
                        Ok(Some(Op::Pong)) => {
                            unanswered = 0;
                            if first_pong {
                                first_pong = false;
                                connected.store(true, Ordering::Release);
                                generation.fetch_add(1, Ordering::AcqRel);
                                tracing::info!(subscriptions = subs.sids.len(), "NATS interest connection up");
                            }
                            for done in pongs.pop_front().unwrap_or_default() {
                                let _ = done.send(());
                            }
                        }
                        Ok(Some(Op::Err(e))) => {
                            tracing::warn!(error = %e, "NATS interest connection: server error");
                            if e.to_ascii_lowercase().contains("authorization") {
                                requeue(waiting, pongs);
                                return Ended::Lost(e);
                            }
                        }
                        Ok(Some(Op::Other)) => {}
                        Err(e) => {
                            requeue(waiting, pongs);
                            return Ended::Lost(e);
                        }
                    }
                }
            }
        }
    }
}

/// Unconfirmed subscriptions wait for the next connection's first PONG.
fn requeue(waiting: &mut Vec<oneshot::Sender<()>>, pongs: VecDeque<Vec<oneshot::Sender<()>>>) {
    waiting.extend(pongs.into_iter().flatten());
}

fn take_line(buf: &mut BytesMut) -> Option<String> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.advance(end + 2);
    Some(line)
}

#[derive(Debug, PartialEq)]
enum Op {
    Msg(BusMessage),
    Ping,
    Pong,
    Err(String),
    Other,
}

/// One operation from the server, if a whole one is buffered.
fn parse(buf: &mut BytesMut) -> Result<Option<Op>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err("control line too long".into());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "control line is not UTF-8")?;
    let mut parts = line.split_ascii_whitespace();
    let op = parts.next().unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&str> = parts.collect();
    let (subject, reply, header_len, total) = match (op.as_str(), args.as_slice()) {
        ("MSG", [s, _sid, n]) => (*s, None, 0, *n),
        ("MSG", [s, _sid, r, n]) => (*s, Some(*r), 0, *n),
        ("HMSG", [s, _sid, h, n]) => (*s, None, parse_len(h)?, *n),
        ("HMSG", [s, _sid, r, h, n]) => (*s, Some(*r), parse_len(h)?, *n),
        ("PING", _) | ("PONG", _) | ("+OK", _) | ("INFO", _) | ("-ERR", _) => {
            let op = match op.as_str() {
                "PING" => Op::Ping,
                "PONG" => Op::Pong,
                "-ERR" => Op::Err(line[4..].trim().trim_matches('\'').to_string()),
                _ => Op::Other,
            };
            buf.advance(end + 2);
            return Ok(Some(op));
        }
        _ => return Err(format!("unexpected line {line:?}")),
    };
    let total = parse_len(total)?;
    if header_len > total {
        return Err("header longer than the message".into());
    }
    if buf.len() < end + 2 + total + 2 {
        return Ok(None);
    }
    let subject = subject.to_string();
    let reply = reply.map(str::to_string);
    buf.advance(end + 2);
    let mut body = buf.split_to(total).freeze();
    buf.advance(2);
    let headers = if header_len > 0 {
        let block = body.split_to(header_len);
        parse_headers(&block)
    } else {
        Vec::new()
    };
    Ok(Some(Op::Msg(BusMessage {
        subject,
        reply,
        headers,
        payload: body,
    })))
}

fn parse_len(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("bad length {s:?}"))
}

/// `NATS/1.0[ status]\r\nKey: Value\r\n...\r\n\r\n`, in order.
fn parse_headers(block: &Bytes) -> Vec<(String, String)> {
    String::from_utf8_lossy(block)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<Op> {
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf).expect("valid") {
            ops.push(op);
        }
        assert!(buf.is_empty(), "everything consumed: {buf:?}");
        ops
    }

    #[test]
    fn messages_with_and_without_headers_parse() {
        let hdr = "NATS/1.0\r\nNats-Msg-Id: m1\r\nHerald-Event: order\r\n\r\n";
        let input = format!(
            "PING\r\nMSG herald.user.u1 1 5\r\nhe\r\nl\r\nHMSG herald.user.u2 2 _INBOX.x {} {}\r\n{hdr}{{}}\r\n+OK\r\n",
            hdr.len(),
            hdr.len() + 2
        );
        let ops = all(input.as_bytes());
        assert_eq!(ops[0], Op::Ping);
        let Op::Msg(m) = &ops[1] else {
            panic!("{ops:?}")
        };
        assert_eq!(m.subject, "herald.user.u1");
        assert_eq!(&m.payload[..], b"he\r\nl", "payloads may hold CRLF");
        let Op::Msg(m) = &ops[2] else {
            panic!("{ops:?}")
        };
        assert_eq!(m.reply.as_deref(), Some("_INBOX.x"));
        assert_eq!(m.header("Nats-Msg-Id"), Some("m1"));
        assert_eq!(m.header("Herald-Event"), Some("order"));
        assert_eq!(&m.payload[..], b"{}");
        assert_eq!(ops[3], Op::Other);
    }

    #[test]
    fn a_message_split_anywhere_waits_for_the_rest() {
        let input = b"MSG a.b 1 3\r\nxyz\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(parse(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&input[cut..]);
            assert!(
                matches!(parse(&mut buf), Ok(Some(Op::Msg(_)))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut buf = BytesMut::from(&b"HELLO\r\n"[..]);
        assert!(parse(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"MSG a 1 x\r\n"[..]);
        assert!(parse(&mut buf).is_err());
    }
}
