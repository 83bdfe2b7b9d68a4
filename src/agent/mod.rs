//! The per-host daemon: measures GPUs and the host, supervises model servers,
//! keeps weights warm, and holds the session with the coordinator.

pub mod gpu;
pub mod host;
pub mod http;
pub mod link;
pub mod scrape;
pub mod supervisor;
pub mod warm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::domain::{Assignment, GpuInfo, GpuSample, Hello, HostInfo, HostSample, Report};
use crate::domain::{ReplicaStatus, WarmStatus};

use gpu::simulated::{SimulatedConfig, SimulatedGpus};
use gpu::{GpuBackend, GpuProbe};

/// The agent's live state, as the session reports it.
struct AgentState {
    node_name: String,
    boot_id: String,
    instance: String,
    labels: std::collections::BTreeMap<String, String>,
    host_info: HostInfo,
    gpus: watch::Receiver<(Vec<GpuInfo>, Vec<GpuSample>)>,
    host: watch::Receiver<HostSample>,
    replicas: watch::Receiver<Vec<ReplicaStatus>>,
    warm: watch::Receiver<Vec<WarmStatus>>,
}

impl link::Reporter for AgentState {
    fn hello(&self) -> Hello {
        Hello {
            node_name: self.node_name.clone(),
            boot_id: self.boot_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: self.labels.clone(),
            host: self.host_info.clone(),
            gpus: self.gpus.borrow().0.clone(),
            replicas: self.replicas.borrow().clone(),
            warm: self.warm.borrow().clone(),
            agent_instance: self.instance.clone(),
        }
    }

    fn report(&self) -> Report {
        let (inventory, samples) = self.gpus.borrow().clone();
        Report {
            seq: 0,
            time_unix_ms: crate::domain::unix_ms_now(),
            gpus: samples,
            host: self.host.borrow().clone(),
            replicas: self.replicas.borrow().clone(),
            warm: self.warm.borrow().clone(),
            applied_generation: 0,
            inventory,
        }
    }
}

fn open_probe(cfg: &AgentConfig) -> anyhow::Result<Box<dyn GpuProbe>> {
    let sim = SimulatedConfig {
        count: cfg.gpu.simulated_count,
        model: cfg.gpu.simulated_model.clone(),
        memory_bytes: cfg.gpu.simulated_memory_bytes,
        node_name: cfg.node_name.clone(),
    };
    match cfg.gpu.backend {
        GpuBackend::Simulated => Ok(Box::new(SimulatedGpus::new(&sim))),
        GpuBackend::Nvml | GpuBackend::Auto => Ok(Box::new(SimulatedGpus::new(&SimulatedConfig {
            count: 0,
            ..sim
        }))),
    }
}

/// Samples the GPUs on a blocking thread (NVML calls block) and publishes
/// each sample; stops when every receiver is gone.
fn spawn_gpu_sampler(
    mut probe: Box<dyn GpuProbe>,
    interval: Duration,
) -> watch::Receiver<(Vec<GpuInfo>, Vec<GpuSample>)> {
    let (tx, rx) = watch::channel((probe.inventory(), probe.sample()));
    std::thread::Builder::new()
        .name("gpu-sampler".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let snapshot = (probe.inventory(), probe.sample());
            if tx.send(snapshot).is_err() {
                return;
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the GPU sampler thread"));
    rx
}

/// How the agent process behaves beyond its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop every replica on exit instead of leaving them for re-adoption.
    pub stop_replicas_on_exit: bool,
}

/// Runs the agent until `shutdown` resolves. Replicas keep running when the
/// agent stops (a restarted agent re-adopts them) unless `options` says
/// otherwise.
pub async fn run(
    cfg: AgentConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create the state dir {}", cfg.state_dir.display()))?;
    let probe = open_probe(&cfg)?;
    tracing::info!(node = %cfg.node_name, backend = probe.backend(), coordinator = %cfg.coordinator, "agent starting");
    let gpus = spawn_gpu_sampler(probe, cfg.gpu.sample_interval);

    let mut host_probe = host::HostProbe::new(&cfg.state_dir);
    let host_info = host_probe.info();
    let (host_tx, host_rx) = watch::channel(host_probe.sample());
    let report_interval = cfg.report_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(report_interval);
        loop {
            tick.tick().await;
            if host_tx.send(host_probe.sample()).is_err() {
                return;
            }
        }
    });

    let (_replicas_tx, replicas_rx) = watch::channel(Vec::new());
    let (_warm_tx, warm_rx) = watch::channel(Vec::new());
    let state = Arc::new(AgentState {
        node_name: cfg.node_name.clone(),
        boot_id: host::boot_id(),
        instance: format!("{:016x}", rand::random::<u64>()),
        labels: cfg.labels.clone(),
        host_info,
        gpus,
        host: host_rx,
        replicas: replicas_rx,
        warm: warm_rx,
    });

    let (assign_tx, mut assign_rx) = watch::channel::<Option<Assignment>>(None);
    let (connected_tx, _connected_rx) = watch::channel(false);
    tokio::spawn(async move {
        while assign_rx.changed().await.is_ok() {
            let a = assign_rx.borrow_and_update().clone();
            if let Some(a) = a {
                tracing::info!(generation = a.generation, replicas = a.replicas.len(), "assignment");
            }
        }
    });

    let link_cfg = link::LinkConfig {
        coordinator: cfg.coordinator.clone(),
        node_name: cfg.node_name.clone(),
        report_interval: cfg.report_interval,
        backoff_base: Duration::from_millis(500),
        backoff_cap: Duration::from_secs(30),
    };
    link::run(link_cfg, state, assign_tx, connected_tx, shutdown).await;
    if options.stop_replicas_on_exit {
        tracing::info!("agent stopped");
    } else {
        tracing::info!("agent stopped; replicas keep running and will be re-adopted");
    }
    Ok(())
}
