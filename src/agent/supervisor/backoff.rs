//! Restart backoff for a replica that exits or never gets ready: doubling from
//! a base to a cap, jittered so a fleet of crashing replicas does not restart in
//! lockstep, and forgotten once the replica has stayed ready long enough.
//! Pure: time comes in as `now`, randomness as `jitter_unit`.

use std::time::{Duration, Instant};

/// How restarts are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// Delay before the first restart.
    pub base: Duration,
    /// Longest delay between restarts.
    pub cap: Duration,
    /// A replica ready this long has its failure count cleared.
    pub reset_after: Duration,
    /// Relative jitter: 0.2 spreads each delay over ±20%.
    pub jitter: f64,
    /// Consecutive failures from which the replica reads `crashloop`.
    pub crashloop_after: u32,
}

impl BackoffPolicy {
    /// The delay before restart number `failures` (1 = first failure), with
    /// `jitter_unit` in [-1, 1] picking where in the jitter band it falls.
    pub fn delay(&self, failures: u32, jitter_unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let unjittered = self
            .base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap);
        let factor = 1.0 + self.jitter * jitter_unit.clamp(-1.0, 1.0);
        unjittered.mul_f64(factor.max(0.0))
    }
}

/// One replica's failure history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartBackoff {
    failures: u32,
    ready_since: Option<Instant>,
}

impl RestartBackoff {
    /// The backoff of a replica that had already failed `failures` times in
    /// a row (read back from its record after an agent restart).
    pub fn resumed(failures: u32) -> Self {
        RestartBackoff {
            failures,
            ready_since: None,
        }
    }

    /// The replica passed its readiness probe at `now`.
    pub fn on_ready(&mut self, now: Instant) {
        self.ready_since = Some(now);
    }

    /// The replica failed (exited, or was not ready in time) at `now`; returns
    /// how long to wait before starting it again.
    pub fn on_failure(
        &mut self,
        now: Instant,
        policy: &BackoffPolicy,
        jitter_unit: f64,
    ) -> Duration {
        let stayed_ready = self
            .ready_since
            .take()
            .is_some_and(|since| now.saturating_duration_since(since) >= policy.reset_after);
        if stayed_ready {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        policy.delay(self.failures, jitter_unit)
    }

    /// Consecutive failures since the replica last stayed ready long enough.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn in_crashloop(&self, policy: &BackoffPolicy) -> bool {
        self.failures >= policy.crashloop_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
            jitter: 0.2,
            crashloop_after: 3,
        }
    }

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let p = policy();
        let delays: Vec<u64> = (1..=8).map(|n| p.delay(n, 0.0).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(p.delay(1000, 0.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = policy();
        assert_eq!(p.delay(1, -1.0), Duration::from_secs(8));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(12));
        assert_eq!(p.delay(6, 1.0), Duration::from_secs(360));
        // Out-of-band jitter is clamped rather than trusted.
        assert_eq!(p.delay(1, 7.0), Duration::from_secs(12));
    }

    #[test]
    fn consecutive_failures_grow_the_delay_and_reach_crashloop() {
        let p = policy();
        let mut b = RestartBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.on_failure(t0, &p, 0.0), Duration::from_secs(10));
        assert!(!b.in_crashloop(&p));
        // Ready for a short while does not count as recovered.
        b.on_ready(t0 + Duration::from_secs(15));
        assert_eq!(
            b.on_failure(t0 + Duration::from_secs(60), &p, 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(
            b.on_failure(t0 + Duration::from_secs(90), &p, 0.0),
            Duration::from_secs(40)
        );
        assert!(b.in_crashloop(&p));
        assert_eq!(b.failures(), 3);
    }

    #[test]
    fn ten_minutes_ready_resets_the_schedule() {
        let p = policy();
        let mut b = RestartBackoff::default();
        let t0 = Instant::now();
        for i in 0..5 {
            b.on_failure(t0 + Duration::from_secs(i), &p, 0.0);
        }
        assert!(b.in_crashloop(&p));
        let ready_at = t0 + Duration::from_secs(400);
        b.on_ready(ready_at);
        let delay = b.on_failure(ready_at + Duration::from_secs(600), &p, 0.0);
        assert_eq!(delay, Duration::from_secs(10));
        assert!(!b.in_crashloop(&p));
    }

    #[test]
    fn a_ready_period_is_counted_once() {
        let p = policy();
        let mut b = RestartBackoff::default();
        let t0 = Instant::now();
        b.on_ready(t0);
        b.on_failure(t0 + Duration::from_secs(700), &p, 0.0);
        // The next failure without a new ready period keeps counting up.
        let d = b.on_failure(t0 + Duration::from_secs(2000), &p, 0.0);
        assert_eq!(d, Duration::from_secs(20));
    }
}
