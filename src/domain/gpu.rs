//! GPU inventory and samples.

use serde::{Deserialize, Serialize};

/// Static facts about one GPU plus its current health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub pci_bus_id: String,
    pub healthy: bool,
    /// Why the GPU is unhealthy; empty when healthy.
    pub health_reason: String,
    /// Parent GPU index when this device is a MIG instance.
    pub mig_parent: Option<u32>,
}

/// Aggregate of one signal over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct WindowStats {
    pub last: f64,
    pub mean: f64,
    pub max: f64,
    pub p95: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_bytes: u64,
}

/// One sample of one GPU. `None` where the device does not support a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuSample {
    pub index: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub utilization_pct: f64,
    pub memory_utilization_pct: f64,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub throttle_reasons: u64,
    pub ecc_volatile_single_bit: Option<u64>,
    pub ecc_volatile_double_bit: Option<u64>,
    pub remapped_rows_pending: Option<u32>,
    pub remapped_rows_failed: Option<u32>,
    pub pcie_rx_bytes_per_s: Option<u64>,
    pub pcie_tx_bytes_per_s: Option<u64>,
    pub healthy: bool,
    pub health_reason: String,
    pub processes: Vec<GpuProcess>,
    pub utilization_10s: WindowStats,
    pub utilization_60s: WindowStats,
    pub memory_used_10s: WindowStats,
    pub memory_used_60s: WindowStats,
    /// Xid errors seen since the agent started.
    pub xid_errors: u64,
    pub last_xid: u32,
}
