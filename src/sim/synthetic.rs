//! Synthetic traces, so that comparisons can be shown and reproduced without
//! anyone's production data: a diurnal day (a sine between a night trough and
//! an afternoon peak) with slow multiplicative noise and random bursts, and
//! the other shapes of [`SyntheticKind`], each sampled as a Poisson process
//! from a seed.

use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};

use super::trace::{Request, TokenDefaults};

/// The quietest hour's rate, as a share of the peak.
const TROUGH_SHARE: f64 = 0.15;
/// Hours after midnight of the trough; the peak is twelve hours later.
const TROUGH_HOUR: f64 = 4.0;
/// Standard deviation of the multiplicative noise (log scale), and how long
/// it stays correlated: demand wanders over minutes, not second by second.
const NOISE_SIGMA: f64 = 0.1;
const NOISE_CORRELATION_S: f64 = 300.0;
/// A burst lasts this long and multiplies the rate by this much (uniform).
const BURST_LEN_S: (u64, u64) = (60, 600);
const BURST_FACTOR: (f64, f64) = (1.5, 3.0);
/// Longest synthetic trace: four weeks, enough for weekly seasons.
const MAX_DURATION_S: u64 = 28 * 86_400;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyntheticError {
    #[error("--peak-rps is {0}; allowed: a finite number above 0")]
    PeakRps(f64),
    #[error("--duration is {0}s; allowed: 1s up to 28 days")]
    Duration(u64),
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct DiurnalSpec {
    pub duration_s: u64,
    pub peak_rps: f64,
    pub seed: u64,
    pub bursts: u32,
    /// Mean token counts; each request draws uniformly between half and one
    /// and a half times these.
    pub tokens: TokenDefaults,
}

/// The shapes of traffic the simulator can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyntheticKind {
    /// A day's sine between a night trough and an afternoon peak, with noise.
    Diurnal,
    /// Code completion: short requests, a steady base at a third of the
    /// peak and bursts (about 10 s at 1.5× the peak) every few minutes.
    CodeCompletion,
    /// Chat: a steady, slowly wandering rate; prompt and answer lengths
    /// heavy-tailed (log-normal, σ 1, same means).
    Conversational,
    /// Twenty minutes at the peak, then forty with no request at all.
    OnOff,
    /// A tenth of the peak, then (in the first half) a rise to the peak
    /// within 30 s that decays over about 15 minutes.
    FlashCrowd,
    /// A straight climb from 5% of the peak to the peak.
    SlowRamp,
}

impl SyntheticKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SyntheticKind::Diurnal => "diurnal",
            SyntheticKind::CodeCompletion => "code-completion",
            SyntheticKind::Conversational => "conversational",
            SyntheticKind::OnOff => "on-off",
            SyntheticKind::FlashCrowd => "flash-crowd",
            SyntheticKind::SlowRamp => "slow-ramp",
        }
    }
}

/// How a synthetic trace draws token counts around their means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenShape {
    /// Uniform between half and one and a half times the mean.
    Uniform,
    /// Log-normal with σ 1 (same mean), capped at 20× the mean.
    HeavyTail,
}

/// A synthetic trace: its per-second rates, from which arrivals are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthetic {
    rates: Vec<f64>,
    seed: u64,
    tokens: TokenDefaults,
    shape: TokenShape,
}

