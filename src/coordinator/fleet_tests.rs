//! The fleet task's decisions on a virtual clock: the reconnect grace after
//! a start (it waits only for nodes the store knew, and says so) and where
//! CPU replicas go.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::domain::{GpuInfo, Hello, HostInfo, ToAgent};

use super::fleet::{Fleet, FleetSettings};
use super::store::RedbStore;

const GRACE: Duration = Duration::from_secs(30);

pub(super) fn settings() -> FleetSettings {
    FleetSettings {
        tick: Duration::from_secs(1),
        suspect_after: Duration::from_secs(10),
        lost_after: Duration::from_secs(30),
        reconnect_grace: GRACE,
        retire_grace: super::reconcile::RETIRE_GRACE_MIN,
        event_capacity: 1000,
        allowed_env: Vec::new(),
        adopt_unsigned_replicas: false,
    }
}

pub(super) fn fleet(dir: &std::path::Path) -> Fleet {
    Fleet::new(settings(), Box::new(RedbStore::open(dir).unwrap())).unwrap()
}

/// Connects `node`; its session stays open while what is returned lives.
#[must_use]
pub(super) fn connect(fleet: &mut Fleet, node: &str, now: Instant) -> mpsc::Receiver<ToAgent> {
    connect_host(fleet, node, HostInfo::default(), now).1
}

/// Connects `node` with one GPU and `host`: its session, and the outbox that
/// keeps the session open while it lives.
fn connect_host(
    fleet: &mut Fleet,
    node: &str,
    host: HostInfo,
    now: Instant,
) -> (u64, mpsc::Receiver<ToAgent>) {
    connect_hello(fleet, hello(node, host, Vec::new()), now)
}

/// `node`'s Hello: one 80 GiB GPU, `host`, the replicas it runs.
fn hello(node: &str, host: HostInfo, replicas: Vec<crate::domain::ReplicaStatus>) -> Hello {
    Hello {
        node_name: node.into(),
        host,
        gpus: vec![GpuInfo {
            index: 0,
            uuid: format!("GPU-{node}"),
            memory_total_bytes: 80 << 30,
            healthy: true,
            ..Default::default()
        }],
        replicas,
        agent_instance: "i".into(),
        ..Default::default()
    }
}

fn connect_hello(fleet: &mut Fleet, hello: Hello, now: Instant) -> (u64, mpsc::Receiver<ToAgent>) {
    let (tx, rx) = mpsc::channel(64);
    let session = fleet.connect(hello, "127.0.0.1:1".into(), tx, now).unwrap();
    (session, rx)
}

/// What the fleet task's queue holds during a tick in these tests: an
/// operator's `node ls`, then node-a's `report` (its session's slot). The
/// sender keeps the queue open; the receiver gets the `node ls` answer.
fn queue_node_ls_and_report(
    f: &mut Fleet,
    session: u64,
    report: crate::domain::Report,
    now: Instant,
) -> (
    mpsc::Sender<super::fleet::Command>,
    tokio::sync::oneshot::Receiver<Result<Vec<crate::api::NodeView>, super::fleet::FleetError>>,
) {
    use super::fleet::Command;
    let (tx, rx) = mpsc::channel(16);
    f.inbox = Some(rx);
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.try_send(Command::ListNodes { reply }).unwrap();
    let slot = std::sync::Arc::new(super::handle::ReportSlot::default());
    assert!(slot.offer(report, now));
    tx.try_send(Command::Report {
        session,
        node: "node-a".into(),
        slot,
    })
    .unwrap();
    (tx, answer)
}

/// Whether the node's outbox holds the acknowledgement of report `seq`
/// (everything in it is taken).
fn acked(outbox: &mut mpsc::Receiver<ToAgent>, seq: u64) -> bool {
    let mut acked = false;
    while let Ok(m) = outbox.try_recv() {
        acked |= matches!(m, ToAgent::ReportAck(s) if s == seq);
    }
    acked
}

fn kinds(fleet: &Fleet, kind: &str) -> Vec<String> {
    fleet
        .events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.message.clone())
        .collect()
}

#[test]
fn a_first_start_waits_for_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path());
    assert_eq!(f.reconnect_wait(f.started), None);
    assert!(kinds(&f, "reconnect").is_empty());
}

