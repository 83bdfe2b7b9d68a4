//! `gpufleet bench swarm`: N simulated agents in one process, each on its
//! own gRPC session to a real coordinator. Each says Hello with a GPU
//! inventory, reports GPU samples and serving signals that follow a load
//! curve, and obeys its assignments: a replica starts, turns ready after a
//! delay, and stops when it leaves the assignment. The swarm measures what
//! an operator of a large fleet asks first: the report round trip, how long
//! a scale-up takes to reach its agent, how fast sessions are set up, and
//! what the coordinator spends (CPU, memory, tick time) to carry them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::client::ClientArgs;
use crate::cli::output::Output;
use crate::domain::{
    GpuInfo, GpuSample, Hello, HostInfo, HostSample, ReplicaSpec, ReplicaState, ReplicaStatus,
    Report, ServingSignals,
};
use crate::exposition::ProcessStats;
use crate::wire::pb;

use super::measure::{histogram_quantile, percentile, CoordinatorProbe, CoordinatorSample};

#[derive(Debug, Clone, clap::Args)]
pub struct SwarmArgs {
    /// Agents to simulate, each with its own gRPC session.
    #[arg(long, default_value_t = 100)]
    pub agents: u32,
    /// GPUs per simulated host (80 GiB each).
    #[arg(long, default_value_t = 8)]
    pub gpus: u32,
    /// Replicas to run per host on average: the swarm applies models whose
    /// replicas add up to agents × this (0: no models, sessions only).
    #[arg(long, default_value_t = 1)]
    pub replicas_per_node: u32,
    /// Models the replicas are spread over.
    #[arg(long, default_value_t = 10)]
    pub models: u32,
    /// How often each agent reports (a real agent: `report_interval`, 1s).
    #[arg(long, default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub report_interval: Duration,
    /// How long to measure, once every agent has registered and every
    /// replica is ready.
    #[arg(long, default_value = "30s", value_parser = crate::cli::parse_duration)]
    pub duration: Duration,
    /// How long a started replica takes to turn ready.
    #[arg(long, default_value = "2s", value_parser = crate::cli::parse_duration)]
    pub ready_after: Duration,
    /// Sessions opened per second while the swarm connects.
    #[arg(long, default_value_t = 1000)]
    pub connect_rate: u32,
    /// Give up waiting for registration and readiness after this long.
    #[arg(long, default_value = "5m", value_parser = crate::cli::parse_duration)]
    pub settle_timeout: Duration,
    /// Node names are PREFIX-00001 and so on.
    #[arg(long, default_value = "swarm")]
    pub name_prefix: String,
    /// The coordinator's /metrics URL, for its CPU, memory and tick times
    /// (e.g. http://127.0.0.1:7461/metrics).
    #[arg(long, value_name = "URL")]
    pub metrics: Option<String>,
    /// The coordinator's pid, when it runs on this host and has no
    /// /metrics URL given: CPU and memory from /proc.
    #[arg(long, value_name = "PID")]
    pub coordinator_pid: Option<u32>,
    /// Leave the swarm's models applied at the end (they are deleted by default).
    #[arg(long)]
    pub keep_models: bool,
    /// Do not scale models up and down to time scale-up → agent: the fleet
    /// holds still (a restart measurement, where any replica stopped must
    /// be the restart's doing).
    #[arg(long)]
    pub no_scale_probes: bool,
}

/// One agent in 10 asks for an acknowledgement of each report, so the round
/// trip is sampled without doubling the coordinator's sends.
const ACK_ONE_IN: u64 = 10;

/// How often a scale-up is timed during the measurement.
const PROBE_EVERY: Duration = Duration::from_secs(2);

const GPU_MEMORY: u64 = 80 << 30;
const REPLICA_MEMORY: u64 = 10 << 30;

