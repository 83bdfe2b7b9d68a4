//! llama.cpp server (`--metrics`): `llamacpp:` gauges, no latency histogram.

use super::preset::Reading;
use super::prom::Exposition;

const WAITING: &str = "llamacpp:requests_deferred";
const RUNNING: &str = "llamacpp:requests_processing";
/// Only some builds export it; absent means unknown.
const KV_CACHE: &str = "llamacpp:kv_cache_usage_ratio";

pub const LOOKED_FOR: &[&str] = &[WAITING, RUNNING, KV_CACHE];

/// llama.cpp counts tokens, not finished requests, and keeps no request
/// latency: `p95_latency_s` stays unknown and `requests_per_s` is 0.
pub fn read(exp: &Exposition) -> Reading {
    Reading {
        waiting: exp.sum(WAITING),
        running: exp.sum(RUNNING),
        kv_cache_usage: exp.mean(KV_CACHE),
        ..Reading::default()
    }
}
