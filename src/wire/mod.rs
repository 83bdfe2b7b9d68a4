//! The generated wire types (proto/gpufleet/v1) and their conversion to and
//! from domain types. Nothing outside this module, the gRPC service and the
//! CLI's client touches prost structs.

pub mod pb {
    tonic::include_proto!("gpufleet.v1");
}

use crate::domain::{
    GpuInfo, GpuProcess, GpuSample, HostInfo, HostSample, MetricsPort, ReplicaSpec, ReplicaState,
    ReplicaStatus, ServingSignals, WarmSpec, WarmStatus, WindowStats,
};
use std::time::Duration;

/// gRPC metadata a coordinator that does not lead adds when it refuses a
/// call: the leader's gRPC URL, for agents and the CLI to go to; empty while
/// no one leads (an election: retry soon).
pub const LEADER_HEADER: &str = "gpufleet-leader";

/// The leader a refusal names: None when it is no refusal of a follower,
/// Some("") during an election.
pub fn leader_of(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl From<&GpuInfo> for pb::GpuInfo {
    fn from(g: &GpuInfo) -> Self {
        pb::GpuInfo {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            memory_total_bytes: g.memory_total_bytes,
            pci_bus_id: g.pci_bus_id.clone(),
            healthy: g.healthy,
            health_reason: g.health_reason.clone(),
            mig_parent: g.mig_parent,
        }
    }
}

impl From<pb::GpuInfo> for GpuInfo {
    fn from(g: pb::GpuInfo) -> Self {
        GpuInfo {
            index: g.index,
            uuid: g.uuid,
            name: g.name,
            memory_total_bytes: g.memory_total_bytes,
            pci_bus_id: g.pci_bus_id,
            healthy: g.healthy,
            health_reason: g.health_reason,
            mig_parent: g.mig_parent,
        }
    }
}

impl From<WindowStats> for pb::WindowStats {
    fn from(w: WindowStats) -> Self {
        pb::WindowStats {
            last: w.last,
            mean: w.mean,
            max: w.max,
            p95: w.p95,
        }
    }
}

impl From<Option<pb::WindowStats>> for WindowStats {
    fn from(w: Option<pb::WindowStats>) -> Self {
        let w = w.unwrap_or_default();
        WindowStats {
            last: w.last,
            mean: w.mean,
            max: w.max,
            p95: w.p95,
        }
    }
}

impl From<&GpuSample> for pb::GpuSample {
    fn from(s: &GpuSample) -> Self {
        pb::GpuSample {
            index: s.index,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            utilization_pct: s.utilization_pct,
            memory_utilization_pct: s.memory_utilization_pct,
            temperature_c: s.temperature_c,
            power_w: s.power_w,
            power_limit_w: s.power_limit_w,
            sm_clock_mhz: s.sm_clock_mhz,
            throttle_reasons: s.throttle_reasons,
            ecc_volatile_single_bit: s.ecc_volatile_single_bit,
            ecc_volatile_double_bit: s.ecc_volatile_double_bit,
            remapped_rows_pending: s.remapped_rows_pending,
            remapped_rows_failed: s.remapped_rows_failed,
            pcie_rx_bytes_per_s: s.pcie_rx_bytes_per_s,
            pcie_tx_bytes_per_s: s.pcie_tx_bytes_per_s,
            healthy: s.healthy,
            health_reason: s.health_reason.clone(),
            processes: s
                .processes
                .iter()
                .map(|p| pb::GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: p.used_memory_bytes,
                })
                .collect(),
            utilization_10s: Some(s.utilization_10s.into()),
            utilization_60s: Some(s.utilization_60s.into()),
            memory_used_10s: Some(s.memory_used_10s.into()),
            memory_used_60s: Some(s.memory_used_60s.into()),
            xid_errors: s.xid_errors,
            last_xid: s.last_xid,
        }
    }
}

impl From<pb::GpuSample> for GpuSample {
    fn from(s: pb::GpuSample) -> Self {
        GpuSample {
            index: s.index,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            utilization_pct: s.utilization_pct,
            memory_utilization_pct: s.memory_utilization_pct,
            temperature_c: s.temperature_c,
            power_w: s.power_w,
            power_limit_w: s.power_limit_w,
            sm_clock_mhz: s.sm_clock_mhz,
            throttle_reasons: s.throttle_reasons,
            ecc_volatile_single_bit: s.ecc_volatile_single_bit,
            ecc_volatile_double_bit: s.ecc_volatile_double_bit,
            remapped_rows_pending: s.remapped_rows_pending,
            remapped_rows_failed: s.remapped_rows_failed,
            pcie_rx_bytes_per_s: s.pcie_rx_bytes_per_s,
            pcie_tx_bytes_per_s: s.pcie_tx_bytes_per_s,
            healthy: s.healthy,
            health_reason: s.health_reason,
            processes: s
                .processes
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: p.used_memory_bytes,
                })
                .collect(),
            utilization_10s: s.utilization_10s.into(),
            utilization_60s: s.utilization_60s.into(),
            memory_used_10s: s.memory_used_10s.into(),
            memory_used_60s: s.memory_used_60s.into(),
            xid_errors: s.xid_errors,
            last_xid: s.last_xid,
            // Not sent: only the agent's own /metrics/dcgm shows it.
            detail: Default::default(),
        }
    }
}

