//! The scaling policies compared: gpufleet (the coordinator's own autoscaler,
//! predictor and placement, called as they are), an HPA-like baseline, the
//! Knative KPA algorithm, and a static fleet sized for the peak.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::config::model::{ScalingSpec, WarmMode, WarmPolicy};
use crate::coordinator::autoscale::{Decision, ModelScaler, Signals, Tick};
use crate::coordinator::placement;

use super::serving::{Cluster, Load};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Gpufleet,
    Hpa,
    Knative,
    StaticPeak,
    /// The clairvoyant lower bound on GPU-hours (see `sim::oracle`).
    Oracle,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Gpufleet,
        PolicyKind::Hpa,
        PolicyKind::Knative,
        PolicyKind::StaticPeak,
        PolicyKind::Oracle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Gpufleet => "gpufleet",
            PolicyKind::Hpa => "hpa",
            PolicyKind::Knative => "knative",
            PolicyKind::StaticPeak => "static-peak",
            PolicyKind::Oracle => "oracle",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown policy `{s}`; allowed: gpufleet, hpa, knative, static-peak, oracle"
                )
            })
    }
}

/// What a policy wants after a tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Wish {
    pub desired: u32,
    /// Nodes whose page cache should get the weights.
    pub warm_nodes: Vec<usize>,
}

/// A scaling policy, ticked once per virtual second.
pub trait Policy: Send {
    fn kind(&self) -> PolicyKind;
    /// Replicas running when the trace starts.
    fn initial_replicas(&self) -> u32;
    /// Whether its placement prefers nodes with the weights cached.
    fn warm_aware(&self) -> bool {
        false
    }
    /// Whether it reads the p95 latency signal (tracking it costs time).
    fn reads_latency(&self) -> bool {
        false
    }
    fn tick(&mut self, now_s: f64, load: &Load, cluster: &Cluster) -> Wish;
}

/// The floor every policy starts from: the spec's minimum, at least one.
fn floor(spec: &ScalingSpec) -> u32 {
    spec.min_replicas.max(1).min(spec.max_replicas)
}

/// gpufleet: the coordinator's own per-model step ([`ModelScaler::step`]:
/// autoscaler, demand history, forecast one measured start ahead) on the
/// model's `[scaling]`, and warm-first placement; the spec's `[warm]`
/// decides which extra nodes get the weights.
pub struct Gpufleet {
    scaling: ScalingSpec,
    warm: WarmPolicy,
    scaler: ModelScaler,
    epoch: Instant,
    start_unix_s: i64,
    /// Look-ahead until the run has measured a start (the coordinator's
    /// `PREDICT_HORIZON` in a simulation run).
    default_horizon: Duration,
    initial: u32,
    desired: u32,
    /// Every decision, when asked to keep them (the equivalence test).
    pub decisions: Option<Vec<Decision>>,
}

impl Gpufleet {
    pub fn new(
        scaling: ScalingSpec,
        warm: WarmPolicy,
        start_unix_s: i64,
        horizon_s: f64,
        initial: Option<u32>,
    ) -> Self {
        let initial = starting(&scaling, initial);
        Gpufleet {
            scaling,
            warm,
            scaler: ModelScaler::new(),
            epoch: Instant::now(),
            start_unix_s,
            default_horizon: Duration::from_secs_f64(horizon_s.max(1.0)),
            initial,
            desired: initial,
            decisions: None,
        }
    }

    /// The clock the scaler sees for virtual second `now_s`.
    pub fn instant(&self, now_s: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(now_s.max(0.0))
    }

