//! How handlers talk to the fleet task: one command per request, each with
//! a oneshot for the reply. A dead fleet task reads as an internal error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::api::{Event, GpuView, ModelView, NodeView, ReplicaView, WarmView};
use crate::domain::{
    GatewayReport, Hello, LogQuery, LogSlice, LogsReply, Report, RoutingTable, ToAgent,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// This coordinator does not lead the fleet (several coordinators on
    /// etcd): the leader's gRPC address when one is known.
    #[error("{}", not_leader_text(.leader))]
    NotLeader { leader: Option<String> },
}

fn not_leader_text(leader: &Option<String>) -> String {
    match leader {
        Some(l) => format!("this coordinator is a follower; the leader is {l}"),
        None => "there is no leader now (an election is under way); retry in a few seconds".into(),
    }
}

type Reply<T> = oneshot::Sender<Result<T, FleetError>>;

pub enum Command {
    Connect {
        hello: Box<Hello>,
        address: String,
        outbox: mpsc::Sender<ToAgent>,
        reply: Reply<u64>,
    },
    /// The session's slot holds a report: the fleet task takes the newest
    /// from it when it gets to this.
    Report {
        session: u64,
        node: String,
        slot: Arc<ReportSlot>,
    },
    Disconnect {
        session: u64,
        node: String,
        reason: String,
    },
    ApplyModel {
        spec_toml: String,
        reply: Reply<ModelView>,
    },
    DeleteModel {
        name: String,
        reply: Reply<u32>,
    },
    WakeModel {
        name: String,
        reply: Reply<ModelView>,
    },
    Explain {
        name: String,
        reply: Reply<crate::api::Explanation>,
    },
    ListModels {
        reply: Reply<Vec<ModelView>>,
    },
    GetModel {
        name: String,
        reply: Reply<ModelView>,
    },
    ScaleModel {
        name: String,
        replicas: Option<u32>,
        reply: Reply<ModelView>,
    },
    ListNodes {
        reply: Reply<Vec<NodeView>>,
    },
    GetNode {
        name: String,
        reply: Reply<NodeView>,
    },
    NodeOperation {
        name: String,
        op: NodeOp,
        reply: Reply<NodeView>,
    },
    MarkGpuHealthy {
        node: String,
        index: u32,
        reply: Reply<Vec<GpuView>>,
    },
    ListGpus {
        node: Option<String>,
        reply: Reply<Vec<GpuView>>,
    },
    ListReplicas {
        model: Option<String>,
        node: Option<String>,
        reply: Reply<Vec<ReplicaView>>,
    },
    ReplicaLogs {
        id: String,
        query: LogQuery,
        reply: Reply<(String, LogSlice)>,
    },
    LogsReply {
        session: u64,
        reply: LogsReply,
    },
    ListWarm {
        node: Option<String>,
        reply: Reply<Vec<WarmView>>,
    },
    Warm {
        model: String,
        node: String,
        op: WarmOp,
        reply: Reply<Vec<WarmView>>,
    },
    ListEvents {
        model: Option<String>,
        node: Option<String>,
        limit: usize,
        reply: Reply<Vec<Event>>,
    },
    SubscribeEvents {
        reply: Reply<broadcast::Receiver<Event>>,
    },
    /// A consistent copy of the store (`coordinator backup`).
    Backup {
        reply: Reply<Vec<u8>>,
    },
    /// Ready replica addresses per model, for `/v1/endpoints`.
    Endpoints {
        reply: Reply<BTreeMap<String, Vec<super::fleet::Endpoint>>>,
    },
    /// What `/metrics` counts of the fleet.
    Counts {
        reply: Reply<super::views::FleetCounts>,
    },
    /// A gateway opened its stream: its link id and the routing table to follow.
    GatewayConnect {
        reply: Reply<(u64, watch::Receiver<RoutingTable>)>,
    },
    GatewayReport {
        link: u64,
        report: Box<GatewayReport>,
    },
    GatewayDisconnect {
        link: u64,
    },
}