/// What the swarm found, as `-o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmResult {
    pub agents: u32,
    pub gpus_per_agent: u32,
    pub models: u32,
    pub replicas_expected: u64,
    pub report_interval_ms: u64,
    pub duration_s: f64,
    /// Agents whose session the coordinator accepted (it sent them their
    /// first assignment).
    pub agents_registered: u64,
    /// Agents holding an assignment at the end.
    pub agents_assigned: u64,
    pub replicas_assigned: u64,
    pub replicas_ready: u64,
    pub sessions_failed: u64,
    pub first_error: Option<String>,
    /// Sessions accepted per second while the swarm connected.
    pub session_setup_per_s: f64,
    /// From the first session opened to every replica ready.
    pub settle_s: f64,
    pub reports_sent: u64,
    pub reports_per_s: f64,
    pub report_rtt_p50_ms: Option<f64>,
    pub report_rtt_p99_ms: Option<f64>,
    pub rtt_samples: usize,
    /// From a scale-up request to the assignment at its agent.
    pub assignment_latency_p50_ms: Option<f64>,
    pub assignment_latency_p99_ms: Option<f64>,
    pub assignment_probes: usize,
    pub coordinator_cpu_pct: Option<f64>,
    pub coordinator_rss_bytes: Option<u64>,
    pub tick_p99_ms: Option<f64>,
    pub report_handling_p99_ms: Option<f64>,
    pub fanout_p99_ms: Option<f64>,
    pub swarm_cpu_pct: f64,
    /// The swarm's own cost per 1,000 agents, in percent of a core.
    pub swarm_cpu_pct_per_1k_agents: f64,
    pub swarm_rss_bytes: Option<u64>,
    /// Sessions that ended during the run and came back (reconnects).
    pub sessions_lost: u64,
    /// Replicas an assignment took away from an agent during measurement:
    /// at most one per probe (its scale-down) in a healthy run.
    pub replicas_stopped: u64,
}

/// Shared by every simulated agent.
#[derive(Default)]
struct Swarm {
    start: std::sync::OnceLock<Instant>,
    registered: AtomicU64,
    last_registered_ns: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    reports: AtomicU64,
    rtt_ms: Mutex<Vec<f64>>,
    /// Replicas per agent in its latest assignment, and how many are ready.
    assigned: Vec<AtomicUsize>,
    ready: Vec<AtomicUsize>,
    has_assignment: Vec<AtomicUsize>,
    lost: AtomicU64,
    stopped: AtomicU64,
    /// Replica ids ever assigned, to tell a new replica from one reassigned.
    seen: Mutex<std::collections::HashSet<String>>,
    /// model → when its scale-up was asked for.
    probes: Mutex<HashMap<String, Instant>>,
    latency_ms: Mutex<Vec<f64>>,
    /// Set once the measurement runs: stops are counted from then.
    measuring: std::sync::atomic::AtomicBool,
}

impl Swarm {
    fn error(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }
}

pub async fn run(args: SwarmArgs, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    validate(&args).map_err(crate::cli::usage)?;
    let result = swarm(&args, client).await?;
    if let Some(doc) = output.document(&result)? {
        print!("{doc}");
    } else {
        print_summary(&result);
    }
    Ok(())
}

fn validate(a: &SwarmArgs) -> anyhow::Result<()> {
    if !(1..=100_000).contains(&a.agents) {
        bail!("--agents {} is out of range; allowed: 1..=100000", a.agents);
    }
    if !(1..=64).contains(&a.gpus) {
        bail!("--gpus {} is out of range; allowed: 1..=64", a.gpus);
    }
    if a.replicas_per_node > a.gpus {
        bail!(
            "--replicas-per-node {} is more than --gpus {}; allowed: 0..={} (one GPU per replica)",
            a.replicas_per_node,
            a.gpus,
            a.gpus
        );
    }
    if a.replicas_per_node > 0 && !(1..=10_000).contains(&a.models) {
        bail!("--models {} is out of range; allowed: 1..=10000", a.models);
    }
    if a.report_interval < Duration::from_millis(100) {
        bail!(
            "--report-interval {} is too short; allowed: 100ms or more",
            humantime::format_duration(a.report_interval)
        );
    }
    if a.connect_rate == 0 {
        bail!("--connect-rate must be at least 1 session per second");
    }
    Ok(())
}

