//! Recurring periods in a model's demand shorter than a day (an hourly batch
//! job, traffic that comes on and off on a schedule), found by correlating
//! the demand with itself one candidate period apart. Pure functions of a
//! series of bucket means, so they are tested on hand-made series.

/// Correlation one period apart needed before a period is trusted.
const MIN_CORRELATION: f64 = 0.6;
/// ... and how far it must rise back above some shorter lag's: a level
/// that varies slowly (a daily curve, a ramp) correlates with itself at
/// every short lag without recurring; a period shows as a rise back.
const MIN_DIP: f64 = 0.5;
/// Of periods whose correlation is within this of the best, the shortest
/// is the period (twice a period correlates as well as the period).
const HARMONIC_SLACK: f64 = 0.1;

/// The autocorrelation of the series `lag` buckets apart: the mean product
/// of the deviations from the whole series' mean over the overlap, over the
/// whole series' variance; `None` when the series does not vary. The whole
/// series' mean, not each part's, so that two unrelated steps (a day's rise
/// and, hours later, an unrelated fall) do not look alike.
pub(super) fn correlation(xs: &[f64], lag: usize) -> Option<f64> {
    if lag == 0 || lag >= xs.len() {
        return None;
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    if var <= 1e-12 * m.abs().max(1.0) {
        return None;
    }
    let overlap = xs.len() - lag;
    let cov = xs[..overlap]
        .iter()
        .zip(&xs[lag..])
        .map(|(a, b)| (a - m) * (b - m))
        .sum::<f64>()
        / overlap as f64;
    Some(cov / var)
}

/// The recurring period of `xs`, in buckets, between `min_lag` and
/// `max_lag`, seen at least twice (a lag at most half the series, rounded
/// up: the second sighting may lack its last bucket, so that a period
/// found at the start of each bucket is known the bucket before its third
/// rise, in time to prepare for it): a local
/// maximum of the correlation of at least [`MIN_CORRELATION`], at least
/// [`MIN_DIP`] above the lowest correlation at a shorter lag; of those
/// within [`HARMONIC_SLACK`] of the best, the shortest.
pub(super) fn detect(xs: &[f64], min_lag: usize, max_lag: usize) -> Option<usize> {
    let top = max_lag.min(xs.len().div_ceil(2));
    if top < min_lag.max(2) {
        return None;
    }
    // One past the top, to tell a local maximum at the top.
    let r: Vec<Option<f64>> = (0..=top + 1).map(|lag| correlation(xs, lag)).collect();
    let mut lowest = f64::INFINITY;
    let mut candidates = Vec::new();
    for lag in 1..=top {
        let Some(here) = r[lag] else {
            continue;
        };
        let peak = r[lag - 1].is_none_or(|before| here >= before)
            && r[lag + 1].is_none_or(|after| here >= after);
        if lag >= min_lag && peak && here >= MIN_CORRELATION && here - lowest >= MIN_DIP {
            candidates.push((lag, here));
        }
        lowest = lowest.min(here);
    }
    let best = candidates.iter().map(|c| c.1).reduce(f64::max)?;
    candidates
        .into_iter()
        .find(|c| c.1 >= best - HARMONIC_SLACK)
        .map(|c| c.0)
}

/// Of the lags `around − spread ..= around + spread`, the one at which `xs`
/// correlates best with itself (to refine a period found in coarse buckets
/// in finer ones); `None` when none can be measured.
pub(super) fn refine(xs: &[f64], around: usize, spread: usize) -> Option<usize> {
    (around.saturating_sub(spread).max(1)..=around + spread)
        .filter_map(|lag| correlation(xs, lag).map(|r| (lag, r)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(lag, _)| lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `on` buckets at `high`, then `off` at 0, repeated, with a small
    /// deterministic wobble so nothing is exactly constant.
    fn on_off(n: usize, on: usize, off: usize, phase: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let wobble = ((i * 7919) % 13) as f64 / 13.0;
                if (i + phase) % (on + off) < on {
                    100.0 + 10.0 * wobble
                } else {
                    wobble
                }
            })
            .collect()
    }

    #[test]
    fn an_on_off_schedule_has_its_period() {
        // 20 minutes on, 40 off, in 5 minute buckets: a period of 12.
        let xs = on_off(36, 4, 8, 5);
        assert_eq!(detect(&xs, 3, 144), Some(12));
        // Seen only once, it is not yet a period.
        assert_eq!(detect(&xs[..20], 3, 144), None);
    }

    #[test]
    fn a_period_is_known_the_bucket_before_its_third_rise() {
        // Rising at buckets 0 and 12: at bucket 23 the second sighting
        // lacks its last bucket, and the rise at 24 is still ahead.
        let xs = on_off(23, 4, 8, 0);
        assert_eq!(detect(&xs, 3, 144), Some(12));
        assert_eq!(detect(&xs[..22], 3, 144), None);
    }

    #[test]
    fn a_slowly_varying_level_has_no_period() {
        // A ramp and half a day's sine, in 5 minute buckets.
        let ramp: Vec<f64> = (0..144).map(|i| 5.0 + i as f64).collect();
        assert_eq!(detect(&ramp, 3, 144), None);
        let sine: Vec<f64> = (0..288)
            .map(|i| 60.0 + 50.0 * (i as f64 / 288.0 * std::f64::consts::PI).sin())
            .collect();
        assert_eq!(detect(&sine, 3, 144), None);
    }

    #[test]
    fn noise_and_random_bursts_have_no_period() {
        // A steady base with bursts at pseudo-random buckets.
        let mut state = 12345u64;
        let xs: Vec<f64> = (0..72)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                let u = (state >> 33) as f64 / f64::from(u32::MAX);
                if u > 0.85 {
                    60.0
                } else {
                    10.0 + 3.0 * u
                }
            })
            .collect();
        assert_eq!(detect(&xs, 3, 144), None);
    }

    #[test]
    fn a_coarse_period_is_refined_in_finer_buckets() {
        // A 47-bucket period found near 45 is refined to 47.
        let xs = on_off(400, 15, 32, 0);
        assert_eq!(refine(&xs, 45, 5), Some(47));
        assert_eq!(refine(&[], 45, 5), None);
    }
}
