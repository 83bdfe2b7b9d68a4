//! llama.cpp server (`--metrics`): `llamacpp:` gauges and token counters, no
//! request counter, latency histogram or KV-cache gauge (checked against
//! build b11434, tests/fixtures/metrics/llamacpp_b11434.txt; older builds
//! exported `llamacpp:kv_cache_usage_ratio`, since removed).

use super::preset::Reading;
use super::prom::Exposition;

const WAITING: &str = "llamacpp:requests_deferred";
const RUNNING: &str = "llamacpp:requests_processing";
/// Counters that move with every request, even one too short for the
/// gauges to be caught above zero between two scrapes.
const WORK: &[&str] = &[
    "llamacpp:prompt_tokens_total",
    "llamacpp:tokens_predicted_total",
    "llamacpp:n_decode_total",
];

pub const LOOKED_FOR: &[&str] = &[
    WAITING,
    RUNNING,
    "llamacpp:tokens_predicted_total",
    "llamacpp:n_decode_total",
];

/// llama.cpp counts tokens, not finished requests, and keeps no request
/// latency: `p95_latency_s` stays unknown and `requests_per_s` is 0, but its
/// token counters still tell a busy replica from an idle one.
pub fn read(exp: &Exposition) -> Reading {
    Reading {
        waiting: exp.sum(WAITING),
        running: exp.sum(RUNNING),
        work: exp.sum_all(WORK),
        ..Reading::default()
    }
}
