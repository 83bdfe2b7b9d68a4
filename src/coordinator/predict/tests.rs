//! The forecast against recorded days: flat, daily office hours, a quiet
//! day, a young history, a trend; memory bounds and persistence.

use std::time::Duration;

use super::*;

/// Replicas a forecast of ongoing requests needs at the spec's target.
fn replicas_needed(f: &Forecast, spec: &ScalingSpec) -> u32 {
    replicas_for(
        f.expected_ongoing,
        f.expected_rps,
        spec.target_ongoing_requests,
        spec,
    )
}

/// Midnight, so hours of the day read plainly.
const T0: i64 = 20_000 * DAY_S;
const HOUR_S: i64 = 3600;

fn spec() -> ScalingSpec {
    ScalingSpec {
        min_replicas: 1,
        max_replicas: 20,
        target_ongoing_requests: 8.0,
        max_p95_latency: None,
        target_gpu_utilization: None,
        target_kv_cache_usage: None,
        stable_window: Duration::from_secs(60),
        panic_window: Duration::from_secs(6),
        panic_threshold: 2.0,
        tolerance: 0.1,
        scale_down_delay: Duration::from_secs(300),
        scale_to_zero_after: Duration::from_secs(900),
        max_scale_down_step: 1,
        prescale: true,
        scale_down_hold_factor: 2.0,
        cold_start_aware: true,
        size_from_arrivals: true,
        prescale_max_error: 0.1,
        slo: None,
        slo_kind: crate::config::model::SloKind::E2e,
    }
}

/// Records `demand(t)` every 10 s over `[from, to)`.
fn record(h: &mut DemandHistory, from: i64, to: i64, demand: impl Fn(i64) -> f64) {
    for t in (from..to).step_by(10) {
        h.record(t, demand(t), demand(t) / 2.0, 0.0);
    }
}