impl From<&HostInfo> for pb::HostInfo {
    fn from(h: &HostInfo) -> Self {
        pb::HostInfo {
            hostname: h.hostname.clone(),
            cpus: h.cpus,
            memory_total_bytes: h.memory_total_bytes,
            os: h.os.clone(),
            kernel: h.kernel.clone(),
            driver_version: h.driver_version.clone(),
            cuda_version: h.cuda_version.clone(),
        }
    }
}

impl From<pb::HostInfo> for HostInfo {
    fn from(h: pb::HostInfo) -> Self {
        HostInfo {
            hostname: h.hostname,
            cpus: h.cpus,
            memory_total_bytes: h.memory_total_bytes,
            os: h.os,
            kernel: h.kernel,
            driver_version: h.driver_version,
            cuda_version: h.cuda_version,
        }
    }
}

impl From<&HostSample> for pb::HostSample {
    fn from(h: &HostSample) -> Self {
        pb::HostSample {
            cpu_pct: h.cpu_pct,
            load1: h.load1,
            load5: h.load5,
            load15: h.load15,
            memory_used_bytes: h.memory_used_bytes,
            memory_available_bytes: h.memory_available_bytes,
            page_cache_bytes: h.page_cache_bytes,
            state_dir_free_bytes: h.state_dir_free_bytes,
            state_dir_total_bytes: h.state_dir_total_bytes,
        }
    }
}

impl From<pb::HostSample> for HostSample {
    fn from(h: pb::HostSample) -> Self {
        HostSample {
            cpu_pct: h.cpu_pct,
            load1: h.load1,
            load5: h.load5,
            load15: h.load15,
            memory_used_bytes: h.memory_used_bytes,
            memory_available_bytes: h.memory_available_bytes,
            page_cache_bytes: h.page_cache_bytes,
            state_dir_free_bytes: h.state_dir_free_bytes,
            state_dir_total_bytes: h.state_dir_total_bytes,
        }
    }
}

impl From<ReplicaState> for pb::ReplicaState {
    fn from(s: ReplicaState) -> Self {
        match s {
            ReplicaState::Starting => pb::ReplicaState::Starting,
            ReplicaState::Ready => pb::ReplicaState::Ready,
            ReplicaState::Stopping => pb::ReplicaState::Stopping,
            ReplicaState::Stopped => pb::ReplicaState::Stopped,
            ReplicaState::Failed => pb::ReplicaState::Failed,
            ReplicaState::Crashloop => pb::ReplicaState::Crashloop,
        }
    }
}

/// Unknown values (a newer agent) read as `Failed` so they are never counted
/// as ready capacity.
fn replica_state_from_i32(v: i32) -> ReplicaState {
    match pb::ReplicaState::try_from(v) {
        Ok(pb::ReplicaState::Starting) => ReplicaState::Starting,
        Ok(pb::ReplicaState::Ready) => ReplicaState::Ready,
        Ok(pb::ReplicaState::Stopping) => ReplicaState::Stopping,
        Ok(pb::ReplicaState::Stopped) => ReplicaState::Stopped,
        Ok(pb::ReplicaState::Crashloop) => ReplicaState::Crashloop,
        Ok(pb::ReplicaState::Failed | pb::ReplicaState::Unspecified) | Err(_) => {
            ReplicaState::Failed
        }
    }
}

impl From<&ReplicaSpec> for pb::ReplicaSpec {
    fn from(r: &ReplicaSpec) -> Self {
        pb::ReplicaSpec {
            id: r.id.clone(),
            model: r.model.clone(),
            spec_hash: r.spec_hash.clone(),
            command: r.command.clone(),
            env: r.env.clone().into_iter().collect(),
            gpus: r.gpus.clone(),
            weights: r.weights.clone(),
            preset: r.preset.clone(),
            health_path: r.health_path.clone(),
            metrics_path: r.metrics_path.clone(),
            metrics_port: r.metrics_port.as_text(),
            ready_timeout_ms: r.ready_timeout.as_millis() as u64,
            stop_timeout_ms: r.stop_timeout.as_millis() as u64,
            gpu_memory_bytes: r.gpu_memory_bytes,
            assignment_token: r.assignment_token.clone(),
        }
    }
}

