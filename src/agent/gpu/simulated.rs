//! Simulated GPUs for development, tests and `gpufleet demo`: memory and
//! utilization follow the replicas the supervisor runs on them. Faults (a lost
//! GPU, an Xid, hardware slowdown) can be injected through `SimulatedFaults`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::{GpuDetail, GpuInfo, GpuProcess, GpuSample, WindowStats};

use super::health::{GpuEvent, XidSource, HW_SLOWDOWN_REASONS};
use super::xid::MAX_XID;
use super::{unanswered_sample, GpuProbe, GpuWorkload};

/// The reason a simulated lost GPU reports.
pub const SIMULATED_LOST_REASON: &str = "GPU has fallen off the bus (simulated Xid 79)";

/// Events waiting for the sampler beyond this are dropped (oldest first), so
/// a flood of injected Xids cannot grow memory.
const MAX_PENDING_EVENTS: usize = 1024;

/// NVML's HW slowdown throttle reason, which a throttled simulated GPU shows.
const HW_SLOWDOWN: u64 = 0x8;
const _: () = assert!(HW_SLOWDOWN & HW_SLOWDOWN_REASONS != 0);

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
    faults: SimulatedFaults,
    /// Energy each GPU has drawn, in millijoules, and when it was last
    /// added to: the counter grows with the simulated power.
    energy_mj: Vec<f64>,
    sampled_at: Option<std::time::Instant>,
}

/// A fault to inject into one simulated GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The GPU stops answering, as after Xid 79.
    Lost,
    /// The driver reports this Xid.
    Xid(u32),
    /// Hardware slowdown (thermal or power brake) until cleared.
    Throttle,
    /// Repair the GPU: no longer lost or throttled, latched Xids forgotten.
    Clear,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    #[error("no simulated GPU {index}: this agent has {count} (indices 0..{count})")]
    UnknownGpu { index: u32, count: u32 },
    #[error("Xid {xid} is out of range: allowed 1..={MAX_XID}")]
    InvalidXid { xid: u32 },
}

#[derive(Debug, Default)]
struct FaultState {
    lost: BTreeSet<u32>,
    throttled: BTreeSet<u32>,
    events: Vec<GpuEvent>,
}

/// Handle to inject faults into a running `SimulatedGpus` (tests, demo,
/// the agent's `/v1/simulated/...` endpoint). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimulatedFaults {
    count: u32,
    state: Arc<Mutex<FaultState>>,
}

impl SimulatedFaults {
    fn new(count: u32) -> Self {
        SimulatedFaults {
            count,
            state: Arc::default(),
        }
    }

    /// Number of simulated GPUs faults can target.
    pub fn gpu_count(&self) -> u32 {
        self.count
    }

    /// Injects a fault; it shows in the next sample.
    pub fn inject(&self, index: u32, kind: FaultKind) -> Result<(), FaultError> {
        if index >= self.count {
            return Err(FaultError::UnknownGpu {
                index,
                count: self.count,
            });
        }
        if let FaultKind::Xid(xid) = kind {
            if !(1..=MAX_XID).contains(&xid) {
                return Err(FaultError::InvalidXid { xid });
            }
        }
        let mut state = self.lock();
        match kind {
            FaultKind::Lost => {
                state.lost.insert(index);
            }
            FaultKind::Xid(xid) => state.push_event(GpuEvent::Xid {
                index,
                xid,
                detail: "simulated".into(),
                source: XidSource::Simulated,
            }),
            FaultKind::Throttle => {
                state.throttled.insert(index);
            }
            FaultKind::Clear => {
                state.lost.remove(&index);
                state.throttled.remove(&index);
                state.push_event(GpuEvent::Repaired { index });
            }
        }
        tracing::info!(gpu = index, fault = ?kind, "simulated GPU fault injected");
        Ok(())
    }

    pub fn lose(&self, index: u32) -> Result<(), FaultError> {
        self.inject(index, FaultKind::Lost)
    }

    pub fn inject_xid(&self, index: u32, xid: u32) -> Result<(), FaultError> {
        self.inject(index, FaultKind::Xid(xid))
    }

    pub fn throttle(&self, index: u32) -> Result<(), FaultError> {
        self.inject(index, FaultKind::Throttle)
    }

