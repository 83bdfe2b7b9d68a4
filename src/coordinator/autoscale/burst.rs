//! Burst memory: what recurring bursts need, sized from the SLO.
//!
//! A burst that lasts less than a replica start is over before a replica
//! started for it is ready: only capacity kept between bursts serves it.
//! With an SLO the burst may queue briefly, so what it needs is not its
//! arrivals at the target but the replicas that work it off within the
//! queue wait the SLO leaves: a burst of rate λ lasting D seconds, served at
//! `target / S` requests per second per replica, is worked off within a wait
//! W = SLO − S by λ · S / target × D / (D + W) replicas. The memory keeps the
//! last bursts (start, length, mean arrival rate) and, while they keep
//! recurring, asks for the most any of them needed; when none has come for
//! four times their mean spacing (at least the ski-rental hold, at most
//! `horizon_cap`), it forgets them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bursts are expected again within this many of their mean spacings: for
/// bursts arriving at random (a Poisson process), the next one comes later
/// than that about e^-4 = 2% of the time.
const HORIZON_GAPS: f64 = 4.0;
/// Bursts remembered.
const KEEP: usize = 8;
/// A burst is over when arrivals fall back to this multiple of the rate
/// before it.
const END_FACTOR: f64 = 1.5;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Past {
    start: Instant,
    length_s: f64,
    rps: f64,
    /// Replicas it needs within the SLO, sized at its first recall.
    need: Option<f64>,
}

/// A burst under way: arrivals over the rate before it, from the tick
/// interval in which they first rose.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Open {
    start: Instant,
    end: Instant,
    base_rps: f64,
    arrivals: f64,
}

/// Recent bursts of one model.
#[derive(Debug, Clone, Default)]
pub(super) struct BurstMemory {
    last_tick: Option<Instant>,
    /// Arrivals over the rate before them, not (yet) a burst: if one begins
    /// it began here, so its length and rate count from here.
    rising: Option<Open>,
    open: Option<Open>,
    past: VecDeque<Past>,
}

/// What the memory asks for, and why.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Recall {
    pub replicas: u32,
    pub bursts: usize,
    pub length_s: f64,
    pub rps: f64,
}

/// How long bursts are held for, and which set a floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    /// The horizon is never shorter (the ski-rental hold).
    pub min_hold: Duration,
    /// Nor longer; bursts older than it are forgotten.
    pub horizon_cap: Duration,
    /// A burst longer than this sets no floor (served by replicas started
    /// for it).
    pub longest_s: Option<f64>,
}

/// Replicas that work off a burst of `rps` for `length_s` within a queue
/// wait of `wait_s`, each completing `target / service_s` per second.
pub(super) fn burst_need(rps: f64, length_s: f64, service_s: f64, target: f64, wait_s: f64) -> f64 {
    if !(rps > 0.0 && length_s > 0.0 && service_s > 0.0 && target > 0.0) {
        return 0.0;
    }
    rps * service_s / target * length_s / (length_s + wait_s.max(0.0))
}

impl BurstMemory {
    /// A burst begins at `now` (a panic fired, or arrivals rose well over
    /// `base_rps`), unless one is open: from when arrivals began to rise,
    /// if they did.
    pub fn begin(&mut self, now: Instant, base_rps: f64) {
        if self.open.is_none() {
            self.open = Some(self.rising.take().unwrap_or(Open {
                start: now,
                end: now,
                base_rps,
                arrivals: 0.0,
            }));
        }
    }