/// 10 in flight at night, 100 from 09:00 to 17:00.
fn office_hours(t: i64) -> f64 {
    let hour = t.rem_euclid(DAY_S) / HOUR_S;
    if (9..17).contains(&hour) {
        100.0
    } else {
        10.0
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn no_history_expects_nothing_and_says_so() {
    let f = DemandHistory::new().forecast(T0, 900);
    assert_eq!((f.expected_ongoing, f.expected_rps), (0.0, 0.0));
    assert_eq!(f.basis, "no demand history yet; expecting none (15m ahead)");
}

#[test]
fn flat_history_gives_a_flat_forecast() {
    let mut h = DemandHistory::new();
    let now = T0 + 3 * DAY_S;
    record(&mut h, T0, now, |_| 12.0);
    for horizon in [0, 60, 900, 3 * HOUR_S] {
        let f = h.forecast(now, horizon);
        assert!(close(f.expected_ongoing, 12.0), "{horizon}: {f:?}");
        assert!(close(f.expected_rps, 6.0), "{horizon}: {f:?}");
    }
    let f = h.forecast(now, 900);
    assert!(
        f.basis.contains("same time yesterday up to 12"),
        "{}",
        f.basis
    );
    assert!(f.basis.contains("trend +0/min"), "{}", f.basis);
}

#[test]
fn a_daily_rise_is_forecast_ahead_of_time() {
    let mut h = DemandHistory::new();
    let day3 = T0 + 2 * DAY_S;
    let now = day3 + 8 * HOUR_S + 40 * 60; // 08:40, still quiet
    record(&mut h, T0, now, office_hours);
    let spec = spec();

    // 20 minutes before the rise, a 30 minute horizon sees it...
    let ahead = h.forecast(now, 30 * 60);
    assert!(ahead.expected_ongoing > 60.0, "{ahead:?}");
    assert!(replicas_needed(&ahead, &spec) >= 8, "{ahead:?}");
    assert!(
        ahead.basis.contains("same time yesterday up to 100"),
        "{}",
        ahead.basis
    );
    // ...a 10 minute one does not yet.
    let short = h.forecast(now, 10 * 60);
    assert!(close(short.expected_ongoing, 10.0), "{short:?}");
    assert_eq!(replicas_needed(&short, &spec), 2);
}

#[test]
fn a_quieter_day_keeps_its_own_level() {
    let mut h = DemandHistory::new();
    let day2 = T0 + DAY_S;
    let now = day2 + 8 * HOUR_S + 50 * 60;
    record(&mut h, T0, day2, office_hours);
    // Today runs at half yesterday's night level.
    record(&mut h, day2, now, |_| 5.0);
    let f = h.forecast(now, 20 * 60);
    // Yesterday rose by 90 within the horizon: 5 + 90, in full (the flat
    // trend cannot see a rise that has not begun).
    assert!(close(f.expected_ongoing, 95.0), "{f:?}");
}

/// The forecast 10 minutes ahead, 8 h into a second day, when yesterday
/// was flat at `level` and so was today until it moved `slope` per second
/// over the last 5 minutes; it must blend season and trend.
fn blended_after_a_flat_day(level: f64, slope: f64) -> Forecast {
    let mut h = DemandHistory::new();
    let now = T0 + DAY_S + 8 * HOUR_S;
    record(&mut h, T0, now - 300, |_| level);
    record(&mut h, now - 300, now, |t| {
        level + slope * (t - (now - 300)) as f64
    });
    let f = h.forecast(now, 10 * 60);
    assert!(
        f.basis.contains("blended 70% season, 30% trend"),
        "{}",
        f.basis
    );
    f
}

#[test]
fn a_falling_trend_under_a_flat_season_is_blended_with_it() {
    // From 40 down to 10: the season only holds today's level (no rise
    // yesterday), so the fall the trend sees is blended in, not left out.
    let f = blended_after_a_flat_day(40.0, -0.1);
    assert!(f.expected_ongoing < 10.0, "{f:?}");
}

#[test]
fn a_trend_above_the_season_is_blended_with_it() {
    // From 10 up to 40. Season: today's level plus yesterday's (nil) rise;
    // trend: the climb projected, within twice the recent peak. The trend
    // sees what the season does not, so the two are blended.
    let f = blended_after_a_flat_day(10.0, 0.1);
    assert!(
        f.expected_ongoing > 40.0 && f.expected_ongoing < 80.0,
        "{f:?}"
    );
}

#[test]
fn last_week_counts_when_yesterday_is_missing() {
    let mut h = DemandHistory::new();
    let now = T0 + 7 * DAY_S + 8 * HOUR_S + 50 * 60;
    // One day of office hours a week ago, then nothing until just now.
    record(&mut h, T0, T0 + DAY_S, office_hours);
    record(&mut h, now - 300, now, |_| 10.0);
    let f = h.forecast(now, 20 * 60);
    assert!(
        f.basis.contains("same time last week up to 100"),
        "{}",
        f.basis
    );
    assert!(!f.basis.contains("yesterday"), "{}", f.basis);
    assert!(f.expected_ongoing > 60.0, "{f:?}");
}

#[test]
fn too_little_history_falls_back_to_the_recent_level() {
    let mut h = DemandHistory::new();
    record(&mut h, T0, T0 + 180, |_| 20.0);
    let f = h.forecast(T0 + 180, 900);
    assert!(close(f.expected_ongoing, 20.0), "{f:?}");
    assert!(
        f.basis
            .starts_with("too little history for a seasonal profile"),
        "{}",
        f.basis
    );
}

#[test]
fn a_recent_rise_is_projected_but_capped() {
    let mut h = DemandHistory::new();
    // 0 → 50 over five minutes: +10/min.
    record(&mut h, T0, T0 + 300, |t| (t - T0) as f64 / 6.0);
    let f = h.forecast(T0 + 300, 120);
    assert!(
        f.expected_ongoing > 60.0 && f.expected_ongoing < 80.0,
        "{f:?}"
    );
    assert!(f.basis.contains("trend +10/min"), "{}", f.basis);
    let far = h.forecast(T0 + 300, 6 * HOUR_S);
    assert!(far.expected_ongoing <= 2.0 * 50.0 + 1e-9, "{far:?}");
    // A fall ends at zero, not below.
    let mut h = DemandHistory::new();
    record(&mut h, T0, T0 + 300, |t| 50.0 - (t - T0) as f64 / 6.0);
    assert_eq!(h.forecast(T0 + 300, HOUR_S).expected_ongoing, 0.0);
}

#[test]
fn memory_stays_bounded_over_a_month() {
    let mut h = DemandHistory::new();
    let now = T0 + 30 * DAY_S;
    record(&mut h, T0, now, office_hours);
    assert_eq!(h.fine.slots.len(), FINE_BUCKETS);
    assert_eq!(h.coarse.slots.len(), COARSE_BUCKETS);
    assert_eq!(h.fine.filled().count(), FINE_BUCKETS);
    assert!(h.coarse.filled().all(|b| b.start >= now - 14 * DAY_S));
    assert!(h.fine.filled().all(|b| b.start >= now - DAY_S));
    let json = serde_json::to_string(&h).unwrap();
    assert!(json.len() < 1_000_000, "{} bytes", json.len());
}

#[test]
fn survives_a_serde_round_trip() {
    let mut h = DemandHistory::new();
    let now = T0 + 2 * DAY_S + 8 * HOUR_S;
    record(&mut h, T0, now, office_hours);
    let json = serde_json::to_string(&h).unwrap();
    let back: DemandHistory = serde_json::from_str(&json).unwrap();
    assert_eq!(back, h);
    assert_eq!(back.forecast(now, 3600), h.forecast(now, 3600));
    // A young history stores small.
    let mut young = DemandHistory::new();
    record(&mut young, T0, T0 + 60, |_| 1.0);
    let json = serde_json::to_string(&young).unwrap();
    assert!(json.len() < 500, "{json}");
}

#[test]
fn stored_garbage_is_dropped_not_trusted() {
    let json = r#"{"fine":[
        {"start":100,"ongoing_sum":-5.0,"rps_sum":1.0,"samples":1},
        {"start":200,"ongoing_sum":5.0,"rps_sum":1.0,"samples":0},
        {"start":305,"ongoing_sum":6.0,"rps_sum":2.0,"samples":2}
    ],"coarse":[]}"#;
    let h: DemandHistory = serde_json::from_str(json).unwrap();
    assert_eq!(h.fine.filled().count(), 1);
    assert_eq!(
        h.fine.get(300),
        // Buckets stored before the waiting requests were kept have none.
        Some(Demand {
            ongoing: 3.0,
            rps: 1.0,
            waiting: 0.0
        })
    );
}

