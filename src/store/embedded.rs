//! What the two embedded engines (memory and disk) share: the [`Store`] they present, the
//! de-duplication of message ids, the live announcement of every kept message in sequence
//! order (the headers JetStream's RePublish would set), and the retention sweep.
//!
//! An engine is a [`Log`]: it assigns sequences, keeps records and answers reads. Its
//! `append` calls `done` in sequence order, and `done` hands the announcement to the
//! in-process bus right there, so they leave in that order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_proto::{Subjects, HEADER_DEVICE, HEADER_EVENT, HEADER_LAST_SEQUENCE, HEADER_MSG_ID};
use tokio::sync::oneshot;

use super::record::Record;
use super::{stored_frame, Audience, Bounds, Read, Receipts, Store, StoreError};
use herald_proto::events::Receipt;

use crate::bus::{Bus, Outbound};
use crate::ids::UserId;
use crate::metrics::Metrics;

/// How long a message id is remembered for de-duplication (JetStream's window).
pub const DEDUP_WINDOW_MS: u64 = 120_000;
/// Most ids remembered at once, so a flood of unique ids costs bounded memory.
pub const DEDUP_CAPACITY: usize = 100_000;
/// How often messages older than the retention are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A message to keep, before it has a sequence.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub user: UserId,
    pub at_ms: u64,
    pub id: Option<String>,
    pub event: Option<String>,
    pub device: Option<String>,
    pub payload: Bytes,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// The user's previous sequence (0 for the first).
    pub prev: u64,
    /// The id was kept before, within the window: `seq` is the first one's.
    pub duplicate: bool,
}

/// Called once an append is kept (or failed), in sequence order.
pub type Done = Box<dyn FnOnce(Result<Appended, StoreError>) + Send>;

/// Called once a receipt is kept (`true`) or found to acknowledge no kept message.
pub type ReceiptDone = Box<dyn FnOnce(Result<bool, StoreError>) + Send>;

/// One matching record of a scan, and whether more follow.
pub type Scan = (Vec<Record>, bool);

/// An embedded engine.
pub trait Log: Send + Sync + 'static {
    fn engine(&self) -> &'static str;
    fn epoch(&self) -> u64;
    /// The oldest kept sequence (last + 1 when empty) and the newest assigned.
    fn range(&self) -> (u64, u64);
    fn last_of(&self, user: &UserId) -> Result<u64, StoreError>;
    /// The user's records after `after` (up to `upto`) that `audience` admits, at most
    /// `limit`, and whether another follows.
    fn scan(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Scan, StoreError>;
    /// Keep `rec`; `done` is called once it is kept as the engine promises.
    fn append(&self, rec: NewRecord, done: Done);
    /// Drop the records kept before `before_ms`, with their receipts.
    fn trim(&self, before_ms: u64);
    /// Keep `receipt` beside its user's kept message `seq`, or when `None` the one with
    /// the receipt's id.
    fn keep_receipt(&self, receipt: Receipt, seq: Option<u64>, done: ReceiptDone);
    /// The kept receipts of the user's messages with these ids.
    fn receipts(&self, user: &UserId, ids: &[&str]) -> Result<Receipts, StoreError>;
}

/// Message ids kept within the window, and their sequences. Stream-wide, as JetStream's.
#[derive(Default)]
pub struct Dedup {
    seqs: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl Dedup {
    /// The sequence `id` was kept under within the window, if it was.
    pub fn get(&mut self, id: &str, now_ms: u64) -> Option<u64> {
        while let Some((t, _)) = self.order.front() {
            if now_ms.saturating_sub(*t) < DEDUP_WINDOW_MS && self.order.len() <= DEDUP_CAPACITY {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seqs.remove(&old);
            }
        }
        self.seqs.get(id).copied()
    }

    pub fn insert(&mut self, id: &str, seq: u64, at_ms: u64) {
        if self.seqs.insert(id.to_string(), seq).is_none() {
            self.order.push_back((at_ms, id.to_string()));
        }
    }
}

pub struct Embedded {
    log: Arc<dyn Log>,
    max_replay: u64,
    subjects: Subjects,
    live: Announcer,
    metrics: Arc<Metrics>,
}

/// Hands each kept message to the bus at once, on the thread that kept it: the engines
/// call back in sequence order (under the memory engine's lock, on the disk engine's
/// writer thread), so announcements leave in that order with no task hop in between.
#[derive(Clone)]
struct Announcer {
    bus: Arc<dyn Bus>,
}

impl Announcer {
    fn send(&self, msg: Outbound) {
        if let Err(e) = self.bus.publish_now(msg) {
            tracing::warn!(error = %e, "a kept message was not announced live");
        }
    }
}

impl Embedded {
    /// Present `log` as a store: announcements go out on `bus`, and records older than
    /// `retention` are swept every second. Call within the pod's runtime.
    pub fn start(
        log: Arc<dyn Log>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        retention: Duration,
        max_replay: u64,
        metrics: Arc<Metrics>,
    ) -> Embedded {
        let live = Announcer { bus };
        let sweep = log.clone();
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        actix::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sweep.trim(crate::clock::wall_ms().saturating_sub(retention_ms));
            }
        });
        Embedded {
            log,
            max_replay,
            subjects,
            live,
            metrics,
        }
    }
}

