//! `gpufleet simulate`: replays a request trace through the coordinator's own
//! autoscaler, predictor and placement on a virtual clock, against a simulated
//! fleet and a simple serving model, and compares it with baseline policies.
//! Event-driven: arrivals stream in order, completions and replica starts sit
//! in a binary heap, and policies tick once per virtual second.

mod events;
pub mod oracle;
pub mod plot;
pub mod policies;
pub mod report;
pub mod serving;
mod slots;
pub mod synthetic;
pub mod trace;

use crate::config::model::{ModelSpec, ScalingSpec};
use crate::config::units::format_bytes;
use crate::coordinator::placement::ReplicaNeeds;

use policies::{Gpufleet, Hpa, Knative, Policy, PolicyKind, StaticPeak};
use report::{Counts, Metrics, Outcome, PolicyReport, Series, SloKind, Timeline};
use serving::{Cluster, FleetShape, ServingModel};
use synthetic::{Synthetic, SyntheticArrivals};
use trace::{CountTrace, Request, RequestTrace};

/// How long after the trace's end a run keeps serving what is left before it
/// gives up and counts the rest as unfinished.
pub const DRAIN_LIMIT_S: f64 = 3600.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error(
        "the model spec `{0}` has no [scaling] table; simulate compares autoscalers, \
         so add one (max_replicas at least)"
    )]
    NoScaling(String),
    #[error(
        "a replica of `{model}` needs {gpus} GPU(s) with {need} each, but the fleet has \
         {per_node} GPU(s) of {have} per node; allowed: a --fleet and --gpu-memory it fits"
    )]
    DoesNotFit {
        model: String,
        gpus: u32,
        need: String,
        per_node: u32,
        have: String,
    },
    #[error("{what} is {value}; allowed: {allowed}")]
    Setting {
        what: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("the {policy} policy cannot place its first replicas: {why}")]
    Preload { policy: PolicyKind, why: String },
    #[error("the {0} run stopped on an internal error (a bug in the simulator; please report it)")]
    Panicked(PolicyKind),
}

/// Where the requests come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Trace {
    Requests(RequestTrace),
    Counts(CountTrace),
    Synthetic(Synthetic),
}

impl Trace {
    /// The requests in arrival order, produced afresh on each call so that
    /// a long synthetic day never has to sit in memory.
    pub fn requests(&self) -> Arrivals<'_> {
        match self {
            Trace::Requests(t) => Arrivals::Listed(t.requests.iter()),
            Trace::Counts(c) => Arrivals::Counted {
                trace: c,
                second: 0,
                k: 0,
            },
            Trace::Synthetic(s) => Arrivals::Synthetic(s.requests()),
        }
    }

    /// The span the run covers (GPU-hours are counted over it).
    pub fn duration_s(&self) -> f64 {
        match self {
            Trace::Requests(t) => t
                .requests
                .last()
                .map_or(1.0, |r| r.arrival_s.ceil().max(1.0)),
            Trace::Counts(c) => c.counts.len() as f64,
            Trace::Synthetic(s) => s.rates().len() as f64,
        }
    }

    pub fn start_unix_s(&self) -> i64 {
        match self {
            Trace::Requests(t) => t.start_unix_s,
            _ => 0,
        }
    }
}

/// Requests of a [`Trace`] in arrival order.
pub enum Arrivals<'a> {
    Listed(std::slice::Iter<'a, Request>),
    /// Count traces spread each second's requests evenly across it.
    Counted {
        trace: &'a CountTrace,
        second: usize,
        k: u32,
    },
    Synthetic(SyntheticArrivals<'a>),
}

impl Iterator for Arrivals<'_> {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        match self {
            Arrivals::Listed(it) => it.next().copied(),
            Arrivals::Synthetic(it) => it.next(),
            Arrivals::Counted { trace, second, k } => loop {
                let n = *trace.counts.get(*second)?;
                if *k < n {
                    let t = *second as f64 + (f64::from(*k) + 0.5) / f64::from(n);
                    *k += 1;
                    return Some(Request {
                        arrival_s: t,
                        context_tokens: trace.tokens.context_tokens,
                        generated_tokens: trace.tokens.generated_tokens,
                    });
                }
                *second += 1;
                *k = 0;
            },
        }
    }
}

