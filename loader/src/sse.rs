//! A minimal Server-Sent Events client over a plain TCP stream (HTTP/1.1, no TLS): the
//! request, the response head, an identity or chunked body, and the event stream itself
//! (`event:`, `data:`, `id:` fields, a blank line ends an event, `:` lines are comments).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head or chunk-size line accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One event. `event` is `message` when the server named none (as in the SSE spec).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// An open event stream.
pub struct Stream {
    tcp: Option<TcpStream>,
    body: Body,
    /// The event being assembled.
    pending: Event,
    has_fields: bool,
}

/// `GET path` on `stream`; returns once the response head says 200 and
/// `text/event-stream`.
pub async fn open(mut tcp: TcpStream, host: &str, path: &str) -> anyhow::Result<Stream> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = tcp.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the SSE response head");
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(head.len() <= MAX_HEAD, "SSE response head too long");
    };
    let text = std::str::from_utf8(&head[..end])?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let mut chunked = false;
    let mut content_type = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = v.to_ascii_lowercase();
            }
        }
    }
    if code != "200" {
        // The refusal's body, if it came with the head, says why.
        let body = String::from_utf8_lossy(&head[end..]);
        anyhow::bail!("SSE refused: {status} {}", body.trim());
    }
    anyhow::ensure!(
        content_type.starts_with("text/event-stream"),
        "SSE answered with Content-Type {content_type:?}"
    );
    let mut body = Body::new(chunked);
    body.push(&head[end..])?;
    Ok(Stream {
        tcp: Some(tcp),
        body,
        pending: Event::default(),
        has_fields: false,
    })
}

impl Stream {
    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(line) = self.body.line() {
                if let Some(e) = self.on_line(&line) {
                    return Ok(Some(e));
                }
            }
            if self.body.ended {
                return Ok(None);
            }
            let Some(tcp) = self.tcp.as_mut() else {
                return Ok(None);
            };
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                self.tcp = None;
                return Ok(None);
            }
            self.body.push(&chunk[..n])?;
        }
    }

    /// One line of the event stream; an event when it ends one.
    fn on_line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            if !self.has_fields {
                return None;
            }
            self.has_fields = false;
            let mut e = std::mem::take(&mut self.pending);
            if e.data.ends_with('\n') {
                e.data.pop();
            }
            if e.event.is_empty() {
                e.event = "message".into();
            }
            return Some(e);
        }
        if line.starts_with(':') {
            return None; // a comment (`: ping`)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.pending.event = value.to_string(),
            "data" => {
                self.pending.data.push_str(value);
                self.pending.data.push('\n');
            }
            "id" => self.pending.id = Some(value.to_string()),
            _ => return None,
        }
        self.has_fields = true;
        None
    }
}

/// The response body, de-chunked, split into lines.
struct Body {
    chunked: bool,
    /// Received bytes not yet de-chunked.
    raw: Vec<u8>,
    /// Bytes left in the current chunk; `None` while a chunk-size line is expected.
    chunk_left: Option<usize>,
    /// The CRLF after a chunk's data is still to be skipped.
    chunk_crlf: bool,
    /// De-chunked bytes not yet split into lines.
    text: Vec<u8>,
    ended: bool,
}

impl Body {
    fn new(chunked: bool) -> Body {
        Body {
            chunked,
            raw: Vec::new(),
            chunk_left: None,
            chunk_crlf: false,
            text: Vec::new(),
            ended: false,
        }
    }

    fn push(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if !self.chunked {
            self.text.extend_from_slice(data);
            return Ok(());
        }
        if self.ended {
            return Ok(()); // the last chunk's trailer: nothing more to read
        }
        self.raw.extend_from_slice(data);
        let mut at = 0;
        loop {
            if self.chunk_crlf {
                if self.raw.len() - at < 2 {
                    break;
                }
                anyhow::ensure!(&self.raw[at..at + 2] == b"\r\n", "bad chunk framing");
                at += 2;
                self.chunk_crlf = false;
            }
            match self.chunk_left {
                None => {
                    let Some(eol) = self.raw[at..].windows(2).position(|w| w == b"\r\n") else {
                        anyhow::ensure!(self.raw.len() - at <= MAX_HEAD, "bad chunk size line");
                        break;
                    };
                    let line = std::str::from_utf8(&self.raw[at..at + eol])?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| anyhow::anyhow!("bad chunk size {hex:?}"))?;
                    at += eol + 2;
                    if size == 0 {
                        self.ended = true;
                        break;
                    }
                    self.chunk_left = Some(size);
                }
                Some(left) => {
                    let n = left.min(self.raw.len() - at);
                    if n == 0 {
                        break;
                    }
                    self.text.extend_from_slice(&self.raw[at..at + n]);
                    at += n;
                    if n == left {
                        self.chunk_left = None;
                        self.chunk_crlf = true;
                    } else {
                        self.chunk_left = Some(left - n);
                    }
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    /// The next complete line (LF or CRLF ended), without its end.
    fn line(&mut self) -> Option<String> {
        let eol = self.text.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.text.drain(..=eol).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(s: &mut Stream, chunks: &[&[u8]]) -> Vec<Event> {
        let mut out = Vec::new();
        for c in chunks {
            s.body.push(c).expect("valid body");
            while let Some(line) = s.body.line() {
                out.extend(s.on_line(&line));
            }
        }
        out
    }

    fn stream(chunked: bool) -> Stream {
        Stream {
            tcp: None,
            body: Body::new(chunked),
            pending: Event::default(),
            has_fields: false,
        }
    }

    #[test]
    fn events_comments_and_ids() {
        let mut s = stream(false);
        let got = events(
            &mut s,
            &[b"event: welcome\ndata: {\"type\":\"welcome\"}\n\n: ping\n\nevent: message\nid: c-1\ndata: {\"t\":5,\"seq\":0}\n\ndata: x\n\n"],
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].event, "welcome");
        assert_eq!(got[1].event, "message");
        assert_eq!(got[1].id.as_deref(), Some("c-1"));
        assert_eq!(got[1].data, "{\"t\":5,\"seq\":0}");
        assert_eq!(got[2].event, "message");
        assert_eq!(got[2].data, "x");
    }

    #[test]
    fn chunked_body_split_anywhere() {
        let payload = b"event: message\r\ndata: {\"t\":1,\"seq\":2}\r\n\r\n";
        let mut wire = format!("{:x}\r\n", 10).into_bytes();
        wire.extend_from_slice(&payload[..10]);
        wire.extend_from_slice(format!("\r\n{:x};ext=1\r\n", payload.len() - 10).as_bytes());
        wire.extend_from_slice(&payload[10..]);
        wire.extend_from_slice(b"\r\n0\r\n\r\n");
        for cut in 1..wire.len() {
            let mut s = stream(true);
            let got = events(&mut s, &[&wire[..cut], &wire[cut..]]);
            assert_eq!(got.len(), 1, "cut at {cut}");
            assert_eq!(got[0].data, "{\"t\":1,\"seq\":2}");
            assert!(s.body.ended);
        }
    }
}
