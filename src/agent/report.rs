//! The agent's live state, composed once per report interval from its parts
//! (GPU sampler, host probe, supervisor, scraper, warmer): what `/metrics`
//! shows and what the session reports are the same snapshot.

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::domain::{
    GpuSample, Hello, HostInfo, LogQuery, LogSlice, ReplicaState, ReplicaStatus, Report,
};

use super::gpu::GpuWorkload;
use super::http::Telemetry;
use super::link::Reporter;

/// Identity facts that do not change while the agent runs.
pub struct Identity {
    pub node_name: String,
    pub boot_id: String,
    pub instance: String,
    pub labels: BTreeMap<String, String>,
    pub host: HostInfo,
}

pub struct AgentReporter {
    pub identity: Identity,
    pub telemetry: watch::Receiver<Telemetry>,
    /// Notified after each new telemetry snapshot.
    pub updated: std::sync::Arc<tokio::sync::Notify>,
    /// Where replica logs live.
    pub state_dir: std::path::PathBuf,
    pub sampler: std::sync::Arc<super::gpu::GpuSampler>,
}

impl Reporter for AgentReporter {
    fn hello(&self) -> Hello {
        let t = self.telemetry.borrow();
        let mut host = self.identity.host.clone();
        host.driver_version = t.gpus.driver_version.clone();
        host.cuda_version = t.gpus.cuda_version.clone();
        Hello {
            node_name: self.identity.node_name.clone(),
            boot_id: self.identity.boot_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: self.identity.labels.clone(),
            host,
            gpus: t.gpus.inventory.clone(),
            replicas: t.replicas.clone(),
            warm: t.warm.clone(),
            agent_instance: self.identity.instance.clone(),
        }
    }

    fn logs(&self, replica_id: &str, query: LogQuery) -> Result<LogSlice, String> {
        super::supervisor::read_log(&self.state_dir, replica_id, query).map_err(|e| e.to_string())
    }

    fn mark_gpu_healthy(&self, index: u32) {
        self.sampler.mark_healthy(index);
    }

    fn updates(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.updated.clone()
    }

    fn report(&self) -> Report {
        let t = self.telemetry.borrow();
        Report {
            seq: 0,
            time_unix_ms: crate::domain::unix_ms_now(),
            gpus: t.gpus.samples.clone(),
            host: t.host.clone(),
            replicas: t.replicas.clone(),
            warm: t.warm.clone(),
            applied_generation: 0,
            inventory: t.gpus.inventory.clone(),
            ack: false,
        }
    }
}

/// The session id of a process (field 6 of /proc/PID/stat). Replicas lead
/// their own session, so every process they spawn (tensor-parallel workers,
/// say) shares the replica's pid as its session id.
pub fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// GPU memory each replica holds: the sum over GPU processes of its session.
pub fn attribute_gpu_memory(
    replicas: &mut [ReplicaStatus],
    samples: &[GpuSample],
    session_of: impl Fn(u32) -> Option<u32>,
) {
    let mut by_session: BTreeMap<u32, u64> = BTreeMap::new();
    for s in samples {
        for p in &s.processes {
            let sid = if p.pid == 0 { None } else { session_of(p.pid) };
            if let Some(sid) = sid {
                *by_session.entry(sid).or_default() += p.used_memory_bytes;
            }
        }
    }
    for r in replicas.iter_mut() {
        r.gpu_memory_used_bytes = by_session.get(&r.pid).copied().unwrap_or(0);
    }
}

/// What the simulated GPUs should show for the replicas running now: their
/// memory once started, and how busy they are from their own metrics.
pub fn workload(replicas: &[ReplicaStatus], memory: &BTreeMap<String, u64>) -> Vec<GpuWorkload> {
    replicas
        .iter()
        .filter(|r| matches!(r.state, ReplicaState::Starting | ReplicaState::Ready) && r.pid != 0)
        .map(|r| GpuWorkload {
            replica_id: r.id.clone(),
            pid: r.pid,
            gpus: r.gpus.clone(),
            memory_bytes: memory.get(&r.id).copied().unwrap_or(0),
            busy: r
                .signals
                .kv_cache_usage
                .unwrap_or_else(|| (r.signals.running / 8.0).min(1.0))
                .clamp(0.0, 1.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::GpuProcess;

    #[test]
    fn gpu_memory_goes_to_the_replica_whose_session_holds_it() {
        let mut replicas = vec![
            ReplicaStatus {
                id: "a".into(),
                pid: 100,
                ..Default::default()
            },
            ReplicaStatus {
                id: "b".into(),
                pid: 200,
                ..Default::default()
            },
        ];
        let samples = vec![
            GpuSample {
                index: 0,
                processes: vec![
                    GpuProcess {
                        pid: 101,
                        used_memory_bytes: 10,
                    },
                    GpuProcess {
                        pid: 102,
                        used_memory_bytes: 5,
                    },
                ],
                ..Default::default()
            },
            GpuSample {
                index: 1,
                processes: vec![GpuProcess {
                    pid: 999,
                    used_memory_bytes: 7,
                }],
                ..Default::default()
            },
        ];
        let sessions = |pid: u32| match pid {
            101 | 102 => Some(100),
            999 => Some(1),
            _ => None,
        };
        attribute_gpu_memory(&mut replicas, &samples, sessions);
        assert_eq!(replicas[0].gpu_memory_used_bytes, 15);
        assert_eq!(replicas[1].gpu_memory_used_bytes, 0);
    }

    #[test]
    fn reads_the_session_of_this_process() {
        let me = std::process::id();
        let sid = session_of(me).expect("this process has a session");
        assert_eq!(sid as i32, nix::unistd::getsid(None).unwrap().as_raw());
    }
}
