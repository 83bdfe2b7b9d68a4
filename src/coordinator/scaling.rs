//! A model's scaling as an operator reaches it: `wake` and `explain`. The
//! tick's count decision is `decide::scale_step`, applied by `apply.rs`.

use std::time::{Duration, Instant};

use crate::api::{Explanation, SignalPoint};
use crate::config::WarmMode;
use crate::domain::EventKind;

use super::fleet::{Fleet, FleetError};

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
        self.record(EventKind::Woken {
            model: name.to_string(),
        });
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