impl Synthetic {
    pub fn diurnal(spec: &DiurnalSpec) -> Result<Synthetic, SyntheticError> {
        if !(spec.peak_rps.is_finite() && spec.peak_rps > 0.0) {
            return Err(SyntheticError::PeakRps(spec.peak_rps));
        }
        if spec.duration_s == 0 || spec.duration_s > MAX_DURATION_S {
            return Err(SyntheticError::Duration(spec.duration_s));
        }
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let day = 86_400.0;
        let rho = (-1.0 / NOISE_CORRELATION_S).exp();
        let step = NOISE_SIGMA * (1.0 - rho * rho).sqrt();
        let mut noise = NOISE_SIGMA * normal(&mut rng);
        let mut rates = Vec::with_capacity(spec.duration_s as usize);
        for s in 0..spec.duration_s {
            let phase = (s as f64 - TROUGH_HOUR * 3600.0) / day * std::f64::consts::TAU;
            let shape = TROUGH_SHARE + (1.0 - TROUGH_SHARE) * (1.0 - phase.cos()) / 2.0;
            // exp(x − σ²/2) has mean 1, so noise does not shift the day's volume.
            let factor = (noise - NOISE_SIGMA * NOISE_SIGMA / 2.0).exp();
            rates.push(spec.peak_rps * shape * factor);
            noise = rho * noise + step * normal(&mut rng);
        }
        for _ in 0..spec.bursts {
            let start = rng.random_range(0..spec.duration_s);
            let len = rng.random_range(BURST_LEN_S.0..=BURST_LEN_S.1);
            let factor = rng.random_range(BURST_FACTOR.0..=BURST_FACTOR.1);
            let end = (start + len).min(spec.duration_s);
            for r in &mut rates[start as usize..end as usize] {
                *r *= factor;
            }
        }
        Ok(Synthetic {
            rates,
            seed: spec.seed,
            tokens: spec.tokens,
            shape: TokenShape::Uniform,
        })
    }

    /// A trace of `kind`; `spec.bursts` adds random bursts to any of them.
    pub fn generate(kind: SyntheticKind, spec: &DiurnalSpec) -> Result<Synthetic, SyntheticError> {
        let mut s = Synthetic::diurnal(spec)?;
        if kind == SyntheticKind::Diurnal {
            return Ok(s);
        }
        // The diurnal curve drew its noise and bursts from the seed; the
        // other shapes replace the curve and keep the bursts' pattern by
        // drawing from a stream of their own.
        let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 1);
        let n = spec.duration_s as usize;
        let peak = spec.peak_rps;
        let mut noise = Noise::new(&mut rng);
        let mut rates: Vec<f64> = Vec::with_capacity(n);
        match kind {
            SyntheticKind::Diurnal => {}
            SyntheticKind::CodeCompletion => {
                // Bursts start as a Poisson process, one per 3 minutes on average.
                let mut next = exp_gap(&mut rng, 180.0);
                let mut burst_end = 0.0;
                for t in 0..n {
                    let t = t as f64;
                    if t >= next {
                        burst_end = t + rng.random_range(6.0..14.0);
                        next = t + exp_gap(&mut rng, 180.0);
                    }
                    let base = peak / 3.0 * noise.next(&mut rng);
                    rates.push(if t < burst_end {
                        base + 1.5 * peak
                    } else {
                        base
                    });
                }
                s.tokens = TokenDefaults {
                    context_tokens: (spec.tokens.context_tokens / 2).max(1),
                    generated_tokens: (spec.tokens.generated_tokens / 8).max(1),
                };
            }
            SyntheticKind::Conversational => {
                for _ in 0..n {
                    rates.push(0.7 * peak * noise.next(&mut rng));
                }
                s.shape = TokenShape::HeavyTail;
            }
            SyntheticKind::OnOff => {
                for t in 0..n {
                    let on = t % 3600 < 1200;
                    rates.push(if on { peak * noise.next(&mut rng) } else { 0.0 });
                }
            }
            SyntheticKind::FlashCrowd => {
                let at = rng.random_range(0.1..0.5) * n as f64;
                for t in 0..n {
                    let t = t as f64;
                    let crowd = if t < at {
                        0.0
                    } else {
                        let rise = ((t - at) / 30.0).min(1.0);
                        rise * (-(t - at) / 900.0).exp()
                    };
                    rates.push(peak * (0.1 + 0.9 * crowd) * noise.next(&mut rng));
                }
            }
            SyntheticKind::SlowRamp => {
                for t in 0..n {
                    let x = t as f64 / n.max(1) as f64;
                    rates.push(peak * (0.05 + 0.95 * x) * noise.next(&mut rng));
                }
            }
        }
        // Keep the diurnal spec's random bursts: they multiply the curve.
        if spec.bursts > 0 {
            for (r, (b, base)) in rates
                .iter_mut()
                .zip(s.rates.iter().zip(diurnal_shape(spec)))
            {
                *r *= (b / base).max(1.0);
            }
        }
        s.rates = rates;
        Ok(s)
    }

    /// Expected requests per second in each second of the trace.
    pub fn rates(&self) -> &[f64] {
        &self.rates
    }

    /// The requests, drawn afresh (and identically) on every call.
    pub fn requests(&self) -> SyntheticArrivals<'_> {
        SyntheticArrivals {
            rates: &self.rates,
            // A stream of its own, so the arrivals do not depend on how many
            // numbers the rate curve consumed.
            // Xoshiro: a third of the cost of the curve's ChaCha per draw,
            // which matters at three draws per request.
            rng: SmallRng::seed_from_u64(self.seed ^ 0x9e37_79b9_7f4a_7c15),
            second: 0,
            t: 0.0,
            tokens: self.tokens,
            shape: self.shape,
        }
    }
}

