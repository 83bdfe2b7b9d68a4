//! Pinning a warm model in RAM with mlock, so memory pressure cannot evict it.
//! The pin lasts as long as the [`ModelLock`] (its mappings) lives.

use super::files::{open_for_read, ModelFiles};
use super::residency::Mapping;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("mlock refused: RLIMIT_MEMLOCK is {limit}; raise LimitMEMLOCK= in the unit (locking {path}: {source})")]
    Refused {
        path: String,
        limit: String,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {reason}")]
    Failed { path: String, reason: String },
}

/// Every file of a model mapped and mlocked; dropping it unlocks them.
pub struct ModelLock {
    mappings: Vec<Mapping>,
}

impl ModelLock {
    pub fn locked_bytes(&self) -> u64 {
        self.mappings.iter().map(|m| m.len() as u64).sum()
    }
}

impl std::fmt::Debug for ModelLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelLock")
            .field("files", &self.mappings.len())
            .field("bytes", &self.locked_bytes())
            .finish()
    }
}

/// Maps and locks every file; on the first refusal releases what was locked
/// and says why. Reads pages not yet resident, so call it from a blocking thread.
pub fn lock_files(files: &ModelFiles) -> Result<ModelLock, LockError> {
    let mut mappings = Vec::with_capacity(files.files.len());
    for listed in &files.files {
        let path = listed.path.display().to_string();
        let failed = |reason: String| LockError::Failed {
            path: path.clone(),
            reason,
        };
        let file = open_for_read(&listed.path).map_err(|e| failed(e.to_string()))?;
        let len = file.metadata().map_err(|e| failed(e.to_string()))?.len();
        if len == 0 {
            continue;
        }
        let mapping = Mapping::new(&file, 0, len).map_err(|e| failed(format!("mmap: {e}")))?;
        if let Err(e) = mapping.lock() {
            return Err(classify(path, e, memlock_limit()));
        }
        mappings.push(mapping);
    }
    Ok(ModelLock { mappings })
}

fn classify(path: String, source: std::io::Error, limit: Option<u64>) -> LockError {
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOMEM) => LockError::Refused {
            path,
            limit: match limit {
                Some(bytes) => format!("{bytes} bytes"),
                None => "unlimited".to_string(),
            },
            source,
        },
        _ => LockError::Failed {
            path,
            reason: format!("mlock: {source}"),
        },
    }
}

/// The soft RLIMIT_MEMLOCK; None when unlimited.
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(limit.rlim_cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::warm::files::list_model_files;
    use crate::agent::warm::residency::tests::cache_dir;

    #[test]
    fn a_refused_mlock_names_the_limit_and_the_fix() {
        let err = classify(
            "/srv/models/m".into(),
            std::io::Error::from_raw_os_error(libc::ENOMEM),
            Some(8 << 20),
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "mlock refused: RLIMIT_MEMLOCK is 8388608 bytes; raise LimitMEMLOCK= in the unit"
            ),
            "{msg}"
        );
        assert!(matches!(
            classify(
                "/m".into(),
                std::io::Error::from_raw_os_error(libc::EPERM),
                None
            ),
            LockError::Refused { .. }
        ));
        assert!(matches!(
            classify(
                "/m".into(),
                std::io::Error::from_raw_os_error(libc::EINVAL),
                None
            ),
            LockError::Failed { .. }
        ));
    }

    #[test]
    fn locking_a_model_pins_all_its_bytes_or_reports_the_limit() {
        let dir = cache_dir();
        std::fs::write(dir.path().join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let listing = list_model_files(dir.path(), &[dir.path().to_path_buf()]).unwrap();
        match lock_files(&listing) {
            Ok(lock) => assert_eq!(lock.locked_bytes(), 100_000),
            // Without CAP_IPC_LOCK and with a tiny limit this is the expected outcome.
            Err(e @ LockError::Refused { .. }) => {
                eprintln!("SKIP: mlock refused here: {e}");
            }
            Err(e) => panic!("unexpected lock failure: {e}"),
        }
    }
}