/// One agent session's reports on their way to the fleet task: only the
/// newest waits. While the fleet task has not taken the slot's report yet,
/// a newer one replaces it (counted in `reports_superseded`), so a fleet
/// task that falls behind reads each node's present state, not a backlog
/// of stale ones.
///
/// A report is a whole picture of its node (GPU and host samples, every
/// replica with its cumulative restarts, scrape errors and activity, the
/// warm cache, the applied generation): the newest says all the older one
/// did, except for two parts, which are merged into the waiting report:
/// - `inventory` travels only when it changed, empty meaning "as before":
///   a newer report without one keeps the older report's, else the fleet
///   task would never see that change;
/// - `ack`: when any of them asked for an answer, the newest `seq` is
///   answered, which acknowledges every report up to it.
///
/// What the fleet task notices from one handled report to the next (a
/// replica turning ready or failed, a scrape failing, a fill ending) is
/// judged against the newest: a state held only by a superseded report is
/// not seen, as if the agent had reported less often. A replica that
/// crashed and came back meanwhile still shows in its restart count.
#[derive(Default)]
pub struct ReportSlot(Mutex<Option<PendingReport>>);

/// The report waiting in a session's slot.
#[derive(Debug)]
pub struct PendingReport {
    pub report: Report,
    /// When the session read the newest report off the wire: the node's
    /// last sign of life, and where the report's handling time starts.
    pub received: Instant,
}

impl ReportSlot {
    /// Puts `report` in the slot; true when the slot was empty (the fleet
    /// task is to be told), false when it joined a report still waiting.
    pub fn offer(&self, report: Report, received: Instant) -> bool {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(waiting) => {
                waiting.supersede(report, received);
                false
            }
            None => {
                *slot = Some(PendingReport { report, received });
                true
            }
        }
    }

    /// The waiting report, leaving the slot empty.
    pub fn take(&self) -> Option<PendingReport> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl PendingReport {
    /// `newer` in place of the waiting report, with the parts of the older
    /// one that `newer` does not repeat (see `ReportSlot`).
    fn supersede(&mut self, newer: Report, received: Instant) {
        let older = std::mem::replace(&mut self.report, newer);
        if self.report.inventory.is_empty() {
            self.report.inventory = older.inventory;
        }
        self.report.ack |= older.ack;
        self.received = received;
    }
}

/// Operator actions on a node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOp {
    /// No new replicas; running ones stay.
    Cordon,
    /// Back to normal scheduling (also ends a drain).
    Uncordon,
    /// Move replicas off: replacements start elsewhere and become ready
    /// before the node's replicas stop, or the deadline forces it.
    Drain { deadline: std::time::Duration },
}

/// Operator actions on a node's warm cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmOp {
    /// Keep the model's weights resident on the node.
    Start,
    /// Drop them from the page cache (unless a replica there runs the model).
    Evict,
}

/// Where commands go: the fleet task while this coordinator leads, else
/// nowhere, with the leader's address when it is known.
#[derive(Clone, Debug)]
pub enum Route {
    Fleet(mpsc::Sender<Command>),
    Elsewhere { leader: Option<String> },
}

/// Cheap to clone; every method is one round trip to the fleet task.
#[derive(Clone)]
pub struct FleetHandle {
    pub(super) route: watch::Receiver<Route>,
    /// Several coordinators: the term the fleet task leads in.
    term: Option<std::sync::Arc<super::store::etcd::Fence>>,
}

macro_rules! ask {
    ($self:ident, $variant:ident { $($field:ident),* }) => {{
        let (reply, rx) = oneshot::channel();
        $self
            .sender()?
            .send(Command::$variant { $($field,)* reply })
            .await
            .map_err(|_| FleetError::Internal("the fleet task has stopped".into()))?;
        rx.await
            .map_err(|_| FleetError::Internal("the fleet task dropped the request".into()))?
    }};
}

impl FleetHandle {
    /// A handle that follows `route` (a coordinator that may lead or not).
    pub fn routed(route: watch::Receiver<Route>) -> FleetHandle {
        FleetHandle { route, term: None }
    }

