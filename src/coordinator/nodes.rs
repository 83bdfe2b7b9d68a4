//! Nodes as the coordinator knows them: identity from Hello, the latest
//! report, the session, operator flags, and the lifecycle ready → suspect →
//! lost judged on the monotonic clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::api::{GpuView, NodeGpu, NodeState, NodeView};
use crate::domain::{Assignment, GpuInfo, GpuSample, Hello, HostInfo, HostSample, ToAgent};
use crate::domain::{ReplicaStatus, WarmStatus};

use super::scrapes::ScrapeMark;
use super::store::NodeFlags;

/// The open session of a node's agent.
pub struct Session {
    pub id: u64,
    pub outbox: mpsc::Sender<ToAgent>,
    pub address: String,
    pub agent_instance: String,
    pub connected_unix_ms: i64,
}

pub struct Node {
    pub name: String,
    pub session: Option<Session>,
    pub boot_id: String,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
    pub host: HostInfo,
    pub gpus: Vec<GpuInfo>,
    pub samples: Vec<GpuSample>,
    pub host_sample: HostSample,
    pub replicas: Vec<ReplicaStatus>,
    pub warm: Vec<WarmStatus>,
    pub last_seen: Instant,
    pub last_seen_unix_ms: i64,
    pub flags: NodeFlags,
    /// The last assignment sent on the current session.
    pub sent: Option<Assignment>,
    /// Fingerprint of the plan's part that `sent` was built from: equal
    /// means there is nothing new to build or send.
    pub sent_key: u64,
    pub generation: u64,
    /// Lifecycle state last recorded as an event, to report transitions once.
    pub announced: NodeState,
    /// Per replica: its scrapes across reports, to tell a new measurement
    /// from the same one reported again and to see work the gauges missed.
    pub scraped: BTreeMap<String, ScrapeMark>,
    /// Replica ids this node reported that were not believed, already
    /// recorded as an event (so a repeated claim is recorded once).
    pub refused_claims: std::collections::BTreeSet<String>,
}

impl Node {
    pub fn from_hello(hello: &Hello, now: Instant, flags: NodeFlags) -> Node {
        Node {
            name: hello.node_name.clone(),
            session: None,
            boot_id: hello.boot_id.clone(),
            agent_version: hello.agent_version.clone(),
            labels: hello.labels.clone(),
            host: hello.host.clone(),
            gpus: hello.gpus.clone(),
            samples: Vec::new(),
            host_sample: HostSample::default(),
            replicas: hello.replicas.clone(),
            warm: hello.warm.clone(),
            last_seen: now,
            last_seen_unix_ms: crate::domain::unix_ms_now(),
            flags,
            sent: None,
            sent_key: 0,
            generation: 0,
            announced: NodeState::Ready,
            scraped: BTreeMap::new(),
            refused_claims: Default::default(),
        }
    }

    /// Refreshes identity and inventory from a (re)connecting agent.
    pub fn update_from_hello(&mut self, hello: &Hello, now: Instant) {
        self.boot_id = hello.boot_id.clone();
        self.agent_version = hello.agent_version.clone();
        self.labels = hello.labels.clone();
        self.host = hello.host.clone();
        self.gpus = hello.gpus.clone();
        self.replicas = hello.replicas.clone();
        self.warm = hello.warm.clone();
        self.last_seen = now;
        self.last_seen_unix_ms = crate::domain::unix_ms_now();
    }

    /// Liveness only: ready, suspect or lost.
    pub fn liveness(
        &self,
        now: Instant,
        suspect_after: Duration,
        lost_after: Duration,
    ) -> NodeState {
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= lost_after {
            NodeState::Lost
        } else if silent >= suspect_after {
            NodeState::Suspect
        } else {
            NodeState::Ready
        }
    }

    /// The state operators see: liveness first, then the operator's flags.
    pub fn state(&self, now: Instant, suspect_after: Duration, lost_after: Duration) -> NodeState {
        match self.liveness(now, suspect_after, lost_after) {
            NodeState::Ready if self.flags.draining => NodeState::Draining,
            NodeState::Ready if self.flags.cordoned => NodeState::Cordoned,
            other => other,
        }
    }

    /// A session that is open and reporting: a second agent with this name
    /// would fight it for the node's replicas.
    pub fn has_live_session(&self, now: Instant, suspect_after: Duration) -> bool {
        self.session.is_some() && now.saturating_duration_since(self.last_seen) < suspect_after
    }

    pub fn sample(&self, index: u32) -> Option<&GpuSample> {
        self.samples.iter().find(|s| s.index == index)
    }

