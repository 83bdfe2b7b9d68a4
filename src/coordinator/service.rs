//! gRPC handlers: the agent session and the Control API. Handlers validate
//! their input and forward to the fleet task; they hold no state of their own.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::wire::{pb, to_pb};

use super::fleet::{FleetError, FleetHandle, NodeOp, WarmOp};

/// A drain without `--deadline` gets this long.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30 * 60);
const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most log lines one `replica logs` call returns.
const MAX_LOG_LINES: u32 = 10_000;

/// How long a new session may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        match e {
            FleetError::InvalidArgument(m) => Status::invalid_argument(capped(m)),
            FleetError::NotFound(m) => Status::not_found(capped(m)),
            FleetError::AlreadyExists(m) => Status::already_exists(capped(m)),
            FleetError::Unavailable(m) => Status::unavailable(capped(m)),
            FleetError::Internal(m) => Status::internal(capped(m)),
            e @ FleetError::NotLeader { .. } => {
                let FleetError::NotLeader { leader } = &e else {
                    unreachable!("matched above");
                };
                // Present, empty while no one leads: clients retry soon.
                let mut meta = tonic::metadata::MetadataMap::new();
                if let Ok(v) = leader.as_deref().unwrap_or("").parse() {
                    meta.insert(crate::wire::LEADER_HEADER, v);
                }
                Status::with_metadata(tonic::Code::Unavailable, e.to_string(), meta)
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Largest message an agent may send. A report of a full host (8 GPUs, a
/// few dozen replicas) is a few KiB; a log reply of 10,000 long lines is the
/// biggest legitimate message.
pub const MAX_AGENT_MESSAGE: usize = 4 * 1024 * 1024;

/// Reports one session may send per second, sustained: a real agent sends
/// one per interval (1 s by default, 100 ms at the least) plus news at most
/// every 100 ms. Past it the session is closed.
const MAX_REPORTS_PER_S: f64 = 50.0;
/// Reports a session may send in a burst above the sustained rate.
const REPORT_BURST: f64 = 100.0;

/// Reports allowed per second, sustained, with a burst: a token bucket.
struct ReportBudget {
    tokens: f64,
    at: std::time::Instant,
}

impl ReportBudget {
    fn new(now: std::time::Instant) -> ReportBudget {
        ReportBudget {
            tokens: REPORT_BURST,
            at: now,
        }
    }

    /// Whether a report arriving at `now` is within the budget.
    fn take(&mut self, now: std::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * MAX_REPORTS_PER_S;
        self.tokens = (self.tokens + refill).min(REPORT_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct SessionService {
    fleet: FleetHandle,
    /// Sessions open now, against `max_sessions`.
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_sessions: usize,
}

impl SessionService {
    pub fn new(fleet: FleetHandle, max_sessions: usize) -> Self {
        Self {
            fleet,
            open: Default::default(),
            max_sessions,
        }
    }

    /// The service with its message size limit.
    pub fn server(self) -> pb::agent_session_server::AgentSessionServer<Self> {
        pb::agent_session_server::AgentSessionServer::new(self)
            .max_decoding_message_size(MAX_AGENT_MESSAGE)
    }
}

/// Counts a session as open until dropped.
struct OpenSession(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl pb::agent_session_server::AgentSession for SessionService {
    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        use super::metrics::SessionRefusal;
        use std::sync::atomic::Ordering;
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let open = OpenSession(self.open.clone());
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_sessions {
            self.fleet.metrics().refused(SessionRefusal::SessionLimit);
            tracing::warn!(%address, "agent session refused: {} sessions are open (limits.max_agent_sessions)", self.max_sessions);
            return Err(Status::resource_exhausted(format!(
                "the coordinator holds {} agent sessions, its limit (limits.max_agent_sessions); try again later or raise the limit",
                self.max_sessions
            )));
        }
        let peer = crate::security::session_peer(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Hello within 10s of opening the session")
            })??;
        let hello = match first.and_then(|m| m.msg) {
            Some(pb::agent_message::Msg::Hello(h)) => crate::domain::Hello::from(h),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ))
            }
        };
        validate_node_name(&hello.node_name)?;
        crate::security::authorize_session(&peer, &hello.node_name, &address)?;
        let node = hello.node_name.clone();
        let (assign_tx, assign_rx) = mpsc::channel::<crate::domain::ToAgent>(8);
        let session = self
            .fleet
            .connect(hello, address.clone(), assign_tx)
            .await?;
        // Why the coordinator ends a session, told to the agent as its status.
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();

        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let _open = open;
            let mut budget = ReportBudget::new(std::time::Instant::now());
            let slot = std::sync::Arc::new(super::handle::ReportSlot::default());
            let refuse = |why: SessionRefusal, status: Status| {
                fleet.metrics().refused(why);
                tracing::warn!(node = %node, %address, "agent session closed: {}", status.message());
                let reason = status.message().to_string();
                let _ = end_tx.send(status);
                reason
            };
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Report(r)),
                    })) => {
                        if !budget.take(std::time::Instant::now()) {
                            break refuse(
                                SessionRefusal::ReportRate,
                                Status::resource_exhausted(format!(
                                    "node {node} sent reports faster than {MAX_REPORTS_PER_S}/s (a burst of {REPORT_BURST}); an agent sends one per report_interval"
                                )),
                            );
                        }
                        fleet.report(&slot, session, node.clone(), r.into()).await
                    }
                    Ok(Some(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Logs(l)),
                    })) => fleet.logs_reply(session, l.into()).await,
                    Ok(Some(_)) => {
                        tracing::debug!(node = %node, "ignoring a repeated Hello or empty message")
                    }
                    Ok(None) => break "agent closed the session".to_string(),
                    // Too big, or not a message at all: this peer cannot be
                    // read further.
                    Err(e) if unreadable(&e) => {
                        break refuse(
                            SessionRefusal::BadMessage,
                            Status::invalid_argument(format!(
                                "node {node} sent a message the coordinator cannot take: {} (allowed: protobuf AgentMessage up to {MAX_AGENT_MESSAGE} bytes)",
                                e.message()
                            )),
                        );
                    }
                    Err(e) => break format!("stream error: {}", e.message()),
                }
            };
            fleet.disconnect(session, node, reason).await;
        });

        // A refusal is sent before the fleet lets the node go, so where the
        // assignments end the refusal, if any, is already there to tell.
        let end = futures_util::FutureExt::shared(end_rx);
        let refusal = {
            let end = end.clone();
            move || futures_util::FutureExt::now_or_never(end).and_then(Result::ok)
        };
        // `None` marks the end of the assignments: the fleet let the node
        // go (a newer session, a step-down, a refusal), and the session ends
        // with it.
        let assignments = ReceiverStream::new(assign_rx)
            .map(|m| Some(Ok(pb::CoordinatorMessage::from(&m))))
            .chain(futures_util::stream::once(
                async move { refusal().map(Err) },
            ));
        let ended = futures_util::stream::once(end)
            .filter_map(|r| futures_util::future::ready(r.ok().map(|s| Some(Err(s)))));
        // A refusal ends the stream at once, with the status saying why.
        let outbound = futures_util::stream::select(assignments, ended).scan(false, |over, m| {
            let next = if *over { None } else { m };
            *over = next.as_ref().is_some_and(Result::is_err);
            futures_util::future::ready(next)
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// A message over the size limit, or bytes that are no protobuf message
/// (not a broken connection, which is no fault of the agent's).
fn unreadable(e: &Status) -> bool {
    e.code() == tonic::Code::OutOfRange
        || e.code() == tonic::Code::Internal && e.message().contains("decode")
}

/// Longest message sent back in a gRPC status: it travels in a header, and
/// clients refuse headers past 16 KiB or so.
const MAX_STATUS_MESSAGE: usize = 4096;

fn capped(message: String) -> String {
    crate::api::capped(message, MAX_STATUS_MESSAGE)
}

fn validate_node_name(name: &str) -> Result<(), Status> {
    use crate::config::agent::{is_valid_node_name, NODE_NAME_RULE};
    if is_valid_node_name(name) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "node name {} is invalid; allowed: {NODE_NAME_RULE}",
            crate::api::quoted(name)
        )))
    }
}

