//! The autoscaler on a virtual clock, against a toy fleet whose new replicas
//! take a while to become ready.

use std::time::{Duration, Instant};

use super::*;
use crate::config::model::ScalingSpec;

const SECOND: Duration = Duration::from_secs(1);

/// The parser's defaults, with room to grow.
pub(super) fn spec() -> ScalingSpec {
    ScalingSpec {
        min_replicas: 1,
        max_replicas: 10,
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
        prescale: false,
        scale_down_hold_factor: 2.0,
        cold_start_aware: true,
        size_from_arrivals: true,
        prescale_max_error: 0.1,
        slo: None,
        slo_kind: crate::config::model::SloKind::E2e,
    }
}

/// A model's replicas as the control loop would run them: a new one is
/// `starting` for `load_time`, then ready.
struct Sim {
    scaler: Autoscaler,
    spec: ScalingSpec,
    current: u32,
    now: Instant,
    load_time: Duration,
    ready_at: Vec<Instant>,
    /// Each step is a scrape of its own.
    scrapes: u64,
}

impl Sim {
    fn new(spec: ScalingSpec, current: u32) -> Sim {
        let now = Instant::now();
        Sim {
            scaler: Autoscaler::new(),
            spec,
            current,
            now,
            load_time: Duration::from_secs(30),
            ready_at: vec![now; current as usize],
            scrapes: 0,
        }
    }

    fn ready(&self) -> u32 {
        self.ready_at.iter().filter(|t| **t <= self.now).count() as u32
    }

    fn starting(&self) -> u32 {
        self.ready_at.len() as u32 - self.ready()
    }

    /// One tick: observe the load (given the ready count), decide, and
    /// start or stop replicas to match.
    fn step(&mut self, load: impl Fn(u32) -> Signals) -> Decision {
        let ready = self.ready();
        self.scrapes += 1;
        let signals = Signals {
            ready,
            starting: self.starting(),
            measurement: self.scrapes,
            rescraped_at: Some(self.now),
            ..load(ready)
        };
        self.scaler.observe(self.now, &signals);
        self.decide()
    }

    /// A tick with no fresh scrape: decide without observing.
    fn decide(&mut self) -> Decision {
        let d = self.scaler.decide(&self.spec, self.current, self.now);
        while self.ready_at.len() < d.desired as usize {
            self.ready_at.push(self.now + self.load_time);
        }
        // Surplus goes youngest first: replicas still loading before ready ones.
        self.ready_at.sort();
        self.ready_at.truncate(d.desired as usize);
        self.current = d.desired;
        self.now += SECOND;
        d
    }

    fn run(&mut self, ticks: usize, load: impl Fn(u32) -> Signals) -> Vec<Decision> {
        (0..ticks).map(|_| self.step(&load)).collect()
    }
}

/// `n` requests in flight, arriving at `n` per second.
fn ongoing(n: f64) -> impl Fn(u32) -> Signals {
    move |_| Signals {
        ongoing: n,
        requests_per_s: n,
        ..Signals::default()
    }
}

fn desired(ds: &[Decision]) -> Vec<u32> {
    ds.iter().map(|d| d.desired).collect()
}

fn changes(ds: &[Decision]) -> Vec<&Decision> {
    let mut out = Vec::new();
    let mut last = None;
    for d in ds {
        if last.is_some_and(|l| l != d.desired) {
            out.push(d);
        }
        last = Some(d.desired);
    }
    out
}

#[test]
fn steady_load_holds() {
    let mut sim = Sim::new(spec(), 3);
    let ds = sim.run(600, ongoing(24.0));
    assert!(ds.iter().all(|d| d.desired == 3 && !d.panic));
    let last = &ds[ds.len() - 1];
    assert_eq!(
        last.reason,
        "holding 3: stable 1m average 24 ongoing / target 8 per replica"
    );
    assert!(last
        .inputs
        .contains(&("stable_ongoing".into(), "24".into())));
}