#[test]
fn a_restart_waits_for_the_known_nodes_and_no_longer() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = fleet(dir.path());
        let now = f.started;
        let _a = connect(&mut f, "gpu-1", now);
        let _b = connect(&mut f, "gpu-2", now);
        // New nodes are saved together, by the next tick.
        f.flush_new_nodes();
    }
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let why = f.reconnect_wait(t0).expect("two known nodes are away");
    assert!(
        why.starts_with(
            "waiting 30 s for agents to reconnect (2 of 2 known nodes not back: gpu-1, gpu-2)"
        ),
        "{why}"
    );
    assert_eq!(kinds(&f, "reconnect"), vec![why]);
    let _a = connect(&mut f, "gpu-1", t0 + Duration::from_secs(2));
    let why = f.reconnect_wait(t0 + Duration::from_secs(2)).unwrap();
    assert!(
        why.contains("waiting 28 s") && why.contains("not back: gpu-2"),
        "{why}"
    );
    f.apply_model(
        "name = \"m\"\nweights = \"/srv/m\"\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n"
            .into(),
    )
    .unwrap();
    let summary = f.explain("m").unwrap().summary;
    assert!(summary.starts_with("waiting "), "{summary}");
    assert!(summary.contains("for agents to reconnect"), "{summary}");
    let _b = connect(&mut f, "gpu-2", t0 + Duration::from_secs(3));
    assert_eq!(f.reconnect_wait(t0 + Duration::from_secs(3)), None);
    assert!(kinds(&f, "reconnect")
        .last()
        .unwrap()
        .contains("has reconnected; deciding now"));
}

#[test]
fn a_node_that_never_returns_holds_the_grace_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = fleet(dir.path());
        let now = f.started;
        let _a = connect(&mut f, "gpu-1", now);
        f.flush_new_nodes();
    }
    let f = fleet(dir.path());
    let t0 = f.started;
    assert!(f
        .reconnect_wait(t0 + GRACE - Duration::from_secs(1))
        .is_some());
    assert_eq!(f.reconnect_wait(t0 + GRACE), None);
}

#[test]
fn a_cpu_replica_goes_where_the_host_has_the_cpus_and_ram_it_asks() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let host = |cpus, gib: u64| HostInfo {
        cpus,
        memory_total_bytes: gib << 30,
        ..HostInfo::default()
    };
    let _small = connect_host(&mut f, "small", host(2, 4), t0);
    let _big = connect_host(&mut f, "big", host(16, 64), t0);
    f.apply_model(
        "name = \"cpu-llm\"\nweights = \"/srv/m\"\nreplicas = 3\n[server]\ncommand = [\"/bin/llama-server\"]\ngpus = 0\ncpu = 6\nmemory = \"16GiB\"\n".into(),
    )
    .unwrap();
    f.tick(t0 + Duration::from_secs(1));
    let placed: Vec<(&str, usize)> = f
        .plan
        .values()
        .map(|r| (r.node.as_str(), r.gpus.len()))
        .collect();
    // 16 CPUs hold two replicas of 6; the small host holds none.
    assert_eq!(placed, vec![("big", 0), ("big", 0)]);
    let problem = &f.models["cpu-llm"].placement_problem;
    assert!(
        problem.contains("needs a node with the CPUs and RAM it asks for")
            && problem.contains("big has 4 CPUs and 32.0 GiB RAM free, needs 6 and 16.0 GiB")
            && problem.contains("small has 2 CPUs and 4.0 GiB RAM free"),
        "{problem}"
    );
}