#[test]
fn late_and_broken_samples_are_ignored() {
    let mut h = DemandHistory::new();
    h.record(T0 + DAY_S, 10.0, 1.0, 0.0);
    // Same slot a day earlier: already replaced.
    h.record(T0, 1000.0, 1.0, 0.0);
    h.record(T0 + DAY_S + 1, f64::NAN, 1.0, 0.0);
    h.record(T0 + DAY_S + 2, 10.0, 1.0, f64::INFINITY);
    // More waiting than ongoing is read as all of them waiting.
    h.record(T0 + DAY_S + 3, 10.0, 1.0, 12.0);
    assert_eq!(
        h.fine.get(T0 + DAY_S),
        Some(Demand {
            ongoing: 10.0,
            rps: 1.0,
            waiting: 5.0
        })
    );
    assert_eq!(h.fine.get(T0), None);
}

#[test]
fn replicas_needed_follows_the_target_within_bounds() {
    let spec = spec();
    let f = |ongoing: f64, rps: f64| Forecast {
        expected_ongoing: ongoing,
        expected_rps: rps,
        basis: String::new(),
        rps_basis: String::new(),
        expected_waiting: 0.0,
    };
    assert_eq!(replicas_needed(&f(16.0, 4.0), &spec), 2);
    assert_eq!(replicas_needed(&f(16.5, 4.0), &spec), 3);
    assert_eq!(replicas_needed(&f(1000.0, 4.0), &spec), 20);
    assert_eq!(replicas_needed(&f(0.0, 0.0), &spec), 1);
    let zero = ScalingSpec {
        min_replicas: 0,
        ..spec
    };
    assert_eq!(replicas_needed(&f(0.0, 0.0), &zero), 0);
    assert_eq!(replicas_needed(&f(0.0, 0.1), &zero), 1);
    assert_eq!(replicas_needed(&f(f64::NAN, 0.0), &zero), 0);
}

/// 120 in flight for the first 20 minutes of every hour, none for the other 40.
fn on_off(t: i64) -> f64 {
    if (t - T0).rem_euclid(HOUR_S) < 20 * 60 {
        120.0
    } else {
        0.0
    }
}

#[test]
fn an_hourly_schedule_is_forecast_before_its_next_rise() {
    let mut h = DemandHistory::new();
    // Two and a half hours: two rises seen, the third 30 minutes away.
    let now = T0 + 2 * HOUR_S + 59 * 60 + 20;
    record(&mut h, T0, now, on_off);
    assert_eq!(h.period_s(), Some(HOUR_S));
    // A start (60 s) ahead the rise 40 s away is seen...
    // ...in full: a flat recent minute does not discount a rise it cannot
    // see coming.
    let ahead = h.forecast(now, 60);
    assert!(ahead.expected_ongoing >= 120.0, "{ahead:?}");
    assert!(
        ahead.basis.contains("one period (1h) ago up to 120")
            && ahead
                .basis
                .contains("the season's rise, which the trend cannot see yet"),
        "{}",
        ahead.basis
    );
    assert_eq!(replicas_needed(&ahead, &spec()), 15, "{ahead:?}");
    // ...not ten minutes earlier.
    let early = h.forecast(now - 600, 60);
    assert!(early.expected_ongoing < 1.0, "{early:?}");
}

#[test]
fn one_rise_is_not_yet_a_period() {
    let mut h = DemandHistory::new();
    // A single office day, then a flat quiet one: no recurring period.
    record(&mut h, T0, T0 + DAY_S + 8 * HOUR_S, office_hours);
    assert_eq!(h.period_s(), None);
    let mut h = DemandHistory::new();
    record(&mut h, T0, T0 + HOUR_S + 30 * 60, on_off);
    assert_eq!(h.period_s(), None, "one and a half hours: seen once");
}
