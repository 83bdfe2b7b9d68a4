//! What a simulated run measured: latency distributions in constant memory
//! (log-bucketed histograms, O(1) per request), the per-policy report the CLI
//! prints, and the time series the plot draws.

use std::collections::VecDeque;

use serde::Serialize;

/// Latencies below this land in the first bucket (about 1 ms).
const MIN_EXP: i32 = -10;
/// Octaves covered above the minimum: up to 2^20 s, about 12 days.
const OCTAVES: u64 = 30;

/// A histogram with `2^sub_bits` buckets per power of two: the bucket of a
/// value is its float exponent and top mantissa bits, so recording is a shift.
/// Relative error is below 2^-sub_bits.
#[derive(Debug, Clone, PartialEq)]
pub struct LogHistogram {
    sub_bits: u32,
    counts: Vec<u64>,
    total: u64,
}

impl LogHistogram {
    /// 128 buckets per octave: quantiles within 0.8%.
    pub fn fine() -> Self {
        Self::new(7)
    }

    /// 16 buckets per octave: quantiles within 6%, for per-bin series.
    pub fn coarse() -> Self {
        Self::new(4)
    }

    fn new(sub_bits: u32) -> Self {
        LogHistogram {
            sub_bits,
            counts: vec![0; (OCTAVES << sub_bits) as usize],
            total: 0,
        }
    }

    fn shift(&self) -> u32 {
        52 - self.sub_bits
    }

    fn base(&self) -> u64 {
        2f64.powi(MIN_EXP).to_bits() >> self.shift()
    }

    fn index(&self, v: f64) -> usize {
        let lo = 2f64.powi(MIN_EXP);
        let v = if v.is_nan() { lo } else { v.max(lo) };
        let i = (v.to_bits() >> self.shift()).saturating_sub(self.base());
        (i as usize).min(self.counts.len() - 1)
    }

    pub fn record(&mut self, v: f64) {
        let i = self.index(v);
        self.counts[i] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &LogHistogram, sign: i64) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add_signed(sign * *b as i64);
        }
        self.total = self.total.saturating_add_signed(sign * other.total as i64);
    }

    pub fn clear(&mut self) {
        if self.total > 0 {
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.total = 0;
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1): the midpoint of its bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = f64::from_bits((i as u64 + self.base()) << self.shift());
                let hi = f64::from_bits((i as u64 + 1 + self.base()) << self.shift());
                return Some((lo + hi) / 2.0);
            }
        }
        None
    }
}

/// p95 of the requests completed over the last few seconds, as a model
/// server's scrape would report it.
#[derive(Debug, Clone)]
pub struct RecentLatency {
    seconds: VecDeque<LogHistogram>,
    window: LogHistogram,
}

/// Seconds of completions behind the p95 signal.
const RECENT_WINDOW_S: usize = 10;

impl Default for RecentLatency {
    fn default() -> Self {
        let mut seconds = VecDeque::with_capacity(RECENT_WINDOW_S);
        seconds.push_back(LogHistogram::coarse());
        RecentLatency {
            seconds,
            window: LogHistogram::coarse(),
        }
    }
}

impl RecentLatency {
    pub fn record(&mut self, latency_s: f64) {
        self.window.record(latency_s);
        if let Some(current) = self.seconds.back_mut() {
            current.record(latency_s);
        }
    }

    pub fn p95(&self) -> Option<f64> {
        self.window.quantile(0.95)
    }

    /// Starts a new second, forgetting the oldest.
    pub fn roll(&mut self) {
        if self.seconds.len() >= RECENT_WINDOW_S {
            if let Some(mut oldest) = self.seconds.pop_front() {
                self.window.merge(&oldest, -1);
                oldest.clear();
                self.seconds.push_back(oldest);
                return;
            }
        }
        self.seconds.push_back(LogHistogram::coarse());
    }
}

/// One request's path through the fleet (kept only when asked, for tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub arrival_s: f64,
    pub start_s: f64,
    /// When the first token is out: the start plus the prompt's prefill.
    pub first_token_s: f64,
    pub finish_s: f64,
}

pub use crate::config::model::SloKind;

/// Running totals of one policy's run.
#[derive(Debug, Clone)]
pub struct Metrics {
    slo_s: f64,
    slo_kind: SloKind,
    requests: u64,
    within_slo: u64,
    queue_sum_s: f64,
    latency: LogHistogram,
    timeline: Timeline,
    pub recent: RecentLatency,
    outcomes: Option<Vec<Outcome>>,
}

