//! Property tests of the whole control loop (autoscale → place → assign) on
//! random fleets and event sequences, driven on a virtual clock with fake
//! agents that run exactly what they are assigned.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::sync::mpsc;

use crate::api::NodeState;
use crate::domain::{
    Assignment, GpuInfo, GpuSample, Hello, ReplicaState, ReplicaStatus, Report, ToAgent,
};

use super::decide::Pick;
use super::fleet::{Fleet, FleetSettings, NodeOp};
use super::store::{DamagedRecord, ModelRecord, NodeFlags, Store, StoreError};

/// Persistence is not under test here.
struct NullStore;

impl Store for NullStore {
    fn load_models(&self) -> Result<Vec<Result<ModelRecord, DamagedRecord>>, StoreError> {
        Ok(Vec::new())
    }
    fn put_model(&self, _: &ModelRecord) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_model(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn load_node_flags(&self) -> Result<Vec<(String, NodeFlags)>, StoreError> {
        Ok(Vec::new())
    }
    fn put_node_flags(&self, _: &str, _: &NodeFlags) -> Result<(), StoreError> {
        Ok(())
    }
    fn append_events(&self, _: &[crate::api::Event], _: usize) -> Result<(), StoreError> {
        Ok(())
    }
    fn load_events(&self, _: usize) -> Result<Vec<crate::api::Event>, StoreError> {
        Ok(Vec::new())
    }
    fn load_demand(&self) -> Result<Vec<(String, super::predict::DemandHistory)>, StoreError> {
        Ok(Vec::new())
    }
    fn put_demand(&self, _: &str, _: &super::predict::DemandHistory) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_demand(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn assignment_key(&self) -> Result<Vec<u8>, StoreError> {
        Ok(vec![7; 32])
    }
}

const GIB: u64 = 1 << 30;

struct FakeAgent {
    name: String,
    gpus: Vec<GpuInfo>,
    up: bool,
    session: Option<u64>,
    inbox: Option<mpsc::Receiver<ToAgent>>,
    running: Assignment,
    /// GPU memory used outside the fleet's replicas, by GPU index.
    used: BTreeMap<u32, u64>,
}

impl FakeAgent {
    fn statuses(&self) -> Vec<ReplicaStatus> {
        self.running
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                id: r.id.clone(),
                model: r.model.clone(),
                spec_hash: r.spec_hash.clone(),
                state: ReplicaState::Ready,
                pid: 1,
                port: 1,
                gpus: r.gpus.clone(),
                ready_unix_ms: 1,
                assignment_token: r.assignment_token.clone(),
                ..Default::default()
            })
            .collect()
    }

    fn hello(&self) -> Hello {
        Hello {
            node_name: self.name.clone(),
            gpus: self.gpus.clone(),
            replicas: self.statuses(),
            agent_instance: "i".into(),
            ..Default::default()
        }
    }

    fn report(&self) -> Report {
        Report {
            gpus: self
                .gpus
                .iter()
                .map(|g| GpuSample {
                    index: g.index,
                    memory_total_bytes: g.memory_total_bytes,
                    memory_used_bytes: self.used.get(&g.index).copied().unwrap_or(0),
                    healthy: g.healthy,
                    ..Default::default()
                })
                .collect(),
            replicas: self.statuses(),
            inventory: self.gpus.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Tick,
    Pin(usize, u32),
    Down(usize),
    Up(usize),
    Sick(usize, u32),
    Heal(usize, u32),
    Cordon(usize),
    Uncordon(usize),
    Drain(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Tick),
        2 => (0usize..2, 0u32..6).prop_map(|(m, n)| Op::Pin(m, n)),
        1 => (0usize..4).prop_map(Op::Down),
        1 => (0usize..4).prop_map(Op::Up),
        1 => (0usize..4, 0u32..4).prop_map(|(n, g)| Op::Sick(n, g)),
        1 => (0usize..4, 0u32..4).prop_map(|(n, g)| Op::Heal(n, g)),
        1 => (0usize..4).prop_map(Op::Cordon),
        1 => (0usize..4).prop_map(Op::Uncordon),
        1 => (0usize..4).prop_map(Op::Drain),
    ]
}

fn spec(name: &str, gpus: u32, gib: u64) -> String {
    format!(
        "name = \"{name}\"\nweights = \"/srv/{name}\"\nreplicas = 1\n[server]\ncommand = [\"/bin/true\"]\ngpus = {gpus}\ngpu_memory = \"{gib}GiB\"\n"
    )
}

struct World {
    fleet: Fleet,
    agents: Vec<FakeAgent>,
    now: Instant,
}

impl World {
    fn settings() -> FleetSettings {
        FleetSettings {
            tick: Duration::from_secs(1),
            suspect_after: Duration::from_secs(3),
            lost_after: Duration::from_secs(6),
            reconnect_grace: Duration::ZERO,
            retire_grace: super::reconcile::RETIRE_GRACE_MIN,
            event_capacity: 1000,
            allowed_env: Vec::new(),
            adopt_unsigned_replicas: false,
        }
    }

