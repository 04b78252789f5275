//! Percent-decoding (`%XX`), for the two places herald reads encoded text: query strings
//! (form encoding, where `+` is a space) and the user info of NATS URLs (where it is not).
//! A `%` not followed by two hex digits is kept as it is.

/// Decode `%XX` sequences; invalid UTF-8 becomes U+FFFD.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decode a form-encoded value: `+` is a space, then `%XX` as in [`decode`].
pub fn decode_form(s: &str) -> String {
    decode(&s.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_decode_and_plus_is_a_space_only_in_forms() {
        assert_eq!(decode("a%2Bb+c%zz%4"), "a+b+c%zz%4");
        assert_eq!(decode_form("a%2Bb+c"), "a+b c");
        assert_eq!(decode("%C3%A9"), "é");
    }
}
