//! Host probe: CPUs, memory, page cache, load and the state dir's disk.

use std::path::{Path, PathBuf};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use crate::domain::{HostInfo, HostSample};

pub struct HostProbe {
    system: System,
    state_dir: PathBuf,
}

impl HostProbe {
    pub fn new(state_dir: &Path) -> HostProbe {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        HostProbe {
            system,
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn info(&self) -> HostInfo {
        HostInfo {
            hostname: System::host_name().unwrap_or_default(),
            cpus: self.system.cpus().len() as u32,
            memory_total_bytes: self.system.total_memory(),
            os: System::long_os_version().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            driver_version: String::new(),
            cuda_version: String::new(),
        }
    }

    pub fn sample(&mut self) -> HostSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let load = System::load_average();
        let (free, total) = disk_space(&self.state_dir).unwrap_or((0, 0));
        HostSample {
            cpu_pct: self.system.global_cpu_usage() as f64,
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            memory_used_bytes: self.system.used_memory(),
            memory_available_bytes: self.system.available_memory(),
            page_cache_bytes: page_cache_bytes().unwrap_or(0),
            state_dir_free_bytes: free,
            state_dir_total_bytes: total,
        }
    }
}

/// How often the state dir is tried for a write.
const STATE_DIR_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Tries a small write in the state dir (a new file, so a full disk fails
/// it) and says why it fails, if it does.
pub fn state_dir_problem(dir: &Path) -> Option<String> {
    use std::io::Write;
    let probe = dir.join(".gpufleet-write-probe");
    let result = std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(b"ok\n").and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    result.err().map(|e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            format!("the disk holding {} is full", dir.display())
        } else {
            format!("cannot write in {}: {e}", dir.display())
        }
    })
}

/// Keeps `tx` telling whether the state dir can be written: replica records
/// that cannot be saved are retried by the supervisor, and this makes the
/// state visible to `/healthz` and `/metrics` until space returns.
pub async fn watch_state_dir(dir: PathBuf, tx: tokio::sync::watch::Sender<Option<String>>) {
    let mut tick = tokio::time::interval(STATE_DIR_PROBE_EVERY);
    loop {
        tick.tick().await;
        let d = dir.clone();
        let Ok(problem) = tokio::task::spawn_blocking(move || state_dir_problem(&d)).await else {
            return;
        };
        let changed = *tx.borrow() != problem;
        if changed {
            match &problem {
                Some(why) => tracing::error!("state dir degraded: {why}; replica records are retried until it can be written"),
                None => tracing::info!(state_dir = %dir.display(), "state dir writable again"),
            }
        }
        if tx.send(problem).is_err() {
            return;
        }
    }
}

/// `Cached` from /proc/meminfo: the page cache that warm weights live in.
fn page_cache_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_kib(&meminfo, "Cached").map(|kib| kib * 1024)
}

fn parse_meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// (free, total) bytes of the filesystem holding `dir`.
pub(crate) fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

/// Changes when the host reboots.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cached_from_meminfo() {
        let text = "MemTotal:       24576000 kB\nBuffers:          1000 kB\nCached:          204800 kB\nSwapCached:            0 kB\n";
        assert_eq!(parse_meminfo_kib(text, "Cached"), Some(204800));
        assert_eq!(parse_meminfo_kib(text, "Nope"), None);
    }

    #[test]
    fn samples_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = HostProbe::new(dir.path());
        let info = probe.info();
        assert!(info.cpus >= 1);
        assert!(info.memory_total_bytes > 0);
        let s = probe.sample();
        assert!(s.state_dir_total_bytes > 0);
        assert!(s.memory_available_bytes > 0);
    }

    #[test]
    fn a_writable_state_dir_has_no_problem_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state_dir_problem(dir.path()), None);
        let gone = dir.path().join("missing");
        let why = state_dir_problem(&gone).unwrap();
        assert!(why.contains(&gone.display().to_string()), "{why}");
    }
}
