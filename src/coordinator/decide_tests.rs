//! The decision steps on a virtual clock: pure over the fleet (the same view
//! decides the same changes and changes nothing) and settled once applied.
//! That the simulator decides as `decide::scale_step` does is tested beside
//! the simulator's policies (`sim/policies_tests.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::domain::event::{ReplaceReason, ScaleRule};
use crate::domain::EventKind;

use super::decide::Change;
use super::fleet::{Fleet, PlannedReplica};
use super::fleet_tests::{connect, fleet};

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
        plan: (*f.plan).clone(),
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
