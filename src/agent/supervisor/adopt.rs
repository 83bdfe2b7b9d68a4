//! Re-adoption after an agent restart: each record whose process is still the
//! one recorded (same pid, start time and cmdline) is watched again without a
//! restart; every other record is cleaned up and reported once.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::backoff::RestartBackoff;
use super::lifecycle::{self, Event, Report, Watched};
use super::owner::{Owner, Phase, Replica};
use super::readiness::ReadinessProbe;
use super::record::{self, ReplicaRecord};
use super::{logfile, process, start, valid_replica_id};
use crate::domain::{unix_ms_now, ReplicaState, ReplicaStatus};

impl Owner {
    /// Adopts or cleans up every record under the state directory.
    pub fn adopt_all(&mut self) {
        let dir = self.cfg.replicas_dir();
        let found = match record::list(&dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list replica records");
                return;
            }
        };
        for (id, replica_dir) in found {
            if !valid_replica_id(&id) {
                continue;
            }
            match record::load(&replica_dir) {
                Ok(rec) => self.adopt_one(&id, rec),
                Err(e) => {
                    tracing::warn!(replica_id = %id, error = %e, "unreadable replica record set aside");
                    record::quarantine(&replica_dir);
                    self.departed.push(ReplicaStatus {
                        id: id.clone(),
                        state: ReplicaState::Failed,
                        reason: format!("record unreadable after an agent restart: {e}"),
                        ..Default::default()
                    });
                }
            }
        }
    }

    fn adopt_one(&mut self, id: &str, rec: ReplicaRecord) {
        if rec.pid == 0
            && rec.next_restart_unix_ms > 0
            && matches!(rec.state, ReplicaState::Starting | ReplicaState::Crashloop)
        {
            self.resume_backoff(id, rec);
            return;
        }
        let dir = self.replica_dir(id);
        if let Err(why) =
            process::is_same_process(rec.pid, rec.start_time, &rec.argv, &rec.executable)
        {
            // With its leader gone, a group that still has members holds our
            // server's workers (the pgid cannot be reused while they live).
            if rec.pid != 0
                && !process::pid_exists(rec.pid)
                && !process::group_members(rec.pid).is_empty()
            {
                let _ = process::signal_group(rec.pid, nix::sys::signal::Signal::SIGKILL);
            }
            let reason = if rec.pid == 0 {
                "exited while the agent was away (it was waiting to restart)".to_string()
            } else {
                format!("exited while the agent was away ({why})")
            };
            logfile::note(&dir, &reason);
            tracing::info!(replica_id = id, %reason, "replica not adopted");
            if let Err(e) = record::remove(&dir) {
                tracing::warn!(replica_id = id, error = %e, "cannot remove replica record");
            }
            self.departed.push(ReplicaStatus {
                id: id.to_string(),
                model: rec.spec.model.clone(),
                spec_hash: rec.spec.spec_hash.clone(),
                state: if rec.state == ReplicaState::Stopping {
                    ReplicaState::Stopped
                } else {
                    ReplicaState::Failed
                },
                gpus: rec.spec.gpus.clone(),
                restarts: rec.restarts,
                assignment_token: rec.spec.assignment_token.clone(),
                reason,
                ..Default::default()
            });
            return;
        }

        let epoch = self.epoch();
        let mut spec = rec.spec;
        spec.id = id.to_string();
        let ready = rec.state == ReplicaState::Ready;
        let probe = ReadinessProbe::new(self.cfg.probe_host, rec.port, &spec.health_path);
        let (stop_tx, stop_rx) = oneshot::channel();
        let watch = lifecycle::watch(
            Watched {
                id: id.to_string(),
                epoch,
                pid: rec.pid,
                start_time: rec.start_time,
                probe,
                ready,
                ready_timeout: start::ready_timeout(&spec),
                stop_timeout: start::stop_timeout(&spec),
            },
            self.reports_tx.clone(),
            stop_rx,
        );
        let mut r = Replica::new(spec, dir);
        r.epoch = epoch;
        r.argv = rec.argv;
        r.executable = rec.executable;
        r.start_time = rec.start_time;
        r.phase = Phase::Running {
            stop: Some(stop_tx),
            watch,
            after: None,
        };
        r.status.state = if ready {
            ReplicaState::Ready
        } else {
            ReplicaState::Starting
        };
        r.status.pid = rec.pid;
        r.status.runs_as_root = process::runs_as_root(rec.pid);
        r.status.port = rec.port as u32;
        r.status.metrics_port = u32::from(rec.metrics_port);
        r.status.restarts = rec.restarts;
        r.status.started_unix_ms = rec.started_unix_ms;
        r.status.ready_unix_ms = rec.ready_unix_ms;
        if ready {
            r.backoff.on_ready(Instant::now().into_std());
        }
        logfile::note(
            &r.dir,
            &format!("adopted pid {} after an agent restart", rec.pid),
        );
        tracing::info!(replica_id = id, pid = rec.pid, "replica adopted");
        self.replicas.insert(id.to_string(), r);
        self.persist(id);
    }

    /// A replica that was waiting out its restart backoff when the agent
    /// died: the wait goes on where it stopped, with the same failure count,
    /// so restarting the agent never cuts a crash loop's backoff short.
    fn resume_backoff(&mut self, id: &str, rec: ReplicaRecord) {
        let dir = self.replica_dir(id);
        let epoch = self.epoch();
        let mut spec = rec.spec;
        spec.id = id.to_string();
        let mut r = Replica::new(spec, dir);
        r.epoch = epoch;
        r.phase = Phase::Waiting;
        r.backoff = RestartBackoff::resumed(rec.failures);
        r.status.state = rec.state;
        r.status.restarts = rec.restarts;
        r.status.reason = rec.reason;
        r.status.started_unix_ms = rec.started_unix_ms;
        r.status.next_restart_unix_ms = rec.next_restart_unix_ms;
        let left = (rec.next_restart_unix_ms - unix_ms_now()).max(0) as u64;
        logfile::note(
            &r.dir,
            &format!("agent restarted; next start in {left} ms, as scheduled"),
        );
        tracing::info!(
            replica_id = id,
            next_start_in_ms = left,
            "replica backoff resumed"
        );
        let reports = self.reports_tx.clone();
        let id_owned = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(left)).await;
            let _ = reports.send(Report {
                id: id_owned,
                epoch,
                event: Event::RestartDue,
            });
        });
        self.replicas.insert(id.to_string(), r);
        self.persist(id);
    }
}