/// The diurnal curve without noise or bursts, to recover the bursts' factor.
fn diurnal_shape(spec: &DiurnalSpec) -> impl Iterator<Item = f64> + '_ {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let rho = (-1.0 / NOISE_CORRELATION_S).exp();
    let step = NOISE_SIGMA * (1.0 - rho * rho).sqrt();
    let mut noise = NOISE_SIGMA * normal(&mut rng);
    (0..spec.duration_s).map(move |s| {
        let phase = (s as f64 - TROUGH_HOUR * 3600.0) / 86_400.0 * std::f64::consts::TAU;
        let shape = TROUGH_SHARE + (1.0 - TROUGH_SHARE) * (1.0 - phase.cos()) / 2.0;
        let factor = (noise - NOISE_SIGMA * NOISE_SIGMA / 2.0).exp();
        noise = rho * noise + step * normal(&mut rng);
        (spec.peak_rps * shape * factor).max(f64::MIN_POSITIVE)
    })
}

/// Slow multiplicative noise with mean 1 (log-normal, correlated over minutes).
struct Noise {
    x: f64,
    rho: f64,
    step: f64,
}

impl Noise {
    fn new(rng: &mut StdRng) -> Noise {
        let rho = (-1.0 / NOISE_CORRELATION_S).exp();
        Noise {
            x: NOISE_SIGMA * normal(rng),
            rho,
            step: NOISE_SIGMA * (1.0 - rho * rho).sqrt(),
        }
    }

    fn next(&mut self, rng: &mut StdRng) -> f64 {
        let f = (self.x - NOISE_SIGMA * NOISE_SIGMA / 2.0).exp();
        self.x = self.rho * self.x + self.step * normal(rng);
        f
    }
}

/// An exponential gap with the given mean.
fn exp_gap(rng: &mut StdRng, mean: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() * mean
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Arrivals of a Poisson process whose rate is constant within each second.
/// Exponential gaps drawn at the current second's rate are exact: when a gap
/// crosses into the next second, the process restarts there (memorylessness).
pub struct SyntheticArrivals<'a> {
    rates: &'a [f64],
    rng: SmallRng,
    second: usize,
    t: f64,
    tokens: TokenDefaults,
    shape: TokenShape,
}

