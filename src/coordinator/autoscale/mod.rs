//! The autoscaler: one model's serving signals → a desired replica count and
//! the reason in words (Knative KPA's stable and panic windows, HPA's rule for
//! several metrics). Pure: every call takes `now` and nothing reads a clock,
//! so the simulator replays it on a virtual one.

mod burst;
#[cfg(test)]
mod burst_tests;
mod history;
mod measure;
mod policy;
#[cfg(test)]
mod properties;
mod queueing;
mod rule;
#[cfg(test)]
mod rules_tests;
mod scaler;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use crate::config::model::{ScalingSpec, SloKind};

use burst::{burst_need, BurstMemory, Recall};
use history::{DesireWindow, SignalHistory, WindowAverage};
use measure::{Backlog, ServiceEstimate, StartTime};
pub(crate) use policy::num as format_count;
pub(crate) use policy::span as format_span;
pub use policy::Metric;
use policy::{missing_signals, num, percent, seconds, span, strongest, Desire, Drain};
use queueing::{e2e_target, ttft_target};
pub use rule::Rule;
pub use scaler::{ModelScaler, Tick};

/// Signals older than this (or than the panic window, if longer) are stale:
/// the autoscaler holds rather than act on what it can no longer see.
pub const SIGNALS_STALE_AFTER: Duration = Duration::from_secs(10);

/// Samples kept before the first decision tells the real stable window: the
/// longest a spec allows.
const DEFAULT_RETAIN: Duration = Duration::from_secs(3600);

/// One tick's view of a model, summed or averaged over its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signals {
    /// Waiting + running requests, summed over ready replicas.
    pub ongoing: f64,
    /// The waiting part of `ongoing`, where the engines report it apart.
    pub waiting: Option<f64>,
    /// p95 request latency; the caller picks the worst across replicas, so
    /// one saturated replica is enough to ask for help.
    pub p95_latency_s: Option<f64>,
    /// 0..1, mean over the model's GPUs.
    pub gpu_utilization: Option<f64>,
    /// 0..1, mean over ready replicas.
    pub kv_cache_usage: Option<f64>,
    pub ready: u32,
    /// Placed, not ready yet: capacity on its way.
    pub starting: u32,
    /// Requests per second, summed over ready replicas.
    pub requests_per_s: f64,
    /// Identifies the scrapes behind these signals; 0 when unknown. A sample
    /// with the same nonzero value as the one before is the same measurement
    /// seen again: it adds nothing to the windows, and it cannot confirm a
    /// surge.
    pub measurement: u64,
    /// When each replica behind these signals had last been scraped anew, on
    /// the caller's clock: the least recent of them. `None` when unknown. A
    /// surge is confirmed only by signals rescraped after it began.
    pub rescraped_at: Option<Instant>,
    /// When a ready replica's work counters (finished requests, tokens) last
    /// moved, on the caller's clock: traffic the gauges, sampled between
    /// short requests, may never show. `None` when they have not moved.
    pub last_active: Option<Instant>,
}

/// One decision, with what it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    /// The rule that decided.
    pub rule: Rule,
    /// Whether the model is in panic mode after this decision.
    pub panic: bool,
    /// "2 → 5: …" when the count changes, "holding 3: …" when it does not.
    pub reason: String,
    /// A surge is building that panics if the next measurement confirms it:
    /// decide again as soon as one arrives, rather than a tick later.
    pub awaits_measurement: bool,
    /// The numbers behind the decision, for the event log.
    pub inputs: Vec<(String, String)>,
    /// Signals the spec sets a target for that the last scrape lacked.
    pub missing: Vec<&'static str>,
    /// Something the operator should fix: the spec's SLO is shorter than
    /// the measured service time, so no replica count can meet it.
    pub warning: Option<String>,
}

/// A model's autoscaling state across ticks.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    history: SignalHistory,
    /// Desires of the last scale-down delay: a scale-down goes no lower than
    /// their maximum.
    desires: DesireWindow,
    /// Since when the desire has been below the current count.
    below_since: Option<Instant>,
    /// Since when ready replicas have seen no requests.
    idle_since: Option<Instant>,
    /// Panic mode lasts until this instant (one stable window after the last trigger).
    panic_until: Option<Instant>,
    woken: bool,
    prescale_floor: u32,
    /// Window lengths from the last decision, so that `observe` can bound
    /// memory and spot gaps without the spec.
    retain: Duration,
    stale_after: Duration,
    /// The last observation, kept apart from the history, which forgets it
    /// after a stable window.
    last_seen: Option<Instant>,
    /// Set by the decision under way when a surge awaits confirmation.
    awaits_measurement: bool,
    /// Since when a signal the spec targets has been missing: scale-down
    /// waits for it at most one stable window.
    missing_since: Option<Instant>,
    /// Set by the decision under way.
    missing: Vec<&'static str>,
    service: ServiceEstimate,
    start: StartTime,
    /// Since when the newest samples have shown a queue.
    queued_since: Option<Instant>,
    /// Ski-rental's hold, in multiples of the base (start time × factor):
    /// doubled when capacity released is needed again within the longest
    /// delay, back to 1 when it was not.
    hold_mult: f64,
    /// The counts capacity was re-bought between since the hold began to
    /// grow (lowest from, highest to; `u32::MAX` and 0 while it is at its
    /// base). A fall far below them is not the fall that was re-bought and
    /// waits only the base hold: a level that wobbles by a few replicas
    /// must not keep all of them idle long after its traffic has gone.
    rebought_from: u32,
    rebought_to: u32,
    last_down: Option<Instant>,
    /// The count the last walk down began from: a rise re-buys capacity up
    /// to it; above it the capacity is new.
    released_from: u32,
    /// Whether the rise under way has already counted as a re-buy: a rise
    /// taken in several steps (a panic, then a climbing rate) is one re-buy,
    /// not one per step.
    rebuy_counted: bool,
    /// Recent bursts, for the capacity kept between them (with an SLO).
    bursts: BurstMemory,
    /// What the burst memory asks for this tick, and why.
    burst_floor: Option<(u32, String)>,
    /// Set by the decision under way: the queue has stood too long for the
    /// cold-start rule and the burst memory's bound (see `standing_queue`).
    standing: Option<String>,
    /// Set by the decision under way: the SLO set the target (below the
    /// spec's), which holds the queueing headroom already, so only the
    /// stable window's noise holds a rise above it.
    slo_sized: bool,
    /// What full replicas were seen to sustain behind a standing queue:
    /// the service time is measured at smaller batches, which run faster.
    full: Option<FullReplicas>,
}

/// What full replicas sustain: a mean over the queued samples seen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FullReplicas {
    /// Requests in service per replica their completions stand for
    /// (completions per second × the service time measured then), so a
    /// change in the request mix, which moves both, leaves it be.
    concurrency: f64,
    /// When the newest sample learned from was taken: each sample counts
    /// once however many decisions see it, and the mean is forgotten once
    /// no queue has renewed it for [`FULL_FORGET_DELAYS`] scale-down delays
    /// (an engine or its batch size may have changed since).
    sample_at: Instant,
}

