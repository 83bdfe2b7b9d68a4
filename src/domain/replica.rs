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
    #[serde(with = "duration_ms")]
    pub ready_timeout: Duration,
    #[serde(with = "duration_ms")]
    pub stop_timeout: Duration,
    pub gpu_memory_bytes: u64,
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
}

impl ServingSignals {
    /// Ongoing requests: the autoscaler's default signal.
    pub fn ongoing(&self) -> f64 {
        self.waiting + self.running
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplicaStatus {
    pub id: String,
    pub model: String,
    pub spec_hash: String,
    pub state: ReplicaState,
    pub pid: u32,
    pub port: u32,
    pub gpus: Vec<u32>,
    pub restarts: u32,
    pub reason: String,
    pub started_unix_ms: i64,
    pub ready_unix_ms: i64,
    pub signals: ServingSignals,
    pub gpu_memory_used_bytes: u64,
    pub next_restart_unix_ms: i64,
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
