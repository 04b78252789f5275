//! Durable mode: the JetStream stream that keeps every user message, and what herald reads
//! from it (replays, gap fills, history) and writes to it (HTTP publishes).
//!
//! The stream captures `<prefix>.user.>` for `--retention`, de-duplicates by `Nats-Msg-Id`,
//! and republishes each stored message on `<prefix>.live.user.<id>` with its sequence and
//! the previous sequence on the same subject. Pods take live traffic from those republished
//! subjects, so everything a session is sent live has been stored first, and a session can
//! notice (and fill) a missing predecessor. Sequences are per stream; the stream's creation
//! time is the epoch that makes a [`Cursor`] meaningful only for the stream that issued it.
//!
//! Reads use `STREAM.MSG.GET` with `next_by_subj` (one request per message, no consumer
//! state on the server), which both NATS versions herald is tested with answer.

pub mod cursor;
pub mod feed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use herald_proto::frame::Source;
use herald_proto::{Subjects, HEADER_DEVICE, HEADER_EVENT, HEADER_MSG_ID};
use thiserror::Error;

pub use cursor::Cursor;

use crate::config::DurableConfig;
use crate::ids::{DeviceId, UserId};
use crate::message::{encode_frame, Frame};

/// JetStream de-duplicates a `Nats-Msg-Id` seen within this window.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Longest wait for one JetStream API answer.
const API_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum DurableError {
    #[error("JetStream is not available on the NATS server ({0}); start nats-server with -js, or run without --durable")]
    Unavailable(String),
    #[error("JetStream refused the durable stream {0}'s configuration: {1}")]
    Refused(String, String),
    #[error("JetStream request failed: {0}")]
    Request(String),
    #[error("the durable stream {0} does not exist (deleted?)")]
    NoStream(String),
}

/// Why a cursor cannot be continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CursorRefusal {
    #[error("not a cursor")]
    Garbage,
    #[error("the cursor comes from another stream (it was re-created since)")]
    ForeignEpoch,
    #[error("messages after the cursor were already dropped (retention)")]
    Expired,
    #[error("the cursor is ahead of the stream")]
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

/// A kept message, encoded as the frame a session is sent.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
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

pub struct Durable {
    js: jetstream::Context,
    stream: String,
    subjects: Subjects,
    config: DurableConfig,
    epoch: AtomicU64,
}

