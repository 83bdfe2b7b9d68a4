//! Host facts and samples.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub os: String,
    pub kernel: String,
    pub driver_version: String,
    pub cuda_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostSample {
    pub cpu_pct: f64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    pub page_cache_bytes: u64,
    pub state_dir_free_bytes: u64,
    pub state_dir_total_bytes: u64,
}
