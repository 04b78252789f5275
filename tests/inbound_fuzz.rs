//! Property tests of the session's inbound path: framing (the decoder) and frame handling
//! (client frame parsing), fed arbitrary byte streams split at arbitrary points. It never
//! panics, and what it holds between reads stays bounded: the message being assembled
//! plus one incomplete frame never pass the frame limit plus one header, or plus one
//! control frame when a control frame interleaves a fragmented message.

use bytes::BytesMut;
use herald::http::websocket::decoder::{Decoder, Inbound, MAX_CLIENT_HEADER, MAX_CONTROL_FRAME};
use herald_proto::ClientFrame;
use proptest::collection::vec;
use proptest::prelude::*;

/// Small, so generated streams reach the limit often.
const MAX: usize = 512;

/// Feed `chunks` one read at a time, handling every item as the session does. Returns
/// how many items were decoded before the stream ended or broke the framing.
fn feed(chunks: &[Vec<u8>]) -> usize {
    let mut decoder = Decoder::new(MAX);
    let mut buf = BytesMut::new();
    let mut items = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.next(&mut buf) {
                Ok(Some(item)) => {
                    items += 1;
                    if let Inbound::Text(text) = item {
                        let _ = ClientFrame::parse(&text);
                    }
                }
                Ok(None) => break,
                Err(violation) => {
                    assert!(matches!(violation.code(), 1002 | 1007 | 1009));
                    return items;
                }
            }
        }
        let held = buf.len() + decoder.held();
        assert!(
            held <= MAX + MAX_CLIENT_HEADER.max(MAX_CONTROL_FRAME),
            "holding {held} bytes"
        );
        if decoder.held() == 0 {
            assert!(
                buf.len() < MAX + MAX_CLIENT_HEADER,
                "holding {} bytes",
                buf.len()
            );
        }
    }
    items
}

/// Cut `bytes` at the given (sorted, deduplicated) offsets.
fn split(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<Vec<u8>> {
    cuts.retain(|c| *c < bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(bytes[at..c].to_vec());
        at = c;
    }
    out.push(bytes[at..].to_vec());
    out
}

/// A frame as a client might send it, valid or not: any first byte (biased to real
/// opcodes), mostly masked, and a length field that may lie about the payload.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        4 => prop::sample::select(vec![0x81u8, 0x01, 0x80, 0x00, 0x82, 0x89, 0x8A, 0x88]),
        1 => any::<u8>(),
    ];
    let payload = prop_oneof![
        3 => vec(any::<u8>(), 0..40),
        1 => "[ -~]{0,60}".prop_map(String::into_bytes),
        1 => Just(br#"{"type":"ping"}"#.to_vec()),
        1 => vec(any::<u8>(), 100..700),
    ];
    let lie = prop_oneof![8 => Just(None), 1 => any::<u64>().prop_map(Some), 1 => (0u64..1000).prop_map(Some)];
    (
        first,
        any::<bool>(),
        any::<bool>(),
        payload,
        lie,
        any::<[u8; 4]>(),
    )
        .prop_map(|(first, masked, mostly, payload, lie, mask)| {
            let masked = masked || mostly;
            let len = lie.unwrap_or(payload.len() as u64);
            let mut out = vec![first];
            let m = if masked { 0x80 } else { 0 };
            if len < 126 {
                out.push(m | len as u8);
            } else if len < 65536 {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            if masked {
                out.extend_from_slice(&mask);
            }
            out.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ if masked { mask[i & 3] } else { 0 }),
            );
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(chunks in vec(vec(any::<u8>(), 0..300), 0..40)) {
        feed(&chunks);
    }

    #[test]
    fn frame_like_streams_split_anywhere_stay_bounded(
        frames in vec(frame(), 0..30),
        cuts in vec(0usize..20_000, 0..60),
    ) {
        let bytes: Vec<u8> = frames.concat();
        feed(&split(&bytes, cuts));
    }

    #[test]
    fn how_a_stream_is_split_does_not_change_what_is_decoded(
        frames in vec(frame(), 0..20),
        cuts in vec(0usize..10_000, 0..40),
    ) {
        let bytes: Vec<u8> = frames.concat();
        let whole = feed(std::slice::from_ref(&bytes));
        prop_assert_eq!(whole, feed(&split(&bytes, cuts)));
    }
}

#[test]
fn a_fragmented_message_at_the_limit_with_an_interleaved_ping_is_accepted() {
    let mask = [1u8, 2, 3, 4];
    let masked = |first: u8, payload: &[u8]| -> Vec<u8> {
        let mut out = vec![first];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    };
    let mut bytes = masked(0x01, &[b'a'; MAX - 10]);
    bytes.extend(masked(0x89, &[b'p'; 125]));
    bytes.extend(masked(0x80, &[b'b'; 10]));
    let one_byte_reads: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
    assert_eq!(feed(&one_byte_reads), 2, "the ping and the whole message");
}
