//! A NATS connection of herald's own for per-user interest: one TCP connection that holds
//! every `SUB` of the Subscriber's interest subjects (users, topics, broadcast) and hands
//! every message to one channel.
//!
//! Why: async-nats gives each subscription its own channel, and the channel's first block
//! (32 slots of a 184-byte `Message`) is allocated with it — about 5.9 KiB per user held
//! on the pod, most of what an idle connection costs (docs/decisions.md). Here a
//! subscription is a map entry.
//!
//! It authenticates as the NATS client does: user/password or token from the URLs, or a
//! credentials file (the user JWT, and the server's nonce signed with the NKey seed). It
//! upgrades to TLS after INFO when a URL says `tls://`, the `--nats-tls-*` files are given,
//! or the server requires it, with the same rustls configuration as the NATS client; it
//! never falls back to plain TCP when TLS was asked for. The connection fails over across
//! the URLs in order and re-sends every `SUB` after a reconnect, like async-nats; messages
//! published while it is down are lost (durable mode re-reads the stream: the connection
//! generation moves). A `SUB` is confirmed by the `PONG` to the `PING` written after it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::creds::UserCredentials;
use super::nats::UrlCredentials;
use super::{BusError, BusMessage};

/// Messages waiting for the Subscriber before the connection stops reading (and NATS
/// holds the rest, up to its slow-consumer limit).
const SINK_CAPACITY: usize = 8192;
/// Keepalive: a PING this often; no PONG by the next one means the connection is dead.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a TCP connect, INFO or TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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
    refusal: Arc<std::sync::Mutex<Option<String>>>,
}

