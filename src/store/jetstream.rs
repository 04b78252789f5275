//! The JetStream engine of the store seam (NATS mode with `--durable`): the stream that
//! keeps every user message, read for replays, gap fills and history, written by HTTP
//! publishes. Delivery receipts are kept in the same stream (they expire with the
//! messages) under `<prefix>.user.<id>.receipts`, beside the user's messages, which are
//! read by their exact subject and so never see them.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use herald_proto::{Subjects, HEADER_DEVICE, HEADER_EVENT, HEADER_MSG_ID};
use thiserror::Error;

use herald_proto::events::Receipt;

use super::{Audience, Bounds, Cursor, Read, Receipts, Store, StoreError};
use crate::bus::Outbound;
use crate::config::DurableConfig;
use crate::ids::UserId;

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

pub struct JetStream {
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

impl JetStream {
    /// Make sure the stream exists with this configuration (created or updated, safe when
    /// several pods start at once) and learn its epoch.
    pub async fn start(
        client: async_nats::Client,
        subjects: Subjects,
        config: DurableConfig,
    ) -> Result<JetStream, DurableError> {
        let mut js = jetstream::new(client);
        js.set_timeout(API_TIMEOUT);
        let durable = JetStream {
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

    fn known_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
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
        let info = self.ensure_one(&self.stream, self.wanted()).await?;
        self.epoch.store(epoch_of(&info), Ordering::Release);
        Ok(())
    }

    /// Create or update one stream (safe when several pods start at once).
    async fn ensure_one(
        &self,
        name: &str,
        wanted: stream::Config,
    ) -> Result<stream::Info, DurableError> {
        let info = match self.js.get_stream(name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(request)?.clone();
                if differs(&info.config, &wanted) {
                    tracing::info!(stream = %name, "updating the durable stream's configuration");
                    self.js
                        .update_stream(wanted)
                        .await
                        .map_err(|e| DurableError::Refused(name.to_string(), e.to_string()))?
                } else {
                    info
                }
            }
            Err(e) if is_not_found(&e) => match self.js.create_stream(wanted).await {
                Ok(mut s) => {
                    tracing::info!(stream = %name, "created the durable stream");
                    s.info().await.map_err(request)?.clone()
                }
                // Another pod created it at the same moment.
                Err(e) if e.to_string().contains("already in use") => {
                    let mut s = self.js.get_stream(name).await.map_err(request)?;
                    s.info().await.map_err(request)?.clone()
                }
                Err(e) => return Err(self.create_failed(name, e)),
            },
            Err(e) => return Err(unavailable_or(e)),
        };
        Ok(info)
    }

    /// A create that failed: JetStream missing, or the server refusing the settings.
    fn create_failed(&self, name: &str, e: jetstream::context::CreateStreamError) -> DurableError {
        match e.kind() {
            jetstream::context::CreateStreamErrorKind::JetStream(j)
                if j.error_code() != jetstream::ErrorCode::JETSTREAM_NOT_ENABLED
                    && j.error_code()
                        != jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                DurableError::Refused(name.to_string(), e.to_string())
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
}

#[async_trait::async_trait]
impl Store for JetStream {
    fn engine(&self) -> &'static str {
        "jetstream"
    }

    fn epoch(&self) -> u64 {
        self.known_epoch()
    }

    fn max_replay(&self) -> u64 {
        self.config.max_replay
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let (epoch, state) = self.state().await.map_err(StoreError::from)?;
        Ok(Bounds {
            epoch,
            first: state.first_sequence,
            last: state.last_sequence,
        })
    }

    async fn last_seq(&self, user: &UserId) -> Result<u64, StoreError> {
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
            Err(e) => Err(request(e).into()),
        }
    }

    async fn read(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Read, StoreError> {
        let s = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(request)?;
        let subject = self.subjects.user(user.as_str());
        let epoch = self.known_epoch();
        let mut read = Read::default();
        let mut next = after.saturating_add(1);
        loop {
            if upto.is_some_and(|u| next > u) {
                return Ok(read);
            }
            let Some(m) = next_on(&s, &subject, next).await? else {
                return Ok(read);
            };
            if upto.is_some_and(|u| m.sequence > u) {
                return Ok(read);
            }
            next = m.sequence.saturating_add(1);
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
            let msg_device = header(HEADER_DEVICE);
            if !audience.admits(msg_device.as_deref()) {
                continue;
            }
            if read.messages.len() >= limit {
                read.more = true;
                return Ok(read);
            }
            read.messages.push(super::stored_frame(
                epoch,
                m.sequence,
                header(HEADER_MSG_ID).as_deref(),
                header(HEADER_EVENT).as_deref(),
                msg_device,
                &m.payload,
            ));
        }
    }

    async fn publish(&self, msg: Outbound) -> Result<u64, StoreError> {
        Ok(js_publish(&self.js, msg.subject, &msg.headers, msg.payload).await?)
    }

    async fn keep_receipt(&self, receipt: &Receipt) -> Result<bool, StoreError> {
        // In the same stream (so it expires with the messages), on a subject of its own
        // under the user's: reads of the user's messages never see it.
        let payload =
            serde_json::to_vec(receipt).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let subject = self.subjects.kept_receipts(&receipt.user);
        js_publish(&self.js, subject, &[], payload.into()).await?;
        Ok(true)
    }

    async fn receipts(
        &self,
        user: &UserId,
        ids: &[&str],
        from_seq: u64,
    ) -> Result<Receipts, StoreError> {
        let s = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(request)?;
        // A receipt comes after its message: read from the first message asked about.
        let subject = self.subjects.kept_receipts(user.as_str());
        let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
        let mut out = Receipts::new();
        let mut next = from_seq.max(1);
        loop {
            let Some(m) = next_on(&s, &subject, next).await? else {
                return Ok(out);
            };
            next = m.sequence.saturating_add(1);
            if let Ok(r) = serde_json::from_slice::<Receipt>(&m.payload) {
                if r.user == user.as_str() && wanted.contains(r.id.as_str()) {
                    out.entry(r.id.clone()).or_default().push(r);
                }
            }
        }
    }
}

/// The first message on `subject` at or after sequence `from` (`MSG.GET next_by_subj`),
/// None when there is none.
async fn next_on(
    s: &stream::Stream<()>,
    subject: &str,
    from: u64,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, DurableError> {
    match s
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(subject.to_string())
        .send()
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(request(e)),
    }
}

impl From<DurableError> for StoreError {
    fn from(e: DurableError) -> StoreError {
        StoreError::Unavailable(e.to_string())
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
