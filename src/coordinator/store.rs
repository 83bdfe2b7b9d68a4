//! Durable desired state of the fleet: models, node flags and the event log.
//! redb (a single file in the data dir) by default, or etcd (`etcd.rs`)
//! for several coordinators with one leader.
//!
//! The store never takes a damaged file for a new fleet: an existing file
//! that is empty, truncated or fails redb's integrity check is refused with
//! a line naming it and what to do (restore a snapshot or a backup). Each
//! record carries a checksum; a record that fails it is reported, never
//! silently used. After an I/O error (a full disk) the database is opened
//! again at the next write, so the coordinator recovers once space returns.

mod backup;
mod demand;
pub mod etcd;
mod record;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::api::Event;

use super::predict::DemandHistory;

pub use backup::{backup, restore, snapshot, verify, BackupSummary};
pub use record::RecordProblem;

const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");
const NODE_FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_flags");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Demand history: chunks under `<model>/fine/<hour>` and
/// `<model>/coarse/<day>` (`demand.rs`), and, in a store written before
/// chunking, a model's whole history under `<model>` until its next save.
/// One table for both, so the upgrade and a backup need nothing of their own.
const DEMAND: TableDefinition<&str, &[u8]> = TableDefinition::new("demand");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const ASSIGNMENT_KEY: &str = "assignment-hmac-sha256";

/// The store's file in the data dir.
pub const STORE_FILE: &str = "gpufleet.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason}")]
    Open { path: String, reason: String },
    /// The file exists but cannot be the fleet's state.
    #[error(
        "the store {path} is damaged: {reason}; the coordinator will not start from it. {advice}"
    )]
    Damaged {
        path: String,
        reason: String,
        advice: String,
    },
    #[error(
        "the store {path} is in use by another process (a running coordinator?); stop it first"
    )]
    InUse { path: String },
    #[error("the disk holding the store {path} is full: {op} refused until space is freed (the store reopens by itself then)")]
    DiskFull { path: String, op: &'static str },
    #[error("store {op} failed: {reason}")]
    Io { op: &'static str, reason: String },
    #[error("store record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// An etcd store's write under an epoch that is no longer the leader's.
    #[error("store write refused: {why}")]
    Fenced { why: String },
    #[error("store write refused: {key} would be {bytes} bytes, over the limit of {limit}; nothing was written")]
    TooLarge {
        key: String,
        bytes: usize,
        limit: usize,
    },
    #[error("store write refused: {why}; nothing was written")]
    QuotaFull { why: String },
}

/// A model as the operator applied it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    /// The spec as applied, verbatim: re-parsed on load so the stored form
    /// can never drift from what the operator wrote.
    pub spec_toml: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    /// `model scale --replicas N` pins the count until `--auto`.
    pub pinned_replicas: Option<u32>,
}

/// A row of a table: its key, and its value or why it cannot be read.
type Row<T> = (String, Result<T, String>);

/// A stored record that could not be loaded: its key and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DamagedRecord {
    pub key: String,
    pub reason: String,
}

/// Operator flags on a node; they outlive the node's sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFlags {
    pub cordoned: bool,
    pub draining: bool,
    /// Unix ms by which a drain must be finished.
    pub drain_deadline_unix_ms: i64,
    /// Models the operator asked to keep warm here (`warm start`).
    #[serde(default)]
    pub warm: Vec<String>,
    /// Models the operator asked to drop from the page cache (`warm evict`).
    #[serde(default)]
    pub evict: Vec<String>,
}

pub trait Store: Send {
    /// Every model record; those that fail to load come back as
    /// `Err(DamagedRecord)` so the fleet can quarantine them by name.
    fn load_models(&self) -> Result<Vec<Result<ModelRecord, DamagedRecord>>, StoreError>;
    fn put_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    fn delete_model(&self, name: &str) -> Result<(), StoreError>;
    fn load_node_flags(&self) -> Result<Vec<(String, NodeFlags)>, StoreError>;
    fn put_node_flags(&self, node: &str, flags: &NodeFlags) -> Result<(), StoreError>;
    /// Several nodes' flags at once (the nodes first seen since the last
    /// tick): one durable write, not one per node.
    fn put_many_node_flags(&self, nodes: &[(String, NodeFlags)]) -> Result<(), StoreError> {
        nodes
            .iter()
            .try_for_each(|(node, flags)| self.put_node_flags(node, flags))
    }
    /// Appends events, dropping the oldest beyond `capacity`.
    fn append_events(&self, events: &[Event], capacity: usize) -> Result<(), StoreError>;
    /// The newest `limit` events, oldest first.
    fn load_events(&self, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Each model's demand history, for prediction across restarts.
    fn load_demand(&self) -> Result<Vec<(String, DemandHistory)>, StoreError>;
    fn put_demand(&self, model: &str, history: &DemandHistory) -> Result<(), StoreError>;
    /// Several models' demand histories at once (a tick's share of them).
    fn put_many_demand(&self, histories: &[(&str, &DemandHistory)]) -> Result<(), StoreError> {
        histories
            .iter()
            .try_for_each(|(model, history)| self.put_demand(model, history))
    }
    fn delete_demand(&self, model: &str) -> Result<(), StoreError>;
    /// The key that signs assignment tokens: made (32 random bytes) and kept
    /// on first use, the same ever after, so a restarted coordinator can
    /// check the tokens its predecessor handed out.
    fn assignment_key(&self) -> Result<Vec<u8>, StoreError>;
    /// Why the store cannot write now (a full disk), if it cannot.
    fn degraded(&self) -> Option<String> {
        None
    }
    /// A consistent copy of the whole store, as a file `coordinator
    /// restore` takes, made while the coordinator runs.
    fn backup(&self) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Io {
            op: "backup",
            reason: "this store backend has no online backup".into(),
        })
    }
}

