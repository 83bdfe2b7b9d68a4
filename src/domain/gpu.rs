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
    /// Counters the agent exports (dcgm-exporter's defaults) but the
    /// coordinator does not need: not sent over the session.
    pub detail: GpuDetail,
}

/// More of what NVML reports per GPU, for `/metrics/dcgm`. `None` where the
/// GPU or driver does not report it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuDetail {
    pub mem_clock_mhz: Option<u32>,
    pub memory_temperature_c: Option<f64>,
    /// Energy since the driver loaded, in millijoules (a counter).
    pub energy_mj: Option<u64>,
    /// PCIe replays (retries), a counter.
    pub pcie_replays: Option<u64>,
    pub encoder_pct: Option<f64>,
    pub decoder_pct: Option<f64>,
    /// Rows remapped for correctable and uncorrectable errors (counters).
    pub remapped_rows_correctable: Option<u64>,
    pub remapped_rows_uncorrectable: Option<u64>,
}
