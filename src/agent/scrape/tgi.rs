//! Hugging Face TGI: `tgi_` metrics from the router. Counters carry no `_total`
//! suffix in the exporter TGI uses; newer exporters add one, so both are read.

use super::histogram::CumulativeHistogram;
use super::preset::Reading;
use super::prom::Exposition;

const WAITING: &str = "tgi_queue_size";
const RUNNING: &str = "tgi_batch_current_size";
const LATENCY: &str = "tgi_request_duration";
const COMPLETED: &[&str] = &["tgi_request_success", "tgi_request_success_total"];
/// Every request the router took, finished or not.
const WORK: &[&str] = &["tgi_request_count", "tgi_request_count_total"];

pub const LOOKED_FOR: &[&str] = &[WAITING, RUNNING, LATENCY, "tgi_request_success"];

/// TGI exposes no KV-cache gauge: `kv_cache_usage` stays unknown.
pub fn read(exp: &Exposition) -> Reading {
    Reading {
        waiting: exp.sum(WAITING),
        running: exp.sum(RUNNING),
        latency: CumulativeHistogram::from_exposition(exp, LATENCY),
        completed: exp.sum_first(COMPLETED),
        work: exp.sum_first(WORK),
        ..Reading::default()
    }
}