    /// The nodes to keep warm: where the predicted extra replicas would be
    /// placed (predictive mode), then `standby_nodes` more nodes that run no
    /// replica, chosen by the same placement as a next replica would be.
    fn warm_targets(&self, predicted: u32, now_s: f64, cluster: &Cluster) -> Vec<usize> {
        if self.warm.mode == WarmMode::Off {
            return Vec::new();
        }
        let extra = match self.warm.mode {
            WarmMode::Predictive => predicted.saturating_sub(self.desired),
            _ => 0,
        };
        let cands = cluster.candidates(now_s, true);
        let running: Vec<&str> = cands
            .iter()
            .enumerate()
            .filter(|(i, _)| cluster.runs_on(*i))
            .map(|(_, c)| c.name.as_str())
            .collect();
        // The coordinator's own rule, not a copy of it.
        placement::warm_targets(
            &cands,
            cluster.needs(),
            &running,
            extra,
            self.warm.standby_nodes,
        )
        .into_iter()
        .filter_map(|(node, _)| cluster.node_index(&node))
        .collect()
    }
}

/// The autoscaler's view of a tick, as the coordinator builds it from the
/// replicas' scrapes: ongoing is waiting + running where a ready replica
/// reports it; utilization and KV-cache use are both the busy share of the
/// ready replicas' slots in this model.
pub fn signals(load: &Load) -> Signals {
    let seen = load.ready > 0;
    Signals {
        // Summed over ready replicas, as the coordinator's are: requests
        // finishing on draining replicas would make a replica seem to run
        // more than its slots. With none ready the queue is what the
        // gateway that holds it (and wakes the model) reports.
        ongoing: f64::from(load.queued) + f64::from(load.running_on_ready),
        waiting: Some(f64::from(load.queued)),
        p95_latency_s: load.recent_p95_s.filter(|_| seen),
        gpu_utilization: load.busy_share,
        kv_cache_usage: load.busy_share,
        ready: load.ready,
        starting: load.starting,
        requests_per_s: f64::from(load.arrivals_last_s),
        measurement: 0,
        rescraped_at: None,
        last_active: None,
    }
}

impl Policy for Gpufleet {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Gpufleet
    }

    fn initial_replicas(&self) -> u32 {
        self.initial
    }

    fn warm_aware(&self) -> bool {
        true
    }

    fn reads_latency(&self) -> bool {
        self.scaling.max_p95_latency.is_some()
    }

    fn tick(&mut self, now_s: f64, load: &Load, cluster: &Cluster) -> Wish {
        let now = self.instant(now_s);
        let s = Signals {
            // Each virtual second is a scrape of its own.
            measurement: now_s.max(0.0) as u64 + 1,
            rescraped_at: Some(now),
            ..signals(load)
        };
        if self.desired == 0 && load.queued > 0 {
            // The load balancer holds the request and wakes the model.
            self.scaler.wake(now);
        }
        if let Some(took) = load.started_s {
            self.scaler.record_start(Duration::from_secs_f64(took));
        }
        let tick = Tick {
            now,
            now_unix_s: self.start_unix_s + now_s.floor() as i64,
            signals: Some(s),
            current: self.desired,
            default_horizon: self.default_horizon,
            forecast: self.warm.mode == WarmMode::Predictive,
        };
        let step = self.scaler.step(&self.scaling, &tick);
        let predicted = step.predicted;
        self.desired = step.decision.desired;
        if let Some(all) = &mut self.decisions {
            all.push(step.decision);
        }
        Wish {
            desired: self.desired,
            warm_nodes: self.warm_targets(predicted, now_s, cluster),
        }
    }
}

/// HPA-like: every 15 s, `ceil(ongoing / target)` (not-ready pods count as
/// idle when scaling up, as the HPA assumes), a 10% tolerance, scale-up at
/// most max(100%, 4 pods) per period, and scale-down to the highest
/// recommendation of the last 300 s. No warming; a cache-blind scheduler.
pub struct Hpa {
    scaling: ScalingSpec,
    initial: u32,
    desired: u32,
    next_sync_s: f64,
    recommendations: VecDeque<(f64, u32)>,
}

pub const HPA_SYNC_S: f64 = 15.0;
pub const HPA_STABILIZATION_S: f64 = 300.0;
pub const HPA_TOLERANCE: f64 = 0.1;

