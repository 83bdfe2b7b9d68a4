//! GPU probes: the agent's view of its GPUs, behind one trait so the real NVML
//! backend and the simulated one (dev, tests, demo) are interchangeable.

pub mod exporter;
pub mod health;
pub mod kmsg;
pub mod nvml;
mod nvml_events;
pub mod sampler;
pub mod simulated;
pub mod window;
pub mod xid;

use crate::domain::{GpuInfo, GpuSample};

pub use health::{GpuEvent, HealthRules, HealthTracker, XidSource};
pub use nvml::NvmlGpus;
pub use sampler::{open_probe, spawn_sampler, GpuSampler, GpuSnapshot, NoGpus, OpenedProbe};
pub use simulated::{FaultError, FaultKind, SimulatedConfig, SimulatedFaults, SimulatedGpus};

/// The NVIDIA management library the NVML backend loads at run time.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// Why a GPU backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot load the NVIDIA management library {library}: {reason}; install the NVIDIA driver, or run with `--gpu-backend simulated`")]
    LibraryUnavailable {
        library: &'static str,
        reason: String,
    },
    #[error("NVML loaded but {what} failed: {reason}")]
    Nvml { what: String, reason: String },
}

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

    /// Events seen since the last call (Xid errors, repairs). Backends
    /// without an event source have none.
    fn take_events(&mut self) -> Vec<GpuEvent> {
        Vec::new()
    }
}

/// The sample of a GPU that does not answer (fallen off the bus, reset
/// required): nothing measured, unhealthy with the reason.
pub fn unanswered_sample(index: u32, memory_total_bytes: u64, reason: String) -> GpuSample {
    GpuSample {
        index,
        memory_total_bytes,
        healthy: false,
        health_reason: reason,
        ..GpuSample::default()
    }
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
