//! Demand history per model and the forecast drawn from it: same time
//! yesterday and last week, and one recurring period ago where demand has
//! one shorter than a day, blended with the recent trend, one cold-start
//! horizon ahead. Pure: time is a parameter (unix seconds, since seasons
//! follow the wall clock), so the simulator can replay weeks in a second.

use serde::{Deserialize, Serialize};

use crate::config::model::ScalingSpec;
use crate::coordinator::autoscale::format_count as num;

const DAY_S: i64 = 24 * 3600;
const WEEK_S: i64 = 7 * DAY_S;

/// Fine buckets: 10 s over the last day, for the recent trend.
pub const FINE_BUCKET_S: i64 = 10;
const FINE_BUCKETS: usize = (DAY_S / FINE_BUCKET_S) as usize;
/// Coarse buckets: 5 min over the last two weeks, for the seasonal profile.
pub const COARSE_BUCKET_S: i64 = 300;
const COARSE_BUCKETS: usize = (14 * DAY_S / COARSE_BUCKET_S) as usize;

/// The recent trend is a straight line fitted to the last 5 minutes.
const TREND_SPAN_S: i64 = 300;
/// Fewer fine buckets than this give a level but no slope.
const TREND_MIN_BUCKETS: usize = 3;
/// A trend projection never exceeds this multiple of the recent peak: a
/// straight line from five minutes of data is no licence to promise a flood.
const TREND_CAP: f64 = 2.0;
/// Where a season's base level ("now", yesterday) is read from.
const SEASON_BASE_S: i64 = 600;
/// Weights of the seasonal lags among those with data.
const LAGS: [(i64, &str, f64); 2] = [(DAY_S, "yesterday", 0.6), (WEEK_S, "last week", 0.4)];
/// Weight of the seasonal estimate against the recent trend when both exist.
const SEASON_WEIGHT: f64 = 0.7;
/// Horizons beyond a day would read yesterday's profile from the future.
const MAX_HORIZON_S: i64 = DAY_S;
/// Recurring periods looked for: from a quarter of an hour to half a day
/// (a day's is the daily lag's).
const MIN_PERIOD_S: i64 = 15 * 60;
const MAX_PERIOD_S: i64 = DAY_S / 2;
/// Weight of the season one recurring period ago among the seasonal lags.
const PERIOD_WEIGHT: f64 = 0.6;

mod period;

/// One bucket's sums; `samples == 0` is an empty slot. Public as the
/// store keeps it, in pieces (`DemandHistory::stored`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Bucket {
    start: i64,
    ongoing_sum: f64,
    rps_sum: f64,
    /// The waiting part of the ongoing requests (absent from histories
    /// stored before it was kept: none). Left out when none waited, as in
    /// most buckets, so a history stores no larger for it.
    #[serde(default, skip_serializing_if = "is_zero")]
    waiting_sum: f64,
    samples: u32,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Mean demand over some span.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Demand {
    ongoing: f64,
    rps: f64,
    waiting: f64,
}

/// Bitwise, so that the store can tell a changed bucket from its hash.
impl std::hash::Hash for Bucket {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.start.hash(state);
        self.ongoing_sum.to_bits().hash(state);
        self.rps_sum.to_bits().hash(state);
        self.waiting_sum.to_bits().hash(state);
        self.samples.hash(state);
    }
}

impl Bucket {
    /// Unix seconds at which the bucket begins.
    pub fn start(&self) -> i64 {
        self.start
    }

    fn mean(&self) -> Option<Demand> {
        (self.samples > 0).then(|| Demand {
            ongoing: self.ongoing_sum / f64::from(self.samples),
            rps: self.rps_sum / f64::from(self.samples),
            waiting: self.waiting_sum / f64::from(self.samples),
        })
    }
}

/// Buckets of one width in a fixed ring: a slot is reused once its bucket
/// falls out of the span, so memory never grows.
#[derive(Debug, Clone, PartialEq)]
struct Ring {
    width: i64,
    slots: Vec<Bucket>,
}

impl Ring {
    fn new(width: i64, len: usize) -> Ring {
        Ring {
            width,
            slots: vec![Bucket::default(); len],
        }
    }

    fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.width) * self.width
    }

    fn slot(&self, start: i64) -> usize {
        // The ring length is a few thousand, so it fits any integer type.
        start
            .div_euclid(self.width)
            .rem_euclid(self.slots.len() as i64) as usize
    }

    fn add(&mut self, t: i64, d: Demand) {
        let start = self.start_of(t);
        let i = self.slot(start);
        let slot = &mut self.slots[i];
        if slot.samples > 0 && slot.start > start {
            // A sample older than what replaced its slot: out of the span.
            return;
        }
        if slot.samples == 0 || slot.start < start {
            *slot = Bucket {
                start,
                ..Bucket::default()
            };
        }
        slot.ongoing_sum += d.ongoing;
        slot.rps_sum += d.rps;
        slot.waiting_sum += d.waiting;
        slot.samples = slot.samples.saturating_add(1);
    }

    /// Puts back a stored bucket; of two for one slot, the newer stays.
    fn restore(&mut self, b: Bucket) {
        let sums = [b.ongoing_sum, b.rps_sum, b.waiting_sum];
        let valid = b.samples > 0 && sums.iter().all(|s| s.is_finite() && *s >= 0.0);
        let start = self.start_of(b.start);
        if !valid {
            return;
        }
        let i = self.slot(start);
        if self.slots[i].samples == 0 || self.slots[i].start < start {
            self.slots[i] = Bucket { start, ..b };
        }
    }

    fn get(&self, start: i64) -> Option<Demand> {
        let b = &self.slots[self.slot(start)];
        if b.start == start {
            b.mean()
        } else {
            None
        }
    }

    /// Bucket means whose buckets start in `[from, to]`, oldest first.
    fn span(&self, from: i64, to: i64) -> Vec<(i64, Demand)> {
        let mut out = Vec::new();
        let mut start = self.start_of(from);
        while start <= to {
            if let Some(d) = self.get(start) {
                out.push((start, d));
            }
            start += self.width;
        }
        out
    }

    fn filled(&self) -> impl Iterator<Item = &Bucket> {
        self.slots.iter().filter(|b| b.samples > 0)
    }
}

/// A model's demand over the last two weeks, in bounded memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "StoredHistory", into = "StoredHistory")]
pub struct DemandHistory {
    fine: Ring,
    coarse: Ring,
    /// The recurring period found at the start of a coarse bucket: derived
    /// from the buckets, looked for once per coarse bucket, not stored.
    period: Option<FoundPeriod>,
}

#[derive(Debug, Clone, Copy)]
struct FoundPeriod {
    /// The coarse bucket it was looked for in.
    at: i64,
    seconds: Option<i64>,
}

/// Two histories are equal when their buckets are: the period is derived.
impl PartialEq for DemandHistory {
    fn eq(&self, other: &Self) -> bool {
        self.fine == other.fine && self.coarse == other.coarse
    }
}

/// The persisted form: filled buckets only, so a young history stays small.
#[derive(Serialize, Deserialize)]
struct StoredHistory {
    fine: Vec<Bucket>,
    coarse: Vec<Bucket>,
}

impl From<DemandHistory> for StoredHistory {
    fn from(h: DemandHistory) -> Self {
        StoredHistory {
            fine: h.fine.filled().copied().collect(),
            coarse: h.coarse.filled().copied().collect(),
        }
    }
}

impl From<StoredHistory> for DemandHistory {
    fn from(s: StoredHistory) -> Self {
        DemandHistory::from_stored(s.fine, s.coarse)
    }
}

impl Default for DemandHistory {
    fn default() -> Self {
        Self::new()
    }
}

/// Expected demand at the end of a horizon, and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub expected_ongoing: f64,
    pub expected_rps: f64,
    /// In words: which history the numbers come from, or why there is none.
    pub basis: String,
    /// The same for the arrival rate's numbers.
    pub rps_basis: String,
    /// Of the expected ongoing requests, those waiting (where engines say).
    pub expected_waiting: f64,
}

impl DemandHistory {
    pub fn new() -> Self {
        DemandHistory {
            fine: Ring::new(FINE_BUCKET_S, FINE_BUCKETS),
            coarse: Ring::new(COARSE_BUCKET_S, COARSE_BUCKETS),
            period: None,
        }
    }