/// The starting count: `initial` (from `--start-at-level`) within the
/// bounds, else the floor.
fn starting(scaling: &ScalingSpec, initial: Option<u32>) -> u32 {
    initial.map_or(floor(scaling), |n| {
        n.clamp(floor(scaling), scaling.max_replicas)
    })
}

impl Hpa {
    pub fn new(scaling: ScalingSpec, initial: Option<u32>) -> Self {
        let desired = starting(&scaling, initial);
        Hpa {
            scaling,
            initial: desired,
            desired,
            next_sync_s: HPA_SYNC_S,
            recommendations: VecDeque::new(),
        }
    }

    fn recommend(&self, load: &Load) -> u32 {
        let current = self.desired;
        let target = self.scaling.target_ongoing_requests;
        if load.ready == 0 {
            // No pod reports a metric: the HPA skips the decision.
            return current;
        }
        let ongoing = load.ongoing();
        let mut base = f64::from(load.ready);
        let mut ratio = ongoing / (base * target);
        if ratio > 1.0 && load.starting > 0 {
            base += f64::from(load.starting);
            ratio = ongoing / (base * target);
        }
        if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            return current;
        }
        (ratio * base - 1e-9).ceil().max(0.0) as u32
    }
}

impl Policy for Hpa {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Hpa
    }

    fn initial_replicas(&self) -> u32 {
        self.initial
    }

    fn tick(&mut self, now_s: f64, load: &Load, _cluster: &Cluster) -> Wish {
        if now_s >= self.next_sync_s {
            self.next_sync_s += HPA_SYNC_S;
            let rec = self.recommend(load);
            self.recommendations.push_back((now_s, rec));
            while self
                .recommendations
                .front()
                .is_some_and(|(t, _)| *t < now_s - HPA_STABILIZATION_S)
            {
                self.recommendations.pop_front();
            }
            let current = self.desired;
            let next = if rec > current {
                rec.min(current.saturating_mul(2).max(current + 4))
            } else {
                let highest = self
                    .recommendations
                    .iter()
                    .map(|(_, r)| *r)
                    .max()
                    .unwrap_or(rec);
                highest.min(current)
            };
            self.desired = next.clamp(floor(&self.scaling), self.scaling.max_replicas);
        }
        Wish {
            desired: self.desired,
            warm_nodes: Vec::new(),
        }
    }
}

pub const KPA_TICK_S: f64 = 2.0;
pub const KPA_STABLE_S: f64 = 60.0;
pub const KPA_PANIC_S: f64 = 6.0;
pub const KPA_PANIC_THRESHOLD: f64 = 2.0;
/// Knative's max scale-down rate: at most halve per decision.
pub const KPA_MAX_SCALE_DOWN_RATE: f64 = 2.0;
pub const KPA_MAX_SCALE_UP_RATE: f64 = 1000.0;
pub const KPA_SCALE_TO_ZERO_GRACE_S: f64 = 30.0;

/// Knative's KPA: concurrency (queued in the activator + running) averaged
/// over a 60 s stable and a 6 s panic window, every 2 s; panic when the
/// panic window asks for 2× the ready pods, and no scale-down while
/// panicking (until a stable window passes without the threshold). Scale-up
/// rate up to 1000×, scale-down at most halving per decision. The target is
/// the spec's ongoing-requests target. No warming; a cache-blind scheduler.
pub struct Knative {
    scaling: ScalingSpec,
    initial: u32,
    desired: u32,
    samples: VecDeque<(f64, f64)>,
    next_eval_s: f64,
    panic_since: Option<f64>,
    max_panic_pods: u32,
    zero_since: Option<f64>,
}

impl Knative {
    pub fn new(scaling: ScalingSpec, initial: Option<u32>) -> Self {
        let desired = starting(&scaling, initial);
        Knative {
            scaling,
            initial: desired,
            desired,
            samples: VecDeque::new(),
            next_eval_s: KPA_TICK_S,
            panic_since: None,
            max_panic_pods: 0,
            zero_since: None,
        }
    }

