//! A small tmpfs mounted over a directory, to give the agent a state
//! directory that fills up. Dropping it kills whatever still holds files in
//! it (model servers keep their logs open there) and unmounts it, panic or not.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (mount's syntax: "2m") over `dir`. Err says
    /// what failed (no CAP_SYS_ADMIN in this container, say): the caller
    /// skips loudly.
    pub fn mount(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `name` until the file system says it is full. Returns its path.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        // Bounded: a tmpfs that never fills (size ignored) fails the test
        // rather than eating the machine's memory.
        for _ in 0..1024 {
            if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
                return path;
            }
        }
        panic!("{} did not fill up after 64 MiB", self.dir.display());
    }

    /// Processes with a file, or their working directory, under the mount.
    fn holders(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        let me = std::process::id() as i32;
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let under = |p: PathBuf| p.starts_with(&self.dir);
            let cwd = std::fs::read_link(entry.path().join("cwd")).is_ok_and(under);
            let fd = std::fs::read_dir(entry.path().join("fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(under))
            });
            if cwd || fd {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        for _ in 0..2 {
            for pid in self.holders() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let status = Command::new("umount").arg(&self.dir).status();
        if !status.is_ok_and(|s| s.success()) {
            // Something still holds it: detach it now, the kernel frees it
            // when the last holder goes.
            eprintln!(
                "cleanup: umount {} failed; lazy unmount",
                self.dir.display()
            );
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