/// What the spec's SLO makes of the per-replica target this tick.
#[derive(Debug, Default)]
struct SloTarget {
    /// The spec with the derived target, once a service time is measured.
    spec: Option<ScalingSpec>,
    /// The SLO cannot be met whatever the count.
    warning: Option<String>,
    /// How the target was found, for the inputs: the input's name and text.
    note: Option<(&'static str, String)>,
}

/// A burst that lasts this many replica starts is served mostly by
/// replicas started for it: the burst memory keeps no capacity for it
/// between bursts (a flash crowd of 13 minutes had held 20 replicas after it
/// was over).
const LONG_BURST_STARTS: f64 = 4.0;
/// Seconds a queue must stand before its replicas count as full: what
/// they complete then is what full replicas do.
const FULL_AFTER_S: f64 = 3.0;
/// Queued samples the mean of full replicas' completions spans.
const FULL_RATE_SPAN: f64 = 8.0;
/// Scale-down delays after which an unrenewed measure of full replicas is
/// forgotten (as recurring bursts are).
const FULL_FORGET_DELAYS: u32 = 4;

/// What a re-buy (capacity released lately bought back) multiplies the
/// scale-down hold by; one in a panic, whose requests waited for the start,
/// by the second.
const REBUY_GROWTH: f64 = 2.0;
const PANIC_REBUY_GROWTH: f64 = 4.0;

/// A scale-down waits while the panic window's arrival rate is above the
/// stable window's by this factor...
const ABOVE_STABLE_FACTOR: f64 = 1.2;
/// ...and by this many standard deviations of a Poisson count over the
/// panic window at the stable rate (so noise alone rarely holds one).
const ABOVE_STABLE_SD: f64 = 3.0;

impl Default for Autoscaler {
    fn default() -> Self {
        Self::new()
    }
}

/// What the signals alone ask for, before the minimum, the pre-scale floor
/// and a wake raise it.
struct Plan {
    target: u32,
    rule: Rule,
    why: String,
}

impl Plan {
    fn new(target: u32, rule: Rule, why: impl Into<String>) -> Plan {
        Plan {
            target,
            rule,
            why: why.into(),
        }
    }

    fn hold(current: u32, rule: Rule, why: impl Into<String>) -> Plan {
        Plan::new(current, rule, why)
    }
}

impl Autoscaler {
    pub fn new() -> Self {
        Autoscaler {
            history: SignalHistory::default(),
            desires: DesireWindow::default(),
            below_since: None,
            idle_since: None,
            panic_until: None,
            woken: false,
            prescale_floor: 0,
            retain: DEFAULT_RETAIN,
            stale_after: SIGNALS_STALE_AFTER,
            last_seen: None,
            awaits_measurement: false,
            missing_since: None,
            missing: Vec::new(),
            service: ServiceEstimate::default(),
            start: StartTime::default(),
            queued_since: None,
            hold_mult: 1.0,
            rebought_from: u32::MAX,
            rebought_to: 0,
            last_down: None,
            released_from: 0,
            rebuy_counted: false,
            bursts: BurstMemory::default(),
            burst_floor: None,
            standing: None,
            slo_sized: false,
            full: None,
        }
    }

    /// A replica of the model went from placement to ready in `took`: the
    /// cold-start and scale-down rules use the recent mean.
    pub fn record_start(&mut self, took: Duration) {
        self.start.record(took.as_secs_f64());
    }

    /// The measured start time and service time, where known.
    pub fn measured(&self) -> (Option<f64>, Option<f64>) {
        (self.start.get(), self.service.service_s())
    }

    /// Records one tick's signals. Call it only with fresh data (at least one
    /// replica scraped this tick, or none ready with `ready = 0`): a tick
    /// without fresh data is better skipped than reported as zeros.
    pub fn observe(&mut self, now: Instant, s: &Signals) {
        let s = sanitized(s);
        let gap = self
            .last_seen
            .is_none_or(|t| now.saturating_duration_since(t) > self.stale_after);
        self.last_seen = Some(self.last_seen.map_or(now, |t| t.max(now)));
        if gap {
            // Nothing is known about the unseen stretch: idle time starts over.
            self.idle_since = None;
        }
        if s.ongoing > 0.0 || s.requests_per_s > 0.0 {
            self.idle_since = None;
        } else if s.ready > 0 {
            let since = self.idle_since.get_or_insert(now);
            // Idle only since the counters last moved: a request may have
            // come and gone between two scrapes that both saw nothing.
            if let Some(active) = s.last_active.filter(|t| *t > *since) {
                *since = active.min(now);
            }
        } else if s.starting > 0 {
            // Nobody can have sent a request yet: idle time counts from ready.
            self.idle_since = None;
        }
        if s.ready > 0 {
            match s.waiting {
                Some(w) if w >= 0.5 => {
                    self.queued_since.get_or_insert(now);
                }
                _ => self.queued_since = None,
            }
        }
        let seen_before = s.measurement != 0
            && self
                .history
                .latest()
                .is_some_and(|(_, last)| last.measurement == s.measurement);
        if seen_before {
            // The same scrape again; the replica counts come from the plan
            // and may have moved on.
            self.history.refresh_counts(s.ready, s.starting);
        } else {
            self.service.observe(&s);
            self.history.push(now, s);
        }
        self.history.prune(now, self.retain);
    }

    /// Demand for a model at zero: the next decision is at least 1 at once,
    /// and the idle timer starts over.
    pub fn wake(&mut self, now: Instant) {
        self.woken = true;
        self.idle_since = self.idle_since.map(|_| now);
        self.below_since = None;
    }

    /// Predictive pre-scaling: decisions ask for at least `n` (capped by the
    /// maximum) until it is called again; `n = 0` lifts the floor.
    pub fn prescale_floor(&mut self, n: u32, now: Instant) {
        self.prescale_floor = n;
        if n > 0 {
            self.idle_since = self.idle_since.map(|_| now);
        }
    }

    pub fn panicking(&self, now: Instant) -> bool {
        self.panic_until.is_some_and(|until| now < until)
    }