    fn new(gpu_counts: &[u32], mem_gib: &[u64]) -> World {
        let fleet = Fleet::new(World::settings(), Box::new(NullStore)).unwrap();
        let agents = gpu_counts
            .iter()
            .enumerate()
            .map(|(i, n)| FakeAgent {
                name: format!("n{i}"),
                gpus: (0..*n)
                    .map(|g| GpuInfo {
                        index: g,
                        uuid: format!("GPU-{i}-{g}"),
                        memory_total_bytes: mem_gib[i] * GIB,
                        healthy: true,
                        ..Default::default()
                    })
                    .collect(),
                up: false,
                session: None,
                inbox: None,
                running: Assignment::default(),
                used: BTreeMap::new(),
            })
            .collect();
        let mut w = World {
            fleet,
            agents,
            now: Instant::now(),
        };
        for i in 0..w.agents.len() {
            w.up(i);
        }
        w
    }

    fn up(&mut self, i: usize) {
        if self.agents[i].up {
            return;
        }
        let (tx, rx) = mpsc::channel(64);
        let hello = self.agents[i].hello();
        if let Ok(id) = self
            .fleet
            .connect(hello, format!("10.0.0.{i}:1"), tx, self.now)
        {
            let a = &mut self.agents[i];
            a.up = true;
            a.session = Some(id);
            a.inbox = Some(rx);
        }
    }

    fn down(&mut self, i: usize) {
        // The agent goes silent (a partition): it keeps running its replicas.
        let a = &mut self.agents[i];
        a.up = false;
        a.inbox = None;
    }

    /// One control-loop tick, then every live agent applies its latest
    /// assignment and reports.
    fn tick(&mut self) -> BTreeMap<String, Assignment> {
        self.now += Duration::from_secs(1);
        self.fleet.tick(self.now);
        let mut sent = BTreeMap::new();
        for a in self.agents.iter_mut() {
            if let Some(inbox) = a.inbox.as_mut() {
                while let Ok(m) = inbox.try_recv() {
                    if let ToAgent::Assignment(x) = m {
                        a.running = x.clone();
                        sent.insert(a.name.clone(), x);
                    }
                }
            }
        }
        for a in &self.agents {
            if a.up {
                if let Some(s) = a.session {
                    self.fleet.report(s, &a.name, a.report(), self.now);
                }
            }
        }
        sent
    }

    fn schedulable(&self, node: &str) -> bool {
        self.fleet.nodes.get(node).is_some_and(|n| {
            n.session.is_some() && self.fleet.node_state(n, self.now) == NodeState::Ready
        })
    }

