//! The burst memory on a virtual clock: capacity for recurring bursts sized
//! from the SLO, held while they recur and released when they stop, and a
//! panic bounded by what serves a burst within the SLO.

use std::time::{Duration, Instant};

use super::burst::{burst_need, BurstMemory, Limits};
use super::tests::spec;
use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn limits(min_hold: Duration, horizon_cap: Duration, longest_s: Option<f64>) -> Limits {
    Limits {
        min_hold,
        horizon_cap,
        longest_s,
    }
}

#[test]
fn a_burst_needs_the_replicas_that_work_it_off_within_the_slo_wait() {
    // 60 req/s of 1 s requests at 8 per replica: 7.5 replicas' worth while
    // it lasts; a 10 s burst that may wait 10 s more is worked off by half.
    assert_eq!(burst_need(60.0, 10.0, 1.0, 8.0, 10.0), 3.75);
    // Without a wait, all of it; a long burst asks for nearly all of it.
    assert_eq!(burst_need(60.0, 10.0, 1.0, 8.0, 0.0), 7.5);
    assert!(burst_need(60.0, 3600.0, 1.0, 8.0, 10.0) > 7.4);
    assert_eq!(burst_need(0.0, 10.0, 1.0, 8.0, 10.0), 0.0);
    assert_eq!(burst_need(f64::NAN, 10.0, 1.0, 8.0, 10.0), 0.0);
}

/// Feeds `memory` one tick a second: a burst of `rps` for `secs` seconds on
/// a base of 10 req/s from `now`, then 10 req/s until `next` seconds after
/// `now`.
fn burst(memory: &mut BurstMemory, now: Instant, rps: f64, secs: u64, next: u64) -> Instant {
    let longest = Duration::from_secs(1200);
    for i in 0..next {
        let t = now + SECOND * i as u32;
        let rate = if i < secs { rps } else { 10.0 };
        memory.observe(t, rate, 10.0, longest);
        if i == 2 {
            // Recognised a few ticks in, as a panic would be: it counts
            // from when arrivals rose.
            memory.begin(t, 10.0);
        }
    }
    now + SECOND * next as u32
}

#[test]
fn bursts_are_remembered_while_they_recur_and_forgotten_when_they_stop() {
    let mut m = BurstMemory::default();
    let t0 = Instant::now();
    let hold = Duration::from_secs(60);
    let cap = Duration::from_secs(1200);
    let recall = |m: &mut BurstMemory, now| m.recall(now, 1.0, 8.0, 10.0, limits(hold, cap, None));
    m.observe(t0 - SECOND, 10.0, 10.0, cap);
    let mut now = burst(&mut m, t0, 60.0, 10, 120);
    assert_eq!(recall(&mut m, now), None, "one burst is not a pattern");
    now = burst(&mut m, now, 60.0, 10, 120);
    now = burst(&mut m, now, 60.0, 10, 120);
    let r = recall(&mut m, now).expect("three bursts two minutes apart recur");
    // 60 req/s for 10 s, counted from the second arrivals rose though it
    // was recognised later: 60 / 8 × 10 / 20 = 3.75.
    assert_eq!(m.typical_length_s(), Some(10.0));
    assert_eq!((r.replicas, r.bursts, r.rps), (4, 3, 60.0), "{r:?}");
    // Held for several of their spacings (2 min each) after the last…
    assert!(recall(&mut m, now + Duration::from_secs(600)).is_some());
    // …and released once the horizon (here its cap, 20 min) passes.
    assert_eq!(recall(&mut m, now + Duration::from_secs(1500)), None);
}

