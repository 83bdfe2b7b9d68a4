//! A model's files as the warmer may touch them: regular files under the model
//! roots only, FIFOs, devices and sockets skipped without ever being opened.

use std::collections::HashSet;
use std::fs::{File, FileType, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::paths::resolve_model_path;
use super::WarmError;

/// One regular file of a model, by its resolved path, with its size when listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub path: PathBuf,
    pub len: u64,
}

/// The regular files making up a model (a single file, or every regular file
/// of a directory tree), plus what was left out and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFiles {
    pub files: Vec<ModelFile>,
    /// One line per entry left out: "PATH: skipped, a FIFO".
    pub skipped: Vec<String>,
}

impl ModelFiles {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }
}

/// Lists the files of the model at `path` (a file or a directory), refusing a
/// path that resolves outside `roots`. Inside a tree every entry is checked
/// against the roots again after its symlinks are resolved; a file reached
/// twice (two links to one blob) is listed once.
pub fn list_model_files(path: &Path, roots: &[PathBuf]) -> Result<ModelFiles, WarmError> {
    let top = resolve_model_path(path, roots)?;
    let meta = std::fs::metadata(&top).map_err(|e| WarmError::io(&top, "stat", e))?;
    let mut listing = ModelFiles::default();
    if meta.is_file() {
        listing.files.push(ModelFile {
            path: top,
            len: meta.len(),
        });
        return Ok(listing);
    }
    if !meta.is_dir() {
        return Err(WarmError::NotRegular {
            path: top,
            kind: kind_name(&meta.file_type()),
        });
    }

    let mut seen_dirs = HashSet::from([top.clone()]);
    let mut seen_files = HashSet::new();
    let mut pending = vec![top.clone()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The top directory must be readable; a sub-directory that is not
            // only costs its own files.
            Err(e) if dir == top => return Err(WarmError::io(&dir, "read directory", e)),
            Err(e) => {
                listing
                    .skipped
                    .push(format!("{}: skipped, cannot read: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    listing
                        .skipped
                        .push(format!("{}: skipped an entry: {e}", dir.display()));
                    continue;
                }
            };
            let entry_path = entry.path();
            let resolved = match resolve_model_path(&entry_path, roots) {
                Ok(resolved) => resolved,
                Err(e) => {
                    listing.skipped.push(format!("skipped: {e}"));
                    continue;
                }
            };
            // symlink_metadata on the resolved path: it has no links left, and
            // this never opens the file, so a FIFO cannot block us here.
            let meta = match std::fs::symlink_metadata(&resolved) {
                Ok(meta) => meta,
                Err(e) => {
                    listing.skipped.push(format!(
                        "{}: skipped, cannot stat: {e}",
                        entry_path.display()
                    ));
                    continue;
                }
            };
            if meta.is_dir() {
                if seen_dirs.insert(resolved.clone()) {
                    pending.push(resolved);
                }
            } else if meta.is_file() {
                if seen_files.insert(resolved.clone()) {
                    listing.files.push(ModelFile {
                        path: resolved,
                        len: meta.len(),
                    });
                }
            } else {
                listing.skipped.push(format!(
                    "{}: skipped, a {}",
                    entry_path.display(),
                    kind_name(&meta.file_type())
                ));
            }
        }
    }
    listing.files.sort_by(|a, b| a.path.cmp(&b.path));
    listing.skipped.sort();
    Ok(listing)
}

/// Opens a listed file for reading. O_NONBLOCK keeps a FIFO swapped in since
/// the listing from blocking the open, O_NOFOLLOW refuses a symlink swapped in
/// (listed paths are resolved, so none is expected), and the type is checked
/// again on the open descriptor.
pub fn open_for_read(path: &Path) -> Result<File, WarmError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| WarmError::io(path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| WarmError::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(WarmError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(&meta.file_type()),
        });
    }
    Ok(file)
}

fn kind_name(kind: &FileType) -> &'static str {
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::warm::paths::PathError;

    #[test]
    fn a_tree_lists_its_regular_files_once_and_says_what_it_skipped() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        std::fs::write(model.join("sub/model.safetensors"), vec![1u8; 1000]).unwrap();
        // Two links to one blob, as a hub cache lays snapshots out.
        std::os::unix::fs::symlink(model.join("sub/model.safetensors"), model.join("alias"))
            .unwrap();
        nix::unistd::mkfifo(&model.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), model.join("escape")).unwrap();
        // A loop must not make the walk run forever.
        std::os::unix::fs::symlink(&model, model.join("sub/loop")).unwrap();

        let listing = list_model_files(&model, &[root.path().to_path_buf()]).unwrap();

        let names: Vec<_> = listing
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        assert_eq!(listing.total_bytes(), 1002);
        assert!(listing
            .skipped
            .iter()
            .any(|s| s.contains("pipe") && s.contains("FIFO")));
        assert!(listing
            .skipped
            .iter()
            .any(|s| s.contains("escape") && s.contains("outside the model roots")));
    }

    #[test]
    fn a_path_escaping_the_roots_or_a_special_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("w.bin"), b"w").unwrap();
        let link = root.path().join("w.bin");
        std::os::unix::fs::symlink(outside.path().join("w.bin"), &link).unwrap();
        let roots = [root.path().to_path_buf()];
        assert!(matches!(
            list_model_files(&link, &roots),
            Err(WarmError::Path(PathError::OutsideRoots { .. }))
        ));

        let pipe = root.path().join("pipe");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            list_model_files(&pipe, &roots),
            Err(WarmError::NotRegular { kind: "FIFO", .. })
        ));
        // Opening it directly neither blocks nor yields a readable file.
        assert!(matches!(
            open_for_read(&pipe),
            Err(WarmError::NotRegular { kind: "FIFO", .. })
        ));
    }
}
