//! Cumulative histograms as engines expose them (`_bucket{le}`, `_sum`, `_count`),
//! the difference between two scrapes, and the quantile estimate Prometheus's
//! `histogram_quantile` makes from it.

use super::prom::{parse_value, Exposition};

/// One bucket: how many observations were at most `upper`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub upper: f64,
    pub cumulative: f64,
}

/// Buckets sorted by upper bound, ending with the `+Inf` bucket, counts never
/// decreasing from one bucket to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct CumulativeHistogram {
    buckets: Vec<Bucket>,
    sum: Option<f64>,
}

impl CumulativeHistogram {
    /// Builds a histogram from `(upper bound, cumulative count)` pairs in any
    /// order (equal bounds from several label sets are added up), the `_count`
    /// and the `_sum`. Without a `+Inf` bucket, `_count` (or else the highest
    /// bucket) stands in for it. `None` when there is nothing to build from.
    pub fn from_parts(
        pairs: Vec<(f64, f64)>,
        count: Option<f64>,
        sum: Option<f64>,
    ) -> Option<Self> {
        let mut pairs: Vec<(f64, f64)> = pairs
            .into_iter()
            .filter(|(upper, n)| !upper.is_nan() && n.is_finite())
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buckets: Vec<Bucket> = Vec::with_capacity(pairs.len() + 1);
        for (upper, n) in pairs {
            match buckets.last_mut() {
                Some(last) if last.upper == upper => last.cumulative += n,
                _ => buckets.push(Bucket {
                    upper,
                    cumulative: n,
                }),
            }
        }
        let has_inf = buckets.last().is_some_and(|b| b.upper == f64::INFINITY);
        if !has_inf {
            let total = count
                .filter(|c| c.is_finite())
                .or_else(|| buckets.last().map(|b| b.cumulative))?;
            buckets.push(Bucket {
                upper: f64::INFINITY,
                cumulative: total,
            });
        }
        // Buckets are scraped one by one while requests finish, so a higher
        // bucket can read lower than the one below it; Prometheus repairs the
        // same way.
        let mut running_max = f64::NEG_INFINITY;
        for b in &mut buckets {
            running_max = running_max.max(b.cumulative);
            b.cumulative = running_max;
        }
        Some(CumulativeHistogram {
            buckets,
            sum: sum.filter(|s| s.is_finite()),
        })
    }