/// How the database is (re)opened: the file, or a test's failing backend.
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send>;

pub struct RedbStore {
    path: PathBuf,
    open: Opener,
    /// None after an I/O error closed it; the next operation reopens it.
    db: Mutex<Option<Database>>,
    /// Why writes fail now (None while they work), for `/healthz`.
    degraded: tokio::sync::watch::Sender<Option<String>>,
    /// What each model's demand chunks hold in the file, so a save writes
    /// only the chunks that changed.
    demand_written: Mutex<demand::Written>,
    /// Demand chunks and their bytes written since the store opened.
    demand_chunks_put: std::sync::atomic::AtomicU64,
    demand_bytes_put: std::sync::atomic::AtomicU64,
}

/// Runs redb code that may panic on a damaged file, turning the panic into
/// an error. The panic hook is silenced meanwhile (one line, not a
/// backtrace); the lock keeps concurrent callers from swapping hooks under
/// each other.
fn without_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match result {
        Ok(r) => Ok(r),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown cause");
            Err(format!("redb failed reading it ({what})"))
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}

/// A failed store operation, classified: a full disk and a poisoned
/// database close the database so the next operation opens it again.
enum Fail {
    DiskFull,
    Reopen(String),
    Other(String),
}

fn classify(e: &redb::StorageError) -> Fail {
    match e {
        redb::StorageError::Io(io) if is_disk_full(io) => Fail::DiskFull,
        redb::StorageError::PreviousIo => Fail::Reopen(e.to_string()),
        other => Fail::Other(other.to_string()),
    }
}

macro_rules! fail_from {
    ($($t:ident),* $(,)?) => {$(
        impl From<redb::$t> for Fail {
            fn from(e: redb::$t) -> Fail {
                match e {
                    redb::$t::Storage(s) => classify(&s),
                    other => Fail::Other(other.to_string()),
                }
            }
        }
    )*};
}

fail_from!(TransactionError, TableError, CommitError, DatabaseError);

impl From<redb::StorageError> for Fail {
    fn from(e: redb::StorageError) -> Fail {
        classify(&e)
    }
}

impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Fail {
        Fail::Other(e.to_string())
    }
}

/// Why an existing file could not be opened as the store.
enum OpenProblem {
    InUse,
    Damaged(String),
    Other(String),
}

fn open_problem(e: redb::DatabaseError) -> OpenProblem {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenProblem::InUse,
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if !matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            OpenProblem::Other(io.to_string())
        }
        other => OpenProblem::Damaged(other.to_string()),
    }
}

