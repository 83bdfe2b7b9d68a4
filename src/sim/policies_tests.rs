//! Each policy's decisions on hand-made loads, second by second.

use super::*;
use crate::config::model::ModelSpec;
use crate::coordinator::placement::ReplicaNeeds;
use crate::sim::report::{Metrics, Timeline};
use crate::sim::serving::{FleetShape, ServingModel};

const MODEL: &str = include_str!("../../tests/fixtures/traces/model.toml");

fn spec() -> ModelSpec {
    ModelSpec::parse(MODEL).unwrap_or_else(|e| panic!("{e}"))
}

fn scaling() -> ScalingSpec {
    spec().scaling.unwrap()
}

fn cluster() -> Cluster {
    let mut c = Cluster::new(
        FleetShape {
            nodes: 4,
            gpus_per_node: 2,
            gpu_memory_bytes: 80 << 30,
        },
        ServingModel {
            concurrency: 8,
            prefill_tps: 5000.0,
            decode_tps: 50.0,
            batch_slowdown: 0.0,
            weights_bytes: 16 << 30,
            storage_bw: f64::from(1u32 << 30),
            cache_bw: 10.0 * f64::from(1u32 << 30),
            engine_init_s: 20.0,
        },
        ReplicaNeeds {
            gpus: 1,
            gpu_memory_bytes: 40 << 30,
            spread: false,
        },
        Metrics::new(10.0, Timeline::new(600.0, 10), false),
    );
    c.preload(1, true).unwrap();
    c
}

fn load(ready: u32, ongoing: u32) -> Load {
    Load {
        queued: ongoing.saturating_sub(ready * 8),
        running: ongoing.min(ready * 8),
        running_on_ready: ongoing.min(ready * 8),
        ready,
        arrivals_last_s: ongoing / 4,
        busy_share: Some(f64::from(ongoing.min(ready * 8)) / f64::from(ready.max(1) * 8)),
        ..Load::default()
    }
}

/// Desired counts from ticking `p` at seconds `from..to` under `l`.
fn ticks(p: &mut dyn Policy, c: &Cluster, from: u32, to: u32, l: Load) -> Vec<u32> {
    (from..to)
        .map(|t| p.tick(f64::from(t), &l, c).desired)
        .collect()
}

#[test]
fn policy_names_round_trip() {
    for k in PolicyKind::ALL {
        assert_eq!(k.as_str().parse::<PolicyKind>(), Ok(k));
    }
    assert!("kpa"
        .parse::<PolicyKind>()
        .unwrap_err()
        .contains("allowed: gpufleet"));
}

#[test]
fn hpa_acts_every_15s_and_limits_each_scale_up() {
    let c = cluster();
    let mut hpa = Hpa::new(scaling(), None);
    // 100 ongoing on 1 ready at target 6 asks for 17; one period allows
    // max(2 × 1, 1 + 4) = 5.
    let d = ticks(&mut hpa, &c, 1, 16, load(1, 100));
    assert!(d[..14].iter().all(|n| *n == 1), "{d:?}");
    assert_eq!(d[14], 5);
    // Next period, from 5 ready: 100 / (5 × 6) → 17, capped at 10.
    let d = ticks(&mut hpa, &c, 16, 31, load(5, 100));
    assert_eq!(*d.last().unwrap(), 10);
}

#[test]
fn hpa_ignores_changes_within_tolerance_and_stabilizes_scale_down() {
    let c = cluster();
    let mut hpa = Hpa::new(scaling(), None);
    ticks(&mut hpa, &c, 1, 31, load(1, 60));
    assert_eq!(hpa.desired, 10);
    // 65 ongoing on 10 ready is 8% over target 6: held; 67 is 12% over.
    assert_eq!(
        *ticks(&mut hpa, &c, 31, 61, load(10, 65)).last().unwrap(),
        10
    );
    assert_eq!(
        *ticks(&mut hpa, &c, 61, 76, load(10, 67)).last().unwrap(),
        12
    );
    let mut hpa = Hpa::new(scaling(), None);
    ticks(&mut hpa, &c, 1, 31, load(1, 30));
    assert_eq!(hpa.desired, 5);
    // Demand drops to one replica's worth: the 300 s window of
    // recommendations still holds 5 until it has aged out.
    let d = ticks(&mut hpa, &c, 31, 400, load(5, 6));
    let first_drop = d.iter().position(|n| *n < 5).map(|i| i + 31);
    assert_eq!(first_drop, Some(345), "{d:?}");
    assert_eq!(*d.last().unwrap(), 1);
}

#[test]
fn knative_panics_on_a_burst_and_holds_while_panicking() {
    let c = cluster();
    let mut kpa = Knative::new(scaling(), None);
    // 30 ongoing on 1 ready: 5 pods' worth, ≥ 2 × 1 ready → panic.
    let d = ticks(&mut kpa, &c, 1, 3, load(1, 30));
    assert_eq!(d, vec![1, 5]);
    assert!(kpa.panic_since.is_some());
    // The burst is over, but no scale-down until a stable window without
    // a panic-level burst has passed.
    let d = ticks(&mut kpa, &c, 3, 64, load(5, 0));
    assert!(d.iter().all(|n| *n == 5), "{d:?}");
    let d = ticks(&mut kpa, &c, 64, 70, load(5, 0));
    assert!(d.iter().any(|n| *n < 5), "{d:?}");
    // Scale-down at most halves per decision.
    assert!(d.iter().all(|n| *n >= 2), "{d:?}");
}

