//! GPU probes: the agent's view of its GPUs, behind one trait so the real NVML
//! backend and the simulated one (dev, tests, demo) are interchangeable.

pub mod health;
pub mod nvml;
pub mod simulated;
pub mod window;

use crate::domain::{GpuInfo, GpuSample};

/// What the supervisor runs on which GPUs. Real backends measure this
/// themselves; the simulated backend derives memory and utilization from it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuWorkload {
    pub replica_id: String,
    pub pid: u32,
    pub gpus: Vec<u32>,
    /// GPU memory the replica holds on each of its GPUs.
    pub memory_bytes: u64,
    /// How busy the replica is, 0..=1 (running requests over concurrency).
    pub busy: f64,
}

/// A source of GPU inventory and samples. Calls may block (NVML does), so the
/// agent drives a probe from a blocking thread, never from the control loop.
pub trait GpuProbe: Send {
    /// Short name of the backend ("nvml", "simulated").
    fn backend(&self) -> &'static str;

    /// The GPUs with their current health.
    fn inventory(&mut self) -> Vec<GpuInfo>;

    /// One sample per GPU. A GPU that fails to answer is returned unhealthy
    /// with a reason; it never hides the others.
    fn sample(&mut self) -> Vec<GpuSample>;

    /// Driver and CUDA versions, when the backend knows them.
    fn versions(&self) -> (String, String) {
        (String::new(), String::new())
    }

    /// The replicas running now and their GPUs.
    fn set_workload(&mut self, _workload: &[GpuWorkload]) {}
}

/// Which GPU backend the agent uses (`--gpu-backend`, `[gpu] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackend {
    /// NVML when the driver library loads, otherwise no GPUs (with a warning).
    #[default]
    Auto,
    Nvml,
    Simulated,
}

impl std::str::FromStr for GpuBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(GpuBackend::Auto),
            "nvml" => Ok(GpuBackend::Nvml),
            "simulated" => Ok(GpuBackend::Simulated),
            other => Err(format!(
                "unknown GPU backend `{other}`; allowed: auto, nvml, simulated"
            )),
        }
    }
}
