//! The agent's warmer: one task owns every warm entry, brings the desired ones
//! into the page cache one model at a time, re-measures residency, evicts
//! over budget, and publishes statuses. All file I/O runs on blocking threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::budget::{evict, plan_eviction, BudgetEntry};
use super::entry::{EntryKey, Phase, WarmEntry};
use super::files::list_model_files;
use super::fill::{fill_files, FillOptions, FillProgress, FillReport};
use super::lock::{lock_files, LockError, ModelLock};
use super::residency::{measure, Residency};
use crate::domain::{WarmSpec, WarmStatus};

/// How often statuses (progress, rate, ETA) are republished while idle.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq)]
pub struct WarmerConfig {
    /// Warm paths must resolve under one of these.
    pub model_roots: Vec<PathBuf>,
    /// Resident bytes the warm cache may hold (the caller converts "50%").
    pub budget_bytes: u64,
    /// Reading threads of one fill: the warmer's whole I/O concurrency.
    pub io_workers: usize,
    pub chunk_bytes: usize,
    /// How often residency is measured again (the kernel evicts on its own).
    pub refresh_interval: Duration,
}

impl WarmerConfig {
    /// The defaults: 4 workers, 8 MiB reads, residency re-measured every 10 s.
    pub fn new(model_roots: Vec<PathBuf>, budget_bytes: u64) -> WarmerConfig {
        WarmerConfig {
            model_roots,
            budget_bytes,
            io_workers: FillOptions::default().workers,
            chunk_bytes: FillOptions::default().chunk_bytes,
            refresh_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Assigned warm: filled and protected.
    pub warm: Vec<WarmSpec>,
    /// (model, path) of models replicas run here: protected, not filled.
    pub keep: Vec<(String, String)>,
    /// The operator asked to drop these from the page cache (`warm evict`);
    /// ignored for a model that is also warm or kept.
    pub evict: Vec<WarmSpec>,
}

/// Handle to the warmer task; clones share it. The task stops, releasing its
/// locks, when the last handle is dropped.
#[derive(Clone)]
pub struct Warmer {
    desired: Arc<watch::Sender<Desired>>,
    statuses: watch::Receiver<Vec<WarmStatus>>,
}

impl Warmer {
    /// Starts the warmer task on the current tokio runtime.
    pub fn spawn(cfg: WarmerConfig) -> Warmer {
        let (desired_tx, desired_rx) = watch::channel(Desired::default());
        let (status_tx, status_rx) = watch::channel(Vec::new());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let task = Task {
            roots: Arc::new(cfg.model_roots.clone()),
            cfg,
            entries: BTreeMap::new(),
            order: Vec::new(),
            filling: None,
            measuring: false,
            measure_due: false,
            last_measure: None,
            done_tx,
            status_tx,
        };
        tokio::spawn(task.run(desired_rx, done_rx));
        Warmer {
            desired: Arc::new(desired_tx),
            statuses: status_rx,
        }
    }

    /// Desired warm entries from the latest assignment, plus (model, path) of
    /// models to keep because replicas run them. Level-triggered: the same
    /// lists again change nothing. Entries left out stay cached, unprotected,
    /// until the budget evicts them (least recently used first).
    pub fn set_desired(&self, warm: Vec<WarmSpec>, keep: Vec<(String, String)>) {
        self.set(Desired {
            warm,
            keep,
            evict: Vec::new(),
        });
    }

    /// Like `set_desired`, with the operator's evictions. An eviction is
    /// carried out by the warmer itself, so residency is measured again as
    /// soon as the pages are dropped and `warm ls` shows it at once.
    pub fn set(&self, next: Desired) {
        self.desired.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            *current = next;
            true
        });
    }

