//! Conversions of the Control API's views between wire and domain types.

use crate::api::{Event, GpuView, ModelView, NodeGpu, NodeState, NodeView, ReplicaView, WarmView};
use crate::domain::WarmStatus;

use super::{from_pb, pb, to_pb};

impl From<&NodeView> for pb::NodeStatus {
    fn from(n: &NodeView) -> Self {
        pb::NodeStatus {
            name: n.name.clone(),
            state: n.state.as_str().to_string(),
            cordoned: n.cordoned,
            draining: n.draining,
            last_seen_unix_ms: n.last_seen_unix_ms,
            agent_version: n.agent_version.clone(),
            boot_id: n.boot_id.clone(),
            host: Some((&n.host).into()),
            host_sample: Some((&n.host_sample).into()),
            gpus: n
                .gpus
                .iter()
                .map(|g| pb::GpuView {
                    node: n.name.clone(),
                    info: Some(pb::GpuInfo {
                        index: g.index,
                        uuid: g.uuid.clone(),
                        name: g.name.clone(),
                        memory_total_bytes: g.memory_total_bytes,
                        healthy: g.healthy,
                        health_reason: g.health_reason.clone(),
                        ..Default::default()
                    }),
                    sample: Some(pb::GpuSample {
                        index: g.index,
                        memory_used_bytes: g.memory_used_bytes,
                        memory_total_bytes: g.memory_total_bytes,
                        utilization_pct: g.utilization_pct,
                        healthy: g.healthy,
                        ..Default::default()
                    }),
                    replicas: Vec::new(),
                })
                .collect(),
            replicas: n.replicas,
            labels: n.labels.clone().into_iter().collect(),
            address: n.address.clone(),
            connected_unix_ms: if n.connected { 1 } else { 0 },
        }
    }
}

impl From<pb::NodeStatus> for NodeView {
    fn from(n: pb::NodeStatus) -> Self {
        NodeView {
            state: NodeState::parse(&n.state).unwrap_or(NodeState::Lost),
            last_seen: crate::api::rfc3339(n.last_seen_unix_ms),
            last_seen_unix_ms: n.last_seen_unix_ms,
            connected: n.connected_unix_ms != 0,
            gpus: n
                .gpus
                .into_iter()
                .map(|g| {
                    let info = g.info.unwrap_or_default();
                    let sample = g.sample.unwrap_or_default();
                    NodeGpu {
                        index: info.index,
                        uuid: info.uuid,
                        name: info.name,
                        memory_total_bytes: info.memory_total_bytes,
                        memory_used_bytes: sample.memory_used_bytes,
                        utilization_pct: sample.utilization_pct,
                        healthy: info.healthy,
                        health_reason: info.health_reason,
                    }
                })
                .collect(),
            name: n.name,
            cordoned: n.cordoned,
            draining: n.draining,
            address: n.address,
            agent_version: n.agent_version,
            boot_id: n.boot_id,
            labels: n.labels.into_iter().collect(),
            host: n.host.map(Into::into).unwrap_or_default(),
            host_sample: n.host_sample.map(Into::into).unwrap_or_default(),
            replicas: n.replicas,
        }
    }
}

