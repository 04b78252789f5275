//! The disk engine (standalone with `--durable`): user messages kept in a fjall database
//! (a log-structured store: a journal of write batches, then sorted tables) in
//! `--data-dir`, surviving restarts and SIGKILL.
//!
//! Sync policy (`--disk-sync`): an append is answered only after the write batch holding it
//! is in the journal and the journal was synced as configured: `full` (fsync, the
//! default) or `data` (fdatasync) survive a power loss on a disk that honours them; `os`
//! hands the batch to the OS only, which survives a process kill but not a power loss or
//! an OS crash. One writer thread takes every append waiting at that moment into one
//! batch (group commit), so a sync is shared by concurrent publishes instead of paid by
//! each. A batch is recovered whole or not at all; after a crash the journal is cut back
//! to its last whole batch (a torn or damaged tail is dropped), which is logged.
//!
//! Keyspaces: `messages` (sequence, big endian → [`record`](super::record) bytes),
//! `by_user` (`<user>/<sequence>` → empty; `/` is not in a user id, so one user's keys
//! are one prefix), `meta` (the epoch, chosen when the store is created; the first and
//! last sequence, so sequences never repeat after retention emptied the store), and for
//! delivery receipts `ids` (`<user>/<message id>` → sequence) and `receipts` (sequence +
//! a counter → the receipt's JSON), removed with their message. The
//! database directory is locked: a second herald on the same directory is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use thiserror::Error;

use herald_proto::events::Receipt;

use super::embedded::{Appended, Dedup, Done, Log, NewRecord, ReceiptDone, Scan, DEDUP_WINDOW_MS};
use super::record::{self, Record};
use super::{Audience, Receipts, StoreError};
use crate::config::DiskSync;
use crate::ids::UserId;
use crate::metrics::Metrics;

/// The database's directory inside `--data-dir`.
pub const DB_DIR: &str = "messages";
/// Most appends in one batch.
const MAX_BATCH: usize = 4096;
/// Most expired records removed in one batch, so a sweep never stalls appends long.
const MAX_TRIM: usize = 20_000;
/// fjall's block cache.
const CACHE_BYTES: u64 = 32 << 20;
/// Writes held in memory per keyspace before they go to a table (fjall's default is 64 MiB
/// each): bounds the store's share of herald's memory.
const MEMTABLE_BYTES: u64 = 8 << 20;
/// Journal kept before fjall flushes it into tables (its default is 512 MiB): bounds the
/// disk used beside the kept messages and the replay after a crash.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("--data-dir {0}: no such directory (create it first)")]
    Missing(PathBuf),
    #[error("--data-dir {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("--data-dir {0}: cannot write there: {1}")]
    Unwritable(PathBuf, std::io::Error),
    #[error("--data-dir {0}: another herald holds this store (its lock is taken)")]
    Locked(PathBuf),
    #[error("--data-dir {0}: the store cannot be opened: {1}")]
    Database(PathBuf, String),
}

enum Command {
    Append(NewRecord, Done),
    Trim(u64),
    Receipt(Receipt, Option<u64>, ReceiptDone),
}

/// A receipt waiting in a write batch.
type PendingReceipt = (Receipt, Option<u64>, ReceiptDone);

/// The three keyspaces.
#[derive(Clone)]
struct Spaces {
    messages: Keyspace,
    by_user: Keyspace,
    meta: Keyspace,
    /// `<user>/<message id>` → sequence, for receipts.
    ids: Keyspace,
    /// sequence (big endian) + n (big endian u32) → receipt JSON.
    receipts: Keyspace,
}

pub struct DiskLog {
    epoch: u64,
    spaces: Spaces,
    first: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    commands: mpsc::Sender<Command>,
}

