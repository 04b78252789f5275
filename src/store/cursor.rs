//! Cursors in durable mode: the stream's incarnation (its epoch) and a message's sequence
//! in it, as one opaque string `<epoch hex>-<sequence>`. The epoch is the stream's creation
//! time, so a cursor from a deleted and re-created stream is recognised as foreign instead
//! of pointing at an unrelated message with the same sequence.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (epoch, seq) = s.split_once('-')?;
        if epoch.is_empty() || epoch.len() > 16 || seq.is_empty() || seq.len() > 20 {
            return None;
        }
        Some(Cursor {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            epoch: 0x187a_4b2c_9d00_1234,
            seq: 42,
        };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        for bad in [
            "",
            "-",
            "abc",
            "zz-1",
            "1-x",
            "1-",
            "-5",
            "1-2-3",
            "11111111111111111-1",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