    /// Decides the desired count. `current` is the count last decided (the
    /// model's desired replicas), not what is running: replicas still
    /// starting are capacity on its way.
    pub fn decide(&mut self, spec: &ScalingSpec, current: u32, now: Instant) -> Decision {
        let SloTarget {
            spec: derived,
            warning,
            note: slo_note,
        } = self.slo_target(spec, now);
        self.slo_sized = derived
            .as_ref()
            .is_some_and(|d| d.target_ongoing_requests < spec.target_ongoing_requests);
        let spec = derived.as_ref().unwrap_or(spec);
        self.retain = spec.stable_window.max(spec.panic_window);
        self.stale_after = spec.panic_window.max(SIGNALS_STALE_AFTER);
        self.history.prune(now, self.retain);
        let woken = std::mem::take(&mut self.woken);
        self.awaits_measurement = false;
        self.missing.clear();

        let mut inputs = Inputs::default();
        inputs.add("current", current);
        if derived.is_some() {
            inputs.add("target_from_slo", num(spec.target_ongoing_requests));
        }
        if let Some((key, note)) = slo_note {
            inputs.add(key, note);
        }
        self.standing = self.standing_queue(spec, now);
        let mut plan = if current == 0 {
            Plan::hold(
                0,
                Rule::AtZero,
                "scaled to zero; waiting for demand (wake or prediction)",
            )
        } else if current > spec.max_replicas {
            // The operator's bound is hard: no walking down to it.
            Plan::new(
                spec.max_replicas,
                Rule::AboveMaximum,
                format!("above the maximum {}", spec.max_replicas),
            )
        } else {
            self.plan_from_signals(spec, current, now, &mut inputs)
        };

        if let Some(note) = self.standing.take() {
            // Name the rule that let the scale-up through.
            let lifted = matches!(plan.rule, Rule::Panic | Rule::PanicHold | Rule::Steady);
            if lifted && plan.target > current {
                plan = Plan::new(
                    plan.target,
                    Rule::StandingQueue,
                    format!("{}; the queue {note}", plan.why),
                );
            }
        }
        let lo = spec.min_replicas;
        if plan.target < lo {
            plan = Plan::new(lo, Rule::BelowMinimum, format!("below the minimum {lo}"));
        }
        let floor = self.prescale_floor.min(spec.max_replicas);
        if self.prescale_floor > 0 {
            inputs.add("prescale_floor", self.prescale_floor);
        }
        if floor > plan.target {
            let mut why = format!("pre-scaling for predicted demand (floor {floor})");
            if current > 0 {
                why = format!("{why}; signals: {}", plan.why);
            }
            plan = Plan::new(floor, Rule::Prescale, why);
        }
        if let Some((n, note)) = self.burst_floor.take() {
            inputs.add("burst_floor", n);
            let n = n.min(spec.max_replicas);
            if current > 0 && n > plan.target {
                plan = Plan::new(
                    n,
                    Rule::BurstMemory,
                    format!("{note}; signals: {}", plan.why),
                );
            }
        }
        if woken && plan.target == 0 {
            plan = Plan::new(1, Rule::Woken, "woken on demand");
        }
        let desired = plan.target.min(spec.max_replicas);
        if desired > current {
            self.below_since = None;
            if current > 0 {
                let rebought = self
                    .last_down
                    .is_some_and(|t| now.saturating_duration_since(t) < spec.scale_down_delay);
                // Capacity released lately bought back: the hold grows, once
                // per rise however many steps it takes (a panic, then a
                // climbing rate). A re-buy in a panic cost requests as well
                // as a start, so it grows the hold twice as much.
                if rebought && current < self.released_from {
                    if !std::mem::replace(&mut self.rebuy_counted, true) {
                        let growth = if self.panicking(now) {
                            PANIC_REBUY_GROWTH
                        } else {
                            REBUY_GROWTH
                        };
                        self.hold_mult = (self.hold_mult * growth).min(1024.0);
                    }
                    self.rebought_from = self.rebought_from.min(current);
                    self.rebought_to = self.rebought_to.max(desired.min(self.released_from));
                } else if !rebought {
                    self.hold_mult = 1.0;
                    (self.rebought_from, self.rebought_to) = (u32::MAX, 0);
                }
            }
        } else if desired < current {
            // The first release of a walk down, with no capacity needed
            // again since the last: the next release need not wait as long.
            // (After a re-buy the grown hold stands: halving it at every
            // walk would undo each re-buy's growth, and bursts that recur
            // would never be held longer.)
            let walking = self
                .last_down
                .is_some_and(|t| now.saturating_duration_since(t) < spec.stable_window);
            if !walking {
                self.released_from = current;
            }
            if !walking && !self.rebuy_counted {
                self.hold_mult = (self.hold_mult / 2.0).max(1.0);
                if self.hold_mult <= 1.0 {
                    (self.rebought_from, self.rebought_to) = (u32::MAX, 0);
                }
            }
            self.last_down = Some(now);
            self.rebuy_counted = false;
        }
        if self.hold_mult > 1.0 {
            inputs.add("hold_multiplier", num(self.hold_mult));
        }
        let panic = self.panicking(now);
        inputs.add("panic", panic);
        inputs.add("rule", plan.rule);
        Decision {
            desired,
            rule: plan.rule,
            panic,
            awaits_measurement: std::mem::take(&mut self.awaits_measurement),
            missing: std::mem::take(&mut self.missing),
            reason: if desired == current {
                format!("holding {current}: {}", plan.why)
            } else {
                format!("{current} → {desired}: {}", plan.why)
            },
            inputs: inputs.0,
            warning,
        }
    }

    /// The spec with the per-replica target its `slo` asks for, once a
    /// service time is measured, with a note on how it was found.
    ///
    /// End to end: see [`e2e_target`]; an SLO the service time alone
    /// exceeds cannot be met: the target stays, with a warning. Time to
    /// first token: see [`ttft_target`]. Both from the stable window's
    /// arrivals × the service time.
    fn slo_target(&self, spec: &ScalingSpec, now: Instant) -> SloTarget {
        let Some(service) = self.service.service_s() else {
            return SloTarget::default();
        };
        let concurrent = self
            .history
            .average(now, spec.stable_window)
            .requests_per_s
            .unwrap_or(0.0)
            * service;
        self.slo_target_at(spec, concurrent)
    }

    /// The per-replica target for `concurrent` requests in service: the
    /// SLO's where it sets one, else the spec's.
    pub fn target_at(&self, spec: &ScalingSpec, concurrent: f64) -> f64 {
        self.slo_target_at(spec, concurrent)
            .spec
            .map_or(spec.target_ongoing_requests, |s| s.target_ongoing_requests)
    }

    fn slo_target_at(&self, spec: &ScalingSpec, concurrent: f64) -> SloTarget {
        let (Some(slo), Some(service)) = (spec.slo, self.service.service_s()) else {
            return SloTarget::default();
        };
        let slo = slo.as_secs_f64();
        let slots = self.service.slots(spec.target_ongoing_requests);
        let (target, note) = match spec.slo_kind {
            SloKind::E2e if service >= slo => {
                return SloTarget {
                    warning: Some(format!(
                        "the measured service time {} is not under the SLO {}: no replica count can meet it",
                        seconds(service),
                        seconds(slo)
                    )),
                    ..SloTarget::default()
                };
            }
            SloKind::E2e => {
                let t = e2e_target(slots, concurrent, slo, service);
                (t.target, Some(("e2e_slots", t.note)))
            }
            SloKind::Ttft => {
                let t = ttft_target(slots, concurrent, slo, service);
                (t.target, Some(("ttft_slots", t.note)))
            }
        };
        let target = target.clamp(0.1, slots).min(spec.target_ongoing_requests);
        SloTarget {
            spec: Some(ScalingSpec {
                target_ongoing_requests: target,
                ..spec.clone()
            }),
            warning: None,
            note,
        }
    }

