//! The gateway's Prometheus metrics: requests by status, rejections by
//! reason, retries, time held before dispatch and time to the first byte
//! per model; queue and in-flight gauges come from the dispatcher at render.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::demo::latency::LatencyHistogram;

use super::dispatch::ModelSnapshot;

/// Seconds: from a millisecond (dispatched at once) to minutes (a cold start).
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Seconds to the first response byte, held time included.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every series by model first, so that counting a request for a model
/// seen before allocates nothing.
#[derive(Default)]
struct Inner {
    requests: BTreeMap<String, BTreeMap<u16, u64>>,
    rejections: BTreeMap<String, BTreeMap<&'static str, u64>>,
    retries: BTreeMap<String, u64>,
    placements: BTreeMap<String, BTreeMap<&'static str, u64>>,
    wait: BTreeMap<String, LatencyHistogram>,
    ttft: BTreeMap<String, LatencyHistogram>,
}

/// `model`'s entry of `map`, made by `new` the first time.
fn of_model<'m, V>(
    map: &'m mut BTreeMap<String, V>,
    model: &str,
    new: impl FnOnce() -> V,
) -> &'m mut V {
    if !map.contains_key(model) {
        map.insert(model.to_string(), new());
    }
    map.get_mut(model).expect("inserted above")
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A response's status, by model (`""` when the request named none).
    pub fn response(&self, model: &str, status: u16) {
        self.with(|m| {
            *of_model(&mut m.requests, model, BTreeMap::new)
                .entry(status)
                .or_default() += 1
        });
    }

    pub fn rejection(&self, model: &str, reason: &'static str) {
        self.with(|m| {
            *of_model(&mut m.rejections, model, BTreeMap::new)
                .entry(reason)
                .or_default() += 1
        });
    }

    /// A request sent to a replica: how the replica was chosen ("load",
    /// "round-robin", "prefix-hit", "prefix-hash") and, for its first try,
    /// how long it was held before.
    pub fn placed(&self, model: &str, how: &'static str, held: Option<Duration>) {
        self.with(|m| {
            *of_model(&mut m.placements, model, BTreeMap::new)
                .entry(how)
                .or_default() += 1;
            if let Some(held) = held {
                of_model(&mut m.wait, model, || LatencyHistogram::new(WAIT_BUCKETS))
                    .observe(held.as_secs_f64());
            }
        });
    }

    pub fn retry(&self, model: &str) {
        self.with(|m| *of_model(&mut m.retries, model, || 0) += 1);
    }

    pub fn first_byte(&self, model: &str, after: Duration) {
        self.with(|m| {
            of_model(&mut m.ttft, model, || LatencyHistogram::new(TTFT_BUCKETS))
                .observe(after.as_secs_f64())
        });
    }

    pub fn retries(&self, model: &str) -> u64 {
        self.with(|m| m.retries.get(model).copied().unwrap_or(0))
    }

    /// The text exposition, with the dispatcher's gauges.
    pub fn render(&self, models: &[ModelSnapshot], connected: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP gpufleet_gateway_coordinator_connected Whether the routing stream from the coordinator is up.\n# TYPE gpufleet_gateway_coordinator_connected gauge\ngpufleet_gateway_coordinator_connected {}",
            u8::from(connected)
        );
        gauge(
            &mut out,
            "gpufleet_gateway_queued",
            "Requests held waiting for a replica with room.",
            models,
            |m| m.queued as f64,
        );
        gauge(
            &mut out,
            "gpufleet_gateway_in_flight",
            "Requests sent to replicas and not finished.",
            models,
            |m| f64::from(m.in_flight),
        );
        gauge(
            &mut out,
            "gpufleet_gateway_arrivals_per_second",
            "Requests arrived over the last second.",
            models,
            |m| m.arrivals_per_s,
        );
        gauge(
            &mut out,
            "gpufleet_gateway_ready_replicas",
            "Replicas the gateway routes to.",
            models,
            |m| m.replicas.len() as f64,
        );
        out.push_str("# HELP gpufleet_gateway_replica_in_flight Requests this gateway has in flight on each replica.\n# TYPE gpufleet_gateway_replica_in_flight gauge\n");
        for m in models {
            for r in &m.replicas {
                let _ = writeln!(
                    out,
                    "gpufleet_gateway_replica_in_flight{{model=\"{}\",replica=\"{}\",node=\"{}\"}} {}",
                    m.model, r.id, r.node, r.in_flight
                );
            }
        }
        self.with(|i| {
            out.push_str("# HELP gpufleet_gateway_requests_total Responses by model and HTTP status.\n# TYPE gpufleet_gateway_requests_total counter\n");
            for (model, codes) in &i.requests {
                for (code, n) in codes {
                    let _ = writeln!(out, "gpufleet_gateway_requests_total{{model=\"{}\",code=\"{code}\"}} {n}", escape(model));
                }
            }
            out.push_str("# HELP gpufleet_gateway_rejections_total Requests refused by the gateway, by reason.\n# TYPE gpufleet_gateway_rejections_total counter\n");
            for (model, reasons) in &i.rejections {
                for (reason, n) in reasons {
                    let _ = writeln!(out, "gpufleet_gateway_rejections_total{{model=\"{}\",reason=\"{reason}\"}} {n}", escape(model));
                }
            }
            out.push_str("# HELP gpufleet_gateway_retries_total Requests tried again on another replica before any response byte.\n# TYPE gpufleet_gateway_retries_total counter\n");
            for (model, n) in &i.retries {
                let _ = writeln!(out, "gpufleet_gateway_retries_total{{model=\"{}\"}} {n}", escape(model));
            }
            out.push_str("# HELP gpufleet_gateway_placements_total Requests sent to a replica, by how it was chosen (load, round-robin, prefix-hit, prefix-hash).\n# TYPE gpufleet_gateway_placements_total counter\n");
            for (model, hows) in &i.placements {
                for (how, n) in hows {
                    let _ = writeln!(
                        out,
                        "gpufleet_gateway_placements_total{{model=\"{}\",how=\"{how}\"}} {n}",
                        escape(model)
                    );
                }
            }
            out.push_str("# HELP gpufleet_gateway_wait_seconds Time a request was held before it was sent to a replica.\n# TYPE gpufleet_gateway_wait_seconds histogram\n");
            for (model, h) in &i.wait {
                h.write_prometheus(&mut out, "gpufleet_gateway_wait_seconds", &format!("model=\"{}\"", escape(model)));
            }
            out.push_str("# HELP gpufleet_gateway_ttft_seconds Time from arrival to the first response byte.\n# TYPE gpufleet_gateway_ttft_seconds histogram\n");
            for (model, h) in &i.ttft {
                h.write_prometheus(&mut out, "gpufleet_gateway_ttft_seconds", &format!("model=\"{}\"", escape(model)));
            }
        });
        out
    }
}

fn gauge(
    out: &mut String,
    name: &str,
    help: &str,
    models: &[ModelSnapshot],
    value: impl Fn(&ModelSnapshot) -> f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for m in models {
        let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", m.model, value(m));
    }
}

/// Model names from clients are arbitrary text: escaped as label values.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