    /// Replica ids on each GPU index, from the node's own report.
    pub fn replicas_by_gpu(&self) -> BTreeMap<u32, Vec<String>> {
        let mut map: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for r in self
            .replicas
            .iter()
            .filter(|r| r.state.is_live() || r.state == crate::domain::ReplicaState::Crashloop)
        {
            for g in &r.gpus {
                map.entry(*g).or_default().push(r.id.clone());
            }
        }
        map
    }

    /// A GPU is healthy while its inventory and its newest sample both say so.
    pub fn gpu_healthy(&self, g: &GpuInfo) -> bool {
        g.healthy && self.sample(g.index).is_none_or(|s| s.healthy)
    }

    pub fn view(&self, state: NodeState) -> NodeView {
        NodeView {
            name: self.name.clone(),
            state,
            cordoned: self.flags.cordoned,
            draining: self.flags.draining,
            last_seen: crate::api::rfc3339(self.last_seen_unix_ms),
            last_seen_unix_ms: self.last_seen_unix_ms,
            connected: self.session.is_some(),
            address: self
                .session
                .as_ref()
                .map(|s| s.address.clone())
                .unwrap_or_default(),
            agent_version: self.agent_version.clone(),
            boot_id: self.boot_id.clone(),
            labels: self.labels.clone(),
            host: self.host.clone(),
            host_sample: self.host_sample.clone(),
            gpus: self
                .gpus
                .iter()
                .map(|g| {
                    let s = self.sample(g.index);
                    NodeGpu {
                        index: g.index,
                        uuid: g.uuid.clone(),
                        name: g.name.clone(),
                        memory_total_bytes: g.memory_total_bytes,
                        memory_used_bytes: s.map(|s| s.memory_used_bytes).unwrap_or(0),
                        utilization_pct: s.map(|s| s.utilization_pct).unwrap_or(0.0),
                        healthy: self.gpu_healthy(g),
                        health_reason: health_reason(g, s),
                    }
                })
                .collect(),
            replicas: self.replicas.iter().filter(|r| r.state.is_live()).count() as u32,
        }
    }

    pub fn gpu_views(&self) -> Vec<GpuView> {
        let by_gpu = self.replicas_by_gpu();
        self.gpus
            .iter()
            .map(|g| {
                let s = self.sample(g.index);
                GpuView {
                    node: self.name.clone(),
                    index: g.index,
                    uuid: g.uuid.clone(),
                    name: g.name.clone(),
                    memory_total_bytes: g.memory_total_bytes,
                    memory_used_bytes: s.map(|s| s.memory_used_bytes).unwrap_or(0),
                    utilization_pct: s.map(|s| s.utilization_pct).unwrap_or(0.0),
                    temperature_c: s.and_then(|s| s.temperature_c),
                    power_w: s.and_then(|s| s.power_w),
                    healthy: self.gpu_healthy(g),
                    health_reason: health_reason(g, s),
                    replica: by_gpu
                        .get(&g.index)
                        .map(|ids| ids.join(","))
                        .unwrap_or_default(),
                    utilization_mean_60s: s.map(|s| s.utilization_60s.mean).unwrap_or(0.0),
                    utilization_p95_60s: s.map(|s| s.utilization_60s.p95).unwrap_or(0.0),
                    memory_used_max_60s: s.map(|s| s.memory_used_60s.max).unwrap_or(0.0),
                    xid_errors: s.map(|s| s.xid_errors).unwrap_or(0),
                }
            })
            .collect()
    }
}

fn health_reason(g: &GpuInfo, s: Option<&GpuSample>) -> String {
    if !g.health_reason.is_empty() {
        return g.health_reason.clone();
    }
    s.map(|s| s.health_reason.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_moves_from_ready_to_suspect_to_lost() {
        let t0 = Instant::now();
        let mut n = Node::from_hello(&Hello::default(), t0, NodeFlags::default());
        let (s, l) = (Duration::from_secs(10), Duration::from_secs(30));
        assert_eq!(n.state(t0 + Duration::from_secs(9), s, l), NodeState::Ready);
        assert_eq!(
            n.state(t0 + Duration::from_secs(10), s, l),
            NodeState::Suspect
        );
        assert_eq!(n.state(t0 + Duration::from_secs(31), s, l), NodeState::Lost);
        n.flags.cordoned = true;
        assert_eq!(n.state(t0, s, l), NodeState::Cordoned);
        n.flags.draining = true;
        assert_eq!(n.state(t0, s, l), NodeState::Draining);
        // A lost node reads lost, whatever its flags.
        assert_eq!(n.state(t0 + Duration::from_secs(31), s, l), NodeState::Lost);
    }
}
