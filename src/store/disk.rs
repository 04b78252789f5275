//! The disk engine (standalone with `--durable`): user messages kept in a redb database in
//! `--data-dir`, surviving restarts and SIGKILL.
//!
//! Sync policy: an append is answered only after the write transaction holding it has
//! committed with `Durability::Immediate` (fsync of the data and then of redb's commit
//! slot). One writer thread takes every append waiting at that moment into one
//! transaction (group commit), so the fsync is shared by concurrent publishes instead of
//! paid by each. What was answered survives a process kill and, on a disk that honours
//! fsync, a power loss; an unanswered append may or may not be kept, and is then kept
//! whole or not at all (redb's commit is atomic; after a crash it falls back to the last
//! whole commit, repairing its allocator state, which is logged).
//!
//! Tables: `messages` (sequence → [`record`](super::record) bytes), `by_user` ((user,
//! sequence) → ()) for per-user reads, and `meta` (the epoch, chosen when the database is
//! created, and the last sequence, so sequences never repeat after retention emptied the
//! store). redb locks the file: a second herald on the same directory is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

use super::embedded::{Appended, Dedup, Done, Log, NewRecord, Scan, DEDUP_WINDOW_MS};
use super::record::{self, Record};
use super::{Audience, StoreError};
use crate::ids::UserId;
use crate::metrics::Metrics;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BY_USER: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_user");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The database file inside `--data-dir`.
pub const FILE_NAME: &str = "herald.redb";
/// Most appends in one transaction.
const MAX_BATCH: usize = 4096;
/// Most expired records removed in one transaction, so a sweep never stalls appends long.
const MAX_TRIM: usize = 20_000;
/// redb's page cache (its default, 1 GiB, is far more than a hub should hold).
const CACHE_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("--data-dir {0}: no such directory (create it first)")]
    Missing(PathBuf),
    #[error("--data-dir {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("--data-dir {0}: cannot write there: {1}")]
    Unwritable(PathBuf, std::io::Error),
    #[error("--data-dir {0}: another herald holds this store (the database file is locked)")]
    Locked(PathBuf),
    #[error("--data-dir {0}: the store cannot be opened: {1}")]
    Database(PathBuf, String),
}

enum Command {
    Append(NewRecord, Done),
    Trim(u64),
}

pub struct DiskLog {
    epoch: u64,
    db: Arc<Database>,
    first: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    commands: mpsc::Sender<Command>,
}

/// What only the writer thread touches.
struct Writer {
    db: Arc<Database>,
    first: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    count: u64,
    dedup: Dedup,
    file: PathBuf,
    metrics: Arc<Metrics>,
}

impl DiskLog {
    /// Open (or create) the store in `dir`, which must exist and be writable.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<DiskLog, OpenError> {
        check_dir(dir)?;
        let file = dir.join(FILE_NAME);
        let started = Instant::now();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(|session| {
                tracing::warn!(
                    progress = format!("{:.0}%", session.progress() * 100.0),
                    "the store was not closed cleanly: recovering it to its last whole commit"
                );
            })
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked(dir.to_path_buf()),
                e => OpenError::Database(dir.to_path_buf(), e.to_string()),
            })?;
        let db = Arc::new(db);
        let fail = |e: redb::Error| OpenError::Database(dir.to_path_buf(), e.to_string());
        let (epoch, last, first, count, dedup) = init(&db).map_err(fail)?;
        tracing::info!(
            file = %file.display(),
            kept = count,
            first,
            last,
            took_ms = started.elapsed().as_millis() as u64,
            "disk store open"
        );
        metrics.store_messages.set(count as i64);
        let first = Arc::new(AtomicU64::new(first));
        let last = Arc::new(AtomicU64::new(last));
        let (commands, rx) = mpsc::channel();
        let mut writer = Writer {
            db: db.clone(),
            first: first.clone(),
            last: last.clone(),
            count,
            dedup,
            file,
            metrics,
        };
        writer.gauges();
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::Database(dir.to_path_buf(), e.to_string()))?;
        Ok(DiskLog {
            epoch,
            db,
            first,
            last,
            commands,
        })
    }
}

fn check_dir(dir: &Path) -> Result<(), OpenError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpenError::Missing(dir.to_path_buf()))
        }
        Err(e) => return Err(OpenError::Unwritable(dir.to_path_buf(), e)),
        Ok(m) if !m.is_dir() => return Err(OpenError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {}
    }
    // Permission bits do not tell (root, read-only mounts): try it.
    let probe = dir.join(".herald-write-check");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| OpenError::Unwritable(dir.to_path_buf(), e))
}

type Init = (u64, u64, u64, u64, Dedup);

