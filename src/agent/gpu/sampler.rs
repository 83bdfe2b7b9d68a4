//! Opens the configured GPU backend and drives it from its own thread (NVML
//! calls block): each interval it applies the latest workload, samples,
//! applies the health rules and the rolling windows, and publishes a
//! `GpuSnapshot` on a watch channel for the session and the exporter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::{GpuInfo, GpuSample};

use super::health::{HealthRules, HealthTracker};
use super::nvml::NvmlGpus;
use super::simulated::{SimulatedConfig, SimulatedFaults, SimulatedGpus};
use super::window::GpuWindows;
use super::{GpuBackend, GpuProbe, GpuWorkload, ProbeError};

/// Everything the agent knows about its GPUs at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSnapshot {
    /// "nvml", "simulated" or "none"; empty before the first sample.
    pub backend: &'static str,
    pub driver_version: String,
    pub cuda_version: String,
    /// Inventory with the current health of each GPU.
    pub inventory: Vec<GpuInfo>,
    pub samples: Vec<GpuSample>,
    /// How long the probe took to sample all GPUs.
    pub sample_cost: Duration,
}

/// A probe ready to run, and the fault handle when it is simulated.
pub struct OpenedProbe {
    pub probe: Box<dyn GpuProbe>,
    pub faults: Option<SimulatedFaults>,
}

/// The probe of a host without NVIDIA GPUs (or without the driver).
#[derive(Debug, Default)]
pub struct NoGpus;

impl GpuProbe for NoGpus {
    fn backend(&self) -> &'static str {
        "none"
    }

    fn inventory(&mut self) -> Vec<GpuInfo> {
        Vec::new()
    }

    fn sample(&mut self) -> Vec<GpuSample> {
        Vec::new()
    }
}

static NO_DRIVER_WARNED: AtomicBool = AtomicBool::new(false);

/// Opens the backend the agent is configured with. `Auto` uses NVML when the
/// driver library loads and otherwise runs with no GPUs (warning once);
/// `Nvml` fails with an error naming the library.
pub fn open_probe(backend: GpuBackend, sim: &SimulatedConfig) -> Result<OpenedProbe, ProbeError> {
    match backend {
        GpuBackend::Simulated => {
            let gpus = SimulatedGpus::new(sim);
            let faults = gpus.faults();
            Ok(OpenedProbe {
                probe: Box::new(gpus),
                faults: Some(faults),
            })
        }
        GpuBackend::Nvml => Ok(OpenedProbe {
            probe: Box::new(NvmlGpus::open()?),
            faults: None,
        }),
        GpuBackend::Auto => match NvmlGpus::open() {
            Ok(gpus) => Ok(OpenedProbe {
                probe: Box::new(gpus),
                faults: None,
            }),
            Err(err) => {
                if !NO_DRIVER_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err,
                        "no NVIDIA driver found: this agent reports no GPUs (use `--gpu-backend simulated` for simulated GPUs)");
                }
                Ok(OpenedProbe {
                    probe: Box::new(NoGpus),
                    faults: None,
                })
            }
        },
    }
}

enum Command {
    Workload(Vec<GpuWorkload>),
    MarkHealthy(u32),
}

/// Handle to the sampling thread; dropping it stops the thread.
pub struct GpuSampler {
    commands: Option<mpsc::Sender<Command>>,
    snapshots: watch::Receiver<GpuSnapshot>,
    thread: Option<JoinHandle<()>>,
}

impl GpuSampler {
    /// Snapshots as they are published; the first one arrives right after
    /// the sampler starts.
    pub fn subscribe(&self) -> watch::Receiver<GpuSnapshot> {
        self.snapshots.clone()
    }

    /// The replicas running now, applied before the next sample.
    pub fn set_workload(&self, workload: Vec<GpuWorkload>) {
        self.send(Command::Workload(workload));
    }

    /// Operator override of the health rules for one GPU (see
    /// `HealthTracker::mark_healthy`); effective from the next sample.
    pub fn mark_healthy(&self, index: u32) {
        self.send(Command::MarkHealthy(index));
    }

