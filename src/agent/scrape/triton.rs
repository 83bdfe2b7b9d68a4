//! NVIDIA Triton: `nv_inference_` counters per model. Triton keeps cumulative
//! durations rather than latency histograms by default, so latency is their
//! growth over the window divided by the requests that finished in it, and
//! running requests are the executing time per second of window (Little's
//! law). With the TensorRT-LLM backend, its own queue, batch and KV-cache
//! gauges (`nv_trt_llm_`) are read as well.

use super::preset::Reading;
use super::prom::Exposition;

/// Requests in Triton's scheduler queue, not yet handed to the backend.
const PENDING: &str = "nv_inference_pending_request_count";
const SUCCESS: &str = "nv_inference_request_success";
const FAILURE: &str = "nv_inference_request_failure";
/// Counts inferences (batch items) rather than requests: the denominator
/// only when the request counters are missing.
const INFERENCES: &str = "nv_inference_count";
const REQUEST_US: &str = "nv_inference_request_duration_us";
const QUEUE_US: &str = "nv_inference_queue_duration_us";
/// Present when Triton runs with `--metrics-config summary_latencies=true`.
const REQUEST_SUMMARY_US: &str = "nv_inference_request_summary_us";
const TRT_REQUESTS: &str = "nv_trt_llm_request_metrics";
const TRT_KV_BLOCKS: &str = "nv_trt_llm_kv_cache_block_metrics";

const MICROS: f64 = 1e6;

pub const LOOKED_FOR: &[&str] = &[PENDING, SUCCESS, REQUEST_US, QUEUE_US, TRT_REQUESTS];

pub fn read(exp: &Exposition) -> Reading {
    let request_us = exp.sum(REQUEST_US);
    let queue_us = exp.sum(QUEUE_US);
    let success = exp.sum(SUCCESS);
    let requests = match (success, exp.sum(FAILURE)) {
        (Some(ok), failed) => Some(ok + failed.unwrap_or(0.0)),
        (None, _) => exp.sum(INFERENCES),
    };
    Reading {
        waiting: add(
            exp.sum(PENDING),
            exp.sum_where(TRT_REQUESTS, "request_type", "waiting"),
        ),
        running: exp.sum_where(TRT_REQUESTS, "request_type", "scheduled"),
        kv_cache_usage: trt_kv_cache_usage(exp),
        latency_p95: exp
            .samples(REQUEST_SUMMARY_US)
            .iter()
            .filter(|s| s.label("quantile").and_then(|q| q.parse::<f64>().ok()) == Some(0.95))
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .reduce(f64::max)
            .map(|us| us / MICROS),
        completed: success,
        work: exp.sum(INFERENCES),
        latency_seconds: request_us.map(|us| us / MICROS),
        latency_requests: requests,
        busy_seconds: match (request_us, queue_us) {
            (Some(total), Some(queued)) => Some((total - queued).max(0.0) / MICROS),
            _ => None,
        },
        latency: None,
    }
}

/// The backend's own fraction when it reports one, else used over max blocks.
fn trt_kv_cache_usage(exp: &Exposition) -> Option<f64> {
    let block = |kind| exp.sum_where(TRT_KV_BLOCKS, "kv_cache_block_type", kind);
    block("fraction").or_else(|| match (block("used"), block("max")) {
        (Some(used), Some(max)) if max > 0.0 => Some(used / max),
        _ => None,
    })
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}
