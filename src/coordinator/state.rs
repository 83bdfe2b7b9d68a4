//! The fleet's state: nodes, models, the replica plan, the warm plan and the
//! event log, as the one fleet task owns it, and its loading from the store.
//! What the control loop decides from it is in `decide.rs`; what changes it,
//! in `apply.rs` and the command handlers (`fleet.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use crate::api::Event;
use crate::config::ModelSpec;
use crate::domain::{EventKind, LogSlice};

use super::handle::FleetError;
use super::nodes::Node;
use super::placement_view::PlacementView;
use super::plan::ReplicaPlan;
use super::store::{ModelRecord, NodeFlags, Store};
use super::trust::{AssignmentKey, Refusal};

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub tick: Duration,
    pub suspect_after: Duration,
    pub lost_after: Duration,
    /// After a coordinator start: no stop or move decisions before this, so
    /// agents can reconnect and report what they run.
    pub reconnect_grace: Duration,
    /// A retiring replica stops this long after it was marked retiring.
    pub retire_grace: Duration,
    pub event_capacity: usize,
    /// Code-loading env variables a model spec may set anyway.
    pub allowed_env: Vec<String>,
    /// Adopt reported replicas without an assignment token (an upgrade from
    /// a version without tokens); a wrong token is never adopted.
    pub adopt_unsigned_replicas: bool,
}

/// A ready replica as `/v1/endpoints` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `host:port` of the model server.
    pub address: String,
    pub node: String,
    pub replica: String,
    pub gpus: Vec<u32>,
    /// Being scaled down: load balancers send it nothing new; it stops
    /// `retire_grace` after it was marked.
    pub retiring: bool,
}

/// A replica the fleet wants to exist, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedReplica {
    pub id: String,
    pub model: String,
    pub node: String,
    pub gpus: Vec<u32>,
    pub spec_hash: String,
    pub created: Instant,
    /// Set when the replica is on its way out: it has left the endpoints, so
    /// load balancers stop sending to it, and stops after a grace period.
    pub retiring_since: Option<Instant>,
}

pub struct Model {
    pub record: ModelRecord,
    pub spec: ModelSpec,
    /// `spec.spec_hash()`, set with the spec: read per tick for every
    /// replica, too often to hash the spec each time.
    pub spec_hash: String,
    pub desired: u32,
    pub placement_problem: String,
    pub last_decision: String,
    /// This tick's decision in words, also when it holds the count.
    pub decision_now: String,
    /// Signals the spec targets that the replicas' metrics lack.
    pub missing_signals: Vec<&'static str>,
    pub scaler: super::autoscale::ModelScaler,
    /// The last ticks' signals and decisions, for `explain`.
    pub timeline: VecDeque<crate::api::SignalPoint>,
}

impl Model {
    pub fn new(record: ModelRecord, spec: ModelSpec) -> Model {
        Model {
            record,
            spec_hash: spec.spec_hash(),
            spec,
            desired: 0,
            placement_problem: String::new(),
            last_decision: String::new(),
            decision_now: String::new(),
            missing_signals: Vec::new(),
            scaler: super::autoscale::ModelScaler::new(),
            timeline: VecDeque::new(),
        }
    }
}

/// A model whose stored record cannot be loaded (checksum, damage, or a
/// spec this version refuses). Its replicas keep running untouched; applying
/// the spec again heals it.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub reason: String,
}

/// `model ls` state of a quarantined model.
pub const INVALID_STORED_SPEC: &str = "invalid-stored-spec";

/// A log request sent to an agent, awaiting its reply.
pub(super) struct PendingLogs {
    pub(super) asked: Instant,
    pub(super) session: u64,
    pub(super) node: String,
    pub(super) reply: oneshot::Sender<Result<(String, LogSlice), FleetError>>,
}

