//! When the load generator sends: a Poisson process whose rate ramps linearly
//! from a start rate to an end rate over the run, as real traffic arrives
//! (independent users), not at a metronome's even spacing.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    #[error("{flag} is {value}; allowed: a finite number of requests per second, 0 or more")]
    BadRate { flag: &'static str, value: f64 },
    #[error("--rps and --ramp-to are both 0; allowed: at least one above 0")]
    NoTraffic,
    #[error("--duration is 0; allowed: a positive duration such as 30s")]
    NoWindow,
}

/// The arrival rate over the send window: `start_rps` at its beginning,
/// `end_rps` at its end, linear in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalRate {
    start_rps: f64,
    end_rps: f64,
    window: Duration,
}

impl ArrivalRate {
    pub fn new(start_rps: f64, end_rps: f64, window: Duration) -> Result<Self, RateError> {
        for (flag, value) in [("--rps", start_rps), ("--ramp-to", end_rps)] {
            if !value.is_finite() || value < 0.0 {
                return Err(RateError::BadRate { flag, value });
            }
        }
        if start_rps == 0.0 && end_rps == 0.0 {
            return Err(RateError::NoTraffic);
        }
        if window.is_zero() {
            return Err(RateError::NoWindow);
        }
        Ok(Self {
            start_rps,
            end_rps,
            window,
        })
    }

    /// Mean number of arrivals over the whole window.
    pub fn expected_arrivals(&self) -> f64 {
        (self.start_rps + self.end_rps) / 2.0 * self.window.as_secs_f64()
    }

    /// The offset at which the expected arrivals since the start reach
    /// `mass`, or `None` once that lies past the window. Feeding it sums of
    /// unit exponentials gives exact arrivals of the ramped Poisson process
    /// (time rescaling), rather than approximating the rate piecewise.
    pub fn offset_at(&self, mass: f64) -> Option<Duration> {
        let window = self.window.as_secs_f64();
        // Expected arrivals by t: start·t + slope·t²/2; solve for t.
        let half_slope = (self.end_rps - self.start_rps) / (2.0 * window);
        let disc = self.start_rps * self.start_rps + 4.0 * half_slope * mass;
        if disc < 0.0 {
            return None;
        }
        // The form 2m/(b+√disc) stays exact when the slope is 0 and when start is 0.
        let t = 2.0 * mass / (self.start_rps + disc.sqrt());
        (t.is_finite() && t < window).then(|| Duration::from_secs_f64(t))
    }

    /// The send offsets of one run, drawn from `rng`, in increasing order.
    pub fn arrivals<R: Rng>(self, rng: R) -> Arrivals<R> {
        Arrivals {
            rate: self,
            rng,
            mass: 0.0,
        }
    }
}

/// Iterator over send offsets from the start of the run.
#[derive(Debug)]
pub struct Arrivals<R> {
    rate: ArrivalRate,
    rng: R,
    mass: f64,
}

impl<R: Rng> Iterator for Arrivals<R> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // Unit exponential by inversion; 1-u lies in (0, 1], so ln is finite.
        let u: f64 = self.rng.random();
        self.mass += -(1.0 - u).ln();
        self.rate.offset_at(self.mass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn offsets(rate: ArrivalRate, seed: u64) -> Vec<f64> {
        rate.arrivals(StdRng::seed_from_u64(seed))
            .map(|d| d.as_secs_f64())
            .collect()
    }

    #[test]
    fn a_steady_rate_sends_about_rate_times_duration_in_order() {
        let rate = ArrivalRate::new(200.0, 200.0, Duration::from_secs(10)).unwrap();
        assert_eq!(rate.expected_arrivals(), 2000.0);
        let sent = offsets(rate, 7);
        // Poisson: σ = √2000 ≈ 45; 5σ keeps the test meaningful and stable.
        assert!((sent.len() as f64 - 2000.0).abs() < 225.0, "{}", sent.len());
        assert!(sent.windows(2).all(|w| w[0] <= w[1]));
        assert!(sent.iter().all(|&t| (0.0..10.0).contains(&t)));
        // Gaps are exponential, not even: their spread is about their mean.
        let gaps: Vec<f64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!(
            (sd / mean - 1.0).abs() < 0.15,
            "coefficient of variation {}",
            sd / mean
        );
    }

    #[test]
    fn a_ramp_sends_three_times_as_much_in_its_second_half() {
        let rate = ArrivalRate::new(0.0, 400.0, Duration::from_secs(10)).unwrap();
        let sent = offsets(rate, 11);
        let first = sent.iter().filter(|&&t| t < 5.0).count() as f64;
        let second = sent.len() as f64 - first;
        // Expected 500 then 1500.
        assert!((first - 500.0).abs() < 120.0, "{first}");
        assert!((second - 1500.0).abs() < 200.0, "{second}");

        let down = ArrivalRate::new(400.0, 0.0, Duration::from_secs(10)).unwrap();
        let sent = offsets(down, 3);
        let first = sent.iter().filter(|&&t| t < 5.0).count() as f64;
        assert!(
            first > 2.0 * (sent.len() as f64 - first),
            "{first} of {}",
            sent.len()
        );
    }

    #[test]
    fn offsets_follow_the_expected_arrivals_exactly() {
        let rate = ArrivalRate::new(10.0, 30.0, Duration::from_secs(2)).unwrap();
        // By t=1: 10·1 + (20/2)/2·1² = 15 expected arrivals.
        let t = rate.offset_at(15.0).unwrap().as_secs_f64();
        assert!((t - 1.0).abs() < 1e-9, "{t}");
        assert_eq!(rate.offset_at(rate.expected_arrivals() + 0.1), None);
        let flat = ArrivalRate::new(4.0, 4.0, Duration::from_secs(1)).unwrap();
        assert!((flat.offset_at(2.0).unwrap().as_secs_f64() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn refuses_rates_that_send_nothing_or_make_no_sense() {
        let s = Duration::from_secs(1);
        assert_eq!(ArrivalRate::new(0.0, 0.0, s), Err(RateError::NoTraffic));
        assert!(matches!(
            ArrivalRate::new(-1.0, 5.0, s),
            Err(RateError::BadRate { flag: "--rps", .. })
        ));
        assert!(matches!(
            ArrivalRate::new(1.0, f64::NAN, s),
            Err(RateError::BadRate {
                flag: "--ramp-to",
                ..
            })
        ));
        assert_eq!(
            ArrivalRate::new(1.0, 1.0, Duration::ZERO),
            Err(RateError::NoWindow)
        );
    }
}