    fn send(&self, command: Command) {
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|commands| commands.send(command).is_ok());
        if !sent {
            tracing::warn!("the GPU sampler has stopped; command dropped");
        }
    }
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        // Closing the command channel wakes the thread and ends its loop.
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts sampling `probe` every `interval` on a new thread.
pub fn spawn_sampler(probe: Box<dyn GpuProbe>, interval: Duration) -> GpuSampler {
    spawn_sampler_with(probe, interval, HealthRules::default())
}

/// `spawn_sampler` with explicit health rules (tests shorten them).
pub fn spawn_sampler_with(
    probe: Box<dyn GpuProbe>,
    interval: Duration,
    rules: HealthRules,
) -> GpuSampler {
    let (commands, command_rx) = mpsc::channel();
    let (snapshot_tx, snapshots) = watch::channel(GpuSnapshot::default());
    let interval = interval.max(Duration::from_millis(10));
    let thread = std::thread::Builder::new()
        .name("gpu-sampler".into())
        .spawn(move || run(probe, interval, rules, command_rx, snapshot_tx));
    let thread = match thread {
        Ok(thread) => Some(thread),
        Err(err) => {
            tracing::error!(error = %err, "cannot start the GPU sampler thread; GPUs are not measured");
            None
        }
    };
    GpuSampler {
        commands: Some(commands),
        snapshots,
        thread,
    }
}