#[test]
fn a_targeted_signal_that_goes_missing_is_an_event_that_explain_shows() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let (session, _outbox) = connect_host(&mut f, "gpu-1", HostInfo::default(), t0);
    f.apply_model(
        "name = \"m\"\nweights = \"/srv/m\"\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n[scaling]\nmin_replicas = 1\nmax_replicas = 2\ntarget_gpu_utilization = 0.8\nstable_window = \"10s\"\n"
            .into(),
    )
    .unwrap();
    let mut now = t0 + Duration::from_secs(1);
    f.tick(now);
    let id = f.plan.keys().next().expect("one replica placed").clone();
    // The replica serves and is scraped, but the node reports no GPU sample:
    // GPU utilization, which the spec targets, is missing.
    for seq in 1..=3u64 {
        now += Duration::from_secs(1);
        let replica = crate::domain::ReplicaStatus {
            id: id.clone(),
            model: "m".into(),
            spec_hash: f.models["m"].spec.spec_hash(),
            state: crate::domain::ReplicaState::Ready,
            gpus: vec![0],
            signals: crate::domain::ServingSignals {
                fresh: true,
                scrape_seq: seq,
                ..Default::default()
            },
            ..Default::default()
        };
        let report = crate::domain::Report {
            replicas: vec![replica],
            ..Default::default()
        };
        f.report(session, "gpu-1", report, now);
        f.tick(now);
    }
    let signals = kinds(&f, "signals");
    assert_eq!(
        signals.len(),
        1,
        "one event when it goes missing: {signals:?}"
    );
    assert!(
        signals[0].contains(
            "GPU utilization missing from the replicas' metrics: scale-down waits for 10s at most"
        ),
        "{signals:?}"
    );
    let explained = f.explain("m").unwrap();
    assert!(
        explained.decisions.iter().any(|e| e.kind == "signals"),
        "{:?}",
        explained.decisions
    );
    assert!(!f.model_view("m", false).decision_now.is_empty());
}

#[test]
fn a_gateway_report_ticks_early_on_a_step_or_when_a_surge_awaits_it() {
    use crate::domain::{GatewayReport, ModelDemand};
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = Instant::now();
    f.last_tick = t0;
    let report = |in_flight: u32| GatewayReport {
        gateway: "gw".into(),
        models: [(
            "m".to_string(),
            ModelDemand {
                queued: 0,
                in_flight,
                arrivals_per_s: 0.0,
            },
        )]
        .into(),
    };
    let link = f.gateway_connected().0;
    // The first report is news: a tick as soon as the gap allows.
    f.gateway_report(link, report(10), t0);
    assert_eq!(f.tick_at, Some(t0 + super::fleet::EARLY_TICK_GAP));
    f.tick_at = None;
    f.last_tick = t0 + Duration::from_millis(100);
    // Demand that holds still waits for the clock...
    let later = t0 + Duration::from_millis(300);
    f.gateway_report(link, report(11), later);
    assert_eq!(f.tick_at, None);
    // ...unless a surge waits for a measurement newer than the one it saw.
    f.awaiting_measurement = true;
    f.gateway_report(link, report(11), later);
    assert_eq!(f.tick_at, Some(later));
}

/// A report queued while a tick runs is handled between its phases, not
/// after the whole tick; a request that reads or changes the plan waits for
/// the tick's end, in order, and is answered then.
#[test]
fn a_tick_takes_in_reports_between_its_phases_and_holds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let now = Instant::now();
    let (session, mut outbox) = connect_host(&mut f, "node-a", HostInfo::default(), now);
    let report = crate::domain::Report {
        seq: 7,
        ack: true,
        ..Default::default()
    };
    let (_tx, mut answer) = queue_node_ls_and_report(&mut f, session, report, now);

    f.tick(now).finish();
    assert!(
        acked(&mut outbox, 7),
        "the report was handled during the tick"
    );
    assert!(
        answer.try_recv().is_err(),
        "node ls waits for the tick's end"
    );
    assert_eq!(f.held.len(), 1);

    let held = f.held.pop_front().unwrap();
    f.handle(held);
    assert_eq!(answer.try_recv().unwrap().unwrap().len(), 1);
}

