//! How much of a model is in the page cache now: mmap + mincore over each
//! file in large windows (as vmtouch does). The mapping is never touched, so
//! measuring reads nothing and a file truncated underneath cannot fault us.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;

use super::files::{list_model_files, open_for_read, ModelFiles};
use super::WarmError;

/// Bytes mapped at once while measuring: bounds the mincore vector (1 byte per
/// page, 256 KiB here) whatever the file size.
const WINDOW_BYTES: u64 = 1 << 30;

/// A model's residency: bytes in the page cache out of its total, plus what
/// could not be measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Residency {
    pub resident_bytes: u64,
    pub total_bytes: u64,
    /// One line per file that vanished or could not be measured.
    pub problems: Vec<String>,
}

/// Resident bytes of the model at `path` (a file or a tree), checked against
/// `roots` first.
pub fn resident_bytes(path: &Path, roots: &[PathBuf]) -> Result<Residency, WarmError> {
    Ok(measure(&list_model_files(path, roots)?))
}

/// Resident bytes of listed files. A file removed or replaced since the
/// listing is reported in `problems` and left out of the total.
pub fn measure(files: &ModelFiles) -> Residency {
    let mut residency = Residency::default();
    for listed in &files.files {
        let measured = open_for_read(&listed.path).and_then(|file| {
            let len = file
                .metadata()
                .map_err(|e| WarmError::io(&listed.path, "stat", e))?
                .len();
            let resident = file_resident_bytes(&file, len)
                .map_err(|e| WarmError::io(&listed.path, "mincore", e))?;
            Ok((resident, len))
        });
        match measured {
            Ok((resident, len)) => {
                residency.resident_bytes += resident;
                residency.total_bytes += len;
            }
            Err(e) => residency.problems.push(e.to_string()),
        }
    }
    residency
}

/// Resident bytes of the first `len` bytes of `file`.
pub fn file_resident_bytes(file: &File, len: u64) -> std::io::Result<u64> {
    let mut resident = 0;
    let mut offset = 0;
    while offset < len {
        let window = (len - offset).min(WINDOW_BYTES);
        let mapping = Mapping::new(file, offset, window)?;
        resident += resident_in(&mapping.resident_pages()?, offset, len);
        offset += window;
    }
    Ok(resident)
}

/// Bytes of `[start, start + pages.len() pages)` that are resident, counting
/// the last page of the file only up to `file_len`.
pub(super) fn resident_in(pages: &[u8], start: u64, file_len: u64) -> u64 {
    let page = page_size();
    pages
        .iter()
        .enumerate()
        .filter(|(_, flags)| **flags & 1 == 1)
        .map(|(i, _)| {
            let at = start + i as u64 * page;
            page.min(file_len.saturating_sub(at))
        })
        .sum()
}

pub(super) fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the running system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            page as u64
        } else {
            4096
        }
    })
}

