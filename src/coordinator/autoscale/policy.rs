//! Replicas each signal asks for (HPA's multi-metric rule: the largest wins),
//! and the words that explain them in events.

use std::time::Duration;

use crate::config::model::ScalingSpec;
use crate::config::units::format_duration;

use super::history::WindowAverage;
use super::Signals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Ongoing,
    /// Arrival rate × measured service time (Little's law).
    Arrivals,
    Latency,
    GpuUtilization,
    KvCache,
}

/// A queue to work off on top of the arrivals: `waiting` requests now,
/// over `over_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Drain {
    pub waiting: f64,
    pub over_s: f64,
}

/// What one signal asks for over one window.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Desire {
    pub metric: Metric,
    /// Replicas asked for, before rounding up: tolerance and panic compare this.
    pub replicas: f64,
    /// How the count follows from the signal:
    /// "stable 60s average 27 ongoing / target 8 per replica".
    pub explain: String,
}

impl Desire {
    /// The panic note in the signal's own units where it has one:
    /// "37 ≥ 2 × capacity 16" for ongoing requests, replicas otherwise.
    pub fn panic_note(&self, spec: &ScalingSpec, capacity: u32) -> String {
        let threshold = num(spec.panic_threshold);
        match self.metric {
            Metric::Ongoing | Metric::Arrivals => format!(
                "panic: {} ≥ {threshold} × capacity {}",
                num(self.replicas * spec.target_ongoing_requests),
                num(f64::from(capacity) * spec.target_ongoing_requests)
            ),
            _ => format!(
                "panic: {} replicas needed ≥ {threshold} × capacity {capacity}",
                num(self.replicas)
            ),
        }
    }
}

/// Each configured signal's desire over a window. Ongoing requests are an
/// absolute demand; latency, utilization and KV cache are per-replica
/// readings, so they scale the ready replicas that produced them. Replicas
/// still starting are not in that base, which is what keeps a slow-loading
/// replica from being asked for again on every tick.
///
/// With a measured `service_s` (and engines that tell waiting from running),
/// demand is the arrival rate × service time (Little's law): a transient
/// queue is not demand. The queue then counts only with a [`Drain`], when
/// the cold-start rule finds it would outlast a replica's start: as the
/// extra concurrency that drains it within that many seconds. A queue is a
/// level, not a rate: the drain takes the newest one, never a window's
/// average, which would still hold a queue long gone.
pub(super) fn desires(
    avg: &WindowAverage,
    label: &str,
    spec: &ScalingSpec,
    service_s: Option<f64>,
    drain: Option<Drain>,
) -> Vec<Desire> {
    let mut out = Vec::new();
    let little = service_s.filter(|_| spec.size_from_arrivals);
    if let (Some(ongoing), Some(service), Some(rps), Some(waiting)) =
        (avg.ongoing, little, avg.requests_per_s, avg.waiting)
    {
        // Requests running say more than arrivals only without a queue:
        // with one, they are the backlog being worked off, not demand.
        let running = (ongoing - waiting).max(0.0);
        let offered = if waiting < 0.5 {
            (rps * service).max(running)
        } else {
            rps * service
        };
        let (backlog, note) = match drain.filter(|d| d.over_s > 0.0 && d.waiting > 0.0) {
            Some(d) => (
                d.waiting * service / d.over_s,
                format!(
                    " + backlog {} drained over {}",
                    num(d.waiting),
                    seconds(d.over_s)
                ),
            ),
            None => (0.0, String::new()),
        };
        out.push(Desire {
            metric: Metric::Arrivals,
            replicas: (offered + backlog) / spec.target_ongoing_requests,
            explain: format!(
                "{label} {} req/s × service {} = {} concurrent{note} / target {} per replica",
                num(rps),
                seconds(service),
                num(offered),
                num(spec.target_ongoing_requests)
            ),
        });
    }
    let sized_by_arrivals = !out.is_empty();
    if let Some(ongoing) = avg.ongoing.filter(|_| !sized_by_arrivals) {
        out.push(Desire {
            metric: Metric::Ongoing,
            replicas: ongoing / spec.target_ongoing_requests,
            explain: format!(
                "{label} {} ongoing / target {} per replica",
                num(ongoing),
                num(spec.target_ongoing_requests)
            ),
        });
    }
    let ready = avg.ready.unwrap_or(0.0);
    if ready <= 0.0 {
        return out;
    }
    let ready_text = num(ready);
    // Latency is not proportional to load below saturation, so it only
    // ever asks for more: a fast service says nothing about how many
    // replicas it could lose.
    if let (Some(max), Some(p95)) = (spec.max_p95_latency, avg.p95_latency_s) {
        let max_s = max.as_secs_f64();
        if p95 > max_s {
            out.push(Desire {
                metric: Metric::Latency,
                replicas: ready * p95 / max_s,
                explain: format!(
                    "{label} p95 latency {} over max {} on {ready_text} ready",
                    seconds(p95),
                    format_duration(max)
                ),
            });
        }
    }
    // Utilization and KV cache are proportional both ways (HPA's rule), so
    // they also hold replicas that removing would push over target.
    if let (Some(target), Some(util)) = (spec.target_gpu_utilization, avg.gpu_utilization) {
        out.push(Desire {
            metric: Metric::GpuUtilization,
            replicas: ready * util / target,
            explain: format!(
                "{label} GPU utilization {} / target {} on {ready_text} ready",
                percent(util),
                percent(target)
            ),
        });
    }
    if let (Some(target), Some(kv)) = (spec.target_kv_cache_usage, avg.kv_cache_usage) {
        out.push(Desire {
            metric: Metric::KvCache,
            replicas: ready * kv / target,
            explain: format!(
                "{label} KV cache {} / target {} on {ready_text} ready",
                percent(kv),
                percent(target)
            ),
        });
    }
    out
}

/// The largest desire; on a tie the first listed (ongoing requests) names it.
pub(super) fn strongest(desires: Vec<Desire>) -> Option<Desire> {
    desires
        .into_iter()
        .reduce(|best, d| if d.replicas > best.replicas { d } else { best })
}

/// Configured signals the freshest sample lacks. A scale-down on the
/// remaining ones could remove capacity the missing one would have kept
/// (HPA skips scale-down then too). A p95 with no traffic is not missing:
/// an idle engine has no latency to report.
pub(super) fn missing_signals(latest: &Signals, spec: &ScalingSpec) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if latest.ready == 0 {
        return missing;
    }
    let traffic = latest.ongoing > 0.0 || latest.requests_per_s > 0.0;
    if spec.max_p95_latency.is_some() && latest.p95_latency_s.is_none() && traffic {
        missing.push("p95 latency");
    }
    if spec.target_gpu_utilization.is_some() && latest.gpu_utilization.is_none() {
        missing.push("GPU utilization");
    }
    if spec.target_kv_cache_usage.is_some() && latest.kv_cache_usage.is_none() {
        missing.push("KV cache usage");
    }
    missing
}

/// A count of things with one decimal at most: "27", "20.5".
pub(crate) fn num(v: f64) -> String {
    // `+ 0.0` turns a rounded -0 into 0, which prints without a sign.
    let rounded = (v * 10.0).round() / 10.0 + 0.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

pub(super) fn percent(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

pub(super) fn seconds(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0}ms", v * 1000.0)
    } else {
        format!("{}s", num(v))
    }
}

/// A span as operators write it: "5m", "42s"; below a second, milliseconds.
pub(crate) fn span(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format_duration(d)
    } else {
        format_duration(Duration::from_secs(d.as_secs()))
    }
}
