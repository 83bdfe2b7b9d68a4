//! What the autoscaler remembers between ticks: the signal samples of the
//! last stable window, and the highest desire of the last scale-down delay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Signals;

/// Hard cap on kept samples, whatever the window: one hour of 1 s ticks
/// fits, and a faster tick only shortens the remembered window.
pub(super) const MAX_SAMPLES: usize = 4096;

/// The signal samples of a sliding window, oldest first.
#[derive(Debug, Clone, Default)]
pub(super) struct SignalHistory {
    samples: VecDeque<(Instant, Signals)>,
}

/// Window means of each signal, over the samples that could measure it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct WindowAverage {
    /// Samples with at least one ready replica: only those measure load.
    pub measured: usize,
    pub ongoing: Option<f64>,
    pub p95_latency_s: Option<f64>,
    pub gpu_utilization: Option<f64>,
    pub kv_cache_usage: Option<f64>,
    pub requests_per_s: Option<f64>,
    /// Waiting requests (the queued part of `ongoing`), where engines say.
    pub waiting: Option<f64>,
    /// Mean ready replicas behind the measured samples: the base that the
    /// per-replica signals (latency, utilization, KV cache) scale.
    pub ready: Option<f64>,
}

impl SignalHistory {
    /// Adds a sample; one older than the newest is dropped, as a clock never
    /// goes back and a late sample would distort the windows.
    pub fn push(&mut self, now: Instant, signals: Signals) {
        if self.samples.back().is_some_and(|(t, _)| *t > now) {
            return;
        }
        self.samples.push_back((now, signals));
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Drops samples older than `keep` before `now`.
    pub fn prune(&mut self, now: Instant, keep: Duration) {
        let Some(cutoff) = now.checked_sub(keep) else {
            return;
        };
        while self.samples.front().is_some_and(|(t, _)| *t < cutoff) {
            self.samples.pop_front();
        }
    }

    /// The newest sample's ready and starting counts, updated in place.
    pub fn refresh_counts(&mut self, ready: u32, starting: u32) {
        if let Some((_, s)) = self.samples.back_mut() {
            s.ready = ready;
            s.starting = starting;
        }
    }

    pub fn latest(&self) -> Option<(Instant, &Signals)> {
        self.samples.back().map(|(t, s)| (*t, s))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Means over the samples of the `window` that ends at `now` (its start
    /// excluded, so a 6 s window over 1 s ticks holds 6 samples).
    pub fn average(&self, now: Instant, window: Duration) -> WindowAverage {
        let cutoff = now.checked_sub(window);
        WindowAverage::of(
            self.samples
                .iter()
                .rev()
                .take_while(|(t, _)| cutoff.is_none_or(|c| *t > c))
                .filter(|(t, _)| *t <= now)
                .map(|(_, s)| s),
        )
    }

    /// Means over the samples from `from` (included) to `now`.
    pub fn average_from(&self, from: Instant, now: Instant) -> WindowAverage {
        WindowAverage::of(
            self.samples
                .iter()
                .rev()
                .take_while(|(t, _)| *t >= from)
                .filter(|(t, _)| *t <= now)
                .map(|(_, s)| s),
        )
    }

    /// Since when every measured sample has met `over`, looking back no
    /// further than `window` before `now`: the start of a surge still under
    /// way. `None` when the newest measured sample does not meet it.
    pub fn over_since(
        &self,
        now: Instant,
        window: Duration,
        over: impl Fn(&WindowAverage) -> bool,
    ) -> Option<Instant> {
        let cutoff = now.checked_sub(window);
        let mut since = None;
        for (t, s) in self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| cutoff.is_none_or(|c| *t > c))
            .filter(|(t, s)| *t <= now && carries_demand(s))
        {
            if !over(&WindowAverage::of(std::iter::once(s))) {
                break;
            }
            since = Some(*t);
        }
        since
    }
}

/// Whether a sample says what the demand was. Replicas' signals mean
/// something only while one is ready to be scraped; with none ready, a
/// gateway's report of requests it holds or saw arrive still does (a
/// sample of zeros then is only the absence of news).
pub(super) fn carries_demand(s: &Signals) -> bool {
    s.ready > 0 || s.ongoing > 0.0 || s.requests_per_s > 0.0
}

/// A straight line through the arrival rates of the measured samples
/// since some instant (least squares), read at the newest sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Trend {
    /// Requests per second, on the line at the newest sample.
    pub rps_now: f64,
    /// Change of the rate, requests per second per second.
    pub slope: f64,
    /// The slope's standard error (from the residuals).
    pub slope_se: f64,
    /// Seconds from the first sample to the newest.
    pub span_s: f64,
}

impl SignalHistory {
    /// The arrival rate's line over the measured samples from `from` to
    /// `now` (at least four, spread over time), `None` with fewer.
    pub fn arrival_trend(&self, from: Instant, now: Instant) -> Option<Trend> {
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| *t >= from)
            .filter(|(t, s)| *t <= now && carries_demand(s) && s.requests_per_s.is_finite())
            .map(|(t, s)| {
                (
                    -now.saturating_duration_since(*t).as_secs_f64(),
                    s.requests_per_s,
                )
            })
            .collect();
        let n = points.len() as f64;
        if points.len() < 4 {
            return None;
        }
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_r = points.iter().map(|p| p.1).sum::<f64>() / n;
        let stt: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
        if stt <= 0.0 {
            return None;
        }
        let slope = points
            .iter()
            .map(|p| (p.0 - mean_t) * (p.1 - mean_r))
            .sum::<f64>()
            / stt;
        let at = |t: f64| mean_r + slope * (t - mean_t);
        let rss: f64 = points.iter().map(|p| (p.1 - at(p.0)).powi(2)).sum();
        let newest = points.iter().map(|p| p.0).fold(f64::MIN, f64::max);
        let oldest = points.iter().map(|p| p.0).fold(f64::MAX, f64::min);
        Some(Trend {
            rps_now: at(newest),
            slope,
            slope_se: (rss / (n - 2.0) / stt).sqrt(),
            span_s: newest - oldest,
        })
    }
}

