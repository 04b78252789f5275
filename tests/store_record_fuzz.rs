//! The disk store's record decoding on arbitrary bytes (a damaged or truncated file):
//! never a panic, and whatever decodes encodes back to the same bytes; every whole record
//! decodes to itself, and every cut of one is an error.

use bytes::Bytes;
use herald::store::record::{decode, encode, Record};
use proptest::collection::vec;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,40}")
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        any::<u64>(),
        "[A-Za-z0-9_=-]{1,128}",
        text(),
        text(),
        text(),
        vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(seq, at_ms, user, id, event, device, payload)| Record {
            seq,
            at_ms,
            user,
            id,
            event,
            device,
            payload: Bytes::from(payload),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(seq in any::<u64>(), bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(r) = decode(seq, &bytes) {
            prop_assert_eq!(encode(&r), bytes);
        }
    }

    #[test]
    fn a_record_survives_and_its_cuts_and_flips_do_not_panic(
        r in record(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&r);
        prop_assert_eq!(decode(r.seq, &bytes), Ok(r.clone()));
        let at = cut.index(bytes.len());
        prop_assert!(decode(r.seq, &bytes[..at]).is_err());
        let mut damaged = bytes.clone();
        let i = flip.index(damaged.len());
        damaged[i] ^= 0xA5;
        let _ = decode(r.seq, &damaged);
    }
}