/// Everything about a run but the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub fleet: FleetShape,
    pub serving: ServingModel,
    /// Latency objective, seconds, of the kind `slo_kind`.
    pub slo_s: f64,
    pub slo_kind: SloKind,
    /// Autoscaled policies start with the replicas the first minute needs
    /// (as static-peak sizes its fleet), not with their minimum.
    pub start_at_level: bool,
    /// Points in the plotted series.
    pub bins: usize,
}

impl Setup {
    /// Checks the numbers a run divides by or sizes memory with.
    pub fn validate(&self) -> Result<(), SimError> {
        let s = &self.serving;
        let positive = [
            ("--prefill-tps", s.prefill_tps),
            ("--decode-tps", s.decode_tps),
            ("--storage-bw", s.storage_bw),
            ("--cache-bw", s.cache_bw),
            ("--slo", self.slo_s),
        ];
        for (what, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(SimError::Setting {
                    what,
                    value: v.to_string(),
                    allowed: "a finite value above 0",
                });
            }
        }
        if !(s.engine_init_s.is_finite() && s.engine_init_s >= 0.0) {
            return Err(SimError::Setting {
                what: "--engine-init",
                value: s.engine_init_s.to_string(),
                allowed: "0s or more",
            });
        }
        if !(s.batch_slowdown.is_finite() && (0.0..1.0).contains(&s.batch_slowdown)) {
            return Err(SimError::Setting {
                what: "--batch-slowdown",
                value: s.batch_slowdown.to_string(),
                allowed:
                    "0 or more and under 1 (a larger batch must still do more work per second)",
            });
        }
        if s.concurrency == 0 {
            return Err(SimError::Setting {
                what: "--concurrency",
                value: "0".into(),
                allowed: "1 or more requests per replica",
            });
        }
        let f = &self.fleet;
        if f.nodes == 0 || f.gpus_per_node == 0 || f.nodes > 10_000 || f.gpus_per_node > 64 {
            return Err(SimError::Setting {
                what: "--fleet",
                value: format!("{}x{}", f.nodes, f.gpus_per_node),
                allowed: "NODESxGPUS with 1..=10000 nodes of 1..=64 GPUs",
            });
        }
        Ok(())
    }
}

/// One policy's result: the report row and the series for the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRun {
    pub report: PolicyReport,
    pub series: Series,
    /// Each request's times, when the run was asked to keep them.
    pub outcomes: Vec<Outcome>,
}

/// The model's scaling table, or why the simulator cannot use the spec.
pub fn scaling_of(spec: &ModelSpec, fleet: &FleetShape) -> Result<ScalingSpec, SimError> {
    let scaling = spec
        .scaling
        .clone()
        .ok_or_else(|| SimError::NoScaling(spec.name.clone()))?;
    if spec.server.gpus > fleet.gpus_per_node
        || spec.server.gpu_memory_bytes > fleet.gpu_memory_bytes
    {
        return Err(SimError::DoesNotFit {
            model: spec.name.clone(),
            gpus: spec.server.gpus,
            need: format_bytes(spec.server.gpu_memory_bytes),
            per_node: fleet.gpus_per_node,
            have: format_bytes(fleet.gpu_memory_bytes),
        });
    }
    Ok(scaling)
}

/// gpufleet's `[scaling]` as the run gives it: a spec without an `slo` gets
/// the run's `--slo` and `--slo-kind`, so the rules that size from an SLO
/// see the one the run is scored against. A spec's own `slo` is kept, with
/// its own kind.
fn with_run_slo(scaling: &ScalingSpec, setup: &Setup) -> ScalingSpec {
    let mut scaling = scaling.clone();
    if scaling.slo.is_none() && setup.slo_s > 0.0 {
        scaling.slo = Some(std::time::Duration::from_secs_f64(setup.slo_s));
        scaling.slo_kind = setup.slo_kind;
    }
    scaling
}

