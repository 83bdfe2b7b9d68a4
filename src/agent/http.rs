//! Agent HTTP endpoints: `/metrics` (GPU metrics under dcgm-exporter's names
//! and labels so existing dashboards work, plus gpufleet's own host, replica,
//! warm and agent metrics), `/healthz`, and fault injection for simulated GPUs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

use crate::agent::gpu::exporter::{family, float, labels, render_dcgm_metrics, render_gpu_metrics};
use crate::agent::gpu::{FaultError, FaultKind, GpuSnapshot, SimulatedFaults};
use crate::coordinator::limits::{serve_http, write_metrics, Gate};
use crate::domain::{HostSample, ReplicaState, ReplicaStatus, WarmStatus};

/// What the agent exposes, refreshed by its owner through a watch channel.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub node_name: String,
    pub gpus: GpuSnapshot,
    pub host: HostSample,
    pub replicas: Vec<ReplicaStatus>,
    pub warm: Vec<WarmStatus>,
    pub coordinator_connected: bool,
    pub started: Instant,
    /// Why the state dir cannot be written (a full disk), while it cannot.
    pub state_dir_problem: Option<String>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            node_name: String::new(),
            gpus: GpuSnapshot::default(),
            host: HostSample::default(),
            replicas: Vec::new(),
            warm: Vec::new(),
            coordinator_connected: false,
            started: Instant::now(),
            state_dir_problem: None,
        }
    }
}

const ALL_REPLICA_STATES: [ReplicaState; 6] = [
    ReplicaState::Starting,
    ReplicaState::Ready,
    ReplicaState::Stopping,
    ReplicaState::Stopped,
    ReplicaState::Failed,
    ReplicaState::Crashloop,
];

/// Serves the agent's endpoints until `shutdown` resolves. The fault
/// endpoint exists only when `faults` is given (simulated GPUs).
/// Connections go through `gate`: header-read and idle timeouts and caps,
/// as on the coordinator's listeners.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: watch::Receiver<Telemetry>,
    faults: Option<SimulatedFaults>,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = router(telemetry, faults, gate.clone());
    serve_http(listener, router, gate, shutdown).await
}

#[derive(Clone)]
struct AppState {
    telemetry: watch::Receiver<Telemetry>,
    faults: Option<SimulatedFaults>,
    gate: Arc<Gate>,
}

fn router(
    telemetry: watch::Receiver<Telemetry>,
    faults: Option<SimulatedFaults>,
    gate: Arc<Gate>,
) -> Router {
    let with_faults = faults.is_some();
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/dcgm", get(dcgm_metrics))
        .route("/healthz", get(healthz));
    let router = if with_faults {
        router.route("/v1/simulated/gpus/{index}/fault", post(inject_fault))
    } else {
        router
    };
    router.with_state(AppState {
        telemetry,
        faults,
        gate,
    })
}

