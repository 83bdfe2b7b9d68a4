//! vLLM: `vllm:`-prefixed metrics (note the colon), one label set per model
//! and, with data parallelism, per engine.

use super::histogram::CumulativeHistogram;
use super::preset::Reading;
use super::prom::Exposition;

const WAITING: &str = "vllm:num_requests_waiting";
const RUNNING: &str = "vllm:num_requests_running";
/// `kv_cache_usage_perc` since V1; `gpu_cache_usage_perc` before (a 0..1
/// fraction despite the name, both of them).
const KV_CACHE: &[&str] = &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];
const LATENCY: &str = "vllm:e2e_request_latency_seconds";
const COMPLETED: &str = "vllm:request_success_total";
const WORK: &[&str] = &["vllm:prompt_tokens_total", "vllm:generation_tokens_total"];

pub const LOOKED_FOR: &[&str] = &[
    WAITING,
    RUNNING,
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    LATENCY,
    COMPLETED,
];

pub fn read(exp: &Exposition) -> Reading {
    Reading {
        waiting: exp.sum(WAITING),
        running: exp.sum(RUNNING),
        kv_cache_usage: KV_CACHE.iter().find_map(|name| exp.mean(name)),
        latency: CumulativeHistogram::from_exposition(exp, LATENCY),
        completed: exp.sum(COMPLETED),
        work: exp.sum_all(WORK),
        ..Reading::default()
    }
}
