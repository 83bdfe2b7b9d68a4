//! Turning a replica's spec into a running process: the checks that can
//! refuse it (template, executable, allow-list, weights), the port, the spawn,
//! and the watch that follows it.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use tokio::sync::oneshot;

use super::launch::{self, LaunchPlan};
use super::lifecycle::{self, Watched};
use super::owner::{Owner, Phase};
use super::readiness::ReadinessProbe;
use super::template::{self, TemplateVars};
use super::{logfile, process, record};
use crate::agent::warm::paths::resolve_model_path;
use crate::domain::{unix_ms_now, MetricsPort, ReplicaSpec, ReplicaState};
use crate::security::env_policy;

/// Used when a spec leaves `ready_timeout` at zero: loading a large model
/// takes minutes, and zero would fail every start at once.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Used when a spec leaves `stop_timeout` at zero.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn ready_timeout(spec: &ReplicaSpec) -> Duration {
    if spec.ready_timeout.is_zero() {
        DEFAULT_READY_TIMEOUT
    } else {
        spec.ready_timeout
    }
}

pub(super) fn stop_timeout(spec: &ReplicaSpec) -> Duration {
    if spec.stop_timeout.is_zero() {
        DEFAULT_STOP_TIMEOUT
    } else {
        spec.stop_timeout
    }
}

/// A launch that did not produce a process.
enum LaunchFailure {
    /// Retrying cannot help until the spec changes.
    Permanent(String),
    /// Worth retrying with backoff (no free port, log not writable).
    Transient(String),
}

impl Owner {
    pub(super) fn launch(&mut self, id: &str) {
        let epoch = self.epoch();
        let result = self.start_process(id, epoch);
        let Some(r) = self.replicas.get_mut(id) else {
            return;
        };
        r.epoch = epoch;
        match result {
            Ok(()) => self.persist(id),
            Err(LaunchFailure::Permanent(reason)) => {
                logfile::note(&r.dir, &format!("failed: {reason}"));
                tracing::warn!(replica_id = id, %reason, "replica cannot start");
                r.phase = Phase::Failed;
                r.status.state = ReplicaState::Failed;
                r.status.pid = 0;
                r.status.next_restart_unix_ms = 0;
                r.status.reason = reason;
                if let Err(e) = record::remove(&r.dir) {
                    tracing::warn!(replica_id = id, error = %e, "cannot remove replica record");
                }
            }
            Err(LaunchFailure::Transient(reason)) => self.schedule_restart(id, reason),
        }
    }