/// 200 "ok", or 503 while the state dir cannot be written.
async fn healthz(State(state): State<AppState>) -> Response {
    match &state.telemetry.borrow().state_dir_problem {
        None => "ok".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: state dir: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let telemetry = state.telemetry.borrow().clone();
    let mut body = render_metrics(&telemetry);
    body.push_str(&render_process_metrics(&AgentProcess::read(
        telemetry.started.elapsed(),
    )));
    write_metrics(&mut body, std::slice::from_ref(&state.gate));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The GPU families exactly as dcgm-exporter writes them, for dashboards
/// and alerts built for it (its camelCase labels included, which is why
/// they are not on `/metrics`).
async fn dcgm_metrics(State(state): State<AppState>) -> Response {
    let telemetry = state.telemetry.borrow().clone();
    let mut body = String::new();
    render_dcgm_metrics(&mut body, &telemetry.gpus, &telemetry.node_name);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    kind: String,
    xid: Option<u32>,
}

fn fault_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn inject_fault(
    State(state): State<AppState>,
    Path(index): Path<String>,
    body: Bytes,
) -> Response {
    let Some(faults) = state.faults else {
        return fault_error(
            StatusCode::NOT_FOUND,
            "this agent has no simulated GPUs".into(),
        );
    };
    let Ok(index) = index.parse::<u32>() else {
        return fault_error(
            StatusCode::BAD_REQUEST,
            format!(
                "GPU index `{index}` is not a number; expected 0..{}",
                faults.gpu_count()
            ),
        );
    };
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return fault_error(
                StatusCode::BAD_REQUEST,
                format!("invalid fault request ({err}); expected JSON like {{\"kind\":\"lost\"}} or {{\"kind\":\"xid\",\"xid\":79}}"),
            )
        }
    };
    let kind = match (request.kind.as_str(), request.xid) {
        ("xid", Some(xid)) => FaultKind::Xid(xid),
        ("xid", None) => {
            return fault_error(
                StatusCode::BAD_REQUEST,
                "kind \"xid\" needs an `xid` number, e.g. {\"kind\":\"xid\",\"xid\":79}".into(),
            )
        }
        (_, Some(_)) if ["lost", "throttle", "clear"].contains(&request.kind.as_str()) => {
            return fault_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`xid` only goes with kind \"xid\", not \"{}\"",
                    request.kind
                ),
            )
        }
        ("lost", None) => FaultKind::Lost,
        ("throttle", None) => FaultKind::Throttle,
        ("clear", None) => FaultKind::Clear,
        (other, _) => {
            return fault_error(
                StatusCode::BAD_REQUEST,
                format!("unknown fault kind \"{other}\"; allowed: lost, xid, throttle, clear"),
            )
        }
    };
    match faults.inject(index, kind) {
        Ok(()) => Json(serde_json::json!({ "gpu": index, "kind": request.kind })).into_response(),
        Err(err @ FaultError::UnknownGpu { .. }) => {
            fault_error(StatusCode::NOT_FOUND, err.to_string())
        }
        Err(err @ FaultError::InvalidXid { .. }) => {
            fault_error(StatusCode::BAD_REQUEST, err.to_string())
        }
    }
}

/// Prometheus text for everything in `t`: gpufleet's GPU families, then
/// host, replica, warm and agent families. Families with no series are left
/// out. dcgm-exporter's families are on `/metrics/dcgm`.
pub fn render_metrics(t: &Telemetry) -> String {
    let mut out = String::new();
    render_gpu_metrics(&mut out, &t.gpus, &t.node_name, &t.replicas);
    render_host(&mut out, &t.host, &t.node_name);
    render_replicas(&mut out, &t.replicas, &t.node_name);
    render_warm(&mut out, &t.warm, &t.node_name);
    render_agent(&mut out, t);
    out
}

type HostField = fn(&HostSample) -> String;

const HOST_GAUGES: &[(&str, &str, HostField)] = &[
    (
        "gpufleet_host_cpu_percent",
        "Host CPU use across all cores.",
        |h| float(h.cpu_pct),
    ),
    ("gpufleet_host_load1", "Load average over 1 minute.", |h| {
        float(h.load1)
    }),
    ("gpufleet_host_load5", "Load average over 5 minutes.", |h| {
        float(h.load5)
    }),
    (
        "gpufleet_host_load15",
        "Load average over 15 minutes.",
        |h| float(h.load15),
    ),
    (
        "gpufleet_host_memory_used_bytes",
        "Host memory in use.",
        |h| h.memory_used_bytes.to_string(),
    ),
    (
        "gpufleet_host_memory_available_bytes",
        "Host memory available without swapping.",
        |h| h.memory_available_bytes.to_string(),
    ),
    (
        "gpufleet_host_page_cache_bytes",
        "Host page cache size.",
        |h| h.page_cache_bytes.to_string(),
    ),
    (
        "gpufleet_host_state_dir_free_bytes",
        "Free space on the agent's state directory.",
        |h| h.state_dir_free_bytes.to_string(),
    ),
    (
        "gpufleet_host_state_dir_total_bytes",
        "Size of the state directory's file system.",
        |h| h.state_dir_total_bytes.to_string(),
    ),
];

fn render_host(out: &mut String, host: &HostSample, node: &str) {
    let node = labels(&[("node", node)]);
    for (name, help, field) in HOST_GAUGES {
        family(out, name, "gauge", help, vec![(node.clone(), field(host))]);
    }
}

type ReplicaField = fn(&ReplicaStatus) -> String;