/// Reports a session reads while the fleet task is busy wait as one: the
/// fleet task handles the newest, with the GPU inventory an older one
/// carried and the ack one asked for; the node was last seen, and the
/// handling time starts, when the newest arrived.
#[tokio::test]
async fn reports_queued_while_the_fleet_task_is_busy_are_handled_as_the_newest() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::handle::{Command, FleetHandle, ReportSlot, Route};
    use crate::domain::{GpuSample, Report};

    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let now = Instant::now();
    let (session, mut outbox) = connect_host(&mut f, "node-a", HostInfo::default(), now);
    let (tx, rx) = mpsc::channel(16);
    let (_route_tx, route) = tokio::sync::watch::channel(Route::Fleet(tx));
    let handle = FleetHandle::routed(route);
    let metrics = handle.metrics();
    let superseded = metrics.reports_superseded.load(Ordering::Relaxed);
    let handled = metrics.reports.load(Ordering::Relaxed);
    let slot = Arc::new(ReportSlot::default());
    let sample = |util: f64| GpuSample {
        utilization_pct: util,
        ..Default::default()
    };
    // Report `seq`, its GPU at `seq` × 10% busy.
    let report = |seq: u64, ack: bool, inventory: Vec<GpuInfo>| Report {
        seq,
        ack,
        gpus: vec![sample(seq as f64 * 10.0)],
        inventory,
        ..Default::default()
    };
    let inventory = vec![GpuInfo {
        index: 0,
        uuid: "GPU-new".into(),
        ..Default::default()
    }];
    // The fleet task is busy: three reports arrive before it reads any.
    let first = Instant::now();
    for r in [report(1, true, vec![]), report(2, false, inventory.clone())] {
        handle.report(&slot, session, "node-a".into(), r).await;
    }
    // The newest comes well after the first.
    std::thread::sleep(Duration::from_millis(300));
    let before_newest = Instant::now();
    let newest = report(3, false, vec![]);
    handle.report(&slot, session, "node-a".into(), newest).await;
    let after_newest = Instant::now();
    assert!(
        metrics.reports_superseded.load(Ordering::Relaxed) >= superseded + 2,
        "two reports were replaced"
    );

    let mut rx = rx;
    let cmd = rx.try_recv().expect("the first report told the fleet task");
    assert!(rx.try_recv().is_err(), "one command for the three reports");
    let report_time = metrics.report.sum();
    f.handle(cmd);
    let waited = metrics.report.sum() - report_time;

    let node = &f.nodes["node-a"];
    assert_eq!(node.samples, vec![sample(30.0)], "the newest samples");
    assert_eq!(node.gpus, inventory, "the older report's inventory kept");
    assert!(
        node.last_seen >= before_newest && node.last_seen <= after_newest,
        "last seen when the newest report arrived"
    );
    assert!(
        waited < before_newest - first,
        "handling time counts from the newest report's arrival, not the first's: {waited:?}"
    );
    assert!(metrics.reports.load(Ordering::Relaxed) > handled);
    let mut acks = Vec::new();
    while let Ok(m) = outbox.try_recv() {
        if let ToAgent::ReportAck(seq) = m {
            acks.push(seq);
        }
    }
    assert_eq!(acks, vec![3], "the newest seq answers the ack asked for");

    // The slot is empty again: the next report is a command of its own.
    handle
        .report(&slot, session, "node-a".into(), Report::default())
        .await;
    assert!(matches!(rx.try_recv(), Ok(Command::Report { .. })));
}

/// The tick reads each planned replica's status through one index of what
/// the nodes report, built per tick; it reads what a search of the
/// replica's own node finds: the first status that node lists for the id,
/// none from another node that claims it, and a replica not reported is
/// starting. The surplus rule retires the one not ready.
#[test]
fn each_replica_counts_as_its_own_node_reports_it() {
    use crate::domain::{ReplicaState, ReplicaStatus, Report, ServingSignals};
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let (s1, _o1) = connect_host(&mut f, "gpu-1", HostInfo::default(), t0);
    let (s2, _o2) = connect_host(&mut f, "gpu-2", HostInfo::default(), t0);
    let (s3, _o3) = connect_host(&mut f, "gpu-3", HostInfo::default(), t0);
    f.apply_model(
        "name = \"m\"\nweights = \"/srv/m\"\nreplicas = 3\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n"
            .into(),
    )
    .unwrap();
    let now = t0 + Duration::from_secs(1);
    f.tick(now).finish();
    let on = |f: &Fleet, node: &str| {
        f.plan
            .values()
            .find(|r| r.node == node)
            .map(|r| r.id.clone())
            .expect("a replica on each node")
    };
    let (r1, r2) = (on(&f, "gpu-1"), on(&f, "gpu-2"));
    let hash = f.models["m"].spec_hash.clone();
    let status = |id: &str, state, seq| ReplicaStatus {
        id: id.into(),
        model: "m".into(),
        spec_hash: hash.clone(),
        state,
        gpus: vec![0],
        signals: ServingSignals {
            fresh: true,
            scrape_seq: seq,
            ..Default::default()
        },
        ..Default::default()
    };
    // gpu-1 lists its replica twice: ready first, then failed.
    let report = Report {
        replicas: vec![
            status(&r1, ReplicaState::Ready, 1),
            status(&r1, ReplicaState::Failed, 2),
        ],
        ..Default::default()
    };
    f.report(s1, "gpu-1", report, now);
    // gpu-2's replica is starting; gpu-3 claims gpu-2's replica as ready.
    let report = Report {
        replicas: vec![status(&r2, ReplicaState::Starting, 0)],
        ..Default::default()
    };
    f.report(s2, "gpu-2", report, now);
    let report = Report {
        replicas: vec![status(&r2, ReplicaState::Ready, 5)],
        ..Default::default()
    };
    f.report(s3, "gpu-3", report, now);

    let inputs = f.scale_inputs(now);
    assert_eq!(inputs, f.scale_inputs_by_scan(now));
    let (_, m) = &inputs[0];
    assert_eq!((m.signals.ready, m.signals.starting), (1, 2));
    assert_eq!(m.signals.measurement, 1, "gpu-3's claim is not counted");
    let ready: Vec<(&str, bool)> = m
        .replicas
        .iter()
        .map(|(id, ready, _)| (id.as_str(), *ready))
        .collect();
    assert!(ready.contains(&(r1.as_str(), true)), "{ready:?}");
    assert!(ready.contains(&(r2.as_str(), false)), "{ready:?}");

    // Two wanted: the surplus rule reads each replica on its own node (the
    // last status listed, as the map of every reported replica holds it)
    // and retires first the one no node reports: gpu-3's.
    f.scale_model("m", Some(2)).unwrap();
    f.tick(now + Duration::from_secs(1)).finish();
    let retiring: Vec<&str> = f
        .plan
        .values()
        .filter(|r| r.retiring_since.is_some())
        .map(|r| r.node.as_str())
        .collect();
    assert_eq!(retiring, ["gpu-3"]);
}