    pub fn clear(&self, index: u32) -> Result<(), FaultError> {
        self.inject(index, FaultKind::Clear)
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // The state is plain data that every writer leaves consistent, so a
        // panic elsewhere while holding the lock cannot corrupt it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl FaultState {
    fn push_event(&mut self, event: GpuEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.remove(0);
        }
        self.events.push(event);
    }
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
            faults: SimulatedFaults::new(cfg.count),
            energy_mj: vec![0.0; cfg.count as usize],
            sampled_at: None,
        }
    }

    /// A handle to inject faults into these GPUs.
    pub fn faults(&self) -> SimulatedFaults {
        self.faults.clone()
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
        let now = std::time::Instant::now();
        let elapsed_s = self
            .sampled_at
            .replace(now)
            .map_or(0.0, |at| now.duration_since(at).as_secs_f64());
        let faults = self.faults.lock();
        self.gpus
            .iter()
            .map(|gpu| {
                if faults.lost.contains(&gpu.index) {
                    return unanswered_sample(
                        gpu.index,
                        gpu.memory_total_bytes,
                        SIMULATED_LOST_REASON.to_string(),
                    );
                }
                let throttled = faults.throttled.contains(&gpu.index);
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
                let energy = self.energy_mj.get_mut(gpu.index as usize).map(|e| {
                    *e += power * 1000.0 * elapsed_s;
                    *e as u64
                });
                GpuSample {
                    index: gpu.index,
                    memory_used_bytes: used,
                    memory_total_bytes: gpu.memory_total_bytes,
                    utilization_pct: util,
                    memory_utilization_pct: (util * 0.6).round(),
                    temperature_c: Some(32.0 + util * 0.4),
                    power_w: Some(power),
                    power_limit_w: Some(700.0),
                    sm_clock_mhz: Some(match (throttled, util > 0.0) {
                        (true, _) => 600,
                        (false, true) => 1980,
                        (false, false) => 345,
                    }),
                    throttle_reasons: if throttled { HW_SLOWDOWN } else { 0 },
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
                    detail: GpuDetail {
                        // An H100 SXM's HBM3 clock; memory runs a little
                        // warmer than the die under load.
                        mem_clock_mhz: Some(2619),
                        memory_temperature_c: Some(30.0 + util * 0.45),
                        energy_mj: energy,
                        pcie_replays: Some(0),
                        encoder_pct: Some(0.0),
                        decoder_pct: Some(0.0),
                        remapped_rows_correctable: Some(0),
                        remapped_rows_uncorrectable: Some(0),
                    },
                }
            })
            .collect()
    }

    fn set_workload(&mut self, workload: &[GpuWorkload]) {
        self.workload = workload.to_vec();
    }

    fn take_events(&mut self) -> Vec<GpuEvent> {
        std::mem::take(&mut self.faults.lock().events)
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
    fn energy_is_a_counter_that_grows_with_the_power_drawn() {
        let mut g = gpus();
        let first = g.sample()[0].detail.energy_mj.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = g.sample()[0].detail.energy_mj.unwrap();
        // Idle draws 70 W: 20 ms is at least 1,400 mJ.
        assert!(second >= first + 1_400, "{first} -> {second}");
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

    #[test]
    fn a_lost_gpu_is_unhealthy_and_the_others_keep_answering() {
        let mut g = gpus();
        g.faults().lose(2).unwrap();
        let s = g.sample();
        assert!(!s[2].healthy);
        assert_eq!(s[2].health_reason, SIMULATED_LOST_REASON);
        assert_eq!(s[2].temperature_c, None);
        assert!(s[0].healthy && s[1].healthy && s[3].healthy);
        assert!(s[0].temperature_c.is_some());

        g.faults().clear(2).unwrap();
        assert!(g.sample()[2].healthy);
        assert_eq!(g.take_events(), vec![GpuEvent::Repaired { index: 2 }]);
    }

    #[test]
    fn throttling_shows_hardware_slowdown() {
        let mut g = gpus();
        let faults = g.faults();
        faults.throttle(1).unwrap();
        let s = g.sample();
        assert_eq!(s[1].throttle_reasons, HW_SLOWDOWN);
        assert_eq!(s[1].sm_clock_mhz, Some(600));
        assert_eq!(s[0].throttle_reasons, 0);
        faults.clear(1).unwrap();
        assert_eq!(g.sample()[1].throttle_reasons, 0);
    }

    #[test]
    fn injected_xids_are_delivered_once() {
        let mut g = gpus();
        g.faults().inject_xid(0, 48).unwrap();
        let events = g.take_events();
        assert_eq!(
            events,
            vec![GpuEvent::Xid {
                index: 0,
                xid: 48,
                detail: "simulated".into(),
                source: XidSource::Simulated,
            }]
        );
        assert!(g.take_events().is_empty());
    }

    #[test]
    fn faults_on_unknown_gpus_or_xids_are_refused() {
        let g = gpus();
        assert_eq!(
            g.faults().lose(4),
            Err(FaultError::UnknownGpu { index: 4, count: 4 })
        );
        assert_eq!(
            g.faults().inject_xid(0, 0),
            Err(FaultError::InvalidXid { xid: 0 })
        );
        assert_eq!(
            FaultError::UnknownGpu { index: 4, count: 4 }.to_string(),
            "no simulated GPU 4: this agent has 4 (indices 0..4)"
        );
    }

    #[test]
    fn pending_events_are_bounded() {
        let mut g = gpus();
        let faults = g.faults();
        for _ in 0..(MAX_PENDING_EVENTS + 10) {
            faults.inject_xid(0, 13).unwrap();
        }
        assert_eq!(g.take_events().len(), MAX_PENDING_EVENTS);
    }
}
