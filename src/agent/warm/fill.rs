//! Filling the page cache: several threads each read a contiguous segment of
//! a model's files in large sequential preads, skipping chunks mincore says
//! are resident already. POSIX_FADV_WILLNEED alone would not do: the kernel
//! caps it at a few MB per call and does not wait for the reads.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::files::{list_model_files, open_for_read, ModelFiles};
use super::residency::{page_size, resident_in, Mapping};
use super::WarmError;

/// A worker takes a segment this long (or the rest of a file) at a time, so a
/// single large file is still read by every worker in parallel.
const SEGMENT_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillOptions {
    /// Reading threads; at least 1.
    pub workers: usize,
    /// Bytes per pread, rounded up to whole pages; at least one page.
    pub chunk_bytes: usize,
}

impl Default for FillOptions {
    fn default() -> Self {
        FillOptions {
            workers: 4,
            chunk_bytes: 8 << 20,
        }
    }
}

/// Counters a fill updates as it goes, read by whoever reports progress.
#[derive(Debug, Default)]
pub struct FillProgress {
    done: AtomicU64,
    read: AtomicU64,
    total: AtomicU64,
}

impl FillProgress {
    /// Bytes resident so far: found resident plus read.
    pub fn done_bytes(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes this fill has read from storage.
    pub fn read_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set(&self, total: u64, done: u64, read: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        self.read.store(read, Ordering::Relaxed);
    }

    /// Read rate since `started` and the time left at that rate; the ETA is 0
    /// when nothing has been read yet (unknown) or nothing is left.
    pub fn rate_and_eta(&self, started: Instant, now: Instant) -> (f64, Duration) {
        rate_and_eta(
            self.read_bytes(),
            self.total_bytes().saturating_sub(self.done_bytes()),
            now.saturating_duration_since(started),
        )
    }
}

fn rate_and_eta(read: u64, left: u64, elapsed: Duration) -> (f64, Duration) {
    let secs = elapsed.as_secs_f64();
    if read == 0 || secs <= 0.0 {
        return (0.0, Duration::ZERO);
    }
    let rate = read as f64 / secs;
    (rate, Duration::from_secs_f64(left as f64 / rate))
}

/// What a fill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FillReport {
    pub read_bytes: u64,
    /// Bytes found resident already and not read again.
    pub skipped_bytes: u64,
    /// One line per file that vanished, shrank or failed to read.
    pub problems: Vec<String>,
    pub cancelled: bool,
}

/// Lists the model at `path` (checked against `roots`) and fills it.
pub fn fill_path(
    path: &Path,
    roots: &[PathBuf],
    opts: FillOptions,
) -> Result<FillReport, WarmError> {
    let files = list_model_files(path, roots)?;
    Ok(fill_files(
        &files,
        opts,
        &FillProgress::default(),
        &AtomicBool::new(false),
    ))
}

struct Segment {
    file: usize,
    start: u64,
    end: u64,
}

/// Reads every listed file into the page cache on `opts.workers` threads;
/// blocks until done or until `cancel` is set. Call it from a blocking thread.
pub fn fill_files(
    files: &ModelFiles,
    opts: FillOptions,
    progress: &FillProgress,
    cancel: &AtomicBool,
) -> FillReport {
    let page = page_size();
    let chunk = (opts.chunk_bytes.max(1) as u64).div_ceil(page) * page;
    let segment_len = SEGMENT_BYTES.max(chunk).div_ceil(page) * page;
    let segments: Vec<Segment> = files
        .files
        .iter()
        .enumerate()
        .flat_map(|(file, listed)| {
            (0..listed.len.div_ceil(segment_len)).map(move |i| Segment {
                file,
                start: i * segment_len,
                end: ((i + 1) * segment_len).min(listed.len),
            })
        })
        .collect();
    progress.total.store(files.total_bytes(), Ordering::Relaxed);
    progress.done.store(0, Ordering::Relaxed);
    progress.read.store(0, Ordering::Relaxed);

    let next = AtomicUsize::new(0);
    // Keyed by file so a file cut short is reported once, not per segment.
    let problems = Mutex::new(BTreeMap::<usize, String>::new());
    let skipped = AtomicU64::new(0);
    let workers = opts.workers.clamp(1, segments.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![0u8; chunk as usize];
                while let Some(segment) = segments.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let outcome = fill_segment(files, segment, &mut buf, progress, cancel);
                    skipped.fetch_add(outcome.skipped, Ordering::Relaxed);
                    if let Some(problem) = outcome.problem {
                        if let Ok(mut problems) = problems.lock() {
                            problems.entry(segment.file).or_insert(problem);
                        }
                    }
                }
            });
        }
    });
    FillReport {
        read_bytes: progress.read_bytes(),
        skipped_bytes: skipped.load(Ordering::Relaxed),
        problems: problems
            .into_inner()
            .map(|p| p.into_values().collect())
            .unwrap_or_default(),
        cancelled: cancel.load(Ordering::Relaxed),
    }
}