/// A `decide` phase that runs long takes the queued reports in between two
/// models' steps (here at every step: no wait allowed) and holds everything
/// else. Inputs are read in runs of models (here one model a run): a model
/// decides on what the fleet showed when its run's inputs were read, so a
/// report that turns replicas ready counts for the models after it.
#[test]
fn a_long_decide_phase_takes_reports_between_models_and_later_runs_read_them() {
    use crate::domain::{ReplicaState, ReplicaStatus, Report};
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let host = HostInfo {
        cpus: 8,
        memory_total_bytes: 64 << 30,
        ..HostInfo::default()
    };
    let (session, mut outbox) = connect_host(&mut f, "node-a", host, t0);
    for m in ["a", "b"] {
        f.apply_model(format!(
            "name = \"{m}\"\nweights = \"/srv/{m}\"\n[server]\ncommand = [\"/bin/serve\"]\ngpus = 0\ncpu = 1\nmemory = \"1GiB\"\n"
        ))
        .unwrap();
    }
    let mut now = t0 + Duration::from_secs(1);
    f.tick(now).finish();
    assert_eq!(f.plan.len(), 2, "one replica of each placed");
    let ready: Vec<ReplicaStatus> = f
        .plan
        .values()
        .map(|r| ReplicaStatus {
            id: r.id.clone(),
            model: r.model.clone(),
            spec_hash: r.spec_hash.clone(),
            state: ReplicaState::Ready,
            ..Default::default()
        })
        .collect();

    f.reports_wait = Duration::ZERO;
    let report = Report {
        seq: 3,
        ack: true,
        replicas: ready,
        ..Default::default()
    };
    let (_tx, mut answer) = queue_node_ls_and_report(&mut f, session, report, now);
    while outbox.try_recv().is_ok() {}

    now += Duration::from_secs(1);
    let mut clock = super::metrics::FleetMetrics::process().phases();
    f.scale_phase(now, 0, &mut clock);
    assert!(
        acked(&mut outbox, 3),
        "the report was taken in during the phase"
    );
    assert!(
        answer.try_recv().is_err(),
        "node ls waits for the tick's end"
    );
    assert_eq!(f.held.len(), 1);
    let ready = |f: &Fleet, m: &str| f.models[m].timeline.back().expect("decided").ready;
    assert_eq!(ready(&f, "a"), 0, "model a decided before the report");
    assert_eq!(ready(&f, "b"), 1, "model b's inputs were read after it");
    // The next decision sees the report.
    f.scale_phase(now + Duration::from_secs(1), 0, &mut clock);
    for m in ["a", "b"] {
        assert_eq!(f.models[m].timeline.back().unwrap().ready, 1, "model {m}");
    }
}

