//! What a benchmark reads: percentiles of its own samples, and the
//! coordinator's cost from its `/metrics` page or from `/proc`.

use std::time::Duration;

use crate::exposition::ProcessStats;

/// The `q` quantile (0..=1) of `samples` (nearest rank); None when empty.
pub fn percentile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

/// The value of an unlabelled series `name` in a Prometheus text page.
pub fn scalar(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The cumulative buckets `(le, count)` of histogram `name`, in order.
pub fn buckets(page: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of the observations made between two readings of a
/// histogram, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; None without observations in between.
pub fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let want = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in delta {
        if n >= want {
            if le.is_infinite() {
                // Past the last finite bound: that bound is all we know.
                return Some(lower.0);
            }
            let share = if n > lower.1 {
                (want - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, n);
    }
    None
}

/// One reading of the coordinator's cost.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorSample {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub tick: Vec<(f64, f64)>,
    pub report: Vec<(f64, f64)>,
    pub fanout: Vec<(f64, f64)>,
}

/// Where the coordinator's cost is read from.
#[derive(Debug, Clone)]
pub enum CoordinatorProbe {
    /// Its `/metrics` URL: CPU, memory and the tick histograms.
    Metrics(reqwest::Client, String),
    /// Its pid on this host: CPU and memory only.
    Pid(u32),
    None,
}

impl CoordinatorProbe {
    pub fn new(metrics_url: Option<String>, pid: Option<u32>) -> CoordinatorProbe {
        match (metrics_url, pid) {
            (Some(url), _) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap_or_default();
                CoordinatorProbe::Metrics(client, url)
            }
            (None, Some(pid)) => CoordinatorProbe::Pid(pid),
            (None, None) => CoordinatorProbe::None,
        }
    }

    pub async fn sample(&self) -> anyhow::Result<CoordinatorSample> {
        match self {
            CoordinatorProbe::None => Ok(CoordinatorSample::default()),
            CoordinatorProbe::Pid(pid) => {
                let p = ProcessStats::of(&format!("/proc/{pid}"));
                if p.cpu_seconds.is_none() {
                    anyhow::bail!("no process {pid} on this host (--coordinator-pid)");
                }
                Ok(CoordinatorSample {
                    cpu_seconds: p.cpu_seconds,
                    rss_bytes: p.resident_bytes,
                    ..Default::default()
                })
            }
            CoordinatorProbe::Metrics(client, url) => {
                let page = client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| anyhow::anyhow!("cannot read {url} (--metrics): {e}"))?
                    .text()
                    .await?;
                Ok(CoordinatorSample {
                    cpu_seconds: scalar(&page, "process_cpu_seconds_total"),
                    rss_bytes: scalar(&page, "process_resident_memory_bytes").map(|b| b as u64),
                    tick: buckets(&page, "gpufleet_coordinator_tick_seconds"),
                    report: buckets(&page, "gpufleet_coordinator_report_seconds"),
                    fanout: buckets(&page, "gpufleet_coordinator_assignment_fanout_seconds"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50.0));
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut v, 1.0), Some(100.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn a_histogram_quantile_is_read_from_the_difference_of_two_pages() {
        let before =
            "h_bucket{le=\"0.01\"} 10\nh_bucket{le=\"0.1\"} 10\nh_bucket{le=\"+Inf\"} 10\n";
        let after = "process_cpu_seconds_total 12.5\nh_bucket{le=\"0.01\"} 10\nh_bucket{le=\"0.1\"} 110\nh_bucket{le=\"+Inf\"} 110\n";
        let (b, a) = (buckets(before, "h"), buckets(after, "h"));
        assert_eq!(a.len(), 3);
        // All 100 new observations are in (0.01, 0.1]: the median is halfway.
        let p50 = histogram_quantile(&b, &a, 0.5).unwrap();
        assert!((p50 - 0.055).abs() < 1e-9, "{p50}");
        assert_eq!(histogram_quantile(&a, &a, 0.5), None);
        assert_eq!(scalar(after, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(scalar(after, "process_cpu"), None);
    }
}