#[test]
fn a_spike_panics_within_one_tick_and_scales_to_the_panic_desire() {
    let mut sim = Sim::new(spec(), 2);
    sim.run(60, ongoing(16.0));
    let d = sim.step(ongoing(200.0));
    // Panic window: (5 × 16 + 200) / 6 = 46.7 ongoing ≥ 2 × 2 replicas × 8.
    assert!(d.panic);
    assert_eq!(d.desired, 6);
    assert_eq!(
        d.reason,
        "2 → 6: 6s average 46.7 ongoing / target 8 per replica \
         (panic: 46.7 ≥ 2 × capacity 16)"
    );
    // The stable window alone would have asked for ceil(18.4 / 8) = 3.
    let next = sim.step(ongoing(200.0));
    assert_eq!(next.desired, 10, "{}", next.reason);
}

#[test]
fn no_scale_down_while_panicking() {
    let mut sim = Sim::new(spec(), 2);
    sim.run(60, ongoing(16.0));
    let spike = sim.run(3, ongoing(200.0));
    let peak = spike[2].desired;
    assert!(spike.iter().all(|d| d.panic));
    // Demand vanishes; panic holds for a stable window after the last trigger.
    let quiet = sim.run(120, ongoing(1.0));
    let (during, after) = quiet.split_at(59);
    assert!(
        during.iter().all(|d| d.panic && d.desired == peak),
        "{during:?}"
    );
    assert!(during[10].reason.contains("no scale-down while panicking"));
    assert!(after.iter().all(|d| !d.panic));
    // ...and after panic the scale-down delay still applies in full.
    assert!(after.iter().all(|d| d.desired == peak), "{after:?}");
}

#[test]
fn scale_down_waits_for_the_delay_and_walks_one_step_at_a_time() {
    let mut sim = Sim::new(spec(), 5);
    sim.run(120, ongoing(40.0));
    let ds = sim.run(900, ongoing(8.0));
    let first_down = ds.iter().position(|d| d.desired < 5).unwrap();
    // The desire first drops below 5 once the stable average falls under
    // 4 × 8 × 0.9 (about 15 s in); then the full 5 minutes must pass.
    assert!(first_down >= 300, "scaled down after {first_down}s");
    assert!(first_down <= 330, "scaled down only after {first_down}s");
    assert!(ds[first_down - 1].reason.contains("scale-down waits 5m"));
    assert_eq!(
        ds[first_down].reason,
        "5 → 4: stable 1m average 8 ongoing / target 8 per replica; \
         scale-down waited 5m"
    );
    for pair in desired(&ds).windows(2) {
        assert!(
            pair[1] + 1 >= pair[0],
            "dropped more than one step: {pair:?}"
        );
    }
    assert_eq!(ds.last().unwrap().desired, 1);
}

#[test]
fn scale_down_goes_no_lower_than_the_highest_desire_of_the_delay() {
    let spec = ScalingSpec {
        max_scale_down_step: 10,
        scale_down_delay: Duration::from_secs(120),
        ..spec()
    };
    let mut sim = Sim::new(spec, 6);
    sim.run(60, ongoing(48.0));
    // The stable average slides from 48 to 8 over a minute, so the desire
    // passes 5, 4, 3, 2 on its way to 1.
    let ds = sim.run(300, ongoing(8.0));
    let downs = changes(&ds);
    assert_eq!(
        downs[0].reason,
        "6 → 5: stable 1m average 8 ongoing / target 8 per replica; scale-down waited 2m"
    );
    assert_eq!(desired(&ds).into_iter().min(), Some(1));
    assert!(downs.len() >= 4, "walked down with the window: {downs:?}");
}