impl SyntheticArrivals<'_> {
    fn tokens(&mut self, mean: u32) -> u32 {
        if mean == 0 {
            return 0;
        }
        let m = f64::from(mean);
        let v = match self.shape {
            TokenShape::Uniform => self.rng.random_range(0.5 * m..=1.5 * m),
            TokenShape::HeavyTail => {
                // Box–Muller on this stream; exp(μ + σz) with μ = ln m − σ²/2.
                let u1: f64 = 1.0 - self.rng.random::<f64>();
                let u2: f64 = self.rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (m.ln() - 0.5 + z).exp().min(20.0 * m)
            }
        };
        (v.round() as u32).max(1)
    }
}

impl Iterator for SyntheticArrivals<'_> {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        loop {
            let rate = *self.rates.get(self.second)?;
            let end = (self.second + 1) as f64;
            if rate > 0.0 {
                let u: f64 = self.rng.random();
                let gap = -(1.0 - u).ln() / rate;
                if self.t + gap < end {
                    self.t += gap;
                    let context_tokens = self.tokens(self.tokens.context_tokens);
                    let generated_tokens = self.tokens(self.tokens.generated_tokens);
                    return Some(Request {
                        arrival_s: self.t,
                        context_tokens,
                        generated_tokens,
                    });
                }
            }
            self.second += 1;
            self.t = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(duration_s: u64, peak: f64, bursts: u32) -> DiurnalSpec {
        DiurnalSpec {
            duration_s,
            peak_rps: peak,
            seed: 7,
            bursts,
            tokens: TokenDefaults::default(),
        }
    }

    #[test]
    fn a_day_peaks_in_the_afternoon_and_dips_at_night() {
        let s = Synthetic::diurnal(&spec(86_400, 100.0, 0)).unwrap();
        let hour = |h: usize| s.rates()[h * 3600..(h + 1) * 3600].iter().sum::<f64>() / 3600.0;
        assert!(hour(16) > 80.0, "peak hour {}", hour(16));
        assert!(hour(4) < 25.0, "trough hour {}", hour(4));
        assert!(hour(10) > hour(4) && hour(10) < hour(16));
    }

    #[test]
    fn same_seed_same_requests_and_counts_follow_the_rate() {
        let s = Synthetic::diurnal(&spec(600, 50.0, 2)).unwrap();
        let a: Vec<Request> = s.requests().collect();
        let b: Vec<Request> = s.requests().collect();
        assert_eq!(a, b);
        let expected: f64 = s.rates().iter().sum();
        let n = a.len() as f64;
        // Poisson: the standard deviation is √expected; 5σ is a safe bound.
        assert!(
            (n - expected).abs() < 5.0 * expected.sqrt(),
            "{n} vs {expected}"
        );
        assert!(a.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
        assert!(a.iter().all(|r| r.arrival_s < 600.0));
        assert!(a.iter().all(|r| (500..=1500).contains(&r.context_tokens)
            && (100..=300).contains(&r.generated_tokens)));
        let other = Synthetic::diurnal(&DiurnalSpec {
            seed: 8,
            ..spec(600, 50.0, 2)
        })
        .unwrap();
        assert_ne!(
            other.requests().take(10).collect::<Vec<_>>(),
            a[..10].to_vec()
        );
    }

    #[test]
    fn bursts_raise_the_rate_above_the_curve() {
        let calm = Synthetic::diurnal(&spec(7200, 10.0, 0)).unwrap();
        let bursty = Synthetic::diurnal(&spec(7200, 10.0, 5)).unwrap();
        let ratio = bursty
            .rates()
            .iter()
            .zip(calm.rates())
            .map(|(b, c)| b / c)
            .fold(0.0, f64::max);
        assert!(ratio >= BURST_FACTOR.0 - 1e-9, "{ratio}");
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(
            Synthetic::diurnal(&spec(10, 0.0, 0)).unwrap_err(),
            SyntheticError::PeakRps(0.0)
        );
        assert!(Synthetic::diurnal(&spec(0, 1.0, 0)).is_err());
        assert!(Synthetic::diurnal(&spec(10, f64::NAN, 0)).is_err());
    }
}
