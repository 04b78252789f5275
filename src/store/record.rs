//! A kept message as the embedded engines hold it, and its byte form in the disk store's
//! values: a version byte, the time kept (ms since the epoch, little endian), then the
//! user, id, event, device and payload, each as a u32 length (little endian; `u32::MAX`
//! for an absent optional field) and its bytes.
//!
//! Decoding takes arbitrary bytes (a damaged file) and answers an error, never a panic.

use bytes::Bytes;
use thiserror::Error;

const VERSION: u8 = 1;
const ABSENT: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub user: String,
    pub id: Option<String>,
    pub event: Option<String>,
    pub device: Option<String>,
    pub payload: Bytes,
}

impl Record {
    /// Bytes this record holds, for memory accounting (fields plus a fixed overhead for
    /// the record and its index entries).
    pub fn footprint(&self) -> usize {
        const OVERHEAD: usize = 160;
        OVERHEAD
            + self.user.len()
            + self.id.as_ref().map_or(0, String::len)
            + self.event.as_ref().map_or(0, String::len)
            + self.device.as_ref().map_or(0, String::len)
            + self.payload.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record ends early")]
    Truncated,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("a text field is not UTF-8")]
    NotUtf8,
    #[error("{0} bytes after the record")]
    Trailing(usize),
    #[error("the user field is missing")]
    NoUser,
}

/// The value bytes of a record (its sequence is the key).
pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.footprint());
    out.push(VERSION);
    out.extend_from_slice(&r.at_ms.to_le_bytes());
    field(&mut out, Some(r.user.as_bytes()));
    field(&mut out, r.id.as_deref().map(str::as_bytes));
    field(&mut out, r.event.as_deref().map(str::as_bytes));
    field(&mut out, r.device.as_deref().map(str::as_bytes));
    field(&mut out, Some(&r.payload));
    out
}

fn field(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        // Fields come from bounded inputs (a 1 MiB request body at most), far below 4 GiB.
        Some(b) => {
            out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(ABSENT - 1).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// The record kept under `seq` from its value bytes.
pub fn decode(seq: u64, bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(r.take(8)?);
    let user = r.text()?.ok_or(DecodeError::NoUser)?;
    let id = r.text()?;
    let event = r.text()?;
    let device = r.text()?;
    let payload = Bytes::copy_from_slice(r.bytes()?.unwrap_or_default());
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(Record {
        seq,
        at_ms: u64::from_le_bytes(at),
        user,
        id,
        event,
        device,
        payload,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let mut len = [0u8; 4];
        len.copy_from_slice(self.take(4)?);
        match u32::from_le_bytes(len) {
            ABSENT => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
                self.take(n).map(Some)
            }
        }
    }

    fn text(&mut self) -> Result<Option<String>, DecodeError> {
        match self.bytes()? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(|s| Some(s.to_string()))
                .map_err(|_| DecodeError::NotUtf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            seq: 9,
            at_ms: 1_700_000_000_123,
            user: "u1".into(),
            id: Some("order-1".into()),
            event: None,
            device: Some("pos".into()),
            payload: Bytes::from_static(b"{\"total\":12.5}"),
        }
    }

    #[test]
    fn a_record_decodes_to_itself() {
        let r = sample();
        assert_eq!(decode(9, &encode(&r)), Ok(r));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(9, &bytes[..n]).is_err(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(9, &longer), Err(DecodeError::Trailing(1)));
    }
}