#[test]
fn small_changes_within_tolerance_are_ignored() {
    let wide = ScalingSpec {
        max_replicas: 20,
        ..spec()
    };
    let mut sim = Sim::new(wide.clone(), 10);
    // 85 / 8 = 10.6 replicas: 6% over, within 10%.
    let ds = sim.run(120, ongoing(85.0));
    assert!(ds.iter().all(|d| d.desired == 10));
    assert!(
        ds[119].reason.ends_with("(within 10% tolerance)"),
        "{}",
        ds[119].reason
    );
    // 95 / 8 = 11.9: 19% over.
    let mut sim = Sim::new(wide, 10);
    let d = sim.step(ongoing(95.0));
    assert_eq!(d.desired, 12, "{}", d.reason);
}

#[test]
fn latency_wins_when_it_asks_for_more() {
    let spec = ScalingSpec {
        max_p95_latency: Some(Duration::from_secs(2)),
        ..spec()
    };
    let mut sim = Sim::new(spec, 2);
    let slow = |_| Signals {
        ongoing: 8.0,
        requests_per_s: 4.0,
        p95_latency_s: Some(3.0),
        ..Signals::default()
    };
    let d = sim.step(slow);
    assert_eq!(d.desired, 3, "ongoing alone asks for 1");
    assert_eq!(
        d.reason,
        "2 → 3: stable 1m average p95 latency 3s over max 2s on 2 ready"
    );
    // The new replica is ready; latency jumps. Over 6 s the p95 averages
    // (3 + 10) / 2 = 6.5 s, measured on (2 + 3) / 2 = 2.5 ready replicas:
    // 2.5 × 6.5 / 2 = 8.1 replicas ≥ 2 × capacity 3 is a panic.
    sim.ready_at.fill(sim.now);
    let d = sim.step(|_| Signals {
        p95_latency_s: Some(10.0),
        ..slow(0)
    });
    assert!(d.panic);
    assert_eq!(d.desired, 9);
    assert!(
        d.reason
            .ends_with("on 2.5 ready (panic: 8.1 replicas needed ≥ 2 × capacity 3)"),
        "{}",
        d.reason
    );
}

#[test]
fn gpu_utilization_wins_when_it_asks_for_more() {
    let spec = ScalingSpec {
        target_gpu_utilization: Some(0.6),
        ..spec()
    };
    let mut sim = Sim::new(spec, 3);
    let d = sim.step(|_| Signals {
        ongoing: 8.0,
        gpu_utilization: Some(0.9),
        ..Signals::default()
    });
    assert_eq!(d.desired, 5, "3 × 0.9 / 0.6 = 4.5");
    assert!(
        d.reason
            .contains("GPU utilization 90% / target 60% on 3 ready"),
        "{}",
        d.reason
    );
}

#[test]
fn kv_cache_wins_when_it_asks_for_more() {
    let spec = ScalingSpec {
        target_kv_cache_usage: Some(0.5),
        ..spec()
    };
    let mut sim = Sim::new(spec, 2);
    let d = sim.step(|_| Signals {
        ongoing: 4.0,
        kv_cache_usage: Some(0.95),
        ..Signals::default()
    });
    assert_eq!(d.desired, 4, "{}", d.reason);
    assert!(d.reason.contains("KV cache 95% / target 50%"));
}

#[test]
fn utilization_under_target_still_holds_replicas_ongoing_would_drop() {
    let spec = ScalingSpec {
        target_gpu_utilization: Some(0.85),
        scale_down_delay: Duration::ZERO,
        ..spec()
    };
    let mut sim = Sim::new(spec, 4);
    // Ongoing asks for 1; 4 × 0.8 / 0.85 = 3.8 keeps 4.
    let ds = sim.run(300, |_| Signals {
        ongoing: 2.0,
        gpu_utilization: Some(0.8),
        ..Signals::default()
    });
    assert!(ds.iter().all(|d| d.desired == 4), "{:?}", ds[299]);
}

