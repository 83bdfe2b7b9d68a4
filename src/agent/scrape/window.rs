//! The last window of scrapes of one replica: cumulative snapshots with the
//! instant they were taken, and what changed between a window ago and now
//! (requests finished, latency observed), surviving server restarts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::histogram::CumulativeHistogram;

/// Snapshots kept at most, whatever the scrape rate: bounds memory when a
/// caller scrapes far more often than the window needs.
const MAX_SNAPSHOTS: usize = 512;

/// Cumulative readings of one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at: Instant,
    /// Request latency histogram, seconds.
    pub latency: Option<CumulativeHistogram>,
    /// Requests finished.
    pub completed: Option<f64>,
    /// Time spent on requests, seconds, and the requests it covers: engines
    /// that count durations instead of keeping a histogram (Triton).
    pub latency_seconds: Option<f64>,
    pub latency_requests: Option<f64>,
    /// Time requests spent executing, seconds: its rate is the mean number of
    /// requests running (Little's law).
    pub busy_seconds: Option<f64>,
}

impl Snapshot {
    pub fn at(at: Instant) -> Self {
        Snapshot {
            at,
            latency: None,
            completed: None,
            latency_seconds: None,
            latency_requests: None,
            busy_seconds: None,
        }
    }
}

/// What happened over the window that ends at the latest snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDelta {
    pub elapsed: Duration,
    pub latency: Option<CumulativeHistogram>,
    pub completed: Option<f64>,
    pub latency_seconds: Option<f64>,
    pub latency_requests: Option<f64>,
    pub busy_seconds: Option<f64>,
}

impl WindowDelta {
    /// `amount` per second of the window, 0 over an empty window.
    pub fn per_second(&self, amount: f64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            amount / secs
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone)]
pub struct History {
    window: Duration,
    snapshots: VecDeque<Snapshot>,
}

impl History {
    pub fn new(window: Duration) -> Self {
        History {
            window,
            snapshots: VecDeque::new(),
        }
    }

    /// Records a scrape and returns what changed since the snapshot at least a
    /// window older (or the oldest one kept, while there is less history than
    /// a window). `None` for the first scrape: one reading has no delta.
    pub fn record(&mut self, snapshot: Snapshot) -> Option<WindowDelta> {
        if self
            .snapshots
            .back()
            .is_some_and(|last| snapshot.at < last.at)
        {
            // Instants never go back on one clock: the caller's history is not
            // comparable with the new reading, so start over.
            self.snapshots.clear();
        }
        let now = snapshot.at;
        self.snapshots.push_back(snapshot);
        if let Some(cutoff) = now.checked_sub(self.window) {
            // Keep the newest snapshot at or before the cutoff as the baseline.
            let baseline = self.snapshots.iter().rposition(|s| s.at <= cutoff);
            if let Some(index) = baseline {
                self.snapshots.drain(..index);
            }
        }
        while self.snapshots.len() > MAX_SNAPSHOTS {
            self.snapshots.pop_front();
        }
        self.delta()
    }

    fn delta(&self) -> Option<WindowDelta> {
        let first = self.snapshots.front()?;
        let last = self.snapshots.back()?;
        if self.snapshots.len() < 2 {
            return None;
        }
        let mut delta = WindowDelta {
            elapsed: last.at.saturating_duration_since(first.at),
            latency: None,
            completed: None,
            latency_seconds: None,
            latency_requests: None,
            busy_seconds: None,
        };
        // Pair by pair, so that a restart in the middle of the window loses
        // nothing from either side of it.
        for (a, b) in self.snapshots.iter().zip(self.snapshots.iter().skip(1)) {
            delta.completed = add(delta.completed, counter_delta(a.completed, b.completed));
            delta.latency_seconds = add(
                delta.latency_seconds,
                counter_delta(a.latency_seconds, b.latency_seconds),
            );
            delta.latency_requests = add(
                delta.latency_requests,
                counter_delta(a.latency_requests, b.latency_requests),
            );
            delta.busy_seconds = add(
                delta.busy_seconds,
                counter_delta(a.busy_seconds, b.busy_seconds),
            );
            let step = match (&a.latency, &b.latency) {
                (Some(then), Some(now)) => Some(now.since(then)),
                (None, Some(now)) => Some(now.clone()),
                _ => None,
            };
            if let Some(step) = step {
                match delta.latency.as_mut() {
                    Some(acc) => acc.absorb(step),
                    None => delta.latency = Some(step),
                }
            }
        }
        Some(delta)
    }
}

