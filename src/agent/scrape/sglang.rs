//! SGLang (`--enable-metrics`): `sglang:`-prefixed metrics labelled by model
//! (and, with data-parallel attention, by rank).

use super::histogram::CumulativeHistogram;
use super::preset::Reading;
use super::prom::Exposition;

const WAITING: &str = "sglang:num_queue_reqs";
const RUNNING: &str = "sglang:num_running_reqs";
/// Fraction of the KV token pool in use.
const KV_CACHE: &str = "sglang:token_usage";
const LATENCY: &str = "sglang:e2e_request_latency_seconds";
/// Finished requests: the e2e histogram's own count, which SGLang keeps for
/// every request it completes (it has no separate success counter).
const COMPLETED: &str = "sglang:e2e_request_latency_seconds_count";

const WORK: &[&str] = &[
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
];

pub const LOOKED_FOR: &[&str] = &[WAITING, RUNNING, KV_CACHE, LATENCY];

pub fn read(exp: &Exposition) -> Reading {
    Reading {
        waiting: exp.sum(WAITING),
        running: exp.sum(RUNNING),
        kv_cache_usage: exp.mean(KV_CACHE),
        latency: CumulativeHistogram::from_exposition(exp, LATENCY),
        completed: exp.sum(COMPLETED),
        work: exp.sum_all(WORK),
        ..Reading::default()
    }
}
