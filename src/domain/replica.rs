//! Replicas: one model-server process on one node's GPUs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    #[default]
    Starting,
    Ready,
    Stopping,
    Stopped,
    Failed,
    Crashloop,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Stopped => "stopped",
            ReplicaState::Failed => "failed",
            ReplicaState::Crashloop => "crashloop",
        }
    }

    /// A replica that holds (or is about to hold) its GPUs.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ReplicaState::Starting | ReplicaState::Ready | ReplicaState::Stopping
        )
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replica ids name directories; anything that could escape `replicas/` or
/// hide as a dotfile is refused.
pub fn valid_replica_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where a replica serves its metrics: on its server port, on a second
/// port the agent picks (`{metrics_port}`; Triton), or on a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MetricsPort {
    #[default]
    Server,
    Second,
    Fixed(u16),
}

impl MetricsPort {
    /// As a spec writes it: `{port}`, `{metrics_port}` or a number.
    pub fn as_text(self) -> String {
        match self {
            MetricsPort::Server => "{port}".to_string(),
            MetricsPort::Second => "{metrics_port}".to_string(),
            MetricsPort::Fixed(p) => p.to_string(),
        }
    }

    pub fn parse(text: &str) -> Result<MetricsPort, String> {
        match text {
            "" | "{port}" => Ok(MetricsPort::Server),
            "{metrics_port}" => Ok(MetricsPort::Second),
            n => n
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(MetricsPort::Fixed)
                .ok_or_else(|| {
                    format!("`{n}` is not a metrics port; allowed: \"{{port}}\", \"{{metrics_port}}\" or a port number 1-65535")
                }),
        }
    }
}

/// Everything an agent needs to run one replica, rendered by the coordinator
/// from the model spec. `{port}` and friends are substituted by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplicaSpec {
    pub id: String,
    pub model: String,
    pub spec_hash: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub gpus: Vec<u32>,
    pub weights: String,
    /// Engine preset name (vllm, tgi, triton, sglang, llamacpp, generic).
    pub preset: String,
    /// HTTP path polled for readiness; empty means a TCP connect.
    pub health_path: String,
    pub metrics_path: String,
    #[serde(default)]
    pub metrics_port: MetricsPort,
    #[serde(with = "duration_ms")]
    pub ready_timeout: Duration,
    #[serde(with = "duration_ms")]
    pub stop_timeout: Duration,
    pub gpu_memory_bytes: u64,
    /// The coordinator's proof that it assigned this id to this node (see
    /// `coordinator::trust`); empty from coordinators that predate it.
    #[serde(default)]
    pub assignment_token: String,
}

/// What an engine's own metrics say about its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServingSignals {
    pub waiting: f64,
    pub running: f64,
    pub p95_latency_s: Option<f64>,
    pub kv_cache_usage: Option<f64>,
    pub requests_per_s: f64,
    /// Set when the last scrape succeeded.
    pub fresh: bool,
    /// Which of the agent's scrape rounds these come from: counts up, so a
    /// newer value is a new measurement. 0 from agents that do not count.
    pub scrape_seq: u64,
    /// Work the replica has done since its scraping began (finished
    /// requests, tokens): it only grows, and any growth means traffic, even
    /// a request that came and went between two scrapes.
    pub activity_total: f64,
    /// Why the last scrape failed; `None` when it succeeded or none was tried.
    pub scrape_error: Option<String>,
    /// Scrapes that failed since the agent began scraping the replica.
    pub scrape_errors: u64,
}

impl ServingSignals {
    /// Ongoing requests: the autoscaler's default signal.
    pub fn ongoing(&self) -> f64 {
        self.waiting + self.running
    }