/// Builds a policy for `trace`.
pub fn policy(
    kind: PolicyKind,
    spec: &ModelSpec,
    scaling: &ScalingSpec,
    setup: &Setup,
    trace: &Trace,
) -> Box<dyn Policy> {
    match kind {
        PolicyKind::Gpufleet => Box::new(Gpufleet::new(
            with_run_slo(scaling, setup),
            spec.warm.clone(),
            trace.start_unix_s(),
            // What the coordinator looks ahead before it has measured a
            // start (the run's starts are measured as replicas turn ready).
            crate::coordinator::scaling::PREDICT_HORIZON.as_secs_f64(),
            start_level(scaling, setup, trace),
        )),
        PolicyKind::Hpa => Box::new(Hpa::new(
            scaling.clone(),
            start_level(scaling, setup, trace),
        )),
        PolicyKind::Knative => Box::new(Knative::new(
            scaling.clone(),
            start_level(scaling, setup, trace),
        )),
        // The oracle is a bound computed from the trace, not a run; its
        // place in a run list is held by a fleet that never scales.
        PolicyKind::StaticPeak | PolicyKind::Oracle => {
            let work = trace
                .requests()
                .map(|r| (r.arrival_s, setup.serving.service_s(&r)));
            Box::new(StaticPeak::new(policies::peak_replicas(work, scaling)))
        }
    }
}

/// With `--start-at-level`, the replicas the first minute needs.
fn start_level(scaling: &ScalingSpec, setup: &Setup, trace: &Trace) -> Option<u32> {
    setup.start_at_level.then(|| {
        let work = trace
            .requests()
            .take_while(|r| r.arrival_s < policies::PEAK_WINDOW_S)
            .map(|r| (r.arrival_s, setup.serving.service_s(&r)));
        policies::peak_replicas(work, scaling)
    })
}

/// Replays `trace` under one policy.
pub fn run_policy(
    mut policy: Box<dyn Policy>,
    spec: &ModelSpec,
    setup: &Setup,
    trace: &Trace,
    keep_outcomes: bool,
) -> Result<PolicyRun, SimError> {
    let duration = trace.duration_s();
    let needs = ReplicaNeeds {
        gpus: spec.server.gpus,
        gpu_memory_bytes: spec.server.gpu_memory_bytes,
        spread: false,
    };
    let metrics = Metrics::new(
        setup.slo_s,
        Timeline::new(duration, setup.bins),
        keep_outcomes,
    )
    .with_slo_kind(setup.slo_kind);
    let mut cluster = Cluster::new(setup.fleet, setup.serving, needs, metrics);
    let warm_aware = policy.warm_aware();
    cluster.track_latency(policy.reads_latency());
    let initial = policy.initial_replicas();
    cluster
        .preload(initial, warm_aware)
        .map_err(|why| SimError::Preload {
            policy: policy.kind(),
            why,
        })?;
    let mut run = Run {
        policy: policy.as_mut(),
        cluster,
        warm_aware,
        desired: initial,
        next_tick: 1.0,
        counts: Counts {
            peak_replicas: initial,
            ..Counts::default()
        },
    };
    for r in trace.requests() {
        run.advance(r.arrival_s);
        run.cluster.arrive(&r);
    }
    run.advance(duration);
    let limit = duration + DRAIN_LIMIT_S;
    while run.cluster.busy() && run.next_tick <= limit {
        let t = run.next_tick;
        run.advance(t);
    }
    let Run {
        mut cluster,
        mut counts,
        ..
    } = run;
    counts.unfinished = cluster.abandon(limit);
    counts.gpu_hours = cluster.gpu_hours(duration);
    counts.cold_starts = cluster.cold_starts;
    counts.warm_starts = cluster.warm_starts;
    let outcomes = cluster.metrics.outcomes().to_vec();
    let (report, series) = cluster.metrics.into_parts(counts, policy.kind().as_str());
    Ok(PolicyRun {
        report,
        series,
        outcomes,
    })
}

