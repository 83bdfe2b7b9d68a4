//! The one task that owns every replica of this agent: reconciles toward the
//! latest assignment, turns process reports into state changes, schedules
//! restarts, persists records and publishes statuses.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::{BackoffPolicy, RestartBackoff};
use super::launch::RunAs;
use super::lifecycle::{End, Event, Report};
use super::record::{self, ReplicaRecord};
use super::{logfile, valid_replica_id, Command, SupervisorConfig};
use crate::domain::{unix_ms_now, ReplicaSpec, ReplicaState, ReplicaStatus};

/// Rotates logs and retries failed record writes.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Consecutive failures after which a replica reads `crashloop`.
const CRASHLOOP_AFTER: u32 = 3;

/// What happens once a stopping replica's process is gone.
pub(super) enum AfterStop {
    Remove,
    Replace(Box<ReplicaSpec>),
}

pub(super) enum Phase {
    /// A process exists (starting, ready or stopping).
    Running {
        stop: Option<oneshot::Sender<()>>,
        watch: JoinHandle<()>,
        after: Option<AfterStop>,
    },
    /// Waiting for the backoff delay before the next start.
    Waiting,
    /// Will not be started again until its spec changes.
    Failed,
}

pub(super) struct Replica {
    pub spec: ReplicaSpec,
    pub dir: PathBuf,
    pub status: ReplicaStatus,
    pub epoch: u64,
    pub phase: Phase,
    pub backoff: RestartBackoff,
    pub argv: Vec<String>,
    pub executable: String,
    pub start_time: u64,
    /// Why the record could not be saved; retried by housekeeping.
    pub record_error: Option<String>,
}

impl Replica {
    pub fn new(spec: ReplicaSpec, dir: PathBuf) -> Self {
        let status = ReplicaStatus {
            id: spec.id.clone(),
            model: spec.model.clone(),
            spec_hash: spec.spec_hash.clone(),
            gpus: spec.gpus.clone(),
            assignment_token: spec.assignment_token.clone(),
            ..Default::default()
        };
        Replica {
            spec,
            dir,
            status,
            epoch: 0,
            phase: Phase::Waiting,
            backoff: RestartBackoff::default(),
            argv: Vec::new(),
            executable: String::new(),
            start_time: 0,
            record_error: None,
        }
    }

    fn record(&self) -> ReplicaRecord {
        ReplicaRecord {
            spec: self.spec.clone(),
            pid: self.status.pid,
            start_time: self.start_time,
            argv: self.argv.clone(),
            executable: self.executable.clone(),
            port: self.status.port as u16,
            metrics_port: self.status.metrics_port as u16,
            restarts: self.status.restarts,
            state: self.status.state,
            started_unix_ms: self.status.started_unix_ms,
            ready_unix_ms: self.status.ready_unix_ms,
            failures: self.backoff.failures(),
            next_restart_unix_ms: self.status.next_restart_unix_ms,
            reason: self.status.reason.clone(),
        }
    }

    fn published(&self) -> ReplicaStatus {
        let mut s = self.status.clone();
        if let Some(e) = &self.record_error {
            s.reason = if s.reason.is_empty() {
                format!("state not persisted: {e}")
            } else {
                format!("{}; state not persisted: {e}", s.reason)
            };
        }
        s
    }
}

pub(super) struct Owner {
    pub cfg: SupervisorConfig,
    pub run_as: Option<RunAs>,
    policy: BackoffPolicy,
    pub replicas: BTreeMap<String, Replica>,
    /// Reported until the next assignment: replicas that ended while the
    /// agent was away, and specs refused before they got a directory.
    pub departed: Vec<ReplicaStatus>,
    status_tx: watch::Sender<Vec<ReplicaStatus>>,
    pub reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    next_epoch: u64,
    pub port_cursor: u16,
    rotation: Option<JoinHandle<()>>,
}

impl Owner {
    pub fn new(
        cfg: SupervisorConfig,
        run_as: Option<RunAs>,
        status_tx: watch::Sender<Vec<ReplicaStatus>>,
    ) -> Self {
        let policy = BackoffPolicy {
            base: cfg.backoff_base,
            cap: cfg.backoff_cap,
            reset_after: cfg.backoff_reset_after,
            jitter: 0.2,
            crashloop_after: CRASHLOOP_AFTER,
        };
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let port_cursor = *cfg.port_range.start();
        Owner {
            cfg,
            run_as,
            policy,
            replicas: BTreeMap::new(),
            departed: Vec::new(),
            status_tx,
            reports_tx,
            reports_rx,
            next_epoch: 1,
            port_cursor,
            rotation: None,
        }
    }