#[async_trait]
impl Store for Embedded {
    fn engine(&self) -> &'static str {
        self.log.engine()
    }

    fn epoch(&self) -> u64 {
        self.log.epoch()
    }

    fn max_replay(&self) -> u64 {
        self.max_replay
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let (first, last) = self.log.range();
        Ok(Bounds {
            epoch: self.log.epoch(),
            first,
            last,
        })
    }

    async fn last_seq(&self, user: &UserId) -> Result<u64, StoreError> {
        self.log.last_of(user)
    }

    async fn read(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Read, StoreError> {
        let (records, more) = self.log.scan(user, after, upto, audience, limit)?;
        let epoch = self.log.epoch();
        let messages = records
            .into_iter()
            .map(|r| {
                stored_frame(
                    epoch,
                    r.seq,
                    r.id.as_deref(),
                    r.event.as_deref(),
                    r.device,
                    &r.payload,
                )
            })
            .collect();
        Ok(Read { messages, more })
    }

    async fn publish(&self, msg: Outbound) -> Result<u64, StoreError> {
        let Some(user) = self
            .subjects
            .user_of(&msg.subject)
            .and_then(|u| UserId::parse(u).ok())
        else {
            return Err(StoreError::Unavailable(format!(
                "{} is not a user subject",
                msg.subject
            )));
        };
        let header = |name: &str| {
            msg.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let rec = NewRecord {
            user: user.clone(),
            at_ms: crate::clock::wall_ms(),
            id: header(HEADER_MSG_ID).filter(|i| !i.is_empty()),
            event: header(HEADER_EVENT),
            device: header(HEADER_DEVICE),
            payload: msg.payload,
        };
        let mut live = Outbound::new(self.subjects.live_user(user.as_str()), rec.payload.clone());
        live.headers = msg.headers;
        let (tx, rx) = oneshot::channel();
        let announce = self.live.clone();
        let metrics = self.metrics.clone();
        self.log.append(
            rec,
            Box::new(move |res| {
                match &res {
                    Ok(a) if !a.duplicate => {
                        live.headers
                            .push((herald_proto::HEADER_SEQUENCE.into(), a.seq.to_string()));
                        live.headers
                            .push((HEADER_LAST_SEQUENCE.into(), a.prev.to_string()));
                        announce.send(live);
                        metrics.store_appends.inc();
                    }
                    Ok(_) => {}
                    Err(_) => {
                        metrics.store_append_failures.inc();
                    }
                }
                let _ = tx.send(res);
            }),
        );
        match rx.await {
            Ok(res) => res.map(|a| a.seq),
            Err(_) => Err(StoreError::Unavailable("the store's writer stopped".into())),
        }
    }

    async fn keep_receipt(&self, receipt: &Receipt) -> Result<bool, StoreError> {
        let seq = super::cursor_seq(&receipt.id, self.log.epoch());
        let (tx, rx) = oneshot::channel();
        self.log.keep_receipt(
            receipt.clone(),
            seq,
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the store's writer stopped".into())))
    }

    async fn receipts(
        &self,
        user: &UserId,
        ids: &[&str],
        _from_seq: u64,
    ) -> Result<Receipts, StoreError> {
        self.log.receipts(user, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_within_the_window_only() {
        let mut d = Dedup::default();
        d.insert("a", 3, 1_000);
        assert_eq!(d.get("a", 2_000), Some(3));
        assert_eq!(d.get("b", 2_000), None);
        assert_eq!(d.get("a", 1_000 + DEDUP_WINDOW_MS), None);
    }
}
