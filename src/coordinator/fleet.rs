//! The one task that owns the fleet's state (`state.rs`): its loop of ticks
//! and commands, and the command handlers. gRPC and HTTP handlers send it
//! commands and await the reply; nothing else touches the state, so no locks
//! are shared.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::api::{Event, ModelView};
use crate::config::ModelSpec;
use crate::domain::event::Applied;
use crate::domain::{
    unix_ms_now, EventKind, Hello, LogQuery, LogSlice, LogsRequest, Report, ToAgent,
};

pub use super::handle::{Command, FleetError, FleetHandle, NodeOp, WarmOp};
use super::metrics::Phase;
use super::nodes::{Node, Session};
use super::scrapes::{scrape_changes, ScrapeMark};
use super::state::PendingLogs;
pub use super::state::{
    Endpoint, Fleet, FleetSettings, Model, PlannedReplica, Quarantined, INVALID_STORED_SPEC,
};
use super::store::{ModelRecord, NodeFlags, Store};

/// How often each model's demand history is saved (a share of the models
/// each tick: `Fleet::save_demand`).
pub(super) const DEMAND_SAVE_EVERY: Duration = Duration::from_secs(60);

/// The fleet task's command queue: sessions wait to hand in a report when
/// it is full.
const COMMAND_QUEUE: usize = 1024;

/// What woke the fleet task.
enum Wake {
    Command(Command),
    Routes,
    Tick,
    EarlyTick,
    /// Whoever could stop the task let it go: it runs until its inbox closes.
    Detached,
}

/// Ticks run ahead of the clock (`Fleet::tick_soon`) at most this often, so
/// a fleet full of changing reports does not tick without pause. A surge
/// takes two ticks to decide (one sees it, one confirms it on a newer
/// measurement), so this gap is part of every step → decision time.
pub(super) const EARLY_TICK_GAP: Duration = Duration::from_millis(100);

/// Gateways hear of load changes in reports at most this often (a replica
/// turning ready or going away is published at once): a routing table is
/// built from the whole fleet, too much work to do per report.
const ROUTES_EVERY: Duration = Duration::from_millis(100);

/// How long reports queued during a long phase wait at most before the
/// phase lets them in (where it can: `Fleet::take_reports_due`).
pub(super) const REPORTS_WAIT: Duration = Duration::from_millis(4);

/// How long an agent may take to answer a log request.
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet task, on a thread and a runtime of its own. Among the
/// runtime's workers it would wait behind the sessions' tasks (thousands of
/// agents' reports to decode every second) and be preempted with the
/// workers it shares, while every report waits for it. A thread of its own,
/// asleep while it has nothing to do, is run by the kernel as soon as a
/// command wakes it. (docs/scale.md, "The fleet task's thread".)
///
/// Awaiting it waits for the task to end; dropping it leaves the task
/// running until its inbox closes, as a detached tokio task would.
pub struct FleetTask {
    stop: Option<oneshot::Sender<()>>,
    ended: tokio::task::JoinHandle<()>,
}

impl FleetTask {
    fn start(fleet: Fleet, rx: mpsc::Receiver<Command>) -> std::io::Result<FleetTask> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || {
                // The fleet, and its store with it, is dropped (closed
                // cleanly) before the task counts as ended.
                runtime.block_on(fleet.run(rx, Some(stopped)));
                drop(runtime);
                let _ = ended_tx.send(());
            })?;
        let ended = tokio::spawn(async move {
            // The thread drops the sender without sending only by unwinding.
            if ended_rx.await.is_err() {
                panic!("the fleet task panicked");
            }
        });
        Ok(FleetTask {
            stop: Some(stop),
            ended,
        })
    }

    /// Stops the task at its next wait (a tick is finished, not cut; what
    /// it has not saved yet is saved, and its store closed) and returns once
    /// it has stopped.
    pub async fn stop(self) {
        let (ended, stop) = self.into_parts();
        stop.stop();
        let _ = ended.await;
    }

    /// What ends when the task ends (with a panic when it panicked), and
    /// what stops it.
    pub fn into_parts(mut self) -> (tokio::task::JoinHandle<()>, FleetStop) {
        let stop = self.stop.take().expect("a fleet task is stopped once");
        (self.ended, FleetStop(stop))
    }
}