fn run(
    mut probe: Box<dyn GpuProbe>,
    interval: Duration,
    rules: HealthRules,
    commands: mpsc::Receiver<Command>,
    snapshots: watch::Sender<GpuSnapshot>,
) {
    let mut tracker = HealthTracker::new(rules);
    let mut windows = GpuWindows::new();
    let mut inventory = probe.inventory();
    let (driver_version, cuda_version) = probe.versions();
    let mut workload: Option<Vec<GpuWorkload>> = None;
    let mut next_sample = Instant::now();
    loop {
        let wait = next_sample.saturating_duration_since(Instant::now());
        match commands.recv_timeout(wait) {
            Ok(Command::Workload(w)) => {
                workload = Some(w);
                continue;
            }
            Ok(Command::MarkHealthy(index)) => {
                if tracker.mark_healthy(index, Instant::now()) {
                    tracing::info!(gpu = index, "GPU marked healthy by an operator");
                } else {
                    tracing::warn!(gpu = index, "cannot mark an unknown GPU healthy");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }

        if let Some(w) = workload.take() {
            probe.set_workload(&w);
        }
        let started = Instant::now();
        let mut samples = probe.sample();
        let sample_cost = started.elapsed();
        let now = Instant::now();
        for event in probe.take_events() {
            tracker.record(event, now);
        }
        tracker.apply(&mut samples, now);
        windows.record(&mut samples, now);
        for gpu in inventory.iter_mut() {
            if let Some(sample) = samples.iter().find(|s| s.index == gpu.index) {
                gpu.healthy = sample.healthy;
                gpu.health_reason.clone_from(&sample.health_reason);
            }
        }
        snapshots.send_replace(GpuSnapshot {
            backend: probe.backend(),
            driver_version: driver_version.clone(),
            cuda_version: cuda_version.clone(),
            inventory: inventory.clone(),
            samples,
            sample_cost,
        });
        // Keep the cadence; after a sample slower than the interval, start
        // the next one at once rather than bunching up.
        next_sample = (next_sample + interval).max(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::gpu::simulated::SIMULATED_LOST_REASON;

    fn sim_config() -> SimulatedConfig {
        SimulatedConfig {
            count: 2,
            model: "Simulated H100 80GB".into(),
            memory_bytes: 80 << 30,
            node_name: "n1".into(),
        }
    }

    /// Waits (at most 10 s) for a snapshot that satisfies `pred`.
    fn wait_for(
        rx: &mut watch::Receiver<GpuSnapshot>,
        pred: impl Fn(&GpuSnapshot) -> bool,
    ) -> GpuSnapshot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if pred(&snapshot) {
                return snapshot;
            }
            assert!(Instant::now() < deadline, "timed out; last: {snapshot:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn simulated_backend_comes_with_a_fault_handle() {
        let opened = open_probe(GpuBackend::Simulated, &sim_config()).unwrap();
        assert_eq!(opened.probe.backend(), "simulated");
        assert!(opened.faults.is_some());
    }

    #[test]
    fn auto_without_a_driver_runs_with_no_gpus() {
        let opened = open_probe(GpuBackend::Auto, &sim_config()).unwrap();
        if opened.probe.backend() == "nvml" {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        let mut probe = opened.probe;
        assert_eq!(probe.backend(), "none");
        assert!(probe.inventory().is_empty());
        assert!(opened.faults.is_none());
    }

    #[test]
    fn nvml_without_a_driver_is_an_error_naming_the_library() {
        match open_probe(GpuBackend::Nvml, &sim_config()) {
            Err(err) => assert!(err.to_string().contains("libnvidia-ml.so.1"), "{err}"),
            Ok(_) => eprintln!("skipped: this machine has an NVIDIA driver"),
        }
    }

    #[test]
    fn snapshots_carry_workload_windows_and_health() {
        let opened = open_probe(GpuBackend::Simulated, &sim_config()).unwrap();
        let faults = opened.faults.unwrap();
        let sampler = spawn_sampler(opened.probe, Duration::from_millis(20));
        let mut rx = sampler.subscribe();

        let first = wait_for(&mut rx, |s| !s.samples.is_empty());
        assert_eq!(first.backend, "simulated");
        assert_eq!(first.inventory.len(), 2);

        sampler.set_workload(vec![GpuWorkload {
            replica_id: "r1".into(),
            pid: 7,
            gpus: vec![1],
            memory_bytes: 10 << 30,
            busy: 1.0,
        }]);
        let busy = wait_for(&mut rx, |s| s.samples[1].utilization_pct == 100.0);
        assert_eq!(busy.samples[1].utilization_10s.max, 100.0);
        assert_eq!(busy.samples[0].utilization_10s.max, 0.0);

        faults.lose(0).unwrap();
        let lost = wait_for(&mut rx, |s| !s.samples[0].healthy);
        assert_eq!(lost.samples[0].health_reason, SIMULATED_LOST_REASON);
        assert!(!lost.inventory[0].healthy);
        assert!(lost.samples[1].healthy, "the other GPU keeps being sampled");

        faults.clear(0).unwrap();
        wait_for(&mut rx, |s| s.samples[0].healthy && s.inventory[0].healthy);
    }

    #[test]
    fn fatal_xid_stays_until_marked_healthy() {
        let opened = open_probe(GpuBackend::Simulated, &sim_config()).unwrap();
        let faults = opened.faults.unwrap();
        let sampler = spawn_sampler(opened.probe, Duration::from_millis(20));
        let mut rx = sampler.subscribe();
        wait_for(&mut rx, |s| !s.samples.is_empty());

        faults.inject_xid(1, 48).unwrap();
        let s = wait_for(&mut rx, |s| !s.samples[1].healthy);
        assert_eq!(s.samples[1].health_reason, "Xid 48 (double-bit ECC error)");
        assert_eq!((s.samples[1].xid_errors, s.samples[1].last_xid), (1, 48));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!rx.borrow().samples[1].healthy, "sticky");

        sampler.mark_healthy(1);
        let s = wait_for(&mut rx, |s| s.samples[1].healthy);
        assert_eq!(s.samples[1].xid_errors, 1);
    }

    #[test]
    fn sustained_throttling_makes_a_gpu_unhealthy() {
        let opened = open_probe(GpuBackend::Simulated, &sim_config()).unwrap();
        let faults = opened.faults.unwrap();
        let rules = HealthRules {
            slowdown_after: Duration::from_millis(100),
        };
        let sampler = spawn_sampler_with(opened.probe, Duration::from_millis(20), rules);
        let mut rx = sampler.subscribe();
        faults.throttle(0).unwrap();
        let s = wait_for(&mut rx, |s| !s.samples.is_empty() && !s.samples[0].healthy);
        assert!(s.samples[0].health_reason.starts_with("hardware slowdown"));
        faults.clear(0).unwrap();
        wait_for(&mut rx, |s| s.samples[0].healthy);
    }

    #[test]
    fn dropping_the_sampler_stops_its_thread() {
        let sampler = spawn_sampler(Box::new(NoGpus), Duration::from_secs(3600));
        let rx = sampler.subscribe();
        drop(sampler);
        assert!(
            rx.has_changed().is_err(),
            "the sender is gone with the thread"
        );
    }
}