#[test]
fn knative_follows_the_stable_average_without_panic() {
    let c = cluster();
    let mut kpa = Knative::new(scaling(), None);
    // 15 ongoing on 2 ready is 2.5 pods' worth: 1.25 × ready, no panic.
    let d = ticks(&mut kpa, &c, 1, 30, load(2, 15));
    assert_eq!(*d.last().unwrap(), 3);
    assert!(kpa.panic_since.is_none());
}

#[test]
fn gpufleet_uses_the_coordinators_autoscaler_on_a_burst() {
    let c = cluster();
    let s = spec();
    let mut g = Gpufleet::new(s.scaling.clone().unwrap(), s.warm.clone(), 0, 36.0, None);
    let d = ticks(&mut g, &c, 1, 5, load(1, 4));
    assert!(d.iter().all(|n| *n == 1), "{d:?}");
    // 40 ongoing on 1 ready: the 6 s average passes 2 × capacity within a
    // few seconds, and the panic scale-up is immediate.
    let d = ticks(&mut g, &c, 5, 15, load(1, 40));
    assert!(*d.last().unwrap() >= 5, "{d:?}");
}

#[test]
fn gpufleet_keeps_a_standby_node_warm_beyond_the_running_ones() {
    let c = cluster();
    let s = spec();
    let mut g = Gpufleet::new(s.scaling.clone().unwrap(), s.warm.clone(), 0, 36.0, None);
    let w = g.tick(1.0, &load(1, 2), &c);
    assert_eq!(w.warm_nodes.len(), 1, "{w:?}");
    assert!(!c.runs_on(w.warm_nodes[0]));
    let mut off = s.warm.clone();
    off.mode = WarmMode::Off;
    off.standby_nodes = 0;
    let mut g = Gpufleet::new(s.scaling.clone().unwrap(), off, 0, 36.0, None);
    assert!(g.tick(1.0, &load(1, 2), &c).warm_nodes.is_empty());
}

#[test]
fn signals_with_no_ready_replica_are_what_the_gateway_holds() {
    // Held at the gateway that woke the model: its queue and arrivals, and
    // nothing only replicas measure (latency).
    let s = signals(&Load {
        queued: 5,
        starting: 1,
        arrivals_last_s: 3,
        recent_p95_s: Some(4.0),
        ..Load::default()
    });
    assert_eq!(
        (s.ongoing, s.waiting, s.requests_per_s, s.ready, s.starting),
        (5.0, Some(5.0), 3.0, 0, 1)
    );
    assert_eq!(s.p95_latency_s, None);
    let s = signals(&load(2, 20));
    assert_eq!((s.ongoing, s.ready), (20.0, 2));
    assert_eq!(s.gpu_utilization, Some(1.0));
    // Requests finishing on a draining replica are not the ready ones'
    // (16 on 2 ready replicas of 8 slots, 5 more on one draining): the
    // coordinator scrapes only ready replicas, and a replica never seems
    // to run more than its slots.
    let s = signals(&Load {
        running: 21,
        running_on_ready: 16,
        draining: 1,
        ..load(2, 16)
    });
    assert_eq!(s.ongoing, 16.0);
}

#[test]
fn peak_replicas_from_the_busiest_minute() {
    let sc = scaling();
    // Minute 0: 60 s of work (1 concurrent); minute 1: 1800 s (30 concurrent).
    let work = [(10.0, 60.0), (70.0, 900.0), (80.0, 900.0)];
    assert_eq!(peak_replicas(work.into_iter(), &sc), 5);
    // Never below the floor, never above the maximum.
    assert_eq!(peak_replicas(std::iter::empty(), &sc), 1);
    assert_eq!(peak_replicas([(0.0, 1e9)].into_iter(), &sc), 32);
}

