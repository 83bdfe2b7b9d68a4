//! Replica records: what a restarted agent needs to find its running servers
//! again (`state_dir/replicas/<id>/record.json`). Written atomically (temp
//! file, fsync, rename, fsync of the directory) so a crash never leaves half a
//! record behind.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::{ReplicaSpec, ReplicaState};

pub const RECORD_FILE: &str = "record.json";
const TMP_FILE: &str = "record.json.tmp";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write replica record {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read replica record {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("replica record {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One replica as persisted. `pid` 0 means no process was running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub spec: ReplicaSpec,
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat at launch.
    pub start_time: u64,
    /// The argv the process was executed with, as /proc/<pid>/cmdline shows it.
    pub argv: Vec<String>,
    /// The resolved executable that was run (`#!` scripts show it in argv).
    #[serde(default)]
    pub executable: String,
    pub port: u16,
    /// 0 when metrics are served on `port`.
    #[serde(default)]
    pub metrics_port: u16,
    pub restarts: u32,
    pub state: ReplicaState,
    pub started_unix_ms: i64,
    pub ready_unix_ms: i64,
    /// Consecutive failures, so a restarted agent keeps the backoff going.
    #[serde(default)]
    pub failures: u32,
    /// When a replica waiting out its backoff is due to start again.
    #[serde(default)]
    pub next_restart_unix_ms: i64,
    #[serde(default)]
    pub reason: String,
}

/// Persists `record` into the replica directory `dir`.
pub fn save(dir: &Path, record: &ReplicaRecord) -> Result<(), RecordError> {
    let path = dir.join(RECORD_FILE);
    let tmp = dir.join(TMP_FILE);
    let write_err = |source| RecordError::Write {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    fs::create_dir_all(dir).map_err(write_err)?;
    let mut file = File::create(&tmp).map_err(write_err)?;
    file.write_all(&body).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(write_err)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(())
}

/// Loads the record in replica directory `dir`.
pub fn load(dir: &Path) -> Result<ReplicaRecord, RecordError> {
    let path = dir.join(RECORD_FILE);
    let body = fs::read(&path).map_err(|source| RecordError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&body).map_err(|source| RecordError::Parse { path, source })
}

/// Removes the record of replica directory `dir`; a missing record is fine.
/// The directory itself stays: its logs outlive the replica.
pub fn remove(dir: &Path) -> Result<(), RecordError> {
    let path = dir.join(RECORD_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Write { path, source }),
    }
}

/// Moves an unreadable record aside so it is reported once, not forever.
pub fn quarantine(dir: &Path) {
    let _ = fs::rename(dir.join(RECORD_FILE), dir.join("record.json.unreadable"));
}

/// Replica directories under `replicas_dir` that hold a record, by id.
pub fn list(replicas_dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(replicas_dir)? {
        let entry = entry?;
        let dir = entry.path();
        if dir.join(RECORD_FILE).is_file() {
            if let Some(id) = entry.file_name().to_str() {
                found.push((id.to_string(), dir));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ReplicaRecord {
        ReplicaRecord {
            spec: ReplicaSpec {
                id: "m-1".into(),
                command: vec!["srv".into()],
                ..Default::default()
            },
            pid: 4242,
            start_time: 99,
            argv: vec!["srv".into(), "--port".into(), "20001".into()],
            executable: "/usr/bin/srv".into(),
            port: 20001,
            metrics_port: 0,
            restarts: 2,
            state: ReplicaState::Ready,
            started_unix_ms: 1,
            ready_unix_ms: 2,
            failures: 0,
            next_restart_unix_ms: 0,
            reason: String::new(),
        }
    }

    #[test]
    fn round_trips_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m-1");
        save(&dir, &record()).unwrap();
        fs::create_dir_all(tmp.path().join("no-record")).unwrap();
        assert_eq!(load(&dir).unwrap(), record());
        assert_eq!(
            list(tmp.path()).unwrap(),
            vec![("m-1".to_string(), dir.clone())]
        );
        assert!(!dir.join(TMP_FILE).exists());
        remove(&dir).unwrap();
        remove(&dir).unwrap();
        assert!(list(tmp.path()).unwrap().is_empty());
        assert!(dir.is_dir(), "the directory (and its logs) stays");
    }

    #[test]
    fn a_failed_write_keeps_the_previous_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m-1");
        save(&dir, &record()).unwrap();
        // A directory where the temp file goes makes every write fail, as a
        // full disk would.
        fs::create_dir(dir.join(TMP_FILE)).unwrap();
        let mut newer = record();
        newer.restarts = 3;
        let err = save(&dir, &newer).unwrap_err();
        assert!(err.to_string().contains("record.json"), "{err}");
        assert_eq!(load(&dir).unwrap().restarts, 2);
    }

    #[test]
    fn garbage_is_a_parse_error_and_can_be_quarantined() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m-1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(RECORD_FILE), b"{not json").unwrap();
        assert!(matches!(load(&dir), Err(RecordError::Parse { .. })));
        quarantine(&dir);
        assert!(list(tmp.path()).unwrap().is_empty());
    }
}
