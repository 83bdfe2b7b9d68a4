//! The oracle: a clairvoyant lower bound on GPU-hours. Whatever a policy
//! does, each request it serves needs its service time (alone) of work, a
//! replica completes at most `concurrency` × the full batch's speed of it
//! per second, and only the part inside the trace's span is counted. So
//! serving `k` requests costs at least the `k` smallest in-span service
//! times, packed perfectly into full replicas, with no loading, no idle
//! replica and no queue. The bound for an SLO share `s` takes `k = ⌈s × N⌉`:
//! no policy reaching `s` can use fewer GPU-hours (property-tested).
//! Every policy also keeps the spec's `min_replicas` placed the whole span,
//! so the bound is at least that floor's GPU-hours.

use super::serving::ServingModel;
use super::trace::Request;

/// Log-spaced buckets of in-span service time; a request is counted at its
/// bucket's lower edge, so the sum stays below the exact one (within 1%).
const BUCKETS: usize = 4096;
const SMALLEST_S: f64 = 1e-3;
const RATIO: f64 = 1.01;

/// In-span service times of a trace, bucketed in constant memory.
#[derive(Debug, Clone)]
pub struct ServiceBuckets {
    counts: Vec<u64>,
    requests: u64,
}

impl ServiceBuckets {
    pub fn of(requests: impl Iterator<Item = Request>, serving: &ServingModel, end_s: f64) -> Self {
        let mut b = ServiceBuckets {
            counts: vec![0; BUCKETS + 1],
            requests: 0,
        };
        for r in requests {
            let w = serving.service_s(&r).min(end_s - r.arrival_s).max(0.0);
            b.counts[bucket(w)] += 1;
            b.requests += 1;
        }
        b
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// GPU-hours at least, for `share` (0..=1) of the requests within the
    /// SLO, with `gpus` per replica that completes at most `throughput`
    /// service seconds per second (its slots at the full batch's speed).
    pub fn gpu_hours(&self, share: f64, gpus: u32, throughput: f64) -> f64 {
        let mut k = (share.clamp(0.0, 1.0) * self.requests as f64 - 1e-9).ceil() as u64;
        let mut seconds = 0.0;
        for (i, n) in self.counts.iter().enumerate() {
            if k == 0 {
                break;
            }
            let take = (*n).min(k);
            seconds += take as f64 * lower_edge(i);
            k -= take;
        }
        seconds * f64::from(gpus) / throughput.max(f64::MIN_POSITIVE) / 3600.0
    }
}

/// GPU-hours the spec's minimum alone costs over `span_s`: no policy
/// within the spec's bounds keeps fewer replicas placed at any instant.
pub fn floor_gpu_hours(min_replicas: u32, gpus: u32, span_s: f64) -> f64 {
    f64::from(min_replicas) * f64::from(gpus) * span_s.max(0.0) / 3600.0
}

fn bucket(w: f64) -> usize {
    // NaN lands here too: it is no measurable service time.
    if w.is_nan() || w < SMALLEST_S {
        return 0;
    }
    (1 + ((w / SMALLEST_S).ln() / RATIO.ln()).floor() as usize).min(BUCKETS)
}

fn lower_edge(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        SMALLEST_S * RATIO.powi(i as i32 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_edges_never_exceed_the_value() {
        for w in [0.0, 5e-4, 1e-3, 0.5, 4.2, 100.0, 1e9] {
            assert!(lower_edge(bucket(w)) <= w, "{w}");
        }
        assert!(lower_edge(bucket(4.2)) > 4.2 / RATIO);
    }
}