/// The stream's name for a subject prefix: `herald` → `HERALD`.
pub fn stream_name(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

impl Durable {
    /// Make sure the stream exists with this configuration (created or updated, safe when
    /// several pods start at once) and learn its epoch.
    pub async fn start(
        client: async_nats::Client,
        subjects: Subjects,
        config: DurableConfig,
    ) -> Result<Durable, DurableError> {
        let mut js = jetstream::new(client);
        js.set_timeout(API_TIMEOUT);
        let durable = Durable {
            js,
            stream: stream_name(subjects.prefix()),
            subjects,
            config,
            epoch: AtomicU64::new(0),
        };
        durable.ensure().await?;
        Ok(durable)
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn max_replay(&self) -> u64 {
        self.config.max_replay
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn cursor(&self, seq: u64) -> String {
        Cursor {
            epoch: self.epoch(),
            seq,
        }
        .to_string()
    }

    fn wanted(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.subjects.user_any()],
            max_age: self.config.retention,
            num_replicas: self.config.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            // JetStream refuses a de-duplication window longer than the retention.
            duplicate_window: DUPLICATE_WINDOW.min(self.config.retention),
            republish: Some(stream::Republish {
                source: self.subjects.user_any(),
                destination: self.subjects.live_user_any(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// Create or update the stream, and remember its epoch.
    pub async fn ensure(&self) -> Result<(), DurableError> {
        let wanted = self.wanted();
        let info = match self.js.get_stream(&self.stream).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(request)?.clone();
                if differs(&info.config, &wanted) {
                    tracing::info!(stream = %self.stream, "updating the durable stream's configuration");
                    self.js
                        .update_stream(wanted)
                        .await
                        .map_err(|e| DurableError::Refused(self.stream.clone(), e.to_string()))?
                } else {
                    info
                }
            }
            Err(e) if is_not_found(&e) => match self.js.create_stream(wanted).await {
                Ok(mut s) => {
                    tracing::info!(stream = %self.stream, "created the durable stream");
                    s.info().await.map_err(request)?.clone()
                }
                // Another pod created it at the same moment.
                Err(e) if e.to_string().contains("already in use") => {
                    let mut s = self.js.get_stream(&self.stream).await.map_err(request)?;
                    s.info().await.map_err(request)?.clone()
                }
                Err(e) => return Err(self.create_failed(e)),
            },
            Err(e) => return Err(unavailable_or(e)),
        };
        self.epoch.store(epoch_of(&info), Ordering::Release);
        Ok(())
    }

    /// A create that failed: JetStream missing, or the server refusing the settings.
    fn create_failed(&self, e: jetstream::context::CreateStreamError) -> DurableError {
        match e.kind() {
            jetstream::context::CreateStreamErrorKind::JetStream(j)
                if j.error_code() != jetstream::ErrorCode::JETSTREAM_NOT_ENABLED
                    && j.error_code()
                        != jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                DurableError::Refused(self.stream.clone(), e.to_string())
            }
            _ => unavailable_or(e),
        }
    }

    /// The stream's epoch as the server sees it now, without creating anything.
    pub async fn current_epoch(&self) -> Result<u64, DurableError> {
        Ok(self.state().await?.0)
    }

    /// The stream's epoch and state as the server sees them now.
    async fn state(&self) -> Result<(u64, stream::State), DurableError> {
        let mut s = self.js.get_stream(&self.stream).await.map_err(|e| {
            if is_not_found(&e) {
                DurableError::NoStream(self.stream.clone())
            } else {
                request(e)
            }
        })?;
        let info = s.info().await.map_err(request)?;
        Ok((epoch_of(info), info.state.clone()))
    }

    /// The sequence of the user's newest kept message (0 when there is none).
    pub async fn last_seq(&self, user: &UserId) -> Result<u64, DurableError> {
        let s = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(request)?;
        match s
            .get_last_raw_message_by_subject(&self.subjects.user(user.as_str()))
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => Ok(0),
            Err(e) => Err(request(e)),
        }
    }

    /// Check that `cursor` can be continued: this stream's epoch, and nothing after it
    /// dropped yet. Returns the sequence to read after.
    pub async fn resume_point(
        &self,
        cursor: &str,
    ) -> Result<Result<u64, CursorRefusal>, DurableError> {
        let Some(c) = Cursor::parse(cursor) else {
            return Ok(Err(CursorRefusal::Garbage));
        };
        // Checked against the stream as it is now, not the epoch this pod last saw: a
        // stream re-created a moment ago must not take an old cursor.
        let (epoch, state) = self.state().await?;
        if c.epoch != epoch || c.epoch != self.epoch() {
            return Ok(Err(CursorRefusal::ForeignEpoch));
        }
        if c.seq > state.last_sequence {
            return Ok(Err(CursorRefusal::Ahead));
        }
        // Limits retention drops the oldest first: if the message right after the cursor
        // is gone, something this user should get may be gone too.
        if state.first_sequence > c.seq.saturating_add(1) {
            return Ok(Err(CursorRefusal::Expired));
        }
        Ok(Ok(c.seq))
    }

    /// The oldest kept sequence minus one: where a read "from the beginning" starts.
    pub async fn before_oldest(&self) -> Result<u64, DurableError> {
        Ok(self.state().await?.1.first_sequence.saturating_sub(1))
    }

    /// The user's kept messages after `after` (up to `upto` when given) for `audience`,
    /// at most `limit`; `more` says whether another follows.
    pub async fn read(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Read, DurableError> {
        let s = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(request)?;
        let subject = self.subjects.user(user.as_str());
        let mut read = Read::default();
        let mut next = after.saturating_add(1);
        loop {
            if upto.is_some_and(|u| next > u) {
                return Ok(read);
            }
            let m = match s
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await
            {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                    return Ok(read)
                }
                Err(e) => return Err(request(e)),
            };
            if upto.is_some_and(|u| m.sequence > u) {
                return Ok(read);
            }
            next = m.sequence.saturating_add(1);
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
            let msg_device = header(HEADER_DEVICE);
            let for_session = match (&msg_device, audience) {
                (_, Audience::All) | (None, _) => true,
                (Some(d), Audience::Session(Some(mine))) => d == mine.as_str(),
                (Some(_), Audience::Session(None)) => false,
            };
            if !for_session {
                continue;
            }
            if read.messages.len() >= limit {
                read.more = true;
                return Ok(read);
            }
            read.messages.push(self.stored(
                m.sequence,
                header(HEADER_MSG_ID).as_deref(),
                header(HEADER_EVENT).as_deref(),
                msg_device,
                &m.payload,
            ));
        }
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
        let cursor = self.cursor(seq);
        let id = msg_id.filter(|i| !i.is_empty()).unwrap_or(&cursor);
        Stored {
            seq,
            frame: encode_frame(id, &cursor, Source::User, None, event, payload),
            device,
        }
    }

    /// Publish a user message through JetStream and return its sequence once stored.
    pub async fn publish(
        &self,
        subject: String,
        headers: &[(String, String)],
        payload: Bytes,
    ) -> Result<u64, DurableError> {
        js_publish(&self.js, subject, headers, payload).await
    }
}

/// A JetStream publish, waited for until the stream stored it; returns its sequence.
async fn js_publish(
    js: &jetstream::Context,
    subject: String,
    headers: &[(String, String)],
    payload: Bytes,
) -> Result<u64, DurableError> {
    let headers = crate::bus::nats::to_header_map(headers).unwrap_or_default();
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(request)?
        .await
        .map_err(request)?;
    Ok(ack.sequence)
}

/// For `herald publish --durable`: publish one user message through JetStream to an
/// existing durable stream and return its cursor.
pub async fn publish_once(
    client: async_nats::Client,
    subjects: &Subjects,
    subject: String,
    headers: &[(String, String)],
    payload: Bytes,
) -> Result<String, DurableError> {
    let mut js = jetstream::new(client);
    js.set_timeout(API_TIMEOUT);
    let name = stream_name(subjects.prefix());
    let mut s = js.get_stream(&name).await.map_err(|e| {
        if is_not_found(&e) {
            DurableError::NoStream(name.clone())
        } else {
            unavailable_or(e)
        }
    })?;
    let epoch = epoch_of(s.info().await.map_err(request)?);
    let seq = js_publish(&js, subject, headers, payload).await?;
    Ok(Cursor { epoch, seq }.to_string())
}

fn epoch_of(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos())
        .unwrap_or(1)
        .max(1)
}

fn differs(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects != want.subjects
        || have.max_age != want.max_age
        || have.num_replicas.max(1) != want.num_replicas.max(1)
        || have.duplicate_window != want.duplicate_window
        || have.republish != want.republish
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn request(e: impl std::fmt::Display) -> DurableError {
    DurableError::Request(e.to_string())
}

fn unavailable_or(e: impl std::fmt::Display) -> DurableError {
    DurableError::Unavailable(e.to_string())
}