impl From<pb::ReplicaSpec> for ReplicaSpec {
    fn from(r: pb::ReplicaSpec) -> Self {
        ReplicaSpec {
            id: r.id,
            model: r.model,
            spec_hash: r.spec_hash,
            command: r.command,
            env: r.env.into_iter().collect(),
            gpus: r.gpus,
            weights: r.weights,
            preset: r.preset,
            health_path: r.health_path,
            metrics_path: r.metrics_path,
            // An unreadable value from a newer coordinator: scrape the server port.
            metrics_port: MetricsPort::parse(&r.metrics_port).unwrap_or_default(),
            ready_timeout: Duration::from_millis(r.ready_timeout_ms),
            stop_timeout: Duration::from_millis(r.stop_timeout_ms),
            gpu_memory_bytes: r.gpu_memory_bytes,
            assignment_token: r.assignment_token,
        }
    }
}

impl From<&ServingSignals> for pb::ServingSignals {
    fn from(s: &ServingSignals) -> Self {
        pb::ServingSignals {
            waiting: s.waiting,
            running: s.running,
            p95_latency_s: s.p95_latency_s,
            kv_cache_usage: s.kv_cache_usage,
            requests_per_s: s.requests_per_s,
            fresh: s.fresh,
            scrape_seq: s.scrape_seq,
            activity_total: s.activity_total,
            scrape_error: s.scrape_error.clone().unwrap_or_default(),
            scrape_errors: s.scrape_errors,
        }
    }
}

impl From<pb::ServingSignals> for ServingSignals {
    fn from(s: pb::ServingSignals) -> Self {
        ServingSignals {
            waiting: s.waiting,
            running: s.running,
            p95_latency_s: s.p95_latency_s,
            kv_cache_usage: s.kv_cache_usage,
            requests_per_s: s.requests_per_s,
            fresh: s.fresh,
            scrape_seq: s.scrape_seq,
            activity_total: s.activity_total,
            scrape_error: (!s.scrape_error.is_empty()).then_some(s.scrape_error),
            scrape_errors: s.scrape_errors,
        }
    }
}

impl From<&ReplicaStatus> for pb::ReplicaStatus {
    fn from(r: &ReplicaStatus) -> Self {
        pb::ReplicaStatus {
            id: r.id.clone(),
            model: r.model.clone(),
            spec_hash: r.spec_hash.clone(),
            state: pb::ReplicaState::from(r.state) as i32,
            pid: r.pid,
            port: r.port,
            metrics_port: r.metrics_port,
            gpus: r.gpus.clone(),
            restarts: r.restarts,
            reason: r.reason.clone(),
            started_unix_ms: r.started_unix_ms,
            ready_unix_ms: r.ready_unix_ms,
            signals: Some((&r.signals).into()),
            gpu_memory_used_bytes: r.gpu_memory_used_bytes,
            next_restart_unix_ms: r.next_restart_unix_ms,
            assignment_token: r.assignment_token.clone(),
            runs_as_root: r.runs_as_root,
        }
    }
}

impl From<pb::ReplicaStatus> for ReplicaStatus {
    fn from(r: pb::ReplicaStatus) -> Self {
        ReplicaStatus {
            id: r.id,
            model: r.model,
            spec_hash: r.spec_hash,
            state: replica_state_from_i32(r.state),
            pid: r.pid,
            port: r.port,
            metrics_port: r.metrics_port,
            gpus: r.gpus,
            restarts: r.restarts,
            reason: r.reason,
            started_unix_ms: r.started_unix_ms,
            ready_unix_ms: r.ready_unix_ms,
            signals: r.signals.map(Into::into).unwrap_or_default(),
            gpu_memory_used_bytes: r.gpu_memory_used_bytes,
            next_restart_unix_ms: r.next_restart_unix_ms,
            assignment_token: r.assignment_token,
            runs_as_root: r.runs_as_root,
        }
    }
}

impl From<&WarmSpec> for pb::WarmSpec {
    fn from(w: &WarmSpec) -> Self {
        pb::WarmSpec {
            model: w.model.clone(),
            path: w.path.clone(),
            lock: w.lock,
        }
    }
}

impl From<pb::WarmSpec> for WarmSpec {
    fn from(w: pb::WarmSpec) -> Self {
        WarmSpec {
            model: w.model,
            path: w.path,
            lock: w.lock,
        }
    }
}