    pub fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    pub fn replica_dir(&self, id: &str) -> PathBuf {
        self.cfg.replicas_dir().join(id)
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.publish();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        let mut stopping_all: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                cmd = commands.recv(), if stopping_all.is_none() => match cmd {
                    Some(Command::Apply(desired, keep)) => self.apply(desired, keep),
                    Some(Command::Detach(done)) => {
                        self.detach();
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::StopAll(done)) => {
                        let ids: Vec<String> = self.replicas.keys().cloned().collect();
                        for id in ids {
                            self.request_stop(&id, AfterStop::Remove);
                        }
                        self.departed.clear();
                        stopping_all = Some(done);
                    }
                    // Every handle dropped: the agent is going away. Leave the
                    // servers running, as a detach would.
                    None => {
                        self.detach();
                        return;
                    }
                },
                Some(report) = self.reports_rx.recv() => self.on_report(report),
                _ = housekeeping.tick() => self.housekeeping(),
            }
            self.publish();
            if stopping_all.is_some() && self.replicas.is_empty() {
                if let Some(done) = stopping_all.take() {
                    let _ = done.send(());
                }
                return;
            }
        }
    }

    fn detach(&mut self) {
        for r in self.replicas.values_mut() {
            if let Phase::Running { watch, stop, .. } = &mut r.phase {
                // Dropping the stop sender first tells the watch to leave the
                // server alone, whatever it is doing.
                stop.take();
                watch.abort();
            }
        }
        let ids: Vec<String> = self.replicas.keys().cloned().collect();
        for id in ids {
            self.persist(&id);
        }
    }

    pub fn publish(&self) {
        let mut all: Vec<ReplicaStatus> = self.replicas.values().map(Replica::published).collect();
        all.extend(self.departed.iter().cloned());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        self.status_tx.send_if_modified(|current| {
            if *current == all {
                false
            } else {
                *current = all;
                true
            }
        });
    }

    fn apply(&mut self, desired: Vec<ReplicaSpec>, keep: Vec<String>) {
        let departed = std::mem::take(&mut self.departed);
        let mut wanted: HashSet<String> = keep.into_iter().collect();
        for spec in desired {
            if !wanted.insert(spec.id.clone()) {
                tracing::warn!(replica_id = %spec.id, "assignment names a replica twice; using the first");
                continue;
            }
            if !valid_replica_id(&spec.id) {
                self.departed.push(ReplicaStatus {
                    id: spec.id.clone(),
                    model: spec.model.clone(),
                    spec_hash: spec.spec_hash.clone(),
                    state: ReplicaState::Failed,
                    gpus: spec.gpus.clone(),
                    reason: format!(
                        "invalid replica id {:?}: use 1..=128 of [A-Za-z0-9._-], not starting with '.'",
                        spec.id
                    ),
                    ..Default::default()
                });
                continue;
            }
            let id = spec.id.clone();
            let Some(existing) = self.replicas.get_mut(&id) else {
                let dir = self.replica_dir(&id);
                let mut r = Replica::new(spec, dir);
                // A replica that died while the agent was away and is still
                // wanted is being restarted, not started for the first time.
                if let Some(gone) = departed
                    .iter()
                    .find(|d| d.id == id && d.spec_hash == r.spec.spec_hash)
                {
                    r.status.restarts = gone.restarts + 1;
                }
                self.replicas.insert(id.clone(), r);
                self.launch(&id);
                continue;
            };
            let stopping = matches!(&existing.phase, Phase::Running { after: Some(_), .. });
            if stopping || existing.spec.spec_hash != spec.spec_hash {
                self.request_stop(&id, AfterStop::Replace(Box::new(spec)));
            } else if existing.spec.assignment_token != spec.assignment_token {
                // A token that arrives later (the coordinator was upgraded
                // or its key changed) is kept without a restart, so the next
                // coordinator start can adopt the replica.
                existing.spec.assignment_token = spec.assignment_token.clone();
                existing.status.assignment_token = spec.assignment_token;
                self.persist(&id);
            }
        }
        let unwanted: Vec<String> = self
            .replicas
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in unwanted {
            self.request_stop(&id, AfterStop::Remove);
        }
    }

    /// Stops the replica's process if it has one, then removes or replaces it.
    fn request_stop(&mut self, id: &str, then: AfterStop) {
        let Some(r) = self.replicas.get_mut(id) else {
            return;
        };
        match &mut r.phase {
            Phase::Running { stop, after, .. } => {
                if let Some(stop) = stop.take() {
                    logfile::note(&r.dir, "stopping: SIGTERM to the process group");
                    let _ = stop.send(());
                }
                *after = Some(then);
                r.status.state = ReplicaState::Stopping;
                r.status.next_restart_unix_ms = 0;
                self.persist(id);
            }
            Phase::Waiting | Phase::Failed => self.finish_stop(id, then),
        }
    }

    fn finish_stop(&mut self, id: &str, then: AfterStop) {
        match then {
            AfterStop::Remove => {
                if let Some(r) = self.replicas.remove(id) {
                    logfile::note(&r.dir, "stopped and removed");
                    if let Err(e) = record::remove(&r.dir) {
                        tracing::warn!(replica_id = id, error = %e, "cannot remove replica record");
                    }
                }
            }
            AfterStop::Replace(spec) => {
                let dir = self.replica_dir(id);
                logfile::note(&dir, &format!("replacing with spec {}", spec.spec_hash));
                self.replicas
                    .insert(id.to_string(), Replica::new(*spec, dir));
                self.launch(id);
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        let Some(r) = self.replicas.get_mut(&report.id) else {
            return;
        };
        if r.epoch != report.epoch {
            return;
        }
        match report.event {
            Event::Ready => {
                r.status.state = ReplicaState::Ready;
                r.status.ready_unix_ms = unix_ms_now();
                r.status.reason.clear();
                r.backoff.on_ready(Instant::now().into_std());
                logfile::note(&r.dir, "ready");
                self.persist(&report.id);
            }
            Event::RestartDue => {
                if matches!(r.phase, Phase::Waiting) {
                    r.status.restarts += 1;
                    self.launch(&report.id);
                }
            }
            Event::Ended(end) => self.on_end(&report.id, end),
        }
    }

    fn on_end(&mut self, id: &str, end: End) {
        let Some(r) = self.replicas.get_mut(id) else {
            return;
        };
        let after = match &mut r.phase {
            Phase::Running { after, .. } => after.take(),
            Phase::Waiting | Phase::Failed => return,
        };
        r.status.pid = 0;
        if let Some(then) = after {
            r.status.state = ReplicaState::Stopped;
            if let End::Stopped { killed: true } = end {
                logfile::note(
                    &r.dir,
                    "did not stop within stop_timeout; killed (SIGKILL to the group)",
                );
            }
            self.finish_stop(id, then);
            return;
        }
        let why = match end {
            End::Exited(how) => how.to_string(),
            End::Stopped { .. } => "stopped".to_string(),
            End::NotReady {
                timeout,
                last_probe,
            } => format!(
                "not ready within ready_timeout ({}; last probe: {last_probe}); stopped",
                humantime::format_duration(timeout)
            ),
        };
        self.schedule_restart(id, why);
    }

    /// Counts a failure and arms the timer for the next start.
    pub(super) fn schedule_restart(&mut self, id: &str, why: String) {
        let epoch = self.epoch();
        let Some(r) = self.replicas.get_mut(id) else {
            return;
        };
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let delay = r
            .backoff
            .on_failure(Instant::now().into_std(), &self.policy, jitter);
        r.epoch = epoch;
        r.phase = Phase::Waiting;
        r.status.pid = 0;
        r.status.state = if r.backoff.in_crashloop(&self.policy) {
            ReplicaState::Crashloop
        } else {
            ReplicaState::Starting
        };
        r.status.next_restart_unix_ms = unix_ms_now() + delay.as_millis() as i64;
        r.status.reason = format!(
            "{why}; restart {} in {}",
            r.backoff.failures(),
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        logfile::note(&r.dir, &r.status.reason);
        tracing::info!(replica_id = id, reason = %r.status.reason, "replica will restart");
        let reports = self.reports_tx.clone();
        let id_owned = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = reports.send(Report {
                id: id_owned,
                epoch,
                event: Event::RestartDue,
            });
        });
        self.persist(id);
    }

    /// Saves the replica's record. A failure (disk full) never stops
    /// supervision: it shows in the replica's reason and is retried.
    pub fn persist(&mut self, id: &str) {
        let Some(r) = self.replicas.get_mut(id) else {
            return;
        };
        if matches!(r.phase, Phase::Failed) {
            return;
        }
        match record::save(&r.dir, &r.record()) {
            Ok(()) => r.record_error = None,
            Err(e) => {
                let msg = e.to_string();
                if r.record_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(replica_id = id, error = %msg, "cannot persist replica record; will retry");
                    logfile::note(&r.dir, &format!("cannot persist record: {msg}"));
                }
                r.record_error = Some(msg);
            }
        }
    }

    fn housekeeping(&mut self) {
        let dirty: Vec<String> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.record_error.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in dirty {
            self.persist(&id);
        }
        if self.rotation.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let dirs: Vec<PathBuf> = self.replicas.values().map(|r| r.dir.clone()).collect();
        let (max, files) = (self.cfg.log_max_bytes, self.cfg.log_files);
        // Copying 10 MiB is blocking file I/O: keep it off the owning task.
        self.rotation = Some(tokio::task::spawn_blocking(move || {
            for dir in dirs {
                if let Err(e) = logfile::rotate_if_needed(&dir, max, files) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot rotate replica log");
                }
            }
        }));
    }
}
