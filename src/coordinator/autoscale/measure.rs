//! What the autoscaler learns about a model beyond one tick's signals: how
//! long a request is served (Little's law on unqueued ticks), how many
//! requests one replica runs at once, and how long a new replica takes to
//! become ready. The sizing, cold-start and scale-down rules read these.

use super::Signals;

/// Ticks an estimate averages over (an exponential mean): about a stable
/// window of 1 s ticks, so one noisy second moves it little.
const SPAN_TICKS: f64 = 60.0;
/// Unqueued ticks with traffic before the service time is trusted.
const MIN_TICKS: u32 = 10;
/// Recent starts averaged into the start time.
const START_SPAN: f64 = 4.0;

/// Service time and per-replica concurrency, from the signals.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct ServiceEstimate {
    running: f64,
    rps: f64,
    ticks: u32,
    /// Most requests a ready replica has run at once.
    peak_per_replica: f64,
}

impl ServiceEstimate {
    /// Learns from one tick. Only ticks without a queue measure service
    /// time: with one, `running` is capped by capacity, not set by demand.
    /// Ticks whose engines do not split waiting from running teach nothing.
    pub fn observe(&mut self, s: &Signals) {
        let Some(waiting) = s.waiting else { return };
        if s.ready == 0 {
            return;
        }
        let running = (s.ongoing - waiting).max(0.0);
        self.peak_per_replica = self.peak_per_replica.max(running / f64::from(s.ready));
        if waiting >= 0.5 || s.requests_per_s <= 0.0 {
            return;
        }
        self.ticks = self.ticks.saturating_add(1);
        // The plain mean until the span is full, then exponential.
        let a = 1.0 / f64::from(self.ticks).min(SPAN_TICKS);
        self.running += a * (running - self.running);
        self.rps += a * (s.requests_per_s - self.rps);
    }

    /// Mean seconds a request is served (running ÷ throughput), once
    /// enough quiet ticks have measured it.
    pub fn service_s(&self) -> Option<f64> {
        (self.ticks >= MIN_TICKS && self.rps > 0.0 && self.running > 0.0)
            .then(|| self.running / self.rps)
    }

    /// Requests one replica serves at once: the most seen, at least the
    /// target (a replica never yet filled is assumed to reach it).
    pub fn slots(&self, target: f64) -> f64 {
        self.peak_per_replica.max(target)
    }
}

/// A mean of the model's recent replica start times, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct StartTime {
    mean_s: Option<f64>,
}

impl StartTime {
    pub fn record(&mut self, seconds: f64) {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return;
        }
        self.mean_s = Some(match self.mean_s {
            None => seconds,
            Some(m) => m + (seconds - m) / START_SPAN,
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.mean_s
    }
}

/// Where a backlog is headed while a new replica would load. The excess
/// over capacity is expected to last as long again as it has so far (a
/// burst's age is the best guess of its remaining life), up to the start
/// time; after that, arrivals return to the steady rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Backlog {
    pub waiting: f64,
    /// Arrivals now and at the steady rate, requests per second.
    pub recent_rps: f64,
    pub steady_rps: f64,
    /// Requests per second the current capacity completes.
    pub capacity_rps: f64,
    /// How long there has been a queue.
    pub age_s: f64,
    pub start_s: f64,
}

impl Backlog {
    /// Requests still waiting when a replica started now would be ready.
    pub fn at_ready(&self) -> f64 {
        let d = self.age_s.clamp(0.0, self.start_s);
        let growing = (self.recent_rps - self.capacity_rps) * d;
        let draining = (self.capacity_rps - self.steady_rps) * (self.start_s - d);
        self.waiting + growing - draining
    }

    /// Seconds until the backlog is gone at the current capacity, as
    /// projected (`None`: it is not).
    pub fn drains_in_s(&self) -> Option<f64> {
        if self.at_ready() > 0.0 {
            return None;
        }
        let d = self.age_s.clamp(0.0, self.start_s);
        let peak = self.waiting + ((self.recent_rps - self.capacity_rps) * d).max(0.0);
        let spare = self.capacity_rps - self.steady_rps;
        Some(if spare > 0.0 { d + peak / spare } else { d })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(ongoing: f64, waiting: f64, rps: f64) -> Signals {
        Signals {
            ongoing,
            waiting: Some(waiting),
            requests_per_s: rps,
            ready: 2,
            ..Signals::default()
        }
    }

    #[test]
    fn service_time_is_little_on_unqueued_ticks() {
        let mut e = ServiceEstimate::default();
        for _ in 0..9 {
            e.observe(&tick(8.0, 0.0, 2.0));
        }
        assert_eq!(e.service_s(), None, "too few ticks to trust");
        e.observe(&tick(8.0, 0.0, 2.0));
        assert_eq!(e.service_s(), Some(4.0));
        // A queued tick is capped by capacity: it does not teach.
        e.observe(&tick(40.0, 24.0, 30.0));
        assert_eq!(e.service_s(), Some(4.0));
        assert_eq!(e.slots(6.0), 8.0, "16 running on 2 replicas");
        // Engines that do not split waiting from running teach nothing.
        let mut blind = ServiceEstimate::default();
        for _ in 0..20 {
            blind.observe(&Signals {
                waiting: None,
                ..tick(8.0, 0.0, 2.0)
            });
        }
        assert_eq!(blind.service_s(), None);
    }

    #[test]
    fn a_young_burst_drains_before_a_start_and_an_old_one_does_not() {
        // 16 req/s of capacity, a steady 2 req/s, a 30 req/s burst.
        let young = Backlog {
            waiting: 28.0,
            recent_rps: 30.0,
            steady_rps: 2.0,
            capacity_rps: 16.0,
            age_s: 2.0,
            start_s: 36.0,
        };
        assert!(young.at_ready() <= 0.0, "{}", young.at_ready());
        assert!(young.drains_in_s().is_some_and(|s| s < 36.0));
        let old = Backlog {
            waiting: 200.0,
            age_s: 14.0,
            ..young
        };
        assert!(old.at_ready() > 0.0);
        assert_eq!(old.drains_in_s(), None);
        // No spare capacity at the steady rate: it never drains.
        let saturated = Backlog {
            steady_rps: 16.0,
            ..young
        };
        assert_eq!(saturated.drains_in_s(), None);
    }
}