impl From<&WarmStatus> for pb::WarmStatus {
    fn from(w: &WarmStatus) -> Self {
        pb::WarmStatus {
            model: w.model.clone(),
            path: w.path.clone(),
            resident_bytes: w.resident_bytes,
            total_bytes: w.total_bytes,
            state: w.state.clone(),
            rate_bytes_per_s: w.rate_bytes_per_s,
            eta_ms: w.eta_ms,
            error: w.error.clone(),
            locked: w.locked,
        }
    }
}

impl From<pb::WarmStatus> for WarmStatus {
    fn from(w: pb::WarmStatus) -> Self {
        WarmStatus {
            model: w.model,
            path: w.path,
            resident_bytes: w.resident_bytes,
            total_bytes: w.total_bytes,
            state: w.state,
            rate_bytes_per_s: w.rate_bytes_per_s,
            eta_ms: w.eta_ms,
            error: w.error,
            locked: w.locked,
        }
    }
}

/// Converts a list with a `From<&T>` impl.
pub fn to_pb<'a, T: 'a, P: From<&'a T>>(items: &'a [T]) -> Vec<P> {
    items.iter().map(P::from).collect()
}

/// Converts a list of wire values into domain values.
pub fn from_pb<P, T: From<P>>(items: Vec<P>) -> Vec<T> {
    items.into_iter().map(T::from).collect()
}

/// "a: b: c" from an error and its sources: tonic's transport errors say
/// little at the top level.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

mod control;
mod gateway;
mod session;

impl From<&crate::api::HaStatus> for pb::CoordinatorStatus {
    fn from(s: &crate::api::HaStatus) -> Self {
        pb::CoordinatorStatus {
            backend: s.backend.clone(),
            prefix: s.prefix.clone(),
            leader: s.leader.clone(),
            epoch: s.epoch,
            members: s
                .members
                .iter()
                .map(|m| pb::CoordinatorMember {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    role: m.role.clone(),
                })
                .collect(),
            store: s
                .store
                .iter()
                .map(|e| pb::EtcdEndpointStatus {
                    endpoint: e.endpoint.clone(),
                    healthy: e.healthy,
                    detail: e.detail.clone(),
                })
                .collect(),
            role: s.role.clone(),
            leader_address: s.leader_address.clone(),
        }
    }
}

impl From<pb::CoordinatorStatus> for crate::api::HaStatus {
    fn from(s: pb::CoordinatorStatus) -> Self {
        crate::api::HaStatus {
            backend: s.backend,
            prefix: s.prefix,
            leader: s.leader,
            epoch: s.epoch,
            members: s
                .members
                .into_iter()
                .map(|m| crate::api::HaMember {
                    name: m.name,
                    address: m.address,
                    role: m.role,
                })
                .collect(),
            store: s
                .store
                .into_iter()
                .map(|e| crate::api::EtcdEndpoint {
                    endpoint: e.endpoint,
                    healthy: e.healthy,
                    detail: e.detail,
                })
                .collect(),
            role: s.role,
            leader_address: s.leader_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_status_round_trips() {
        let r = ReplicaStatus {
            id: "demo-llm-1".into(),
            model: "demo-llm".into(),
            state: ReplicaState::Crashloop,
            pid: 7,
            gpus: vec![0, 3],
            signals: ServingSignals {
                waiting: 2.0,
                p95_latency_s: Some(0.4),
                fresh: true,
                scrape_seq: 41,
                ..Default::default()
            },
            ..Default::default()
        };
        let back: ReplicaStatus = pb::ReplicaStatus::from(&r).into();
        assert_eq!(back, r);
    }

    #[test]
    fn an_event_keeps_its_type_on_the_wire_and_one_without_loads() {
        use crate::domain::event::{EventKind, ScaleRule};
        let what = EventKind::Scaled {
            model: "m".into(),
            from: 1,
            to: 3,
            rule: ScaleRule::Fixed,
            inputs: Vec::new(),
        };
        let e = crate::api::Event {
            seq: 4,
            time: crate::api::rfc3339(1_700_000_000_000),
            time_unix_ms: 1_700_000_000_000,
            kind: what.name().into(),
            model: "m".into(),
            message: what.message(),
            detail: Some(what),
            ..Default::default()
        };
        let back: crate::api::Event = pb::Event::from(&e).into();
        assert_eq!(back, e);
        let untyped = pb::Event {
            detail_json: String::new(),
            ..pb::Event::from(&e)
        };
        let back: crate::api::Event = untyped.into();
        assert_eq!(back.detail, None);
        assert_eq!(back.message, "1 → 3: fixed replicas = 3");
    }

    #[test]
    fn unknown_replica_state_is_never_ready() {
        assert_eq!(replica_state_from_i32(99), ReplicaState::Failed);
    }
}