    /// The change a rise in desire must pass to add replicas: the spec's
    /// tolerance, except where the SLO set the target, which holds the
    /// queueing headroom already (the spec's tolerance would give it back):
    /// there only what one standard deviation of the stable window's
    /// Poisson arrival count explains.
    fn rise_tolerance(&self, spec: &ScalingSpec, stable: &WindowAverage) -> Tolerance {
        if !self.slo_sized {
            return Tolerance::of(spec);
        }
        let arrivals = stable.requests_per_s.unwrap_or(0.0) * spec.stable_window.as_secs_f64();
        Tolerance {
            share: (1.0 / arrivals.max(1.0).sqrt()).min(spec.tolerance),
            why: Some(format!(
                "the noise of {} arrivals in the stable window, as the SLO set the target",
                num(arrivals)
            )),
        }
    }

    /// The count the signals ask for, for a model that has replicas.
    fn plan_from_signals(
        &mut self,
        spec: &ScalingSpec,
        current: u32,
        now: Instant,
        inputs: &mut Inputs,
    ) -> Plan {
        let fresh = self
            .last_seen
            .is_some_and(|t| now.saturating_duration_since(t) <= self.stale_after);
        let latest = match self.history.latest() {
            Some((_, s)) if fresh => *s,
            _ => {
                let why = match self.last_seen {
                    Some(t) => format!(
                        "no fresh signals for {}; not scaling on missing data",
                        span(now.saturating_duration_since(t))
                    ),
                    None => "no signals yet; not scaling on missing data".to_string(),
                };
                return Plan::hold(current, Rule::NoSignals, why);
            }
        };
        inputs.add("ready", latest.ready);
        inputs.add("starting", latest.starting);
        self.missing = missing_signals(&latest, spec);
        if self.missing.is_empty() {
            self.missing_since = None;
        } else {
            self.missing_since.get_or_insert(now);
        }
        inputs.add("requests_per_s", num(latest.requests_per_s));

        let stable = self.history.average(now, spec.stable_window);
        let panic_avg = self.history.average(now, spec.panic_window);
        let stable_label = format!("stable {} average", span(spec.stable_window));
        let panic_label = format!("{} average", span(spec.panic_window));
        let capacity = latest.ready.saturating_add(latest.starting).max(1);
        let (start_s, service_s) = self.measured();
        if let Some(s) = service_s {
            inputs.add("service_time", seconds(s));
        }
        if let Some(s) = start_s {
            inputs.add("start_time", seconds(s));
        }
        // The cold-start rule: a queue that drains at the current capacity
        // before a new replica could be ready is not worth a replica.
        let drains = self.backlog_drains(spec, &latest, &stable, &panic_avg, capacity, now);
        if let Some((_, note)) = &drains {
            inputs.add("backlog", note);
        }
        // A queue that outlasts a start is drained over one more start.
        let drain_over = match &drains {
            Some((false, _)) => start_s,
            Some((true, _)) => None,
            None => start_s.or(Some(spec.stable_window.as_secs_f64())),
        };
        let drain = drain_over
            .zip(latest.waiting)
            .map(|(over_s, waiting)| Drain { waiting, over_s });
        let Some(stable_best) = strongest(policy::desires(
            &stable,
            &stable_label,
            spec,
            service_s,
            drain,
        )) else {
            return Plan::hold(
                current,
                Rule::NotMeasured,
                format!(
                    "no ready replica to measure yet ({} starting)",
                    latest.starting
                ),
            );
        };
        let panic_best = strongest(policy::desires(
            &panic_avg,
            &panic_label,
            spec,
            service_s,
            drain,
        ));
        record_averages(inputs, &stable, &panic_avg);
        inputs.add("stable_desire", num(stable_best.replicas));

        inputs.add("capacity", capacity);
        let mut trigger = None;
        let threshold = spec.panic_threshold * f64::from(capacity);
        if let Some(p) = &panic_best {
            inputs.add("panic_desire", num(p.replicas));
            if p.replicas >= threshold {
                trigger = Some(p.panic_note(spec, capacity));
            }
        }
        self.learn_full_replicas(spec, now);
        if let Some(f) = self.full {
            inputs.add("full_replica_concurrency", num(f.concurrency));
        }
        let recall =
            self.remember_bursts(spec, &latest, &stable, &panic_avg, trigger.is_some(), now);
        let drain_note = drains.filter(|(d, _)| *d).map(|(_, note)| note);
        // The same verdict with only the ready replicas working off the
        // queue: one still loading serves none of it yet.
        let ready_drain = self
            .backlog_drains(spec, &latest, &stable, &panic_avg, latest.ready, now)
            .filter(|(d, _)| *d)
            .map(|(_, note)| note);
        // A step in load shows in the newest samples seconds before the
        // panic window's average (diluted by the quiet before it) crosses.
        let mut surge = None;
        if trigger.is_none() {
            match self.surge(spec, threshold, now, service_s) {
                Some(Ok(s)) => {
                    inputs.add("surge_desire", num(s.replicas));
                    trigger = Some(s.panic_note(spec, capacity));
                    surge = Some(s);
                }
                Some(Err(())) => self.awaits_measurement = true,
                None => {}
            }
        }
        if let (Some(note), Some(_)) = (&drain_note, &trigger) {
            // A burst the current replicas absorb before a new one could help.
            let _ = trigger.take();
            if !self.panicking(now) {
                return Plan::hold(
                    current,
                    Rule::BacklogDrains,
                    format!("{}; {note}", stable_best.explain),
                );
            }
        }
        if trigger.is_some() {
            self.panic_until = Some(now + spec.stable_window);
        }
        let panic_best = match (panic_best, surge) {
            (Some(p), Some(s)) if p.replicas >= s.replicas => Some(p),
            (p, s) => s.or(p),
        };
        let hi = spec.max_replicas;
        // What the signals alone ask for, then with the minimum and the
        // pre-scale floor: the floors count as desire, so the scale-down
        // delay applies after they are lifted.
        let mut asked = ceil_count(stable_best.replicas).min(hi);
        if service_s.is_some() && spec.size_from_arrivals {
            // Up only while the recent window still asks too: a stable
            // average that still holds a burst now over asks for nothing.
            let recent = panic_best.as_ref().map_or(0, |p| ceil_count(p.replicas));
            if asked > current {
                asked = asked.min(recent.max(current));
            }
        }
        let burst_floor = recall.as_ref().map_or(0, |r| r.0.replicas);
        let rec = asked
            .max(spec.min_replicas.max(1))
            .max(self.prescale_floor)
            .max(burst_floor)
            .min(hi);
        self.burst_floor = recall
            .as_ref()
            .filter(|r| r.0.replicas > 0)
            .map(|(r, wait_s)| (r.replicas, burst_note(r, *wait_s)));

        if let Some(until) = self.panic_until.filter(|u| now < *u) {
            // A rate still climbing is sized for where it will be when the
            // replicas bought now are ready, not where the window was.
            let rising = self
                .rising_rate(spec, &panic_avg, service_s, drain, now)
                .filter(|r| panic_best.as_ref().is_none_or(|p| r.replicas > p.replicas));
            if let Some(r) = &rising {
                inputs.add("rising_desire", num(r.replicas));
            }
            let rose = rising.is_some();
            let panic_best = rising.or(panic_best);
            let mut panic_rec = panic_best.as_ref().map_or(0, |p| ceil_count(p.replicas));
            // A backlog the ready replicas work off before a new one could
            // be ready needs no new one, panic or not.
            let drained_by_current = ready_drain.is_some() && panic_rec.max(rec) > current;
            if drained_by_current {
                panic_rec = panic_rec.min(current);
            }
            // While bursts recur, a panic asks for what serves a burst of
            // their usual length within the SLO, not for its queue at the
            // target: those replicas are ready after it anyway.
            let mut bounded = None;
            let mut rec_in_panic = rec;
            if let Some((cap, note)) = self.burst_cap(spec, &latest, &panic_avg, now) {
                // The floors still hold; the signals' asks are bounded.
                let cap = cap
                    .max(burst_floor)
                    .max(spec.min_replicas)
                    .max(self.prescale_floor);
                if panic_rec.max(rec) > cap {
                    panic_rec = panic_rec.min(cap);
                    rec_in_panic = rec.min(cap);
                    bounded = Some(format!("{note} {cap}"));
                }
            }
            let rec = rec_in_panic;
            let target = panic_rec.max(rec).max(current).min(hi);
            self.desires.push(now, target);
            self.below_since = None;
            let driver = match &panic_best {
                Some(p) if panic_rec >= rec => p,
                _ => &stable_best,
            };
            let (rule, why) = match (trigger, &ready_drain) {
                _ if bounded.is_some() && panic_rec >= current => (
                    Rule::BurstMemory,
                    format!("{}; {}", driver.explain, bounded.take().unwrap_or_default()),
                ),
                (_, Some(note)) if drained_by_current => (
                    Rule::BacklogDrains,
                    format!(
                        "{}; {note}; panic mode for another {}",
                        driver.explain,
                        span(until.saturating_duration_since(now))
                    ),
                ),
                (note, _) if rose && panic_rec > rec.max(current) => (
                    Rule::RisingRate,
                    match note {
                        Some(note) => format!("{} ({note})", driver.explain),
                        None => format!(
                            "{}; panic mode for another {}",
                            driver.explain,
                            span(until.saturating_duration_since(now))
                        ),
                    },
                ),
                (Some(note), _) => (Rule::Panic, format!("{} ({note})", driver.explain)),
                (None, _) => (
                    Rule::PanicHold,
                    format!(
                        "{}; panic mode for another {}, no scale-down while panicking",
                        driver.explain,
                        span(until.saturating_duration_since(now))
                    ),
                ),
            };
            return Plan::new(target, rule, why);
        }
        self.panic_until = None;
        self.desires.push(now, rec);

        if let Some(idle) = self.idle_since.map(|t| now.saturating_duration_since(t)) {
            inputs.add("idle_for", span(idle));
            if spec.min_replicas == 0 && idle >= spec.scale_to_zero_after {
                let target = current.saturating_sub(spec.max_scale_down_step);
                let walking = if target > 0 {
                    format!(", at most {} per step", spec.max_scale_down_step)
                } else {
                    String::new()
                };
                return Plan::new(
                    target,
                    Rule::ScaleToZero,
                    format!(
                        "no requests for {} (scale to zero{walking})",
                        span(spec.scale_to_zero_after)
                    ),
                );
            }
        }

        if rec > current {
            self.below_since = None;
            if asked <= current {
                // A floor, not the signals, asks for more: `decide` raises
                // the count and names the floor.
                return Plan::hold(current, Rule::Steady, stable_best.explain);
            }
            let tolerance = self.rise_tolerance(spec, &stable);
            if within_tolerance(&stable_best, current, &tolerance) {
                return Plan::hold(
                    current,
                    Rule::Tolerance,
                    tolerance_note(&stable_best, &tolerance),
                );
            }
            return Plan::new(rec, Rule::Steady, stable_best.explain);
        }
        if rec == current {
            self.below_since = None;
            if burst_floor == current && asked < current {
                if let Some((_, note)) = &self.burst_floor {
                    return Plan::hold(
                        current,
                        Rule::BurstMemory,
                        format!("{note}; signals: {}", stable_best.explain),
                    );
                }
            }
            if ceil_count(stable_best.replicas) > current {
                if let Some(note) = drain_note {
                    return Plan::hold(
                        current,
                        Rule::BacklogDrains,
                        format!("{}; {note}", stable_best.explain),
                    );
                }
            }
            return Plan::hold(current, Rule::Steady, stable_best.explain);
        }
        self.scale_down(spec, current, now, rec, &stable_best)
    }