/// The spec of swarm model `i` with `replicas` pinned, spread over nodes.
fn model_spec(prefix: &str, i: u32, replicas: u64) -> String {
    format!(
        "name = \"{prefix}-m{i:04}\"\nweights = \"/var/lib/{prefix}/m{i}.safetensors\"\nreplicas = {replicas}\nspread = true\n[server]\npreset = \"vllm\"\ncommand = [\"swarm-server\"]\ngpus = 1\ngpu_memory = \"10GiB\"\n"
    )
}

/// Replicas of each model: `total` spread as evenly as `models` allow.
fn replicas_per_model(total: u64, models: u32) -> Vec<u64> {
    let m = u64::from(models.max(1));
    (0..m)
        .map(|i| total / m + u64::from(i < total % m))
        .collect()
}

async fn swarm(args: &SwarmArgs, client: &ClientArgs) -> anyhow::Result<SwarmResult> {
    let n = args.agents as usize;
    let state = Arc::new(Swarm {
        assigned: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        ready: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        has_assignment: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        ..Default::default()
    });
    let fd_limit = crate::coordinator::limits::raise_fd_limit();
    if fd_limit < u64::from(args.agents) + 256 {
        bail!(
            "{} agents need {} open files; this process may open {fd_limit} (raise `ulimit -n`)",
            args.agents,
            u64::from(args.agents) + 256
        );
    }
    // Fails fast on a coordinator that cannot be reached. The connection
    // the models are applied on is opened once the agents have registered:
    // one opened now would sit idle while they connect (10 s for 10,000),
    // and the coordinator closes a connection that sends no request in time.
    drop(crate::cli::client::connect(client).await?);
    let url = client.url().to_string();
    let probe = CoordinatorProbe::new(args.metrics.clone(), args.coordinator_pid);
    probe.sample().await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let _ = state.start.set(started);
    let gap = Duration::from_secs(1) / args.connect_rate;
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let agent = SimAgent::new(args, i);
        let (state, url, stop) = (state.clone(), url.clone(), stop_rx.clone());
        let (interval, ready_after) = (args.report_interval, args.ready_after);
        agents.push(tokio::spawn(async move {
            agent.run(url, state, interval, ready_after, stop).await
        }));
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + gap * (i as u32 + 1),
        ))
        .await;
    }
    wait_for(args.settle_timeout, || {
        state.registered.load(Ordering::Relaxed) + state.failed.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    let registered = state.registered.load(Ordering::Relaxed);
    let setup_s = Duration::from_nanos(state.last_registered_ns.load(Ordering::Relaxed))
        .as_secs_f64()
        .max(1e-3);

    let totals = if args.replicas_per_node == 0 {
        Vec::new()
    } else {
        replicas_per_model(
            u64::from(args.agents) * u64::from(args.replicas_per_node),
            args.models,
        )
    };
    let expected: u64 = totals.iter().sum();
    let mut control = crate::cli::client::connect(client).await?;
    for (i, replicas) in totals.iter().enumerate() {
        let request = pb::ApplyModelRequest {
            spec_toml: model_spec(&args.name_prefix, i as u32, *replicas),
        };
        control
            .apply_model(request)
            .await
            .map_err(crate::cli::client::status_error)
            .context("applying the swarm's models")?;
    }
    let ready_sum =
        |v: &[AtomicUsize]| -> u64 { v.iter().map(|a| a.load(Ordering::Relaxed) as u64).sum() };
    wait_for(
        args.settle_timeout.saturating_sub(started.elapsed()),
        || ready_sum(&state.ready) >= expected,
    )
    .await;
    let settle_s = started.elapsed().as_secs_f64();

    // The measurement.
    eprintln!(
        "{registered} agents registered, {} of {expected} replicas ready after {settle_s:.1} s; measuring for {}",
        ready_sum(&state.ready),
        humantime::format_duration(args.duration)
    );
    state.measuring.store(true, Ordering::Relaxed);
    let own_before = ProcessStats::own();
    let before = probe.sample().await?;
    let reports_before = state.reports.load(Ordering::Relaxed);
    state
        .rtt_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let window = Instant::now();
    let mut scaled_up: Option<(String, u64)> = None;
    let mut next_model = 0usize;
    while window.elapsed() < args.duration {
        let left = args.duration.saturating_sub(window.elapsed());
        tokio::time::sleep(left.min(PROBE_EVERY / 2)).await;
        if totals.is_empty() || args.no_scale_probes || window.elapsed() >= args.duration {
            continue;
        }
        // Scale one model up by one and time the assignment to its agent;
        // half a period later it goes back down, so the next scale-up does
        // not follow a scale-down's early tick by less than the coordinator's
        // gap between early ticks.
        if let Some((name, replicas)) = scaled_up.take() {
            let _ = pin(&mut control, name, replicas).await;
            continue;
        }
        let i = next_model % totals.len();
        next_model += 1;
        let name = format!("{}-m{i:04}", args.name_prefix);
        state
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), Instant::now());
        if pin(&mut control, name.clone(), totals[i] + 1).await.is_ok() {
            scaled_up = Some((name, totals[i]));
        }
    }
    let elapsed = window.elapsed().as_secs_f64();
    let after = probe.sample().await?;
    let own_after = ProcessStats::own();
    let reports = state.reports.load(Ordering::Relaxed) - reports_before;
    if let Some((name, replicas)) = scaled_up.take() {
        let _ = pin(&mut control, name, replicas).await;
    }

    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    if !args.keep_models {
        for i in 0..totals.len() {
            let name = format!("{}-m{i:04}", args.name_prefix);
            let _ = control.delete_model(pb::ModelRef { name }).await;
        }
    }

    let cpu_pct = |b: Option<f64>, a: Option<f64>| Some((a? - b?) / elapsed * 100.0);
    let swarm_cpu_pct = cpu_pct(own_before.cpu_seconds, own_after.cpu_seconds).unwrap_or(0.0);
    let mut rtt = std::mem::take(&mut *state.rtt_ms.lock().unwrap_or_else(|p| p.into_inner()));
    let mut latency =
        std::mem::take(&mut *state.latency_ms.lock().unwrap_or_else(|p| p.into_inner()));
    let ms = |q: &dyn Fn(&CoordinatorSample) -> &Vec<(f64, f64)>, at: f64| {
        histogram_quantile(q(&before), q(&after), at).map(|s| s * 1000.0)
    };
    let first_error = state
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(SwarmResult {
        agents: args.agents,
        gpus_per_agent: args.gpus,
        models: totals.len() as u32,
        replicas_expected: expected,
        report_interval_ms: args.report_interval.as_millis() as u64,
        duration_s: elapsed,
        agents_registered: registered,
        agents_assigned: ready_sum(&state.has_assignment),
        replicas_assigned: ready_sum(&state.assigned),
        replicas_ready: ready_sum(&state.ready),
        sessions_failed: state.failed.load(Ordering::Relaxed),
        first_error,
        session_setup_per_s: registered as f64 / setup_s,
        settle_s,
        reports_sent: reports,
        reports_per_s: reports as f64 / elapsed,
        report_rtt_p50_ms: percentile(&mut rtt, 0.5),
        report_rtt_p99_ms: percentile(&mut rtt, 0.99),
        rtt_samples: rtt.len(),
        assignment_latency_p50_ms: percentile(&mut latency, 0.5),
        assignment_latency_p99_ms: percentile(&mut latency, 0.99),
        assignment_probes: latency.len(),
        coordinator_cpu_pct: cpu_pct(before.cpu_seconds, after.cpu_seconds),
        coordinator_rss_bytes: after.rss_bytes,
        tick_p99_ms: ms(&|s| &s.tick, 0.99),
        report_handling_p99_ms: ms(&|s| &s.report, 0.99),
        fanout_p99_ms: ms(&|s| &s.fanout, 0.99),
        swarm_cpu_pct,
        swarm_cpu_pct_per_1k_agents: swarm_cpu_pct / f64::from(args.agents) * 1000.0,
        swarm_rss_bytes: own_after.resident_bytes,
        sessions_lost: state.lost.load(Ordering::Relaxed),
        replicas_stopped: state.stopped.load(Ordering::Relaxed),
    })
}