/// The state the fleet task owns; nothing else touches it.
pub struct Fleet {
    pub(super) settings: FleetSettings,
    pub(super) store: Box<dyn Store>,
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) node_flags: BTreeMap<String, NodeFlags>,
    pub(super) models: BTreeMap<String, Model>,
    /// Models whose stored record did not load, by name.
    pub(super) quarantined: BTreeMap<String, Quarantined>,
    pub(super) plan: ReplicaPlan,
    /// Placement's view of the schedulable nodes' free GPUs, kept up to
    /// date as nodes and the plan change.
    pub(super) view: PlacementView,
    /// Nodes changed since the view was last brought up to date.
    pub(super) view_stale: std::collections::BTreeSet<String>,
    /// Nodes whose assignment may have changed since assignments were last
    /// sent (their planned replicas, warm lists, a new session); with
    /// `assign_all`, every node's may have (a model's spec, the warm plan).
    pub(super) assign_stale: std::collections::BTreeSet<String>,
    pub(super) assign_all: bool,
    /// When the coordinator started, or woke from a pause: the reconnect
    /// grace runs from here.
    pub(super) started: Instant,
    /// Nodes the store knew at start that have not reconnected yet: the
    /// reconnect grace waits for them, and only for them.
    pub(super) awaiting_agents: std::collections::BTreeSet<String>,
    /// When the next tick runs ahead of the clock, if it does.
    pub(super) tick_at: Option<Instant>,
    /// A model's surge awaits the next measurement: the next report with one
    /// is acted on at once.
    pub(super) awaiting_measurement: bool,
    pub(super) last_tick: Instant,
    /// The model whose demand history was saved last: the next tick's
    /// share starts after it (`Fleet::save_demand`).
    pub(super) demand_saved_last: Option<String>,
    /// node → model → why (standby, predictive): weights kept warm there.
    pub(super) warm_plan: BTreeMap<String, BTreeMap<String, &'static str>>,
    /// (model, node) pairs placement avoids until the instant given.
    pub(super) avoid: BTreeMap<(String, String), Instant>,
    /// New replicas' ids are drawn from this; it moves on with each one.
    pub(super) id_seed: u64,
    pub(super) next_session: u64,
    /// Log requests sent to agents, awaiting their reply.
    pub(super) pending_logs: BTreeMap<u64, PendingLogs>,
    pub(super) next_request: u64,
    pub(super) events: VecDeque<Event>,
    pub(super) unsaved_events: Vec<Event>,
    /// Nodes first seen since the last tick, saved together by it.
    pub(super) unsaved_nodes: Vec<String>,
    pub(super) next_event_seq: u64,
    pub(super) event_tx: broadcast::Sender<Event>,
    /// Signs the assignment token of every replica sent to a node.
    pub(super) assignment_key: AssignmentKey,
    /// Replica reports not believed, by node and why (a metric).
    pub(super) refused_claims: BTreeMap<(String, Refusal), u64>,
    /// The routing table gateways follow; published after every change.
    pub(super) routes_tx: tokio::sync::watch::Sender<crate::domain::RoutingTable>,
    /// Connected gateways by link id, with their latest demand.
    pub(super) gateways: BTreeMap<u64, super::gateways::GatewayLink>,
    pub(super) next_gateway: u64,
    /// The leader's epoch on etcd (0 with one coordinator on redb): on
    /// every Assignment.
    pub(super) epoch: u64,
    /// Reports changed what gateways route by since the table was last
    /// published: it goes out at most every `ROUTES_EVERY`, not per report.
    pub(super) routes_stale: bool,
    pub(super) routes_published: Instant,
    /// The command queue while `run` serves it: a tick takes in the reports
    /// waiting there between its phases (`take_reports`).
    pub(super) inbox: Option<tokio::sync::mpsc::Receiver<super::handle::Command>>,
    /// Commands other than reports that came in during a tick, handled in
    /// order once it ends.
    pub(super) held: VecDeque<super::handle::Command>,
    /// `fleet::REPORTS_WAIT`; tests set it to zero, so a phase that may
    /// take reports in between its steps does so at every one.
    pub(super) reports_wait: std::time::Duration,
}