    fn average(&self, now_s: f64, window: f64) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| *t > now_s - window)
            .fold((0.0, 0usize), |(s, n), (_, v)| (s + v, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    fn decide(&mut self, now_s: f64, load: &Load) -> u32 {
        let target = self.scaling.target_ongoing_requests;
        let ready = f64::from(load.ready.max(1));
        let stable = self.average(now_s, KPA_STABLE_S);
        let panic = self.average(now_s, KPA_PANIC_S);
        let up = (KPA_MAX_SCALE_UP_RATE * ready).ceil();
        let down = (ready / KPA_MAX_SCALE_DOWN_RATE).floor();
        let bound = |v: f64| (v / target).ceil().min(up).max(down) as u32;
        let desired_stable = bound(stable);
        let desired_panic = bound(panic);
        let over = panic / target / ready >= KPA_PANIC_THRESHOLD;
        if over {
            self.panic_since = Some(now_s);
        } else if self
            .panic_since
            .is_some_and(|since| since + KPA_STABLE_S < now_s)
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        let mut want = desired_stable;
        if self.panic_since.is_some() {
            want = want.max(desired_panic);
            if want > self.max_panic_pods {
                self.max_panic_pods = want;
            } else {
                want = self.max_panic_pods;
            }
        }
        let lo = self.scaling.min_replicas;
        if want == 0 && lo == 0 {
            let since = *self.zero_since.get_or_insert(now_s);
            if now_s - since < KPA_SCALE_TO_ZERO_GRACE_S {
                want = self.desired.min(1);
            }
        } else {
            self.zero_since = None;
        }
        want.clamp(lo, self.scaling.max_replicas)
    }
}

impl Policy for Knative {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Knative
    }

    fn initial_replicas(&self) -> u32 {
        self.initial
    }

    fn tick(&mut self, now_s: f64, load: &Load, _cluster: &Cluster) -> Wish {
        self.samples.push_back((now_s, load.ongoing()));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| *t <= now_s - KPA_STABLE_S)
        {
            self.samples.pop_front();
        }
        if now_s >= self.next_eval_s {
            self.next_eval_s += KPA_TICK_S;
            self.desired = self.decide(now_s, load);
        }
        Wish {
            desired: self.desired,
            warm_nodes: Vec::new(),
        }
    }
}

/// A fixed fleet sized for the trace's peak, running from the start.
pub struct StaticPeak {
    replicas: u32,
}

impl StaticPeak {
    pub fn new(replicas: u32) -> Self {
        StaticPeak { replicas }
    }
}

impl Policy for StaticPeak {
    fn kind(&self) -> PolicyKind {
        PolicyKind::StaticPeak
    }

    fn initial_replicas(&self) -> u32 {
        self.replicas
    }

    fn tick(&mut self, _now_s: f64, _load: &Load, _cluster: &Cluster) -> Wish {
        Wish {
            desired: self.replicas,
            warm_nodes: Vec::new(),
        }
    }
}

/// Window over which the peak's offered load is measured.
pub const PEAK_WINDOW_S: f64 = 60.0;

/// Replicas for the trace's peak: the busiest minute's offered concurrency
/// (service seconds arriving per second, by Little's law) over the spec's
/// target per replica, within the spec's bounds.
pub fn peak_replicas(service_s: impl Iterator<Item = (f64, f64)>, scaling: &ScalingSpec) -> u32 {
    let mut peak = 0.0f64;
    let mut window = 0usize;
    let mut work = 0.0;
    for (arrival, service) in service_s {
        let w = (arrival / PEAK_WINDOW_S).floor().max(0.0) as usize;
        if w != window {
            peak = peak.max(work);
            work = 0.0;
            window = w;
        }
        work += service;
    }
    peak = peak.max(work);
    let concurrency = peak / PEAK_WINDOW_S;
    let n = (concurrency / scaling.target_ongoing_requests - 1e-9).ceil();
    (n.max(0.0) as u32).clamp(floor(scaling), scaling.max_replicas)
}

#[cfg(test)]
#[path = "policies_tests.rs"]
mod tests;