const REPLICA_FAMILIES: &[(&str, &str, &str, ReplicaField)] = &[
    (
        "gpufleet_replica_restarts_total",
        "counter",
        "Times the agent restarted the replica.",
        |r| r.restarts.to_string(),
    ),
    (
        "gpufleet_replica_ongoing_requests",
        "gauge",
        "Waiting plus running requests, from the replica's metrics.",
        |r| float(r.signals.ongoing()),
    ),
    (
        "gpufleet_replica_scrape_errors_total",
        "counter",
        "Scrapes of the replica's metrics endpoint that failed.",
        |r| r.signals.scrape_errors.to_string(),
    ),
    (
        "gpufleet_replica_gpu_memory_used_bytes",
        "gauge",
        "GPU memory held by the replica's processes.",
        |r| r.gpu_memory_used_bytes.to_string(),
    ),
];

fn render_replicas(out: &mut String, replicas: &[ReplicaStatus], node: &str) {
    let replica_labels =
        |r: &ReplicaStatus| labels(&[("node", node), ("replica", &r.id), ("model", &r.model)]);
    let mut states = Vec::new();
    for r in replicas {
        for state in ALL_REPLICA_STATES {
            let series = format!(
                "{},{}",
                replica_labels(r),
                labels(&[("state", state.as_str())])
            );
            states.push((series, u8::from(r.state == state).to_string()));
        }
    }
    family(
        out,
        "gpufleet_replica_state",
        "gauge",
        "1 for the replica's current state, else 0.",
        states,
    );
    for (name, kind, help, field) in REPLICA_FAMILIES {
        let series = replicas
            .iter()
            .map(|r| (replica_labels(r), field(r)))
            .collect();
        family(out, name, kind, help, series);
    }
}

fn render_warm(out: &mut String, warm: &[WarmStatus], node: &str) {
    let each = |field: fn(&WarmStatus) -> u64| {
        warm.iter()
            .map(|w| {
                (
                    labels(&[("node", node), ("model", &w.model)]),
                    field(w).to_string(),
                )
            })
            .collect()
    };
    family(
        out,
        "gpufleet_warm_resident_bytes",
        "gauge",
        "Bytes of the model's weights in the page cache.",
        each(|w| w.resident_bytes),
    );
    family(
        out,
        "gpufleet_warm_total_bytes",
        "gauge",
        "Size of the model's weights.",
        each(|w| w.total_bytes),
    );
}

fn render_agent(out: &mut String, t: &Telemetry) {
    let node = labels(&[("node", &t.node_name)]);
    let info = labels(&[
        ("node", &t.node_name),
        ("version", env!("CARGO_PKG_VERSION")),
        ("gpu_backend", t.gpus.backend),
        ("driver_version", &t.gpus.driver_version),
        ("cuda_version", &t.gpus.cuda_version),
    ]);
    family(
        out,
        "gpufleet_agent_info",
        "gauge",
        "Agent version and GPU backend.",
        vec![(info, "1".into())],
    );
    let connected = u8::from(t.coordinator_connected).to_string();
    family(
        out,
        "gpufleet_agent_coordinator_connected",
        "gauge",
        "1 while the session with the coordinator is up.",
        vec![(node.clone(), connected)],
    );
    let degraded = u8::from(t.state_dir_problem.is_some()).to_string();
    family(
        out,
        "gpufleet_agent_state_dir_degraded",
        "gauge",
        "1 while the state dir cannot be written (a full disk): replica records wait to be saved.",
        vec![(node.clone(), degraded)],
    );
    let cost = float(t.gpus.sample_cost.as_secs_f64());
    family(
        out,
        "gpufleet_agent_gpu_sample_seconds",
        "gauge",
        "Time the last GPU sample took.",
        vec![(node, cost)],
    );
}

/// The agent's own resource use, read from /proc/self.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AgentProcess {
    pub process: crate::exposition::ProcessStats,
    pub uptime: Duration,
}

impl AgentProcess {
    pub fn read(uptime: Duration) -> AgentProcess {
        AgentProcess {
            process: crate::exposition::ProcessStats::own(),
            uptime,
        }
    }
}

