//! The decision steps on a virtual clock: pure over the fleet (the same view
//! decides the same changes and changes nothing), settled once applied, and
//! the scale step the simulator's gpufleet policy runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::model::{ModelSpec, WarmMode};
use crate::domain::event::{ReplaceReason, ScaleRule};
use crate::domain::EventKind;
use crate::sim::policies::{signals, Gpufleet, Policy};
use crate::sim::report::{Metrics, Timeline};
use crate::sim::serving::{Cluster, FleetShape, Load, ServingModel};

use super::autoscale::ModelScaler;
use super::decide::{scale_step, Change, ScaleInputs, ScaledModel};
use super::fleet::{Fleet, PlannedReplica};
use super::fleet_tests::{connect, fleet};
use super::placement::ReplicaNeeds;
use super::scaling::PREDICT_HORIZON;

fn fixed(replicas: u32) -> String {
    format!(
        "name = \"m\"\nweights = \"/srv/m\"\nreplicas = {replicas}\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n"
    )
}

/// Every pure decision step at `now`, in the tick's order.
fn decide_all(f: &Fleet, now: Instant) -> Vec<Change> {
    let ms = 1_700_000_000_000;
    [
        f.decide_node_states(now),
        f.decide_lost_nodes(now),
        f.decide_unhealthy_gpus(),
        f.decide_crash_loops(now),
        f.decide_spec_changes(),
        f.decide_surplus(now),
        f.decide_placements(now),
        f.decide_drains(ms),
        vec![f.decide_warm(now, ms / 1000)],
    ]
    .concat()
}

/// What a decision step could change, were it not pure.
#[derive(Debug, PartialEq)]
struct Snapshot {
    plan: BTreeMap<String, PlannedReplica>,
    desired: Vec<(String, u32, String)>,
    events: usize,
    avoid: usize,
    id_seed: u64,
    announced: Vec<crate::api::NodeState>,
}

fn snapshot(f: &Fleet) -> Snapshot {
    Snapshot {
        plan: f.plan.clone(),
        desired: f
            .models
            .iter()
            .map(|(n, m)| (n.clone(), m.desired, m.placement_problem.clone()))
            .collect(),
        events: f.events.len(),
        avoid: f.avoid.len(),
        id_seed: f.id_seed,
        announced: f.nodes.values().map(|n| n.announced).collect(),
    }
}

#[test]
fn the_same_view_decides_the_same_changes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let _a = connect(&mut f, "gpu-1", t0);
    let _b = connect(&mut f, "gpu-2", t0);
    let _c = connect(&mut f, "gpu-3", t0);
    f.apply_model(fixed(2)).unwrap();
    f.tick(t0 + Duration::from_secs(1));
    assert_eq!(f.plan.len(), 2);
    // As the scale phase would leave it: more than three one-GPU nodes hold.
    f.models.get_mut("m").unwrap().desired = 4;
    let now = t0 + Duration::from_secs(2);
    let before = snapshot(&f);
    let first = decide_all(&f, now);
    assert_eq!(decide_all(&f, now), first);
    assert_eq!(snapshot(&f), before, "deciding changed the fleet");
    let placed: Vec<&PlannedReplica> = first
        .iter()
        .filter_map(|c| match c {
            Change::Place { replica, .. } => Some(replica),
            _ => None,
        })
        .collect();
    assert_eq!(placed.len(), 1, "{first:?}");
    assert!(!f.plan.contains_key(&placed[0].id));
    assert!(
        first.iter().any(|c| matches!(
            c,
            Change::PlacementProblem { problem, .. } if !problem.is_empty()
        )),
        "{first:?}"
    );

    // Silent nodes: every node lost, every replica replaced, as often as
    // it is asked.
    let later = t0 + Duration::from_secs(40);
    let before = snapshot(&f);
    let lost = decide_all(&f, later);
    assert_eq!(decide_all(&f, later), lost);
    assert_eq!(snapshot(&f), before);
    let replaced = lost
        .iter()
        .filter(|c| {
            matches!(
                c,
                Change::Replace {
                    reason: ReplaceReason::NodeLost,
                    ..
                }
            )
        })
        .count();
    assert_eq!(replaced, 2);
    let judged = lost
        .iter()
        .filter(|c| matches!(c, Change::NodeState { .. }))
        .count();
    assert_eq!(judged, 3);
}

