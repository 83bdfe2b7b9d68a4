//! Replica supervision: runs the model-server processes the latest assignment
//! asks for, keeps them healthy (readiness, restart backoff, crash loops),
//! stops them cleanly, and re-adopts them after an agent restart.
//!
//! One task owns every replica; the [`Supervisor`] handle only sends it
//! commands, and its state is published on a watch channel.
//!
//! Before each start the agent applies its own launch policy, whatever the
//! coordinator sent: the executable must be allowed, weights and absolute
//! paths in arguments must resolve under `model_roots` (or `allowed_paths`),
//! the environment may not load code, and the server runs as root only where
//! `allow_root_replicas` says so.

mod adopt;
pub mod backoff;
pub mod launch;
mod lifecycle;
pub mod logfile;
mod owner;
pub mod process;
pub mod readiness;
pub mod record;
mod start;
pub mod template;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::domain::{ReplicaSpec, ReplicaStatus};

/// How the supervisor runs replicas on this host.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Records and logs live under `state_dir/replicas/<id>/`.
    pub state_dir: PathBuf,
    pub port_range: RangeInclusive<u16>,
    /// Weights must resolve under one of these; empty allows none.
    pub model_roots: Vec<PathBuf>,
    /// Empty: any executable.
    pub allowed_executables: Vec<PathBuf>,
    /// Code-loading variables allowed anyway (names, or prefixes with `*`).
    pub allowed_env: Vec<String>,
    /// Besides the model roots, where absolute paths in arguments may point.
    pub allowed_paths: Vec<PathBuf>,
    /// Whether absolute paths in arguments are checked.
    pub check_args: bool,
    /// Unprivileged user for model servers; `None`: the agent's own user.
    pub run_as: Option<String>,
    /// Whether a server may run as root (no run_as, agent running as root).
    pub allow_root_replicas: bool,
    /// Where readiness probes connect (servers listen on the host).
    pub probe_host: IpAddr,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub backoff_reset_after: Duration,
    /// A server log is rotated once it passes this size.
    pub log_max_bytes: u64,
    /// Log files kept per replica, the live one included.
    pub log_files: u32,
    /// GPU index → UUID, from the agent's GPU inventory; replicas see their
    /// GPUs by UUID in CUDA_VISIBLE_DEVICES when all of them are known.
    pub gpu_uuids: tokio::sync::watch::Receiver<std::collections::BTreeMap<u32, String>>,
}

impl SupervisorConfig {
    /// The documented defaults, with records and logs under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SupervisorConfig {
            state_dir: state_dir.into(),
            port_range: 20000..=20999,
            model_roots: Vec::new(),
            allowed_executables: Vec::new(),
            allowed_env: Vec::new(),
            allowed_paths: Vec::new(),
            check_args: true,
            run_as: None,
            allow_root_replicas: false,
            probe_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(300),
            backoff_reset_after: Duration::from_secs(600),
            log_max_bytes: 10 * 1024 * 1024,
            log_files: 3,
            gpu_uuids: tokio::sync::watch::channel(Default::default()).1,
        }
    }

    /// The agent's launch policy from its config, with the documented
    /// defaults for the rest.
    pub fn from_agent(cfg: &crate::config::AgentConfig) -> Self {
        SupervisorConfig {
            port_range: cfg.port_range.clone(),
            model_roots: cfg.model_roots.clone(),
            allowed_executables: cfg.allowed_executables.clone(),
            allowed_env: cfg.allowed_env.clone(),
            allowed_paths: cfg.allowed_paths.clone(),
            check_args: cfg.check_args,
            run_as: cfg.run_as.clone(),
            allow_root_replicas: cfg.allow_root_replicas,
            ..SupervisorConfig::new(&cfg.state_dir)
        }
    }

    fn replicas_dir(&self) -> PathBuf {
        self.state_dir.join("replicas")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot use state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run_as: {0}")]
    RunAs(String),
    #[error("invalid replica id {id:?}: use 1..=128 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidReplicaId { id: String },
    #[error("no log for replica {id:?} on this node")]
    NoLog { id: String },
    #[error("cannot read the log of replica {id:?}: {source}")]
    LogRead { id: String, source: std::io::Error },
}

