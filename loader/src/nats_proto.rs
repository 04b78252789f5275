//! The client side of the NATS protocol, as far as a subscriber needs it: the operations a
//! server sends (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`), parsed from a byte
//! stream that arrives in arbitrary pieces (for `--proto nats-ws`, the payloads of WebSocket
//! frames: one frame may hold several operations, or a part of one).

/// Longest control line accepted (nats-server's own limit is 4 KiB by default; its INFO
/// line can be longer with many connect URLs).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Info,
    Ping,
    Pong,
    Ok,
    Err(&'a str),
    /// `MSG` or `HMSG`; for `HMSG` the payload is what follows the headers.
    Msg {
        subject: &'a str,
        sid: &'a str,
        payload: &'a [u8],
    },
}

/// Bytes received and not yet parsed.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    pos: usize,
}

impl Parser {
    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            // An idle connection should not keep a large buffer from one big message.
            if self.buf.capacity() > 16 * 1024 {
                self.buf.shrink_to(4096);
            }
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete operation, `Ok(None)` when more bytes are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> anyhow::Result<Option<Op<'_>>> {
        let rest = &self.buf[self.pos..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            anyhow::ensure!(
                rest.len() <= MAX_CONTROL_LINE,
                "NATS control line longer than {MAX_CONTROL_LINE} bytes"
            );
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol])
            .map_err(|_| anyhow::anyhow!("NATS control line is not UTF-8"))?;
        let (op, args) = match line.find([' ', '\t']) {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        let body = eol + 2;
        let headers = op.eq_ignore_ascii_case("HMSG");
        if headers || op.eq_ignore_ascii_case("MSG") {
            let t: Vec<&str> = args.split_ascii_whitespace().collect();
            // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr> <total>.
            let fixed = if headers { 4 } else { 3 };
            anyhow::ensure!(
                t.len() == fixed || t.len() == fixed + 1,
                "malformed {op} line: {line}"
            );
            let num = |s: &str| -> anyhow::Result<usize> {
                s.parse()
                    .map_err(|_| anyhow::anyhow!("malformed {op} line: {line}"))
            };
            let total = num(t[t.len() - 1])?;
            let header_len = if headers { num(t[t.len() - 2])? } else { 0 };
            anyhow::ensure!(header_len <= total, "malformed {op} line: {line}");
            if rest.len() < body + total + 2 {
                return Ok(None);
            }
            anyhow::ensure!(
                &rest[body + total..body + total + 2] == b"\r\n",
                "{op} payload not followed by CRLF"
            );
            self.pos += body + total + 2;
            return Ok(Some(Op::Msg {
                subject: t[0],
                sid: t[1],
                payload: &rest[body + header_len..body + total],
            }));
        }
        self.pos += body;
        Ok(Some(if op.eq_ignore_ascii_case("PING") {
            Op::Ping
        } else if op.eq_ignore_ascii_case("PONG") {
            Op::Pong
        } else if op.eq_ignore_ascii_case("INFO") {
            Op::Info
        } else if op.eq_ignore_ascii_case("+OK") {
            Op::Ok
        } else if op.eq_ignore_ascii_case("-ERR") {
            Op::Err(args)
        } else {
            anyhow::bail!("unexpected NATS operation {op:?}")
        }))
    }
}

/// What a client sends after the server's INFO: CONNECT, its two subscriptions (the
/// subjects herald itself subscribes to for a session of `user`: `<prefix>.user.<id>` and
/// `<prefix>.broadcast`), then PING, whose PONG says both subscriptions are in place.
pub fn handshake(prefix: &str, user: &str) -> Vec<u8> {
    let subjects = herald_proto::Subjects::new(prefix);
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"no_responders\":false}}\r\n\
         SUB {} 1\r\nSUB {} 2\r\nPING\r\n",
        subjects.user(user),
        subjects.broadcast()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(op) = p.next().expect("parses") {
            out.push(match op {
                Op::Msg {
                    subject,
                    sid,
                    payload,
                } => format!("MSG {subject} {sid} {}", String::from_utf8_lossy(payload)),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn operations_coalesced_in_one_piece() {
        let mut p = Parser::default();
        p.feed(b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\n+OK\r\nPONG\r\n");
        assert_eq!(
            all(&mut p),
            ["Info", "Ping", "MSG a.b 1 hello", "Ok", "Pong"]
        );
    }

    #[test]
    fn a_message_split_anywhere_comes_out_whole() {
        let wire = b"MSG herald.user.u1 1 reply.to 13\r\n{\"t\":1,\"s\":2}\r\nMSG herald.broadcast 2 0\r\n\r\n";
        for cut in 1..wire.len() {
            for cut2 in cut..wire.len() {
                let mut p = Parser::default();
                let mut got = Vec::new();
                for piece in [&wire[..cut], &wire[cut..cut2], &wire[cut2..]] {
                    p.feed(piece);
                    got.extend(all(&mut p));
                }
                assert_eq!(
                    got,
                    [
                        "MSG herald.user.u1 1 {\"t\":1,\"s\":2}",
                        "MSG herald.broadcast 2 "
                    ],
                    "cut at {cut}, {cut2}"
                );
            }
        }
    }

    #[test]
    fn payloads_may_hold_crlf_and_headers_are_skipped() {
        let mut p = Parser::default();
        p.feed(b"MSG s 1 4\r\n\r\n\r\n\r\nHMSG s 2 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n");
        assert_eq!(all(&mut p), ["MSG s 1 \r\n\r\n", "MSG s 2 hello"]);
    }

    #[test]
    fn errors_and_garbage() {
        let mut p = Parser::default();
        p.feed(b"-ERR 'Authorization Violation'\r\n");
        assert_eq!(all(&mut p), ["Err(\"'Authorization Violation'\")"]);
        let mut p = Parser::default();
        p.feed(b"HELLO\r\n");
        assert!(p.next().is_err());
        let mut p = Parser::default();
        p.feed(b"MSG s 1 x\r\n");
        assert!(p.next().is_err());
    }

    #[test]
    fn handshake_uses_herald_subjects() {
        let h = String::from_utf8(handshake("herald", "u7")).unwrap();
        assert!(h.starts_with("CONNECT {\"verbose\":false"));
        assert!(h.ends_with("SUB herald.user.u7 1\r\nSUB herald.broadcast 2\r\nPING\r\n"));
    }
}