/// `model scale NAME --replicas N`.
async fn pin(
    control: &mut crate::cli::client::Control,
    name: String,
    replicas: u64,
) -> Result<(), tonic::Status> {
    let request = pb::ScaleModelRequest {
        name,
        replicas: Some(replicas as u32),
        auto: false,
    };
    control.scale_model(request).await.map(drop)
}

async fn wait_for(limit: Duration, done: impl Fn() -> bool) {
    let until = Instant::now() + limit;
    while !done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_summary(r: &SwarmResult) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "{} agents ({} registered, {} failed), {} GPUs each, {} models, {}/{} replicas ready",
        r.agents,
        r.agents_registered,
        r.sessions_failed,
        r.gpus_per_agent,
        r.models,
        r.replicas_ready,
        r.replicas_expected
    );
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
    println!(
        "setup {:.0} sessions/s, settled in {:.1}s; measured {:.0}s: {:.0} reports/s",
        r.session_setup_per_s, r.settle_s, r.duration_s, r.reports_per_s
    );
    println!(
        "report round trip p50 {} ms, p99 {} ms ({} samples); scale-up to agent p50 {} ms, p99 {} ms ({} probes)",
        opt(r.report_rtt_p50_ms),
        opt(r.report_rtt_p99_ms),
        r.rtt_samples,
        opt(r.assignment_latency_p50_ms),
        opt(r.assignment_latency_p99_ms),
        r.assignment_probes
    );
    println!(
        "coordinator: CPU {}%, RSS {}, tick p99 {} ms, report handling p99 {} ms",
        opt(r.coordinator_cpu_pct),
        r.coordinator_rss_bytes
            .map_or("-".into(), crate::config::units::format_bytes),
        opt(r.tick_p99_ms),
        opt(r.report_handling_p99_ms)
    );
    println!(
        "swarm: CPU {:.1}% ({:.1}% per 1,000 agents), RSS {}",
        r.swarm_cpu_pct,
        r.swarm_cpu_pct_per_1k_agents,
        r.swarm_rss_bytes
            .map_or("-".into(), crate::config::units::format_bytes)
    );
}

