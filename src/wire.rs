//! The generated wire types (proto/gpufleet/v1) and their conversion to and
//! from domain types. Nothing outside this module, the gRPC service and the
//! CLI's client touches prost structs.

pub mod pb {
    tonic::include_proto!("gpufleet.v1");
}

use crate::domain::{
    GpuInfo, GpuProcess, GpuSample, HostInfo, HostSample, ReplicaSpec, ReplicaState, ReplicaStatus,
    ServingSignals, WarmSpec, WarmStatus, WindowStats,
};
use std::time::Duration;

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
            ready_timeout_ms: r.ready_timeout.as_millis() as u64,
            stop_timeout_ms: r.stop_timeout.as_millis() as u64,
            gpu_memory_bytes: r.gpu_memory_bytes,
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
            ready_timeout: Duration::from_millis(r.ready_timeout_ms),
            stop_timeout: Duration::from_millis(r.stop_timeout_ms),
            gpu_memory_bytes: r.gpu_memory_bytes,
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
            gpus: r.gpus.clone(),
            restarts: r.restarts,
            reason: r.reason.clone(),
            started_unix_ms: r.started_unix_ms,
            ready_unix_ms: r.ready_unix_ms,
            signals: Some((&r.signals).into()),
            gpu_memory_used_bytes: r.gpu_memory_used_bytes,
            next_restart_unix_ms: r.next_restart_unix_ms,
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
            gpus: r.gpus,
            restarts: r.restarts,
            reason: r.reason,
            started_unix_ms: r.started_unix_ms,
            ready_unix_ms: r.ready_unix_ms,
            signals: r.signals.map(Into::into).unwrap_or_default(),
            gpu_memory_used_bytes: r.gpu_memory_used_bytes,
            next_restart_unix_ms: r.next_restart_unix_ms,
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

impl From<&crate::domain::Hello> for pb::Hello {
    fn from(h: &crate::domain::Hello) -> Self {
        pb::Hello {
            node_name: h.node_name.clone(),
            boot_id: h.boot_id.clone(),
            agent_version: h.agent_version.clone(),
            labels: h.labels.clone().into_iter().collect(),
            host: Some((&h.host).into()),
            gpus: to_pb(&h.gpus),
            replicas: to_pb(&h.replicas),
            warm: to_pb(&h.warm),
            agent_instance: h.agent_instance.clone(),
        }
    }
}

impl From<pb::Hello> for crate::domain::Hello {
    fn from(h: pb::Hello) -> Self {
        crate::domain::Hello {
            node_name: h.node_name,
            boot_id: h.boot_id,
            agent_version: h.agent_version,
            labels: h.labels.into_iter().collect(),
            host: h.host.map(Into::into).unwrap_or_default(),
            gpus: from_pb(h.gpus),
            replicas: from_pb(h.replicas),
            warm: from_pb(h.warm),
            agent_instance: h.agent_instance,
        }
    }
}

impl From<&crate::domain::Report> for pb::Report {
    fn from(r: &crate::domain::Report) -> Self {
        pb::Report {
            seq: r.seq,
            time_unix_ms: r.time_unix_ms,
            gpus: to_pb(&r.gpus),
            host: Some((&r.host).into()),
            replicas: to_pb(&r.replicas),
            warm: to_pb(&r.warm),
            applied_generation: r.applied_generation,
            inventory: to_pb(&r.inventory),
        }
    }
}

impl From<pb::Report> for crate::domain::Report {
    fn from(r: pb::Report) -> Self {
        crate::domain::Report {
            seq: r.seq,
            time_unix_ms: r.time_unix_ms,
            gpus: from_pb(r.gpus),
            host: r.host.map(Into::into).unwrap_or_default(),
            replicas: from_pb(r.replicas),
            warm: from_pb(r.warm),
            applied_generation: r.applied_generation,
            inventory: from_pb(r.inventory),
        }
    }
}

impl From<&crate::domain::Assignment> for pb::Assignment {
    fn from(a: &crate::domain::Assignment) -> Self {
        pb::Assignment {
            generation: a.generation,
            replicas: to_pb(&a.replicas),
            warm: to_pb(&a.warm),
            evict: to_pb(&a.evict),
        }
    }
}

impl From<pb::Assignment> for crate::domain::Assignment {
    fn from(a: pb::Assignment) -> Self {
        crate::domain::Assignment {
            generation: a.generation,
            replicas: from_pb(a.replicas),
            warm: from_pb(a.warm),
            evict: from_pb(a.evict),
        }
    }
}

// ---- Control API views ----

use crate::api::{Event, GpuView, ModelView, NodeGpu, NodeState, NodeView, ReplicaView, WarmView};

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
        }
    }
}

impl From<pb::ReplicaView> for ReplicaView {
    fn from(r: pb::ReplicaView) -> Self {
        ReplicaView {
            node: r.node,
            status: r.status.map(Into::into).unwrap_or_default(),
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
            replicas: to_pb(&m.replicas),
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
            spec_toml: m.spec_toml,
            created_unix_ms: m.created_unix_ms,
            updated_unix_ms: m.updated_unix_ms,
            replicas: from_pb(m.replicas),
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
        }
    }
}

impl From<&crate::domain::ToAgent> for pb::CoordinatorMessage {
    fn from(m: &crate::domain::ToAgent) -> Self {
        let msg = match m {
            crate::domain::ToAgent::Assignment(a) => {
                pb::coordinator_message::Msg::Assignment(a.into())
            }
            crate::domain::ToAgent::Logs(l) => {
                pb::coordinator_message::Msg::Logs(pb::LogsRequest {
                    request_id: l.request_id,
                    replica_id: l.replica_id.clone(),
                    lines: l.lines,
                })
            }
        };
        pb::CoordinatorMessage { msg: Some(msg) }
    }
}

impl From<pb::LogsRequest> for crate::domain::LogsRequest {
    fn from(l: pb::LogsRequest) -> Self {
        crate::domain::LogsRequest {
            request_id: l.request_id,
            replica_id: l.replica_id,
            lines: l.lines,
        }
    }
}

impl From<&crate::domain::LogsReply> for pb::LogsReply {
    fn from(l: &crate::domain::LogsReply) -> Self {
        pb::LogsReply {
            request_id: l.request_id,
            lines: l.lines.clone(),
            error: l.error.clone(),
        }
    }
}

impl From<pb::LogsReply> for crate::domain::LogsReply {
    fn from(l: pb::LogsReply) -> Self {
        crate::domain::LogsReply {
            request_id: l.request_id,
            lines: l.lines,
            error: l.error,
        }
    }
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
                ..Default::default()
            },
            ..Default::default()
        };
        let back: ReplicaStatus = pb::ReplicaStatus::from(&r).into();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_replica_state_is_never_ready() {
        assert_eq!(replica_state_from_i32(99), ReplicaState::Failed);
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