#[test]
fn a_burst_many_starts_long_keeps_no_capacity_between_bursts() {
    let mut m = BurstMemory::default();
    let t0 = Instant::now();
    let hold = Duration::from_secs(60);
    let cap = Duration::from_secs(1200);
    m.observe(t0 - SECOND, 10.0, 10.0, cap);
    // A 10 s burst at 60 req/s, then a 5-minute crowd at 100 req/s.
    let mut now = burst(&mut m, t0, 60.0, 10, 120);
    now = burst(&mut m, now, 100.0, 300, 330);
    // Without a limit the crowd sets the floor: 100 / 8 × 300 / 310.
    let all = m
        .recall(now, 1.0, 8.0, 10.0, limits(hold, cap, None))
        .unwrap();
    assert_eq!((all.replicas, all.rps), (13, 100.0), "{all:?}");
    // With 36 s starts the crowd lasted 8 of them: replicas started for it
    // served it, and the short burst alone sets the floor.
    let short = m
        .recall(now, 1.0, 8.0, 10.0, limits(hold, cap, Some(4.0 * 36.0)))
        .unwrap();
    assert_eq!((short.replicas, short.rps), (4, 60.0), "{short:?}");
    // Only long ones: none.
    let mut m = BurstMemory::default();
    m.observe(t0 - SECOND, 10.0, 10.0, cap);
    let mut now = burst(&mut m, t0, 100.0, 300, 330);
    now = burst(&mut m, now, 100.0, 300, 330);
    assert_eq!(
        m.recall(now, 1.0, 8.0, 10.0, limits(hold, cap, Some(144.0))),
        None
    );
}

#[test]
fn a_burst_that_lasts_as_long_as_the_longest_is_a_new_level_not_a_burst() {
    let mut m = BurstMemory::default();
    let t0 = Instant::now();
    let longest = Duration::from_secs(100);
    m.begin(t0, 10.0);
    for i in 0..200u32 {
        m.observe(t0 + SECOND * i, 60.0, 10.0, longest);
    }
    m.observe(t0 + SECOND * 201, 10.0, 10.0, longest);
    // One short burst after it: had the level been kept, two would be.
    m.begin(t0 + SECOND * 300, 10.0);
    for i in 300..311u32 {
        let rate = if i < 310 { 60.0 } else { 10.0 };
        m.observe(t0 + SECOND * i, rate, 10.0, longest);
    }
    assert_eq!(m.typical_length_s(), None, "one burst remembered");
}

/// A closed loop around the autoscaler: replicas become ready `start`
/// after they are asked for, each runs up to 8 requests of 1 s at once,
/// and requests beyond that queue. Arrivals per second come from `rate`.
/// Returns the decisions, one per second.
fn run(spec: &ScalingSpec, secs: u32, rate: impl Fn(u32) -> f64) -> Vec<(u32, Decision)> {
    run_full(spec, secs, rate, 8.0)
}

/// [`run`] with replicas that complete `full` requests a second each while
/// a queue stands (a full batch serves each request slower).
fn run_full(
    spec: &ScalingSpec,
    secs: u32,
    rate: impl Fn(u32) -> f64,
    full: f64,
) -> Vec<(u32, Decision)> {
    let start = 20;
    let mut a = Autoscaler::new();
    a.record_start(Duration::from_secs(start));
    let t0 = Instant::now();
    let mut desired = 1u32;
    let mut ready = 1u32;
    let mut asked: Vec<(u32, u32)> = Vec::new();
    let mut queue = 0.0f64;
    let mut out = Vec::new();
    for t in 0..secs {
        let now = t0 + SECOND * t;
        // Replicas asked for `start` ago are ready; removals are at once.
        let arrived = asked
            .iter()
            .filter(|(at, _)| t >= at + start as u32)
            .count() as u32;
        asked.retain(|(at, _)| t < at + start as u32);
        ready = (ready + arrived).min(desired);
        let starting = asked.len() as u32;
        let rps = rate(t);
        let capacity = f64::from(ready) * if queue > 0.0 { full } else { 8.0 };
        let running = (queue + rps).min(capacity);
        queue = (queue + rps - running).max(0.0);
        a.observe(
            now,
            &Signals {
                ongoing: running + queue,
                waiting: Some(queue),
                requests_per_s: rps,
                ready,
                starting,
                measurement: u64::from(t) + 1,
                rescraped_at: Some(now),
                ..Signals::default()
            },
        );
        let d = a.decide(spec, desired, now);
        if d.desired > desired {
            for _ in desired..d.desired {
                asked.push((t, 1));
            }
        } else if d.desired < desired {
            let drop = desired - d.desired;
            let from_starting = drop.min(asked.len() as u32);
            asked.truncate(asked.len() - from_starting as usize);
            ready = ready.saturating_sub(drop - from_starting);
        }
        desired = d.desired;
        out.push((t, d));
    }
    out
}

