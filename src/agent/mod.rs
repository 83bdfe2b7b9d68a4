//! The per-host daemon: measures GPUs and the host, supervises model servers,
//! keeps weights warm, and holds the session with the coordinator.

pub mod gpu;
pub mod host;
pub mod http;
pub mod link;
pub mod report;
pub mod scrape;
pub mod signals;
pub mod supervisor;
pub mod warm;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::domain::{Assignment, ServingSignals};

use gpu::SimulatedConfig;
use http::Telemetry;
use report::{AgentReporter, Identity};
use supervisor::{Supervisor, SupervisorConfig};
use warm::{Warmer, WarmerConfig};

/// How the agent process behaves beyond its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop every replica on exit instead of leaving them for re-adoption.
    pub stop_replicas_on_exit: bool,
}

/// What the agent knows of each assigned replica beyond its status.
#[derive(Debug, Clone, Default, PartialEq)]
struct AssignedFacts {
    /// id → (preset, metrics path)
    metrics: BTreeMap<String, (String, String)>,
    /// id → GPU memory per GPU
    memory: BTreeMap<String, u64>,
}

/// How long the agent waits for its first GPU sample before it says Hello.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(10);

/// Runs the agent until `shutdown` resolves. Replicas keep running when the
/// agent stops (a restarted agent re-adopts them) unless `options` says
/// otherwise.
pub async fn run(
    cfg: AgentConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The URLs share one scheme (checked with the config): the first speaks for all.
    let link_tls = crate::security::tls::agent_tls(&cfg.tls, &cfg.coordinators[0], &cfg.node_name)
        .map_err(crate::config::Misconfigured::wrap)?;
    let _watchdog = crate::notify::spawn_watchdog();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create the state dir {}", cfg.state_dir.display()))?;
    let started = Instant::now();
    let opened = gpu::open_probe(
        cfg.gpu.backend,
        &SimulatedConfig {
            count: cfg.gpu.simulated_count,
            model: cfg.gpu.simulated_model.clone(),
            memory_bytes: cfg.gpu.simulated_memory_bytes,
            node_name: cfg.node_name.clone(),
        },
    )?;
    let backend = opened.probe.backend();
    let sampler = Arc::new(gpu::spawn_sampler(opened.probe, cfg.gpu.sample_interval));
    let gpus = sampler.subscribe();
    // The Hello names the host's GPUs: wait for the first sample (NVML's
    // start can take seconds), or the coordinator would meet a node with no
    // GPUs until its next report. Not forever: a probe that hangs is the
    // sampler's to report, and the inventory follows in a report.
    let mut first = gpus.clone();
    let sampled = tokio::time::timeout(FIRST_SAMPLE_WAIT, async {
        first.wait_for(|s| !s.backend.is_empty()).await.is_ok()
    })
    .await;
    if sampled.is_err() {
        tracing::warn!(
            "no GPU sample within {}: connecting without the GPU inventory, which follows in a report",
            humantime::format_duration(FIRST_SAMPLE_WAIT)
        );
    }

    let (state_dir_tx, state_dir_rx) = watch::channel(None);
    tokio::spawn(host::watch_state_dir(cfg.state_dir.clone(), state_dir_tx));
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

    let uuids_of = |inventory: &[crate::domain::GpuInfo]| -> BTreeMap<u32, String> {
        inventory
            .iter()
            .map(|g| (g.index, g.uuid.clone()))
            .collect()
    };
    let (uuid_tx, uuid_rx) = watch::channel(uuids_of(&gpus.borrow().inventory));
    let mut sup_cfg = SupervisorConfig::from_agent(&cfg);
    sup_cfg.gpu_uuids = uuid_rx;
    warn_about_open_policy(&cfg);
    let supervisor = Supervisor::spawn(sup_cfg).await.map_err(|e| {
        // A run_as user that does not exist is the config's fault.
        let config = matches!(e, supervisor::SupervisorError::RunAs(_));
        crate::config::Misconfigured::when(
            config,
            anyhow::Error::new(e).context("cannot start the replica supervisor"),
        )
    })?;
    let replicas = supervisor.subscribe();

    let budget = cfg.warm.budget.bytes(host_info.memory_total_bytes);
    let warmer = Warmer::spawn(WarmerConfig::new(cfg.model_roots.clone(), budget));
    let lock_warm = cfg.warm.lock;

    tracing::info!(
        node = %cfg.node_name,
        backend,
        gpus = gpus.borrow().inventory.len(),
        replicas = replicas.borrow().len(),
        coordinator = %cfg.coordinators.join(","),
        "agent starting"
    );

    let (facts_tx, facts_rx) = watch::channel(AssignedFacts::default());
    let (metrics_tx, metrics_rx) = watch::channel(BTreeMap::new());
    let (signals_tx, signals_rx) = watch::channel(BTreeMap::<String, ServingSignals>::new());
    tokio::spawn(signals::run(
        replicas.clone(),
        metrics_rx,
        signals_tx,
        cfg.scrape_interval,
    ));

    let (connected_tx, connected_rx) = watch::channel(false);
    let compose = {
        let (gpus, host_rx, replicas, signals_rx, facts_rx, connected_rx) = (
            gpus.clone(),
            host_rx.clone(),
            replicas.clone(),
            signals_rx.clone(),
            facts_rx.clone(),
            connected_rx.clone(),
        );
        let warm_rx = warmer.subscribe();
        let node_name = cfg.node_name.clone();
        move || {
            let snapshot = gpus.borrow().clone();
            let signals = signals_rx.borrow().clone();
            let mut statuses = replicas.borrow().clone();
            for r in statuses.iter_mut() {
                if let Some(s) = signals.get(&r.id) {
                    r.signals = s.clone();
                }
            }
            report::attribute_gpu_memory(&mut statuses, &snapshot.samples, report::session_of);
            let workload = report::workload(&statuses, &facts_rx.borrow().memory);
            let telemetry = Telemetry {
                node_name: node_name.clone(),
                gpus: snapshot,
                host: host_rx.borrow().clone(),
                replicas: statuses,
                warm: warm_rx.borrow().clone(),
                coordinator_connected: *connected_rx.borrow(),
                started,
                state_dir_problem: state_dir_rx.borrow().clone(),
            };
            (telemetry, workload)
        }
    };
    let (first, _) = compose();
    let (telemetry_tx, telemetry_rx) = watch::channel(first);
    // Told each time a new snapshot is out, so the session can report a
    // load step or a replica's change of state before the next interval.
    let updated = Arc::new(tokio::sync::Notify::new());
    {
        let sampler = sampler.clone();
        let updated = updated.clone();
        let (mut fresh_signals, mut fresh_replicas) = (signals_rx.clone(), replicas.clone());
        let (mut signals_open, mut replicas_open) = (true, true);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(report_interval.min(Duration::from_millis(500)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Recomposed on the clock (GPU and host samples) and at once
                // when a scrape or a replica's state brings news.
                // A source that ended (no metrics client) leaves the clock.
                tokio::select! {
                    _ = tick.tick() => {}
                    r = fresh_signals.changed(), if signals_open => signals_open = r.is_ok(),
                    r = fresh_replicas.changed(), if replicas_open => replicas_open = r.is_ok(),
                }
                fresh_signals.mark_unchanged();
                fresh_replicas.mark_unchanged();
                let (t, workload) = compose();
                sampler.set_workload(workload);
                let uuids = uuids_of(&t.gpus.inventory);
                uuid_tx.send_if_modified(|cur| {
                    let changed = *cur != uuids;
                    if changed {
                        *cur = uuids;
                    }
                    changed
                });
                if telemetry_tx.send(t).is_err() {
                    return;
                }
                updated.notify_one();
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| {
            crate::config::bind_error(e, format!("HTTP on {} (http_listen)", cfg.http_listen))
        })?;
    let http_gate = {
        use crate::coordinator::limits;
        let fitted = limits::fit_to_fds(cfg.limits, limits::raise_fd_limit());
        limits::Gate::new("http", fitted)
    };
    let http_task = tokio::spawn(http::serve(
        http_listener,
        telemetry_rx.clone(),
        opened.faults,
        http_gate,
        stopped(stop_rx),
    ));
    // Replicas are adopted (Supervisor::spawn) and /healthz answers: ready.
    crate::notify::ready(&service_status(&telemetry_rx.borrow()));
    let status_task = crate::notify::spawn_status(Duration::from_secs(2), {
        let telemetry = telemetry_rx.clone();
        move || std::future::ready(Some(service_status(&telemetry.borrow())))
    });

    let (assign_tx, mut assign_rx) = watch::channel::<Option<Assignment>>(None);
    {
        let supervisor = supervisor.clone();
        let warmer = warmer.clone();
        tokio::spawn(async move {
            while assign_rx.changed().await.is_ok() {
                let Some(a) = assign_rx.borrow_and_update().clone() else {
                    continue;
                };
                let facts = AssignedFacts {
                    metrics: a
                        .replicas
                        .iter()
                        .map(|r| (r.id.clone(), (r.preset.clone(), r.metrics_path.clone())))
                        .collect(),
                    memory: a
                        .replicas
                        .iter()
                        .map(|r| (r.id.clone(), r.gpu_memory_bytes))
                        .collect(),
                };
                let _ = metrics_tx.send(facts.metrics.clone());
                let _ = facts_tx.send(facts);
                // Weights of assigned replicas are kept warm: evicting them
                // would only slow the next restart.
                let keep = a
                    .replicas
                    .iter()
                    .map(|r| (r.model.clone(), r.weights.clone()))
                    .collect();
                let warm = a
                    .warm
                    .iter()
                    .cloned()
                    .map(|mut w| {
                        w.lock |= lock_warm;
                        w
                    })
                    .collect();
                warmer.set(warm::Desired {
                    warm,
                    keep,
                    evict: a.evict.clone(),
                });
                tracing::info!(
                    generation = a.generation,
                    replicas = a.replicas.len(),
                    warm = a.warm.len(),
                    "applying assignment"
                );
                supervisor.apply_keeping(a.replicas, a.keep);
            }
        });
    }

    let reporter = Arc::new(AgentReporter {
        identity: Identity {
            node_name: cfg.node_name.clone(),
            boot_id: host::boot_id(),
            instance: format!("{:016x}", rand::random::<u64>()),
            labels: cfg.labels.clone(),
            host: host_info,
        },
        telemetry: telemetry_rx,
        updated,
        state_dir: cfg.state_dir.clone(),
        sampler: sampler.clone(),
    });
    let link_cfg = link::LinkConfig {
        coordinators: cfg.coordinators.clone(),
        node_name: cfg.node_name.clone(),
        report_interval: cfg.report_interval,
        backoff_base: Duration::from_millis(500),
        backoff_cap: Duration::from_secs(30),
        tls: link_tls,
    };
    link::run(link_cfg, reporter, assign_tx, connected_tx, shutdown).await;

    crate::notify::stopping();
    drop(status_task);
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    if options.stop_replicas_on_exit {
        supervisor.stop_all().await;
        tracing::info!("agent stopped; its replicas were stopped");
    } else {
        supervisor.detach().await;
        tracing::info!("agent stopped; replicas keep running and will be re-adopted");
    }
    drop(sampler);
    Ok(())
}

/// Settings that open the launch policy wide are said out loud at start.
fn warn_about_open_policy(cfg: &AgentConfig) {
    if cfg
        .model_roots
        .iter()
        .any(|r| r == std::path::Path::new("/"))
    {
        tracing::warn!("model_roots includes \"/\": weights and path arguments may name any file the model servers' user can read");
    }
    if cfg.allow_root_replicas {
        tracing::warn!("allow_root_replicas = true: model servers may run as root");
    }
    if !cfg.check_args {
        tracing::warn!("check_args = false: paths in model server arguments are not checked against model_roots");
    }
}

/// The line `systemctl status gpufleet-agent` shows.
fn service_status(t: &Telemetry) -> String {
    let ready = t
        .replicas
        .iter()
        .filter(|r| r.state == crate::domain::ReplicaState::Ready)
        .count();
    format!(
        "{} GPUs, {} replicas ({ready} ready), coordinator {}",
        t.gpus.inventory.len(),
        t.replicas.len(),
        if t.coordinator_connected {
            "connected"
        } else {
            "not connected"
        }
    )
}
