//! The store seam: where kept user messages live (PROTOCOL §5), and what herald reads from
//! it (replays, gap fills, history) and writes to it (publishes). Three engines sit behind
//! [`Store`]: [`jetstream::JetStream`] (NATS mode with `--durable`), and the two embedded
//! engines of standalone mode, [`disk`] (`--durable`, redb in `--data-dir`) and [`memory`]
//! (the default, bounded by `--history-memory`), which share [`embedded::Embedded`].
//!
//! Every engine keeps messages under one sequence per store and announces each kept
//! message on `<prefix>.live.user.<id>` with its sequence and its predecessor's on the same
//! user (the headers JetStream's RePublish sets), so the pods' live feeds
//! ([`feed`]), cursors ([`cursor`]), replays and history are written once, here and in the
//! callers, against this seam. The store's epoch makes a cursor meaningful only for the
//! store that issued it.

pub mod cursor;
pub mod disk;
pub mod embedded;
pub mod feed;
pub mod jetstream;
pub mod memory;
pub mod record;

use async_trait::async_trait;
use herald_proto::frame::Source;
use thiserror::Error;

pub use cursor::Cursor;

use herald_proto::events::Receipt;

use crate::bus::Outbound;
use crate::ids::{DeviceId, UserId};
use crate::message::{encode_frame, Frame};

/// Why the store could not do what was asked. Callers answer 503 either way; the kind
/// tells the client (and the logs) why.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    #[error("message store is full: {0}")]
    Full(String),
}

/// Why a cursor cannot be continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CursorRefusal {
    #[error("not a cursor")]
    Garbage,
    #[error("the cursor comes from another store (it was re-created or restarted since)")]
    ForeignEpoch,
    #[error("messages after the cursor were already dropped (retention)")]
    Expired,
    #[error("the cursor is ahead of the store")]
    Ahead,
}

/// Whose messages a read returns.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Every message of the user (gap fills, history without `device=`).
    All,
    /// What a session opened with this device (or none) is sent: messages without
    /// `Herald-Device`, and those for its own device.
    Session(Option<&'a DeviceId>),
}

impl Audience<'_> {
    /// Whether a message kept for `device` (its `Herald-Device`, if any) is for this
    /// audience.
    pub fn admits(&self, device: Option<&str>) -> bool {
        match (device, self) {
            (_, Audience::All) | (None, _) => true,
            (Some(d), Audience::Session(Some(mine))) => d == mine.as_str(),
            (Some(_), Audience::Session(None)) => false,
        }
    }
}

/// A kept message, encoded as the frame a session is sent.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    /// The message id its frame carries (the publisher's, else the cursor).
    pub id: String,
    pub frame: Frame,
    pub device: Option<String>,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Read {
    pub messages: Vec<Stored>,
    /// More matching messages follow the last one returned (within the read's bound).
    pub more: bool,
}

/// The store as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The store's epoch now (it changes when the store is re-created).
    pub epoch: u64,
    /// The oldest kept sequence (the last plus one when nothing is kept).
    pub first: u64,
    /// The newest sequence ever assigned (0 before the first message).
    pub last: u64,
}

/// What herald needs from a store of kept messages.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Engine name for logs and metrics.
    fn engine(&self) -> &'static str;
    /// The epoch this pod knows the store by; cursors carry it.
    fn epoch(&self) -> u64;
    /// Most messages replayed on one reconnect (`--max-replay`).
    fn max_replay(&self) -> u64;
    /// The store's epoch and sequence range, as the store sees them now.
    async fn bounds(&self) -> Result<Bounds, StoreError>;
    /// The sequence of the user's newest kept message (0 when there is none).
    async fn last_seq(&self, user: &UserId) -> Result<u64, StoreError>;
    /// The user's kept messages after `after` (up to `upto` when given) for `audience`, at
    /// most `limit`; `more` says whether another follows.
    async fn read(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Read, StoreError>;
    /// Keep a user message (on `<prefix>.user.<id>`, with its headers) and return its
    /// sequence once it is kept as the engine promises (on disk, in the stream); the
    /// store then announces it live. A message id seen within the de-duplication window
    /// is kept once: the answer is the first one's sequence.
    async fn publish(&self, msg: Outbound) -> Result<u64, StoreError>;
    /// Keep a delivery receipt beside the message it acknowledges; `false` when no kept
    /// message of the user has that id (the receipt is then not kept). The JetStream
    /// engine keeps receipts by capturing their subject, so pods never call it there.
    async fn keep_receipt(&self, receipt: &Receipt) -> Result<bool, StoreError>;
    /// The kept receipts of the user's messages with these ids (none kept at or after
    /// `from_seq` belong to earlier messages), by id.
    async fn receipts(
        &self,
        user: &UserId,
        ids: &[&str],
        from_seq: u64,
    ) -> Result<Receipts, StoreError>;
}