/// 10 s bursts of 60 req/s every 2 minutes on a base of 10 req/s, for
/// `bursts` bursts, then the base alone.
fn recurring(bursts: u32) -> impl Fn(u32) -> f64 {
    move |t| {
        let n = t / 120;
        if n >= 1 && n <= bursts && t % 120 < 10 {
            60.0
        } else {
            10.0
        }
    }
}

fn slo_spec() -> ScalingSpec {
    ScalingSpec {
        slo: Some(Duration::from_secs(11)),
        ..spec()
    }
}

#[test]
fn recurring_bursts_keep_what_serves_them_within_the_slo_between_them() {
    let s = slo_spec();
    let out = run(&s, 120 * 12, recurring(10));
    // Between the later bursts (after three have been seen), just before
    // the next: the memory holds what a 60 req/s burst of 10 s needs with a
    // 10 s wait (1 s requests, 8 slots per replica, of which the SLO's
    // target keeps 7.3 busy: 10 in service need 11 slots for 1 request in
    // 1000 to wait past the 10 s): 60 / 7.3 × 10 / 20 = 4.1 → 5, where the
    // base alone needs 2.
    for n in 5..10u32 {
        let (_, d) = &out[(n * 120 + 115) as usize];
        assert_eq!(d.desired, 5, "before burst {n}: {}", d.reason);
        assert_eq!(d.rule, Rule::BurstMemory, "{}", d.reason);
        assert!(d.reason.contains("recent bursts"), "{}", d.reason);
    }
    // And no replica is started during those bursts: one started would be
    // ready after the burst's usual 10 s, and the five work it off.
    let during = out
        .iter()
        .filter(|(t, _)| *t >= 600 && *t % 120 < 30)
        .map(|(_, d)| d.desired)
        .max();
    assert_eq!(during, Some(5));
    // Without an SLO nothing is remembered: the base's count between bursts.
    let out = run(&spec(), 120 * 12, recurring(10));
    assert!(out.iter().all(|(_, d)| d.rule != Rule::BurstMemory));
}

#[test]
fn the_burst_memory_is_released_once_bursts_stop() {
    let s = slo_spec();
    let out = run(&s, 120 * 6 + 1800, recurring(5));
    let (_, held) = &out[120 * 5 + 115];
    assert_eq!(held.desired, 5, "{}", held.reason);
    // Half an hour after the last burst: back to what the base needs.
    let (_, d) = out.last().unwrap();
    assert!(d.desired <= 2, "{}", d.reason);
    assert_ne!(d.rule, Rule::BurstMemory);
}

#[test]
fn a_panic_among_recurring_bursts_asks_for_what_serves_the_burst_within_the_slo() {
    // The bursts grow: 60 req/s, then 120 req/s from the sixth on. The
    // panic for a 120 req/s burst at the target asks for 15 replicas plus
    // its queue; bounded by the SLO it asks for what works a 10 s burst off
    // within the 10 s wait at the SLO's target: 120 / 7.3 × 10 / 20 = 8.2
    // → 9.
    let rate = |t: u32| {
        let n = t / 120;
        match (n, t % 120 < 10) {
            (1..=5, true) => 60.0,
            (6..=8, true) => 120.0,
            _ => 10.0,
        }
    };
    let bounded = run(&slo_spec(), 120 * 9, rate);
    let most = |out: &[(u32, Decision)]| {
        out.iter()
            .filter(|(t, _)| *t >= 720)
            .map(|(_, d)| d.desired)
            .max()
            .unwrap()
    };
    assert!(most(&bounded) <= 9, "{}", most(&bounded));
    assert!(
        bounded.iter().any(|(t, d)| *t >= 720
            && d.rule == Rule::BurstMemory
            && d.reason.contains("within the SLO's queue wait")),
        "a bounded panic names the rule"
    );
    // Without the SLO, the panic asks for more.
    let unbounded = run(&spec(), 120 * 9, rate);
    assert!(most(&unbounded) > 9, "{}", most(&unbounded));
}

