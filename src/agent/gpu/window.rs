//! Per-GPU rolling windows of utilization and memory used over the last 10 s
//! and 60 s, so that the coordinator sees sustained load rather than one
//! instantaneous reading. Pure: every call takes `now`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::domain::{GpuSample, WindowStats};

pub const SHORT_WINDOW: Duration = Duration::from_secs(10);
pub const LONG_WINDOW: Duration = Duration::from_secs(60);

/// Points kept per GPU whatever the sample interval: at the default 1 s
/// interval the long window needs 61; a very short interval loses the oldest
/// part of the 60 s window instead of growing memory.
pub const MAX_POINTS_PER_GPU: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    utilization_pct: f64,
    memory_used_bytes: f64,
}

/// The windows of every GPU on the host.
#[derive(Debug, Default)]
pub struct GpuWindows {
    gpus: BTreeMap<u32, VecDeque<Point>>,
}

impl GpuWindows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds these samples to the windows and fills each sample's
    /// `utilization_*` and `memory_used_*` stats. GPUs absent from `samples`
    /// are forgotten.
    pub fn record(&mut self, samples: &mut [GpuSample], now: Instant) {
        self.gpus
            .retain(|index, _| samples.iter().any(|s| s.index == *index));
        for sample in samples.iter_mut() {
            let points = self.gpus.entry(sample.index).or_default();
            points.push_back(Point {
                at: now,
                utilization_pct: sample.utilization_pct,
                memory_used_bytes: sample.memory_used_bytes as f64,
            });
            while points
                .front()
                .is_some_and(|p| now.saturating_duration_since(p.at) > LONG_WINDOW)
            {
                points.pop_front();
            }
            while points.len() > MAX_POINTS_PER_GPU {
                points.pop_front();
            }
            let within = |window: Duration| {
                points
                    .iter()
                    .filter(move |p| now.saturating_duration_since(p.at) <= window)
            };
            sample.utilization_10s = window_stats(within(SHORT_WINDOW).map(|p| p.utilization_pct));
            sample.utilization_60s = window_stats(within(LONG_WINDOW).map(|p| p.utilization_pct));
            sample.memory_used_10s =
                window_stats(within(SHORT_WINDOW).map(|p| p.memory_used_bytes));
            sample.memory_used_60s = window_stats(within(LONG_WINDOW).map(|p| p.memory_used_bytes));
        }
    }
}

/// Last, mean, max and 95th percentile (nearest rank) of values in time
/// order. All zero for no values.
pub fn window_stats(values: impl Iterator<Item = f64>) -> WindowStats {
    let mut sorted: Vec<f64> = values.collect();
    let Some(&last) = sorted.last() else {
        return WindowStats::default();
    };
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let rank = (0.95 * n as f64).ceil() as usize;
    WindowStats {
        last,
        mean: sorted.iter().sum::<f64>() / n as f64,
        max: sorted[n - 1],
        p95: sorted[rank.clamp(1, n) - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: u32, util: f64, mem: u64) -> GpuSample {
        GpuSample {
            index,
            utilization_pct: util,
            memory_used_bytes: mem,
            ..GpuSample::default()
        }
    }

    #[test]
    fn stats_of_a_known_series() {
        let s = window_stats((1..=100).map(f64::from));
        assert_eq!(s.last, 100.0);
        assert_eq!(s.max, 100.0);
        assert_eq!(s.mean, 50.5);
        assert_eq!(s.p95, 95.0);

        let s = window_stats([30.0, 10.0, 20.0].into_iter());
        assert_eq!((s.last, s.max, s.mean, s.p95), (20.0, 30.0, 20.0, 30.0));
        assert_eq!(window_stats(std::iter::empty()), WindowStats::default());
    }

    #[test]
    fn short_window_forgets_sooner_than_the_long_one() {
        let t0 = Instant::now();
        let mut windows = GpuWindows::new();
        // 20 s of a busy GPU, then 10 s idle, one sample per second.
        for s in 0..30u64 {
            let util = if s < 20 { 100.0 } else { 0.0 };
            let mut samples = [sample(0, util, 1000)];
            windows.record(&mut samples, t0 + Duration::from_secs(s));
            if s == 29 {
                let [g] = samples;
                assert_eq!(g.utilization_10s.max, 100.0, "10 s window spans 19..=29");
                assert_eq!(g.utilization_10s.last, 0.0);
                assert!((g.utilization_10s.mean - 100.0 / 11.0).abs() < 1e-9);
                assert_eq!(g.utilization_60s.mean, 2000.0 / 30.0);
                assert_eq!(g.utilization_60s.p95, 100.0);
                assert_eq!(g.memory_used_60s.last, 1000.0);
            }
        }
    }

    #[test]
    fn old_points_leave_the_long_window() {
        let t0 = Instant::now();
        let mut windows = GpuWindows::new();
        windows.record(&mut [sample(0, 90.0, 5)], t0);
        let mut samples = [sample(0, 10.0, 5)];
        windows.record(&mut samples, t0 + Duration::from_secs(61));
        assert_eq!(samples[0].utilization_60s.max, 10.0);
        assert_eq!(windows.gpus[&0].len(), 1);
    }

    #[test]
    fn memory_stays_bounded_at_any_sample_rate() {
        let t0 = Instant::now();
        let mut windows = GpuWindows::new();
        for ms in 0..5000u64 {
            windows.record(&mut [sample(0, 1.0, 1)], t0 + Duration::from_millis(ms));
        }
        assert_eq!(windows.gpus[&0].len(), MAX_POINTS_PER_GPU);
    }

    #[test]
    fn gpus_are_kept_apart_and_vanished_ones_are_dropped() {
        let t0 = Instant::now();
        let mut windows = GpuWindows::new();
        let mut samples = [sample(0, 100.0, 1), sample(1, 0.0, 2)];
        windows.record(&mut samples, t0);
        assert_eq!(samples[0].utilization_10s.max, 100.0);
        assert_eq!(samples[1].utilization_10s.max, 0.0);
        assert_eq!(samples[1].memory_used_10s.last, 2.0);
        windows.record(&mut [sample(1, 0.0, 2)], t0 + Duration::from_secs(1));
        assert!(!windows.gpus.contains_key(&0));
    }
}