    /// One tick's arrival rate, with the rate before it (`base_rps`, the
    /// stable window's). Counts toward the burst under way, and ends it once
    /// arrivals are back near the rate before it (it is remembered), or
    /// once it has lasted `longest` (a new level, not a burst: forgotten).
    pub fn observe(&mut self, now: Instant, rps: f64, base_rps: f64, longest: Duration) {
        let dt = self
            .last_tick
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_tick = Some(self.last_tick.map_or(now, |t| t.max(now)));
        let tick_start = now - Duration::from_secs_f64(dt);
        let Some(open) = self.open.as_mut() else {
            if rps > END_FACTOR * base_rps {
                let r = self.rising.get_or_insert(Open {
                    start: tick_start,
                    end: now,
                    base_rps,
                    arrivals: 0.0,
                });
                r.arrivals += rps * dt;
                r.end = now;
            } else {
                self.rising = None;
            }
            return;
        };
        if rps > END_FACTOR * open.base_rps {
            open.arrivals += rps * dt;
            open.end = now;
            if now.saturating_duration_since(open.start) >= longest {
                self.open = None;
            }
            return;
        }
        let length_s = open.end.saturating_duration_since(open.start).as_secs_f64();
        if length_s > 0.0 && open.arrivals > 0.0 {
            self.past.push_back(Past {
                start: open.start,
                length_s,
                rps: open.arrivals / length_s,
                need: None,
            });
            if self.past.len() > KEEP {
                self.past.pop_front();
            }
        }
        self.open = None;
    }

    /// Mean seconds between bursts at `now`: the time since the first
    /// remembered one began over their number, so the gap still open counts
    /// (the estimate for bursts arriving at random when the last gap is not
    /// over). Their spacing varies much: a mean of the closed gaps alone,
    /// from a handful of bursts, often forgets them in a gap of twice it.
    fn mean_gap_s(&self, now: Instant) -> Option<f64> {
        let first = self.past.front()?;
        let n = self.past.len();
        (n >= 2).then(|| now.saturating_duration_since(first.start).as_secs_f64() / n as f64)
    }

    /// Seconds the burst under way has lasted, if one is.
    pub fn open_for_s(&self, now: Instant) -> Option<f64> {
        self.open
            .map(|o| now.saturating_duration_since(o.start).as_secs_f64())
    }

    /// While bursts recur (two or more remembered, the last within four
    /// times their mean spacing, at least `limits.min_hold`, at most
    /// `limits.horizon_cap`), the replicas the biggest of them no longer
    /// than `limits.longest_s` needed within `wait_s` (a longer one is served by
    /// replicas started for it, and keeps none between bursts). A burst's need is sized once, with the service time of
    /// the first recall after it, so the floor does not flicker with the
    /// estimate. Forgets bursts older than the cap.
    pub fn recall(
        &mut self,
        now: Instant,
        service_s: f64,
        target: f64,
        wait_s: f64,
        limits: Limits,
    ) -> Option<Recall> {
        while self
            .past
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.start) > limits.horizon_cap)
        {
            self.past.pop_front();
        }
        let gap = self.mean_gap_s(now)?;
        let horizon = (HORIZON_GAPS * gap)
            .max(limits.min_hold.as_secs_f64())
            .min(limits.horizon_cap.as_secs_f64());
        let last = self.past.back()?;
        let since_last = now.saturating_duration_since(last.start).as_secs_f64() - last.length_s;
        if since_last > horizon {
            return None;
        }
        for p in self.past.iter_mut() {
            p.need
                .get_or_insert_with(|| burst_need(p.rps, p.length_s, service_s, target, wait_s));
        }
        let biggest = self
            .past
            .iter()
            .filter(|p| limits.longest_s.is_none_or(|l| p.length_s <= l))
            .max_by(|a, b| a.need.unwrap_or(0.0).total_cmp(&b.need.unwrap_or(0.0)))?;
        Some(Recall {
            replicas: super::ceil_count(biggest.need.unwrap_or(0.0)),
            bursts: self.past.len(),
            length_s: biggest.length_s,
            rps: biggest.rps,
        })
    }

    /// The mean length of the remembered bursts, when two or more are.
    pub fn typical_length_s(&self) -> Option<f64> {
        (self.past.len() >= 2)
            .then(|| self.past.iter().map(|p| p.length_s).sum::<f64>() / self.past.len() as f64)
    }
}