/// Where to connect, and how.
pub struct Target {
    pub servers: Vec<(String, u16)>,
    pub name: String,
    pub credentials: Option<UrlCredentials>,
    /// A credentials file's JWT and key, for servers that send a nonce.
    pub user_credentials: Option<Arc<UserCredentials>>,
    /// Every connection must be TLS (a `tls://` URL or the `--nats-tls-*` files).
    pub tls_required: bool,
    /// The rustls configuration shared with the NATS client; when none is given and a
    /// server asks for TLS, one trusting the system's roots.
    pub tls: Option<Arc<ClientConfig>>,
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
        let refusal = Arc::new(std::sync::Mutex::new(None));
        let state = State {
            connected: connected.clone(),
            refusal: refusal.clone(),
            generation,
        };
        tokio::spawn(run(target, rx, sink, state));
        (
            Interest {
                commands,
                connected,
                refusal,
            },
            messages,
        )
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Why the last attempt failed after reaching a server (TLS, credentials, a server
    /// that closed before the connection came up); None once connected, or while the
    /// servers are only unreachable.
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

/// What the connection task shares with the handle.
struct State {
    connected: Arc<AtomicBool>,
    refusal: Arc<std::sync::Mutex<Option<String>>>,
    /// Moves at every connection made.
    generation: Arc<AtomicU64>,
}

impl State {
    fn refused(&self, why: Option<String>) {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// The subscriptions, kept across reconnects.
#[derive(Default)]
struct Subs {
    sids: HashMap<String, u64>,
    next_sid: u64,
}

async fn run(
    mut target: Target,
    mut commands: mpsc::UnboundedReceiver<Command>,
    sink: mpsc::Sender<BusMessage>,
    state: State,
) {
    let mut subs = Subs::default();
    // Confirmations waiting for a PONG; the ones of a lost connection carry over.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut attempt: u64 = 0;
    // Said once per outage, not on every retry.
    let mut last_failure = String::new();
    loop {
        let server = target.servers[(attempt as usize) % target.servers.len()].clone();
        let ended = match open(&server, &mut target).await {
            Ok(Opened::Plain(stream, buf, info)) => {
                session(
                    stream,
                    buf,
                    &info,
                    &target,
                    &mut subs,
                    &mut commands,
                    &sink,
                    &state,
                    &mut waiting,
                )
                .await
            }
            Ok(Opened::Tls(stream, info)) => {
                session(
                    *stream,
                    BytesMut::with_capacity(16 * 1024),
                    &info,
                    &target,
                    &mut subs,
                    &mut commands,
                    &sink,
                    &state,
                    &mut waiting,
                )
                .await
            }
            Err(ended) => ended,
        };
        match ended {
            Ended::Stopped => return,
            Ended::Lost(why) => {
                state.connected.store(false, Ordering::Release);
                tracing::warn!(why = %why, "NATS interest connection lost; reconnecting");
                last_failure.clear();
                attempt = 0;
            }
            Ended::Unreachable(why) => {
                if why != last_failure {
                    tracing::debug!(server = %server.0, port = server.1, why = %why,
                        "NATS interest connection: server unreachable");
                    last_failure = why;
                }
            }
            Ended::Failed(why) => {
                state.refused(Some(why.clone()));
                if why != last_failure {
                    tracing::warn!(server = %server.0, port = server.1, why = %why,
                        "NATS interest connection failed; retrying");
                    last_failure = why;
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis((100 * attempt).min(2_000))).await;
    }
}

/// A connection ready for CONNECT: the server's INFO read, TLS done where asked for.
enum Opened {
    /// Plain TCP, with what was read after INFO.
    Plain(TcpStream, BytesMut, serde_json::Value),
    Tls(
        Box<tokio_rustls::client::TlsStream<TcpStream>>,
        serde_json::Value,
    ),
}

async fn open(server: &(String, u16), target: &mut Target) -> Result<Opened, Ended> {
    let (host, port) = server;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
        .await
        .map_err(|_| Ended::Unreachable("connect timed out".into()))?
        .map_err(|e| Ended::Unreachable(e.to_string()))?;
    negotiate(stream, host, target).await.map_err(Ended::Failed)
}

/// INFO, then TLS when asked for.
async fn negotiate(
    mut stream: TcpStream,
    host: &str,
    target: &mut Target,
) -> Result<Opened, String> {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let info = tokio::time::timeout(CONNECT_TIMEOUT, read_info(&mut stream, &mut buf))
        .await
        .map_err(|_| "no INFO in time".to_string())??;
    let server_requires = info["tls_required"].as_bool() == Some(true);
    if !target.tls_required && !server_requires {
        return Ok(Opened::Plain(stream, buf, info));
    }
    if info["tls_available"].as_bool() != Some(true) && !server_requires {
        return Err("TLS is required but the server offers none".into());
    }
    let config = match &target.tls {
        Some(config) => config.clone(),
        None => {
            let config = super::tls::NatsTls::default().client_config()?;
            target.tls = Some(config.clone());
            config
        }
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host} as a TLS server name: {e}"))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(name, stream),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Opened::Tls(Box::new(tls), info))
}

async fn read_info(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<serde_json::Value, String> {
    let line = loop {
        if let Some(line) = take_line(buf) {
            break line;
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err("closed before INFO".into()),
            Ok(_) if buf.len() > MAX_LINE => return Err("INFO too long".into()),
            Ok(_) => {}
        }
    };
    match line.strip_prefix("INFO ") {
        Some(json) => serde_json::from_str(json).map_err(|e| format!("INFO: {e}")),
        None => Err("no INFO".into()),
    }
}

enum Ended {
    /// The bus was dropped.
    Stopped,
    /// A connection that was up went down.
    Lost(String),
    /// A server was reached but no connection came up (TLS, credentials refused).
    Failed(String),
    /// No server reached.
    Unreachable(String),
}

#[allow(clippy::too_many_arguments)]
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    mut buf: BytesMut,
    info: &serde_json::Value,
    target: &Target,
    subs: &mut Subs,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    sink: &mpsc::Sender<BusMessage>,
    state: &State,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Ended {
    let (mut read, mut write) = tokio::io::split(stream);
    let connect = match connect_line(info, target) {
        Ok(connect) => connect,
        Err(why) => return Ended::Failed(why),
    };
    let mut out = connect;
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
                    return lost(first_pong, "closed by the server".into());
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
                                state.connected.store(true, Ordering::Release);
                                state.generation.fetch_add(1, Ordering::AcqRel);
                                state.refused(None);
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
                                return lost(first_pong, e);
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

/// How a connection ended: before its first PONG it never came up.
fn lost(first_pong: bool, why: String) -> Ended {
    if first_pong {
        Ended::Failed(why)
    } else {
        Ended::Lost(why)
    }
}

/// The CONNECT line: the URL's user/password or token, or the credentials file's JWT and
/// the nonce signed.
fn connect_line(info: &serde_json::Value, target: &Target) -> Result<String, String> {
    let mut connect = serde_json::json!({
        "verbose": false, "pedantic": false, "lang": "rust", "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1, "headers": true, "no_responders": false, "name": target.name,
        "tls_required": target.tls_required,
    });
    match &target.credentials {
        Some(UrlCredentials::UserPassword { user, password }) => {
            connect["user"] = user.as_str().into();
            connect["pass"] = password.as_str().into();
        }
        Some(UrlCredentials::Token(token)) => connect["auth_token"] = token.as_str().into(),
        None => {}
    }
    if let Some(creds) = &target.user_credentials {
        connect["jwt"] = creds.jwt().into();
        if let Some(nonce) = info["nonce"].as_str() {
            connect["sig"] = creds.sign(nonce)?.into();
        }
    }
    Ok(format!("CONNECT {connect}\r\n"))
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