#[test]
fn applied_changes_settle_the_plan_and_are_recorded_typed() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let _a = connect(&mut f, "gpu-1", t0);
    let _b = connect(&mut f, "gpu-2", t0);
    f.apply_model(fixed(2)).unwrap();
    f.tick(t0 + Duration::from_secs(1));
    let now = t0 + Duration::from_secs(2);
    // Applied, the plan holds what was decided: nothing is left to decide.
    let again: Vec<Change> = decide_all(&f, now)
        .into_iter()
        .filter(|c| !matches!(c, Change::WarmPlan { .. }))
        .collect();
    assert_eq!(again, Vec::new());
    let placed: Vec<&EventKind> = f
        .events
        .iter()
        .filter(|e| e.kind == "place")
        .filter_map(|e| e.detail.as_ref())
        .collect();
    assert_eq!(placed.len(), 2);
    for e in &f.events {
        let detail = e.detail.as_ref().expect("every new event is typed");
        assert_eq!(e.kind, detail.name());
        assert_eq!(e.message, detail.message());
    }
    let scaled = f.events.iter().find(|e| e.kind == "scale").unwrap();
    assert_eq!(scaled.message, "0 → 2: fixed replicas = 2");
    assert!(matches!(
        scaled.detail,
        Some(EventKind::Scaled {
            from: 0,
            to: 2,
            rule: ScaleRule::Fixed,
            ..
        })
    ));
}

fn sim_model() -> ModelSpec {
    ModelSpec::parse(include_str!("../../tests/fixtures/traces/model.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn sim_cluster() -> Cluster {
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

/// The coordinator's scale decision (`scale_step`, as the tick runs it) and
/// the simulator's gpufleet policy, fed one signal sequence, decide alike:
/// count, rule, reason and inputs, tick by tick.
#[test]
fn the_coordinators_scale_step_and_the_simulator_decide_alike() {
    let spec = sim_model();
    let scaling = spec.scaling.clone().unwrap();
    assert_eq!(spec.warm.mode, WarmMode::Predictive);
    let cluster = sim_cluster();
    // The coordinator looks one PREDICT_HORIZON ahead until it has measured
    // a start: the simulator is given the same.
    let mut sim = Gpufleet::new(
        scaling.clone(),
        spec.warm.clone(),
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
        let ongoing = if burst { 40 } else { 5 + t % 3 };
        let load = Load {
            queued: ongoing.saturating_sub(16),
            running: ongoing.min(16),
            ready: 2,
            arrivals_last_s: ongoing / 4,
            busy_share: Some(f64::from(ongoing.min(16)) / 16.0),
            // A third replica, placed 36 s before, turns ready at 150 s.
            started_s: (t == 150).then_some(36.0),
            ..Load::default()
        };
        let now_s = f64::from(t) + 1.0;
        sim.tick(now_s, &load, &cluster);
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
            signals: super::autoscale::Signals {
                measurement: now_s as u64 + 1,
                rescraped_at: Some(now),
                ..signals(&load)
            },
            fresh: true,
            replicas,
        };
        let model = ScaledModel {
            name: "sim-llm",
            spec: &spec,
            pinned: None,
            desired,
        };
        let change = scale_step(model, &mut scaler, &inputs, now, now_s as i64);
        desired = change.to;
        decided.push(change);
    }
    let sim_decisions = sim.decisions.take().unwrap();
    assert_eq!(sim_decisions.len(), decided.len());
    for (t, (d, c)) in sim_decisions.iter().zip(&decided).enumerate() {
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
    let counts: std::collections::BTreeSet<u32> = decided.iter().map(|c| c.to).collect();
    assert!(
        counts.len() >= 2,
        "the sequence moves the count: {counts:?}"
    );
}
