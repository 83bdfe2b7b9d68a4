//! Copies of the store: `gpufleet coordinator backup FILE` and `restore
//! FILE`, and the snapshot the coordinator keeps at each start (the last N,
//! in `DATA_DIR/snapshots`), so a damaged file never means a lost fleet.

use std::path::{Path, PathBuf};

use super::{RedbStore, Store, StoreError, STORE_FILE};

const SNAPSHOT_DIR: &str = "snapshots";
const SNAPSHOT_PREFIX: &str = "gpufleet-";

/// What a backup or restore holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    pub models: usize,
    pub nodes: usize,
    pub events: usize,
}

impl std::fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} models, {} node flags, {} events",
            self.models, self.nodes, self.events
        )
    }
}

fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_DIR)
}

/// The snapshots of `data_dir`, oldest first.
pub(super) fn snapshots(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(data_dir)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX) && n.ends_with(".redb"))
        })
        .collect();
    // Names carry a zero-padded UTC time: name order is time order.
    found.sort();
    found
}

/// What an operator can do about a store that will not open.
pub(super) fn advice(data_dir: &Path) -> String {
    match snapshots(data_dir).last() {
        Some(newest) => format!(
            "Restore the newest snapshot with `gpufleet coordinator restore {} --data-dir {}` (or a backup of yours), or move the file away to start an empty fleet",
            newest.display(),
            data_dir.display()
        ),
        None => format!(
            "Restore a backup with `gpufleet coordinator restore FILE --data-dir {}`, or move the file away to start an empty fleet",
            data_dir.display()
        ),
    }
}

/// Refuses what must not be taken for a new fleet: an existing store file
/// of 0 bytes (truncated), and a missing one where snapshots show a fleet
/// lived here.
pub(super) fn check_before_open(data_dir: &Path, path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Err(StoreError::Damaged {
            path: path.display().to_string(),
            reason: "it is empty (0 bytes), so it was truncated".into(),
            advice: advice(data_dir),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match snapshots(data_dir).last() {
            Some(newest) => Err(StoreError::Damaged {
                path: path.display().to_string(),
                reason: format!(
                    "it is missing, but snapshots of an earlier fleet are in {}",
                    snapshot_dir(data_dir).display()
                ),
                advice: format!(
                    "Restore the newest with `gpufleet coordinator restore {} --data-dir {}`, or move the snapshots away to start an empty fleet",
                    newest.display(),
                    data_dir.display()
                ),
            }),
            None => Ok(()),
        },
        Err(e) => Err(StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

fn summary(store: &RedbStore) -> Result<BackupSummary, StoreError> {
    Ok(BackupSummary {
        models: store.load_models()?.len(),
        nodes: store.load_node_flags()?.len(),
        events: store.load_events(usize::MAX)?.len(),
    })
}

/// A file name for now: `gpufleet-20261206T134100.123Z.redb`.
fn timestamped(prefix: &str) -> String {
    let now = crate::domain::unix_ms_now();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64);
    let stamp = humantime::format_rfc3339_millis(t)
        .to_string()
        .replace([':', '-'], "");
    format!("{prefix}{stamp}.redb")
}

/// Writes a snapshot of the open store and keeps the newest `keep` (0: no
/// snapshots). Called at each start, once the store has opened and verified.
pub fn snapshot(store: &RedbStore, data_dir: &Path, keep: usize) -> Result<(), StoreError> {
    if keep == 0 {
        return Ok(());
    }
    let dir = snapshot_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io {
        op: "snapshot",
        reason: format!("{}: {e}", dir.display()),
    })?;
    let dest = dir.join(timestamped(SNAPSHOT_PREFIX));
    store.copy_to(&dest)?;
    let all = snapshots(data_dir);
    for old in &all[..all.len().saturating_sub(keep)] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "old store snapshot not removed");
        }
    }
    tracing::info!(file = %dest.display(), "store snapshot written");
    Ok(())
}

/// Copies the store of `data_dir` to `dest` (a new file), verified by
/// opening the copy. The coordinator must be stopped: redb allows one
/// process at a time, and a running coordinator keeps snapshots instead.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<BackupSummary, StoreError> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            reason: "there is no store here; check --data-dir or the config's data_dir".into(),
        });
    }
    let store = RedbStore::open(data_dir)?;
    store.copy_to(dest)?;
    drop(store);
    verify(dest)
}

/// What the store copy at `file` holds, once it has opened and every record
/// has been read: a copy that fails here is no backup.
pub fn verify(file: &Path) -> Result<BackupSummary, StoreError> {
    let copy = RedbStore::open_with(file.to_path_buf(), {
        let file = file.to_path_buf();
        Box::new(move || redb::Database::open(&file))
    })?;
    summary(&copy)
}

/// Makes `src` (a backup or a snapshot) the store of `data_dir`. `src` is
/// verified on a copy first; the store it replaces, damaged or not, is kept
/// as `snapshots/before-restore-….redb`.
pub fn restore(data_dir: &Path, src: &Path) -> Result<BackupSummary, StoreError> {
    let path = data_dir.join(STORE_FILE);
    let io = |what: &Path, e: std::io::Error| StoreError::Io {
        op: "restore",
        reason: format!("{}: {e}", what.display()),
    };
    std::fs::create_dir_all(snapshot_dir(data_dir)).map_err(|e| io(data_dir, e))?;
    // Hold redb's own lock on the current file while replacing it, so a
    // running coordinator is refused rather than pulled out from under.
    let _lock = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; it is
            // released when `f` is dropped at the end of the function.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(StoreError::InUse {
                    path: path.display().to_string(),
                });
            }
            Some(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&path, e)),
    };
    let staged = data_dir.join(format!("{STORE_FILE}.restoring"));
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(src, &staged).map_err(|e| io(src, e))?;
    let verified = RedbStore::open_with(staged.clone(), {
        let staged = staged.clone();
        Box::new(move || redb::Database::open(&staged))
    })
    .and_then(|s| summary(&s));
    let summary = match verified {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(match e {
                StoreError::Damaged { reason, .. } => StoreError::Damaged {
                    path: src.display().to_string(),
                    reason,
                    advice: "Choose another backup or snapshot".into(),
                },
                other => other,
            });
        }
    };
    if path.exists() {
        let kept = snapshot_dir(data_dir).join(timestamped("before-restore-"));
        std::fs::copy(&path, &kept).map_err(|e| io(&kept, e))?;
    }
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(&staged, e))?;
    std::fs::rename(&staged, &path).map_err(|e| io(&path, e))?;
    Ok(summary)
}