/// A read-only shared mapping of part of a file, unmapped on drop. Its memory
/// is only ever passed to mincore/mlock, never read, so pages beyond a file
/// truncated meanwhile cannot raise SIGBUS.
pub(super) struct Mapping {
    addr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is an address range owned by this value alone; nothing
// dereferences it, so moving it to another thread is sound.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes (> 0) of `file` from `offset`, a multiple of the page size.
    pub(super) fn new(file: &File, offset: u64, len: u64) -> std::io::Result<Mapping> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        if len == 0 {
            return Err(invalid("cannot map 0 bytes"));
        }
        if !offset.is_multiple_of(page_size()) {
            return Err(invalid("mapping offset is not page-aligned"));
        }
        let len = usize::try_from(len)
            .map_err(|_| invalid("mapping length exceeds the address space"))?;
        let offset =
            libc::off_t::try_from(offset).map_err(|_| invalid("mapping offset exceeds off_t"))?;
        // SAFETY: a fresh mapping chosen by the kernel (addr null) aliases no
        // Rust memory; failure is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let addr = NonNull::new(addr).ok_or_else(|| invalid("mmap returned a null address"))?;
        Ok(Mapping { addr, len })
    }

    /// One byte per page; bit 0 set when the page is in the page cache.
    pub(super) fn resident_pages(&self) -> std::io::Result<Vec<u8>> {
        let pages = (self.len as u64).div_ceil(page_size()) as usize;
        let mut flags = vec![0u8; pages];
        // SAFETY: addr/len is our live mapping and `flags` holds one byte per
        // page of it, as mincore requires.
        let rc = unsafe { libc::mincore(self.addr.as_ptr(), self.len, flags.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(flags)
    }

    /// Pins the mapped pages in RAM, reading those not resident yet.
    pub(super) fn lock(&self) -> std::io::Result<()> {
        // SAFETY: addr/len is our live mapping; mlock does not write to it.
        if unsafe { libc::mlock(self.addr.as_ptr(), self.len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len came from a successful mmap and is unmapped once;
        // munmap also releases any mlock on it.
        unsafe {
            libc::munmap(self.addr.as_ptr(), self.len);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory on a filesystem that keeps a page cache (not tmpfs) for
    /// files whose residency a test controls.
    pub(crate) fn cache_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("gpufleet-warm-")
            .tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    /// Writes `len` bytes and drops them from the page cache. Returns false
    /// (and says why) when this filesystem does not honour DONTNEED.
    pub(crate) fn write_cold(path: &Path, len: usize) -> bool {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(path, data).unwrap();
        make_cold(path)
    }

    pub(crate) fn make_cold(path: &Path) -> bool {
        let file = File::open(path).unwrap();
        // Dirty pages are not dropped by DONTNEED: write them back first.
        nix::unistd::fdatasync(&file).unwrap();
        nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let len = file.metadata().unwrap().len();
        let resident = file_resident_bytes(&file, len).unwrap();
        if resident >= len && len > 0 {
            eprintln!(
                "SKIP: {} stays resident after fdatasync + POSIX_FADV_DONTNEED; this filesystem \
                 does not drop pages on request, so cold-cache behaviour cannot be tested here",
                path.display()
            );
            return false;
        }
        true
    }

    #[test]
    fn a_cold_file_reads_as_not_resident_and_a_read_makes_it_resident() {
        let dir = cache_dir();
        let path = dir.path().join("w.bin");
        let len = 3 * 1024 * 1024 + 123;
        if !write_cold(&path, len) {
            return;
        }
        let roots = [dir.path().to_path_buf()];
        let cold = resident_bytes(&path, &roots).unwrap();
        assert_eq!(cold.total_bytes, len as u64);
        assert!(cold.resident_bytes < cold.total_bytes, "{cold:?}");

        std::fs::read(&path).unwrap();
        let warm = resident_bytes(&path, &roots).unwrap();
        // The partial last page counts only up to the end of the file.
        assert_eq!(warm.resident_bytes, len as u64);
    }

    #[test]
    fn a_file_removed_after_listing_is_reported_not_fatal() {
        let dir = cache_dir();
        std::fs::write(dir.path().join("a"), b"aaaa").unwrap();
        std::fs::write(dir.path().join("b"), b"bb").unwrap();
        let listing = list_model_files(dir.path(), &[dir.path().to_path_buf()]).unwrap();
        std::fs::remove_file(dir.path().join("a")).unwrap();

        let residency = measure(&listing);
        assert_eq!(residency.total_bytes, 2);
        assert_eq!(residency.problems.len(), 1);
        assert!(
            residency.problems[0].contains("/a: open failed"),
            "{:?}",
            residency.problems
        );
    }

    #[test]
    fn resident_pages_count_the_last_page_only_up_to_the_end_of_the_file() {
        let page = page_size();
        assert_eq!(resident_in(&[1, 0, 1], 0, 2 * page + 10), page + 10);
        assert_eq!(resident_in(&[1, 1], 4 * page, 6 * page), 2 * page);
        assert_eq!(resident_in(&[0, 0], 0, 2 * page), 0);
    }
}