pub use crate::domain::valid_replica_id;

enum Command {
    /// The replicas to run, and those to leave exactly as they are.
    Apply(Vec<ReplicaSpec>, Vec<String>),
    Detach(oneshot::Sender<()>),
    StopAll(oneshot::Sender<()>),
}

/// Handle to the supervising task. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::UnboundedSender<Command>,
    statuses: watch::Receiver<Vec<ReplicaStatus>>,
}

impl Supervisor {
    /// Starts supervising. Replicas recorded in `state_dir` whose process is
    /// still the one recorded are adopted (not restarted); the others are
    /// cleaned up and reported once as having exited while the agent was away.
    pub async fn spawn(cfg: SupervisorConfig) -> Result<Supervisor, SupervisorError> {
        let run_as = match cfg.run_as.as_deref() {
            None | Some("") => None,
            Some(name) => Some(launch::resolve_run_as(name).map_err(SupervisorError::RunAs)?),
        };
        let dir = cfg.replicas_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|source| SupervisorError::StateDir { path: dir, source })?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (status_tx, statuses) = watch::channel(Vec::new());
        let mut owner = owner::Owner::new(cfg, run_as, status_tx);
        owner.adopt_all();
        owner.publish();
        tokio::spawn(owner.run(command_rx));
        Ok(Supervisor { commands, statuses })
    }

    /// Reconciles toward `desired`, the complete set of replicas this node
    /// should run. Idempotent: repeating it changes nothing.
    pub fn apply(&self, desired: Vec<ReplicaSpec>) {
        self.apply_keeping(desired, Vec::new());
    }

    /// As `apply`, but the replicas in `keep` are left exactly as they are
    /// (neither stopped nor replaced): the coordinator cannot read their
    /// model's stored spec and has none to send.
    pub fn apply_keeping(&self, desired: Vec<ReplicaSpec>, keep: Vec<String>) {
        if self.commands.send(Command::Apply(desired, keep)).is_err() {
            tracing::warn!("supervisor has stopped; assignment ignored");
        }
    }

    /// Every replica's status, updated on each change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ReplicaStatus>> {
        self.statuses.clone()
    }

    /// Stops supervising and leaves every server running, to be re-adopted
    /// by the next agent (agent shutdown or restart).
    pub async fn detach(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Detach(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops every replica (SIGTERM, grace, SIGKILL) and removes its record.
    pub async fn stop_all(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::StopAll(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The last `lines` lines of a replica's server log.
#[cfg(test)]
pub fn read_log_tail(
    state_dir: &Path,
    replica_id: &str,
    lines: usize,
) -> Result<Vec<String>, SupervisorError> {
    read_log(
        state_dir,
        replica_id,
        crate::domain::LogQuery::Tail(lines as u32),
    )
    .map(|s| s.lines)
}

/// The asked part of a replica's server log: its last lines (rotated files
/// included), or what was written since an offset.
pub fn read_log(
    state_dir: &Path,
    replica_id: &str,
    query: crate::domain::LogQuery,
) -> Result<crate::domain::LogSlice, SupervisorError> {
    if !valid_replica_id(replica_id) {
        return Err(SupervisorError::InvalidReplicaId {
            id: replica_id.to_string(),
        });
    }
    let dir = state_dir.join("replicas").join(replica_id);
    if !dir.join(logfile::LOG_FILE).exists() {
        return Err(SupervisorError::NoLog {
            id: replica_id.to_string(),
        });
    }
    logfile::read(&dir, query).map_err(|source| SupervisorError::LogRead {
        id: replica_id.to_string(),
        source,
    })
}