#[test]
fn starting_replicas_suppress_repeated_scale_up() {
    let spec = ScalingSpec {
        target_gpu_utilization: Some(0.6),
        ..spec()
    };
    let mut sim = Sim::new(spec, 2);
    sim.load_time = Duration::from_secs(300); // a 70B model
                                              // Utilization stays high until the new replica is ready.
    let ds = sim.run(299, |ready| Signals {
        ongoing: 8.0,
        gpu_utilization: Some(if ready >= 3 { 0.6 } else { 0.9 }),
        ..Signals::default()
    });
    assert_eq!(desired(&ds[..1]), vec![3]);
    assert!(ds.iter().all(|d| d.desired == 3), "{:?}", changes(&ds));

    // Ongoing requests too: 37 in flight ask for 5 replicas however long
    // the new ones take to load.
    let mut sim = Sim::new(super::tests::spec(), 2);
    sim.load_time = Duration::from_secs(300);
    sim.run(60, ongoing(16.0));
    let ds = sim.run(290, ongoing(37.0));
    assert_eq!(ds.iter().map(|d| d.desired).max(), Some(5));
    assert_eq!(ds.last().unwrap().desired, 5);
    assert_eq!(sim.starting(), 3);
}

#[test]
fn scales_to_zero_after_the_idle_period_and_not_before() {
    let spec = ScalingSpec {
        min_replicas: 0,
        ..spec()
    };
    let mut sim = Sim::new(spec, 1);
    let ds = sim.run(901, ongoing(0.0));
    assert!(ds[..900].iter().all(|d| d.desired == 1));
    assert_eq!(ds[900].desired, 0);
    assert_eq!(ds[900].reason, "1 → 0: no requests for 15m (scale to zero)");
}

#[test]
fn a_request_restarts_the_idle_period() {
    let spec = ScalingSpec {
        min_replicas: 0,
        ..spec()
    };
    let mut sim = Sim::new(spec, 1);
    sim.run(800, ongoing(0.0));
    sim.step(|_| Signals {
        requests_per_s: 0.2,
        ..Signals::default()
    });
    // Idle again from the next tick: 900 s later it may go.
    let ds = sim.run(900, ongoing(0.0));
    assert!(ds.iter().all(|d| d.desired == 1));
    assert_eq!(sim.step(ongoing(0.0)).desired, 0);
}

#[test]
fn never_scales_to_zero_when_the_minimum_is_positive() {
    let mut sim = Sim::new(spec(), 1);
    let ds = sim.run(3600, ongoing(0.0));
    assert!(ds.iter().all(|d| d.desired == 1));
}

#[test]
fn a_gap_in_signals_does_not_count_as_idle() {
    let spec = ScalingSpec {
        min_replicas: 0,
        ..spec()
    };
    let mut sim = Sim::new(spec, 1);
    sim.run(600, ongoing(0.0));
    for _ in 0..600 {
        let d = sim.decide();
        assert_eq!(d.desired, 1);
    }
    // Idle time starts over when signals come back.
    let ds = sim.run(900, ongoing(0.0));
    assert!(ds.iter().all(|d| d.desired == 1));
    assert_eq!(sim.step(ongoing(0.0)).desired, 0);
}

#[test]
fn wakes_from_zero_and_keeps_the_replica_while_it_loads() {
    let spec = ScalingSpec {
        min_replicas: 0,
        scale_to_zero_after: Duration::from_secs(60),
        ..spec()
    };
    let mut sim = Sim::new(spec, 0);
    let d = sim.decide();
    assert_eq!(d.desired, 0);
    assert!(
        d.reason.starts_with("holding 0: scaled to zero"),
        "{}",
        d.reason
    );

    // Loading takes longer than the idle period: it must not count.
    sim.load_time = Duration::from_secs(600);
    sim.scaler.wake(sim.now);
    let d = sim.decide();
    assert_eq!(d.desired, 1);
    assert_eq!(d.reason, "0 → 1: woken on demand");

    let ds = sim.run(700, ongoing(0.0));
    let gone = ds.iter().position(|d| d.desired == 0).unwrap();
    assert_eq!(gone, 599 + 60, "{}", ds[gone].reason);
}