    /// Feeds the burst memory one tick (a burst begins with a panic, or
    /// with the panic window's arrivals at the panic threshold over the
    /// stable window's) and, with an SLO and a measured service time,
    /// returns what the recurring bursts need within the SLO's queue wait
    /// (SLO − service), with that wait.
    fn remember_bursts(
        &mut self,
        spec: &ScalingSpec,
        latest: &Signals,
        stable: &history::WindowAverage,
        recent: &history::WindowAverage,
        panics: bool,
        now: Instant,
    ) -> Option<(Recall, f64)> {
        let longest = (spec.scale_down_delay * 4).max(spec.stable_window);
        let base_rps = stable.requests_per_s.unwrap_or(0.0);
        self.bursts
            .observe(now, latest.requests_per_s, base_rps, longest);
        // Arrivals over the panic window, not one second's count: a second
        // of a Poisson trickle often doubles its rate.
        let recent_rps = recent.requests_per_s.unwrap_or(0.0);
        if panics || (base_rps > 0.0 && recent_rps >= spec.panic_threshold * base_rps) {
            self.bursts.begin(now, base_rps);
        }
        let service = self.service.service_s()?;
        let wait_s = self.slo_wait(spec)?;
        let hold = self.scale_down_delay(spec);
        self.bursts
            .recall(
                now,
                service,
                self.burst_target(spec),
                wait_s,
                burst::Limits {
                    min_hold: hold,
                    horizon_cap: longest,
                    longest_s: self.start.get().map(|s| LONG_BURST_STARTS * s),
                },
            )
            .map(|r| (r, wait_s))
    }

    /// Requests per second each ready replica completed over the panic
    /// window, once a queue has stood for [`FULL_AFTER_S`]: arrivals less
    /// the queue's growth, what full replicas do.
    fn completed_when_full(&self, spec: &ScalingSpec, now: Instant) -> Option<f64> {
        let from = self.queued_since?.max(now.checked_sub(spec.panic_window)?);
        self.history.completed_per_replica(from, now, FULL_AFTER_S)
    }