    /// Statuses of every entry, ordered by model then path.
    pub fn statuses(&self) -> Vec<WarmStatus> {
        self.statuses.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<WarmStatus>> {
        self.statuses.clone()
    }
}

enum JobDone {
    Filled {
        key: EntryKey,
        outcome: Result<Filled, String>,
    },
    Measured(Vec<(EntryKey, Measurement)>),
    Evicted {
        key: EntryKey,
        problems: Vec<String>,
        residency: Residency,
    },
}

/// An entry's residency and skipped files, or why its path cannot be listed.
type Measurement = Result<(Residency, Vec<String>), String>;

struct Filled {
    report: FillReport,
    residency: Residency,
    skipped: Vec<String>,
    lock: Option<Result<ModelLock, LockError>>,
}

struct Task {
    cfg: WarmerConfig,
    roots: Arc<Vec<PathBuf>>,
    entries: BTreeMap<EntryKey, WarmEntry>,
    /// Warm entries in assignment order: fills go in this order.
    order: Vec<EntryKey>,
    filling: Option<EntryKey>,
    measuring: bool,
    measure_due: bool,
    last_measure: Option<Instant>,
    done_tx: mpsc::UnboundedSender<JobDone>,
    status_tx: watch::Sender<Vec<WarmStatus>>,
}

impl Task {
    async fn run(
        mut self,
        mut desired_rx: watch::Receiver<Desired>,
        mut done_rx: mpsc::UnboundedReceiver<JobDone>,
    ) {
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = desired_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let desired = desired_rx.borrow_and_update().clone();
                    self.apply_desired(desired, Instant::now());
                }
                Some(done) = done_rx.recv() => self.apply_done(done, Instant::now()),
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            self.reconcile(now);
            self.publish(now);
        }
        for entry in self.entries.values_mut() {
            if let Phase::Warming { cancel, .. } = &entry.phase {
                cancel.store(true, Ordering::Relaxed);
            }
            release_lock(entry.lock.take());
        }
    }

    fn apply_desired(&mut self, desired: Desired, now: Instant) {
        for entry in self.entries.values_mut() {
            entry.warm = false;
            entry.kept = false;
            entry.evict_wanted = false;
        }
        self.order.clear();
        for spec in &desired.warm {
            let key = (spec.model.clone(), spec.path.clone());
            let entry = self
                .entries
                .entry(key.clone())
                .or_insert_with(|| WarmEntry::new(&spec.model, &spec.path, now));
            // A new or changed assignment gets a fresh attempt.
            if !entry.warm || entry.lock_wanted != spec.lock {
                entry.fill_due = true;
                entry.failed = false;
                entry.lock_refused = false;
            }
            entry.warm = true;
            entry.lock_wanted = spec.lock;
            if !self.order.contains(&key) {
                self.order.push(key);
            }
        }
        for (model, path) in &desired.keep {
            let entry = self
                .entries
                .entry((model.clone(), path.clone()))
                .or_insert_with(|| WarmEntry::new(model, path, now));
            entry.kept = true;
            if !entry.measured {
                self.measure_due = true;
            }
        }
        for spec in &desired.evict {
            let entry = self
                .entries
                .entry((spec.model.clone(), spec.path.clone()))
                .or_insert_with(|| WarmEntry::new(&spec.model, &spec.path, now));
            if !entry.protected() {
                entry.evict_wanted = true;
            }
        }
        // `warm` was reset above, so a fill whose entry is still warm stays.
        if let Some(key) = &self.filling {
            if let Some(WarmEntry {
                warm: false,
                phase: Phase::Warming { cancel, .. },
                ..
            }) = self.entries.get(key)
            {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    }

    fn apply_done(&mut self, done: JobDone, now: Instant) {
        match done {
            JobDone::Filled { key, outcome } => {
                self.filling = None;
                let Some(entry) = self.entries.get_mut(&key) else {
                    return;
                };
                entry.phase = Phase::Idle;
                match outcome {
                    Ok(filled) => {
                        entry.measured = true;
                        entry.failed = false;
                        entry.fill_due = filled.report.cancelled && entry.warm;
                        entry.resident_bytes = filled.residency.resident_bytes;
                        entry.total_bytes = filled.residency.total_bytes;
                        let mut problems = filled.report.problems;
                        match filled.lock {
                            Some(Ok(lock)) if entry.warm && entry.lock_wanted => {
                                release_lock(entry.lock.replace(lock));
                            }
                            Some(Ok(lock)) => release_lock(Some(lock)),
                            Some(Err(e)) => {
                                entry.lock_refused = true;
                                problems.push(format!("{e}; kept warm unlocked"));
                            }
                            None => {}
                        }
                        entry.fill_error = problems.join("; ");
                        entry.measure_error = [filled.skipped, filled.residency.problems]
                            .concat()
                            .join("; ");
                    }
                    Err(e) => {
                        entry.failed = true;
                        entry.fill_due = false;
                        entry.fill_error = e;
                    }
                }
            }
            JobDone::Measured(results) => {
                self.measuring = false;
                self.last_measure = Some(now);
                for (key, result) in results {
                    let Some(entry) = self.entries.get_mut(&key) else {
                        continue;
                    };
                    if !entry.is_idle() {
                        continue;
                    }
                    entry.measured = true;
                    match result {
                        Ok((residency, skipped)) => {
                            entry.failed = false;
                            entry.resident_bytes = residency.resident_bytes;
                            entry.total_bytes = residency.total_bytes;
                            entry.measure_error = [skipped, residency.problems].concat().join("; ");
                            let lock_missing =
                                entry.lock_wanted && entry.lock.is_none() && !entry.lock_refused;
                            if entry.warm
                                && (entry.resident_bytes < entry.total_bytes || lock_missing)
                            {
                                entry.fill_due = true;
                            }
                            // Read back in since the operator's eviction (a
                            // process opened it): evict again, level-triggered.
                            if entry.evict_wanted && entry.resident_bytes > 0 {
                                entry.evict_done = false;
                            }
                        }
                        Err(e) => {
                            entry.failed = true;
                            entry.fill_due = false;
                            entry.resident_bytes = 0;
                            entry.total_bytes = 0;
                            entry.measure_error = e;
                        }
                    }
                }
            }
            JobDone::Evicted {
                key,
                problems,
                residency,
            } => {
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.phase = Phase::Idle;
                    entry.measured = true;
                    entry.evict_done = entry.evict_wanted;
                    entry.resident_bytes = residency.resident_bytes;
                    entry.total_bytes = residency.total_bytes;
                    entry.measure_error = [problems, residency.problems].concat().join("; ");
                }
            }
        }
    }

    fn reconcile(&mut self, now: Instant) {
        for entry in self.entries.values_mut() {
            if entry.protected() {
                entry.last_use = now;
            }
            if !(entry.warm && entry.lock_wanted) {
                release_lock(entry.lock.take());
            }
        }
        if self.filling.is_none() {
            self.start_next_fill(now);
        }
        let refresh_due = self
            .last_measure
            .is_none_or(|at| now.saturating_duration_since(at) >= self.cfg.refresh_interval);
        if !self.measuring && (self.measure_due || refresh_due) {
            self.start_measure();
        }
        self.evict_asked(now);
        self.evict_over_budget(now);
        self.entries.retain(|_, e| {
            e.protected()
                || !e.is_idle()
                || e.lock.is_some()
                || !e.measured
                || (e.resident_bytes > 0 && !e.failed)
        });
    }

    fn start_measure(&mut self) {
        let targets: Vec<(EntryKey, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.is_idle())
            .map(|(k, e)| (k.clone(), e.path.clone()))
            .collect();
        self.measuring = true;
        self.measure_due = false;
        let roots = self.roots.clone();
        let tx = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let results = targets
                .into_iter()
                .map(|(key, path)| {
                    let result = list_model_files(Path::new(&path), &roots)
                        .map(|files| (measure(&files), files.skipped))
                        .map_err(|e| e.to_string());
                    (key, result)
                })
                .collect();
            let _ = tx.send(JobDone::Measured(results));
        });
    }

    fn start_next_fill(&mut self, now: Instant) {
        let budget = self.cfg.budget_bytes;
        let Some(key) = self
            .order
            .iter()
            .find(|k| {
                self.entries
                    .get(*k)
                    .is_some_and(|e| e.warm && e.fill_due && e.is_idle() && !e.failed)
            })
            .cloned()
        else {
            return;
        };
        let held_by_others: u64 = self
            .entries
            .iter()
            .filter(|(k, e)| **k != key && e.protected())
            .map(|(_, e)| e.budgeted_bytes())
            .sum();
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if !entry.measured {
            // The budget check needs its size: measure first.
            self.measure_due = true;
            return;
        }
        entry.fill_due = false;
        if held_by_others.saturating_add(entry.total_bytes) > budget {
            entry.failed = true;
            entry.fill_error = format!(
                "does not fit the warm budget: needs {} bytes, the budget is {budget} bytes and \
                 other assigned or running models hold {held_by_others}",
                entry.total_bytes
            );
            return;
        }
        let progress = Arc::new(FillProgress::default());
        let cancel = Arc::new(AtomicBool::new(false));
        entry.phase = Phase::Warming {
            progress: progress.clone(),
            cancel: cancel.clone(),
            started: now,
        };
        let want_lock = entry.lock_wanted && entry.lock.is_none() && !entry.lock_refused;
        let opts = FillOptions {
            workers: self.cfg.io_workers,
            chunk_bytes: self.cfg.chunk_bytes,
        };
        let path = PathBuf::from(&entry.path);
        let roots = self.roots.clone();
        let tx = self.done_tx.clone();
        self.filling = Some(key.clone());
        tokio::task::spawn_blocking(move || {
            let outcome = list_model_files(&path, &roots)
                .map(|files| {
                    let report = fill_files(&files, opts, &progress, &cancel);
                    let lock = (want_lock && !report.cancelled).then(|| lock_files(&files));
                    Filled {
                        report,
                        residency: measure(&files),
                        skipped: files.skipped,
                        lock,
                    }
                })
                .map_err(|e| e.to_string());
            let _ = tx.send(JobDone::Filled { key, outcome });
        });
    }

    fn evict_over_budget(&mut self, now: Instant) {
        let refresh = self.cfg.refresh_interval;
        // Entries being evicted are on their way out and not counted; one
        // evicted lately that is still resident is counted but left alone.
        let candidates: Vec<BudgetEntry<EntryKey>> = self
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.phase, Phase::Evicting))
            .map(|(k, e)| BudgetEntry {
                key: k.clone(),
                resident_bytes: e.budgeted_bytes(),
                last_use: e.last_use,
                protected: e.protected()
                    || !e.is_idle()
                    || e.evicted_at
                        .is_some_and(|at| now.saturating_duration_since(at) < refresh),
            })
            .collect();
        for key in plan_eviction(&candidates, self.cfg.budget_bytes) {
            self.start_evict(key, now);
        }
    }

    /// Evicts what the operator asked to evict, once per ask (and again when
    /// a measurement finds it read back in), never a protected entry and
    /// not more often than the refresh interval: pages a process maps
    /// survive DONTNEED.
    fn evict_asked(&mut self, now: Instant) {
        let refresh = self.cfg.refresh_interval;
        let due: Vec<EntryKey> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.evict_wanted
                    && !e.evict_done
                    && !e.protected()
                    && e.is_idle()
                    && e.evicted_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= refresh)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.start_evict(key, now);
        }
    }

    /// Drops an entry's pages off the runtime, then measures it again.
    fn start_evict(&mut self, key: EntryKey, now: Instant) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.phase = Phase::Evicting;
        entry.evicted_at = Some(now);
        release_lock(entry.lock.take());
        let path = PathBuf::from(&entry.path);
        let roots = self.roots.clone();
        let tx = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let (problems, residency) = match list_model_files(&path, &roots) {
                Ok(files) => (evict(&files), measure(&files)),
                Err(e) => (vec![e.to_string()], Residency::default()),
            };
            let _ = tx.send(JobDone::Evicted {
                key,
                problems,
                residency,
            });
        });
    }

    fn publish(&self, now: Instant) {
        let statuses: Vec<WarmStatus> = self.entries.values().map(|e| e.status(now)).collect();
        self.status_tx.send_if_modified(|current| {
            if *current == statuses {
                return false;
            }
            *current = statuses;
            true
        });
    }
}

/// Unmapping a large locked model can take a while: do it off the runtime.
fn release_lock(lock: Option<ModelLock>) {
    if let Some(lock) = lock {
        tokio::task::spawn_blocking(move || drop(lock));
    }
}

#[cfg(test)]
#[path = "warmer_tests.rs"]
mod tests;