/// What only the writer thread touches.
struct Writer {
    db: Database,
    spaces: Spaces,
    sync: PersistMode,
    first: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    dedup: Dedup,
    /// The store refuses writes after a failed one (it cannot tell what reached the
    /// disk); why, so every later answer says the same.
    failed: Option<StoreError>,
    path: PathBuf,
    /// When the size on disk was last measured (it walks the directory).
    measured: Option<Instant>,
    metrics: Arc<Metrics>,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn user_key(user: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 9);
    k.extend_from_slice(user.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn id_key(user: &str, id: &str) -> Vec<u8> {
    format!("{user}/{id}").into_bytes()
}

fn receipt_key(seq: u64, n: u32) -> Vec<u8> {
    let mut k = seq.to_be_bytes().to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn meta_get(meta: &Keyspace, name: &str) -> fjall::Result<Option<u64>> {
    Ok(meta.get(name)?.as_deref().and_then(seq_of))
}

fn persist_mode(sync: DiskSync) -> PersistMode {
    match sync {
        DiskSync::Full => PersistMode::SyncAll,
        DiskSync::Data => PersistMode::SyncData,
        DiskSync::Os => PersistMode::Buffer,
    }
}

impl DiskLog {
    /// Open (or create) the store in `dir`, which must exist and be writable.
    pub fn open(dir: &Path, sync: DiskSync, metrics: Arc<Metrics>) -> Result<DiskLog, OpenError> {
        check_dir(dir)?;
        let path = dir.join(DB_DIR);
        let journal_before = journal_bytes(&path);
        let started = Instant::now();
        let fail = |e: fjall::Error| match e {
            fjall::Error::Locked => OpenError::Locked(dir.to_path_buf()),
            e => OpenError::Database(dir.to_path_buf(), e.to_string()),
        };
        let db = Database::builder(&path)
            .cache_size(CACHE_BYTES)
            .worker_threads(1)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()
            .map_err(fail)?;
        let journal_after = journal_bytes(&path);
        // The journal is preallocated; recovery cuts it back to its last whole batch, so it
        // shrinks exactly when the store was not closed (a crash, a kill) and its tail,
        // damaged or partly written batches included, was recovered.
        if journal_after < journal_before {
            tracing::warn!(
                dir = %dir.display(),
                journal_bytes_kept = journal_after,
                "the store was not closed cleanly: its journal was recovered to the last whole batch (a damaged or partly written tail is dropped)"
            );
        }
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let open = |name: &str| db.keyspace(name, options).map_err(fail);
        let spaces = Spaces {
            messages: open("messages")?,
            by_user: open("by_user")?,
            meta: open("meta")?,
            ids: open("ids")?,
            receipts: open("receipts")?,
        };
        let (epoch, first, last, dedup) = init(&db, &spaces, sync).map_err(fail)?;
        tracing::info!(
            dir = %path.display(),
            kept = last + 1 - first,
            first,
            last,
            took_ms = started.elapsed().as_millis() as u64,
            "disk store open"
        );
        let first = Arc::new(AtomicU64::new(first));
        let last = Arc::new(AtomicU64::new(last));
        let (commands, rx) = mpsc::channel();
        let mut writer = Writer {
            db,
            spaces: spaces.clone(),
            sync: persist_mode(sync),
            first: first.clone(),
            last: last.clone(),
            dedup,
            failed: None,
            path: path.clone(),
            measured: None,
            metrics,
        };
        writer.gauges();
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::Database(dir.to_path_buf(), e.to_string()))?;
        Ok(DiskLog {
            epoch,
            spaces,
            first,
            last,
            commands,
        })
    }
}

/// How often the store's size on disk is measured at most.
const MEASURE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes the files under `dir` take on disk: allocated blocks, not lengths (the journal is
/// preallocated, and its unwritten part takes no space).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Bytes in the database's journal files (`<n>.jnl` in its directory).
fn journal_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jnl"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn check_dir(dir: &Path) -> Result<(), OpenError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpenError::Missing(dir.to_path_buf()))
        }
        Err(e) => return Err(OpenError::Unwritable(dir.to_path_buf(), e)),
        Ok(m) if !m.is_dir() => return Err(OpenError::NotADirectory(dir.to_path_buf())),
        // Root writes through missing write bits: a directory made read-only is refused
        // all the same, as it would be for anyone else.
        Ok(m) if m.permissions().readonly() => {
            return Err(OpenError::Unwritable(
                dir.to_path_buf(),
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the directory has no write permission",
                ),
            ))
        }
        Ok(_) => {}
    }
    // Permission bits do not tell (root, read-only mounts): try it.
    let probe = dir.join(".herald-write-check");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| OpenError::Unwritable(dir.to_path_buf(), e))
}