    /// Like `routed`, and nothing reaches the fleet task once `term`'s
    /// deadline has passed, even before the election has stepped down (a
    /// leader waking from a pause answers what queued meanwhile with "no
    /// leader").
    pub fn routed_in_term(
        route: watch::Receiver<Route>,
        term: std::sync::Arc<super::store::etcd::Fence>,
    ) -> FleetHandle {
        FleetHandle {
            route,
            term: Some(term),
        }
    }

    /// The fleet task's inbox, or why there is none here.
    pub fn sender(&self) -> Result<mpsc::Sender<Command>, FleetError> {
        match &*self.route.borrow() {
            Route::Fleet(_) if self.term.as_ref().is_some_and(|t| !t.in_term()) => {
                Err(FleetError::NotLeader { leader: None })
            }
            Route::Fleet(tx) => Ok(tx.clone()),
            Route::Elsewhere { leader } => Err(FleetError::NotLeader {
                leader: leader.clone(),
            }),
        }
    }

    /// Sends a command that expects no reply; dropped where there is no fleet.
    async fn tell(&self, cmd: Command) {
        if let Ok(tx) = self.sender() {
            let _ = tx.send(cmd).await;
        }
    }

    pub async fn connect(
        &self,
        hello: Hello,
        address: String,
        outbox: mpsc::Sender<ToAgent>,
    ) -> Result<u64, FleetError> {
        let hello = Box::new(hello);
        ask!(
            self,
            Connect {
                hello,
                address,
                outbox
            }
        )
    }

    /// Reports are fire-and-forget: the session never waits on the fleet
    /// for an answer. A report joins the one still waiting in `slot` (see
    /// `ReportSlot`); only a report into an empty slot is a command, so a
    /// node never has more than one report queued for the fleet task.
    pub async fn report(&self, slot: &Arc<ReportSlot>, session: u64, node: String, report: Report) {
        if !slot.offer(report, Instant::now()) {
            self.metrics()
                .reports_superseded
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let told = match self.sender() {
            Ok(tx) => tx
                .send(Command::Report {
                    session,
                    node,
                    slot: slot.clone(),
                })
                .await
                .is_ok(),
            Err(_) => false,
        };
        if !told {
            // No fleet task here to take it: dropped, and the slot is free
            // for the next report to be told again.
            slot.take();
        }
    }

    /// The fleet task's measurements of itself (one set per process, kept
    /// across a change of leader so counters never go back).
    pub fn metrics(&self) -> &'static super::metrics::FleetMetrics {
        super::metrics::FleetMetrics::process()
    }

    /// Commands waiting for the fleet task, and the queue's capacity (0, 0
    /// where no fleet task runs here).
    pub fn queue(&self) -> (usize, usize) {
        match self.sender() {
            Ok(tx) => {
                let max = tx.max_capacity();
                (max - tx.capacity(), max)
            }
            Err(_) => (0, 0),
        }
    }

    pub async fn disconnect(&self, session: u64, node: String, reason: String) {
        self.tell(Command::Disconnect {
            session,
            node,
            reason,
        })
        .await;
    }

    pub async fn apply_model(&self, spec_toml: String) -> Result<ModelView, FleetError> {
        ask!(self, ApplyModel { spec_toml })
    }

    pub async fn delete_model(&self, name: String) -> Result<u32, FleetError> {
        ask!(self, DeleteModel { name })
    }

    pub async fn wake_model(&self, name: String) -> Result<ModelView, FleetError> {
        ask!(self, WakeModel { name })
    }

    pub async fn explain(&self, name: String) -> Result<crate::api::Explanation, FleetError> {
        ask!(self, Explain { name })
    }

    pub async fn list_models(&self) -> Result<Vec<ModelView>, FleetError> {
        ask!(self, ListModels {})
    }

    pub async fn get_model(&self, name: String) -> Result<ModelView, FleetError> {
        ask!(self, GetModel { name })
    }