    /// Validates, picks a port, spawns and starts the watch. On success the
    /// replica is `Running` and `Starting`.
    fn start_process(&mut self, id: &str, epoch: u64) -> Result<(), LaunchFailure> {
        use LaunchFailure::{Permanent, Transient};
        let mut used: HashSet<u16> = self
            .replicas
            .values()
            .filter(|r| r.spec.id != id && r.status.pid != 0)
            .flat_map(|r| [r.status.port as u16, r.status.metrics_port as u16])
            .filter(|p| *p != 0)
            .collect();
        let r = self
            .replicas
            .get(id)
            .ok_or_else(|| Permanent("replica vanished".into()))?;
        let spec = &r.spec;
        // No roots means no weights path is allowed, as the config says.
        let weights = if spec.weights.is_empty() {
            String::new()
        } else {
            resolve_model_path(Path::new(&spec.weights), &self.cfg.model_roots)
                .map_err(|e| Permanent(format!("weights: {e}")))?
                .display()
                .to_string()
        };
        if let Some(refused) =
            env_policy::refused(spec.env.keys().map(String::as_str), &self.cfg.allowed_env)
        {
            return Err(Permanent(refused.message("the agent config")));
        }
        let vars = |port, metrics_port| TemplateVars {
            port,
            metrics_port,
            weights: &weights,
            gpus: &spec.gpus,
            replica_id: &spec.id,
            model: &spec.model,
        };
        let checked = template::render_command(&spec.command, &spec.env, &vars(0, 0))
            .map_err(|e| Permanent(format!("command: {e}")))?;
        let executable =
            launch::resolve_executable(&checked.argv[0]).map_err(|e| Permanent(e.to_string()))?;
        launch::check_allowed(&executable, &self.cfg.allowed_executables)
            .map_err(|e| Permanent(e.to_string()))?;
        let as_root = launch::check_root(
            self.run_as.as_ref(),
            nix::unistd::geteuid().is_root(),
            self.cfg.allow_root_replicas,
        )
        .map_err(Permanent)?;
        let port =
            launch::pick_port(&self.cfg.port_range, &used, self.port_cursor).ok_or_else(|| {
                Transient(format!(
                    "no free port in port_range {}-{}",
                    self.cfg.port_range.start(),
                    self.cfg.port_range.end()
                ))
            })?;
        used.insert(port);
        let metrics_port = match spec.metrics_port {
            MetricsPort::Server => 0,
            MetricsPort::Fixed(p) => p,
            MetricsPort::Second => {
                launch::pick_port(&self.cfg.port_range, &used, port.wrapping_add(1)).ok_or_else(
                    || {
                        Transient(format!(
                            "no second free port for metrics in port_range {}-{}",
                            self.cfg.port_range.start(),
                            self.cfg.port_range.end()
                        ))
                    },
                )?
            }
        };
        let rendered =
            template::render_command(&spec.command, &spec.env, &vars(port, metrics_port))
                .map_err(|e| Permanent(format!("command: {e}")))?;
        if self.cfg.check_args {
            launch::check_argument_paths(
                &rendered.argv,
                &self.cfg.model_roots,
                &self.cfg.allowed_paths,
            )
            .map_err(Permanent)?;
        }
        let log = logfile::open_for_child(&r.dir).map_err(|e| {
            Transient(format!(
                "cannot open {}: {e}",
                r.dir.join(logfile::LOG_FILE).display()
            ))
        })?;
        logfile::note(
            &r.dir,
            &format!("starting on port {port}: {}", rendered.argv.join(" ")),
        );
        let pid = launch::spawn(LaunchPlan {
            executable: &executable,
            argv: &rendered.argv,
            env: &rendered.env,
            cuda_visible_devices: template::visible_devices(
                &spec.gpus,
                &self.cfg.gpu_uuids.borrow(),
            ),
            log,
            run_as: self.run_as.as_ref(),
        })
        .map_err(|e| Permanent(e.to_string()))?;
        // A process that already exited is still a zombie here (only we reap
        // it), so its stat is readable.
        let start_time = process::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
        self.port_cursor = port.max(metrics_port).wrapping_add(1);
        let probe = ReadinessProbe::new(self.cfg.probe_host, port, &spec.health_path);
        let watched = Watched {
            id: id.to_string(),
            epoch,
            pid,
            start_time,
            probe,
            ready: false,
            ready_timeout: ready_timeout(spec),
            stop_timeout: stop_timeout(spec),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let watch = lifecycle::watch(watched, self.reports_tx.clone(), stop_rx);
        let r = self
            .replicas
            .get_mut(id)
            .ok_or_else(|| Permanent("replica vanished".into()))?;
        r.argv = rendered.argv;
        r.executable = executable.display().to_string();
        r.start_time = start_time;
        r.phase = Phase::Running {
            stop: Some(stop_tx),
            watch,
            after: None,
        };
        r.status.state = ReplicaState::Starting;
        r.status.pid = pid;
        r.status.runs_as_root = as_root;
        r.status.port = port as u32;
        r.status.metrics_port = u32::from(metrics_port);
        r.status.started_unix_ms = unix_ms_now();
        r.status.ready_unix_ms = 0;
        r.status.next_restart_unix_ms = 0;
        Ok(())
    }
}
