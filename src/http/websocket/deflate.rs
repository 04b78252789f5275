//! permessage-deflate (RFC 7692) as herald uses it: always without context takeover on
//! both sides, so a server message is compressed once, on its own, and the same bytes go to
//! every session that negotiated the extension; and a client message inflates on its own,
//! into at most `--max-frame-bytes` (a decompression bomb stops there, 1009).

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::session::wire::Violation;

/// The answer to an offer herald accepts.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail a sync flush ends with, which RFC 7692 §7.2.1 takes off each message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflated in steps of this many bytes, so the limit is checked as output grows.
const STEP: usize = 16 * 1024;

/// Whether one of the client's offers (the values of its `Sec-WebSocket-Extensions`
/// headers) is a permessage-deflate herald can accept: any parameters RFC 7692 defines,
/// except a `server_max_window_bits` below 15 (herald compresses with the full window).
pub fn accepts<'a>(headers: impl Iterator<Item = &'a str>) -> bool {
    headers
        .flat_map(|h| h.split(','))
        .any(|offer| offer_acceptable(offer.trim()))
}

fn offer_acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    for param in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" if value.is_none() => {}
            "client_max_window_bits" => {
                if let Some(v) = value {
                    if !v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) {
                        return false;
                    }
                }
            }
            "server_max_window_bits" => {
                if value != Some("15") {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// One message compressed on its own (raw deflate, the sync-flush tail taken off).
pub fn deflate(payload: &[u8]) -> Bytes {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let before_in = c.total_in() as usize;
        let status = c
            .compress_vec(&payload[before_in..], &mut out, FlushCompress::Sync)
            .unwrap_or(Status::StreamEnd);
        if c.total_in() as usize >= payload.len() && out.ends_with(&TAIL) {
            break;
        }
        if status == Status::StreamEnd {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Bytes::from(out)
}

/// One client message inflated, refused with 1009 as soon as it passes `max` bytes.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, Violation> {
    let mut d = Decompress::new(false);
    let mut input = Vec::with_capacity(compressed.len() + TAIL.len());
    input.extend_from_slice(compressed);
    input.extend_from_slice(&TAIL);
    let mut out: Vec<u8> = Vec::with_capacity(STEP.min(max + 1));
    loop {
        let consumed = d.total_in() as usize;
        if out.len() > max {
            return Err(Violation::TooBig);
        }
        // Room for at most one byte past the limit: that byte is the proof it passed.
        let room = (max + 1 - out.len()).min(STEP);
        out.reserve(room);
        let before = out.len();
        let status = d
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| Violation::Protocol("compressed message does not inflate"))?;
        let produced = out.len() - before;
        if out.len() > max {
            return Err(Violation::TooBig);
        }
        let done = d.total_in() as usize >= input.len();
        if status == Status::StreamEnd || (done && produced < room) {
            return Ok(out);
        }
        if produced == 0 && d.total_in() as usize == consumed {
            return Err(Violation::Protocol("compressed message does not inflate"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_as_rfc_7692_allows_and_herald_can_serve() {
        for ok in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
        ] {
            assert!(accepts([ok].into_iter()), "{ok}");
        }
        for no in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; colour=red",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert!(!accepts([no].into_iter()), "{no}");
        }
    }

    #[test]
    fn a_message_round_trips_and_compresses() {
        let order = br#"{"type":"message","data":{"order":"A-1","items":[1,2,3]}}"#.repeat(30);
        let small = deflate(&order);
        assert!(
            small.len() < order.len() / 4,
            "{} of {}",
            small.len(),
            order.len()
        );
        assert!(!small.ends_with(&TAIL));
        assert_eq!(inflate(&small, order.len()).unwrap(), order);
        assert_eq!(inflate(&deflate(b""), 10).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = deflate(&vec![b'a'; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(inflate(&bomb, 65_536), Err(Violation::TooBig)));
        assert_eq!(
            inflate(&bomb, 10 * 1024 * 1024).unwrap().len(),
            10 * 1024 * 1024
        );
        assert!(matches!(
            inflate(b"\xff\xfe\xfd not deflate", 1000),
            Err(Violation::Protocol(_))
        ));
    }
}
