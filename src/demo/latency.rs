//! Latency math shared by the demo model server (a vLLM-style Prometheus
//! histogram) and the load generator (exact percentiles of what it measured).

use serde::Serialize;
use std::fmt::Write as _;

/// vLLM's bucket bounds for `vllm:e2e_request_latency_seconds` (v1 engine), so
/// the scraper's histogram arithmetic sees exactly what a real engine exports.
pub const VLLM_E2E_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// A Prometheus histogram of request latencies in seconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum_s: f64,
}

impl LatencyHistogram {
    /// `bounds` must be ascending, as Prometheus `le` labels are.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_s: 0.0,
        }
    }

    pub fn vllm_e2e() -> Self {
        Self::new(VLLM_E2E_LATENCY_BUCKETS)
    }

    pub fn observe(&mut self, seconds: f64) {
        // Prometheus buckets are inclusive: a value equal to a bound counts in it.
        let bucket = self.bounds.partition_point(|&le| le < seconds);
        self.counts[bucket] += 1;
        self.sum_s += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_s(&self) -> f64 {
        self.sum_s
    }

    /// `(upper bound, observations at or below it)`, ending with `+Inf` (as
    /// `f64::INFINITY`) whose count is the total.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut running = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(le, &n)| {
                running += n;
                (le, running)
            })
            .collect()
    }

    /// Appends the `_bucket`, `_sum` and `_count` series of `name` in the
    /// Prometheus text format; `labels` is the rendered label set without
    /// braces (`model_name="x"`), possibly empty.
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, n) in self.cumulative() {
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                // `{:?}` keeps the ".0" of whole numbers, as Python's client writes them.
                format!("{le:?}")
            };
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"{sep}{labels}}} {n}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {:?}", self.sum_s);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// The latency summary the load generator reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_s: f64,
    pub p90_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

impl Percentiles {
    /// Exact (nearest-rank) percentiles of `samples`; `None` when empty.
    pub fn from_samples(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            p50_s: nearest_rank(&sorted, 0.50)?,
            p90_s: nearest_rank(&sorted, 0.90)?,
            p95_s: nearest_rank(&sorted, 0.95)?,
            p99_s: nearest_rank(&sorted, 0.99)?,
            max_s: *sorted.last()?,
        })
    }
}

/// The smallest sample that at least `q` (0..=1) of `sorted` are at or below:
/// always a value that was observed, never an interpolation.
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_observed_values_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::from_samples(&samples).unwrap();
        assert_eq!(
            (p.p50_s, p.p90_s, p.p95_s, p.p99_s, p.max_s),
            (50.0, 90.0, 95.0, 99.0, 100.0)
        );

        let one = Percentiles::from_samples(&[0.25]).unwrap();
        assert_eq!((one.p50_s, one.p99_s, one.max_s), (0.25, 0.25, 0.25));

        // Two samples: the median is the lower one, p90 already the upper one.
        assert_eq!(nearest_rank(&[1.0, 2.0], 0.5), Some(1.0));
        assert_eq!(nearest_rank(&[1.0, 2.0], 0.9), Some(2.0));
        assert_eq!(Percentiles::from_samples(&[]), None);
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let mut h = LatencyHistogram::vllm_e2e();
        for s in [0.1, 0.3, 0.31, 2.0, 9000.0] {
            h.observe(s);
        }
        let cum = h.cumulative();
        assert_eq!(cum.len(), VLLM_E2E_LATENCY_BUCKETS.len() + 1);
        assert_eq!(cum[0], (0.3, 2), "0.3 itself counts in le=0.3");
        assert_eq!(cum[1], (0.5, 3));
        assert_eq!(cum.iter().find(|(le, _)| *le == 2.0), Some(&(2.0, 4)));
        assert_eq!(cum[cum.len() - 2], (7680.0, 4), "9000 s is only in +Inf");
        assert_eq!(cum.last(), Some(&(f64::INFINITY, 5)));
        assert!(cum.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(h.count(), 5);
        assert!((h.sum_s() - 9002.71).abs() < 1e-9);
    }

    #[test]
    fn histogram_renders_prometheus_text() {
        let mut h = LatencyHistogram::new(&[0.5, 1.0]);
        h.observe(0.75);
        let mut out = String::new();
        h.write_prometheus(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "model_name=\"m\"",
        );
        assert_eq!(
            out,
            "vllm:e2e_request_latency_seconds_bucket{le=\"0.5\",model_name=\"m\"} 0\n\
             vllm:e2e_request_latency_seconds_bucket{le=\"1.0\",model_name=\"m\"} 1\n\
             vllm:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 1\n\
             vllm:e2e_request_latency_seconds_sum{model_name=\"m\"} 0.75\n\
             vllm:e2e_request_latency_seconds_count{model_name=\"m\"} 1\n"
        );

        let mut bare = String::new();
        LatencyHistogram::new(&[1.0]).write_prometheus(&mut bare, "h", "");
        assert_eq!(
            bare,
            "h_bucket{le=\"1.0\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0.0\nh_count 0\n"
        );
    }
}