fn required<'a>(what: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        Err(Status::invalid_argument(format!("{what} is required")))
    } else {
        Ok(value)
    }
}

fn optional(value: String) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        Some(value)
    }
}

pub struct ControlService {
    fleet: FleetHandle,
    /// With several coordinators on etcd: for `coordinator status`.
    ha: Option<super::http::HaState>,
}

impl ControlService {
    pub fn new(fleet: FleetHandle, ha: Option<super::http::HaState>) -> Self {
        Self { fleet, ha }
    }

    async fn warm(&self, r: pb::WarmRequest, op: WarmOp) -> Result<Response<pb::WarmList>, Status> {
        required("model", &r.model)?;
        required("--node", &r.node)?;
        let entries = self.fleet.warm(r.model, r.node, op).await?;
        Ok(Response::new(pb::WarmList {
            entries: to_pb(&entries),
        }))
    }
}

/// Largest model spec accepted; real specs are a few hundred bytes.
const MAX_SPEC_BYTES: usize = 256 * 1024;

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn apply_model(
        &self,
        request: Request<pb::ApplyModelRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        let spec = request.into_inner().spec_toml;
        if spec.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "model spec is {} bytes; allowed: up to {MAX_SPEC_BYTES}",
                spec.len()
            )));
        }
        let view = self.fleet.apply_model(spec).await?;
        Ok(Response::new((&view).into()))
    }

    async fn delete_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let name = request.into_inner().name;
        required("model name", &name)?;
        let stopping = self.fleet.delete_model(name.clone()).await?;
        Ok(Response::new(pb::DeleteModelResponse {
            name,
            replicas_stopping: stopping,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ModelList>, Status> {
        let models = self.fleet.list_models().await?;
        Ok(Response::new(pb::ModelList {
            models: to_pb(&models),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        let name = request.into_inner().name;
        required("model name", &name)?;
        let view = self.fleet.get_model(name).await?;
        Ok(Response::new((&view).into()))
    }

    async fn scale_model(
        &self,
        request: Request<pb::ScaleModelRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        let r = request.into_inner();
        required("model name", &r.name)?;
        let replicas = match (r.replicas, r.auto) {
            (Some(_), true) => {
                return Err(Status::invalid_argument(
                    "give either --replicas N or --auto, not both",
                ))
            }
            (None, false) => return Err(Status::invalid_argument("give --replicas N or --auto")),
            (n, _) => n,
        };
        let view = self.fleet.scale_model(r.name, replicas).await?;
        Ok(Response::new((&view).into()))
    }

    async fn wake_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        let name = request.into_inner().name;
        required("model name", &name)?;
        let view = self.fleet.wake_model(name).await?;
        Ok(Response::new((&view).into()))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::NodeList>, Status> {
        let nodes = self.fleet.list_nodes().await?;
        Ok(Response::new(pb::NodeList {
            nodes: to_pb(&nodes),
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::NodeRef>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let name = request.into_inner().name;
        required("node name", &name)?;
        let view = self.fleet.get_node(name).await?;
        Ok(Response::new((&view).into()))
    }

    async fn cordon_node(
        &self,
        request: Request<pb::NodeRef>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let name = request.into_inner().name;
        required("node name", &name)?;
        let view = self.fleet.node_operation(name, NodeOp::Cordon).await?;
        Ok(Response::new((&view).into()))
    }

    async fn uncordon_node(
        &self,
        request: Request<pb::NodeRef>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let name = request.into_inner().name;
        required("node name", &name)?;
        let view = self.fleet.node_operation(name, NodeOp::Uncordon).await?;
        Ok(Response::new((&view).into()))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let r = request.into_inner();
        required("node name", &r.name)?;
        let deadline = match r.deadline_ms {
            0 => DEFAULT_DRAIN_DEADLINE,
            ms if ms > MAX_DRAIN_DEADLINE.as_millis() as u64 => {
                return Err(Status::invalid_argument(format!(
                    "drain deadline {} is too long; allowed: up to {}",
                    humantime::format_duration(Duration::from_millis(ms)),
                    humantime::format_duration(MAX_DRAIN_DEADLINE)
                )))
            }
            ms => Duration::from_millis(ms),
        };
        let view = self
            .fleet
            .node_operation(r.name, NodeOp::Drain { deadline })
            .await?;
        Ok(Response::new((&view).into()))
    }

    async fn mark_gpu_healthy(
        &self,
        request: Request<pb::GpuRef>,
    ) -> Result<Response<pb::GpuList>, Status> {
        let r = request.into_inner();
        required("--node", &r.node)?;
        let gpus = self.fleet.mark_gpu_healthy(r.node, r.index).await?;
        Ok(Response::new(pb::GpuList { gpus: to_pb(&gpus) }))
    }

    async fn list_gpus(
        &self,
        request: Request<pb::ListGpusRequest>,
    ) -> Result<Response<pb::GpuList>, Status> {
        let node = optional(request.into_inner().node);
        let gpus = self.fleet.list_gpus(node).await?;
        Ok(Response::new(pb::GpuList { gpus: to_pb(&gpus) }))
    }

    async fn list_replicas(
        &self,
        request: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ReplicaList>, Status> {
        let r = request.into_inner();
        let replicas = self
            .fleet
            .list_replicas(optional(r.model), optional(r.node))
            .await?;
        Ok(Response::new(pb::ReplicaList {
            replicas: to_pb(&replicas),
        }))
    }

    async fn replica_logs(
        &self,
        request: Request<pb::ReplicaLogsRequest>,
    ) -> Result<Response<pb::ReplicaLogsResponse>, Status> {
        let r = request.into_inner();
        required("replica id", &r.id)?;
        let lines = match r.lines {
            0 => 100,
            n if n > MAX_LOG_LINES => {
                return Err(Status::invalid_argument(format!(
                    "--lines {n} is too many; allowed: 1..={MAX_LOG_LINES}"
                )))
            }
            n => n,
        };
        let query = if r.follow {
            crate::domain::LogQuery::Since(r.offset)
        } else {
            crate::domain::LogQuery::Tail(lines)
        };
        let (node, slice) = self.fleet.replica_logs(r.id.clone(), query).await?;
        Ok(Response::new(pb::ReplicaLogsResponse {
            id: r.id,
            node,
            lines: slice.lines,
            offset: slice.offset,
        }))
    }

    async fn list_warm(
        &self,
        request: Request<pb::ListWarmRequest>,
    ) -> Result<Response<pb::WarmList>, Status> {
        let node = optional(request.into_inner().node);
        let entries = self.fleet.list_warm(node).await?;
        Ok(Response::new(pb::WarmList {
            entries: to_pb(&entries),
        }))
    }

    async fn warm_start(
        &self,
        request: Request<pb::WarmRequest>,
    ) -> Result<Response<pb::WarmList>, Status> {
        self.warm(request.into_inner(), WarmOp::Start).await
    }

    async fn warm_evict(
        &self,
        request: Request<pb::WarmRequest>,
    ) -> Result<Response<pb::WarmList>, Status> {
        self.warm(request.into_inner(), WarmOp::Evict).await
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::EventList>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let events = self
            .fleet
            .list_events(optional(r.model), optional(r.node), limit)
            .await?;
        Ok(Response::new(pb::EventList {
            events: to_pb(&events),
        }))
    }

    type FollowEventsStream = BoxStream<pb::Event>;

    async fn follow_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<Self::FollowEventsStream>, Status> {
        let r = request.into_inner();
        let (model, node) = (optional(r.model), optional(r.node));
        let rx = self.fleet.subscribe_events().await?;
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| {
            let keep = match &e {
                Ok(e) => {
                    model.as_deref().is_none_or(|m| e.model == m)
                        && node.as_deref().is_none_or(|n| e.node == n)
                }
                Err(_) => true,
            };
            let item = match e {
                Ok(e) => Ok(pb::Event::from(&e)),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Err(Status::data_loss(format!(
                        "this follower fell {n} events behind; reconnect to continue"
                    )))
                }
            };
            futures_util::future::ready(keep.then_some(item))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn explain(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let name = request.into_inner().name;
        required("model name", &name)?;
        let e = self.fleet.explain(name).await?;
        Ok(Response::new((&e).into()))
    }

    async fn get_version(
        &self,
        _request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        Ok(Response::new(pb::VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    type BackupStream = BoxStream<pb::BackupChunk>;

    async fn backup(
        &self,
        _request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        const CHUNK: usize = 1 << 20;
        let copy = self.fleet.backup().await?;
        tracing::info!(bytes = copy.len(), "store backed up through the API");
        let chunks: Vec<Result<pb::BackupChunk, Status>> = copy
            .chunks(CHUNK)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn get_coordinator_status(
        &self,
        _request: Request<pb::GetCoordinatorStatusRequest>,
    ) -> Result<Response<pb::CoordinatorStatus>, Status> {
        let status = match &self.ha {
            Some(ha) => super::leading::status_of(ha).await,
            None => crate::api::HaStatus::single(),
        };
        Ok(Response::new((&status).into()))
    }
}

/// Gateways: each holds one stream, pushing its demand up and receiving the
/// routing table down whenever it changes.
pub struct GatewayService {
    fleet: FleetHandle,
}

impl GatewayService {
    pub fn new(fleet: FleetHandle) -> Self {
        Self { fleet }
    }
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    type RoutesStream = BoxStream<pb::RoutingTable>;

    async fn routes(
        &self,
        request: Request<Streaming<pb::GatewayReport>>,
    ) -> Result<Response<Self::RoutesStream>, Status> {
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let mut inbound = request.into_inner();
        let (link, table) = self.fleet.gateway_connect().await?;
        tracing::info!(%address, link, "gateway connected");
        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(report)) => fleet.gateway_report(link, report.into()).await,
                    Ok(None) => break "gateway closed the stream".to_string(),
                    Err(e) => break format!("stream error: {}", e.message()),
                }
            };
            tracing::info!(%address, link, "gateway disconnected: {reason}");
            fleet.gateway_disconnect(link).await;
        });
        let outbound =
            tokio_stream::wrappers::WatchStream::new(table).map(|t| Ok(pb::RoutingTable::from(&t)));
        Ok(Response::new(Box::pin(outbound)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_report_budget_allows_a_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut budget = ReportBudget::new(t0);
        let burst = (0..1000).take_while(|_| budget.take(t0)).count();
        assert_eq!(burst, REPORT_BURST as usize);
        assert!(!budget.take(t0));
        // A second later the rate's worth is back, and no more.
        let t1 = t0 + Duration::from_secs(1);
        let refilled = (0..1000).take_while(|_| budget.take(t1)).count();
        assert_eq!(refilled, MAX_REPORTS_PER_S as usize);
        // An agent reporting every 100 ms never runs out.
        let mut steady = ReportBudget::new(t0);
        assert!((0..10_000).all(|i| steady.take(t0 + Duration::from_millis(100 * i))));
    }

    #[test]
    fn only_oversized_or_undecodable_messages_are_the_agents_fault() {
        assert!(unreadable(&Status::out_of_range(
            "Error, decoded message length too large"
        )));
        assert!(unreadable(&Status::internal(
            "failed to decode Protobuf message: invalid wire type"
        )));
        assert!(!unreadable(&Status::internal("h2 protocol error")));
        assert!(!unreadable(&Status::unknown("connection reset")));
    }
}
