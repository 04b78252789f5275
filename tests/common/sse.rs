//! A Server-Sent Events client over a raw TCP stream: the request as written, the HTTP
//! status and head, and the event stream decoded from chunked transfer encoding, so the
//! tests see exactly what a browser's `EventSource` would parse.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// One event: its `event:` type (`comment` for a `:` line), `id:` and `data:` lines
/// joined with `\n`.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub kind: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

pub struct Sse {
    stream: TcpStream,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    ended: bool,
}

/// A refused stream: status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// Open `GET path` on `port` with extra request headers.
pub async fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Refused> {
    tokio::time::timeout(WAIT, open_inner(port, path, headers))
        .await
        .expect("SSE handshake timed out")
}

async fn open_inner(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Refused> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the hub");
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.expect("read head");
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let rest = raw[head_end..].to_vec();
    if status != 200 {
        let mut body = rest;
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut body)).await;
        return Err(Refused {
            status,
            body: String::from_utf8_lossy(&body).to_string(),
        });
    }
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: text/event-stream"),
        "an event stream: {head}"
    );
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    Ok(Sse {
        stream,
        body: Vec::new(),
        raw: rest,
        ended: false,
    })
}

impl Sse {
    /// Move whole chunks from `raw` into `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next complete event from `body`, if one is there.
    fn parse(&mut self) -> Option<Event> {
        let end = self.body.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(self.body[..end].to_vec()).expect("UTF-8 events");
        self.body.drain(..end + 2);
        let mut ev = Event::default();
        let mut data: Vec<&str> = Vec::new();
        for line in block.split('\n') {
            if let Some(c) = line.strip_prefix(':') {
                ev.kind = "comment".into();
                ev.data = c.trim().to_string();
            } else if let Some(v) = line.strip_prefix("event: ") {
                ev.kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                ev.id = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        if ev.kind != "comment" {
            ev.data = data.join("\n");
        }
        Some(ev)
    }

    /// The next event (comments included), or None once the stream ended.
    pub async fn next_any(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, async {
            loop {
                self.dechunk();
                if let Some(ev) = self.parse() {
                    return Some(ev);
                }
                if self.ended {
                    return None;
                }
                let mut buf = [0u8; 8192];
                let n = self.stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
                self.raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("timed out waiting for an SSE event")
    }

    /// The next event that is not a comment.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let ev = self.next_any(WAIT).await.expect("the stream ended");
            if ev.kind != "comment" {
                return ev;
            }
        }
    }

    /// The next event must be `close`: its code.
    pub async fn expect_close(&mut self) -> u16 {
        let ev = self.next_event().await;
        assert_eq!(ev.kind, "close", "{ev:?}");
        let code = ev.json()["code"].as_u64().expect("a code") as u16;
        assert!(
            self.next_any(WAIT).await.is_none(),
            "the stream ends after the close event"
        );
        code
    }
}

/// POST one client frame; the status.
pub async fn post(base: &str, user: &str, session: &str, token: &str, body: &str) -> u16 {
    let url = format!("{base}/sse/{user}/{session}?token={token}");
    tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send(),
    )
    .await
    .expect("POST timed out")
    .expect("POST sent")
    .status()
    .as_u16()
}
