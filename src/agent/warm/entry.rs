//! One warm cache entry as the warmer tracks it, and the status it reports.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::fill::FillProgress;
use super::lock::ModelLock;
use crate::domain::WarmStatus;

/// Entries are keyed by model and path: one model may be warm at two paths.
pub(super) type EntryKey = (String, String);

pub(super) enum Phase {
    Idle,
    Warming {
        progress: Arc<FillProgress>,
        cancel: Arc<AtomicBool>,
        started: Instant,
    },
    Evicting,
}

pub(super) struct WarmEntry {
    pub model: String,
    pub path: String,
    /// Assigned warm now: filled, protected.
    pub warm: bool,
    /// A replica runs it now: protected, not filled by us.
    pub kept: bool,
    pub lock_wanted: bool,
    /// An mlock was refused for this assignment: not retried until it changes.
    pub lock_refused: bool,
    pub last_use: Instant,
    pub resident_bytes: u64,
    pub total_bytes: u64,
    /// Residency has been measured at least once.
    pub measured: bool,
    /// A fill should start when the I/O workers are free.
    pub fill_due: bool,
    /// The path cannot be warmed at all (refused, missing, over budget).
    pub failed: bool,
    /// Problems of the last fill (truncated files, mlock refusal, budget).
    pub fill_error: String,
    /// Problems of the last measurement (skipped entries, vanished files).
    pub measure_error: String,
    pub phase: Phase,
    pub lock: Option<ModelLock>,
    /// When it was last evicted: pages a process still maps survive
    /// DONTNEED, and such an entry is not evicted again at every pass.
    pub evicted_at: Option<Instant>,
    /// The operator asked to drop it from the page cache (`warm evict`).
    pub evict_wanted: bool,
    /// That ask was carried out, and nothing has read it back in since.
    pub evict_done: bool,
}

impl WarmEntry {
    pub fn new(model: &str, path: &str, now: Instant) -> WarmEntry {
        WarmEntry {
            model: model.to_string(),
            path: path.to_string(),
            warm: false,
            kept: false,
            lock_wanted: false,
            lock_refused: false,
            last_use: now,
            resident_bytes: 0,
            total_bytes: 0,
            measured: false,
            fill_due: false,
            failed: false,
            fill_error: String::new(),
            measure_error: String::new(),
            phase: Phase::Idle,
            lock: None,
            evicted_at: None,
            evict_wanted: false,
            evict_done: false,
        }
    }

    pub fn protected(&self) -> bool {
        self.warm || self.kept
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
    }

    /// Bytes the budget should count for it: a model being warmed will soon
    /// occupy its whole size, so it is counted at that.
    pub fn budgeted_bytes(&self) -> u64 {
        match self.phase {
            Phase::Warming { .. } => self.total_bytes.max(self.resident_bytes),
            _ => self.resident_bytes,
        }
    }

    fn state(&self) -> &'static str {
        match self.phase {
            Phase::Warming { .. } => "warming",
            Phase::Evicting => "evicting",
            Phase::Idle if self.failed => "failed",
            // Queued behind another fill: it is on its way.
            Phase::Idle if self.warm && self.fill_due => "warming",
            Phase::Idle if self.measured && self.resident_bytes >= self.total_bytes => "resident",
            Phase::Idle => "partial",
        }
    }

    pub fn status(&self, now: Instant) -> WarmStatus {
        let mut status = WarmStatus {
            model: self.model.clone(),
            path: self.path.clone(),
            resident_bytes: self.resident_bytes,
            total_bytes: self.total_bytes,
            state: self.state().to_string(),
            rate_bytes_per_s: 0.0,
            eta_ms: 0,
            error: [self.fill_error.as_str(), self.measure_error.as_str()]
                .iter()
                .filter(|e| !e.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("; "),
            locked: self.lock.is_some(),
        };
        if let Phase::Warming {
            progress, started, ..
        } = &self.phase
        {
            if progress.total_bytes() > 0 {
                status.total_bytes = progress.total_bytes();
                status.resident_bytes = progress.done_bytes().max(self.resident_bytes);
            }
            let (rate, eta) = progress.rate_and_eta(*started, now);
            status.rate_bytes_per_s = rate;
            status.eta_ms = u64::try_from(eta.as_millis()).unwrap_or(u64::MAX);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_phase_then_failure_then_residency() {
        let now = Instant::now();
        let mut entry = WarmEntry::new("m", "/srv/models/m", now);
        assert_eq!(entry.status(now).state, "partial");
        entry.warm = true;
        entry.fill_due = true;
        assert_eq!(entry.status(now).state, "warming");
        entry.fill_due = false;
        entry.measured = true;
        entry.total_bytes = 10;
        entry.resident_bytes = 10;
        assert_eq!(entry.status(now).state, "resident");
        entry.resident_bytes = 4;
        assert_eq!(entry.status(now).state, "partial");
        entry.phase = Phase::Evicting;
        assert_eq!(entry.status(now).state, "evicting");
        entry.phase = Phase::Idle;
        entry.failed = true;
        entry.measure_error = "gone".into();
        entry.fill_error = "truncated".into();
        let status = entry.status(now);
        assert_eq!(status.state, "failed");
        assert_eq!(status.error, "truncated; gone");
    }

    #[test]
    fn a_warming_entry_reports_progress_rate_and_eta_and_is_budgeted_at_full_size() {
        let started = Instant::now();
        let mut entry = WarmEntry::new("m", "/srv/models/m", started);
        entry.total_bytes = 1000;
        entry.resident_bytes = 100;
        let progress = Arc::new(FillProgress::default());
        entry.phase = Phase::Warming {
            progress: progress.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
            started,
        };
        assert_eq!(entry.budgeted_bytes(), 1000);
        let status = entry.status(started);
        assert_eq!(
            (
                status.state.as_str(),
                status.rate_bytes_per_s,
                status.eta_ms
            ),
            ("warming", 0.0, 0)
        );
        assert_eq!(status.resident_bytes, 100);

        progress.set(1000, 600, 500);
        let status = entry.status(started + std::time::Duration::from_secs(2));
        assert_eq!(status.resident_bytes, 600);
        assert_eq!(status.rate_bytes_per_s, 250.0);
        assert_eq!(status.eta_ms, 1600);
    }
}