/// The epoch (written when new), the sequence range, and the ids of the de-duplication
/// window.
fn init(db: &Database, s: &Spaces, sync: DiskSync) -> fjall::Result<(u64, u64, u64, Dedup)> {
    let epoch = match meta_get(&s.meta, "epoch")? {
        Some(e) => e,
        None => {
            let e = super::new_epoch();
            let mut b = db.batch().durability(Some(persist_mode(sync)));
            b.insert(&s.meta, "epoch", seq_key(e).to_vec());
            b.commit()?;
            e
        }
    };
    let last = meta_get(&s.meta, "last")?.unwrap_or(0);
    let first = meta_get(&s.meta, "first")?.unwrap_or(1).min(last + 1);
    let mut dedup = Dedup::default();
    let since = crate::clock::wall_ms().saturating_sub(DEDUP_WINDOW_MS);
    for entry in s.messages.range(seq_key(first)..).rev() {
        let (k, v) = entry.into_inner()?;
        let Some(seq) = seq_of(&k) else { continue };
        match record::decode(seq, &v) {
            Ok(r) if r.at_ms < since => break,
            Ok(r) => {
                if let Some(id) = &r.id {
                    dedup.insert(id, r.seq, r.at_ms);
                }
            }
            Err(e) => tracing::warn!(seq, error = %e, "a damaged record in the store is skipped"),
        }
    }
    Ok((epoch, first, last, dedup))
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        while let Ok(cmd) = rx.recv() {
            let mut appends = Vec::new();
            let mut receipts = Vec::new();
            let mut trim = None;
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(r, d) => appends.push((r, d)),
                    Command::Trim(before) => trim = Some(before),
                    Command::Receipt(r, seq, d) => receipts.push((r, seq, d)),
                }
                if appends.len() + receipts.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write(appends, receipts, trim);
        }
    }

    fn write(
        &mut self,
        appends: Vec<(NewRecord, Done)>,
        receipts: Vec<PendingReceipt>,
        trim: Option<u64>,
    ) {
        if let Some(e) = &self.failed {
            for (_, reply) in appends {
                reply(Err(e.clone()));
            }
            for (_, _, reply) in receipts {
                reply(Err(e.clone()));
            }
            return;
        }
        let started = Instant::now();
        match self.batch(&appends, &receipts, trim) {
            Ok(done) => {
                self.last.store(done.last, Ordering::Release);
                self.first.store(done.first, Ordering::Release);
                if done.trimmed > 0 {
                    self.metrics.store_evicted_retention.inc_by(done.trimmed);
                    tracing::debug!(removed = done.trimmed, "expired messages removed");
                }
                self.gauges();
                self.metrics
                    .store_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                for ((rec, reply), a) in appends.into_iter().zip(done.kept) {
                    if let (Some(id), false) = (&rec.id, a.duplicate) {
                        self.dedup.insert(id, a.seq, rec.at_ms);
                    }
                    reply(Ok(a));
                }
                for ((_, _, reply), kept) in receipts.into_iter().zip(done.receipts) {
                    reply(Ok(kept));
                }
            }
            Err(e) => {
                let e = classify(e);
                tracing::error!(error = %e, appends = appends.len(), "store write failed; publishes are refused until herald restarts");
                for (_, reply) in appends {
                    reply(Err(e.clone()));
                }
                for (_, _, reply) in receipts {
                    reply(Err(e.clone()));
                }
                self.failed = Some(e);
            }
        }
    }

    fn batch(
        &mut self,
        appends: &[(NewRecord, Done)],
        receipts: &[PendingReceipt],
        trim: Option<u64>,
    ) -> fjall::Result<Committed> {
        let s = &self.spaces;
        let mut batch = self.db.batch().durability(Some(self.sync));
        let mut last = self.last.load(Ordering::Acquire);
        let mut first = self.first.load(Ordering::Acquire);
        let mut kept = Vec::with_capacity(appends.len());
        let mut users: HashMap<&str, u64> = HashMap::new();
        let mut batch_ids: HashMap<&str, u64> = HashMap::new();
        for (rec, _) in appends {
            let dup = rec.id.as_deref().and_then(|id| {
                batch_ids
                    .get(id)
                    .copied()
                    .or_else(|| self.dedup.get(id, rec.at_ms))
            });
            if let Some(seq) = dup {
                kept.push(Appended {
                    seq,
                    prev: 0,
                    duplicate: true,
                });
                continue;
            }
            let user = rec.user.as_str();
            let prev = match users.get(user) {
                Some(p) => *p,
                None => last_of(&s.by_user, user)?,
            };
            last += 1;
            let r = Record {
                seq: last,
                at_ms: rec.at_ms,
                user: user.to_string(),
                id: rec.id.clone(),
                event: rec.event.clone(),
                device: rec.device.clone(),
                payload: rec.payload.clone(),
            };
            batch.insert(&s.messages, seq_key(last).to_vec(), record::encode(&r));
            batch.insert(&s.by_user, user_key(user, last), Vec::new());
            if let Some(id) = rec.id.as_deref() {
                batch.insert(&s.ids, id_key(user, id), seq_key(last).to_vec());
            }
            users.insert(user, last);
            if let Some(id) = rec.id.as_deref() {
                batch_ids.insert(id, last);
            }
            kept.push(Appended {
                seq: last,
                prev,
                duplicate: false,
            });
        }
        let mut kept_receipts = Vec::with_capacity(receipts.len());
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for (r, seq, _) in receipts {
            let found = match seq {
                Some(seq) => s
                    .by_user
                    .contains_key(user_key(&r.user, *seq))?
                    .then_some(*seq),
                None => match s.ids.get(id_key(&r.user, &r.id))? {
                    Some(v) => seq_of(&v),
                    None => batch_ids.get(r.id.as_str()).copied(),
                },
            };
            let Some(seq) = found.filter(|s| *s >= first) else {
                kept_receipts.push(false);
                continue;
            };
            let n = match counts.get(&seq) {
                Some(n) => *n,
                None => u32::try_from(s.receipts.prefix(seq_key(seq)).count()).unwrap_or(u32::MAX),
            };
            counts.insert(seq, n.saturating_add(1));
            let json = serde_json::to_vec(r).unwrap_or_default();
            batch.insert(&s.receipts, receipt_key(seq, n), json);
            kept_receipts.push(true);
        }
        let mut trimmed = 0u64;
        if let Some(before) = trim {
            // From the known first: the tombstones of earlier sweeps are not walked again.
            for entry in s.messages.range(seq_key(first)..) {
                if trimmed as usize >= MAX_TRIM {
                    break;
                }
                let (k, v) = entry.into_inner()?;
                let Some(seq) = seq_of(&k) else { continue };
                if seq > last {
                    break;
                }
                match record::decode(seq, &v) {
                    Ok(r) if r.at_ms >= before => break,
                    Ok(r) => {
                        batch.remove(&s.by_user, user_key(&r.user, seq));
                        if let Some(id) = &r.id {
                            batch.remove(&s.ids, id_key(&r.user, id));
                        }
                    }
                    // Unreadable: its user is unknown, so only the record goes.
                    Err(_) => {}
                }
                for g in s.receipts.prefix(seq_key(seq)) {
                    batch.remove(&s.receipts, g.key()?.to_vec());
                }
                batch.remove(&s.messages, k.to_vec());
                first = seq + 1;
                trimmed += 1;
            }
        }
        first = first.min(last + 1);
        batch.insert(&s.meta, "last", seq_key(last).to_vec());
        batch.insert(&s.meta, "first", seq_key(first).to_vec());
        batch.commit()?;
        Ok(Committed {
            kept,
            receipts: kept_receipts,
            last,
            first,
            trimmed,
        })
    }

    fn gauges(&mut self) {
        let first = self.first.load(Ordering::Acquire);
        let last = self.last.load(Ordering::Acquire);
        self.metrics
            .store_messages
            .set(i64::try_from((last + 1).saturating_sub(first)).unwrap_or(i64::MAX));
        if self
            .measured
            .is_none_or(|t| t.elapsed() >= MEASURE_INTERVAL)
        {
            self.measured = Some(Instant::now());
            let bytes = allocated_bytes(&self.path);
            self.metrics
                .store_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

struct Committed {
    kept: Vec<Appended>,
    receipts: Vec<bool>,
    last: u64,
    first: u64,
    trimmed: u64,
}

fn last_of(by_user: &Keyspace, user: &str) -> fjall::Result<u64> {
    let mut prefix = user.as_bytes().to_vec();
    prefix.push(b'/');
    match by_user.prefix(&prefix).next_back() {
        Some(g) => Ok(seq_of(&g.key()?).unwrap_or(0)),
        None => Ok(0),
    }
}

/// A write error as the client is told it: a full disk is `Full`.
fn classify(e: fjall::Error) -> StoreError {
    let full = match &e {
        fjall::Error::Io(io) => is_full(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => is_full(io),
        _ => false,
    };
    if full {
        StoreError::Full(format!("no space left on the disk of the store ({e})"))
    } else {
        StoreError::Unavailable(format!("the store's write failed ({e})"))
    }
}

fn is_full(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
}

fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("the store's read failed ({e})"))
}

impl Log for DiskLog {
    fn engine(&self) -> &'static str {
        "disk"
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn range(&self) -> (u64, u64) {
        (
            self.first.load(Ordering::Acquire),
            self.last.load(Ordering::Acquire),
        )
    }

    fn last_of(&self, user: &UserId) -> Result<u64, StoreError> {
        last_of(&self.spaces.by_user, user.as_str()).map_err(unavailable)
    }

    fn scan(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let Some(lo) = after.checked_add(1) else {
            return Ok((Vec::new(), false));
        };
        let hi = upto.unwrap_or(u64::MAX);
        if lo > hi {
            return Ok((Vec::new(), false));
        }
        let u = user.as_str();
        let mut out = Vec::new();
        let range = self.spaces.by_user.range(user_key(u, lo)..=user_key(u, hi));
        for entry in range {
            let key = entry.key().map_err(unavailable)?;
            let Some(seq) = seq_of(&key) else { continue };
            let Some(v) = self
                .spaces
                .messages
                .get(seq_key(seq))
                .map_err(unavailable)?
            else {
                continue;
            };
            let r = match record::decode(seq, &v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(seq, error = %e, "a damaged record in the store is skipped");
                    continue;
                }
            };
            if !audience.admits(r.device.as_deref()) {
                continue;
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
            out.push(r);
        }
        Ok((out, false))
    }

    fn append(&self, rec: NewRecord, done: Done) {
        if let Err(mpsc::SendError(Command::Append(_, done))) =
            self.commands.send(Command::Append(rec, done))
        {
            done(Err(StoreError::Unavailable(
                "the store's writer stopped".into(),
            )));
        }
    }

    fn trim(&self, before_ms: u64) {
        let _ = self.commands.send(Command::Trim(before_ms));
    }

    fn keep_receipt(&self, receipt: Receipt, seq: Option<u64>, done: ReceiptDone) {
        if let Err(mpsc::SendError(Command::Receipt(_, _, done))) =
            self.commands.send(Command::Receipt(receipt, seq, done))
        {
            done(Err(StoreError::Unavailable(
                "the store's writer stopped".into(),
            )));
        }
    }

    fn receipts(&self, user: &UserId, ids: &[&str]) -> Result<Receipts, StoreError> {
        let mut out = Receipts::new();
        for id in ids {
            let seq = match self
                .spaces
                .ids
                .get(id_key(user.as_str(), id))
                .map_err(unavailable)?
            {
                Some(v) => seq_of(&v),
                None => super::cursor_seq(id, self.epoch),
            };
            let Some(seq) = seq else { continue };
            let mut found = Vec::new();
            for g in self.spaces.receipts.prefix(seq_key(seq)) {
                let v = g.value().map_err(unavailable)?;
                match serde_json::from_slice::<Receipt>(&v) {
                    Ok(r) if r.user == user.as_str() => found.push(r),
                    _ => {}
                }
            }
            if !found.is_empty() {
                out.insert((*id).to_string(), found);
            }
        }
        Ok(out)
    }
}