/// `replica ls` (and `/metrics`, which counts it) shows each replica once:
/// as its node reports it, or, planned and not reported, as starting.
#[test]
fn replica_views_show_each_replica_once_reported_or_starting() {
    use crate::domain::{ReplicaState, ReplicaStatus, Report};
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let t0 = f.started;
    let (s1, _o1) = connect_host(&mut f, "gpu-1", HostInfo::default(), t0);
    let _o2 = connect_host(&mut f, "gpu-2", HostInfo::default(), t0);
    f.apply_model(
        "name = \"m\"\nweights = \"/srv/m\"\nreplicas = 2\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n"
            .into(),
    )
    .unwrap();
    let now = t0 + Duration::from_secs(1);
    f.tick(now).finish();
    let on1 = f.plan.values().find(|r| r.node == "gpu-1").unwrap().clone();
    let report = Report {
        replicas: vec![ReplicaStatus {
            id: on1.id.clone(),
            model: "m".into(),
            spec_hash: on1.spec_hash.clone(),
            state: ReplicaState::Ready,
            gpus: vec![0],
            ..Default::default()
        }],
        ..Default::default()
    };
    f.report(s1, "gpu-1", report, now);
    let all = f.replica_views(None, None);
    let states: Vec<(&str, ReplicaState)> = all
        .iter()
        .map(|v| (v.node.as_str(), v.status.state))
        .collect();
    assert_eq!(all.len(), 2, "{states:?}");
    assert!(
        states.contains(&("gpu-1", ReplicaState::Ready)),
        "{states:?}"
    );
    assert!(
        states.contains(&("gpu-2", ReplicaState::Starting)),
        "{states:?}"
    );
    assert_eq!(f.replica_views(Some("m"), Some("gpu-2")).len(), 1);
    // A name that matches nothing is an error naming what exists, not an
    // empty table; a known model with none on a known node is just empty.
    let typo = f
        .list_replicas(Some("nosuch"), None)
        .unwrap_err()
        .to_string();
    assert!(
        typo.contains("`nosuch` not found; known models: m"),
        "{typo}"
    );
    let typo = f
        .list_replicas(None, Some("gpu-9"))
        .unwrap_err()
        .to_string();
    assert!(typo.contains("known nodes: gpu-1, gpu-2"), "{typo}");
    assert_eq!(f.list_replicas(Some("m"), None).unwrap().len(), 2);
    assert_eq!(f.model_view("m", false).ready_replicas, 1);

    // Retiring, it still runs and its node reports it ready: the view says
    // it gets nothing new and when it stops (the grace counts from now).
    f.retire(&on1.id, Instant::now());
    let view = f.replica_views(Some("m"), Some("gpu-1")).remove(0);
    assert_eq!(view.status.state, ReplicaState::Ready);
    assert!(
        view.status
            .reason
            .starts_with("retiring: out of the endpoints, stops in "),
        "{:?}",
        view.status.reason
    );
    let shown = f.model_view("m", true).replicas;
    assert!(
        shown.iter().any(|r| r.status.reason == view.status.reason),
        "model show agrees: {shown:?}"
    );
    f.plan.update(&on1.id, |r| r.retiring_since = None);

    // `model ls` walks the fleet once for every model: what each model's
    // own view says, also when a node names its replica's model otherwise.
    f.apply_model(
        "name = \"n\"\nweights = \"/srv/n\"\nreplicas = 1\n[server]\ncommand = [\"/bin/serve\"]\ngpus = 0\ncpu = 1\nmemory = \"1GiB\"\n"
            .into(),
    )
    .unwrap();
    let report = Report {
        replicas: vec![
            ReplicaStatus {
                id: on1.id.clone(),
                model: "n".into(),
                state: ReplicaState::Ready,
                ..Default::default()
            },
            ReplicaStatus {
                id: "stray-1".into(),
                model: "n".into(),
                state: ReplicaState::Starting,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    f.report(s1, "gpu-1", report, now);
    let one_by_one: Vec<_> = ["m", "n"].iter().map(|m| f.model_view(m, false)).collect();
    assert_eq!(f.model_views(), one_by_one);

    // What `/metrics` counts is what the views show, without building them:
    // with a retiring replica, a claim not believed and a quarantined model.
    assert_eq!(f.counts(now), f.counts_from_views(now));
    let retiring = f
        .plan
        .values()
        .find(|r| r.node == "gpu-2")
        .unwrap()
        .id
        .clone();
    assert!(f.plan.update(&retiring, |r| r.retiring_since = Some(now)));
    f.nodes
        .get_mut("gpu-1")
        .unwrap()
        .refused_claims
        .insert("stray-1".into());
    let mut kept = on1.clone();
    kept.id = "q-1".into();
    kept.model = "q".into();
    f.plan.insert(kept);
    f.quarantined.insert(
        "q".into(),
        super::state::Quarantined {
            reason: "bad".into(),
        },
    );
    let counts = f.counts(now);
    assert_eq!(counts, f.counts_from_views(now));
    let m = counts.models.iter().find(|c| c.name == "m").unwrap();
    assert_eq!((m.desired, m.ready, m.current), (2, 0, 1), "{counts:?}");
    assert_eq!(
        counts.replicas.get(&("m".to_string(), "starting")),
        Some(&1)
    );
    assert_eq!(
        counts.replicas.get(&("q".to_string(), "starting")),
        Some(&1)
    );
    let q = counts.models.iter().find(|c| c.name == "q").unwrap();
    assert_eq!((q.ready, q.current), (0, 1), "{counts:?}");
    assert_eq!(counts.nodes.get("ready"), Some(&2), "{counts:?}");
    assert_eq!(counts.replicas.get(&("n".to_string(), "ready")), Some(&1));
    assert_eq!(counts.replicas.get(&("n".to_string(), "starting")), None);
}

/// Each tick saves its share of the models' demand histories, in turn: all
/// of them within `DEMAND_SAVE_EVERY`, never all in one tick.
#[test]
fn demand_histories_are_saved_a_share_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path());
    let models: usize = 70;
    for i in 0..models {
        f.apply_model(format!(
            "name = \"m{i:02}\"\nweights = \"/srv/m\"\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n"
        ))
        .unwrap();
    }
    // An empty history is nothing to store: give each some demand.
    for m in f.models.values_mut() {
        m.scaler.demand.record(1_700_000_000, 1.0, 1.0, 0.0);
    }
    let ticks =
        (super::fleet::DEMAND_SAVE_EVERY.as_secs_f64() / settings().tick.as_secs_f64()) as usize;
    let share = models.div_ceil(ticks);
    assert!(share > 1 && share < models, "{share}");
    let saved = |f: &Fleet| f.store.load_demand().unwrap().len();
    assert_eq!(saved(&f), 0);
    let mut clock = super::metrics::FleetMetrics::process().phases();
    for tick in 1..=models.div_ceil(share) {
        f.save_demand(&mut clock);
        assert_eq!(saved(&f), (tick * share).min(models), "after tick {tick}");
    }
    // Round again from the first: nothing saved twice in a row, none missed.
    assert_eq!(f.demand_saved_last.as_deref(), Some("m69"));
    f.save_demand(&mut clock);
    assert_eq!(f.demand_saved_last, Some(format!("m{:02}", share - 1)));
    assert_eq!(saved(&f), models);
}

/// The fleet task runs on a thread of its own: it answers while the
/// runtime that started it is busy (here: never driven again), and it stops
/// when told to, after which its handle says so.
#[test]
fn the_fleet_task_answers_whatever_its_starters_runtime_does_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let store = Box::new(RedbStore::open(dir.path()).unwrap());
    let starter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (handle, task) = starter
        .block_on(async { Fleet::spawn(settings(), store) })
        .unwrap();
    let asker = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let models = asker.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), handle.list_models()).await
    });
    assert!(
        matches!(models, Ok(Ok(ref m)) if m.is_empty()),
        "{models:?}"
    );
    starter.block_on(task.stop());
    let after = asker.block_on(handle.list_models());
    assert!(after.is_err(), "{after:?}");
}

