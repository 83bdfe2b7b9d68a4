//! Each model's replica count, every tick: its serving signals gathered from
//! the agents' reports, fed to its autoscaler and demand history, and the
//! decision recorded in words. Also `wake` and `explain`.

use std::time::{Duration, Instant};

use crate::api::{Explanation, SignalPoint};
use crate::config::WarmMode;
use crate::domain::{unix_ms_now, ReplicaState};

use super::autoscale::{Signals, Tick};
use super::fleet::{Fleet, FleetError, PlannedReplica};

/// Ticks of signals kept per model for `explain` (10 minutes at 1 s; early
/// ticks on news take their share).
const TIMELINE_LEN: usize = 600;

/// How far ahead predictive pre-warming and pre-scaling look: about the
/// cold start of a large model from shared storage.
pub const PREDICT_HORIZON: Duration = Duration::from_secs(300);

/// Event kinds that are decisions about a model, for `explain`.
const DECISION_KINDS: &[&str] = &[
    "keep",
    "scale",
    "place",
    "unplaceable",
    "replace",
    "stop",
    "drain",
    "wake",
    "warm",
    "evict",
    "signals",
];

impl Fleet {
    /// The model's signals this tick, from what its replicas' nodes report
    /// and what its gateways hold. `fresh` is false when neither has news
    /// (nothing to judge by).
    fn model_signals(
        &self,
        model: &str,
        planned: &[&PlannedReplica],
        now: Instant,
    ) -> (Signals, bool) {
        let mut s = Signals {
            waiting: Some(0.0),
            ..Signals::default()
        };
        let mut fresh = false;
        let mut known = true;
        let mut oldest = None;
        let mut kv = Vec::new();
        let mut util = Vec::new();
        for r in planned.iter().filter(|r| r.retiring_since.is_none()) {
            let Some(node) = self.nodes.get(&r.node) else {
                s.starting += 1;
                continue;
            };
            let status = node.replicas.iter().find(|x| x.id == r.id);
            match status {
                Some(st) if st.state == ReplicaState::Ready => {
                    s.ready += 1;
                    if st.signals.fresh {
                        fresh = true;
                        // Agents that do not number their scrapes leave the
                        // measurement unknown.
                        known &= st.signals.scrape_seq != 0;
                        s.measurement = s.measurement.wrapping_add(st.signals.scrape_seq);
                        if let Some(mark) = node.scraped.get(&st.id) {
                            oldest = Some(oldest.map_or(mark.at, |o: Instant| o.min(mark.at)));
                            s.last_active = s.last_active.max(mark.active_at);
                        }
                        s.ongoing += st.signals.ongoing();
                        s.waiting = s.waiting.map(|w| w + st.signals.waiting);
                        s.requests_per_s += st.signals.requests_per_s;
                        if let Some(p) = st.signals.p95_latency_s {
                            s.p95_latency_s = Some(s.p95_latency_s.map_or(p, |q: f64| q.max(p)));
                        }
                        if let Some(k) = st.signals.kv_cache_usage {
                            kv.push(k);
                        }
                    }
                    for g in &r.gpus {
                        if let Some(sample) = node.sample(*g) {
                            util.push(sample.utilization_pct / 100.0);
                        }
                    }
                }
                _ => s.starting += 1,
            }
        }
        if known {
            s.rescraped_at = oldest;
        } else {
            s.measurement = 0;
        }
        let gateway = self.gateway_demand(model, now);
        if let Some(g) = gateway {
            // Requests held at a gateway are demand no replica has seen; the
            // ones it sent are counted at once, before any scrape.
            let scraped = s.ongoing;
            s.ongoing = scraped.max(f64::from(g.in_flight)) + f64::from(g.queued);
            // Held at the gateway is queued, as an engine's waiting requests are.
            s.waiting = s.waiting.map(|w| w + f64::from(g.queued));
            s.requests_per_s = s.requests_per_s.max(g.arrivals_per_s);
            s.measurement = s.measurement.wrapping_mul(31).wrapping_add(g.seq);
            if g.held_and_sent() >= scraped {
                // The gateways' count is exact, not sampled: a report newer
                // than a surge's start confirms it.
                s.rescraped_at = g.oldest.max(s.rescraped_at);
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        s.kv_cache_usage = mean(&kv);
        s.gpu_utilization = mean(&util);
        // With nothing ready yet, "replicas are starting" is itself fresh
        // news; so is a gateway's report of traffic (a gateway that saw
        // nothing says nothing about clients that bypass it).
        let gateway_saw =
            gateway.is_some_and(|g| g.held_and_sent() > 0.0 || g.arrivals_per_s > 0.0);
        let fresh = fresh || (s.ready == 0 && s.starting > 0) || gateway_saw;
        (s, fresh)
    }

    /// Desired replica counts: a pinned count, the fixed `replicas`, or the
    /// autoscaler's decision on the model's signals.
    pub(super) fn decide_desired(&mut self, now: Instant) {
        let now_unix_s = unix_ms_now() / 1000;
        let names: Vec<String> = self.models.keys().cloned().collect();
        let mut events = Vec::new();
        let mut awaiting = false;
        let mut missing_changes = Vec::new();
        // One pass over the plan for all models, not one per model.
        let by_model = super::reconcile::plan_by_model(&self.plan);
        for name in names {
            let planned = by_model.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            let (signals, fresh) = self.model_signals(&name, planned, now);
            let replicas: Vec<(String, bool, Duration)> = planned
                .iter()
                .filter(|r| r.retiring_since.is_none())
                .map(|r| {
                    let ready = self.nodes.get(&r.node).is_some_and(|n| {
                        n.replicas
                            .iter()
                            .any(|x| x.id == r.id && x.state == ReplicaState::Ready)
                    });
                    (
                        r.id.clone(),
                        ready,
                        now.saturating_duration_since(r.created),
                    )
                })
                .collect();
            let model = self.models.get_mut(&name).expect("names were just listed");
            model.scaler.replicas_seen(
                replicas
                    .iter()
                    .map(|(id, ready, age)| (id.as_str(), *ready, *age)),
            );
            let mut missing = Vec::new();
            let (desired, why, panic) = match (model.record.pinned_replicas, &model.spec.scaling) {
                (Some(n), _) => (n, format!("pinned to {n} by `model scale`"), false),
                (None, None) => (
                    model.spec.replicas,
                    format!("fixed replicas = {}", model.spec.replicas),
                    false,
                ),
                (None, Some(spec)) => {
                    let tick = Tick {
                        now,
                        now_unix_s,
                        signals: fresh.then_some(signals),
                        current: model.desired,
                        default_horizon: PREDICT_HORIZON,
                        forecast: false,
                    };
                    let d = model.scaler.step(spec, &tick).decision;
                    awaiting |= d.awaits_measurement;
                    missing = d.missing;
                    if missing != model.missing_signals {
                        missing_changes.push((
                            name.clone(),
                            missing_note(&model.missing_signals, &missing, spec),
                        ));
                    }
                    let mut why = format!("{} [rule: {}]", d.reason, d.rule);
                    if let Some(w) = &d.warning {
                        why.push_str(&format!(" (warning: {w})"));
                    }
                    (d.desired, why, d.panic)
                }
            };
            model.missing_signals = missing;
            model.decision_now = why.clone();
            // A new warning is news even when the count holds.
            let warned = why.contains("(warning: ") && !model.last_decision.contains("(warning: ");
            if desired != model.desired || model.last_decision.is_empty() || warned {
                let message = if why.contains('→') {
                    why.clone()
                } else {
                    format!("{} → {desired}: {why}", model.desired)
                };
                model.desired = desired;
                model.last_decision = message.clone();
                events.push((name.clone(), message));
            }
            let current = planned
                .iter()
                .filter(|r| r.retiring_since.is_none())
                .count() as u32;
            let model = self.models.get_mut(&name).expect("names were just listed");
            model.timeline.push_back(SignalPoint {
                time: crate::api::rfc3339(unix_ms_now()),
                time_unix_ms: unix_ms_now(),
                ongoing: signals.ongoing,
                p95_latency_s: signals.p95_latency_s,
                gpu_utilization: signals.gpu_utilization,
                kv_cache_usage: signals.kv_cache_usage,
                desired,
                ready: signals.ready,
                current,
                panic,
            });
            while model.timeline.len() > TIMELINE_LEN {
                model.timeline.pop_front();
            }
        }
        for (name, message) in missing_changes {
            self.record("signals", &name, "", "", message);
        }
        for (name, message) in events {
            self.record("scale", &name, "", "", message);
        }
        self.awaiting_measurement = awaiting;
    }

    /// Demand for a model at zero (or below its need): at least one replica
    /// at once, and the idle timer restarts.
    pub(super) fn wake(&mut self, name: &str, now: Instant) -> Result<(), FleetError> {
        let Some(model) = self.models.get_mut(name) else {
            return Err(self.model_not_found(name));
        };
        if let Some(n) = model.record.pinned_replicas {
            return Err(FleetError::InvalidArgument(format!(
                "model `{name}` is pinned to {n} replicas; `gpufleet model scale {name} --auto` lets it scale (and wake) again"
            )));
        }
        if model.spec.scaling.is_none() {
            return Ok(());
        }
        model.scaler.wake(now);
        self.record(
            "wake",
            name,
            "",
            "",
            "woken on demand: at least one replica at once".into(),
        );
        Ok(())
    }

    pub(super) fn explain(&self, name: &str) -> Result<Explanation, FleetError> {
        let Some(model) = self.models.get(name) else {
            return Err(self.model_not_found(name));
        };
        let decisions: Vec<_> = self
            .events
            .iter()
            .filter(|e| e.model == name && DECISION_KINDS.contains(&e.kind.as_str()))
            .cloned()
            .collect();
        let skip = decisions.len().saturating_sub(30);
        let mut summary = format!("desired {}: {}", model.desired, model.last_decision);
        let now = Instant::now();
        if let Some(wait) = self.reconnect_wait(now) {
            summary = format!("{wait}; {summary}");
        } else if !model.decision_now.is_empty() && model.decision_now != model.last_decision {
            summary.push_str(&format!("; now {}", model.decision_now));
        }
        if !model.placement_problem.is_empty() {
            summary.push_str(&format!("; cannot place: {}", model.placement_problem));
        }
        match (&model.spec.scaling, model.record.pinned_replicas) {
            (_, Some(n)) => summary.push_str(&format!("; pinned to {n} (autoscaling off)")),
            (Some(s), None) => {
                let (start, service) = model.scaler.autoscaler.measured();
                let measured = |v: Option<f64>| {
                    v.map_or("not measured yet".to_string(), |v| format!("{v:.1}s"))
                };
                summary.push_str(&format!(
                    "; measured start {}, service {}",
                    measured(start),
                    measured(service)
                ));
                if s.prescale {
                    summary.push_str(&match model.scaler.forecast_error() {
                        Some(e) => format!(
                            "; forecast error {:.0}% (pre-scaling {} at most {:.0}%)",
                            e * 100.0,
                            if e <= s.prescale_max_error {
                                "on:"
                            } else {
                                "off: needs"
                            },
                            s.prescale_max_error * 100.0
                        ),
                        None => "; forecast not yet scored (no pre-scaling until it is)".into(),
                    });
                }
                summary.push_str(&format!(
                    "; policy: {}..{} replicas, target {} ongoing per replica{}",
                    s.min_replicas,
                    s.max_replicas,
                    s.target_ongoing_requests,
                    s.max_p95_latency
                        .map(|d| format!(", p95 under {}", humantime::format_duration(d)))
                        .unwrap_or_default()
                ))
            }
            (None, None) => {
                summary.push_str(&format!("; fixed at {} replicas", model.spec.replicas))
            }
        }
        if model.spec.warm.mode != WarmMode::Off {
            summary.push_str(&format!(
                "; warm mode {} with {} standby nodes",
                model.spec.warm.mode, model.spec.warm.standby_nodes
            ));
        }
        let points: Vec<SignalPoint> = model
            .timeline
            .iter()
            .rev()
            .take(120)
            .rev()
            .cloned()
            .collect();
        Ok(Explanation {
            model: name.to_string(),
            summary,
            decisions: decisions.into_iter().skip(skip).collect(),
            signals: points,
        })
    }
}

/// The event when the signals a spec targets go missing or come back.
fn missing_note(before: &[&str], now: &[&str], spec: &crate::config::ScalingSpec) -> String {
    if now.is_empty() {
        return format!("{} back in the replicas' metrics", before.join(" and "));
    }
    format!(
        "{} missing from the replicas' metrics: scale-down waits for {} at most, then the remaining signals decide",
        now.join(" and "),
        super::autoscale::format_span(spec.stable_window)
    )
}