/// The agent's process metrics, under the names Prometheus client libraries use.
pub fn render_process_metrics(p: &AgentProcess) -> String {
    let mut out = String::new();
    p.process.write(&mut out);
    family(
        &mut out,
        "gpufleet_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        vec![(String::new(), float(p.uptime.as_secs_f64()))],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::gpu::{GpuProbe, SimulatedConfig, SimulatedGpus};
    use crate::config::coordinator::ConnectionLimits;
    use crate::domain::ServingSignals;

    fn telemetry() -> Telemetry {
        Telemetry {
            node_name: "gpu-host-17".into(),
            host: HostSample {
                cpu_pct: 12.5,
                load1: 1.25,
                load5: 1.0,
                load15: 0.5,
                memory_used_bytes: 100,
                memory_available_bytes: 200,
                page_cache_bytes: 300,
                state_dir_free_bytes: 400,
                state_dir_total_bytes: 500,
            },
            replicas: vec![ReplicaStatus {
                id: "llama-3-8b-0".into(),
                model: "llama-3-8b".into(),
                state: ReplicaState::Ready,
                restarts: 2,
                gpu_memory_used_bytes: 21 << 30,
                signals: ServingSignals {
                    waiting: 3.0,
                    running: 4.5,
                    scrape_errors: 3,
                    ..ServingSignals::default()
                },
                ..ReplicaStatus::default()
            }],
            warm: vec![WarmStatus {
                model: "llama-3-8b".into(),
                resident_bytes: 1000,
                total_bytes: 4000,
                ..WarmStatus::default()
            }],
            coordinator_connected: true,
            ..Telemetry::default()
        }
    }

    #[test]
    fn host_replica_warm_and_agent_metrics_render_exactly() {
        let r = r#"node="gpu-host-17",replica="llama-3-8b-0",model="llama-3-8b""#;
        let expected = format!(
            r#"# HELP gpufleet_host_cpu_percent Host CPU use across all cores.
# TYPE gpufleet_host_cpu_percent gauge
gpufleet_host_cpu_percent{{node="gpu-host-17"}} 12.5
# HELP gpufleet_host_load1 Load average over 1 minute.
# TYPE gpufleet_host_load1 gauge
gpufleet_host_load1{{node="gpu-host-17"}} 1.25
# HELP gpufleet_host_load5 Load average over 5 minutes.
# TYPE gpufleet_host_load5 gauge
gpufleet_host_load5{{node="gpu-host-17"}} 1
# HELP gpufleet_host_load15 Load average over 15 minutes.
# TYPE gpufleet_host_load15 gauge
gpufleet_host_load15{{node="gpu-host-17"}} 0.5
# HELP gpufleet_host_memory_used_bytes Host memory in use.
# TYPE gpufleet_host_memory_used_bytes gauge
gpufleet_host_memory_used_bytes{{node="gpu-host-17"}} 100
# HELP gpufleet_host_memory_available_bytes Host memory available without swapping.
# TYPE gpufleet_host_memory_available_bytes gauge
gpufleet_host_memory_available_bytes{{node="gpu-host-17"}} 200
# HELP gpufleet_host_page_cache_bytes Host page cache size.
# TYPE gpufleet_host_page_cache_bytes gauge
gpufleet_host_page_cache_bytes{{node="gpu-host-17"}} 300
# HELP gpufleet_host_state_dir_free_bytes Free space on the agent's state directory.
# TYPE gpufleet_host_state_dir_free_bytes gauge
gpufleet_host_state_dir_free_bytes{{node="gpu-host-17"}} 400
# HELP gpufleet_host_state_dir_total_bytes Size of the state directory's file system.
# TYPE gpufleet_host_state_dir_total_bytes gauge
gpufleet_host_state_dir_total_bytes{{node="gpu-host-17"}} 500
# HELP gpufleet_replica_state 1 for the replica's current state, else 0.
# TYPE gpufleet_replica_state gauge
gpufleet_replica_state{{{r},state="starting"}} 0
gpufleet_replica_state{{{r},state="ready"}} 1
gpufleet_replica_state{{{r},state="stopping"}} 0
gpufleet_replica_state{{{r},state="stopped"}} 0
gpufleet_replica_state{{{r},state="failed"}} 0
gpufleet_replica_state{{{r},state="crashloop"}} 0
# HELP gpufleet_replica_restarts_total Times the agent restarted the replica.
# TYPE gpufleet_replica_restarts_total counter
gpufleet_replica_restarts_total{{{r}}} 2
# HELP gpufleet_replica_ongoing_requests Waiting plus running requests, from the replica's metrics.
# TYPE gpufleet_replica_ongoing_requests gauge
gpufleet_replica_ongoing_requests{{{r}}} 7.5
# HELP gpufleet_replica_scrape_errors_total Scrapes of the replica's metrics endpoint that failed.
# TYPE gpufleet_replica_scrape_errors_total counter
gpufleet_replica_scrape_errors_total{{{r}}} 3
# HELP gpufleet_replica_gpu_memory_used_bytes GPU memory held by the replica's processes.
# TYPE gpufleet_replica_gpu_memory_used_bytes gauge
gpufleet_replica_gpu_memory_used_bytes{{{r}}} 22548578304
# HELP gpufleet_warm_resident_bytes Bytes of the model's weights in the page cache.
# TYPE gpufleet_warm_resident_bytes gauge
gpufleet_warm_resident_bytes{{node="gpu-host-17",model="llama-3-8b"}} 1000
# HELP gpufleet_warm_total_bytes Size of the model's weights.
# TYPE gpufleet_warm_total_bytes gauge
gpufleet_warm_total_bytes{{node="gpu-host-17",model="llama-3-8b"}} 4000
# HELP gpufleet_agent_info Agent version and GPU backend.
# TYPE gpufleet_agent_info gauge
gpufleet_agent_info{{node="gpu-host-17",version="{version}",gpu_backend="",driver_version="",cuda_version=""}} 1
# HELP gpufleet_agent_coordinator_connected 1 while the session with the coordinator is up.
# TYPE gpufleet_agent_coordinator_connected gauge
gpufleet_agent_coordinator_connected{{node="gpu-host-17"}} 1
# HELP gpufleet_agent_state_dir_degraded 1 while the state dir cannot be written (a full disk): replica records wait to be saved.
# TYPE gpufleet_agent_state_dir_degraded gauge
gpufleet_agent_state_dir_degraded{{node="gpu-host-17"}} 0
# HELP gpufleet_agent_gpu_sample_seconds Time the last GPU sample took.
# TYPE gpufleet_agent_gpu_sample_seconds gauge
gpufleet_agent_gpu_sample_seconds{{node="gpu-host-17"}} 0
"#,
            version = env!("CARGO_PKG_VERSION")
        );
        assert_eq!(render_metrics(&telemetry()), expected);
    }

    #[test]
    fn gpu_families_come_first_and_dcgm_names_are_served_apart() {
        let mut t = telemetry();
        let mut gpus = SimulatedGpus::new(&SimulatedConfig {
            count: 2,
            model: "Simulated H100 80GB".into(),
            memory_bytes: 80 << 30,
            node_name: "gpu-host-17".into(),
        });
        t.gpus = GpuSnapshot {
            backend: "simulated",
            inventory: gpus.inventory(),
            samples: gpus.sample(),
            ..GpuSnapshot::default()
        };
        let out = render_metrics(&t);
        assert!(out.starts_with("# HELP gpufleet_gpu_info "), "{out}");
        assert!(!out.contains("DCGM_"), "{out}");
        assert!(out.contains(r#"gpu="1",uuid="GPU-"#));
        assert!(out.contains(r#"gpu_backend="simulated""#));
        let mut dcgm = String::new();
        render_dcgm_metrics(&mut dcgm, &t.gpus, &t.node_name);
        assert!(dcgm.starts_with("# HELP DCGM_FI_DEV_SM_CLOCK "), "{dcgm}");
        assert_eq!(
            dcgm.lines()
                .filter(|l| l.starts_with("DCGM_FI_DEV_FB_USED{"))
                .count(),
            2
        );
        assert!(dcgm.contains(r#"gpu="1",UUID="GPU-"#));
    }

    #[test]
    fn process_metrics_carry_the_uptime() {
        let own = AgentProcess::read(Duration::from_secs(3));
        assert!(own.process.resident_bytes.is_some_and(|b| b > 0));
        let text = render_process_metrics(&own);
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ")
        );
        assert!(
            text.ends_with("gpufleet_agent_uptime_seconds 3\n"),
            "{text}"
        );
    }

    struct Server {
        base: String,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
        _telemetry: watch::Sender<Telemetry>,
    }

    async fn start(faults: Option<SimulatedFaults>) -> Server {
        start_limited(faults, ConnectionLimits::default()).await
    }

    async fn start_limited(faults: Option<SimulatedFaults>, limits: ConnectionLimits) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (telemetry_tx, telemetry_rx) = watch::channel(telemetry());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Gate::new("http", limits);
        let task = tokio::spawn(serve(listener, telemetry_rx, faults, gate, async {
            let _ = stop_rx.await;
        }));
        Server {
            base,
            stop: Some(stop_tx),
            task,
            _telemetry: telemetry_tx,
        }
    }

    async fn post(base: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn serves_metrics_and_health_then_shuts_down() {
        let mut server = start(None).await;
        let health = reqwest::get(format!("{}/healthz", server.base))
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");

        let metrics = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap();
        assert_eq!(metrics.status().as_u16(), 200);
        let content_type = metrics.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        let body = metrics.text().await.unwrap();
        assert!(body.contains("gpufleet_agent_coordinator_connected{node=\"gpu-host-17\"} 1\n"));
        assert!(body.contains("\nprocess_resident_memory_bytes "));

        let (status, _) = post(
            &server.base,
            "/v1/simulated/gpus/0/fault",
            r#"{"kind":"lost"}"#,
        )
        .await;
        assert_eq!(status, 404, "no fault endpoint without simulated GPUs");

        let _ = server.stop.take().unwrap().send(());
        server.task.await.unwrap();
    }

    /// A flood of idle sockets neither starves /healthz nor stays open:
    /// the oldest idle ones make room, the silent ones time out, and both
    /// are counted on /metrics.
    #[tokio::test]
    async fn idle_connections_cannot_starve_the_agent_endpoints() {
        let limits = ConnectionLimits {
            max_connections: 16,
            max_connections_per_peer: 16,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        let server = start_limited(None, limits).await;
        let addr = server.base.trim_start_matches("http://").to_string();
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let client = reqwest::Client::new();
        let health = client
            .get(format!("{}/healthz", server.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("/healthz answers under a flood of idle sockets");
        assert_eq!(health.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let body = client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let closed = |reason: &str| -> u64 {
            let key = format!(
                "gpufleet_connections_closed_total{{listener=\"http\",reason=\"{reason}\"}} "
            );
            body.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("{key} in:\n{body}"))
                .parse()
                .unwrap()
        };
        assert!(closed("evicted") >= 24, "{body}");
        assert!(closed("header_timeout") >= 1, "{body}");
        drop(idle);
    }

    #[tokio::test]
    async fn fault_endpoint_injects_and_explains_bad_requests() {
        let mut gpus = SimulatedGpus::new(&SimulatedConfig {
            count: 2,
            model: "Simulated H100 80GB".into(),
            memory_bytes: 80 << 30,
            node_name: "n".into(),
        });
        let server = start(Some(gpus.faults())).await;
        let path = |i: &str| format!("/v1/simulated/gpus/{i}/fault");

        let (status, body) = post(&server.base, &path("1"), r#"{"kind":"lost"}"#).await;
        assert_eq!((status, body["kind"].as_str()), (200, Some("lost")));
        assert!(!gpus.sample()[1].healthy);

        let (status, _) = post(&server.base, &path("0"), r#"{"kind":"xid","xid":79}"#).await;
        assert_eq!(status, 200);
        assert_eq!(gpus.take_events().len(), 1);

        let cases = [
            ("7", r#"{"kind":"lost"}"#, 404, "no simulated GPU 7"),
            ("x", r#"{"kind":"lost"}"#, 400, "not a number"),
            (
                "0",
                r#"{"kind":"melt"}"#,
                400,
                "unknown fault kind \"melt\"",
            ),
            ("0", r#"{"kind":"xid"}"#, 400, "needs an `xid`"),
            ("0", r#"{"kind":"xid","xid":0}"#, 400, "out of range"),
            (
                "0",
                r#"{"kind":"lost","xid":79}"#,
                400,
                "only goes with kind",
            ),
            ("0", r#"{"kind":"lost","force":true}"#, 400, "unknown field"),
            ("0", "not json", 400, "invalid fault request"),
        ];
        for (index, body, want_status, want_message) in cases {
            let (status, reply) = post(&server.base, &path(index), body).await;
            let message = reply["error"].as_str().unwrap_or_default().to_string();
            assert_eq!(status, want_status, "{index} {body}: {message}");
            assert!(message.contains(want_message), "{index} {body}: {message}");
        }
    }
}