#[test]
fn an_slo_target_never_exceeds_the_spec_target() {
    // 1 s service against a 60 s SLO: 4 in service need 5 slots, so 8-slot
    // replicas could run 6.4 each; the operator's target is the headroom
    // kept.
    let mut a = Autoscaler::new();
    let mut now = Instant::now();
    let s = ScalingSpec {
        slo: Some(Duration::from_secs(60)),
        target_ongoing_requests: 6.0,
        ..spec()
    };
    let target = |a: &mut Autoscaler, now: Instant| {
        let d = a.decide(&s, 1, now);
        d.inputs
            .iter()
            .find(|(k, _)| k == "target_from_slo")
            .map(|(_, v)| v.clone())
    };
    let tick = |running: f64| Signals {
        ongoing: running,
        waiting: Some(0.0),
        requests_per_s: running,
        ready: 1,
        ..Signals::default()
    };
    for _ in 0..20 {
        a.observe(now, &tick(4.0));
        a.decide(&s, 1, now);
        now += SECOND;
    }
    // Until a replica is seen running more, its slots are taken to be the
    // target's 6: 4 of the 5 needed, 4.8.
    assert_eq!(target(&mut a, now).as_deref(), Some("4.8"));
    // One second with all 8 slots busy shows the replica's size.
    a.observe(now, &tick(8.0));
    now += SECOND;
    for _ in 0..60 {
        a.observe(now, &tick(4.0));
        now += SECOND;
    }
    assert_eq!(target(&mut a, now).as_deref(), Some("6"));
}

#[test]
fn a_panic_on_a_climbing_rate_is_sized_for_the_rate_a_start_ahead_and_a_step_is_not() {
    let s = ScalingSpec {
        max_replicas: 30,
        ..slo_spec()
    };
    // Five minutes at 10 req/s, then a climb of 1 req/s per second to 90.
    let ramp = |t: u32| {
        if t < 300 {
            10.0
        } else {
            (10.0 + f64::from(t - 300)).min(90.0)
        }
    };
    let out = run(&s, 420, ramp);
    let rising: Vec<_> = out
        .iter()
        .filter(|(_, d)| d.rule == Rule::RisingRate)
        .collect();
    assert!(!rising.is_empty(), "the climb is projected");
    for (t, d) in &rising {
        // Only while it climbs (and a panic window after, while the
        // windows still see it), once it has climbed a panic window.
        assert!((306..386).contains(t), "at {t}: {}", d.reason);
        let input = |k: &str| -> f64 {
            d.inputs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.parse().unwrap())
                .unwrap()
        };
        // Above what the panic window's rate alone asks for.
        assert!(
            input("rising_desire") > input("panic_desire"),
            "{:?}",
            d.inputs
        );
    }
    // Capacity for the top is asked for earlier than without projecting:
    // the count reaches what 90 req/s needs at the target (11.25 → 12)
    // before the climb is over.
    let reached = out
        .iter()
        .find(|(_, d)| d.desired >= 12)
        .map(|(t, _)| *t)
        .unwrap();
    assert!(reached < 380, "reached 12 at {reached}");
    // A step to the same rate has a flat line since it began: never
    // projected.
    let step = |t: u32| if t < 300 { 10.0 } else { 90.0 };
    let out = run(&s, 420, step);
    assert!(out.iter().all(|(_, d)| d.rule != Rule::RisingRate));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Steps up of any size, from any base, with or without an SLO, are
    /// never projected as a climb: the line since the rise began is flat.
    #[test]
    fn a_step_is_never_projected_as_a_climbing_rate(
        base in 2.0..40.0f64,
        factor in 1.6..8.0f64,
        at in 120u32..240,
        slo in proptest::bool::ANY,
    ) {
        let s = ScalingSpec {
            max_replicas: 60,
            ..if slo { slo_spec() } else { spec() }
        };
        let out = run(&s, at + 120, |t| if t < at { base } else { base * factor });
        for (t, d) in &out {
            proptest::prop_assert_ne!(d.rule, Rule::RisingRate, "at {}: {}", t, d.reason);
        }
    }
}