/// Create the tables when new; read the epoch, the sequence range, the count, and the ids
/// of the de-duplication window.
fn init(db: &Database) -> Result<Init, redb::Error> {
    let txn = db.begin_write()?;
    let (epoch, last) = {
        let mut meta = txn.open_table(META)?;
        let known = meta.get("epoch")?.map(|v| v.value());
        let epoch = match known {
            Some(e) => e,
            None => {
                let e = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                    .unwrap_or(1)
                    .max(1);
                meta.insert("epoch", e)?;
                e
            }
        };
        let last = meta.get("last")?.map(|v| v.value()).unwrap_or(0);
        (epoch, last)
    };
    txn.open_table(BY_USER)?;
    let (first, count, dedup) = {
        let messages = txn.open_table(MESSAGES)?;
        let first = messages.first()?.map_or(last + 1, |(k, _)| k.value());
        let count = messages.len()?;
        let mut dedup = Dedup::default();
        let since = crate::clock::wall_ms().saturating_sub(DEDUP_WINDOW_MS);
        for entry in messages.range::<u64>(..)?.rev() {
            let (k, v) = entry?;
            match record::decode(k.value(), v.value()) {
                Ok(r) if r.at_ms < since => break,
                Ok(r) => {
                    if let Some(id) = &r.id {
                        dedup.insert(id, r.seq, r.at_ms);
                    }
                }
                Err(e) => {
                    tracing::warn!(seq = k.value(), error = %e, "a damaged record in the store is skipped")
                }
            }
        }
        (first, count, dedup)
    };
    txn.commit()?;
    Ok((epoch, last, first, count, dedup))
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        while let Ok(cmd) = rx.recv() {
            let mut appends = Vec::new();
            let mut trim = None;
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(r, d) => appends.push((r, d)),
                    Command::Trim(before) => trim = Some(before),
                }
                if appends.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write(appends, trim);
        }
    }

    fn write(&mut self, appends: Vec<(NewRecord, Done)>, trim: Option<u64>) {
        let started = Instant::now();
        match self.transaction(&appends, trim) {
            Ok(done) => {
                self.last.store(done.last, Ordering::Release);
                self.first.store(done.first, Ordering::Release);
                self.count = self.count + done.kept.len() as u64 - done.trimmed;
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
            }
            Err(e) => {
                let e = classify(e);
                tracing::warn!(error = %e, appends = appends.len(), "store write failed");
                for (_, reply) in appends {
                    reply(Err(same(&e)));
                }
            }
        }
    }

    fn transaction(
        &mut self,
        appends: &[(NewRecord, Done)],
        trim: Option<u64>,
    ) -> Result<Committed, redb::Error> {
        let txn = self.db.begin_write()?;
        let mut last = self.last.load(Ordering::Acquire);
        let mut kept = Vec::with_capacity(appends.len());
        let mut trimmed = 0u64;
        let first;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut by_user = txn.open_table(BY_USER)?;
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
                    None => by_user
                        .range((user, 0)..=(user, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map_or(0, |(k, _)| k.value().1),
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
                messages.insert(last, record::encode(&r).as_slice())?;
                by_user.insert((user, last), ())?;
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
            if let Some(before) = trim {
                let mut expired = Vec::new();
                for entry in messages.range::<u64>(..)? {
                    let (k, v) = entry?;
                    if expired.len() >= MAX_TRIM {
                        break;
                    }
                    match record::decode(k.value(), v.value()) {
                        Ok(r) if r.at_ms >= before => break,
                        Ok(r) => expired.push((r.seq, Some(r.user))),
                        // Unreadable: its user is unknown, so only the record goes.
                        Err(_) => expired.push((k.value(), None)),
                    }
                }
                for (seq, user) in expired {
                    messages.remove(seq)?;
                    if let Some(u) = user {
                        by_user.remove((u.as_str(), seq))?;
                    }
                    trimmed += 1;
                }
            }
            first = messages.first()?.map_or(last + 1, |(k, _)| k.value());
            txn.open_table(META)?.insert("last", last)?;
        }
        txn.commit()?;
        Ok(Committed {
            kept,
            last,
            first,
            trimmed,
        })
    }

    fn gauges(&self) {
        self.metrics.store_messages.set(self.count as i64);
        if let Ok(m) = std::fs::metadata(&self.file) {
            self.metrics.store_bytes.set(m.len() as i64);
        }
    }
}

struct Committed {
    kept: Vec<Appended>,
    last: u64,
    first: u64,
    trimmed: u64,
}

/// A write error as the client is told it: a full disk is `Full`.
fn classify(e: redb::Error) -> StoreError {
    let full = match &e {
        redb::Error::Io(io) => is_full(io),
        _ => false,
    };
    if full {
        StoreError::Full(format!("no space left on the disk of the store ({e})"))
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn is_full(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
}

fn same(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full(m) => StoreError::Full(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
    }
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
        let read = || -> Result<u64, redb::Error> {
            let txn = self.db.begin_read()?;
            let by_user = txn.open_table(BY_USER)?;
            let u = user.as_str();
            let last = by_user
                .range((u, 0)..=(u, u64::MAX))?
                .next_back()
                .transpose()?
                .map_or(0, |(k, _)| k.value().1);
            Ok(last)
        };
        read().map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn scan(
        &self,
        user: &UserId,
        after: u64,
        upto: Option<u64>,
        audience: Audience<'_>,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let read = || -> Result<Scan, redb::Error> {
            let txn = self.db.begin_read()?;
            let by_user = txn.open_table(BY_USER)?;
            let messages = txn.open_table(MESSAGES)?;
            let u = user.as_str();
            let Some(lo) = after.checked_add(1) else {
                return Ok((Vec::new(), false));
            };
            let hi = upto.unwrap_or(u64::MAX);
            if lo > hi {
                return Ok((Vec::new(), false));
            }
            let mut out = Vec::new();
            for entry in by_user.range((u, lo)..=(u, hi))? {
                let (k, _) = entry?;
                let seq = k.value().1;
                let Some(v) = messages.get(seq)? else {
                    continue;
                };
                let r = match record::decode(seq, v.value()) {
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
        };
        read().map_err(|e| StoreError::Unavailable(e.to_string()))
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
}
