//! The memory engine (standalone without `--durable`, the default): recent user messages
//! kept in this process for `--retention`, within `--history-memory` bytes; the oldest go
//! first. Its epoch is the process's start, so a cursor from before a restart is foreign.
//!
//! Records sit in one queue in sequence order with no holes (sequence `first + i` at
//! index `i`), and each user's sequences in a queue of its own; eviction always takes the
//! front of both. One std mutex guards it: every operation is short and never awaits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use herald_proto::events::Receipt;

use super::embedded::{Appended, Dedup, Done, Log, NewRecord, ReceiptDone, Scan};
use super::record::Record;
use super::{Audience, Receipts, StoreError};
use crate::ids::UserId;
use crate::metrics::Metrics;

pub struct MemoryLog {
    epoch: u64,
    cap_bytes: usize,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<Record>,
    /// The sequence of `records[0]` (last + 1 when empty).
    first: u64,
    last: u64,
    by_user: HashMap<String, VecDeque<u64>>,
    bytes: usize,
    dedup: Dedup,
    /// Kept message ids (`<user>/<id>`) to their sequences, for receipts.
    ids: HashMap<String, u64>,
    receipts: HashMap<u64, Vec<Receipt>>,
}

/// Bytes a kept receipt counts (its fields and its entry).
fn receipt_footprint(r: &Receipt) -> usize {
    96 + r.session.len()
        + r.pod.len()
        + r.status.len()
        + r.at.len()
        + r.device.as_ref().map_or(0, String::len)
}

fn id_key(user: &str, id: &str) -> String {
    format!("{user}/{id}")
}

impl MemoryLog {
    pub fn new(cap_bytes: usize, metrics: Arc<Metrics>) -> MemoryLog {
        MemoryLog {
            // Another process, started later, has another epoch.
            epoch: super::new_epoch(),
            cap_bytes,
            inner: Mutex::new(Inner {
                first: 1,
                ..Inner::default()
            }),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation completes
        // before the next can fail), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauges(&self, inner: &Inner) {
        self.metrics.store_messages.set(inner.records.len() as i64);
        self.metrics.store_bytes.set(inner.bytes as i64);
    }
}

impl Inner {
    fn pop_oldest(&mut self) -> bool {
        let Some(r) = self.records.pop_front() else {
            return false;
        };
        self.first = r.seq + 1;
        self.bytes = self.bytes.saturating_sub(r.footprint());
        if let Some(id) = &r.id {
            let key = id_key(&r.user, id);
            if self.ids.get(&key) == Some(&r.seq) {
                self.ids.remove(&key);
            }
        }
        if let Some(rs) = self.receipts.remove(&r.seq) {
            let freed: usize = rs.iter().map(receipt_footprint).sum();
            self.bytes = self.bytes.saturating_sub(freed);
        }
        if let Some(q) = self.by_user.get_mut(&r.user) {
            q.pop_front();
            if q.is_empty() {
                self.by_user.remove(&r.user);
            }
        }
        true
    }

    fn get(&self, seq: u64) -> Option<&Record> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.records.get(i)
    }
}

