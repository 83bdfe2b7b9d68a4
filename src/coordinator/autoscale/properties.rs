//! Properties of every decision, over random specs and load: bounds hold
//! and scale-down walks.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::tests::spec;
use super::*;

#[derive(Debug, Clone)]
struct Tick {
    advance_ms: u64,
    ongoing: f64,
    ready_share: f64,
    gpu: Option<f64>,
    fresh: bool,
    wake: bool,
    floor: Option<u32>,
    /// The queued share of `ongoing`, for engines that report it apart:
    /// the rules that read measured service and start times engage.
    waiting_share: Option<f64>,
    /// A replica start measured this tick, seconds.
    started_s: Option<u64>,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        1u64..5000,
        prop_oneof![Just(0.0), 0.0..400.0f64],
        0.0..=1.0f64,
        proptest::option::of(0.0..1.0f64),
        proptest::bool::weighted(0.9),
        proptest::bool::weighted(0.02),
        proptest::option::weighted(0.02, 0u32..6),
        proptest::option::weighted(0.7, 0.0..=1.0f64),
        proptest::option::weighted(0.05, 0u64..120),
    )
        .prop_map(
            |(
                advance_ms,
                ongoing,
                ready_share,
                gpu,
                fresh,
                wake,
                floor,
                waiting_share,
                started_s,
            )| {
                Tick {
                    advance_ms,
                    ongoing,
                    ready_share,
                    gpu,
                    fresh,
                    wake,
                    floor,
                    waiting_share,
                    started_s,
                }
            },
        )
}

fn any_spec() -> impl Strategy<Value = ScalingSpec> {
    (
        0u32..4,
        1u32..12,
        1u32..4,
        0u64..20,
        1u64..60,
        0.0..0.5f64,
        proptest::bool::ANY,
        // An SLO engages the burst memory (and the SLO-derived target).
        proptest::option::of(1u64..30),
    )
        .prop_map(
            |(min, extra, step, delay_s, zero_s, tolerance, gpu, slo_s)| ScalingSpec {
                min_replicas: min,
                max_replicas: min.max(1) + extra,
                max_scale_down_step: step,
                scale_down_delay: Duration::from_secs(delay_s),
                scale_to_zero_after: Duration::from_secs(zero_s),
                stable_window: Duration::from_secs(20),
                panic_window: Duration::from_secs(4),
                tolerance,
                target_gpu_utilization: gpu.then_some(0.7),
                slo: slo_s.map(Duration::from_secs),
                ..spec()
            },
        )
}

proptest! {
    #[test]
    fn desired_stays_in_bounds_and_walks_down(
        spec in any_spec(),
        ticks in proptest::collection::vec(tick(), 1..400),
    ) {
        let mut scaler = Autoscaler::new();
        let mut now = Instant::now();
        let mut current = spec.min_replicas;
        for t in ticks {
            now += Duration::from_millis(t.advance_ms);
            if t.wake {
                scaler.wake(now);
            }
            if let Some(n) = t.floor {
                scaler.prescale_floor(n, now);
            }
            if let Some(s) = t.started_s {
                scaler.record_start(Duration::from_secs(s));
            }
            if t.fresh {
                let ready = (f64::from(current) * t.ready_share).round() as u32;
                scaler.observe(now, &Signals {
                    ongoing: if ready > 0 { t.ongoing } else { 0.0 },
                    waiting: t.waiting_share.map(|w| if ready > 0 { w * t.ongoing } else { 0.0 }),
                    requests_per_s: if ready > 0 { t.ongoing / 2.0 } else { 0.0 },
                    gpu_utilization: t.gpu,
                    ready,
                    starting: current - ready,
                    ..Signals::default()
                });
            }
            let d = scaler.decide(&spec, current, now);
            prop_assert!(d.desired <= spec.max_replicas, "{d:?}");
            prop_assert!(
                d.desired >= spec.min_replicas || (spec.min_replicas == 0 && d.desired == 0),
                "{d:?}"
            );
            prop_assert!(d.desired + spec.max_scale_down_step >= current, "{current} {d:?}");
            prop_assert!(!d.reason.is_empty());
            current = d.desired;
        }
    }
}