    /// Learns what full replicas sustain from each new sample once a
    /// queue has stood for [`FULL_AFTER_S`]: arrivals less the queue's
    /// growth over the panic window, × the service time; forgets it once
    /// no queue has renewed it for a while.
    fn learn_full_replicas(&mut self, spec: &ScalingSpec, now: Instant) {
        let forget_after = spec.scale_down_delay * FULL_FORGET_DELAYS;
        if self
            .full
            .is_some_and(|f| now.saturating_duration_since(f.sample_at) > forget_after)
        {
            self.full = None;
        }
        let Some((sample_at, _)) = self.history.latest() else {
            return;
        };
        if self.full.is_some_and(|f| f.sample_at >= sample_at) {
            return;
        }
        let Some(service) = self.service.service_s() else {
            return;
        };
        let Some(seen) = self.completed_when_full(spec, now) else {
            return;
        };
        let concurrency = seen * service;
        self.full = Some(FullReplicas {
            concurrency: match self.full {
                Some(f) => f.concurrency + (concurrency - f.concurrency) / FULL_RATE_SPAN,
                None => concurrency,
            },
            sample_at,
        });
    }

    /// The per-replica target a burst is worked off at: requests in
    /// service per replica complete target ÷ service time per second, but
    /// a replica a burst fills runs a wider batch, slower per request, and
    /// completes no more than full replicas were seen to (when less, the
    /// requests in service those completions stand for). Never under half
    /// the target: a wider batch slows requests by tens of percent, and
    /// replicas that complete less behind a queue are stalled or failing,
    /// which their health checks answer, not replicas kept for bursts.
    fn burst_target(&self, spec: &ScalingSpec) -> f64 {
        let target = spec.target_ongoing_requests;
        self.full
            .map_or(target, |f| target.min(f.concurrency))
            .max(target / 2.0)
    }

    /// What a burst of the model's usual length at the recent arrival rate
    /// needs within the SLO, while bursts are remembered and the one under
    /// way has lasted no longer than twice their usual length (a longer one
    /// is a new level, left to the other rules).
    fn burst_cap(
        &self,
        spec: &ScalingSpec,
        latest: &Signals,
        recent: &history::WindowAverage,
        now: Instant,
    ) -> Option<(u32, String)> {
        let wait_s = self.slo_wait(spec)?;
        let service = self.service.service_s()?;
        let length_s = self.bursts.typical_length_s()?;
        if self.standing_queue(spec, now).is_some() {
            return None;
        }
        if self.bursts.open_for_s(now).unwrap_or(0.0) > 2.0 * length_s {
            return None;
        }
        let rps = recent
            .requests_per_s
            .unwrap_or(0.0)
            .max(latest.requests_per_s);
        let need = burst_need(rps, length_s, service, self.burst_target(spec), wait_s);
        Some((
            ceil_count(need),
            format!(
                "a burst of {} req/s for this model's usual {} is worked off within the SLO's queue wait {} by",
                num(rps),
                seconds(length_s),
                seconds(wait_s)
            ),
        ))
    }

    /// The queue wait the spec's SLO leaves, once a service time is
    /// measured, when it is positive: end to end, the SLO less the service
    /// time; before the first token, the whole SLO (the prompt's prefill,
    /// which the signals do not measure apart, counts against it too).
    fn slo_wait(&self, spec: &ScalingSpec) -> Option<f64> {
        let slo = spec.slo?.as_secs_f64();
        let service = self.service.service_s()?;
        let wait = match spec.slo_kind {
            SloKind::E2e => slo - service,
            SloKind::Ttft => slo,
        };
        (wait > 0.0).then_some(wait)
    }

    /// While a burst is under way (arrivals rose over the rate before it)
    /// and has lasted at least a panic window, the arrival rate's line
    /// since it began: if it still climbs (slope above twice its standard
    /// error), what the rate projected ahead asks for. The projection
    /// looks as far ahead as a replica start, but no further than the rise
    /// has lasted (its age is the best guess of what is left of it), and
    /// at most to twice the panic window's rate. A step has a flat line
    /// since it began, so only a ramp is projected; a window's mean, which
    /// straddles a step, cannot tell the two apart.
    fn rising_rate(
        &self,
        spec: &ScalingSpec,
        recent: &history::WindowAverage,
        service_s: Option<f64>,
        drain: Option<Drain>,
        now: Instant,
    ) -> Option<Desire> {
        let service_s = service_s.filter(|_| spec.size_from_arrivals)?;
        let age_s = self.bursts.open_for_s(now)?;
        if age_s < spec.panic_window.as_secs_f64() {
            return None;
        }
        let from = now.checked_sub(Duration::from_secs_f64(age_s))?;
        let trend = self.history.arrival_trend(from, now)?;
        let window_rps = recent.requests_per_s?;
        if !(trend.slope > 0.0 && trend.slope > 2.0 * trend.slope_se && trend.rps_now > window_rps)
        {
            return None;
        }
        // Still climbing now: the newest panic window's rate is over the
        // one before by at least half what the line says. A climb that has
        // ended leaves the line since the rise began sloped for long after.
        let window = spec.panic_window;
        let before = self
            .history
            .average(now.checked_sub(window)?, window)
            .requests_per_s?;
        if window_rps - before < 0.5 * trend.slope * window.as_secs_f64() {
            return None;
        }
        let ahead_s = self.start.get().map_or(age_s, |s| s.min(age_s));
        let rps = (trend.rps_now + trend.slope * ahead_s).min(2.0 * window_rps);
        let label = format!(
            "arrivals rising {} req/s per s for {}, projected {} ahead:",
            num(trend.slope),
            seconds(age_s),
            seconds(ahead_s)
        );
        let projected = history::WindowAverage {
            requests_per_s: Some(rps),
            ..*recent
        };
        policy::desires(&projected, &label, spec, Some(service_s), drain)
            .into_iter()
            .find(|d| d.metric == Metric::Arrivals)
    }

    /// A queue that has stood, never emptying, for longer than a replica
    /// start plus the queue wait the SLO leaves (without an SLO, a second
    /// start): not a burst the current replicas absorb, whatever the
    /// noisy recent arrivals project, and not one of the short bursts the
    /// burst memory sizes for. Its requests already wait past the SLO. The
    /// cold-start rule and the burst memory's bound then hold nothing back.
    fn standing_queue(&self, spec: &ScalingSpec, now: Instant) -> Option<String> {
        let start_s = self.start.get()?;
        let age_s = now
            .saturating_duration_since(self.queued_since?)
            .as_secs_f64();
        let wait_s = self.slo_wait(spec).unwrap_or(start_s);
        (age_s > start_s + wait_s).then(|| {
            format!(
                "has stood for {}, longer than a replica start ({}) plus the SLO's queue wait ({}): a replica started now still helps",
                seconds(age_s),
                seconds(start_s),
                seconds(wait_s)
            )
        })
    }