#[test]
fn bounds_hold() {
    // Demand beyond max.
    let mut sim = Sim::new(spec(), 2);
    let ds = sim.run(30, ongoing(1000.0));
    assert_eq!(ds.last().unwrap().desired, 10);
    // Max lowered below the running count: obeyed at once.
    let mut sim = Sim::new(spec(), 8);
    sim.spec.max_replicas = 3;
    let d = sim.step(ongoing(64.0));
    assert_eq!(d.reason, "8 → 3: above the maximum 3");
    // Min raised above it.
    let mut sim = Sim::new(spec(), 1);
    sim.spec.min_replicas = 3;
    let d = sim.step(ongoing(0.0));
    assert_eq!(d.reason, "1 → 3: below the minimum 3");
}

#[test]
fn stale_signals_hold_instead_of_scaling_down() {
    let spec = ScalingSpec {
        scale_down_delay: Duration::ZERO,
        ..spec()
    };
    let mut sim = Sim::new(spec, 5);
    sim.run(60, ongoing(40.0));
    // Overloaded replicas stop answering scrapes.
    for _ in 0..120 {
        let d = sim.decide();
        assert_eq!(d.desired, 5);
    }
    let d = sim.decide();
    assert!(d.reason.contains("no fresh signals for 2m"), "{}", d.reason);
}

#[test]
fn a_missing_configured_signal_holds_scale_down_for_one_stable_window_at_most() {
    let spec = ScalingSpec {
        target_gpu_utilization: Some(0.8),
        scale_down_delay: Duration::from_secs(10),
        ..spec()
    };
    let mut sim = Sim::new(spec, 4);
    let ds = sim.run(59, |_| Signals {
        ongoing: 4.0,
        gpu_utilization: None,
        ..Signals::default()
    });
    assert!(ds.iter().all(|d| d.desired == 4));
    assert_eq!(ds[58].missing, vec!["GPU utilization"]);
    assert!(
        ds[58]
            .reason
            .contains("GPU utilization missing from the last scrape for 58s, not scaling down on partial signals for up to 1m"),
        "{}",
        ds[58].reason
    );
    // A stable window later, the remaining signal decides, and says so.
    let ds = sim.run(120, |_| Signals {
        ongoing: 4.0,
        gpu_utilization: None,
        ..Signals::default()
    });
    let down = ds.iter().find(|d| d.desired < 4).expect("scaled down");
    assert!(
        down.reason
            .contains("GPU utilization missing for 1m, the remaining signals decide"),
        "{}",
        down.reason
    );
    assert_eq!(ds.last().unwrap().desired, 1);
}

#[test]
fn a_signal_back_in_time_stops_the_hold_at_once() {
    let spec = ScalingSpec {
        target_gpu_utilization: Some(0.8),
        scale_down_delay: Duration::from_secs(10),
        ..spec()
    };
    let mut sim = Sim::new(spec, 4);
    sim.run(30, |_| Signals {
        ongoing: 4.0,
        gpu_utilization: None,
        ..Signals::default()
    });
    let ds = sim.run(30, |_| Signals {
        ongoing: 4.0,
        gpu_utilization: Some(0.2),
        ..Signals::default()
    });
    assert!(ds.iter().all(|d| d.missing.is_empty()));
    assert!(ds.last().unwrap().desired < 4);
}