/// A replica the simulated agent runs.
struct SimReplica {
    spec: ReplicaSpec,
    started: Instant,
    started_unix_ms: i64,
    ready_unix_ms: i64,
}

/// One simulated agent: its identity, what it runs, and its report state.
struct SimAgent {
    index: usize,
    name: String,
    instance: String,
    gpus: u32,
    replicas: BTreeMap<String, SimReplica>,
    seq: u64,
    scrape_seq: u64,
    applied: u64,
    /// Reports awaiting their acknowledgement: (seq, sent).
    acks: VecDeque<(u64, Instant)>,
    /// Where this agent sits on the load curve.
    phase: f64,
}

impl SimAgent {
    fn new(args: &SwarmArgs, index: usize) -> SimAgent {
        SimAgent {
            index,
            name: format!("{}-{:05}", args.name_prefix, index + 1),
            instance: format!("{:016x}", rand::random::<u64>()),
            gpus: args.gpus,
            replicas: BTreeMap::new(),
            seq: 0,
            scrape_seq: 0,
            applied: 0,
            acks: VecDeque::new(),
            phase: index as f64 * 0.61,
        }
    }

    fn inventory(&self) -> Vec<GpuInfo> {
        (0..self.gpus)
            .map(|i| GpuInfo {
                index: i,
                uuid: format!("GPU-{}-{i}", self.name),
                name: "NVIDIA H100 80GB HBM3 (swarm)".into(),
                memory_total_bytes: GPU_MEMORY,
                pci_bus_id: format!("00000000:{:02X}:00.0", i + 1),
                healthy: true,
                ..Default::default()
            })
            .collect()
    }

    fn hello(&self, ready_after: Duration) -> Hello {
        Hello {
            node_name: self.name.clone(),
            boot_id: format!("boot-{}", self.instance),
            agent_version: format!("{}-swarm", env!("CARGO_PKG_VERSION")),
            labels: BTreeMap::new(),
            host: HostInfo {
                hostname: self.name.clone(),
                cpus: 64,
                memory_total_bytes: 512 << 30,
                os: "swarm".into(),
                ..Default::default()
            },
            gpus: self.inventory(),
            replicas: self.statuses(Instant::now(), ready_after),
            warm: Vec::new(),
            agent_instance: self.instance.clone(),
        }
    }