impl Log for MemoryLog {
    fn engine(&self) -> &'static str {
        "memory"
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn range(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.first, inner.last)
    }

    fn last_of(&self, user: &UserId) -> Result<u64, StoreError> {
        let inner = self.lock();
        Ok(inner
            .by_user
            .get(user.as_str())
            .and_then(|q| q.back().copied())
            .unwrap_or(0))
    }

    fn scan(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let inner = self.lock();
        let Some(seqs) = inner.by_user.get(user.as_str()) else {
            return Ok((Vec::new(), false));
        };
        let start = seqs.partition_point(|s| *s <= after);
        let mut out = Vec::new();
        for seq in seqs.range(start..) {
            if upto.is_some_and(|u| *seq > u) {
                break;
            }
            let Some(r) = inner.get(*seq) else { continue };
            if !audience.admits(r.device.as_deref()) {
                continue;
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
            out.push(r.clone());
        }
        Ok((out, false))
    }

    fn append(&self, rec: NewRecord, done: Done) {
        let mut inner = self.lock();
        if let Some(seq) = rec
            .id
            .as_deref()
            .and_then(|id| inner.dedup.get(id, rec.at_ms))
        {
            drop(inner);
            return done(Ok(Appended {
                seq,
                prev: 0,
                duplicate: true,
            }));
        }
        let seq = inner.last + 1;
        let record = Record {
            seq,
            at_ms: rec.at_ms,
            user: rec.user.as_str().to_string(),
            id: rec.id,
            event: rec.event,
            device: rec.device,
            payload: rec.payload,
        };
        let size = record.footprint();
        // The oldest go first, so the newest always fits (a record larger than the cap is
        // kept alone until the next one arrives).
        let mut evicted = 0u64;
        while inner.bytes + size > self.cap_bytes && inner.pop_oldest() {
            evicted += 1;
        }
        if let Some(id) = &record.id {
            inner.dedup.insert(id, seq, record.at_ms);
            inner.ids.insert(id_key(&record.user, id), seq);
        }
        let queue = inner.by_user.entry(record.user.clone()).or_default();
        let prev = queue.back().copied().unwrap_or(0);
        queue.push_back(seq);
        inner.records.push_back(record);
        inner.bytes += size;
        inner.last = seq;
        self.gauges(&inner);
        if evicted > 0 {
            self.metrics.store_evicted_memory.inc_by(evicted);
        }
        // Called under the lock, so announcements leave in sequence order.
        done(Ok(Appended {
            seq,
            prev,
            duplicate: false,
        }));
    }

    fn keep_receipt(&self, receipt: Receipt, seq: Option<u64>, done: ReceiptDone) {
        let mut inner = self.lock();
        let seq = seq
            .filter(|s| inner.get(*s).is_some_and(|r| r.user == receipt.user))
            .or_else(|| inner.ids.get(&id_key(&receipt.user, &receipt.id)).copied());
        let Some(seq) = seq.filter(|s| inner.get(*s).is_some()) else {
            drop(inner);
            return done(Ok(false));
        };
        let size = receipt_footprint(&receipt);
        // Receipts count against the cap like messages; the oldest messages make room.
        while inner.bytes + size > self.cap_bytes && inner.first < seq && inner.pop_oldest() {}
        inner.bytes += size;
        inner.receipts.entry(seq).or_default().push(receipt);
        self.gauges(&inner);
        drop(inner);
        done(Ok(true))
    }

    fn receipts(&self, user: &UserId, ids: &[&str]) -> Result<Receipts, StoreError> {
        let inner = self.lock();
        let mut out = Receipts::new();
        for id in ids {
            let seq = inner
                .ids
                .get(&id_key(user.as_str(), id))
                .copied()
                .or_else(|| super::cursor_seq(id, self.epoch));
            if let Some(rs) = seq.and_then(|s| inner.receipts.get(&s)) {
                out.insert((*id).to_string(), rs.clone());
            }
        }
        Ok(out)
    }

    fn trim(&self, before_ms: u64) {
        let mut inner = self.lock();
        let mut n = 0u64;
        while inner.records.front().is_some_and(|r| r.at_ms < before_ms) {
            inner.pop_oldest();
            n += 1;
        }
        if n > 0 {
            self.gauges(&inner);
            self.metrics.store_evicted_retention.inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(user: &str, at_ms: u64, payload: &'static [u8]) -> NewRecord {
        NewRecord {
            user: UserId::parse(user).expect("valid"),
            at_ms,
            id: None,
            event: None,
            device: None,
            payload: Bytes::from_static(payload),
        }
    }

    fn append(log: &MemoryLog, r: NewRecord) -> Appended {
        let (tx, rx) = std::sync::mpsc::channel();
        log.append(
            r,
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
        );
        rx.recv().expect("answered").expect("kept")
    }

    #[test]
    fn the_cap_evicts_the_oldest_and_the_index_follows() {
        let log = MemoryLog::new(1_000, Arc::new(Metrics::new()));
        let u1 = UserId::parse("u1").expect("valid");
        for i in 0..20 {
            let a = append(
                &log,
                rec(if i % 2 == 0 { "u1" } else { "u2" }, i, b"0123456789"),
            );
            assert_eq!(a.seq, i + 1);
        }
        let (first, last) = log.range();
        assert_eq!(last, 20);
        assert!(first > 1, "something was evicted");
        let (kept, more) = log.scan(&u1, 0, None, Audience::All, 100).expect("scan");
        assert!(!more);
        assert!(kept.iter().all(|r| r.seq >= first && r.user == "u1"));
        assert_eq!(kept.last().map(|r| r.seq), Some(19));
        log.trim(u64::MAX);
        assert_eq!(log.range(), (21, 20));
        assert_eq!(log.last_of(&u1).expect("last"), 0);
    }
}