#[test]
fn a_trickle_seen_only_in_the_counters_never_scales_to_zero() {
    // One short request every 2 s: every scrape catches the gauges at 0 and
    // the engine counts no finished requests (llama.cpp), but its token
    // counters move.
    let spec = ScalingSpec {
        min_replicas: 0,
        scale_to_zero_after: Duration::from_secs(20),
        ..spec()
    };
    let mut sim = Sim::new(spec.clone(), 1);
    let t0 = sim.now;
    for tick in 0..200u32 {
        let last_active = Some(t0 + SECOND * (tick - tick % 2));
        let d = sim.step(|_| Signals {
            last_active,
            ..Signals::default()
        });
        assert_eq!(d.desired, 1, "{tick}: {}", d.reason);
    }
    // Once the counters stop, idle time counts from their last move.
    let stopped = sim.now;
    let ds = sim.run(40, |_| Signals {
        last_active: Some(stopped - SECOND),
        ..Signals::default()
    });
    let zero = ds
        .iter()
        .position(|d| d.desired == 0)
        .expect("scaled to zero");
    assert!((18..=20).contains(&zero), "after {zero} ticks");
    // Without the counters the same trickle looked idle.
    let mut blind = Sim::new(spec, 1);
    let ds = blind.run(40, |_| Signals::default());
    assert!(ds.iter().any(|d| d.desired == 0));
}

#[test]
fn prescale_floor_raises_and_its_removal_walks_down_after_the_delay() {
    let mut sim = Sim::new(spec(), 1);
    sim.run(10, ongoing(4.0));
    sim.scaler.prescale_floor(4, sim.now);
    let d = sim.step(ongoing(4.0));
    assert_eq!(d.desired, 4);
    assert!(
        d.reason
            .starts_with("1 → 4: pre-scaling for predicted demand (floor 4)"),
        "{}",
        d.reason
    );
    sim.run(100, ongoing(4.0));
    sim.scaler.prescale_floor(0, sim.now);
    let ds = sim.run(400, ongoing(4.0));
    let first = ds.iter().position(|d| d.desired < 4).unwrap();
    assert!(first >= 300, "{first}");
    assert_eq!(ds.last().unwrap().desired, 1);
}

#[test]
fn a_floor_at_zero_starts_replicas() {
    let spec = ScalingSpec {
        min_replicas: 0,
        ..spec()
    };
    let mut sim = Sim::new(spec, 0);
    sim.scaler.prescale_floor(2, sim.now);
    let d = sim.decide();
    assert_eq!(
        d.reason,
        "0 → 2: pre-scaling for predicted demand (floor 2)"
    );
}

#[test]
fn memory_stays_bounded() {
    let mut sim = Sim::new(spec(), 2);
    sim.run(5000, ongoing(16.0));
    assert!(sim.scaler.history.len() <= 61);
    assert!(sim.scaler.desires.len() <= 2);
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    for i in 0..10_000 {
        a.observe(t0 + Duration::from_millis(i), &Signals::default());
    }
    assert!(a.history.len() <= history::MAX_SAMPLES);
}

#[test]
fn broken_readings_do_not_scale() {
    let mut sim = Sim::new(spec(), 3);
    let ds = sim.run(400, |_| Signals {
        ongoing: f64::NAN,
        requests_per_s: f64::INFINITY,
        gpu_utilization: Some(f64::NAN),
        ..Signals::default()
    });
    // NaN reads as no demand: the minimum, after the delay, never a panic.
    assert!(ds
        .iter()
        .all(|d| !d.panic && d.desired >= 1 && d.desired <= 3));
}