impl RedbStore {
    /// Opens (or, when there is none yet, creates) `DIR/gpufleet.redb`.
    /// An existing file is opened only if it passes redb's integrity check
    /// and every record can be read.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let path = data_dir.join(STORE_FILE);
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        backup::check_before_open(data_dir, &path)?;
        let file = path.clone();
        RedbStore::open_with(path, Box::new(move || Database::create(&file)))
    }

    /// Opens the store through `open` (tests pass a backend that can fail).
    fn open_with(path: PathBuf, open: Opener) -> Result<RedbStore, StoreError> {
        let shown = path.display().to_string();
        let data_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let verified = without_panics(|| {
            let mut db = open().map_err(open_problem)?;
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    path = %shown,
                    "the store failed redb's integrity check and was repaired to its last consistent commit"
                ),
                // A page whose checksum fails may hold nothing but a
                // record's bytes: read on, and let each record's own
                // checksum say which model to quarantine. Damage to the
                // tree itself fails the full read below.
                Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(why))) => {
                    tracing::warn!(path = %shown, "redb's integrity check of the store failed ({why}); verifying every record");
                    drop(db);
                    db = open().map_err(open_problem)?;
                }
                Err(e) => return Err(open_problem(e)),
            }
            prepare(&db).map_err(OpenProblem::Damaged)?;
            Ok(db)
        });
        let damaged = |reason: String| StoreError::Damaged {
            path: shown.clone(),
            reason,
            advice: backup::advice(&data_dir),
        };
        let db = match verified {
            Err(panic) => return Err(damaged(panic)),
            Ok(Err(OpenProblem::InUse)) => return Err(StoreError::InUse { path: shown }),
            Ok(Err(OpenProblem::Damaged(reason))) => return Err(damaged(reason)),
            Ok(Err(OpenProblem::Other(reason))) => {
                return Err(StoreError::Open {
                    path: shown,
                    reason,
                })
            }
            Ok(Ok(db)) => db,
        };
        Ok(RedbStore {
            path,
            open,
            db: Mutex::new(Some(db)),
            degraded: tokio::sync::watch::Sender::new(None),
            demand_written: Mutex::new(demand::Written::default()),
            demand_chunks_put: Default::default(),
            demand_bytes_put: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Demand chunks written since the store opened, and their bytes.
    #[cfg(test)]
    fn demand_put(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.demand_chunks_put.load(Relaxed),
            self.demand_bytes_put.load(Relaxed),
        )
    }

    /// Follows whether the store can write: None, or why not.
    pub fn health(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.degraded.subscribe()
    }

    fn set_degraded(&self, why: Option<String>) {
        self.degraded.send_if_modified(|now| {
            let changed = *now != why;
            *now = why;
            changed
        });
    }

    /// Runs `f` on the database, opening it first if an I/O error closed
    /// it. A full disk or a poisoned database closes it again and marks the
    /// store degraded; a write that succeeds clears that.
    fn with_db<T>(
        &self,
        op: &'static str,
        write: bool,
        f: impl FnOnce(&Database) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &*db {
            Some(open) => std::panic::catch_unwind(AssertUnwindSafe(|| f(open)))
                .unwrap_or_else(|_| Err(Fail::Reopen("redb panicked".into()))),
            None => match (self.open)() {
                Ok(reopened) => {
                    tracing::info!(path = %self.path.display(), "store reopened");
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(&reopened)))
                        .unwrap_or_else(|_| Err(Fail::Reopen("redb panicked".into())));
                    *db = Some(reopened);
                    r
                }
                Err(e) => Err(Fail::from(e)),
            },
        };
        let was_degraded = self.degraded.borrow().is_some();
        match result {
            Ok(v) => {
                if write && was_degraded {
                    tracing::info!(path = %self.path.display(), "store writes work again");
                    self.set_degraded(None);
                }
                Ok(v)
            }
            Err(Fail::DiskFull) => {
                *db = None;
                let e = StoreError::DiskFull {
                    path: self.path.display().to_string(),
                    op,
                };
                if !was_degraded {
                    tracing::error!("{e}");
                }
                self.set_degraded(Some(format!("disk full ({})", self.path.display())));
                Err(e)
            }
            Err(Fail::Reopen(reason)) => {
                *db = None;
                tracing::error!(path = %self.path.display(), "store {op} failed: {reason}; reopening it at the next write");
                self.set_degraded(Some(format!("I/O error: {reason}")));
                Err(StoreError::Io { op, reason })
            }
            Err(Fail::Other(reason)) => Err(StoreError::Io { op, reason }),
        }
    }

    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.with_db("write", true, |db| {
            let bytes = record::encode(&serde_json::to_vec(value)?);
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(table)?;
                t.insert(key, bytes.as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreError> {
        self.with_db("write", true, |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(table)?;
                t.remove(key)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Every row of a table, each decoded or with the reason it cannot be.
    fn load_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<Row<T>>, StoreError> {
        self.with_db("read", false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(table)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_string(), decode_json(v.value())));
            }
            Ok(out)
        })
    }

    /// Copies every table into a new database at `dest`, which must not
    /// exist: a consistent copy, since it is read in one transaction.
    pub fn copy_to(&self, dest: &Path) -> Result<(), StoreError> {
        let io = |reason: String| StoreError::Io {
            op: "copy",
            reason: format!("{}: {reason}", dest.display()),
        };
        if dest.exists() {
            return Err(io("already exists; choose a new file name".into()));
        }
        let target = Database::create(dest).map_err(|e| io(e.to_string()))?;
        self.with_db("copy", false, |db| {
            let from = db.begin_read()?;
            let to = target.begin_write()?;
            for table in [MODELS, NODE_FLAGS, DEMAND, SECRETS] {
                let src = from.open_table(table)?;
                let mut dst = to.open_table(table)?;
                for row in src.iter()? {
                    let (k, v) = row?;
                    dst.insert(k.value(), v.value())?;
                }
            }
            let src = from.open_table(EVENTS)?;
            let mut dst = to.open_table(EVENTS)?;
            for row in src.iter()? {
                let (k, v) = row?;
                dst.insert(k.value(), v.value())?;
            }
            drop(dst);
            to.commit()?;
            Ok(())
        })
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(stored: &[u8]) -> Result<T, String> {
    let decoded = record::decode(stored).map_err(|p| p.to_string())?;
    serde_json::from_slice(decoded.payload()).map_err(|e| format!("it does not parse: {e}"))
}

/// Creates the tables (so readers never meet a missing one), reads every
/// row once (a damaged page fails here, at start, not in the middle of a
/// tick) and gives records from before checksums their checksum.
fn prepare(db: &Database) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let tx = db.begin_write().map_err(|e| s(&e))?;
    {
        for table in [MODELS, NODE_FLAGS, DEMAND] {
            let mut t = tx.open_table(table).map_err(|e| s(&e))?;
            let mut legacy = Vec::new();
            for row in t.iter().map_err(|e| s(&e))? {
                let (k, v) = row.map_err(|e| s(&e))?;
                if let Ok(record::Decoded::Legacy(p)) = record::decode(v.value()) {
                    legacy.push((k.value().to_string(), record::encode(p)));
                }
            }
            for (k, v) in legacy {
                t.insert(k.as_str(), v.as_slice()).map_err(|e| s(&e))?;
            }
        }
        tx.open_table(SECRETS).map_err(|e| s(&e))?;
        let mut t = tx.open_table(EVENTS).map_err(|e| s(&e))?;
        let mut legacy = Vec::new();
        for row in t.iter().map_err(|e| s(&e))? {
            let (k, v) = row.map_err(|e| s(&e))?;
            if let Ok(record::Decoded::Legacy(p)) = record::decode(v.value()) {
                legacy.push((k.value(), record::encode(p)));
            }
        }
        for (k, v) in legacy {
            t.insert(k, v.as_slice()).map_err(|e| s(&e))?;
        }
    }
    tx.commit().map_err(|e| s(&e))
}

impl Store for RedbStore {
    fn load_models(&self) -> Result<Vec<Result<ModelRecord, DamagedRecord>>, StoreError> {
        Ok(model_records(self.load_json::<ModelRecord>(MODELS)?))
    }

    fn put_model(&self, model: &ModelRecord) -> Result<(), StoreError> {
        self.put_json(MODELS, &model.name, model)
    }

    fn delete_model(&self, name: &str) -> Result<(), StoreError> {
        self.remove(MODELS, name)
    }

    fn load_node_flags(&self) -> Result<Vec<(String, NodeFlags)>, StoreError> {
        Ok(usable("node flags", self.load_json(NODE_FLAGS)?))
    }

    fn put_node_flags(&self, node: &str, flags: &NodeFlags) -> Result<(), StoreError> {
        self.put_json(NODE_FLAGS, node, flags)
    }

    fn put_many_node_flags(&self, nodes: &[(String, NodeFlags)]) -> Result<(), StoreError> {
        if nodes.is_empty() {
            return Ok(());
        }
        self.with_db("write", true, |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(NODE_FLAGS)?;
                for (node, flags) in nodes {
                    let bytes = record::encode(&serde_json::to_vec(flags)?);
                    t.insert(node.as_str(), bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn append_events(&self, events: &[Event], capacity: usize) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.with_db("write", true, |db| {
            let mut tx = db.begin_write()?;
            // Events are history, not desired state: losing the last second
            // of them in a power cut is acceptable, an fsync per tick is not.
            tx.set_durability(redb::Durability::Eventual);
            {
                let mut t = tx.open_table(EVENTS)?;
                for e in events {
                    let bytes = record::encode(&serde_json::to_vec(e)?);
                    t.insert(e.seq, bytes.as_slice())?;
                }
                let len = t.len()? as usize;
                for _ in capacity..len {
                    if t.pop_first()?.is_none() {
                        break;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn load_demand(&self) -> Result<Vec<(String, DemandHistory)>, StoreError> {
        let rows = self.with_db("read", false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(DEMAND)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        let (histories, written) = demand::load(rows);
        *self
            .demand_written
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = written;
        Ok(histories)
    }

    fn put_demand(&self, model: &str, history: &DemandHistory) -> Result<(), StoreError> {
        self.put_many_demand(&[(model, history)])
    }

    /// Only the chunks that changed are written, the ones the histories no
    /// longer have deleted, all in one durable transaction. A model whose
    /// stored chunks are not known yet (saved before `load_demand`, or
    /// kept whole by an older coordinator) has them read first, and its
    /// whole record is replaced by chunks.
    fn put_many_demand(&self, histories: &[(&str, &DemandHistory)]) -> Result<(), StoreError> {
        if histories.is_empty() {
            return Ok(());
        }
        let chunks: Vec<(&str, demand::Chunks)> = histories
            .iter()
            .map(|(model, history)| (*model, demand::Chunks::of(history)))
            .collect();
        let mut written = self
            .demand_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (puts, bytes) = self.with_db("write", true, |db| {
            let tx = db.begin_write()?;
            let (mut puts, mut bytes) = (0u64, 0u64);
            let mut deletes = 0;
            {
                let mut t = tx.open_table(DEMAND)?;
                let mut read = demand::Written::default();
                for (model, now) in &chunks {
                    let known = if written.knows(model) {
                        &*written
                    } else {
                        read.know(model);
                        let (from, to) = demand::key_range(model);
                        for row in t.range(from.as_str()..to.as_str())? {
                            let (k, v) = row?;
                            if let Some((_, suffix)) = demand::split(k.value()) {
                                read.note_record(model, suffix, v.value());
                            }
                        }
                        deletes += u64::from(t.remove(*model)?.is_some());
                        &read
                    };
                    let changes = known.changes(model, now);
                    for suffix in &changes.put {
                        let stored = now.record(suffix).map_err(Fail::Other)?;
                        t.insert(demand::key(model, suffix).as_str(), stored.as_slice())?;
                        puts += 1;
                        bytes += stored.len() as u64;
                    }
                    for suffix in &changes.delete {
                        t.remove(demand::key(model, suffix).as_str())?;
                        deletes += 1;
                    }
                }
            }
            if puts + deletes == 0 {
                // Nothing changed: no commit, so no fsync either.
                tx.abort()?;
            } else {
                tx.commit()?;
            }
            Ok((puts, bytes))
        })?;
        for (model, now) in &chunks {
            written.saved(model, now);
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.demand_chunks_put.fetch_add(puts, Relaxed);
        self.demand_bytes_put.fetch_add(bytes, Relaxed);
        Ok(())
    }

    fn delete_demand(&self, model: &str) -> Result<(), StoreError> {
        let mut written = self
            .demand_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.with_db("write", true, |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(DEMAND)?;
                let (from, to) = demand::key_range(model);
                t.retain_in(from.as_str()..to.as_str(), |_, _| false)?;
                t.remove(model)?;
            }
            tx.commit()?;
            Ok(())
        })?;
        written.forget(model);
        Ok(())
    }

    fn assignment_key(&self) -> Result<Vec<u8>, StoreError> {
        // Kept raw (32 bytes, no record envelope): a changed key only makes
        // the tokens it signed fail, which adoption treats as unsigned.
        let stored = self.with_db("write", true, |db| {
            let tx = db.begin_write()?;
            let stored = {
                let mut t = tx.open_table(SECRETS)?;
                let stored = t.get(ASSIGNMENT_KEY)?.map(|v| v.value().to_vec());
                match stored {
                    Some(key) => Err(key),
                    None => {
                        let key: [u8; 32] = rand::random();
                        t.insert(ASSIGNMENT_KEY, key.as_slice())?;
                        Ok(key.to_vec())
                    }
                }
            };
            tx.commit()?;
            Ok(stored)
        })?;
        match stored {
            Ok(new) => Ok(new),
            Err(key) if key.len() == 32 => Ok(key),
            Err(key) => Err(StoreError::Corrupt {
                key: format!("secrets/{ASSIGNMENT_KEY}"),
                reason: format!("{} bytes, expected 32", key.len()),
            }),
        }
    }

    fn load_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let rows = self.with_db("read", false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(EVENTS)?;
            let mut out = Vec::new();
            for row in t.iter()?.rev().take(limit) {
                let (k, v) = row?;
                out.push((k.value(), decode_json::<Event>(v.value())));
            }
            Ok(out)
        })?;
        let mut out: Vec<Event> = rows
            .into_iter()
            .filter_map(|(seq, e)| {
                e.map_err(|why| tracing::warn!("stored event {seq} skipped: {why}"))
                    .ok()
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    fn degraded(&self) -> Option<String> {
        self.degraded.borrow().clone()
    }

    /// Copied (in one read transaction) to a scratch file beside the store,
    /// read back and removed: redb writes a database only to a file.
    fn backup(&self) -> Result<Vec<u8>, StoreError> {
        static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = self
            .path
            .with_file_name(format!(".backup-{}-{n}.redb", std::process::id()));
        let _ = std::fs::remove_file(&scratch);
        let copied = self.copy_to(&scratch).and_then(|()| {
            std::fs::read(&scratch).map_err(|e| StoreError::Io {
                op: "backup",
                reason: format!("{}: {e}", scratch.display()),
            })
        });
        let _ = std::fs::remove_file(&scratch);
        copied
    }
}

/// Model rows as the fleet loads them: a record must name the key it is
/// stored under.
fn model_records(rows: Vec<Row<ModelRecord>>) -> Vec<Result<ModelRecord, DamagedRecord>> {
    rows.into_iter()
        .map(|(key, r)| match r {
            Ok(m) if m.name == key => Ok(m),
            Ok(m) => Err(DamagedRecord {
                reason: format!("it is stored under `{key}` but names `{}`", m.name),
                key,
            }),
            Err(reason) => Err(DamagedRecord { key, reason }),
        })
        .collect()
}

/// The rows that load; the others are named in the log and left out (node
/// flags and demand history are not worth refusing to start over).
fn usable<T>(what: &str, rows: Vec<Row<T>>) -> Vec<(String, T)> {
    rows.into_iter()
        .filter_map(|(key, r)| match r {
            Ok(v) => Some((key, v)),
            Err(why) => {
                tracing::error!(key = %key, "stored {what} of `{key}` ignored: {why}");
                None
            }
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            spec_toml: format!("name = \"{name}\""),
            created_unix_ms: 1,
            updated_unix_ms: 2,
            pinned_replicas: Some(3),
        }
    }

    #[test]
    fn models_and_flags_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put_model(&model("a")).unwrap();
            s.put_model(&model("b")).unwrap();
            s.delete_model("a").unwrap();
            s.put_node_flags(
                "gpu-1",
                &NodeFlags {
                    cordoned: true,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.load_models().unwrap(), vec![Ok(model("b"))]);
        let flags = s.load_node_flags().unwrap();
        assert_eq!(flags.len(), 1);
        assert!(flags[0].1.cordoned);
    }

    #[test]
    fn demand_history_survives_reopen_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = DemandHistory::new();
        h.record(1_700_000_000, 12.0, 3.0, 0.0);
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put_demand("m", &h).unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let loaded = s.load_demand().unwrap();
        assert_eq!(loaded.len(), 1);
        let f = loaded[0].1.forecast(1_700_000_010, 60);
        assert!(f.expected_ongoing > 0.0, "{f:?}");
        s.delete_demand("m").unwrap();
        assert!(s.load_demand().unwrap().is_empty());
    }

    /// A history with `hours` of demand recorded every 10 s from `from`.
    pub(super) fn recorded(from: i64, hours: i64) -> DemandHistory {
        let mut h = DemandHistory::new();
        for t in (0..hours * 3600).step_by(10) {
            h.record(from + t, 1.0 + (t % 7) as f64, 2.0, 0.0);
        }
        h
    }

    /// An hour-aligned time, so a history's chunks are easy to count.
    const T0: i64 = 1_699_920_000;

    /// The demand table's keys, in order.
    fn demand_keys(s: &RedbStore) -> Vec<String> {
        s.with_db("read", false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(DEMAND)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                out.push(row?.0.value().to_string());
            }
            Ok(out)
        })
        .unwrap()
    }

    /// The demand histories of the store in `dir`, opened afresh.
    fn reloaded(dir: &Path) -> Vec<(String, DemandHistory)> {
        RedbStore::open(dir).unwrap().load_demand().unwrap()
    }

    /// Writes `history` whole under `model`, as stores before chunking did.
    fn put_whole(s: &RedbStore, model: &str, history: &DemandHistory) {
        s.put_json(DEMAND, model, history).unwrap();
    }

    #[test]
    fn a_day_old_history_is_stored_in_chunks_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let h = recorded(T0, 26);
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put_many_demand(&[("llama", &h), ("mistral-7b", &recorded(T0, 1))])
                .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let loaded = s.load_demand().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0], ("llama".to_string(), h.clone()));
        let keys = demand_keys(&s);
        let llama: Vec<&String> = keys.iter().filter(|k| k.starts_with("llama/")).collect();
        // A day of fine buckets (24 hours), two days of coarse ones.
        assert_eq!(
            llama
                .iter()
                .filter(|k| k.starts_with("llama/fine/"))
                .count(),
            24
        );
        assert_eq!(
            llama
                .iter()
                .filter(|k| k.starts_with("llama/coarse/"))
                .count(),
            2
        );
        assert_eq!(keys.len(), llama.len() + 2, "{keys:?}");
        // Saving what was loaded writes nothing: the store knows its chunks.
        s.put_demand("llama", &h).unwrap();
        assert_eq!(s.demand_put(), (0, 0));
    }

    #[test]
    fn a_second_save_writes_only_the_chunks_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let mut h = recorded(T0, 5);
        s.put_many_demand(&[("m", &h)]).unwrap();
        let (chunks, bytes) = s.demand_put();
        assert_eq!(chunks, 5 + 1, "five hours of fine buckets, a day of coarse");
        let before = demand_keys(&s);

        h.record(T0 + 5 * 3600 - 5, 9.0, 9.0, 0.0);
        s.put_many_demand(&[("m", &h)]).unwrap();
        let (chunks2, bytes2) = s.demand_put();
        assert_eq!(chunks2 - chunks, 2, "the last hour's chunk and the day's");
        assert!(
            (bytes2 - bytes) * 2 < bytes,
            "{} of {bytes} bytes rewritten",
            bytes2 - bytes
        );
        assert_eq!(demand_keys(&s), before);

        s.put_demand("m", &h).unwrap();
        assert_eq!(s.demand_put(), (chunks2, bytes2), "nothing changed");
        drop(s);
        assert_eq!(reloaded(dir.path()), vec![("m".to_string(), h)]);
    }

    #[test]
    fn chunks_that_aged_out_of_the_history_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let mut h = recorded(T0, 3);
        s.put_demand("m", &h).unwrap();
        let first_hour = format!("m/fine/{T0}");
        assert!(demand_keys(&s).contains(&first_hour));
        // A day and more later: the first hours' fine buckets are reused.
        for t in (3 * 3600..27 * 3600).step_by(10) {
            h.record(T0 + t, 1.0, 1.0, 0.0);
        }
        s.put_demand("m", &h).unwrap();
        let keys = demand_keys(&s);
        assert!(!keys.contains(&first_hour), "{keys:?}");
        assert_eq!(
            keys.iter().filter(|k| k.starts_with("m/fine/")).count(),
            24,
            "{keys:?}"
        );
        drop(s);
        assert_eq!(reloaded(dir.path()), vec![("m".to_string(), h)]);
    }

    #[test]
    fn a_whole_history_from_before_chunks_is_read_and_converted_at_its_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let (old, older) = (recorded(T0, 3), recorded(T0, 2));
        {
            let s = RedbStore::open(dir.path()).unwrap();
            put_whole(&s, "m", &old);
            put_whole(&s, "n", &older);
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            s.load_demand().unwrap(),
            vec![
                ("m".to_string(), old.clone()),
                ("n".to_string(), older.clone())
            ]
        );
        let mut newer = old.clone();
        newer.record(T0 + 3 * 3600, 4.0, 4.0, 0.0);
        s.put_many_demand(&[("m", &newer)]).unwrap();
        let keys = demand_keys(&s);
        assert!(!keys.contains(&"m".to_string()), "{keys:?}");
        assert!(keys.contains(&"n".to_string()), "not saved yet: {keys:?}");
        assert_eq!(keys.iter().filter(|k| k.starts_with("m/")).count(), 4 + 1);
        drop(s);

        // Saved by a coordinator that has not loaded the store: the whole
        // record is still replaced, not left beside the chunks.
        let s = RedbStore::open(dir.path()).unwrap();
        s.put_demand("n", &older).unwrap();
        assert!(!demand_keys(&s).contains(&"n".to_string()));
        assert_eq!(
            s.load_demand().unwrap(),
            vec![("m".to_string(), newer), ("n".to_string(), older)]
        );
    }

    #[test]
    fn deleting_a_history_removes_its_chunks_and_whole_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let h = recorded(T0, 3);
        // `m-2` sorts just before `m/`: a neighbour, not a chunk of `m`.
        s.put_many_demand(&[("m", &h), ("m-2", &h), ("m0", &h)])
            .unwrap();
        put_whole(&s, "m", &h);
        s.delete_demand("m").unwrap();
        let keys = demand_keys(&s);
        assert!(
            keys.iter().all(|k| !k.starts_with("m/") && k != "m"),
            "{keys:?}"
        );
        let names: Vec<String> = s
            .load_demand()
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(names, vec!["m-2", "m0"]);
        // Saved again after its deletion: all of it is written.
        s.put_demand("m", &h).unwrap();
        assert_eq!(s.load_demand().unwrap().len(), 3);
    }

    #[test]
    fn a_restored_backup_holds_the_demand_histories() {
        let data = tempfile::tempdir().unwrap();
        let h = recorded(T0, 26);
        let old = recorded(T0, 2);
        {
            let s = RedbStore::open(data.path()).unwrap();
            s.put_demand("m", &h).unwrap();
            put_whole(&s, "old", &old);
        }
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("fleet.backup");
        backup(data.path(), &file).unwrap();
        let other = tempfile::tempdir().unwrap();
        restore(other.path(), &file).unwrap();
        let s = RedbStore::open(other.path()).unwrap();
        assert_eq!(
            s.load_demand().unwrap(),
            vec![("m".to_string(), h), ("old".to_string(), old)]
        );
    }

    /// Bytes and time a save of one model's history takes, whole (as
    /// before chunking: one record) and in chunks, by the history's age, over
    /// an hour of saves once a minute: a benchmark, not a test
    /// (docs/scale.md). `cargo test --release --lib demand_save_bytes --
    /// --ignored --nocapture`
    #[test]
    #[ignore]
    fn demand_save_bytes_by_history_age() {
        for (age, hours) in [("an hour", 1), ("a day", 25), ("two weeks", 14 * 24 + 1)] {
            let (whole_dir, chunked_dir) =
                (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let whole = RedbStore::open(whole_dir.path()).unwrap();
            let chunked = RedbStore::open(chunked_dir.path()).unwrap();
            let mut h = DemandHistory::new();
            let mut now = T0;
            let tick = |h: &mut DemandHistory, now: &mut i64, seconds: i64| {
                for _ in 0..seconds {
                    h.record(*now, 3.0 + (*now % 13) as f64, 5.0, 0.0);
                    *now += 1;
                }
            };
            tick(&mut h, &mut now, hours * 3600 - 3600);
            chunked.put_demand("m", &h).unwrap();
            let (chunks_before, bytes_before) = chunked.demand_put();
            let (mut whole_bytes, mut whole_s, mut chunked_s) = (0, 0.0, 0.0);
            for _ in 0..60 {
                tick(&mut h, &mut now, 60);
                let t = std::time::Instant::now();
                whole.put_json(DEMAND, "m", &h).unwrap();
                whole_s += t.elapsed().as_secs_f64();
                whole_bytes += record::encode(&serde_json::to_vec(&h).unwrap()).len();
                let t = std::time::Instant::now();
                chunked.put_demand("m", &h).unwrap();
                chunked_s += t.elapsed().as_secs_f64();
            }
            let (chunks_after, bytes_after) = chunked.demand_put();
            println!(
                "history {age} old, a save: whole {} KB in {:.1} ms; chunked {:.1} chunks, {} KB in {:.1} ms",
                whole_bytes / 60 / 1000,
                whole_s * 1000.0 / 60.0,
                (chunks_after - chunks_before) as f64 / 60.0,
                (bytes_after - bytes_before) / 60 / 1000,
                chunked_s * 1000.0 / 60.0,
            );
        }
    }

    #[test]
    fn the_assignment_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = RedbStore::open(dir.path())
            .unwrap()
            .assignment_key()
            .unwrap();
        assert_eq!(first.len(), 32);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.assignment_key().unwrap(), first);
        assert_eq!(s.assignment_key().unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            RedbStore::open(other.path())
                .unwrap()
                .assignment_key()
                .unwrap(),
            first,
            "each store has its own key"
        );
    }

    #[test]
    fn event_log_is_bounded_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        s.append_events(&events(10), 4).unwrap();
        let loaded = s.load_events(100).unwrap();
        let seqs: Vec<u64> = loaded.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10]);
        assert_eq!(s.load_events(2).unwrap()[0].seq, 9);
    }

    /// Events 1..=n, with some text each to fill pages.
    fn events(n: u64) -> Vec<Event> {
        (1..=n)
            .map(|seq| Event {
                seq,
                message: format!("event number {seq} with some text to fill pages"),
                ..Default::default()
            })
            .collect()
    }

    /// A store with a model, flags and events, closed; its file's path.
    fn populated(dir: &Path) -> PathBuf {
        let s = RedbStore::open(dir).unwrap();
        let mut m = model("llama");
        m.spec_toml = "name = \"llama\"\nreplicas = 1\n".into();
        s.put_model(&m).unwrap();
        s.put_node_flags("gpu-1", &NodeFlags::default()).unwrap();
        s.append_events(&events(300), 1000).unwrap();
        s.path().to_path_buf()
    }

    #[test]
    fn a_truncated_store_is_refused_with_one_line_naming_it() {
        let src = tempfile::tempdir().unwrap();
        let file = populated(src.path());
        let len = std::fs::metadata(&file).unwrap().len();
        for cut in [512, len / 2, len.saturating_sub(4096)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(STORE_FILE);
            std::fs::copy(&file, &path).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let e = match RedbStore::open(dir.path()) {
                Ok(_) => panic!("a store cut to {cut} of {len} bytes opened"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("is damaged"), "{e}");
            assert!(e.contains("gpufleet coordinator restore"), "{e}");
            assert!(!e.contains('\n'), "{e}");
            // Refused, not replaced: the damaged file is still there as it was.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), cut);
        }
    }

    #[test]
    fn an_empty_store_file_is_never_taken_for_a_new_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        std::fs::write(&path, b"").unwrap();
        let e = RedbStore::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("is empty (0 bytes)"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_record_edited_in_place_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = populated(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes
            .windows(12)
            .position(|w| w == b"replicas = 1")
            .expect("the spec is stored as written");
        bytes[at + 11] = b'9';
        std::fs::write(&file, &bytes).unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let models = s.load_models().unwrap();
        assert_eq!(models.len(), 1);
        let damaged = models[0].clone().unwrap_err();
        assert_eq!(damaged.key, "llama");
        assert!(damaged.reason.contains("checksum"), "{damaged:?}");
    }

    #[test]
    fn records_from_before_checksums_are_read_and_given_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(MODELS).unwrap();
                let json = serde_json::to_vec(&model("old")).unwrap();
                t.insert("old", json.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.load_models().unwrap(), vec![Ok(model("old"))]);
        drop(s);
        let db = Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(MODELS).unwrap();
        let stored = t.get("old").unwrap().unwrap();
        assert!(matches!(
            record::decode(stored.value()),
            Ok(record::Decoded::Checked(_))
        ));
    }

    /// A disk that can be filled and freed: writes fail with ENOSPC while
    /// `full` is set.
    #[derive(Debug)]
    struct FillableDisk {
        file: redb::backends::FileBackend,
        full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl FillableDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(())
            }
        }
    }

    impl redb::StorageBackend for FillableDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            self.file.read(offset, len)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
    }

    #[test]
    fn a_full_disk_degrades_the_store_and_it_recovers_when_freed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opener: Opener = {
            let (path, full) = (path.clone(), full.clone());
            Box::new(move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| redb::DatabaseError::Storage(e.into()))?;
                redb::Builder::new().create_with_backend(FillableDisk {
                    file: redb::backends::FileBackend::new(file)?,
                    full: full.clone(),
                })
            })
        };
        let s = RedbStore::open_with(path, opener).unwrap();
        s.put_model(&model("a")).unwrap();
        assert_eq!(s.degraded(), None);

        full.store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            let e = s.put_model(&model("b")).unwrap_err().to_string();
            assert!(e.contains("disk") && e.contains("is full"), "{e}");
        }
        assert!(s.degraded().unwrap().contains("disk full"));

        full.store(false, std::sync::atomic::Ordering::SeqCst);
        s.put_model(&model("b")).unwrap();
        assert_eq!(s.degraded(), None);
        let names: Vec<String> = s
            .load_models()
            .unwrap()
            .into_iter()
            .map(|m| m.unwrap().name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }

    /// A populated store (data dir), and a backup of it (dir, file, summary).
    fn backed_up() -> (tempfile::TempDir, tempfile::TempDir, PathBuf, BackupSummary) {
        let data = tempfile::tempdir().unwrap();
        populated(data.path());
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("fleet.backup");
        let summary = backup(data.path(), &file).unwrap();
        (data, out, file, summary)
    }

    #[test]
    fn backup_and_restore_round_trip_and_keep_what_they_replace() {
        let (data, out, file, summary) = backed_up();
        assert_eq!(
            summary,
            BackupSummary {
                models: 1,
                nodes: 1,
                events: 300
            }
        );
        assert!(backup(data.path(), &file)
            .unwrap_err()
            .to_string()
            .contains("already exists"));

        // The store is lost (truncated); restore brings the fleet back.
        let path = data.path().join(STORE_FILE);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(restore(data.path(), &file).unwrap(), summary);
        let s = RedbStore::open(data.path()).unwrap();
        assert_eq!(s.load_models().unwrap().len(), 1);
        drop(s);
        let kept: Vec<String> = std::fs::read_dir(data.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.iter().any(|n| n.starts_with("before-restore-")),
            "{kept:?}"
        );

        // A damaged backup is refused and changes nothing.
        let bad = out.path().join("bad.backup");
        std::fs::write(&bad, vec![7u8; 8192]).unwrap();
        let e = restore(data.path(), &bad).unwrap_err().to_string();
        assert!(e.contains("bad.backup") && e.contains("is damaged"), "{e}");
        assert_eq!(
            RedbStore::open(data.path())
                .unwrap()
                .load_models()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn restore_refuses_while_the_store_is_open() {
        let (data, out, file, _) = backed_up();
        let running = RedbStore::open(data.path()).unwrap();
        let e = restore(data.path(), &file).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        let e = backup(data.path(), &out.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use"), "{e}");
        drop(running);
    }

    #[test]
    fn snapshots_keep_the_newest_and_a_missing_store_is_not_a_new_fleet() {
        let data = tempfile::tempdir().unwrap();
        populated(data.path());
        for _ in 0..4 {
            let s = RedbStore::open(data.path()).unwrap();
            snapshot(&s, data.path(), 2).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let snaps = backup::snapshots(data.path());
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        std::fs::remove_file(data.path().join(STORE_FILE)).unwrap();
        let e = RedbStore::open(data.path()).err().unwrap().to_string();
        assert!(e.contains("is missing"), "{e}");
        assert!(
            e.contains(&snaps[1].display().to_string()),
            "names the newest snapshot: {e}"
        );
        restore(data.path(), &snaps[1]).unwrap();
        assert_eq!(
            RedbStore::open(data.path())
                .unwrap()
                .load_models()
                .unwrap()
                .len(),
            1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

        /// Bytes flipped anywhere in the file: the store opens or is refused,
        /// never panics, and never loses the model without a word.
        #[test]
        fn a_store_damaged_anywhere_never_panics_or_silently_drops_a_model(
            flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 1..8),
        ) {
            let src = tempfile::tempdir().unwrap();
            let file = populated(src.path());
            let mut bytes = std::fs::read(&file).unwrap();
            for (at, x) in &flips {
                let i = ((bytes.len() as f64) * at) as usize % bytes.len();
                bytes[i] ^= x;
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(STORE_FILE), &bytes).unwrap();
            if let Ok(s) = RedbStore::open(dir.path()) {
                let models = s.load_models();
                proptest::prop_assert!(
                    models.as_ref().is_ok_and(|m| m.len() == 1),
                    "a damaged store lost its model silently: {models:?}"
                );
            }
        }
    }
}
