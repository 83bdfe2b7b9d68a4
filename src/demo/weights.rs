//! Reading a model's weights the way an inference engine does at start: every
//! byte, sequentially, in large chunks, so a cold page cache costs what it
//! costs and a warm one is visibly faster.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Large enough that the kernel's readahead streams from storage; small
/// enough that a cancelled load stops promptly.
pub const READ_CHUNK: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights {path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("weights {path} is neither a regular file nor a directory; allowed: a weights file, or a directory of them")]
    NotFileOrDirectory { path: PathBuf },
    #[error("loading weights {path} was cancelled")]
    Cancelled { path: PathBuf },
}

/// What a completed load read, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedWeights {
    pub files: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl LoadedWeights {
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads every byte of `path` (a file, or every regular file under a
/// directory, in name order). Blocking: call it from a blocking thread.
/// Stops between chunks once `cancel` is set.
pub fn read_weights(path: &Path, cancel: &AtomicBool) -> Result<LoadedWeights, WeightsError> {
    let started = Instant::now();
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WeightsError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mut files = Vec::new();
    if meta.is_file() {
        files.push(path.to_path_buf());
    } else if meta.is_dir() {
        collect_files(path, &mut files)?;
    } else {
        return Err(WeightsError::NotFileOrDirectory {
            path: path.to_path_buf(),
        });
    }

    let mut buf = vec![0u8; READ_CHUNK];
    let mut bytes = 0u64;
    for file in &files {
        let mut f = File::open(file).map_err(io_err(file))?;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(WeightsError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(file)(e)),
            }
        }
    }
    Ok(LoadedWeights {
        files: files.len(),
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Regular files under `dir`, sorted. Symlinks to files are followed;
/// symlinked directories are not, so a link cycle cannot trap the loader, and
/// FIFOs or devices are skipped because reading them could block forever.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), WeightsError> {
    let io_err = |source| WeightsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err)?;
    entries.sort();
    for entry in entries {
        let own = std::fs::symlink_metadata(&entry).map_err(io_err)?;
        if own.is_dir() {
            collect_files(&entry, out)?;
        } else if own.is_file()
            || (own.file_type().is_symlink()
                && std::fs::metadata(&entry).is_ok_and(|m| m.is_file()))
        {
            out.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_byte_of_a_file_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("model-00001.safetensors");
        std::fs::write(&big, vec![7u8; READ_CHUNK + 123]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/config.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();

        let never = AtomicBool::new(false);
        let one = read_weights(&big, &never).unwrap();
        assert_eq!((one.files, one.bytes), (1, READ_CHUNK as u64 + 123));
        assert!(one.bytes_per_s() > 0.0);

        let all = read_weights(dir.path(), &never).unwrap();
        assert_eq!((all.files, all.bytes), (2, READ_CHUNK as u64 + 125));
    }

    #[test]
    fn refuses_missing_paths_and_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.bin");
        let err = read_weights(&missing, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, WeightsError::Io { .. }));
        assert!(err.to_string().contains("nope.bin"), "{err}");

        let file = dir.path().join("w.bin");
        std::fs::write(&file, b"weights").unwrap();
        let err = read_weights(&file, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, WeightsError::Cancelled { .. }), "{err}");

        let err = read_weights(Path::new("/dev/null"), &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, WeightsError::NotFileOrDirectory { .. }));
    }
}