    /// A surge in the newest samples: the ongoing requests of every sample
    /// since some instant at the panic threshold. `Ok` with what they ask for
    /// once every replica has been scraped again since the surge began and
    /// still agrees, `Err` until then, `None` when the newest sample is under
    /// the threshold or its scrapes cannot be told apart. Only ongoing
    /// requests count: they are what agents report the moment they move (and
    /// the scrape after that, whatever it shows), so a reading the next
    /// scrape contradicts is replaced rather than confirmed; GPU utilization
    /// and KV cache travel at the report interval and wait for the windows.
    fn surge(
        &self,
        spec: &ScalingSpec,
        threshold: f64,
        now: Instant,
        service_s: Option<f64>,
    ) -> Option<Result<Desire, ()>> {
        let over = |avg: &history::WindowAverage| {
            avg.ongoing
                .is_some_and(|o| o / spec.target_ongoing_requests >= threshold)
        };
        let since = self.history.over_since(now, spec.panic_window, over)?;
        let rescraped = self.history.latest()?.1.rescraped_at?;
        if rescraped <= since {
            return Some(Err(()));
        }
        let avg = self.history.average_from(since, now);
        let label = format!(
            "last {} ({} samples) average",
            span(now.saturating_duration_since(since)),
            avg.measured
        );
        let latest = self.history.latest()?.1;
        let drain = self
            .start
            .get()
            .zip(latest.waiting)
            .map(|(over_s, waiting)| Drain { waiting, over_s });
        policy::desires(&avg, &label, spec, service_s, drain)
            .into_iter()
            .find(|d| matches!(d.metric, Metric::Ongoing | Metric::Arrivals))
            .map(Ok)
    }

    /// The signals ask for fewer replicas: walk down only once the desire
    /// has been lower for the whole delay, and no lower than its highest.
    fn scale_down(
        &mut self,
        spec: &ScalingSpec,
        current: u32,
        now: Instant,
        rec: u32,
        best: &Desire,
    ) -> Plan {
        let since = *self.below_since.get_or_insert(now);
        let tolerance = Tolerance::of(spec);
        if within_tolerance(best, current, &tolerance) {
            return Plan::hold(current, Rule::Tolerance, tolerance_note(best, &tolerance));
        }
        // A signal that stays missing (an engine that does not export it
        // after all, a scrape that keeps failing) holds one stable window at
        // most: then the remaining signals decide, and say so.
        let mut missing_note = String::new();
        if let Some(missing_since) = self.missing_since {
            let missing = self.missing.join(" and ");
            let missing_for = now.saturating_duration_since(missing_since);
            if missing_for < spec.stable_window {
                return Plan::hold(
                    current,
                    Rule::MissingSignals,
                    format!(
                        "{}; {missing} missing from the last scrape for {}, not scaling down on partial signals for up to {}",
                        best.explain,
                        span(missing_for),
                        span(spec.stable_window)
                    ),
                );
            }
            missing_note = format!(
                "; {missing} missing for {}, the remaining signals decide",
                span(missing_for)
            );
        }
        if let Some(why) = self.arrivals_above_stable(spec, now) {
            return Plan::hold(
                current,
                Rule::ArrivalsAboveStable,
                format!("{}; {why}{missing_note}", best.explain),
            );
        }
        // Capacity released and soon needed back grows the hold, for
        // falls like those: a desire below the counts re-bought lately by
        // more than their span is a different fall (traffic gone, not a
        // level wobbling), and so is one that stays above them (a surge
        // receding, whose capacity was never released): both wait only the
        // base hold.
        let grown = self.scale_down_delay(spec);
        let waited = now.saturating_duration_since(since);
        let other_fall = match self.rebought_span() {
            Some(span_n) if rec.saturating_add(span_n) < self.rebought_from => {
                Some(("below", " by more than their span"))
            }
            Some(_) if rec >= self.rebought_to => Some(("above", "")),
            _ => None,
        };
        let delay = match other_fall {
            Some((side, by)) => {
                missing_note = format!(
                    "{missing_note}; the desire is {side} the counts re-bought lately ({}–{}){by}: the base hold, not {}",
                    self.rebought_from,
                    self.rebought_to,
                    span(grown)
                );
                self.base_hold(spec)
            }
            None => grown,
        };
        if waited < delay {
            return Plan::hold(
                current,
                Rule::ScaleDownWait,
                format!(
                    "{}; scale-down waits {}, desire lower for {} so far{missing_note}",
                    best.explain,
                    span(delay),
                    span(waited)
                ),
            );
        }
        let highest = self.desires.max(now, delay).unwrap_or(rec).max(rec);
        let step_floor = current.saturating_sub(spec.max_scale_down_step);
        let target = highest.max(step_floor);
        if target >= current {
            return Plan::hold(
                current,
                Rule::ScaleDownHeld,
                format!(
                    "{}; highest desire over the last {} is {highest}",
                    best.explain,
                    span(delay)
                ),
            );
        }
        let mut why = format!("{}; scale-down waited {}", best.explain, span(delay));
        if target > highest {
            why.push_str(&format!(", at most {} per step", spec.max_scale_down_step));
        }
        why.push_str(&missing_note);
        Plan::new(target, Rule::ScaleDown, why)
    }

    /// The newest arrivals, over the panic window, well above the stable
    /// window's rate: the load has risen and the stable average, which the
    /// lower desire comes from, has not caught up. A scale-down now would be
    /// bought back within moments (with a hold of two short starts, a
    /// 30-second window's lag outlasts it). `Some(why)` while that holds.
    fn arrivals_above_stable(&self, spec: &ScalingSpec, now: Instant) -> Option<String> {
        let recent = self
            .history
            .average(now, spec.panic_window)
            .requests_per_s?;
        let stable = self
            .history
            .average(now, spec.stable_window)
            .requests_per_s?;
        let noise = (stable / spec.panic_window.as_secs_f64()).sqrt();
        (recent > ABOVE_STABLE_FACTOR * stable && recent - stable > ABOVE_STABLE_SD * noise).then(
            || {
                format!(
                    "arrivals over the last {} ({} req/s) are above the stable window's ({} req/s): no scale-down while its average catches up",
                    span(spec.panic_window),
                    num(recent),
                    num(stable)
                )
            },
        )
    }

    /// How long a lower desire must last before a scale-down. Ski-rental:
    /// idle capacity costs its GPU time, a restart costs its start time, so
    /// capacity is kept about `scale_down_hold_factor` start times, times
    /// the multiplier that grows while released capacity keeps being needed
    /// again, up to 4 × `scale_down_delay` (the delay itself holds until a
    /// start is seen).
    fn scale_down_delay(&self, spec: &ScalingSpec) -> Duration {
        // Recurring bursts are held by the burst memory: its floor, not a
        // grown hold, keeps what they need.
        let mult = if self.burst_floor.is_some() {
            1.0
        } else {
            self.hold_mult
        };
        self.hold(spec, mult)
    }