    /// The load of the moment: a slow wave per agent, between 0.5 and 1.5.
    fn load(&self, now: Instant, epoch: Instant) -> f64 {
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        1.0 + 0.5 * (t / 60.0 * std::f64::consts::TAU + self.phase).sin()
    }

    fn statuses(&self, now: Instant, ready_after: Duration) -> Vec<ReplicaStatus> {
        self.replicas
            .values()
            .map(|r| {
                let ready = now >= r.started + ready_after;
                ReplicaStatus {
                    id: r.spec.id.clone(),
                    model: r.spec.model.clone(),
                    spec_hash: r.spec.spec_hash.clone(),
                    state: if ready {
                        ReplicaState::Ready
                    } else {
                        ReplicaState::Starting
                    },
                    pid: 100_000 + self.index as u32,
                    port: 20_000 + r.spec.gpus.first().copied().unwrap_or(0),
                    gpus: r.spec.gpus.clone(),
                    started_unix_ms: r.started_unix_ms,
                    ready_unix_ms: if ready { r.ready_unix_ms } else { 0 },
                    gpu_memory_used_bytes: REPLICA_MEMORY,
                    assignment_token: r.spec.assignment_token.clone(),
                    ..Default::default()
                }
            })
            .collect()
    }

    fn report(&mut self, now: Instant, epoch: Instant, ready_after: Duration) -> pb::AgentMessage {
        self.seq += 1;
        self.scrape_seq += 1;
        let load = self.load(now, epoch);
        let mut replicas = self.statuses(now, ready_after);
        for r in &mut replicas {
            if r.state == ReplicaState::Ready {
                r.signals = ServingSignals {
                    running: (4.0 * load).round(),
                    waiting: (2.0 * (load - 1.0)).max(0.0).round(),
                    requests_per_s: 10.0 * load,
                    kv_cache_usage: Some(0.4 * load),
                    fresh: true,
                    scrape_seq: self.scrape_seq,
                    activity_total: self.scrape_seq as f64 * 10.0,
                    ..Default::default()
                };
            }
        }
        let used: Vec<u32> = replicas.iter().flat_map(|r| r.gpus.clone()).collect();
        let gpus = (0..self.gpus)
            .map(|i| {
                let busy = used.contains(&i);
                GpuSample {
                    index: i,
                    memory_total_bytes: GPU_MEMORY,
                    memory_used_bytes: if busy { REPLICA_MEMORY } else { 0 },
                    utilization_pct: if busy { (60.0 * load).min(100.0) } else { 0.0 },
                    temperature_c: Some(if busy { 60.0 } else { 35.0 }),
                    power_w: Some(if busy { 400.0 * load } else { 70.0 }),
                    healthy: true,
                    ..Default::default()
                }
            })
            .collect();
        let ack = (self.seq + self.index as u64).is_multiple_of(ACK_ONE_IN);
        if ack {
            self.acks.push_back((self.seq, now));
            // An ack that never comes (a full outbox drops it) is forgotten.
            while self.acks.len() > 16 {
                self.acks.pop_front();
            }
        }
        let report = Report {
            seq: self.seq,
            time_unix_ms: crate::domain::unix_ms_now(),
            gpus,
            host: HostSample {
                cpu_pct: 20.0 * load,
                memory_used_bytes: 64 << 30,
                memory_available_bytes: 448 << 30,
                ..Default::default()
            },
            replicas,
            warm: Vec::new(),
            applied_generation: self.applied,
            inventory: Vec::new(),
            ack,
        };
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Report((&report).into())),
        }
    }

    /// Takes an assignment: new replicas start, missing ones stop. Returns
    /// the models of replicas never assigned before (a scale-up arrived).
    fn assign(&mut self, a: crate::domain::Assignment, swarm: &Swarm) -> Vec<String> {
        self.applied = a.generation;
        let now = Instant::now();
        let mut wanted: BTreeMap<String, SimReplica> = BTreeMap::new();
        let mut new_models = Vec::new();
        for spec in a.replicas {
            let r = match self.replicas.remove(&spec.id) {
                Some(r) => r,
                None => {
                    let fresh = swarm
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(spec.id.clone());
                    if fresh {
                        new_models.push(spec.model.clone());
                    }
                    let unix = crate::domain::unix_ms_now();
                    SimReplica {
                        spec: spec.clone(),
                        started: now,
                        started_unix_ms: unix,
                        ready_unix_ms: unix,
                    }
                }
            };
            wanted.insert(spec.id.clone(), SimReplica { spec, ..r });
        }
        if swarm.measuring.load(Ordering::Relaxed) {
            swarm
                .stopped
                .fetch_add(self.replicas.len() as u64, Ordering::Relaxed);
        }
        self.replicas = wanted;
        new_models
    }

    fn publish(&self, swarm: &Swarm, now: Instant, ready_after: Duration) {
        let ready = self
            .replicas
            .values()
            .filter(|r| now >= r.started + ready_after)
            .count();
        swarm.assigned[self.index].store(self.replicas.len(), Ordering::Relaxed);
        swarm.ready[self.index].store(ready, Ordering::Relaxed);
    }

    /// Sessions until told to stop, reconnecting with backoff as an agent does.
    async fn run(
        mut self,
        url: String,
        swarm: Arc<Swarm>,
        interval: Duration,
        ready_after: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let epoch = Instant::now();
        let mut failures = 0u32;
        let mut registered = false;
        loop {
            let outcome = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.session(&url, &swarm, interval, ready_after, epoch, &mut registered) => r,
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(e) if !registered => {
                    swarm.error(format!("{}: {e}", self.name));
                    return;
                }
                Err(_) => {}
            }
            swarm.lost.fetch_add(1, Ordering::Relaxed);
            let delay = crate::agent::link::backoff(
                failures,
                Duration::from_millis(500),
                Duration::from_secs(30),
                rand::random(),
            );
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &mut self,
        url: &str,
        swarm: &Swarm,
        interval: Duration,
        ready_after: Duration,
        epoch: Instant,
        registered: &mut bool,
    ) -> Result<(), String> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("coordinator URL `{url}` is invalid: {e}"))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(crate::coordinator::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::coordinator::KEEPALIVE_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {}", crate::wire::error_chain(&e)))?;
        let mut client = pb::agent_session_client::AgentSessionClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(4);
        let hello = self.hello(ready_after);
        let _ = tx
            .send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello((&hello).into())),
            })
            .await;
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("session refused: {}", s.message()))?
            .into_inner();
        // Reports start at a random point of the interval, as agents' do.
        let first = tokio::time::Instant::now() + interval.mul_f64(rand::random::<f64>());
        let mut ticker = tokio::time::interval_at(first, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_ready = self
                .replicas
                .values()
                .map(|r| r.started + ready_after)
                .filter(|t| *t > Instant::now())
                .min();
            let send = tokio::select! {
                _ = ticker.tick() => true,
                // A replica turning ready is news: reported at once.
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next_ready.unwrap_or_else(Instant::now))), if next_ready.is_some() => true,
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.receive(m, swarm, &tx, ready_after, registered).await,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(format!("session ended: {}", s.message())),
                },
            };
            if send {
                let now = Instant::now();
                let msg = self.report(now, epoch, ready_after);
                if tx.send(msg).await.is_err() {
                    return Err("the session's send side closed".into());
                }
                swarm.reports.fetch_add(1, Ordering::Relaxed);
                self.publish(swarm, now, ready_after);
            }
        }
    }

    /// Handles one message from the coordinator; true when it calls for a
    /// report now (an assignment started replicas).
    async fn receive(
        &mut self,
        m: pb::CoordinatorMessage,
        swarm: &Swarm,
        tx: &mpsc::Sender<pb::AgentMessage>,
        ready_after: Duration,
        registered: &mut bool,
    ) -> bool {
        use pb::coordinator_message::Msg;
        match m.msg {
            Some(Msg::Assignment(a)) => {
                let now = Instant::now();
                if !*registered {
                    *registered = true;
                    swarm.registered.fetch_add(1, Ordering::Relaxed);
                    if let Some(start) = swarm.start.get() {
                        let ns = now.duration_since(*start).as_nanos() as u64;
                        swarm.last_registered_ns.fetch_max(ns, Ordering::Relaxed);
                    }
                }
                swarm.has_assignment[self.index].store(1, Ordering::Relaxed);
                let new_models = self.assign(a.into(), swarm);
                for model in new_models {
                    let asked = swarm
                        .probes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&model);
                    if let Some(asked) = asked {
                        swarm
                            .latency_ms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(now.duration_since(asked).as_secs_f64() * 1000.0);
                    }
                }
                self.publish(swarm, now, ready_after);
                true
            }
            Some(Msg::ReportAck(ack)) => {
                let now = Instant::now();
                while let Some((seq, sent)) = self.acks.front().copied() {
                    if seq > ack.seq {
                        break;
                    }
                    self.acks.pop_front();
                    if seq == ack.seq {
                        swarm
                            .rtt_ms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(now.duration_since(sent).as_secs_f64() * 1000.0);
                    }
                }
                false
            }
            Some(Msg::Logs(l)) => {
                let reply = pb::LogsReply {
                    request_id: l.request_id,
                    error: "a swarm agent keeps no logs".into(),
                    ..Default::default()
                };
                let _ = tx
                    .send(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Logs(reply)),
                    })
                    .await;
                false
            }
            Some(Msg::MarkGpuHealthy(_)) | None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_shared_out_evenly_over_the_models() {
        assert_eq!(replicas_per_model(10, 3), vec![4, 3, 3]);
        assert_eq!(replicas_per_model(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(replicas_per_model(0, 1), vec![0]);
    }

    #[test]
    fn the_swarm_model_spec_parses() {
        let spec = crate::config::ModelSpec::parse(&model_spec("swarm", 7, 12)).unwrap();
        assert_eq!(spec.name, "swarm-m0007");
        assert_eq!(spec.server.gpus, 1);
    }

    #[test]
    fn an_assignment_starts_and_stops_replicas_and_names_new_models() {
        let args = SwarmArgs {
            agents: 1,
            gpus: 2,
            replicas_per_node: 1,
            models: 1,
            report_interval: Duration::from_secs(1),
            duration: Duration::from_secs(1),
            ready_after: Duration::ZERO,
            connect_rate: 1,
            settle_timeout: Duration::from_secs(1),
            name_prefix: "swarm".into(),
            metrics: None,
            coordinator_pid: None,
            keep_models: false,
            no_scale_probes: false,
        };
        let swarm = Swarm {
            assigned: vec![AtomicUsize::new(0)],
            ready: vec![AtomicUsize::new(0)],
            has_assignment: vec![AtomicUsize::new(0)],
            ..Default::default()
        };
        let mut agent = SimAgent::new(&args, 0);
        let spec = |id: &str| ReplicaSpec {
            id: id.into(),
            model: "m".into(),
            gpus: vec![0],
            assignment_token: "t".into(),
            ..Default::default()
        };
        let one = crate::domain::Assignment {
            generation: 1,
            replicas: vec![spec("a")],
            ..Default::default()
        };
        assert_eq!(agent.assign(one.clone(), &swarm), vec!["m".to_string()]);
        // The same replica again is no scale-up.
        assert!(agent.assign(one, &swarm).is_empty());
        let now = Instant::now();
        let msg = agent.report(now, now, Duration::ZERO);
        let Some(pb::agent_message::Msg::Report(r)) = msg.msg else {
            panic!("a report");
        };
        assert_eq!(r.replicas.len(), 1);
        assert_eq!(r.replicas[0].assignment_token, "t");
        assert_eq!(r.gpus.len(), 2);
        assert_eq!(r.applied_generation, 1);
        swarm.measuring.store(true, Ordering::Relaxed);
        agent.assign(crate::domain::Assignment::default(), &swarm);
        assert_eq!(swarm.stopped.load(Ordering::Relaxed), 1);
    }
}