/// The simulator's gpufleet policy and the coordinator's per-model step are
/// one piece of code: the same signals give the same typed decisions, rule
/// and inputs included.
#[test]
fn simulator_and_coordinator_decide_alike_on_one_signal_sequence() {
    use crate::coordinator::autoscale::{ModelScaler, Tick};
    let c = cluster();
    let s = spec();
    let scaling = s.scaling.clone().unwrap();
    let mut sim = Gpufleet::new(scaling.clone(), s.warm.clone(), 0, 36.0, None);
    sim.decisions = Some(Vec::new());
    let mut coordinator = ModelScaler::new();
    let mut desired = floor(&scaling);
    let sequence: Vec<Load> = (0..400u32)
        .map(|t| {
            let burst = (100..110).contains(&t) || (250..320).contains(&t);
            let mut l = load(2, if burst { 40 } else { 5 + t % 3 });
            l.started_s = (t == 150).then_some(36.0);
            l
        })
        .collect();
    let mut expected = Vec::new();
    for (t, l) in sequence.iter().enumerate() {
        let now_s = t as f64 + 1.0;
        sim.tick(now_s, l, &c);
        let now = sim.instant(now_s);
        if let Some(took) = l.started_s {
            coordinator.record_start(Duration::from_secs_f64(took));
        }
        let tick = Tick {
            now,
            now_unix_s: now_s as i64,
            signals: Some(Signals {
                measurement: now_s as u64 + 1,
                rescraped_at: Some(now),
                ..signals(l)
            }),
            current: desired,
            default_horizon: Duration::from_secs(36),
            forecast: s.warm.mode == WarmMode::Predictive,
        };
        let d = coordinator.step(&scaling, &tick).decision;
        desired = d.desired;
        expected.push(d);
    }
    let got = sim.decisions.take().unwrap();
    assert_eq!(got, expected);
    let rules: std::collections::HashSet<_> = got.iter().map(|d| d.rule).collect();
    assert!(
        rules.len() >= 2,
        "the sequence exercises several rules: {rules:?}"
    );
}

/// The coordinator's scale decision (`decide::scale_step`, as its tick runs
/// it) and this policy, fed one signal sequence, decide alike: count, rule,
/// reason and inputs, tick by tick — also with a time-to-first-token SLO,
/// which sizes the target from the load.
#[test]
fn the_coordinators_scale_step_and_the_simulator_decide_alike() {
    let mut ttft = spec();
    if let Some(sc) = ttft.scaling.as_mut() {
        sc.slo = Some(Duration::from_millis(1500));
        sc.slo_kind = crate::config::model::SloKind::Ttft;
    }
    for (s, sizes_from_ttft) in [(spec(), false), (ttft, true)] {
        let inputs = decide_alike(&s);
        let ttft_sized = inputs
            .iter()
            .any(|i| i.iter().any(|(k, _)| k == "ttft_slots"));
        assert_eq!(ttft_sized, sizes_from_ttft, "{:?}", s.scaling);
    }
}

/// Feeds one signal sequence to the coordinator's step and the simulator's
/// policy for `s`, asserts they decide alike, and returns each tick's inputs.
fn decide_alike(s: &ModelSpec) -> Vec<Vec<(String, String)>> {
    use crate::coordinator::decide::{scale_step, ScaleInputs, ScaledModel};
    use crate::coordinator::scaling::PREDICT_HORIZON;
    use crate::domain::event::ScaleRule;
    let c = cluster();
    let scaling = s.scaling.clone().unwrap();
    // The coordinator looks one PREDICT_HORIZON ahead until it has measured
    // a start, and so does a simulation run (`sim::policy`).
    let mut sim = Gpufleet::new(
        scaling.clone(),
        s.warm.clone(),
        0,
        PREDICT_HORIZON.as_secs_f64(),
        None,
    );
    sim.decisions = Some(Vec::new());
    let mut scaler = ModelScaler::new();
    let mut desired = sim.initial_replicas();
    let mut decided = Vec::new();
    for t in 0..400u32 {
        let burst = (100..110).contains(&t) || (250..320).contains(&t);
        let mut l = load(2, if burst { 40 } else { 5 + t % 3 });
        // A third replica, placed at 114 s, turns ready 36 s later.
        l.started_s = (t == 150).then_some(36.0);
        let now_s = f64::from(t) + 1.0;
        sim.tick(now_s, &l, &c);
        let now = sim.instant(now_s);
        let mut replicas = vec![
            ("m-a".to_string(), true, Duration::from_secs(600)),
            ("m-b".to_string(), true, Duration::from_secs(600)),
        ];
        if (114..=150).contains(&t) {
            let age = Duration::from_secs(u64::from(t) - 114);
            replicas.push(("m-c".to_string(), t == 150, age));
        }
        let inputs = ScaleInputs {
            signals: Signals {
                measurement: now_s as u64 + 1,
                rescraped_at: Some(now),
                ..signals(&l)
            },
            fresh: true,
            replicas,
        };
        let model = ScaledModel {
            name: &s.name,
            spec: s,
            pinned: None,
            desired,
        };
        let change = scale_step(model, &mut scaler, &inputs, now, now_s as i64);
        desired = change.to;
        decided.push(change);
    }
    let got = sim.decisions.take().unwrap();
    assert_eq!(got.len(), decided.len());
    for (t, (d, c)) in got.iter().zip(&decided).enumerate() {
        let rule = ScaleRule::Policy {
            rule: d.rule.to_string(),
            reason: d.reason.clone(),
            warning: d.warning.clone(),
        };
        assert_eq!(
            (d.desired, &rule, &d.inputs, d.panic),
            (c.to, &c.rule, &c.inputs, c.panic),
            "tick {t}"
        );
    }
    let counts: std::collections::HashSet<u32> = decided.iter().map(|c| c.to).collect();
    assert!(
        counts.len() >= 2,
        "the sequence moves the count: {counts:?}"
    );
    got.into_iter().map(|d| d.inputs).collect()
}