/// The worked example of docs/autoscaling.md, tick by tick: keep the two in step.
#[test]
fn the_worked_example_in_the_docs() {
    let spec = ScalingSpec {
        min_replicas: 0,
        max_replicas: 6,
        ..spec()
    };
    let mut sim = Sim::new(spec, 2);
    sim.load_time = Duration::from_secs(180);
    let mut all = Vec::new();
    all.extend(sim.run(300, ongoing(14.0))); // 09:00
    all.extend(sim.run(1200, ongoing(40.0))); // 09:05
    all.extend(sim.run(900, ongoing(12.0))); // 09:25
    all.extend(sim.run(1800, ongoing(0.0))); // 09:40
    let changes: Vec<(usize, &str)> = all
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0].desired != w[1].desired)
        .map(|(i, w)| (i + 1, w[1].reason.as_str()))
        .collect();
    assert_eq!(
        all[299].reason,
        "holding 2: stable 1m average 14 ongoing / target 8 per replica"
    );
    assert_eq!(
        changes,
        vec![
            (
                301,
                "2 → 5: last 1s (2 samples) average 40 ongoing / target 8 per replica \
                 (panic: 40 ≥ 2 × capacity 16)"
            ),
            (
                1817,
                "5 → 4: stable 1m average 12 ongoing / target 8 per replica; scale-down waited 5m"
            ),
            (
                1834,
                "4 → 3: stable 1m average 12 ongoing / target 8 per replica; scale-down waited 5m"
            ),
            (
                1851,
                "3 → 2: stable 1m average 12 ongoing / target 8 per replica; scale-down waited 5m"
            ),
            (
                2719,
                "2 → 1: stable 1m average 0 ongoing / target 8 per replica; scale-down waited 5m"
            ),
            (3300, "1 → 0: no requests for 15m (scale to zero)"),
        ]
    );
    assert_eq!(
        all[1499].reason,
        "holding 5: stable 1m average 40 ongoing / target 8 per replica"
    );
}

/// One replica at target 4: panic needs 8 ongoing. Samples every 500 ms,
/// as the agent scrapes by default, each a measurement of its own.
fn surge_spec() -> ScalingSpec {
    ScalingSpec {
        target_ongoing_requests: 4.0,
        max_replicas: 8,
        ..spec()
    }
}

/// Scrape `n` of one ready replica, arrived at `at`.
fn scrape(at: Instant, n: u64, ongoing: f64) -> Signals {
    Signals {
        ongoing,
        requests_per_s: ongoing,
        ready: 1,
        measurement: n,
        rescraped_at: Some(at),
        ..Signals::default()
    }
}

#[test]
fn a_step_panics_once_two_scrapes_agree_without_waiting_for_the_window() {
    let spec = surge_spec();
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    let half = Duration::from_millis(500);
    for i in 0..120u32 {
        a.observe(t0 + half * i, &scrape(t0 + half * i, u64::from(i) + 1, 1.0));
        assert_eq!(a.decide(&spec, 1, t0 + half * i).desired, 1);
    }
    // The step: 19 ongoing, where the 6 s average is still (11 × 1 + 19) / 12 = 2.5.
    let step = t0 + half * 120;
    a.observe(step, &scrape(step, 121, 19.0));
    let d = a.decide(&spec, 1, step);
    assert_eq!((d.desired, d.panic), (1, false), "{}", d.reason);
    assert!(d.awaits_measurement);
    // The same scrape seen again (a tick with no new report) confirms nothing,
    // however long it stays the last word.
    a.observe(step + SECOND, &scrape(step, 121, 19.0));
    let d = a.decide(&spec, 1, step + SECOND);
    assert!(!d.panic && d.awaits_measurement, "{}", d.reason);
    // The next scrape agrees: panic, to what the two ask for.
    a.observe(step + SECOND, &scrape(step + SECOND, 122, 21.0));
    let d = a.decide(&spec, 1, step + SECOND);
    assert!(d.panic);
    assert!(!d.awaits_measurement);
    assert_eq!(
        d.reason,
        "1 → 5: last 1s (2 samples) average 20 ongoing / target 4 per replica \
         (panic: 20 ≥ 2 × capacity 4)"
    );
}

#[test]
fn a_one_scrape_blip_that_the_next_scrape_contradicts_never_panics() {
    let spec = surge_spec();
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    let half = Duration::from_millis(500);
    // Busy but under target, with a spike past the panic threshold on every
    // fourth scrape: each is gone by the next one.
    for i in 0..400u32 {
        let now = t0 + half * i;
        let ongoing = if i % 4 == 3 { 12.0 } else { 1.0 };
        a.observe(now, &scrape(now, u64::from(i) + 1, ongoing));
        let d = a.decide(&spec, 1, now);
        assert!(!d.panic, "{i}: {}", d.reason);
        assert_eq!(d.desired, 1, "{i}: {}", d.reason);
        // The blip asks for the next scrape at once, which clears it.
        assert_eq!(d.awaits_measurement, i % 4 == 3, "{i}");
    }
}

