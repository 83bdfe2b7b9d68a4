//! The agent session in domain terms: what an agent says when it connects,
//! what it reports, and the assignment the coordinator sends back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GpuInfo, GpuSample, HostInfo, HostSample, ReplicaSpec, ReplicaStatus};
use super::{WarmSpec, WarmStatus};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hello {
    pub node_name: String,
    pub boot_id: String,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
    pub host: HostInfo,
    pub gpus: Vec<GpuInfo>,
    pub replicas: Vec<ReplicaStatus>,
    pub warm: Vec<WarmStatus>,
    /// Random per agent process: tells a reconnect from a restart.
    pub agent_instance: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub seq: u64,
    pub time_unix_ms: i64,
    pub gpus: Vec<GpuSample>,
    pub host: HostSample,
    pub replicas: Vec<ReplicaStatus>,
    pub warm: Vec<WarmStatus>,
    pub applied_generation: u64,
    /// GPU inventory with current health, when it changed.
    pub inventory: Vec<GpuInfo>,
    /// Answer with `ToAgent::ReportAck(seq)` once handled.
    pub ack: bool,
}

/// The complete desired state of one node (level-triggered).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Assignment {
    pub generation: u64,
    /// The leader's epoch (0 with one coordinator): agents refuse one
    /// lower than the highest they have seen.
    #[serde(default)]
    pub epoch: u64,
    pub replicas: Vec<ReplicaSpec>,
    pub warm: Vec<WarmSpec>,
    /// Models the operator asked to drop from the page cache.
    pub evict: Vec<WarmSpec>,
    /// Replicas to leave exactly as they are (their model's stored record
    /// cannot be read): neither stopped nor replaced.
    pub keep: Vec<String>,
}

impl Assignment {
    /// Same desired state, whatever the generation.
    pub fn same_state(&self, other: &Assignment) -> bool {
        self.replicas == other.replicas
            && self.warm == other.warm
            && self.evict == other.evict
            && self.keep == other.keep
    }
}

/// Asks an agent for the tail of a replica's server log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogsRequest {
    pub request_id: u64,
    pub replica_id: String,
    pub query: LogQuery,
}

/// Which part of a replica's log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogQuery {
    /// The last N lines (rotated files included).
    Tail(u32),
    /// The complete lines written since this offset of the live log.
    Since(u64),
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery::Tail(100)
    }
}

/// Lines of a replica's log, and where the next `LogQuery::Since` starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSlice {
    pub lines: Vec<String>,
    pub offset: u64,
}

/// An agent's answer to a `LogsRequest`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogsReply {
    pub request_id: u64,
    pub slice: LogSlice,
    /// Why no lines could be read; empty on success.
    pub error: String,
}

/// What the coordinator sends down a session.
#[derive(Debug, Clone, PartialEq)]
pub enum ToAgent {
    Assignment(Assignment),
    Logs(LogsRequest),
    /// The operator vouches for this GPU index.
    MarkGpuHealthy(u32),
    /// The report with this seq was handled (it asked to be acknowledged).
    ReportAck(u64),
}