/// Kept receipts by message id.
pub type Receipts = std::collections::HashMap<String, Vec<Receipt>>;

impl dyn Store {
    pub fn cursor(&self, seq: u64) -> String {
        Cursor {
            epoch: self.epoch(),
            seq,
        }
        .to_string()
    }

    /// Check that `cursor` can be continued: this store's epoch, and nothing after it
    /// dropped yet. Returns the sequence to read after.
    pub async fn resume_point(
        &self,
        cursor: &str,
    ) -> Result<Result<u64, CursorRefusal>, StoreError> {
        let Some(c) = Cursor::parse(cursor) else {
            return Ok(Err(CursorRefusal::Garbage));
        };
        // Checked against the store as it is now, not the epoch this pod last saw: a
        // store re-created a moment ago must not take an old cursor.
        let b = self.bounds().await?;
        Ok(check_resume(c, self.epoch(), b))
    }

    /// The oldest kept sequence minus one: where a read "from the beginning" starts.
    pub async fn before_oldest(&self) -> Result<u64, StoreError> {
        Ok(self.bounds().await?.first.saturating_sub(1))
    }

    /// The frame of a kept message, the same whether it is sent live, replayed or listed.
    pub fn stored(
        &self,
        seq: u64,
        msg_id: Option<&str>,
        event: Option<&str>,
        device: Option<String>,
        payload: &[u8],
    ) -> Stored {
        stored_frame(self.epoch(), seq, msg_id, event, device, payload)
    }
}

/// A new store's epoch: nanoseconds since the Unix epoch, so a store created later (or a
/// process started later) has another.
pub fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// The sequence a message id names when it is a cursor of the store with `epoch` (a
/// message published without an id carries its cursor as its id).
pub fn cursor_seq(id: &str, epoch: u64) -> Option<u64> {
    Cursor::parse(id)
        .filter(|c| c.epoch == epoch)
        .map(|c| c.seq)
}

/// Whether cursor `c` continues in a store known by `known_epoch` and now at `b`.
pub fn check_resume(c: Cursor, known_epoch: u64, b: Bounds) -> Result<u64, CursorRefusal> {
    if c.epoch != b.epoch || c.epoch != known_epoch {
        return Err(CursorRefusal::ForeignEpoch);
    }
    if c.seq > b.last {
        return Err(CursorRefusal::Ahead);
    }
    // Retention drops the oldest first: if the message right after the cursor is gone,
    // something this user should get may be gone too.
    if b.first > c.seq.saturating_add(1) {
        return Err(CursorRefusal::Expired);
    }
    Ok(c.seq)
}

/// The frame of a kept message under `epoch`.
pub fn stored_frame(
    epoch: u64,
    seq: u64,
    msg_id: Option<&str>,
    event: Option<&str>,
    device: Option<String>,
    payload: &[u8],
) -> Stored {
    let cursor = Cursor { epoch, seq }.to_string();
    let id = msg_id.filter(|i| !i.is_empty()).unwrap_or(&cursor);
    Stored {
        seq,
        id: id.to_string(),
        frame: encode_frame(id, &cursor, Source::User, None, event, payload),
        device,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(epoch: u64, first: u64, last: u64) -> Bounds {
        Bounds { epoch, first, last }
    }

    #[test]
    fn resume_checks_epoch_range_and_retention() {
        let c = |seq| Cursor { epoch: 7, seq };
        assert_eq!(check_resume(c(5), 7, b(7, 1, 9)), Ok(5));
        assert_eq!(check_resume(c(5), 7, b(7, 6, 9)), Ok(5), "next one kept");
        assert_eq!(
            check_resume(c(5), 7, b(7, 7, 9)),
            Err(CursorRefusal::Expired)
        );
        assert_eq!(
            check_resume(c(10), 7, b(7, 1, 9)),
            Err(CursorRefusal::Ahead)
        );
        assert_eq!(
            check_resume(c(5), 7, b(8, 1, 9)),
            Err(CursorRefusal::ForeignEpoch)
        );
        assert_eq!(
            check_resume(c(5), 8, b(7, 1, 9)),
            Err(CursorRefusal::ForeignEpoch)
        );
    }

    #[test]
    fn audience_filters_by_device() {
        let d = DeviceId::parse("pos").expect("valid");
        assert!(Audience::All.admits(Some("x")));
        assert!(Audience::Session(None).admits(None));
        assert!(!Audience::Session(None).admits(Some("pos")));
        assert!(Audience::Session(Some(&d)).admits(Some("pos")));
        assert!(!Audience::Session(Some(&d)).admits(Some("till")));
    }
}