/// The state of one replay.
struct Run<'p> {
    policy: &'p mut dyn Policy,
    cluster: Cluster,
    warm_aware: bool,
    desired: u32,
    next_tick: f64,
    counts: Counts,
}

impl Run<'_> {
    /// Processes events and ticks up to `t`; an event at a tick's instant
    /// happens before the tick sees the fleet.
    fn advance(&mut self, t: f64) {
        loop {
            if let Some(e) = self.cluster.next_event_s() {
                if e <= t && e <= self.next_tick {
                    self.cluster.step();
                    continue;
                }
            }
            if self.next_tick <= t {
                let now = self.next_tick;
                self.tick(now);
                self.next_tick += 1.0;
                continue;
            }
            return;
        }
    }

    fn tick(&mut self, now: f64) {
        let load = self.cluster.load();
        let wish = self.policy.tick(now, &load, &self.cluster);
        if wish.desired != self.desired {
            self.counts.scale_actions += 1;
            self.desired = wish.desired;
        }
        // A full fleet leaves the rest unplaced; the next tick tries again.
        let _ = self.cluster.scale_to(self.desired, now, self.warm_aware);
        for n in wish.warm_nodes {
            self.cluster.warm(n, now);
        }
        self.counts.peak_replicas = self.counts.peak_replicas.max(self.cluster.live_replicas());
        self.cluster.end_second(now);
    }
}

/// Replays `trace` under each policy, in parallel (each run is independent
/// and deterministic), in the order given.
pub fn compare(
    trace: &Trace,
    spec: &ModelSpec,
    setup: &Setup,
    kinds: &[PolicyKind],
) -> Result<Vec<PolicyRun>, SimError> {
    setup.validate()?;
    let scaling = scaling_of(spec, &setup.fleet)?;
    let runs: Vec<PolicyKind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != PolicyKind::Oracle)
        .collect();
    // The oracle's bound is computed from the trace alone, beside the runs.
    let (done, oracle) = std::thread::scope(|scope| {
        let oracle = scope.spawn(|| {
            oracle::Oracle::of(
                trace,
                &setup.serving,
                setup.slo_s,
                setup.slo_kind,
                scaling.min_replicas,
                spec.server.gpus,
            )
        });
        let handles: Vec<_> = runs
            .iter()
            .map(|kind| {
                let scaling = &scaling;
                scope.spawn(move || {
                    let p = policy(*kind, spec, scaling, setup, trace);
                    run_policy(p, spec, setup, trace, false)
                })
            })
            .collect();
        let done = handles
            .into_iter()
            .zip(&runs)
            .map(|(h, kind)| h.join().unwrap_or(Err(SimError::Panicked(*kind))))
            .collect::<Result<Vec<_>, _>>();
        (done, oracle.join())
    });
    let mut done = done?;
    let oracle = oracle.map_err(|_| SimError::Panicked(PolicyKind::Oracle))?;
    // The oracle's bound at the SLO share gpufleet reached (or the best
    // share of the runs without it), and every run's GPU-hours against it.
    let share = done
        .iter()
        .find(|r| r.report.policy == PolicyKind::Gpufleet.as_str())
        .or_else(|| {
            done.iter()
                .max_by(|a, b| a.report.slo_share.total_cmp(&b.report.slo_share))
        })
        .map_or(1.0, |r| r.report.slo_share);
    let bound = oracle.gpu_hours(share);
    for r in &mut done {
        r.report.oracle_gpu_hours = bound;
        r.report.gpu_hours_vs_oracle = (bound > 0.0).then(|| r.report.gpu_hours / bound);
    }
    let mut out = Vec::new();
    let mut runs_iter = done.into_iter();
    for kind in kinds {
        if *kind == PolicyKind::Oracle {
            out.push(PolicyRun {
                report: PolicyReport::oracle(oracle.requests(), share, bound),
                series: Series::default(),
                outcomes: Vec::new(),
            });
        } else if let Some(r) = runs_iter.next() {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