    /// The filled buckets, as the store keeps them: the fine ring's, then
    /// the coarse ring's, in slot order.
    pub fn stored(&self) -> [(&'static str, Vec<&Bucket>); 2] {
        [
            ("fine", self.fine.filled().collect()),
            ("coarse", self.coarse.filled().collect()),
        ]
    }

    /// A history from stored buckets, in any order: of two for one slot,
    /// the newer stays; broken ones are left out.
    pub fn from_stored(
        fine: impl IntoIterator<Item = Bucket>,
        coarse: impl IntoIterator<Item = Bucket>,
    ) -> DemandHistory {
        let mut h = DemandHistory::new();
        for b in fine {
            h.fine.restore(b);
        }
        for b in coarse {
            h.coarse.restore(b);
        }
        h
    }

    /// Records one observation of the model's demand (once per tick is
    /// plenty; bucket means do not depend on the rate): ongoing requests,
    /// requests per second and, of the ongoing, those waiting. Broken
    /// readings are dropped rather than averaged in.
    pub fn record(&mut self, now_unix_s: i64, ongoing: f64, requests_per_s: f64, waiting: f64) {
        if !(ongoing.is_finite() && requests_per_s.is_finite() && waiting.is_finite()) {
            return;
        }
        let ongoing = ongoing.max(0.0);
        let d = Demand {
            ongoing,
            rps: requests_per_s.max(0.0),
            waiting: waiting.clamp(0.0, ongoing),
        };
        self.fine.add(now_unix_s, d);
        self.coarse.add(now_unix_s, d);
        let bucket = self.coarse.start_of(now_unix_s);
        if self.period.is_none_or(|p| p.at < bucket) {
            self.period = Some(FoundPeriod {
                at: bucket,
                seconds: self.find_period(bucket),
            });
        }
    }

    /// The recurring period of the demand before `bucket` (a coarse
    /// bucket's start), if it has one seen at least twice within the last
    /// day: found in the coarse buckets, then refined to the fine ones.
    /// Unrecorded buckets after the first recorded one count as no demand
    /// (a model at zero records nothing).
    fn find_period(&self, bucket: i64) -> Option<i64> {
        let coarse = series(&self.coarse, bucket - DAY_S, bucket);
        let lag = period::detect(
            &coarse,
            (MIN_PERIOD_S / COARSE_BUCKET_S) as usize,
            (MAX_PERIOD_S / COARSE_BUCKET_S) as usize,
        )? as i64;
        let seconds = lag * COARSE_BUCKET_S;
        let fine = series(&self.fine, bucket - (4 * seconds).min(DAY_S), bucket);
        let per = COARSE_BUCKET_S / FINE_BUCKET_S;
        let lag = period::refine(&fine, (lag * per) as usize, per as usize)? as i64;
        Some(lag * FINE_BUCKET_S)
    }

    /// The recurring period of the demand (shorter than a day), if any.
    pub fn period_s(&self) -> Option<i64> {
        self.period.and_then(|p| p.seconds)
    }

    /// Expected demand `horizon_s` from now (capped at a day).
    ///
    /// - Recent trend: a least-squares line through the 10 s buckets of the
    ///   last 5 minutes, projected to the horizon, kept between 0 and twice
    ///   the recent peak.
    /// - Season: for yesterday (weight 0.6) and last week (0.4), the peak
    ///   of that day's 5 min buckets between the same time and the same time
    ///   plus the horizon, minus that day's level at the same time (its last
    ///   10 minutes): how much demand rose then. Added to today's level, so
    ///   a quieter or busier day keeps its own level. The peak, not the
    ///   value at the horizon's end, so that a rise anywhere inside the
    ///   horizon is seen, and a fall is left to the autoscaler.
    /// - Blend: 0.7 season + 0.3 trend when both exist; either alone
    ///   otherwise; zero with no history at all.
    pub fn forecast(&self, now_unix_s: i64, horizon_s: i64) -> Forecast {
        let horizon = horizon_s.clamp(0, MAX_HORIZON_S);
        let recent = self.trend_buckets(now_unix_s);
        let ongoing = self.forecast_one(&recent, now_unix_s, horizon, |d| d.ongoing);
        let rps = self.forecast_one(&recent, now_unix_s, horizon, |d| d.rps);
        let waiting = self.forecast_one(&recent, now_unix_s, horizon, |d| d.waiting);
        let basis = |estimate: &Option<Estimate>| {
            let words = match (estimate, recent.is_empty()) {
                (None, _) => "no demand history yet; expecting none".to_string(),
                (Some(o), true) => format!(
                    "no demand recorded in the last {}; {}",
                    minutes(TREND_SPAN_S),
                    o.words
                ),
                (Some(o), false) => o.words.clone(),
            };
            format!("{words} ({} ahead)", minutes(horizon))
        };
        Forecast {
            expected_ongoing: ongoing.as_ref().map_or(0.0, |o| o.value),
            expected_rps: rps.as_ref().map_or(0.0, |o| o.value),
            expected_waiting: waiting.as_ref().map_or(0.0, |o| o.value),
            basis: basis(&ongoing),
            rps_basis: basis(&rps),
        }
    }

    /// The fine buckets the trend at `at` is fitted to (the last
    /// `TREND_SPAN_S`), each at its middle.
    fn trend_buckets(&self, at: i64) -> Vec<(i64, Demand)> {
        self.fine
            .span(at - TREND_SPAN_S + 1, at)
            .into_iter()
            .map(|(start, d)| ((start + FINE_BUCKET_S / 2).min(at), d))
            .collect()
    }

    fn forecast_one(
        &self,
        recent: &[(i64, Demand)],
        now: i64,
        horizon: i64,
        pick: impl Fn(&Demand) -> f64,
    ) -> Option<Estimate> {
        let trend = fit_trend(recent, now, horizon, &pick);
        let level = trend.as_ref().map(|t| t.level);
        let mut seasons = Vec::new();
        for (lag, name, weight) in LAGS {
            let name = format!("same time {name}");
            let then = now - lag;
            let Some(peak) = self
                .coarse
                .span(then, then + horizon)
                .iter()
                .map(|(_, d)| pick(d))
                .reduce(f64::max)
            else {
                continue;
            };
            let base = mean(
                self.coarse
                    .span(then - SEASON_BASE_S + 1, then)
                    .iter()
                    .map(|(_, d)| pick(d)),
            );
            let estimate = risen(level, base, peak);
            seasons.push((name, weight, peak, estimate));
        }
        if let Some(p) = self.period_s() {
            let then = now - p;
            let peak = self
                .fine
                .span(then, then + horizon.min(p))
                .iter()
                .map(|(_, d)| pick(d))
                .reduce(f64::max);
            if let Some(peak) = peak {
                // The level then, read as today's is: a rise a period ago
                // is added to today's level.
                let base = fit_trend(&self.trend_buckets(then), then, 0, &pick).map(|t| t.level);
                let estimate = risen(level, base, peak);
                seasons.push((period_name(p), PERIOD_WEIGHT, peak, estimate));
            }
        }
        let season = if seasons.is_empty() {
            None
        } else {
            let total: f64 = seasons.iter().map(|s| s.1).sum();
            Some(seasons.iter().map(|s| s.1 * s.3).sum::<f64>() / total)
        };
        let season_words = seasons
            .iter()
            .map(|(name, _, peak, _)| format!("{name} up to {}", num(*peak)))
            .collect::<Vec<_>>()
            .join(", ");
        match (season, trend) {
            // A line through the last minutes cannot see a rise that has
            // not begun: averaged with it, a season's rise would be
            // promised at 70% (a pre-scaled hourly job met 17 of the 25
            // replicas it needed). The season is already added to today's
            // level, so where it rises above both today's level and the
            // trend it stands alone. A season that only holds today's level
            // while the trend falls is no rise: those are blended.
            (Some(s), Some(t)) if s > t.projected && s > t.level => Some(Estimate {
                value: s,
                words: format!(
                    "{season_words}; recent {} with trend {}/min; \
                     the season's rise, which the trend cannot see yet",
                    num(t.level),
                    signed(t.slope_per_s * 60.0),
                ),
            }),
            (Some(s), Some(t)) => Some(Estimate {
                value: SEASON_WEIGHT * s + (1.0 - SEASON_WEIGHT) * t.projected,
                words: format!(
                    "{season_words}; recent {} with trend {}/min; \
                     blended {:.0}% season, {:.0}% trend",
                    num(t.level),
                    signed(t.slope_per_s * 60.0),
                    SEASON_WEIGHT * 100.0,
                    (1.0 - SEASON_WEIGHT) * 100.0
                ),
            }),
            (Some(s), None) => Some(Estimate {
                value: s,
                words: season_words,
            }),
            (None, Some(t)) => Some(Estimate {
                value: t.projected,
                words: format!(
                    "too little history for a seasonal profile (nothing from \
                     yesterday or last week): recent level {} with trend {}/min",
                    num(t.level),
                    signed(t.slope_per_s * 60.0)
                ),
            }),
            (None, None) => None,
        }
    }
}

struct Estimate {
    value: f64,
    words: String,
}

struct Trend {
    /// The fitted value now.
    level: f64,
    slope_per_s: f64,
    /// The line at the horizon, within [0, TREND_CAP × recent peak].
    projected: f64,
}

/// Least squares through the recent buckets; with too few, a flat level.
fn fit_trend(
    recent: &[(i64, Demand)],
    now: i64,
    horizon: i64,
    pick: impl Fn(&Demand) -> f64,
) -> Option<Trend> {
    let points: Vec<(f64, f64)> = recent
        .iter()
        .map(|(t, d)| ((t - now) as f64, pick(d)))
        .collect();
    let peak = points.iter().map(|p| p.1).reduce(f64::max)?;
    let flat = mean(points.iter().map(|p| p.1))?;
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if points.len() < TREND_MIN_BUCKETS || sxx <= 0.0 {
        return Some(Trend {
            level: flat,
            slope_per_s: 0.0,
            projected: flat,
        });
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - flat)).sum();
    let slope = sxy / sxx;
    // x is time relative to now, so the line's value now is its intercept.
    let level = (flat - slope * mean_x).max(0.0);
    let projected = (level + slope * horizon as f64).clamp(0.0, TREND_CAP * peak.max(level));
    Some(Trend {
        level,
        slope_per_s: slope,
        projected,
    })
}