    fn check(
        &self,
        before: &BTreeMap<String, (String, Vec<u32>)>,
        schedulable: &BTreeMap<String, bool>,
        healthy: &BTreeMap<(String, u32), bool>,
    ) -> Result<(), TestCaseError> {
        // No GPU of a node is given to two replicas, and every GPU exists.
        let mut used: BTreeMap<(String, u32), String> = BTreeMap::new();
        for r in self.fleet.plan.values() {
            let agent = self.agents.iter().find(|a| a.name == r.node).unwrap();
            for g in &r.gpus {
                prop_assert!(
                    agent.gpus.iter().any(|x| x.index == *g),
                    "{} on missing GPU {g}",
                    r.id
                );
                if let Some(other) = used.insert((r.node.clone(), *g), r.id.clone()) {
                    prop_assert!(false, "GPU {g} of {} given to {other} and {}", r.node, r.id);
                }
            }
            // Memory is never over-committed: whole GPUs with room for it.
            let need = self.fleet.models[&r.model].spec.server.gpu_memory_bytes;
            for g in &r.gpus {
                let total = agent
                    .gpus
                    .iter()
                    .find(|x| x.index == *g)
                    .unwrap()
                    .memory_total_bytes;
                prop_assert!(need <= total);
            }
            // New replicas only where the fleet could take them.
            if !before.contains_key(&r.id) && r.retiring_since.is_none() {
                prop_assert!(
                    schedulable.get(&r.node).copied().unwrap_or(false),
                    "{} placed on unschedulable {}",
                    r.id,
                    r.node
                );
                for g in &r.gpus {
                    prop_assert!(
                        healthy.get(&(r.node.clone(), *g)).copied().unwrap_or(false),
                        "{} placed on unhealthy GPU {g} of {}",
                        r.id,
                        r.node
                    );
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_control_loop_never_double_books_and_converges(
        gpu_counts in proptest::collection::vec(1u32..4, 4),
        mem_gib in proptest::collection::vec(prop_oneof![Just(24u64), Just(80)], 4),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut w = World::new(&gpu_counts, &mem_gib);
        w.fleet.apply_model(spec("small", 1, 20)).unwrap();
        w.fleet.apply_model(spec("big", 2, 70)).unwrap();
        let models = ["small", "big"];
        for op in ops {
            w.run(&op, &models);
            let before: BTreeMap<String, (String, Vec<u32>)> = w.fleet.plan.values().map(|r| (r.id.clone(), (r.node.clone(), r.gpus.clone()))).collect();
            let names: Vec<String> = w.agents.iter().map(|a| a.name.clone()).collect();
            let schedulable: BTreeMap<String, bool> = names.iter().map(|n| (n.clone(), w.schedulable(n) && !w.fleet.nodes[n].flags.cordoned && !w.fleet.nodes[n].flags.draining)).collect();
            // Health as the coordinator last heard it (the report before this tick).
            let healthy: BTreeMap<(String, u32), bool> = w.fleet.nodes.values().flat_map(|n| n.gpus.iter().map(|g| ((n.name.clone(), g.index), g.healthy)).collect::<Vec<_>>()).collect();
            w.tick();
            w.check(&before, &schedulable, &healthy)?;
        }
        // With nothing changing, the loop settles, and then another tick
        // changes nothing: no assignment is sent again.
        for _ in 0..20 { w.tick(); }
        let sent = w.tick();
        prop_assert!(sent.is_empty(), "a settled fleet got new assignments: {sent:?}");
    }
}

impl World {
    fn run(&mut self, op: &Op, models: &[&str]) {
        let w = self;
        match *op {
            Op::Tick => {}
            Op::Pin(m, n) => {
                w.fleet.scale_model(models[m], Some(n)).unwrap();
            }
            Op::Down(i) => w.down(i),
            Op::Up(i) => {
                // A returning agent opens a new session.
                if !w.agents[i].up {
                    w.agents[i].session = None;
                    w.up(i);
                }
            }
            Op::Sick(i, g) | Op::Heal(i, g) => {
                let sick = matches!(op, Op::Sick(..));
                if let Some(x) = w.agents[i].gpus.iter_mut().find(|x| x.index == g) {
                    x.healthy = !sick;
                    x.health_reason = if sick { "Xid 79".into() } else { String::new() };
                }
            }
            Op::Cordon(i) => {
                let _ = w
                    .fleet
                    .node_operation(&format!("n{i}"), NodeOp::Cordon, w.now);
            }
            Op::Uncordon(i) => {
                let _ = w
                    .fleet
                    .node_operation(&format!("n{i}"), NodeOp::Uncordon, w.now);
            }
            Op::Drain(i) => {
                let deadline = Duration::from_secs(5);
                let _ = w
                    .fleet
                    .node_operation(&format!("n{i}"), NodeOp::Drain { deadline }, w.now);
            }
        }
    }
}

// ---- Placement: the incremental view chooses as a scan of every node ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// On random fleets as the control loop changes them (nodes going down
    /// and coming back, GPUs failing, cordons, drains, GPU memory used
    /// outside the plan; models of one and two GPUs, packed and spread),
    /// every placement through the placement view is the one a look at
    /// every node makes. (Each tick of every test also checks this, and that
    /// the view matches the nodes after each change.)
    #[test]
    fn placing_through_the_view_decides_as_a_scan_of_every_node(
        gpu_counts in proptest::collection::vec(1u32..5, 4),
        mem_gib in proptest::collection::vec(prop_oneof![Just(24u64), Just(48), Just(80)], 4),
        used in proptest::collection::vec((0usize..4, 0u32..4, 0u64..60), 0..6),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut w = World::new(&gpu_counts, &mem_gib);
        for (i, g, gib) in used {
            w.agents[i].used.insert(g, gib * GIB);
        }
        w.fleet.apply_model(spec("small", 1, 20)).unwrap();
        w.fleet.apply_model(spec("big", 2, 40)).unwrap();
        w.fleet.apply_model(spec("wide", 1, 10).replace("replicas = 1", "replicas = 3\nspread = true")).unwrap();
        let models = ["small", "wide"];
        for op in ops {
            w.run(&op, &models);
            w.fleet.refresh_view();
            prop_assert!(w.fleet.view_current());
            let now = w.now + Duration::from_secs(1);
            prop_assert_eq!(
                w.fleet.decide_placements_by(now, Pick::View),
                w.fleet.decide_placements_by(now, Pick::Scan)
            );
            // The tick compares the two again, after it scaled.
            w.tick();
        }
        // Placement had something to do.
        prop_assert!(w.fleet.events.iter().any(|e| e.kind == "place"));
    }
}

// ---- Trust: a node speaks only for the replicas assigned to it ----

impl World {
    /// Settles one ready replica of `small` and returns (its node index, id).
    fn one_replica() -> (World, usize, String) {
        let mut w = World::new(&[1, 1, 1], &[80, 80, 80]);
        w.fleet.apply_model(spec("small", 1, 20)).unwrap();
        for _ in 0..3 {
            w.tick();
        }
        let r = w.fleet.plan.values().next().expect("placed").clone();
        let i = w.agents.iter().position(|a| a.name == r.node).unwrap();
        (w, i, r.id)
    }

    /// A new coordinator on the same store: the plan is rebuilt from Hellos.
    fn restart_coordinator(&mut self) {
        self.fleet = Fleet::new(World::settings(), Box::new(NullStore)).unwrap();
        self.fleet.apply_model(spec("small", 1, 20)).unwrap();
        for a in &mut self.agents {
            a.up = false;
            a.session = None;
            a.inbox = None;
        }
    }

    fn endpoints_of(&self, model: &str) -> Vec<String> {
        let listed = self.fleet.endpoints().remove(model).unwrap_or_default();
        listed.into_iter().map(|e| e.address).collect()
    }

    fn refused(&self, node: &str, why: super::trust::Refusal) -> u64 {
        self.fleet
            .refused_claims
            .get(&(node.to_string(), why))
            .copied()
            .unwrap_or(0)
    }

    fn events_of(&self, kind: &str) -> Vec<String> {
        self.fleet
            .events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| format!("{} {}: {}", e.node, e.replica, e.message))
            .collect()
    }
}

/// What a rogue node says: the real replica (with the real token, as if it
/// had stolen it) and two invented ones, all ready on ports of its choosing.
fn rogue_claims(
    real: &ReplicaStatus,
    forged_for: &str,
    key: &super::trust::AssignmentKey,
) -> Vec<ReplicaStatus> {
    let invented = |id: &str, token: String| ReplicaStatus {
        id: id.into(),
        model: "small".into(),
        spec_hash: real.spec_hash.clone(),
        state: ReplicaState::Ready,
        port: 6666,
        gpus: vec![0],
        ready_unix_ms: 1,
        assignment_token: token,
        ..Default::default()
    };
    vec![
        ReplicaStatus {
            port: 6666,
            ..real.clone()
        },
        invented("small-rogue1", String::new()),
        // A token the coordinator signed, but for another node.
        invented(
            "small-rogue2",
            key.token(forged_for, "small-rogue2", "small"),
        ),
    ]
}

#[test]
fn a_node_cannot_claim_another_nodes_replica_nor_invent_one() {
    use super::trust::Refusal;
    let (mut w, owner, id) = World::one_replica();
    let real = w.agents[owner].statuses()[0].clone();
    assert!(
        !real.assignment_token.is_empty(),
        "assignments carry a token"
    );
    let rogue = (owner + 1) % 3;
    let rogue_name = w.agents[rogue].name.clone();
    let before = w.endpoints_of("small");
    assert_eq!(before.len(), 1);

    // Reconnect with the claims in the Hello (adoption) and keep reporting them.
    let claims = rogue_claims(&real, &w.agents[owner].name, &w.fleet.assignment_key);
    let (tx, _rx) = mpsc::channel(64);
    let hello = Hello {
        replicas: claims.clone(),
        ..w.agents[rogue].hello()
    };
    w.fleet.nodes.get_mut(&rogue_name).unwrap().session = None;
    w.fleet.touch_node(&rogue_name);
    let session = w
        .fleet
        .connect(hello, "10.0.0.66:1".into(), tx, w.now)
        .unwrap();
    for _ in 0..10 {
        w.tick();
        let report = Report {
            replicas: claims.clone(),
            ..w.agents[rogue].report()
        };
        w.fleet.report(session, &rogue_name, report, w.now);
    }

    let plan: Vec<_> = w.fleet.plan.values().collect();
    assert_eq!(plan.len(), 1, "nothing adopted: {plan:?}");
    assert_eq!(plan[0].id, id);
    assert_eq!(plan[0].node, w.agents[owner].name);
    assert!(
        plan[0].retiring_since.is_none(),
        "the real replica is not retired"
    );
    assert_eq!(w.endpoints_of("small"), before, "no endpoint changes");
    assert_eq!(w.fleet.reported_state(&id), Some(ReplicaState::Ready));
    assert!(w
        .fleet
        .replica_views(None, Some(&rogue_name))
        .iter()
        .all(|v| v.status.id != id));
    assert_eq!(
        w.refused(&rogue_name, Refusal::OtherNode),
        1,
        "counted once"
    );
    assert_eq!(w.refused(&rogue_name, Refusal::NoToken), 1);
    assert_eq!(w.refused(&rogue_name, Refusal::BadToken), 1);
    let events = w.events_of("claim-refused");
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e.contains(&format!("it is assigned to {}", w.agents[owner].name))),
        "{events:?}"
    );
}

#[test]
fn after_a_restart_only_replicas_with_their_token_are_adopted() {
    use super::trust::Refusal;
    let (mut w, owner, id) = World::one_replica();
    let owner_name = w.agents[owner].name.clone();
    let real = w.agents[owner].statuses()[0].clone();
    w.restart_coordinator();

    // The rogue speaks first, before the real node is back.
    let rogue = (owner + 1) % 3;
    let rogue_name = w.agents[rogue].name.clone();
    let (tx, _rx) = mpsc::channel(64);
    let hello = Hello {
        replicas: rogue_claims(&real, &owner_name, &w.fleet.assignment_key),
        ..w.agents[rogue].hello()
    };
    w.fleet
        .connect(hello, "10.0.0.66:1".into(), tx, w.now)
        .unwrap();
    assert!(w.fleet.plan.is_empty(), "{:?}", w.fleet.plan);
    assert_eq!(
        w.refused(&rogue_name, Refusal::BadToken),
        2,
        "stolen and forged tokens"
    );
    assert_eq!(w.refused(&rogue_name, Refusal::NoToken), 1);

    // The real node's record proves the assignment: adopted, not replaced.
    w.up(owner);
    assert_eq!(w.fleet.plan.keys().collect::<Vec<_>>(), vec![&id]);
    assert_eq!(w.fleet.plan[&id].node, owner_name);
    for _ in 0..5 {
        w.tick();
    }
    assert_eq!(w.fleet.plan.keys().collect::<Vec<_>>(), vec![&id], "kept");
    assert_eq!(w.agents[owner].running.replicas.len(), 1);
    assert_eq!(w.endpoints_of("small"), vec![format!("10.0.0.{owner}:1")]);
}

#[test]
fn a_replica_without_a_token_is_not_adopted_and_is_replaced() {
    use super::trust::Refusal;
    let (mut w, owner, id) = World::one_replica();
    let owner_name = w.agents[owner].name.clone();
    // An agent from before tokens: its records have none.
    for r in &mut w.agents[owner].running.replicas {
        r.assignment_token.clear();
    }
    w.restart_coordinator();
    for i in 0..3 {
        w.up(i);
    }
    assert!(!w.fleet.plan.contains_key(&id));
    assert_eq!(w.refused(&owner_name, Refusal::NoToken), 1);
    let events = w.events_of("claim-refused");
    assert!(events[0].contains("no assignment token"), "{events:?}");
    for _ in 0..3 {
        w.tick();
    }
    // Its node is told to stop it; a new replica (with a token) takes over.
    assert!(w.agents[owner].running.replicas.iter().all(|r| r.id != id));
    let placed: Vec<_> = w.fleet.plan.values().collect();
    assert_eq!(placed.len(), 1);
    assert_ne!(placed[0].id, id);
}

#[test]
fn apply_refuses_env_that_loads_code_unless_the_coordinator_allows_it() {
    let preload = format!(
        "{}[server.env]\nLD_PRELOAD = \"{{weights}}/libevil.so\"\nOMP_NUM_THREADS = \"8\"\n",
        spec("small", 1, 20)
    );
    let mut w = World::new(&[1], &[80]);
    let err = w
        .fleet
        .apply_model(preload.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("env LD_PRELOAD is refused")
            && err.contains("add \"LD_PRELOAD\" (or \"LD_*\") to allowed_env in the coordinator config, and on each agent"),
        "{err}"
    );
    assert!(w.fleet.models.is_empty());
    w.fleet.settings.allowed_env = vec!["LD_PRELOAD".into()];
    w.fleet.apply_model(preload).unwrap();
}

#[test]
fn adopt_unsigned_replicas_keeps_replicas_from_before_tokens() {
    use super::trust::Refusal;
    let (mut w, owner, id) = World::one_replica();
    for r in &mut w.agents[owner].running.replicas {
        r.assignment_token.clear();
    }
    let real = w.agents[owner].statuses()[0].clone();
    w.restart_coordinator();
    w.fleet.settings.adopt_unsigned_replicas = true;
    // A forged token is still refused: only a missing one is excused.
    let rogue = (owner + 1) % 3;
    let rogue_name = w.agents[rogue].name.clone();
    let (tx, _rx) = mpsc::channel(64);
    let forged = ReplicaStatus {
        id: "small-rogue9".into(),
        assignment_token: format!("v1.{}", "ab".repeat(32)),
        ..real.clone()
    };
    let hello = Hello {
        replicas: vec![forged],
        ..w.agents[rogue].hello()
    };
    w.fleet
        .connect(hello, "10.0.0.66:1".into(), tx, w.now)
        .unwrap();
    assert_eq!(w.refused(&rogue_name, Refusal::BadToken), 1);
    w.up(owner);
    assert_eq!(w.fleet.plan.keys().collect::<Vec<_>>(), vec![&id]);
    assert!(
        w.events_of("adopt")
            .iter()
            .any(|e| e.contains("without an assignment token")),
        "{:?}",
        w.events_of("adopt")
    );
    // The next assignment gives it its token, for every later restart.
    w.tick();
    assert!(!w.agents[owner].running.replicas[0]
        .assignment_token
        .is_empty());
}

#[test]
fn a_pause_of_the_coordinator_is_a_grace_not_a_verdict() {
    let mut w = World::new(&[2, 2], &[80, 80]);
    w.fleet.apply_model(spec("small", 1, 20)).unwrap();
    w.fleet.scale_model("small", Some(2)).unwrap();
    for _ in 0..5 {
        w.tick();
    }
    let planned: Vec<String> = w.fleet.plan.keys().cloned().collect();
    assert_eq!(planned.len(), 2);
    let seen = w.fleet.events.back().map_or(0, |e| e.seq);
    // The coordinator is stopped for a minute (SIGSTOP): its next tick is
    // far later than due, and the agents' reports of that minute arrive
    // only after it.
    w.fleet.last_tick = w.now;
    w.now += Duration::from_secs(60);
    w.fleet.notice_pause(w.now);
    w.fleet.tick(w.now);
    for _ in 0..10 {
        w.tick();
    }
    let after: Vec<&crate::api::Event> = w.fleet.events.iter().filter(|e| e.seq > seen).collect();
    assert!(
        after.iter().any(|e| e.kind == "coordinator-paused"),
        "{after:?}"
    );
    assert!(
        !after.iter().any(|e| e.kind == "replace"
            || e.message.contains("lost")
            || e.message.contains("suspect")),
        "false verdicts after a pause: {after:?}"
    );
    let now_planned: Vec<String> = w.fleet.plan.keys().cloned().collect();
    assert_eq!(now_planned, planned, "no replica moved");
}