#[test]
fn a_burst_is_worked_off_at_what_full_replicas_were_seen_to_complete() {
    // 1 s requests measured at 10 in service, unqueued; then eight replicas
    // behind a standing queue that grows by 12 a second at 60 req/s: full,
    // they complete 6 a second each, not the 8 their slots ÷ the service
    // time promise (a wide batch serves each request slower).
    let mut a = Autoscaler::new();
    let s = spec();
    let t0 = Instant::now();
    let at = |t: u32| t0 + SECOND * t;
    let tick = |t: u32, ongoing: f64, waiting: f64, rps: f64, ready: u32| Signals {
        ongoing,
        waiting: Some(waiting),
        requests_per_s: rps,
        ready,
        measurement: u64::from(t) + 1,
        rescraped_at: Some(at(t)),
        ..Signals::default()
    };
    let queued = |a: &mut Autoscaler, t: u32, rps: f64| {
        let waiting = 12.0 * f64::from(t - 19);
        a.observe(at(t), &tick(t, 48.0 + waiting, waiting, rps, 8));
        a.decide(&s, 8, at(t));
    };
    for t in 0..20u32 {
        a.observe(at(t), &tick(t, 10.0, 0.0, 10.0, 2));
        a.decide(&s, 2, at(t));
    }
    assert_eq!(a.burst_target(&s), 8.0, "no queue seen yet");
    // Two queued seconds are not yet a full replica's measure.
    for t in 20..22u32 {
        queued(&mut a, t, 60.0);
    }
    assert_eq!(a.burst_target(&s), 8.0);
    for t in 22..30u32 {
        queued(&mut a, t, 60.0);
    }
    assert!(
        (a.burst_target(&s) - 6.0).abs() < 1e-9,
        "{}",
        a.burst_target(&s)
    );
    let d = a.decide(&s, 8, at(29));
    assert!(
        d.inputs
            .iter()
            .any(|(k, v)| k == "full_replica_concurrency" && v == "6"),
        "{:?}",
        d.inputs
    );
    // Decisions that see no new sample teach nothing: each counts once.
    for ms in 1..20u32 {
        a.decide(&s, 8, at(29) + Duration::from_millis(u64::from(ms) * 50));
    }
    assert!(
        (a.burst_target(&s) - 6.0).abs() < 1e-9,
        "{}",
        a.burst_target(&s)
    );
    // A new one moves the mean by an eighth of its difference: 68 req/s
    // with the same growth, 7 completed each over its last second, 6.17
    // over the panic window.
    queued(&mut a, 30, 68.0);
    let moved = a.burst_target(&s);
    assert!(
        (moved - (6.0 + (37.0 / 6.0 - 6.0) / 8.0)).abs() < 1e-9,
        "{moved}"
    );
    // A spec target below what full replicas complete stands.
    let low = ScalingSpec {
        target_ongoing_requests: 4.0,
        ..spec()
    };
    assert_eq!(a.burst_target(&low), 4.0);
    // Replicas that complete nothing behind a queue (a stalled engine) do
    // not size bursts at nothing: never under half the target.
    for t in 31..80u32 {
        queued(&mut a, t, 12.0);
    }
    assert_eq!(a.burst_target(&s), 4.0);
    // And the measure is forgotten once no queue has renewed it for four
    // scale-down delays: the engine may have changed since.
    let quiet = 80 + 4 * s.scale_down_delay.as_secs() as u32;
    for t in (80..=quiet + 10).step_by(5) {
        a.observe(at(t), &tick(t, 10.0, 0.0, 10.0, 2));
        a.decide(&s, 2, at(t));
    }
    assert_eq!(a.burst_target(&s), 8.0);
}

#[test]
fn recurring_bursts_on_replicas_slower_when_full_keep_what_those_complete() {
    // The bursts of the test above, on replicas that complete 5.5 a second
    // when a queue stands (8 when not): the memory works a burst off at
    // 5.5, 60 / 5.5 × 10 / 20 = 5.5 → 6 replicas, where the target's 7.3
    // said 4.1 → 5.
    let out = run_full(&slo_spec(), 120 * 12, recurring(10), 5.5);
    for n in 5..10u32 {
        let (_, d) = &out[(n * 120 + 115) as usize];
        assert_eq!(d.desired, 6, "before burst {n}: {}", d.reason);
        assert_eq!(d.rule, Rule::BurstMemory, "{}", d.reason);
    }
}