/// Today's level plus how far demand rose from `base` to `peak` then; the
/// peak alone without both levels.
fn risen(level: Option<f64>, base: Option<f64>, peak: f64) -> f64 {
    match (level, base) {
        (Some(level), Some(base)) => (level + peak - base).max(0.0),
        _ => peak,
    }
}

/// Bucket means over `[from, to)`, from the first recorded bucket on, an
/// unrecorded one after it as zero.
fn series(ring: &Ring, from: i64, to: i64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut start = ring.start_of(from);
    while start < to {
        match ring.get(start) {
            Some(d) => out.push(d.ongoing),
            None if !out.is_empty() => out.push(0.0),
            None => {}
        }
        start += ring.width;
    }
    out
}

/// "one period (1h) ago", as the forecast's basis says it.
fn period_name(seconds: i64) -> String {
    let text = if seconds % 3600 == 0 {
        format!("{}h", seconds / 3600)
    } else {
        minutes(seconds)
    };
    format!("one period ({text}) ago")
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn signed(v: f64) -> String {
    let text = num(v);
    if text.starts_with('-') {
        text
    } else {
        format!("+{text}")
    }
}

fn minutes(s: i64) -> String {
    if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Replicas that serve `concurrent` requests at `target` per replica,
/// within the spec's bounds; any expected request at all (`rps` above
/// zero) needs one.
pub fn replicas_for(concurrent: f64, rps: f64, target: f64, spec: &ScalingSpec) -> u32 {
    let concurrent = concurrent.max(0.0);
    let wanted = if concurrent.is_finite() && concurrent > 0.0 && target > 0.0 {
        let n = (concurrent / target - 1e-9).ceil();
        n.clamp(1.0, f64::from(spec.max_replicas)) as u32
    } else {
        u32::from(rps > 0.0)
    };
    wanted.clamp(spec.min_replicas, spec.max_replicas)
}

#[cfg(test)]
mod tests;