/// Stops a fleet task (`FleetTask::stop`), without waiting for it.
pub struct FleetStop(oneshot::Sender<()>);

impl FleetStop {
    pub fn stop(self) {
        let _ = self.0.send(());
    }
}

impl Fleet {
    /// Loads the desired state from the store and starts the fleet task.
    pub fn spawn(
        settings: FleetSettings,
        store: Box<dyn Store>,
    ) -> Result<(FleetHandle, FleetTask), FleetError> {
        Fleet::spawn_leading(settings, store, 0)
    }

    /// Like `spawn`, for a leader of several coordinators: every Assignment
    /// carries `epoch`, so agents refuse a deposed leader's.
    pub fn spawn_leading(
        settings: FleetSettings,
        store: Box<dyn Store>,
        epoch: u64,
    ) -> Result<(FleetHandle, FleetTask), FleetError> {
        let mut fleet = Fleet::new(settings, store)?;
        fleet.epoch = epoch;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = FleetTask::start(fleet, rx).map_err(|e| {
            FleetError::Internal(format!("cannot start the fleet task's thread: {e}"))
        })?;
        let (_, route) = tokio::sync::watch::channel(super::handle::Route::Fleet(tx));
        Ok((FleetHandle::routed(route), task))
    }

    /// The loop; it ends when `stop` says so or every sender of `rx` is
    /// gone (a dropped `stop` stops nothing).
    async fn run(mut self, rx: mpsc::Receiver<Command>, mut stop: Option<oneshot::Receiver<()>>) {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.inbox = Some(rx);
        loop {
            while let Some(cmd) = self.held.pop_front() {
                self.handle(cmd);
            }
            let early = self.tick_at.map(tokio::time::Instant::from_std);
            let routes_due = self
                .routes_stale
                .then(|| tokio::time::Instant::from_std(self.routes_published + ROUTES_EVERY));
            let Some(rx) = self.inbox.as_mut() else {
                break;
            };
            let wake = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Wake::Command(cmd),
                    None => break,
                },
                _ = tokio::time::sleep_until(routes_due.unwrap_or_else(tokio::time::Instant::now)), if routes_due.is_some() => Wake::Routes,
                _ = tick.tick() => Wake::Tick,
                _ = tokio::time::sleep_until(early.unwrap_or_else(tokio::time::Instant::now)), if early.is_some() => Wake::EarlyTick,
                told = async { stop.as_mut().expect("checked").await }, if stop.is_some() => match told {
                    Ok(()) => break,
                    Err(_) => Wake::Detached,
                },
            };
            match wake {
                Wake::Detached => stop = None,
                Wake::Command(cmd) => self.handle(cmd),
                Wake::Routes => self.publish_routes(),
                Wake::Tick => self.run_tick(),
                Wake::EarlyTick => {
                    self.run_tick();
                    // The clock's next tick is a full period after this one.
                    tick.reset();
                }
            }
        }
        self.flush_new_nodes();
        self.flush_events();
    }

    /// Between a tick's phases: handles the reports (and log replies,
    /// gateway reports) queued meanwhile, so that none waits behind a whole
    /// tick. Each phase reads the fleet afresh, so a report taken in
    /// between is seen by the phases after it as if it had come before the
    /// tick. Anything else (an operator's request, an agent connecting or
    /// leaving) is held until the tick ends and handled then, in order:
    /// those change the plan or answer from it, and see it whole.
    pub(super) fn take_reports(&mut self, clock: &mut super::metrics::PhaseClock) {
        let Some(mut rx) = self.inbox.take() else {
            return;
        };
        // What is queued now, not what keeps arriving: the tick goes on.
        for _ in 0..COMMAND_QUEUE {
            let Ok(cmd) = rx.try_recv() else {
                break;
            };
            match cmd {
                Command::Report { .. }
                | Command::LogsReply { .. }
                | Command::GatewayReport { .. } => self.handle(cmd),
                held => self.held.push_back(held),
            }
        }
        self.inbox = Some(rx);
        clock.done(Phase::Reports);
    }

    /// Within a phase, between two pieces of its work that allow it (see
    /// each caller): takes the queued reports in when the last were taken
    /// `REPORTS_WAIT` ago or more, so a long phase does not hold them all
    /// its length.
    pub(super) fn take_reports_due(
        &mut self,
        clock: &mut super::metrics::PhaseClock,
        phase: Phase,
    ) {
        if clock.since_reports() < self.reports_wait {
            return;
        }
        clock.done(phase);
        self.take_reports(clock);
    }

    fn run_tick(&mut self) {
        let now = Instant::now();
        self.notice_pause(now);
        self.tick_at = None;
        self.last_tick = now;
        self.expire_log_requests(now);
        let mut clock = self.tick(now);
        self.take_reports(&mut clock);
        self.publish_routes();
        clock.done(Phase::Routes);
        self.flush_new_nodes();
        self.flush_events();
        // Last, and durable: it makes the tick's events (written without an
        // fsync) durable too, so a crash after the tick leaves nothing for
        // the next start to repair.
        self.save_demand(&mut clock);
        clock.done(Phase::Store);
        clock.finish();
    }

    /// A tick far later than due means the coordinator itself did not run
    /// (SIGSTOP, a frozen VM, a stalled host): the agents' silence meanwhile
    /// says nothing about them. Their last reports are moved forward by the
    /// time lost, so no node is judged suspect or lost for it, and the
    /// reconnect grace starts again, as after a restart.
    pub(super) fn notice_pause(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_tick);
        let threshold = (self.settings.tick * 3).max(self.settings.suspect_after / 2);
        if gap <= threshold {
            return;
        }
        let lost = gap.saturating_sub(self.settings.tick);
        for node in self.nodes.values_mut() {
            node.last_seen = (node.last_seen + lost).min(now);
        }
        self.started = now;
        self.last_tick = now;
        self.record(EventKind::CoordinatorPaused {
            gap_s: gap.as_secs(),
        });
    }

    /// Asks for a tick at `at` (or as soon after the last one as
    /// `EARLY_TICK_GAP` allows) instead of waiting for the clock: for news
    /// that a decision should not wait a tick for.
    pub(super) fn tick_soon(&mut self, at: Instant) {
        let at = at.max(self.last_tick + EARLY_TICK_GAP);
        self.tick_at = Some(self.tick_at.map_or(at, |t| t.min(at)));
    }

    /// Saves a share of the models' demand histories each tick, in turn, so
    /// that each is saved about once per `DEMAND_SAVE_EVERY` (losing the
    /// last minute in a crash costs the forecast nothing) and no tick saves
    /// them all: 500 models' histories in one go, one durable write each,
    /// held the fleet task, and every report queued for it, for most of a
    /// second. The share is one durable write (a write without an fsync of
    /// its own would leave the store to be repaired at the next start, and
    /// a store damaged elsewhere could then not be opened at all).
    pub(super) fn save_demand(&mut self, clock: &mut super::metrics::PhaseClock) {
        let n = self.models.len();
        if n == 0 {
            return;
        }
        let ticks = DEMAND_SAVE_EVERY.as_secs_f64() / self.settings.tick.as_secs_f64().max(1e-3);
        let share = ((n as f64 / ticks.max(1.0)).ceil() as usize).clamp(1, n);
        use std::ops::Bound::{Excluded, Unbounded};
        let after: Box<dyn Iterator<Item = (&String, &Model)>> = match &self.demand_saved_last {
            Some(last) => Box::new(
                self.models
                    .range::<str, _>((Excluded(last.as_str()), Unbounded)),
            ),
            None => Box::new(std::iter::empty()),
        };
        // Past the last model, round to the first again.
        let batch: Vec<String> = after
            .chain(self.models.iter())
            .take(share)
            .map(|(name, _)| name.clone())
            .collect();
        let histories: Vec<(&str, &crate::coordinator::predict::DemandHistory)> = batch
            .iter()
            .filter_map(|name| Some((name.as_str(), &self.models.get(name)?.scaler.demand)))
            .collect();
        if let Err(e) = self.store.put_many_demand(&histories) {
            tracing::warn!(error = %e, "{} models' demand histories not saved", batch.len());
        }
        self.demand_saved_last = batch.last().cloned();
        self.take_reports_due(clock, Phase::Store);
    }

    /// Saves the nodes first seen since the last tick, in one write. Those
    /// flagged meanwhile (cordon, warm) were saved by that already.
    pub(super) fn flush_new_nodes(&mut self) {
        if self.unsaved_nodes.is_empty() {
            return;
        }
        let nodes: Vec<(String, NodeFlags)> = std::mem::take(&mut self.unsaved_nodes)
            .into_iter()
            .filter_map(|n| self.node_flags.get(&n).map(|f| (n, f.clone())))
            .collect();
        if let Err(e) = self.store.put_many_node_flags(&nodes) {
            tracing::warn!(error = %e, "{} new nodes not saved", nodes.len());
        }
    }

    pub(super) fn handle(&mut self, cmd: Command) {
        self.handle_command(cmd);
        self.refresh_view();
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = Instant::now();
        // What an operator (or a new agent) asks for is acted on at once.
        let acts = matches!(
            cmd,
            Command::Connect { .. }
                | Command::ApplyModel { .. }
                | Command::DeleteModel { .. }
                | Command::WakeModel { .. }
                | Command::ScaleModel { .. }
                | Command::NodeOperation { .. }
                | Command::MarkGpuHealthy { .. }
                | Command::Warm { .. }
        );
        if acts {
            self.tick_soon(now);
        }
        let routes_move = acts || matches!(cmd, Command::Disconnect { .. });
        match cmd {
            Command::Connect {
                hello,
                address,
                outbox,
                reply,
            } => {
                let _ = reply.send(self.connect(*hello, address, outbox, now));
            }
            Command::Report {
                session,
                node,
                slot,
            } => {
                let Some(super::handle::PendingReport { report, received }) = slot.take() else {
                    return;
                };
                // The node spoke when its session read the report, however
                // long the fleet task took to get to it.
                if self.report(session, &node, report, received.min(now)) {
                    self.publish_routes();
                }
                super::metrics::FleetMetrics::process()
                    .report
                    .observe(received.elapsed());
                super::metrics::FleetMetrics::process()
                    .reports
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Command::Disconnect {
                session,
                node,
                reason,
            } => self.disconnect(session, &node, &reason),
            Command::ApplyModel { spec_toml, reply } => {
                let _ = reply.send(self.apply_model(spec_toml));
            }
            Command::DeleteModel { name, reply } => {
                let _ = reply.send(self.delete_model(&name));
            }
            Command::WakeModel { name, reply } => {
                let r = self.wake(&name, now).map(|()| self.model_view(&name, true));
                let _ = reply.send(r);
            }
            Command::Explain { name, reply } => {
                let _ = reply.send(self.explain(&name));
            }
            Command::ListModels { reply } => {
                let _ = reply.send(Ok(self.model_views()));
            }
            Command::GetModel { name, reply } => {
                let r = if self.models.contains_key(&name) || self.quarantined.contains_key(&name) {
                    Ok(self.model_view(&name, true))
                } else {
                    Err(self.model_not_found(&name))
                };
                let _ = reply.send(r);
            }
            Command::ScaleModel {
                name,
                replicas,
                reply,
            } => {
                let _ = reply.send(self.scale_model(&name, replicas));
            }
            Command::ListNodes { reply } => {
                let _ = reply.send(Ok(self
                    .nodes
                    .values()
                    .map(|n| n.view(self.node_state(n, now)))
                    .collect()));
            }
            Command::GetNode { name, reply } => {
                let r = self
                    .nodes
                    .get(&name)
                    .map(|n| n.view(self.node_state(n, now)))
                    .ok_or_else(|| self.node_not_found(&name));
                let _ = reply.send(r);
            }
            Command::NodeOperation { name, op, reply } => {
                let _ = reply.send(self.node_operation(&name, op, now));
            }
            Command::MarkGpuHealthy { node, index, reply } => {
                let _ = reply.send(self.mark_gpu_healthy(&node, index));
            }
            Command::ListGpus { node, reply } => {
                let r = match node {
                    Some(name) => self
                        .nodes
                        .get(&name)
                        .map(|n| n.gpu_views())
                        .ok_or_else(|| self.node_not_found(&name)),
                    None => Ok(self.nodes.values().flat_map(|n| n.gpu_views()).collect()),
                };
                let _ = reply.send(r);
            }
            Command::ListReplicas { model, node, reply } => {
                let _ = reply.send(self.list_replicas(model.as_deref(), node.as_deref()));
            }
            Command::ReplicaLogs { id, query, reply } => self.request_logs(id, query, reply, now),
            Command::LogsReply { session, reply } => self.logs_reply(session, reply),
            Command::ListWarm { node, reply } => {
                let _ = reply.send(self.list_warm(node.as_deref()));
            }
            Command::Warm {
                model,
                node,
                op,
                reply,
            } => {
                let _ = reply.send(self.warm_op(&model, &node, op));
            }
            Command::ListEvents {
                model,
                node,
                limit,
                reply,
            } => {
                let matching: Vec<Event> = self
                    .events
                    .iter()
                    .filter(|e| model.as_deref().is_none_or(|m| e.model == m))
                    .filter(|e| node.as_deref().is_none_or(|n| e.node == n))
                    .cloned()
                    .collect();
                let skip = matching.len().saturating_sub(limit);
                let _ = reply.send(Ok(matching.into_iter().skip(skip).collect()));
            }
            Command::SubscribeEvents { reply } => {
                let _ = reply.send(Ok(self.event_tx.subscribe()));
            }
            Command::Backup { reply } => {
                let copy = self.store.backup().map_err(|e| {
                    tracing::warn!("online backup failed: {e}");
                    FleetError::Unavailable(e.to_string())
                });
                let _ = reply.send(copy);
            }
            Command::Endpoints { reply } => {
                let _ = reply.send(Ok(self.endpoints()));
            }
            Command::Counts { reply } => {
                let counts = self.counts(now);
                #[cfg(test)]
                assert_eq!(
                    counts,
                    self.counts_from_views(now),
                    "counts and views differ"
                );
                let _ = reply.send(Ok(counts));
            }
            Command::GatewayConnect { reply } => {
                let _ = reply.send(Ok(self.gateway_connected()));
            }
            Command::GatewayReport { link, report } => {
                self.gateway_report(link, *report, now);
                self.routes_stale = true;
            }
            Command::GatewayDisconnect { link } => self.gateway_disconnected(link),
        }
        // A model applied or deleted, a node gone: gateways hear of it
        // now, not at the next tick. Reads change nothing.
        if routes_move {
            self.publish_routes();
        }
    }

    fn request_logs(
        &mut self,
        id: String,
        query: LogQuery,
        reply: oneshot::Sender<Result<(String, LogSlice), FleetError>>,
        now: Instant,
    ) {
        // The node it is assigned to, never one that merely claims it.
        let node = self.plan.get(&id).map(|p| p.node.clone()).or_else(|| {
            self.nodes
                .values()
                .find(|n| n.replicas.iter().any(|r| r.id == id))
                .map(|n| n.name.clone())
        });
        let Some(node) = node else {
            let _ = reply.send(Err(FleetError::NotFound(format!(
                "replica {} not found; `gpufleet replica ls` lists them",
                crate::api::quoted(&id)
            ))));
            return;
        };
        let Some(session) = self.nodes.get(&node).and_then(|n| n.session.as_ref()) else {
            let _ = reply.send(Err(FleetError::Unavailable(format!(
                "node {node} of replica `{id}` is not connected; its log stays on the node under the agent's state dir"
            ))));
            return;
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let request = ToAgent::Logs(LogsRequest {
            request_id,
            replica_id: id,
            query,
        });
        if session.outbox.try_send(request).is_err() {
            let _ = reply.send(Err(FleetError::Unavailable(format!(
                "node {node} is busy; try again"
            ))));
            return;
        }
        self.pending_logs.insert(
            request_id,
            PendingLogs {
                asked: now,
                session: session.id,
                node,
                reply,
            },
        );
    }

    fn mark_gpu_healthy(
        &mut self,
        node: &str,
        index: u32,
    ) -> Result<Vec<crate::api::GpuView>, FleetError> {
        let Some(n) = self.nodes.get(node) else {
            return Err(self.node_not_found(node));
        };
        if !n.gpus.iter().any(|g| g.index == index) {
            let known: Vec<String> = n.gpus.iter().map(|g| g.index.to_string()).collect();
            return Err(FleetError::NotFound(format!(
                "node {node} has no GPU {index}; its GPUs: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let Some(session) = &n.session else {
            return Err(FleetError::Unavailable(format!(
                "node {node} is not connected; try again when it is"
            )));
        };
        if session
            .outbox
            .try_send(ToAgent::MarkGpuHealthy(index))
            .is_err()
        {
            return Err(FleetError::Unavailable(format!(
                "node {node} is busy; try again"
            )));
        }
        let views = n.gpu_views();
        self.record(EventKind::GpuMarkedHealthy {
            node: node.to_string(),
            gpu: index,
        });
        Ok(views)
    }

    fn logs_reply(&mut self, session: u64, reply: crate::domain::LogsReply) {
        let Some(p) = self.pending_logs.remove(&reply.request_id) else {
            return;
        };
        if p.session != session {
            return;
        }
        let result = if reply.error.is_empty() {
            Ok((p.node, reply.slice))
        } else {
            Err(FleetError::NotFound(reply.error))
        };
        let _ = p.reply.send(result);
    }

    /// Fails log requests whose agent never answered.
    pub(super) fn expire_log_requests(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending_logs
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.asked) > LOGS_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending_logs.remove(&id) {
                let _ = p.reply.send(Err(FleetError::Unavailable(format!(
                    "node {} did not send the log within {}s",
                    p.node,
                    LOGS_TIMEOUT.as_secs()
                ))));
            }
        }
    }

    pub(super) fn node_state(&self, n: &Node, now: Instant) -> crate::api::NodeState {
        n.state(now, self.settings.suspect_after, self.settings.lost_after)
    }

    pub(super) fn model_not_found(&self, name: &str) -> FleetError {
        if let Some(q) = self.quarantined.get(name) {
            return FleetError::InvalidArgument(format!(
                "model {} is {INVALID_STORED_SPEC} ({}); apply its spec again with `gpufleet model apply -f FILE` first",
                crate::api::quoted(name),
                q.reason
            ));
        }
        let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
        FleetError::NotFound(if known.is_empty() {
            format!(
                "model {} not found; no models are applied",
                crate::api::quoted(name)
            )
        } else {
            format!(
                "model {} not found; known models: {}",
                crate::api::quoted(name),
                known.join(", ")
            )
        })
    }

    pub(super) fn node_not_found(&self, name: &str) -> FleetError {
        let known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
        FleetError::NotFound(if known.is_empty() {
            format!(
                "node {} not found; no agent has connected yet",
                crate::api::quoted(name)
            )
        } else {
            format!(
                "node {} not found; known nodes: {}",
                crate::api::quoted(name),
                known.join(", ")
            )
        })
    }

    pub(super) fn connect(
        &mut self,
        hello: Hello,
        address: String,
        outbox: mpsc::Sender<ToAgent>,
        now: Instant,
    ) -> Result<u64, FleetError> {
        let name = hello.node_name.clone();
        if let Some(existing) = self.nodes.get(&name) {
            if existing.has_live_session(now, self.settings.suspect_after) {
                let holder = existing
                    .session
                    .as_ref()
                    .map(|s| s.address.clone())
                    .unwrap_or_default();
                let refused = EventKind::NodeRefused {
                    node: name,
                    holder,
                    address,
                };
                let message = refused.message();
                self.record(refused);
                return Err(FleetError::AlreadyExists(message));
            }
        }
        let id = self.next_session;
        self.next_session += 1;
        if !self.node_flags.contains_key(&name) {
            // Remembered, so that a restarted coordinator knows to wait for
            // it: saved with the other newcomers at the next tick, since a
            // durable write each would hold up thousands of agents joining.
            self.node_flags.insert(name.clone(), NodeFlags::default());
            self.unsaved_nodes.push(name.clone());
        }
        let flags = self.node_flags.get(&name).cloned().unwrap_or_default();
        let node = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| Node::from_hello(&hello, now, flags));
        node.update_from_hello(&hello, now);
        node.session = Some(Session {
            id,
            outbox,
            address: address.clone(),
            agent_instance: hello.agent_instance.clone(),
            connected_unix_ms: unix_ms_now(),
        });
        // A new session has received nothing yet: the next tick sends the
        // node's full assignment.
        node.sent = None;
        node.announced = crate::api::NodeState::Ready;
        self.touch_node(&name);
        self.assign_stale.insert(name.clone());
        let gpus = hello.gpus.len();
        let replicas = hello.replicas.len();
        self.screen_claims(&name);
        self.adopt_reported_replicas(&name, now);
        let was_waiting = self.reconnect_wait(now).is_some();
        self.awaiting_agents.remove(&name);
        if was_waiting && self.awaiting_agents.is_empty() {
            self.record(EventKind::ReconnectDone);
            self.tick_soon(now);
        }
        self.record(EventKind::NodeConnected {
            node: name,
            agent_version: hello.agent_version,
            address,
            gpus,
            replicas,
        });
        Ok(id)
    }

    /// Takes a node's report in; true when a replica changed state (what
    /// gateways route to must be published now).
    pub(super) fn report(
        &mut self,
        session: u64,
        name: &str,
        report: Report,
        now: Instant,
    ) -> bool {
        let Some(node) = self.nodes.get_mut(name) else {
            return false;
        };
        let Some(outbox) = node
            .session
            .as_ref()
            .filter(|s| s.id == session)
            .map(|s| s.outbox.clone())
        else {
            // A report from a replaced session: its node has moved on.
            return false;
        };
        // Per report, the node is looked up by name once (at 10,000 nodes
        // the lookups were most of a report's cost): the work below goes
        // through `node` and the fleet's other fields, and asks the rest
        // only when the report brings news for it.
        if !self.view_stale.contains(name) {
            self.view_stale.insert(name.to_string());
        }
        // Load generators ask when the report is handled; agents never do.
        let ack = report.ack.then_some(report.seq);
        // Live load feeds the routing table: published within ROUTES_EVERY.
        self.routes_stale |= !report.replicas.is_empty() || !node.replicas.is_empty();
        // A node back from lost on the same session (a partition shorter
        // than the keepalive) never says Hello again: take its replicas back
        // into the plan as a reconnect would, so the surplus rule, not the
        // assignment, decides which copy stops.
        let was_lost = node.liveness(now, self.settings.suspect_after, self.settings.lost_after)
            == crate::api::NodeState::Lost;
        node.last_seen = now;
        node.last_seen_unix_ms = unix_ms_now();
        node.samples = report.gpus;
        node.host_sample = report.host;
        // A load step or a replica's change of state is acted on now, not
        // at the next tick (the agent reports such news at once too).
        let moved = crate::domain::replicas_moved(&node.replicas, &report.replicas);
        let scraped = std::mem::take(&mut node.scraped);
        node.scraped = report
            .replicas
            .iter()
            .map(|r| {
                let mark = ScrapeMark::next(scraped.get(&r.id), &r.signals, now);
                (r.id.clone(), mark)
            })
            .collect();
        let scrape_changes = scrape_changes(&node.replicas, &report.replicas);
        node.replicas = report.replicas;
        // Only a fill that turned resident or failed since the last report
        // can have ended.
        let fill_news = report
            .warm
            .iter()
            .any(|a| crate::domain::turned_final(&node.warm, a));
        let (node, asked) = if fill_news {
            let (asked, _) = self.warm_specs(name);
            let Some(node) = self.nodes.get_mut(name) else {
                return false;
            };
            (node, asked)
        } else {
            (node, Vec::new())
        };
        let ended: Vec<EventKind> = crate::domain::fills_ended(&node.warm, &report.warm, &asked)
            .map(|w| {
                let (model, node, path) = (w.model.clone(), name.to_string(), w.path.clone());
                if w.state == "resident" {
                    EventKind::WarmResident {
                        model,
                        node,
                        path,
                        bytes: w.total_bytes,
                    }
                } else {
                    EventKind::WarmFailed {
                        model,
                        node,
                        path,
                        error: w.error.clone(),
                    }
                }
            })
            .collect();
        node.warm = report.warm;
        if !report.inventory.is_empty() {
            node.gpus = report.inventory;
        }
        // Claims to screen: a replica the plan has on another node, or
        // refused claims to forget once the node no longer makes them.
        let plan = &self.plan;
        let claims = !node.refused_claims.is_empty()
            || node
                .replicas
                .iter()
                .any(|r| plan.get(&r.id).is_some_and(|p| p.node != name));
        if claims {
            self.screen_claims(name);
        }
        for c in scrape_changes {
            self.record(EventKind::ScrapeHealth {
                model: c.model,
                node: name.to_string(),
                replica: c.replica,
                message: c.message,
            });
        }
        if was_lost {
            self.adopt_reported_replicas(name, now);
        }
        for what in ended {
            self.record(what);
        }
        if moved || self.awaiting_measurement {
            self.tick_soon(now);
        }
        if let Some(seq) = ack {
            // A full outbox drops the ack: the generator counts it as lost.
            let _ = outbox.try_send(ToAgent::ReportAck(seq));
        }
        moved
    }

    fn disconnect(&mut self, session: u64, name: &str, reason: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        if node.session.as_ref().map(|s| s.id) != Some(session) {
            return;
        }
        node.session = None;
        node.sent = None;
        self.touch_node(name);
        self.record(EventKind::NodeDisconnected {
            node: name.to_string(),
            reason: reason.to_string(),
        });
    }

    pub(super) fn apply_model(&mut self, spec_toml: String) -> Result<ModelView, FleetError> {
        let spec =
            ModelSpec::parse(&spec_toml).map_err(|e| FleetError::InvalidArgument(e.to_string()))?;
        // Agents refuse these too, whatever this side lets through.
        if let Some(refused) = crate::security::env_policy::refused(
            spec.server.env.keys().map(String::as_str),
            &self.settings.allowed_env,
        ) {
            return Err(FleetError::InvalidArgument(format!(
                "model `{}`: server.{}, and on each agent that should run it",
                spec.name,
                refused.message("the coordinator config")
            )));
        }
        let now_ms = unix_ms_now();
        let name = spec.name.clone();
        let healed = self.quarantined.contains_key(&name);
        let previous = self.models.get(&name);
        if let Some(prev) = previous {
            if prev.record.spec_toml == spec_toml {
                return Ok(self.model_view(&name, true));
            }
        }
        let record = ModelRecord {
            name: name.clone(),
            spec_toml,
            created_unix_ms: previous.map(|p| p.record.created_unix_ms).unwrap_or(now_ms),
            updated_unix_ms: now_ms,
            pinned_replicas: previous.and_then(|p| p.record.pinned_replicas),
        };
        self.store
            .put_model(&record)
            .map_err(|e| FleetError::Internal(format!("model `{name}` not applied: {e}")))?;
        let how = if healed {
            Applied::Healed
        } else if previous.is_some() {
            Applied::Updated
        } else {
            Applied::New
        };
        self.quarantined.remove(&name);
        // Its spec is in every assignment of its replicas and warm lists.
        self.assign_all = true;
        // An update keeps the model's scaling state and history.
        let model = match self.models.remove(&name) {
            Some(mut m) => {
                m.record = record;
                m.spec_hash = spec.spec_hash();
                m.spec = spec;
                m
            }
            None => Model::new(record, spec),
        };
        self.models.insert(name.clone(), model);
        self.record(EventKind::ModelApplied {
            model: name.clone(),
            how,
        });
        Ok(self.model_view(&name, true))
    }

    fn delete_model(&mut self, name: &str) -> Result<u32, FleetError> {
        if !self.models.contains_key(name) && !self.quarantined.contains_key(name) {
            return Err(self.model_not_found(name));
        }
        self.store
            .delete_model(name)
            .map_err(|e| FleetError::Internal(format!("model `{name}` not deleted: {e}")))?;
        self.models.remove(name);
        self.quarantined.remove(name);
        self.assign_all = true;
        if let Err(e) = self.store.delete_demand(name) {
            tracing::warn!(model = %name, error = %e, "demand history not deleted");
        }
        let before = self.plan.len();
        self.plan.retain(|r| r.model != name);
        let stopping = (before - self.plan.len()) as u32;
        self.record(EventKind::ModelDeleted {
            model: name.to_string(),
            stopping,
        });
        Ok(stopping)
    }

    pub(super) fn scale_model(
        &mut self,
        name: &str,
        replicas: Option<u32>,
    ) -> Result<ModelView, FleetError> {
        let Some(model) = self.models.get_mut(name) else {
            return Err(self.model_not_found(name));
        };
        if let Some(n) = replicas {
            if n > crate::coordinator::MAX_REPLICAS {
                return Err(FleetError::InvalidArgument(format!(
                    "--replicas {n} is out of range; allowed: 0..={}",
                    crate::coordinator::MAX_REPLICAS
                )));
            }
        }
        let mut record = model.record.clone();
        record.pinned_replicas = replicas;
        record.updated_unix_ms = unix_ms_now();
        self.store
            .put_model(&record)
            .map_err(|e| FleetError::Internal(format!("scale of `{name}` not saved: {e}")))?;
        model.record = record;
        self.record(EventKind::ModelPinned {
            model: name.to_string(),
            replicas,
        });
        Ok(self.model_view(name, true))
    }
}