    /// The span of the counts re-bought since the hold began to grow,
    /// while it is grown.
    fn rebought_span(&self) -> Option<u32> {
        (self.hold_mult > 1.0
            && self.burst_floor.is_none()
            && self.rebought_to > self.rebought_from)
            .then(|| self.rebought_to - self.rebought_from)
    }

    /// The ski-rental hold before it grows: `scale_down_hold_factor` start
    /// times (the fixed delay until a start is seen).
    fn base_hold(&self, spec: &ScalingSpec) -> Duration {
        self.hold(spec, 1.0)
    }

    fn hold(&self, spec: &ScalingSpec, mult: f64) -> Duration {
        match self.start.get() {
            Some(start) if spec.scale_down_hold_factor > 0.0 => {
                let cap = 4.0 * spec.scale_down_delay.as_secs_f64();
                // Never shorter than the panic window (nor the delay set):
                // a lower desire that has not lasted that long is the
                // noise of a second or two, and a server that starts in half
                // a second would otherwise be released and bought back
                // within a few seconds, again and again.
                let floor = spec.panic_window.min(spec.scale_down_delay);
                let hold = (start * spec.scale_down_hold_factor * mult).max(floor.as_secs_f64());
                Duration::from_secs_f64(hold.min(cap).min(86_400.0))
            }
            _ => spec.scale_down_delay,
        }
    }

    /// The cold-start rule's verdict on the newest queue: `Some((true, …))`
    /// when it drains at the current capacity before a replica started now
    /// could be ready, `Some((false, …))` when it would outlast that start,
    /// `None` when there is no queue or no measured start and service time.
    fn backlog_drains(
        &self,
        spec: &ScalingSpec,
        latest: &Signals,
        stable: &history::WindowAverage,
        recent: &history::WindowAverage,
        capacity: u32,
        now: Instant,
    ) -> Option<(bool, String)> {
        if !spec.cold_start_aware {
            return None;
        }
        let (Some(start_s), Some(service_s)) = self.measured() else {
            return None;
        };
        let Some(waiting) = latest.waiting.filter(|w| *w >= 0.5) else {
            // The newest scrape shows the queue gone: what the windows
            // still hold of it needs no replica.
            let recent_queue = recent.waiting.filter(|w| *w >= 0.5)?;
            return Some((
                true,
                format!(
                    "the queue (recently {} waiting) has drained at capacity {capacity}",
                    num(recent_queue)
                ),
            ));
        };
        if let Some(note) = self.standing_queue(spec, now) {
            return Some((false, format!("backlog {} {note}", num(waiting))));
        }
        let slots = self.service.slots(spec.target_ongoing_requests);
        let b = Backlog {
            waiting,
            recent_rps: recent.requests_per_s.unwrap_or(0.0),
            steady_rps: stable
                .requests_per_s
                .unwrap_or(0.0)
                .min(recent.requests_per_s.unwrap_or(f64::MAX)),
            capacity_rps: f64::from(capacity) * {
                // What full replicas were seen to complete, where the queue
                // has been there long enough to tell: the service time is
                // measured at smaller batches, which run faster.
                let believed = slots / service_s;
                self.completed_when_full(spec, now)
                    .map_or(believed, |c| c.min(believed))
            },
            age_s: self
                .queued_since
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            start_s,
        };
        Some(match b.drains_in_s() {
            Some(d) => (
                true,
                format!(
                    "backlog {} drains in about {} at capacity {capacity}, before a new replica (start {}) could be ready",
                    num(waiting),
                    seconds(d),
                    seconds(start_s)
                ),
            ),
            None => (
                false,
                format!(
                    "backlog {} would outlast a replica start ({})",
                    num(waiting),
                    seconds(start_s)
                ),
            ),
        })
    }
}

/// Named inputs in the order they were read.
#[derive(Default)]
struct Inputs(Vec<(String, String)>);

impl Inputs {
    fn add(&mut self, key: &str, value: impl ToString) {
        self.0.push((key.to_string(), value.to_string()));
    }
}

fn record_averages(
    inputs: &mut Inputs,
    stable: &history::WindowAverage,
    panic: &history::WindowAverage,
) {
    if let Some(v) = stable.ongoing {
        inputs.add("stable_ongoing", num(v));
    }
    if let Some(v) = panic.ongoing {
        inputs.add("panic_ongoing", num(v));
    }
    if let Some(v) = stable.p95_latency_s {
        inputs.add("p95_latency", seconds(v));
    }
    if let Some(v) = stable.gpu_utilization {
        inputs.add("gpu_utilization", percent(v));
    }
    if let Some(v) = stable.kv_cache_usage {
        inputs.add("kv_cache_usage", percent(v));
    }
}

fn burst_note(r: &Recall, wait_s: f64) -> String {
    format!(
        "{} recent bursts, the biggest {} req/s for {}: {} serve it within the SLO's queue wait {}",
        r.bursts,
        num(r.rps),
        seconds(r.length_s),
        r.replicas,
        seconds(wait_s)
    )
}

/// A change this small relative to the current count is noise.
/// The relative change in desire ignored as noise, and where it comes from
/// when not from the spec.
struct Tolerance {
    share: f64,
    why: Option<String>,
}

impl Tolerance {
    fn of(spec: &ScalingSpec) -> Tolerance {
        Tolerance {
            share: spec.tolerance,
            why: None,
        }
    }
}

fn within_tolerance(best: &Desire, current: u32, tolerance: &Tolerance) -> bool {
    (best.replicas / f64::from(current.max(1)) - 1.0).abs() <= tolerance.share
}

fn tolerance_note(best: &Desire, tolerance: &Tolerance) -> String {
    let why = tolerance
        .why
        .as_ref()
        .map_or(String::new(), |w| format!(": {w}"));
    format!(
        "{} (within {}% tolerance{why})",
        best.explain,
        num(tolerance.share * 100.0)
    )
}

/// Replicas for a fractional desire: up, but a rounding error of an exact
/// count (16 / 8 = 2.0000000001) is not a third replica.
fn ceil_count(replicas: f64) -> u32 {
    if !replicas.is_finite() || replicas <= 0.0 {
        return 0;
    }
    (replicas - 1e-9).ceil().min(f64::from(u32::MAX)) as u32
}

/// Broken readings (NaN, infinite, negative) are not measurements: counts
/// become 0 and ratios become absent.
fn sanitized(s: &Signals) -> Signals {
    let count = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
    let ratio = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
    Signals {
        ongoing: count(s.ongoing),
        waiting: s.waiting.filter(|v| v.is_finite() && *v >= 0.0),
        p95_latency_s: ratio(s.p95_latency_s),
        gpu_utilization: ratio(s.gpu_utilization),
        kv_cache_usage: ratio(s.kv_cache_usage),
        ready: s.ready,
        starting: s.starting,
        requests_per_s: count(s.requests_per_s),
        measurement: s.measurement,
        rescraped_at: s.rescraped_at,
        last_active: s.last_active,
    }
}