#[test]
fn a_restart_keeps_an_autoscaled_models_running_replicas() {
    restart_with_replicas_running(false);
}

#[test]
fn agents_back_after_the_reconnect_grace_keep_an_autoscaled_models_replicas() {
    restart_with_replicas_running(true);
}

/// Three replicas of an autoscaled model (minimum 1) run; the coordinator
/// restarts and the agents come back with them, in time or (`late`) after
/// the reconnect grace, once the model was decided with nothing running.
/// All three are kept.
fn restart_with_replicas_running(late: bool) {
    use crate::domain::{ReplicaState, ReplicaStatus, Report};
    let dir = tempfile::tempdir().unwrap();
    let spec = "name = \"m\"\nweights = \"/srv/m\"\n[server]\ncommand = [\"/bin/serve\"]\ngpu_memory = \"1GiB\"\n[scaling]\nmin_replicas = 1\nmax_replicas = 8\n";
    let nodes = ["gpu-1", "gpu-2", "gpu-3"];
    // Every planned replica of `f`, ready, in its node's report.
    let report_all = |f: &mut Fleet, sessions: &[(u64, &str)], now: Instant| {
        for &(s, node) in sessions {
            let replicas = f
                .plan
                .values()
                .filter(|r| r.node == node)
                .map(|r| ReplicaStatus {
                    id: r.id.clone(),
                    model: r.model.clone(),
                    spec_hash: r.spec_hash.clone(),
                    state: ReplicaState::Ready,
                    gpus: r.gpus.clone(),
                    assignment_token: f.assignment_key.token(node, &r.id, &r.model),
                    ..Default::default()
                })
                .collect();
            let report = Report {
                replicas,
                ..Default::default()
            };
            f.report(s, node, report, now);
        }
    };
    let running: Vec<(String, String)>;
    {
        let mut f = fleet(dir.path());
        let t0 = f.started;
        let conns: Vec<_> = nodes
            .iter()
            .map(|n| connect_host(&mut f, n, HostInfo::default(), t0))
            .collect();
        let sessions: Vec<(u64, &str)> = conns.iter().map(|c| c.0).zip(nodes).collect();
        f.apply_model(spec.into()).unwrap();
        // Three replicas, by hand, then back to the autoscaler, which holds
        // them until its scale-down delay has passed.
        f.scale_model("m", Some(3)).unwrap();
        f.tick(t0 + Duration::from_secs(1)).finish();
        report_all(&mut f, &sessions, t0 + Duration::from_secs(1));
        f.scale_model("m", None).unwrap();
        for s in 2..5 {
            let now = t0 + Duration::from_secs(s);
            report_all(&mut f, &sessions, now);
            f.tick(now).finish();
        }
        running = f
            .plan
            .values()
            .map(|r| (r.node.clone(), r.id.clone()))
            .collect();
        assert_eq!(running.len(), 3, "{running:?}");
        f.flush_new_nodes();
    }
    // A new coordinator on the same store; the agents come back with the
    // replicas they run, in their hellos.
    let mut f = fleet(dir.path());
    let mut t0 = f.started;
    if late {
        t0 += GRACE + Duration::from_secs(1);
        f.tick(t0).finish();
        assert!(
            kinds(&f, "scale")[0].starts_with("0 → 1: below the minimum"),
            "{:?}",
            kinds(&f, "scale")
        );
    }
    let hash = f.models["m"].spec_hash.clone();
    let mut conns = Vec::new();
    for node in nodes {
        let replicas = running
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, id)| ReplicaStatus {
                id: id.clone(),
                model: "m".into(),
                spec_hash: hash.clone(),
                state: ReplicaState::Ready,
                gpus: vec![0],
                assignment_token: f.assignment_key.token(node, id, "m"),
                ..Default::default()
            })
            .collect();
        conns.push(connect_hello(
            &mut f,
            hello(node, HostInfo::default(), replicas),
            t0,
        ));
    }
    assert_eq!(f.plan.len(), 3, "{:?}", kinds(&f, "adopt"));
    let sessions: Vec<(u64, &str)> = conns.iter().map(|c| c.0).zip(nodes).collect();
    for s in 1..5 {
        let now = t0 + Duration::from_secs(s);
        report_all(&mut f, &sessions, now);
        f.tick(now).finish();
    }
    let kept: Vec<&str> = f
        .plan
        .values()
        .filter(|r| r.retiring_since.is_none())
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(kept.len(), 3, "{:?}", kinds(&f, "scale"));
    // The first decision says it holds what runs.
    if !late {
        let scaled = kinds(&f, "scale");
        assert!(scaled[0].starts_with("holding 3: "), "{scaled:?}");
    }
    assert!(
        f.model_view("m", false)
            .decision_now
            .starts_with("holding 3: "),
        "{}",
        f.model_view("m", false).decision_now
    );
}