#[test]
fn only_ongoing_requests_surge() {
    // GPU utilization travels at the report interval: one busy reading,
    // unconfirmed for a second, must not panic. The windows judge it.
    let spec = ScalingSpec {
        target_gpu_utilization: Some(0.5),
        ..surge_spec()
    };
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    for i in 0..60u32 {
        let s = Signals {
            gpu_utilization: Some(if i == 59 { 1.0 } else { 0.1 }),
            ..scrape(t0 + SECOND * i, u64::from(i) + 1, 1.0)
        };
        a.observe(t0 + SECOND * i, &s);
        let d = a.decide(&spec, 1, t0 + SECOND * i);
        assert!(!d.panic && !d.awaits_measurement, "{i}: {}", d.reason);
    }
}

#[test]
fn agents_that_do_not_number_scrapes_never_surge() {
    // Measurement 0: the same reading may be repeated, so nothing confirms.
    let spec = surge_spec();
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    for i in 0..20u32 {
        let ongoing = if i >= 18 { 19.0 } else { 1.0 };
        let s = Signals {
            rescraped_at: None,
            ..scrape(t0 + SECOND * i, 0, ongoing)
        };
        a.observe(t0 + SECOND * i, &s);
        let d = a.decide(&spec, 1, t0 + SECOND * i);
        assert!(!d.panic, "{i}: {}", d.reason);
    }
}

#[test]
fn a_surge_reads_the_capacity_on_its_way() {
    let spec = surge_spec();
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    let half = Duration::from_millis(500);
    // 15 ongoing with one replica ready and three loading: capacity 4 × 4 =
    // 16, so 15 is no surge (it would be on one replica alone) and 4 hold.
    for i in 0..8u32 {
        let s = Signals {
            starting: 3,
            ..scrape(t0 + half * i, u64::from(i) + 1, 15.0)
        };
        a.observe(t0 + half * i, &s);
        let d = a.decide(&spec, 4, t0 + half * i);
        assert!(!d.panic && !d.awaits_measurement, "{}", d.reason);
        assert_eq!(d.desired, 4);
    }
}

#[test]
fn another_nodes_report_does_not_confirm_a_blip() {
    // Replicas on nodes A and B. A's scrape shows a blip; B's next scrape
    // (a new measurement, unchanged) arrives before A's: every replica has
    // not been scraped again, so the surge waits, and A's next scrape ends it.
    let spec = surge_spec();
    let mut a = Autoscaler::new();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let two = |n: u64, ongoing: f64, oldest: Instant| Signals {
        ready: 2,
        rescraped_at: Some(oldest),
        ..scrape(oldest, n, ongoing)
    };
    for i in 0..20u32 {
        let now = t0 + SECOND * i;
        a.observe(now, &two(u64::from(i) + 1, 2.0, now));
        a.decide(&spec, 2, now);
    }
    let blip = t0 + SECOND * 20;
    // A: 30 ongoing now; B's replica was last scraped 400 ms ago.
    a.observe(blip, &two(100, 30.0, blip - ms(400)));
    assert!(a.decide(&spec, 2, blip).awaits_measurement);
    // B reports again: its replica is rescraped, A's still is not.
    a.observe(blip + ms(300), &two(101, 30.0, blip));
    let d = a.decide(&spec, 2, blip + ms(300));
    assert!(!d.panic && d.awaits_measurement, "{}", d.reason);
    // A's next scrape: gone.
    a.observe(blip + ms(500), &two(102, 2.0, blip + ms(300)));
    let d = a.decide(&spec, 2, blip + ms(500));
    assert!(!d.panic && !d.awaits_measurement, "{}", d.reason);
    assert_eq!(d.desired, 2);
}