impl From<&GpuView> for pb::GpuView {
    fn from(g: &GpuView) -> Self {
        let window = |mean: f64, p95: f64, max: f64| pb::WindowStats {
            mean,
            p95,
            max,
            last: 0.0,
        };
        pb::GpuView {
            node: g.node.clone(),
            info: Some(pb::GpuInfo {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                memory_total_bytes: g.memory_total_bytes,
                healthy: g.healthy,
                health_reason: g.health_reason.clone(),
                ..Default::default()
            }),
            sample: Some(pb::GpuSample {
                index: g.index,
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
                utilization_pct: g.utilization_pct,
                temperature_c: g.temperature_c,
                power_w: g.power_w,
                healthy: g.healthy,
                utilization_60s: Some(window(g.utilization_mean_60s, g.utilization_p95_60s, 0.0)),
                memory_used_60s: Some(window(0.0, 0.0, g.memory_used_max_60s)),
                xid_errors: g.xid_errors,
                ..Default::default()
            }),
            replicas: g
                .replica
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

impl From<pb::GpuView> for GpuView {
    fn from(g: pb::GpuView) -> Self {
        let info = g.info.unwrap_or_default();
        let s = g.sample.unwrap_or_default();
        let util60 = s.utilization_60s.unwrap_or_default();
        GpuView {
            node: g.node,
            index: info.index,
            uuid: info.uuid,
            name: info.name,
            memory_total_bytes: info.memory_total_bytes,
            memory_used_bytes: s.memory_used_bytes,
            utilization_pct: s.utilization_pct,
            temperature_c: s.temperature_c,
            power_w: s.power_w,
            healthy: info.healthy,
            health_reason: info.health_reason,
            replica: g.replicas.join(","),
            utilization_mean_60s: util60.mean,
            utilization_p95_60s: util60.p95,
            memory_used_max_60s: s.memory_used_60s.unwrap_or_default().max,
            xid_errors: s.xid_errors,
        }
    }
}

impl From<&ReplicaView> for pb::ReplicaView {
    fn from(r: &ReplicaView) -> Self {
        pb::ReplicaView {
            node: r.node.clone(),
            status: Some((&r.status).into()),
            signals_health: r.signals_health.to_string(),
        }
    }
}

impl From<pb::ReplicaView> for ReplicaView {
    fn from(r: pb::ReplicaView) -> Self {
        ReplicaView {
            node: r.node,
            status: r.status.map(Into::into).unwrap_or_default(),
            signals_health: crate::api::SignalsHealth::parse(&r.signals_health),
        }
    }
}

impl From<&ModelView> for pb::ModelStatus {
    fn from(m: &ModelView) -> Self {
        pb::ModelStatus {
            name: m.name.clone(),
            spec_toml: m.spec_toml.clone(),
            min_replicas: m.min_replicas,
            max_replicas: m.max_replicas,
            desired_replicas: m.desired_replicas,
            ready_replicas: m.ready_replicas,
            current_replicas: m.current_replicas,
            pinned_replicas: m.pinned_replicas,
            created_unix_ms: m.created_unix_ms,
            updated_unix_ms: m.updated_unix_ms,
            placement_problem: m.placement_problem.clone(),
            last_decision: m.last_decision.clone(),
            decision_now: m.decision_now.clone(),
            replicas: to_pb(&m.replicas),
            state: m.state.clone(),
        }
    }
}

impl From<pb::ModelStatus> for ModelView {
    fn from(m: pb::ModelStatus) -> Self {
        ModelView {
            created: crate::api::rfc3339(m.created_unix_ms),
            updated: crate::api::rfc3339(m.updated_unix_ms),
            name: m.name,
            min_replicas: m.min_replicas,
            max_replicas: m.max_replicas,
            desired_replicas: m.desired_replicas,
            ready_replicas: m.ready_replicas,
            current_replicas: m.current_replicas,
            pinned_replicas: m.pinned_replicas,
            placement_problem: m.placement_problem,
            last_decision: m.last_decision,
            decision_now: m.decision_now,
            spec_toml: m.spec_toml,
            created_unix_ms: m.created_unix_ms,
            updated_unix_ms: m.updated_unix_ms,
            replicas: from_pb(m.replicas),
            state: m.state,
        }
    }
}

impl From<&WarmView> for pb::WarmView {
    fn from(w: &WarmView) -> Self {
        pb::WarmView {
            node: w.node.clone(),
            status: Some(pb::WarmStatus {
                model: w.model.clone(),
                path: w.path.clone(),
                resident_bytes: w.resident_bytes,
                total_bytes: w.total_bytes,
                state: w.state.clone(),
                rate_bytes_per_s: w.rate_bytes_per_s,
                eta_ms: w.eta_ms,
                error: w.error.clone(),
                locked: false,
            }),
            reason: w.reason.clone(),
        }
    }
}

impl From<pb::WarmView> for WarmView {
    fn from(w: pb::WarmView) -> Self {
        let s: WarmStatus = w.status.map(Into::into).unwrap_or_default();
        WarmView::new(&w.node, &s, &w.reason)
    }
}

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        pb::Event {
            seq: e.seq,
            time_unix_ms: e.time_unix_ms,
            kind: e.kind.clone(),
            model: e.model.clone(),
            node: e.node.clone(),
            replica: e.replica.clone(),
            message: e.message.clone(),
            detail_json: e
                .detail
                .as_ref()
                .and_then(|d| serde_json::to_string(d).ok())
                .unwrap_or_default(),
        }
    }
}

impl From<pb::Event> for Event {
    fn from(e: pb::Event) -> Self {
        Event {
            seq: e.seq,
            time: crate::api::rfc3339(e.time_unix_ms),
            time_unix_ms: e.time_unix_ms,
            kind: e.kind,
            model: e.model,
            node: e.node,
            replica: e.replica,
            message: e.message,
            // A kind this version does not know (from a newer coordinator)
            // leaves the text alone to say what happened.
            detail: serde_json::from_str(&e.detail_json).ok(),
        }
    }
}

impl From<&crate::api::SignalPoint> for pb::SignalPoint {
    fn from(p: &crate::api::SignalPoint) -> Self {
        pb::SignalPoint {
            time_unix_ms: p.time_unix_ms,
            ongoing: p.ongoing,
            p95_latency_s: p.p95_latency_s,
            gpu_utilization: p.gpu_utilization,
            kv_cache_usage: p.kv_cache_usage,
            desired: p.desired,
            ready: p.ready,
            current: p.current,
            panic: p.panic,
        }
    }
}

impl From<pb::SignalPoint> for crate::api::SignalPoint {
    fn from(p: pb::SignalPoint) -> Self {
        crate::api::SignalPoint {
            time: crate::api::rfc3339(p.time_unix_ms),
            time_unix_ms: p.time_unix_ms,
            ongoing: p.ongoing,
            p95_latency_s: p.p95_latency_s,
            gpu_utilization: p.gpu_utilization,
            kv_cache_usage: p.kv_cache_usage,
            desired: p.desired,
            ready: p.ready,
            current: p.current,
            panic: p.panic,
        }
    }
}

impl From<&crate::api::Explanation> for pb::Explanation {
    fn from(e: &crate::api::Explanation) -> Self {
        pb::Explanation {
            model: e.model.clone(),
            decisions: to_pb(&e.decisions),
            signals: to_pb(&e.signals),
            summary: e.summary.clone(),
        }
    }
}

impl From<pb::Explanation> for crate::api::Explanation {
    fn from(e: pb::Explanation) -> Self {
        crate::api::Explanation {
            model: e.model,
            summary: e.summary,
            decisions: from_pb(e.decisions),
            signals: from_pb(e.signals),
        }
    }
}