    /// Reads the histogram `family` from a scrape, adding up every label set
    /// (models, engines) bucket by bucket.
    pub fn from_exposition(exposition: &Exposition, family: &str) -> Option<Self> {
        let pairs: Vec<(f64, f64)> = exposition
            .samples(&format!("{family}_bucket"))
            .iter()
            .filter_map(|s| Some((parse_value(s.label("le")?)?, s.value)))
            .collect();
        let count = exposition.sum(&format!("{family}_count"));
        let sum = exposition.sum(&format!("{family}_sum"));
        if pairs.is_empty() && count.is_none() {
            return None;
        }
        Self::from_parts(pairs, count, sum)
    }

    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Observations in total (the `+Inf` bucket).
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.cumulative)
    }

    fn same_layout(&self, other: &Self) -> bool {
        self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.upper == b.upper)
    }

    /// What was observed between `earlier` and `self`. A bucket that went
    /// down, or a changed set of buckets, means the server restarted: then
    /// everything in `self` is new.
    pub fn since(&self, earlier: &Self) -> Self {
        let reset = !self.same_layout(earlier)
            || self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .any(|(now, then)| now.cumulative < then.cumulative);
        if reset {
            return self.clone();
        }
        CumulativeHistogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(now, then)| Bucket {
                    upper: now.upper,
                    cumulative: now.cumulative - then.cumulative,
                })
                .collect(),
            sum: match (self.sum, earlier.sum) {
                (Some(now), Some(then)) if now >= then => Some(now - then),
                (Some(now), Some(_)) => Some(now),
                _ => None,
            },
        }
    }

    /// Adds the observations of `later` (a delta); a delta with other buckets
    /// replaces this one, since the two cannot be combined.
    pub fn absorb(&mut self, later: Self) {
        if !self.same_layout(&later) {
            *self = later;
            return;
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&later.buckets) {
            mine.cumulative += theirs.cumulative;
        }
        self.sum = match (self.sum, later.sum) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }

    /// The `q` quantile (0..=1) estimated as Prometheus's `histogram_quantile`
    /// does: linear interpolation inside the bucket where the rank falls, the
    /// first bucket starting at 0. A rank in the `+Inf` bucket gives the
    /// highest finite bound. `None` with no observations, no finite bucket, or
    /// `q` outside 0..=1.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total = self.count();
        if total <= 0.0 || self.buckets.len() < 2 {
            return None;
        }
        let rank = q * total;
        let index = self
            .buckets
            .iter()
            .position(|b| b.cumulative >= rank)
            .unwrap_or(self.buckets.len() - 1);
        let bucket = self.buckets[index];
        if bucket.upper == f64::INFINITY {
            return index.checked_sub(1).map(|i| self.buckets[i].upper);
        }
        let (lower, below) = match index {
            0 if bucket.upper <= 0.0 => return Some(bucket.upper),
            0 => (0.0, 0.0),
            i => (self.buckets[i - 1].upper, self.buckets[i - 1].cumulative),
        };
        let inside = bucket.cumulative - below;
        if inside <= 0.0 {
            return Some(bucket.upper);
        }
        Some(lower + (bucket.upper - lower) * (rank - below) / inside)
    }

    /// Mean observation (`_sum / _count`): what is left when the buckets say
    /// nothing (only `+Inf`).
    pub fn mean(&self) -> Option<f64> {
        let count = self.count();
        let sum = self.sum?;
        (count > 0.0 && sum >= 0.0).then(|| sum / count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(pairs: &[(f64, f64)]) -> CumulativeHistogram {
        CumulativeHistogram::from_parts(pairs.to_vec(), None, None).unwrap()
    }

    #[test]
    fn interpolates_inside_the_bucket_like_prometheus() {
        // 40 requests ≤ 1 s, 10 more ≤ 2 s: rank 47.5 lies 7.5/10 into (1, 2].
        let h = hist(&[(1.0, 40.0), (2.0, 50.0), (f64::INFINITY, 50.0)]);
        assert!((h.quantile(0.95).unwrap() - 1.75).abs() < 1e-9);
        assert!((h.quantile(0.5).unwrap() - 0.625).abs() < 1e-9);
    }

    #[test]
    fn all_in_the_first_bucket_interpolates_from_zero() {
        let h = hist(&[(0.5, 20.0), (1.0, 20.0), (f64::INFINITY, 20.0)]);
        assert!((h.quantile(0.95).unwrap() - 0.475).abs() < 1e-9);
    }

    #[test]
    fn a_rank_in_the_inf_bucket_gives_the_highest_finite_bound() {
        let h = hist(&[(1.0, 2.0), (5.0, 8.0), (f64::INFINITY, 100.0)]);
        assert_eq!(h.quantile(0.95), Some(5.0));
    }

    #[test]
    fn no_observations_or_only_inf_gives_no_quantile() {
        assert_eq!(
            hist(&[(1.0, 0.0), (f64::INFINITY, 0.0)]).quantile(0.95),
            None
        );
        let only_inf =
            CumulativeHistogram::from_parts(vec![(f64::INFINITY, 10.0)], Some(10.0), Some(25.0))
                .unwrap();
        assert_eq!(only_inf.quantile(0.95), None);
        assert_eq!(only_inf.mean(), Some(2.5));
        assert_eq!(CumulativeHistogram::from_parts(vec![], None, None), None);
    }

    #[test]
    fn count_stands_in_for_a_missing_inf_bucket() {
        let h = CumulativeHistogram::from_parts(vec![(1.0, 5.0)], Some(10.0), None).unwrap();
        assert_eq!(h.count(), 10.0);
        assert_eq!(h.quantile(0.95), Some(1.0));
    }

    #[test]
    fn adds_label_sets_and_repairs_non_monotonic_buckets() {
        let h = hist(&[
            (1.0, 3.0),
            (f64::INFINITY, 4.0),
            (1.0, 2.0),
            (2.0, 4.0),
            (f64::INFINITY, 5.0),
        ]);
        let counts: Vec<f64> = h.buckets().iter().map(|b| b.cumulative).collect();
        assert_eq!(counts, [5.0, 5.0, 9.0]);
    }

    #[test]
    fn since_subtracts_and_treats_a_decrease_as_a_restart() {
        let before = CumulativeHistogram::from_parts(
            vec![(1.0, 10.0), (f64::INFINITY, 12.0)],
            None,
            Some(9.0),
        )
        .unwrap();
        let after = CumulativeHistogram::from_parts(
            vec![(1.0, 15.0), (f64::INFINITY, 20.0)],
            None,
            Some(20.0),
        )
        .unwrap();
        let delta = after.since(&before);
        assert_eq!(delta.count(), 8.0);
        assert_eq!(delta.mean(), Some(11.0 / 8.0));
        let restarted =
            CumulativeHistogram::from_parts(vec![(1.0, 1.0), (f64::INFINITY, 3.0)], None, None)
                .unwrap();
        assert_eq!(restarted.since(&after), restarted);
    }

    #[test]
    fn absorb_adds_matching_layouts_and_replaces_others() {
        let mut acc = hist(&[(1.0, 1.0), (f64::INFINITY, 2.0)]);
        acc.absorb(hist(&[(1.0, 3.0), (f64::INFINITY, 3.0)]));
        assert_eq!(acc.count(), 5.0);
        let other = hist(&[(2.0, 1.0), (f64::INFINITY, 1.0)]);
        acc.absorb(other.clone());
        assert_eq!(acc, other);
    }

    #[test]
    fn reads_a_histogram_family_from_a_scrape() {
        let body = "lat_bucket{le=\"0.5\",m=\"a\"} 1\nlat_bucket{le=\"+Inf\",m=\"a\"} 2\nlat_bucket{le=\"0.5\",m=\"b\"} 3\nlat_bucket{le=\"+Inf\",m=\"b\"} 3\nlat_sum{m=\"a\"} 1\nlat_count{m=\"a\"} 2\n";
        let exp = crate::agent::scrape::prom::parse(body).unwrap();
        let h = CumulativeHistogram::from_exposition(&exp, "lat").unwrap();
        assert_eq!(h.count(), 5.0);
        assert_eq!(h.buckets()[0].cumulative, 4.0);
        assert_eq!(CumulativeHistogram::from_exposition(&exp, "absent"), None);
    }
}