    /// Whether the load moved enough since `before` that the autoscaler
    /// should hear of it now rather than at the next interval: the ongoing
    /// count changed by at least 2 requests and a quarter, or the replica
    /// became measurable or stopped being so. Small jitter stays quiet.
    pub fn moved_from(&self, before: &ServingSignals) -> bool {
        if self.fresh != before.fresh {
            return true;
        }
        let (was, now) = (before.ongoing(), self.ongoing());
        let delta = (now - was).abs();
        delta >= MOVE_MIN_REQUESTS && delta >= MOVE_SHARE * was
    }
}

/// A change of the ongoing count below this many requests is jitter.
const MOVE_MIN_REQUESTS: f64 = 2.0;
/// ... and so is one below this share of what was reported before.
const MOVE_SHARE: f64 = 0.25;

/// Whether `after` says something the coordinator should hear before the
/// next regular report: a replica appeared, went away or changed state, or
/// its load moved (`ServingSignals::moved_from`).
pub fn replicas_moved(before: &[ReplicaStatus], after: &[ReplicaStatus]) -> bool {
    if before.len() != after.len() {
        return true;
    }
    after
        .iter()
        .any(|a| match before.iter().find(|b| b.id == a.id) {
            None => true,
            Some(b) => b.state != a.state || a.signals.moved_from(&b.signals),
        })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplicaStatus {
    pub id: String,
    pub model: String,
    pub spec_hash: String,
    pub state: ReplicaState,
    pub pid: u32,
    pub port: u32,
    /// Where its metrics are served when not on `port` (0: on `port`).
    #[serde(default)]
    pub metrics_port: u32,
    pub gpus: Vec<u32>,
    pub restarts: u32,
    pub reason: String,
    pub started_unix_ms: i64,
    pub ready_unix_ms: i64,
    pub signals: ServingSignals,
    pub gpu_memory_used_bytes: u64,
    pub next_restart_unix_ms: i64,
    /// Echo of the spec's assignment token. Never shown to operators: the
    /// coordinator blanks it in its views.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub assignment_token: String,
    /// The server runs as root, which the agent's `allow_root_replicas`
    /// allowed.
    #[serde(default)]
    pub runs_as_root: bool,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(ongoing: f64) -> ServingSignals {
        ServingSignals {
            running: ongoing,
            fresh: true,
            ..Default::default()
        }
    }

    fn replica(id: &str, state: ReplicaState, ongoing: f64) -> ReplicaStatus {
        ReplicaStatus {
            id: id.into(),
            state,
            signals: load(ongoing),
            ..Default::default()
        }
    }

    #[test]
    fn a_load_step_moves_and_jitter_does_not() {
        assert!(load(12.0).moved_from(&load(0.0)));
        assert!(load(2.0).moved_from(&load(0.0)));
        assert!(!load(1.0).moved_from(&load(0.0)));
        // Two more on a busy replica is a small share of its load.
        assert!(!load(42.0).moved_from(&load(40.0)));
        assert!(load(50.0).moved_from(&load(40.0)));
        // Load leaving moves too.
        assert!(load(0.0).moved_from(&load(8.0)));
        // Measurable again, or not any more.
        let stale = ServingSignals {
            fresh: false,
            ..load(3.0)
        };
        assert!(load(3.0).moved_from(&stale));
        assert!(stale.moved_from(&load(3.0)));
    }

    #[test]
    fn replicas_move_on_state_membership_and_load() {
        use ReplicaState::*;
        let before = vec![replica("a", Ready, 3.0), replica("b", Starting, 0.0)];
        assert!(!replicas_moved(&before, &before));
        let mut jitter = before.clone();
        jitter[0].signals.running = 4.0;
        assert!(!replicas_moved(&before, &jitter));
        let mut ready = before.clone();
        ready[1].state = Ready;
        assert!(replicas_moved(&before, &ready));
        assert!(replicas_moved(&before, &before[..1]));
        let mut renamed = before.clone();
        renamed[1].id = "c".into();
        assert!(replicas_moved(&before, &renamed));
        let mut surge = before.clone();
        surge[0].signals.waiting = 9.0;
        assert!(replicas_moved(&before, &surge));
    }
}