    pub async fn scale_model(
        &self,
        name: String,
        replicas: Option<u32>,
    ) -> Result<ModelView, FleetError> {
        ask!(self, ScaleModel { name, replicas })
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeView>, FleetError> {
        ask!(self, ListNodes {})
    }

    pub async fn get_node(&self, name: String) -> Result<NodeView, FleetError> {
        ask!(self, GetNode { name })
    }

    pub async fn node_operation(&self, name: String, op: NodeOp) -> Result<NodeView, FleetError> {
        ask!(self, NodeOperation { name, op })
    }

    pub async fn mark_gpu_healthy(
        &self,
        node: String,
        index: u32,
    ) -> Result<Vec<GpuView>, FleetError> {
        ask!(self, MarkGpuHealthy { node, index })
    }

    pub async fn list_gpus(&self, node: Option<String>) -> Result<Vec<GpuView>, FleetError> {
        ask!(self, ListGpus { node })
    }

    pub async fn list_replicas(
        &self,
        model: Option<String>,
        node: Option<String>,
    ) -> Result<Vec<ReplicaView>, FleetError> {
        ask!(self, ListReplicas { model, node })
    }

    /// The node and the asked part of a replica's server log.
    pub async fn replica_logs(
        &self,
        id: String,
        query: LogQuery,
    ) -> Result<(String, LogSlice), FleetError> {
        ask!(self, ReplicaLogs { id, query })
    }

    pub async fn logs_reply(&self, session: u64, reply: LogsReply) {
        self.tell(Command::LogsReply { session, reply }).await;
    }

    pub async fn list_warm(&self, node: Option<String>) -> Result<Vec<WarmView>, FleetError> {
        ask!(self, ListWarm { node })
    }

    pub async fn warm(
        &self,
        model: String,
        node: String,
        op: WarmOp,
    ) -> Result<Vec<WarmView>, FleetError> {
        ask!(self, Warm { model, node, op })
    }

    pub async fn list_events(
        &self,
        model: Option<String>,
        node: Option<String>,
        limit: usize,
    ) -> Result<Vec<Event>, FleetError> {
        ask!(self, ListEvents { model, node, limit })
    }

    pub async fn subscribe_events(&self) -> Result<broadcast::Receiver<Event>, FleetError> {
        ask!(self, SubscribeEvents {})
    }

    pub async fn backup(&self) -> Result<Vec<u8>, FleetError> {
        ask!(self, Backup {})
    }

    pub async fn endpoints(
        &self,
    ) -> Result<BTreeMap<String, Vec<super::fleet::Endpoint>>, FleetError> {
        ask!(self, Endpoints {})
    }

    /// What `/metrics` counts of the fleet: nodes, GPUs, models and
    /// replicas by state, and replica reports not believed.
    pub async fn counts(&self) -> Result<super::views::FleetCounts, FleetError> {
        ask!(self, Counts {})
    }

    pub async fn gateway_connect(
        &self,
    ) -> Result<(u64, watch::Receiver<RoutingTable>), FleetError> {
        ask!(self, GatewayConnect {})
    }

    /// Gateway reports are fire-and-forget, like agents' reports.
    pub async fn gateway_report(&self, link: u64, report: GatewayReport) {
        let report = Box::new(report);
        self.tell(Command::GatewayReport { link, report }).await;
    }

    pub async fn gateway_disconnect(&self, link: u64) {
        self.tell(Command::GatewayDisconnect { link }).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::coordinator::store::etcd::Fence;

    #[test]
    fn a_term_past_its_deadline_reaches_no_fleet_task() {
        let (tx, _rx) = mpsc::channel(1);
        let (_route_tx, route) = watch::channel(Route::Fleet(tx));
        let fence = Arc::new(Fence::default());
        let handle = FleetHandle::routed_in_term(route, fence.clone());
        fence.hold(7);
        fence.renewed(Instant::now() + Duration::from_secs(60));
        assert!(handle.sender().is_ok());
        // A process that slept past its deadline: the election has not
        // stepped it down yet, the route still names the fleet task.
        fence.renewed(Instant::now() - Duration::from_millis(1));
        assert_eq!(
            handle.sender().err(),
            Some(FleetError::NotLeader { leader: None })
        );
        fence.renewed(Instant::now() + Duration::from_secs(60));
        fence.hold(0);
        assert!(handle.sender().is_err(), "no epoch held");
    }
}