impl Metrics {
    pub fn new(slo_s: f64, timeline: Timeline, keep_outcomes: bool) -> Self {
        Metrics {
            slo_s,
            slo_kind: SloKind::E2e,
            requests: 0,
            within_slo: 0,
            queue_sum_s: 0.0,
            latency: LogHistogram::fine(),
            timeline,
            recent: RecentLatency::default(),
            outcomes: keep_outcomes.then(Vec::new),
        }
    }

    /// Bounds time to first token instead of end-to-end latency.
    pub fn with_slo_kind(mut self, kind: SloKind) -> Self {
        self.slo_kind = kind;
        self
    }

    pub fn on_arrival(&mut self, t: f64) {
        self.timeline.arrival(t);
    }

    /// A request served, recorded when it finishes (at the run's end, with
    /// the finish its batch would give it).
    pub fn on_served(&mut self, o: Outcome) {
        let latency = o.finish_s - o.arrival_s;
        let bounded = match self.slo_kind {
            SloKind::E2e => latency,
            SloKind::Ttft => o.first_token_s - o.arrival_s,
        };
        self.requests += 1;
        if bounded <= self.slo_s {
            self.within_slo += 1;
        }
        self.queue_sum_s += o.start_s - o.arrival_s;
        self.latency.record(latency);
        self.timeline.latency(o.arrival_s, latency);
        if let Some(log) = &mut self.outcomes {
            log.push(o);
        }
    }

    /// A request the run ended without serving: it missed the SLO, and its
    /// latency so far is a lower bound.
    pub fn on_unfinished(&mut self, arrival_s: f64, end_s: f64) {
        self.requests += 1;
        self.queue_sum_s += end_s - arrival_s;
        self.latency.record(end_s - arrival_s);
        self.timeline.latency(arrival_s, end_s - arrival_s);
    }

    pub fn on_tick(&mut self, t: f64, replicas: u32) {
        self.timeline.replicas(t, replicas);
    }

    pub fn outcomes(&self) -> &[Outcome] {
        self.outcomes.as_deref().unwrap_or(&[])
    }

    pub fn into_parts(self, counts: Counts, policy: &str) -> (PolicyReport, Series) {
        let q = |p| self.latency.quantile(p).unwrap_or(0.0);
        let n = self.requests.max(1) as f64;
        let report = PolicyReport {
            policy: policy.to_string(),
            requests: self.requests,
            slo_share: if self.requests == 0 {
                1.0
            } else {
                self.within_slo as f64 / n
            },
            p50_s: q(0.50),
            p95_s: q(0.95),
            p99_s: q(0.99),
            mean_queue_s: self.queue_sum_s / n,
            gpu_hours: counts.gpu_hours,
            cold_starts: counts.cold_starts,
            warm_starts: counts.warm_starts,
            scale_actions: counts.scale_actions,
            unfinished: counts.unfinished,
            peak_replicas: counts.peak_replicas,
            oracle_gpu_hours: 0.0,
            gpu_hours_vs_oracle: None,
        };
        (report, self.timeline.series())
    }
}

/// Counters the fleet and the engine keep, handed over at the end.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    pub gpu_hours: f64,
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub scale_actions: u64,
    pub unfinished: u64,
    pub peak_replicas: u32,
}

/// One policy's results: the row of the comparison (`-o json` prints these).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    pub requests: u64,
    /// Share of requests whose end-to-end latency was within the SLO (0..1).
    pub slo_share: f64,
    pub p50_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub mean_queue_s: f64,
    pub gpu_hours: f64,
    pub cold_starts: u64,
    pub warm_starts: u64,
    /// Changes of the desired replica count.
    pub scale_actions: u64,
    /// Requests still queued or running when the run gave up draining.
    pub unfinished: u64,
    pub peak_replicas: u32,
    /// The oracle's lower bound at gpufleet's SLO share (see `sim::oracle`).
    pub oracle_gpu_hours: f64,
    /// GPU-hours over that bound (`null` when the bound is 0).
    pub gpu_hours_vs_oracle: Option<f64>,
}

impl PolicyReport {
    /// The oracle's row: a bound, not a run, so it has no latencies,
    /// starts or actions of its own (they read 0).
    pub fn oracle(requests: u64, slo_share: f64, gpu_hours: f64) -> PolicyReport {
        PolicyReport {
            policy: "oracle".into(),
            requests,
            slo_share,
            p50_s: 0.0,
            p95_s: 0.0,
            p99_s: 0.0,
            mean_queue_s: 0.0,
            gpu_hours,
            cold_starts: 0,
            warm_starts: 0,
            scale_actions: 0,
            unfinished: 0,
            peak_replicas: 0,
            oracle_gpu_hours: gpu_hours,
            gpu_hours_vs_oracle: (gpu_hours > 0.0).then_some(1.0),
        }
    }
}