/// Growth of a counter between two scrapes. A counter that went down was
/// reset (restarted server): all of its new value is growth. A counter that
/// just appeared (engines create labelled counters on first use) grew from 0.
pub(super) fn counter_delta(then: Option<f64>, now: Option<f64>) -> Option<f64> {
    let now = now.filter(|v| v.is_finite())?;
    match then.filter(|v| v.is_finite()) {
        Some(then) if now >= then => Some(now - then),
        _ => Some(now),
    }
}

fn add(acc: Option<f64>, step: Option<f64>) -> Option<f64> {
    match (acc, step) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(at: Instant, completed: f64) -> Snapshot {
        Snapshot {
            completed: Some(completed),
            ..Snapshot::at(at)
        }
    }

    #[test]
    fn first_scrape_has_no_delta() {
        let mut h = History::new(Duration::from_secs(30));
        assert_eq!(h.record(counted(Instant::now(), 100.0)), None);
    }

    #[test]
    fn measures_from_the_snapshot_a_window_ago() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(30));
        for s in 0..=60u64 {
            let delta = h.record(counted(t0 + Duration::from_secs(s), (s * 2) as f64));
            if s == 60 {
                let delta = delta.unwrap();
                assert_eq!(delta.elapsed, Duration::from_secs(30));
                assert_eq!(delta.completed, Some(60.0));
                assert_eq!(delta.per_second(60.0), 2.0);
            }
        }
        assert_eq!(h.snapshots.len(), 31, "older snapshots are pruned");
    }

    #[test]
    fn uses_what_there_is_while_history_is_shorter_than_the_window() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(30));
        h.record(counted(t0, 10.0));
        let delta = h
            .record(counted(t0 + Duration::from_secs(5), 20.0))
            .unwrap();
        assert_eq!(delta.elapsed, Duration::from_secs(5));
        assert_eq!(delta.completed, Some(10.0));
    }

    #[test]
    fn a_restart_inside_the_window_counts_both_sides() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(30));
        h.record(counted(t0, 1000.0));
        h.record(counted(t0 + Duration::from_secs(10), 1010.0));
        // Restarted: the counter starts again from zero.
        let delta = h
            .record(counted(t0 + Duration::from_secs(20), 4.0))
            .unwrap();
        assert_eq!(delta.completed, Some(14.0));
    }

    #[test]
    fn a_counter_that_appears_grew_from_zero() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(30));
        h.record(Snapshot::at(t0));
        let delta = h.record(counted(t0 + Duration::from_secs(1), 3.0)).unwrap();
        assert_eq!(delta.completed, Some(3.0));
    }

    #[test]
    fn a_clock_that_goes_back_starts_over() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut h = History::new(Duration::from_secs(30));
        h.record(counted(t0, 1.0));
        assert_eq!(h.record(counted(t0 - Duration::from_secs(1), 2.0)), None);
    }

    #[test]
    fn keeps_a_bounded_number_of_snapshots() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(3600));
        for i in 0..(MAX_SNAPSHOTS as u64 + 50) {
            h.record(counted(t0 + Duration::from_millis(i), i as f64));
        }
        assert_eq!(h.snapshots.len(), MAX_SNAPSHOTS);
    }

    #[test]
    fn latency_deltas_accumulate_across_a_restart() {
        let t0 = Instant::now();
        let lat = |n1: f64, n: f64| {
            CumulativeHistogram::from_parts(vec![(1.0, n1), (f64::INFINITY, n)], None, None)
        };
        let mut h = History::new(Duration::from_secs(30));
        for (s, l) in [
            (0, lat(100.0, 100.0)),
            (10, lat(110.0, 120.0)),
            (20, lat(3.0, 5.0)),
        ] {
            let snap = Snapshot {
                latency: l,
                ..Snapshot::at(t0 + Duration::from_secs(s))
            };
            if let Some(delta) = h.record(snap) {
                if s == 20 {
                    let latency = delta.latency.unwrap();
                    assert_eq!(latency.count(), 25.0);
                    assert_eq!(latency.buckets()[0].cumulative, 13.0);
                }
            }
        }
    }
}