impl Fleet {
    /// The fleet's state loaded from the store, not yet running (tests drive
    /// it directly, on a virtual clock).
    pub(super) fn new(settings: FleetSettings, store: Box<dyn Store>) -> Result<Fleet, FleetError> {
        let internal = |e: super::store::StoreError| FleetError::Internal(e.to_string());
        let mut models = BTreeMap::new();
        let mut quarantined = BTreeMap::new();
        // A record that does not load stays in the store untouched (so a
        // rollback still finds it) and its model is quarantined, never
        // dropped: dropping it would stop its running replicas.
        for loaded in store.load_models().map_err(internal)? {
            let (name, reason) = match loaded {
                Ok(record) => match ModelSpec::parse(&record.spec_toml) {
                    Ok(spec) => {
                        models.insert(record.name.clone(), Model::new(record, spec));
                        continue;
                    }
                    Err(e) => (record.name, format!("its spec no longer parses: {e}")),
                },
                Err(damaged) => (damaged.key, damaged.reason),
            };
            quarantined.insert(name, Quarantined { reason });
        }
        for (name, history) in store.load_demand().map_err(internal)? {
            if let Some(m) = models.get_mut(&name) {
                m.scaler.demand = history;
            }
        }
        let node_flags: BTreeMap<String, NodeFlags> = store
            .load_node_flags()
            .map_err(internal)?
            .into_iter()
            .collect();
        let events: VecDeque<Event> = store
            .load_events(settings.event_capacity)
            .map_err(internal)?
            .into();
        let next_event_seq = events.back().map(|e| e.seq + 1).unwrap_or(1);
        let assignment_key = AssignmentKey::new(&store.assignment_key().map_err(internal)?);
        let (event_tx, _) = broadcast::channel(1024);
        let awaiting_agents = if settings.reconnect_grace.is_zero() {
            Default::default()
        } else {
            node_flags.keys().cloned().collect()
        };
        let mut fleet = Fleet {
            settings,
            store,
            nodes: BTreeMap::new(),
            awaiting_agents,
            node_flags,
            models,
            quarantined,
            plan: ReplicaPlan::default(),
            view: PlacementView::default(),
            view_stale: Default::default(),
            assign_stale: Default::default(),
            assign_all: true,
            started: Instant::now(),
            tick_at: None,
            awaiting_measurement: false,
            last_tick: Instant::now(),
            avoid: BTreeMap::new(),
            id_seed: rand::random(),
            warm_plan: BTreeMap::new(),
            demand_saved_last: None,
            next_session: 1,
            pending_logs: BTreeMap::new(),
            next_request: 1,
            events,
            unsaved_events: Vec::new(),
            unsaved_nodes: Vec::new(),
            next_event_seq,
            event_tx,
            assignment_key,
            refused_claims: BTreeMap::new(),
            routes_tx: tokio::sync::watch::Sender::new(Default::default()),
            gateways: BTreeMap::new(),
            next_gateway: 1,
            epoch: 0,
            routes_stale: false,
            routes_published: Instant::now(),
            inbox: None,
            held: VecDeque::new(),
            reports_wait: super::fleet::REPORTS_WAIT,
        };
        fleet.record(EventKind::CoordinatorStarted {
            models: fleet.models.len(),
        });
        if let Some(why) = fleet.reconnect_wait(fleet.started) {
            fleet.record(EventKind::ReconnectWaiting { why });
        }
        let quarantined: Vec<(String, String)> = fleet
            .quarantined
            .iter()
            .map(|(n, q)| (n.clone(), q.reason.clone()))
            .collect();
        for (name, reason) in quarantined {
            tracing::error!(model = %name, "stored record of model `{name}` cannot be loaded: {reason}");
            fleet.record(EventKind::ModelQuarantined {
                model: name,
                reason,
            });
        }
        Ok(fleet)
    }
}
