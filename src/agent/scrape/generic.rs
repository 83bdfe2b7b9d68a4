//! Any other model server, read by convention. A metric counts when its name
//! is one of the names below, or ends with one of them after a `_` or `:`
//! (so `myserver_requests_waiting` and `engine:queue_size` both match).
//! Conventions are tried in order; the first that matches any metric wins, and
//! all metrics matching it are added up.
//!
//! | signal | names, in order |
//! | --- | --- |
//! | waiting (gauge) | `num_requests_waiting`, `requests_waiting`, `waiting_requests`, `queue_size`, `queue_depth` |
//! | running (gauge) | `num_requests_running`, `requests_running`, `running_requests`, `requests_in_flight`, `inflight_requests` |
//! | KV-cache use (gauge, 0..1) | `kv_cache_usage_ratio`, `kv_cache_usage_perc`, `kv_cache_usage` |
//! | latency (histogram, seconds) | `request_duration_seconds`, `request_latency_seconds`, `e2e_request_latency_seconds` |
//! | finished requests (counter) | `requests_completed_total`, `request_success_total`, `requests_total` |

use super::histogram::CumulativeHistogram;
use super::preset::Reading;
use super::prom::Exposition;

const WAITING: &[&str] = &[
    "num_requests_waiting",
    "requests_waiting",
    "waiting_requests",
    "queue_size",
    "queue_depth",
];
const RUNNING: &[&str] = &[
    "num_requests_running",
    "requests_running",
    "running_requests",
    "requests_in_flight",
    "inflight_requests",
];
const KV_CACHE: &[&str] = &[
    "kv_cache_usage_ratio",
    "kv_cache_usage_perc",
    "kv_cache_usage",
];
const LATENCY: &[&str] = &[
    "request_duration_seconds",
    "request_latency_seconds",
    "e2e_request_latency_seconds",
];
const COMPLETED: &[&str] = &[
    "requests_completed_total",
    "request_success_total",
    "requests_total",
];

pub const LOOKED_FOR: &[&str] = &[
    "*num_requests_waiting",
    "*requests_waiting",
    "*queue_size",
    "*num_requests_running",
    "*requests_running",
    "*requests_in_flight",
    "*request_duration_seconds",
];

pub fn read(exp: &Exposition) -> Reading {
    Reading {
        waiting: sum_by_convention(exp, WAITING),
        running: sum_by_convention(exp, RUNNING),
        kv_cache_usage: KV_CACHE.iter().find_map(|c| {
            let names = matching(exp, c);
            let means: Vec<f64> = names.iter().filter_map(|n| exp.mean(n)).collect();
            (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64)
        }),
        latency: LATENCY.iter().find_map(|c| {
            let bucket = format!("{c}_bucket");
            matching(exp, &bucket).first().and_then(|name| {
                let family = name.strip_suffix("_bucket")?;
                CumulativeHistogram::from_exposition(exp, family)
            })
        }),
        completed: sum_by_convention(exp, COMPLETED),
        ..Reading::default()
    }
}

fn matching<'a>(exp: &'a Exposition, convention: &str) -> Vec<&'a str> {
    exp.names()
        .filter(|name| {
            name.strip_suffix(convention)
                .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with(['_', ':']))
        })
        .collect()
}

fn sum_by_convention(exp: &Exposition, conventions: &[&str]) -> Option<f64> {
    conventions.iter().find_map(|c| {
        matching(exp, c)
            .iter()
            .filter_map(|name| exp.sum(name))
            .reduce(|a, b| a + b)
    })
}