/// Per-bin values over the run, for the plot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub bin_s: f64,
    pub offered_rps: Vec<f64>,
    /// Mean replicas (starting, ready or draining) over the bin.
    pub replicas: Vec<f64>,
    /// p95 latency of the requests that arrived in the bin.
    pub p95_s: Vec<Option<f64>>,
}

/// Accumulates the series in fixed bins over the trace's span.
#[derive(Debug, Clone)]
pub struct Timeline {
    bin_s: f64,
    arrivals: Vec<u64>,
    replica_sum: Vec<f64>,
    ticks: Vec<u32>,
    latency: Vec<LogHistogram>,
}

impl Timeline {
    /// About `bins` bins over `duration_s`, each a whole number of seconds.
    pub fn new(duration_s: f64, bins: usize) -> Self {
        let bins = bins.max(1);
        let bin_s = (duration_s / bins as f64).ceil().max(1.0);
        let n = ((duration_s / bin_s).ceil() as usize).max(1);
        Timeline {
            bin_s,
            arrivals: vec![0; n],
            replica_sum: vec![0.0; n],
            ticks: vec![0; n],
            latency: vec![LogHistogram::coarse(); n],
        }
    }

    fn bin(&self, t: f64) -> usize {
        ((t.max(0.0) / self.bin_s) as usize).min(self.arrivals.len() - 1)
    }

    fn arrival(&mut self, t: f64) {
        let b = self.bin(t);
        self.arrivals[b] += 1;
    }

    fn latency(&mut self, arrival: f64, latency: f64) {
        let b = self.bin(arrival);
        self.latency[b].record(latency);
    }

    fn replicas(&mut self, t: f64, n: u32) {
        // Ticks past the trace's end (draining) would skew the last bin.
        if t / self.bin_s > self.arrivals.len() as f64 {
            return;
        }
        let b = self.bin(t);
        self.replica_sum[b] += f64::from(n);
        self.ticks[b] += 1;
    }

    fn series(&self) -> Series {
        Series {
            bin_s: self.bin_s,
            offered_rps: self
                .arrivals
                .iter()
                .map(|a| *a as f64 / self.bin_s)
                .collect(),
            replicas: self
                .replica_sum
                .iter()
                .zip(&self.ticks)
                .map(|(s, n)| if *n == 0 { 0.0 } else { s / f64::from(*n) })
                .collect(),
            p95_s: self.latency.iter().map(|h| h.quantile(0.95)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut h = LogHistogram::fine();
        for i in 1..=1000 {
            h.record(f64::from(i) * 0.01);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((p50 - 5.0).abs() / 5.0 < 0.008, "{p50}");
        assert!((p99 - 9.9).abs() / 9.9 < 0.008, "{p99}");
        assert_eq!(h.total(), 1000);
        assert_eq!(LogHistogram::fine().quantile(0.5), None);
    }

    #[test]
    fn tiny_huge_and_broken_values_stay_in_range() {
        let mut h = LogHistogram::coarse();
        for v in [0.0, -1.0, f64::NAN, 1e-9, 1e12, f64::INFINITY] {
            h.record(v);
        }
        assert_eq!(h.total(), 6);
        assert!(h.quantile(0.0).unwrap() < 0.002);
        assert!(h.quantile(1.0).unwrap() > 1e5);
    }

    #[test]
    fn recent_latency_forgets_old_seconds() {
        let mut r = RecentLatency::default();
        r.record(8.0);
        assert!((r.p95().unwrap() - 8.0).abs() < 0.5);
        for _ in 0..RECENT_WINDOW_S {
            r.roll();
            r.record(1.0);
        }
        assert!((r.p95().unwrap() - 1.0).abs() < 0.1, "{:?}", r.p95());
    }

    #[test]
    fn timeline_bins_cover_the_span() {
        let mut t = Timeline::new(600.0, 10);
        t.arrival(0.5);
        t.arrival(59.0);
        t.arrival(599.0);
        t.arrival(900.0);
        t.replicas(30.0, 2);
        t.replicas(31.0, 4);
        let s = t.series();
        assert_eq!(s.bin_s, 60.0);
        assert_eq!(s.offered_rps.len(), 10);
        assert_eq!(s.offered_rps[0], 2.0 / 60.0);
        assert_eq!(
            s.offered_rps[9],
            2.0 / 60.0,
            "late arrivals land in the last bin"
        );
        assert_eq!(s.replicas[0], 3.0);
    }
}