struct SegmentOutcome {
    skipped: u64,
    problem: Option<String>,
}

fn fill_segment(
    files: &ModelFiles,
    segment: &Segment,
    buf: &mut [u8],
    progress: &FillProgress,
    cancel: &AtomicBool,
) -> SegmentOutcome {
    let listed = &files.files[segment.file];
    let mut outcome = SegmentOutcome {
        skipped: 0,
        problem: None,
    };
    let file = match open_for_read(&listed.path) {
        Ok(file) => file,
        Err(e) => {
            outcome.problem = Some(format!("{e} (changed during the warm)"));
            return outcome;
        }
    };
    let shrank = |now: u64| {
        format!(
            "{} was truncated during the warm: listed at {} bytes, now {now}",
            listed.path.display(),
            listed.len
        )
    };
    let now_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let end = segment.end.min(now_len);
    if end < segment.end {
        outcome.problem = Some(shrank(now_len));
    }
    if end <= segment.start {
        return outcome;
    }
    // One mincore over the whole segment; a page read since by someone else
    // is merely read again.
    let pages = Mapping::new(&file, segment.start, end - segment.start)
        .and_then(|m| m.resident_pages())
        .unwrap_or_default();
    let page = page_size();
    let mut offset = segment.start;
    while offset < end && !cancel.load(Ordering::Relaxed) {
        let len = (end - offset).min(buf.len() as u64);
        let first = ((offset - segment.start) / page) as usize;
        let count = len.div_ceil(page) as usize;
        let resident = pages
            .get(first..first + count)
            .map(|p| resident_in(p, offset, now_len))
            .unwrap_or(0);
        if resident == len {
            outcome.skipped += len;
            progress.done.fetch_add(len, Ordering::Relaxed);
            offset += len;
            continue;
        }
        match read_fully(&file, &mut buf[..len as usize], offset) {
            Ok(got) => {
                progress.read.fetch_add(got, Ordering::Relaxed);
                progress.done.fetch_add(got, Ordering::Relaxed);
                if got < len {
                    let now = file.metadata().map(|m| m.len()).unwrap_or(offset + got);
                    outcome.problem = Some(shrank(now));
                    return outcome;
                }
            }
            Err(e) => {
                outcome.problem = Some(format!(
                    "{}: read at byte {offset} failed: {e}",
                    listed.path.display()
                ));
                return outcome;
            }
        }
        offset += len;
    }
    outcome
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_fully(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<u64> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::warm::residency::tests::{cache_dir, make_cold, write_cold};
    use crate::agent::warm::residency::{measure, resident_bytes};

    fn small_chunks() -> FillOptions {
        FillOptions {
            workers: 3,
            chunk_bytes: 64 << 10,
        }
    }

    #[test]
    fn a_cold_tree_becomes_fully_resident_and_a_second_fill_reads_nothing() {
        let dir = cache_dir();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let lens = [2 * 1024 * 1024 + 7, 300_000, 5];
        for (i, len) in lens.iter().enumerate() {
            if !write_cold(&model.join(format!("shard-{i}.safetensors")), *len) {
                return;
            }
        }
        let roots = [dir.path().to_path_buf()];
        let total: u64 = lens.iter().map(|l| *l as u64).sum();
        let before = resident_bytes(&model, &roots).unwrap();
        assert_eq!(before.total_bytes, total);
        assert!(before.resident_bytes < total, "{before:?}");

        let first = fill_path(&model, &roots, small_chunks()).unwrap();
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert_eq!(
            resident_bytes(&model, &roots).unwrap().resident_bytes,
            total
        );
        assert!(first.read_bytes >= total - before.resident_bytes);

        let second = fill_path(&model, &roots, small_chunks()).unwrap();
        assert_eq!(second.read_bytes, 0);
        assert_eq!(second.skipped_bytes, total);
    }

    #[test]
    fn a_file_truncated_after_listing_is_reported_and_the_rest_is_warmed() {
        let dir = cache_dir();
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        std::fs::write(&a, vec![7u8; 1 << 20]).unwrap();
        std::fs::write(&b, vec![9u8; 1 << 20]).unwrap();
        let listing = list_model_files(dir.path(), &[dir.path().to_path_buf()]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let warm_b = make_cold(&b);

        let progress = FillProgress::default();
        let report = fill_files(&listing, small_chunks(), &progress, &AtomicBool::new(false));

        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("a.bin was truncated during the warm"));
        assert!(report.problems[0].contains("now 1000"));
        assert_eq!(progress.total_bytes(), 2 << 20);
        assert_eq!(progress.done_bytes(), (1 << 20) + 1000);
        if warm_b {
            assert_eq!(measure(&listing).resident_bytes, (1 << 20) + 1000);
        }
    }

    #[test]
    fn a_fifo_in_the_tree_is_skipped_without_blocking_the_fill() {
        let dir = cache_dir();
        std::fs::write(dir.path().join("w.gguf"), vec![1u8; 100_000]).unwrap();
        nix::unistd::mkfifo(&dir.path().join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let root = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(fill_path(
                &root,
                std::slice::from_ref(&root),
                FillOptions::default(),
            ));
        });
        let report = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a fill with a FIFO in the tree must not block")
            .unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.read_bytes + report.skipped_bytes, 100_000);
    }

    #[test]
    fn a_cancelled_fill_stops_early() {
        let dir = cache_dir();
        let path = dir.path().join("w.bin");
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let listing = list_model_files(&path, &[dir.path().to_path_buf()]).unwrap();
        let report = fill_files(
            &listing,
            small_chunks(),
            &FillProgress::default(),
            &AtomicBool::new(true),
        );
        assert!(report.cancelled);
        assert_eq!(report.read_bytes + report.skipped_bytes, 0);
    }

    #[test]
    fn progress_gives_rate_and_time_left() {
        let progress = FillProgress::default();
        progress.set(1000, 400, 300);
        let started = Instant::now();
        let (rate, eta) = progress.rate_and_eta(started, started + Duration::from_secs(3));
        assert_eq!(rate, 100.0);
        assert_eq!(eta, Duration::from_secs(6));
        // Nothing read yet: no rate and no ETA rather than a division by zero.
        assert_eq!(
            rate_and_eta(0, 500, Duration::from_secs(1)),
            (0.0, Duration::ZERO)
        );
    }

    /// Benchmark hook (see docs/warm.md): fills GPUFLEET_WARM_BENCH_PATH with
    /// the default options and prints the time taken.
    #[test]
    #[ignore = "benchmark: run by benches/warm.sh"]
    fn warm_bench() {
        let path = PathBuf::from(
            std::env::var("GPUFLEET_WARM_BENCH_PATH").expect("set GPUFLEET_WARM_BENCH_PATH"),
        );
        let workers = std::env::var("GPUFLEET_WARM_BENCH_WORKERS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(FillOptions::default().workers);
        let opts = FillOptions {
            workers,
            ..FillOptions::default()
        };
        let started = Instant::now();
        let report = fill_path(&path, std::slice::from_ref(&path), opts).unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        println!(
            "warm_bench: {} read, {} already resident, {secs:.3} s, {:.0} MiB/s",
            report.read_bytes,
            report.skipped_bytes,
            report.read_bytes as f64 / secs / (1 << 20) as f64
        );
    }
}