impl SignalHistory {
    /// Requests per second the ready replicas completed per replica over
    /// the measured samples from `from` to `now`, as arrivals less the
    /// queue's growth: `None` over less than `min_s` or without a queue
    /// throughout (only a full replica's completions say what it can do).
    pub fn completed_per_replica(&self, from: Instant, now: Instant, min_s: f64) -> Option<f64> {
        let points: Vec<(Instant, &Signals)> = self
            .samples
            .iter()
            .filter(|(t, s)| *t >= from && *t <= now && s.ready > 0)
            .map(|(t, s)| (*t, s))
            .collect();
        let (first, last) = (points.first()?, points.last()?);
        let elapsed = last.0.saturating_duration_since(first.0).as_secs_f64();
        if elapsed < min_s
            || points
                .iter()
                .any(|(_, s)| s.waiting.is_none_or(|w| w < 0.5))
        {
            return None;
        }
        let mut arrived = 0.0;
        let mut ready = 0.0;
        for w in points.windows(2) {
            let dt = w[1].0.saturating_duration_since(w[0].0).as_secs_f64();
            arrived += w[1].1.requests_per_s * dt;
            ready += f64::from(w[1].1.ready) * dt;
        }
        let grew = last.1.waiting? - first.1.waiting?;
        (ready > 0.0).then(|| ((arrived - grew) / ready).max(0.0))
    }
}

impl WindowAverage {
    /// Means of each signal over `samples`. Demand (ongoing, waiting,
    /// arrivals) is measured by samples with a ready replica, or by a
    /// gateway's report with none ([`carries_demand`]); the replicas'
    /// own signals (latency, GPU, KV cache) only by samples with one ready.
    fn of<'a>(samples: impl Iterator<Item = &'a Signals>) -> WindowAverage {
        let mut ongoing = Mean::default();
        let mut latency = Mean::default();
        let mut gpu = Mean::default();
        let mut kv = Mean::default();
        let mut rps = Mean::default();
        let mut ready = Mean::default();
        let mut waiting = Mean::default();
        for s in samples.filter(|s| carries_demand(s)) {
            ongoing.add(Some(s.ongoing));
            rps.add(Some(s.requests_per_s));
            waiting.add(s.waiting);
            if s.ready > 0 {
                ready.add(Some(f64::from(s.ready)));
                latency.add(s.p95_latency_s);
                gpu.add(s.gpu_utilization);
                kv.add(s.kv_cache_usage);
            }
        }
        WindowAverage {
            measured: ongoing.n,
            ongoing: ongoing.get(),
            p95_latency_s: latency.get(),
            gpu_utilization: gpu.get(),
            kv_cache_usage: kv.get(),
            requests_per_s: rps.get(),
            waiting: waiting.get(),
            ready: ready.get(),
        }
    }
}

#[derive(Debug, Default)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    /// Non-finite values are a broken scrape, not a measurement.
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.sum += v;
            self.n += 1;
        }
    }

    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// The highest desire recommended over a sliding span of time, kept as a
/// monotonic queue: each entry is higher than every later one, so the queue
/// holds at most one entry per distinct count however long the span is.
#[derive(Debug, Clone, Default)]
pub(super) struct DesireWindow {
    entries: VecDeque<(Instant, u32)>,
}

impl DesireWindow {
    pub fn push(&mut self, now: Instant, desire: u32) {
        while self.entries.back().is_some_and(|(_, d)| *d <= desire) {
            self.entries.pop_back();
        }
        self.entries.push_back((now, desire));
    }

    /// The highest desire pushed within `span` before `now`.
    pub fn max(&mut self, now: Instant, span: Duration) -> Option<u32> {
        if let Some(cutoff) = now.checked_sub(span) {
            while self.entries.front().is_some_and(|(t, _)| *t < cutoff) {
                self.entries.pop_front();
            }
        }
        self.entries.front().map(|(_, d)| *d)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
