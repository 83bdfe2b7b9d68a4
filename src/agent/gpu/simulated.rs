//! Simulated GPUs for development, tests and `gpufleet demo`: memory and
//! utilization follow the replicas the supervisor runs on them.

use crate::domain::{GpuInfo, GpuProcess, GpuSample, WindowStats};

use super::{GpuProbe, GpuWorkload};

/// Memory a simulated driver keeps for itself on every GPU.
const DRIVER_RESERVED_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SimulatedConfig {
    pub count: u32,
    pub model: String,
    pub memory_bytes: u64,
    /// Seeds the UUIDs so that each node's GPUs are distinct and stable.
    pub node_name: String,
}

pub struct SimulatedGpus {
    gpus: Vec<GpuInfo>,
    workload: Vec<GpuWorkload>,
}

impl SimulatedGpus {
    pub fn new(cfg: &SimulatedConfig) -> Self {
        let gpus = (0..cfg.count)
            .map(|index| GpuInfo {
                index,
                uuid: simulated_uuid(&cfg.node_name, index),
                name: cfg.model.clone(),
                memory_total_bytes: cfg.memory_bytes,
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index * 0x10),
                healthy: true,
                health_reason: String::new(),
                mig_parent: None,
            })
            .collect();
        Self {
            gpus,
            workload: Vec::new(),
        }
    }
}

/// A stable UUID in NVIDIA's `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` shape,
/// derived from the node name and index (FNV-1a; no randomness, so a restarted
/// agent reports the same GPUs).
fn simulated_uuid(node: &str, index: u32) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in node.bytes().chain(index.to_le_bytes()) {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let hex = format!("{h:032x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl GpuProbe for SimulatedGpus {
    fn backend(&self) -> &'static str {
        "simulated"
    }

    fn inventory(&mut self) -> Vec<GpuInfo> {
        self.gpus.clone()
    }

    fn sample(&mut self) -> Vec<GpuSample> {
        self.gpus
            .iter()
            .map(|gpu| {
                let mut used = DRIVER_RESERVED_BYTES.min(gpu.memory_total_bytes);
                let mut busy: f64 = 0.0;
                let mut processes = Vec::new();
                for w in self.workload.iter().filter(|w| w.gpus.contains(&gpu.index)) {
                    used = used.saturating_add(w.memory_bytes);
                    busy += w.busy;
                    processes.push(GpuProcess {
                        pid: w.pid,
                        used_memory_bytes: w.memory_bytes,
                    });
                }
                let used = used.min(gpu.memory_total_bytes);
                let util = (busy.clamp(0.0, 1.0) * 100.0).round();
                let power = 70.0 + 6.3 * util;
                GpuSample {
                    index: gpu.index,
                    memory_used_bytes: used,
                    memory_total_bytes: gpu.memory_total_bytes,
                    utilization_pct: util,
                    memory_utilization_pct: (util * 0.6).round(),
                    temperature_c: Some(32.0 + util * 0.4),
                    power_w: Some(power),
                    power_limit_w: Some(700.0),
                    sm_clock_mhz: Some(if util > 0.0 { 1980 } else { 345 }),
                    throttle_reasons: 0,
                    ecc_volatile_single_bit: Some(0),
                    ecc_volatile_double_bit: Some(0),
                    remapped_rows_pending: Some(0),
                    remapped_rows_failed: Some(0),
                    pcie_rx_bytes_per_s: Some(0),
                    pcie_tx_bytes_per_s: Some(0),
                    healthy: gpu.healthy,
                    health_reason: gpu.health_reason.clone(),
                    processes,
                    utilization_10s: WindowStats::default(),
                    utilization_60s: WindowStats::default(),
                    memory_used_10s: WindowStats::default(),
                    memory_used_60s: WindowStats::default(),
                    xid_errors: 0,
                    last_xid: 0,
                }
            })
            .collect()
    }

    fn set_workload(&mut self, workload: &[GpuWorkload]) {
        self.workload = workload.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> SimulatedGpus {
        SimulatedGpus::new(&SimulatedConfig {
            count: 4,
            model: "Simulated H100 80GB".into(),
            memory_bytes: 80 << 30,
            node_name: "n1".into(),
        })
    }

    #[test]
    fn uuids_are_stable_and_distinct() {
        let a = gpus().inventory();
        let b = gpus().inventory();
        assert_eq!(a, b);
        assert_ne!(a[0].uuid, a[1].uuid);
        assert!(a[0].uuid.starts_with("GPU-"));
        assert_eq!(a[0].uuid.len(), 40);
    }

    #[test]
    fn memory_and_utilization_follow_the_workload() {
        let mut g = gpus();
        g.set_workload(&[GpuWorkload {
            replica_id: "r1".into(),
            pid: 42,
            gpus: vec![1, 2],
            memory_bytes: 20 << 30,
            busy: 0.5,
        }]);
        let s = g.sample();
        assert_eq!(s[0].memory_used_bytes, DRIVER_RESERVED_BYTES);
        assert_eq!(s[1].memory_used_bytes, DRIVER_RESERVED_BYTES + (20 << 30));
        assert_eq!(s[1].utilization_pct, 50.0);
        assert_eq!(s[2].processes[0].pid, 42);
        assert_eq!(s[3].utilization_pct, 0.0);
    }
}
