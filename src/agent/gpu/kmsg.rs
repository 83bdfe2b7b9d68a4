//! Follows the kernel log (`/dev/kmsg`) on its own thread and reports the
//! NVIDIA driver's Xid lines. Reading needs root or CAP_SYSLOG when
//! `kernel.dmesg_restrict` is set; without it the agent relies on NVML events
//! alone, and says so once.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::xid::{parse_kernel_line, KernelXid, MAX_LINE_BYTES};

pub const KERNEL_LOG: &str = "/dev/kmsg";

/// How long the reader sleeps when no record is waiting; it also bounds how
/// long stopping the reader takes.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only records written from now on: Xids from before the agent started
    /// were either handled already or show in the GPU's state.
    End,
    /// Everything in the log (tests, replaying a saved log).
    Beginning,
}

/// The reader thread; stops when dropped.
#[derive(Debug)]
pub struct KmsgReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KmsgReader {
    /// Starts following `path`, calling `on_xid` for each driver Xid line.
    /// Returns `None` (with one warning) when the log cannot be opened.
    pub fn spawn(
        path: impl Into<PathBuf>,
        start: StartAt,
        on_xid: impl FnMut(KernelXid) + Send + 'static,
    ) -> Option<KmsgReader> {
        let path = path.into();
        let file = match open(&path, start) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err,
                    "cannot read the kernel log; Xid errors come from NVML events only (the agent needs root or CAP_SYSLOG for the kernel log)");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("gpu-kmsg".into())
            .spawn(move || follow(file, &path, &thread_stop, on_xid));
        match thread {
            Ok(thread) => Some(KmsgReader {
                stop,
                thread: Some(thread),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the kernel log reader thread");
                None
            }
        }
    }
}

impl Drop for KmsgReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(path: &Path, start: StartAt) -> std::io::Result<File> {
    // Non-blocking so that the thread wakes up to notice it should stop.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if start == StartAt::End {
        file.seek(SeekFrom::End(0))?;
    }
    Ok(file)
}

/// Reads records until stopped. `/dev/kmsg` returns one record per read and
/// `EPIPE` when the ring buffer overwrote records we had not read yet; a
/// plain file returns many lines per read and 0 at its end (then we wait for
/// more, like `tail -f`).
fn follow(mut file: File, path: &Path, stop: &AtomicBool, mut on_xid: impl FnMut(KernelXid)) {
    let mut buf = vec![0u8; 2 * MAX_LINE_BYTES];
    let mut partial: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match file.read(&mut buf) {
            Ok(0) => std::thread::sleep(IDLE_POLL),
            Ok(n) => {
                partial.extend_from_slice(&buf[..n]);
                while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=end).collect();
                    if let Some(xid) = parse_kernel_line(&String::from_utf8_lossy(&line)) {
                        on_xid(xid);
                    }
                }
                if partial.len() > MAX_LINE_BYTES {
                    // A line with no end in sight: not a driver record.
                    partial.clear();
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => std::thread::sleep(IDLE_POLL),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {
                tracing::debug!("kernel log records were overwritten before they were read");
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "reading the kernel log failed; stopped following it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Instant;

    fn wait_for(rx: &mpsc::Receiver<KernelXid>, n: usize) -> Vec<KernelXid> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(x) => got.push(x),
                Err(_) => break,
            }
        }
        got
    }

    #[test]
    fn reports_driver_xids_from_a_log_and_follows_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        let mut log = File::create(&path).unwrap();
        writeln!(log, "6,1,100,-;usb 1-1: new high-speed USB device").unwrap();
        writeln!(
            log,
            "3,2,200,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."
        )
        .unwrap();
        writeln!(log, " SUBSYSTEM=pci").unwrap();
        log.flush().unwrap();

        let (tx, rx) = mpsc::channel();
        let reader = KmsgReader::spawn(&path, StartAt::Beginning, move |x| {
            let _ = tx.send(x);
        })
        .unwrap();
        let got = wait_for(&rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].xid, 79);

        writeln!(log, "4,3,300,-;NVRM: Xid (PCI:0000:3c:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.").unwrap();
        log.flush().unwrap();
        let got = wait_for(&rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].xid, got[0].pci.bus), (48, 0x3c));
        drop(reader);
    }

    #[test]
    fn starting_at_the_end_skips_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        let mut log = File::create(&path).unwrap();
        writeln!(
            log,
            "3,2,200,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus."
        )
        .unwrap();
        log.flush().unwrap();

        let (tx, rx) = mpsc::channel();
        let _reader = KmsgReader::spawn(&path, StartAt::End, move |x| {
            let _ = tx.send(x);
        })
        .unwrap();
        writeln!(
            log,
            "3,3,300,-;NVRM: Xid (PCI:0000:3b:00): 94, pid=1, Contained ECC error."
        )
        .unwrap();
        log.flush().unwrap();
        let got = wait_for(&rx, 1);
        assert_eq!(got.iter().map(|x| x.xid).collect::<Vec<_>>(), vec![94]);
    }

    #[test]
    fn an_unreadable_log_is_skipped_without_a_thread() {
        let reader = KmsgReader::spawn("/nonexistent/kmsg", StartAt::End, |_| {});
        assert!(reader.is_none());
    }
}
