//! The coordinator's HTTP side: `/healthz`, `/metrics` (Prometheus),
//! `/v1/endpoints` (ready replica addresses in Prometheus http_sd format, for
//! Prometheus itself and for load balancer templates) and `wake`. With
//! tokens configured, `wake` needs an admin or wake token and `/v1/endpoints`
//! any token (unless `[http] anonymous_endpoints`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::exposition::{family, labels, Series};
use crate::security::tokens::Access;
use crate::security::ControlAuth;

use super::fleet::{Endpoint, FleetHandle};

/// Why the store cannot write now; None while it can.
pub type StoreHealth = tokio::sync::watch::Receiver<Option<String>>;

#[derive(Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub fleet: FleetHandle,
    pub auth: ControlAuth,
    pub anonymous_endpoints: bool,
    /// Why the store cannot write, while it cannot.
    pub store_health: StoreHealth,
    /// Connection counters of both listeners, for `/metrics`.
    pub gates: Vec<std::sync::Arc<super::limits::Gate>>,
    /// With several coordinators on etcd: this one's role, and etcd.
    pub ha: Option<HaState>,
}

#[derive(Clone)]
pub struct HaState {
    pub role: tokio::sync::watch::Receiver<super::election::Role>,
    pub etcd: crate::etcd::Etcd,
    pub keys: super::store::etcd::Keys,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/coordinators", get(coordinators))
        .route("/metrics", get(metrics))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/models/{name}/wake", axum::routing::post(wake))
        .with_state(state)
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

/// The HTTP form of a refusal: 401 without a (known) token, 403 for a token
/// without the role.
fn refused(status: tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut r = (code, format!("{}\n", status.message())).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())
}

/// `coordinator status`: members, leader, epoch and etcd's health (JSON).
async fn coordinators(State(s): State<HttpState>) -> Response {
    match &s.ha {
        Some(ha) => Json(super::leading::status_of(ha).await).into_response(),
        None => Json(crate::api::HaStatus::single()).into_response(),
    }
}

async fn healthz(State(s): State<HttpState>) -> Response {
    use super::election::Role;
    if let Some(ha) = &s.ha {
        let role = ha.role.borrow().clone();
        match role {
            Role::Leader { .. } => {}
            Role::Follower { leader, epoch } => {
                return format!(
                    "ok follower (leader {} at {}, epoch {epoch})\n",
                    leader.name, leader.address
                )
                .into_response()
            }
            Role::NoLeader => {
                return unavailable("no-leader: an election is under way or etcd is unreachable")
            }
        }
    }
    // The fleet task answering is what "healthy" means for the coordinator;
    // a store that cannot write makes it degraded.
    if let Err(e) = s.fleet.list_models().await {
        return unavailable(e);
    }
    let role = match s.ha.as_ref().map(|h| h.role.borrow().clone()) {
        Some(super::election::Role::Leader { epoch }) => format!(" leader (epoch {epoch})"),
        _ => String::new(),
    };
    match s.store_health.borrow().clone() {
        None => format!("ok{role}\n").into_response(),
        Some(why) => unavailable(format!("degraded: store: {why}")),
    }
}

async fn endpoints(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    if !s.anonymous_endpoints {
        if let Err(status) = s.auth.authorize_http(
            &[Access::Read, Access::Wake],
            "list endpoints",
            authorization(&headers),
        ) {
            return refused(status);
        }
    }
    match s.fleet.endpoints().await {
        Ok(map) => {
            let groups: Vec<TargetGroup> = map
                .into_iter()
                .flat_map(|(model, endpoints)| target_groups(model, endpoints))
                .collect();
            Json(groups).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// One group per replica, so each target carries its own labels: `model`,
/// `node`, `replica`, `gpus` (indices, comma-separated) and
/// `__meta_gpufleet_state` (`ready` or `retiring`), which load balancers
/// filter on and Prometheus relabelling can drop before the replica stops.
/// A model with no ready replica is one group with no targets, so readers
/// still see that it exists.
fn target_groups(model: String, endpoints: Vec<Endpoint>) -> Vec<TargetGroup> {
    if endpoints.is_empty() {
        return vec![TargetGroup {
            targets: Vec::new(),
            labels: [("model".to_string(), model)].into_iter().collect(),
        }];
    }
    endpoints
        .into_iter()
        .map(|e| {
            let gpus: Vec<String> = e.gpus.iter().map(u32::to_string).collect();
            let state = if e.retiring { "retiring" } else { "ready" };
            TargetGroup {
                targets: vec![e.address],
                labels: [
                    ("model", model.clone()),
                    ("node", e.node),
                    ("replica", e.replica),
                    ("gpus", gpus.join(",")),
                    ("__meta_gpufleet_state", state.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            }
        })
        .collect()
}

/// For a gateway that sees a request for a sleeping model: bring it to at
/// least one replica now. 202 with the model's state; 404 for an unknown
/// model; 409 when it is pinned.
async fn wake(
    State(s): State<HttpState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    use super::fleet::FleetError;
    if let Err(status) =
        s.auth
            .authorize_http(&[Access::Wake], "wake models", authorization(&headers))
    {
        return refused(status);
    }
    match s.fleet.wake_model(name).await {
        Ok(m) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "model": m.name,
                "desired_replicas": m.desired_replicas,
                "ready_replicas": m.ready_replicas,
            })),
        )
            .into_response(),
        Err(FleetError::NotFound(m)) => (StatusCode::NOT_FOUND, format!("{m}\n")).into_response(),
        Err(FleetError::InvalidArgument(m)) => {
            (StatusCode::CONFLICT, format!("{m}\n")).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let fleet = &s.fleet;
    let counts = match fleet.counts().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let mut out = String::new();
    let nodes_by_state = ["ready", "suspect", "lost", "cordoned", "draining"]
        .iter()
        .map(|state| {
            let n = counts.nodes.get(state).copied().unwrap_or(0);
            (labels(&[("state", state)]), n.to_string())
        })
        .collect();
    family(
        &mut out,
        "gpufleet_nodes",
        "gauge",
        "Nodes by state.",
        nodes_by_state,
    );
    family(
        &mut out,
        "gpufleet_gpus",
        "gauge",
        "GPUs known to the fleet by health.",
        vec![
            (
                labels(&[("healthy", "true")]),
                counts.gpus_healthy.to_string(),
            ),
            (
                labels(&[("healthy", "false")]),
                counts.gpus_unhealthy.to_string(),
            ),
        ],
    );
    type ModelField = fn(&super::views::ModelCount) -> u32;
    let per_model: [(&str, &str, ModelField); 3] = [
        (
            "gpufleet_model_desired_replicas",
            "Replicas the coordinator wants for the model.",
            |m| m.desired,
        ),
        (
            "gpufleet_model_ready_replicas",
            "Replicas of the model that are ready.",
            |m| m.ready,
        ),
        (
            "gpufleet_model_current_replicas",
            "Replicas of the model placed, in any state.",
            |m| m.current,
        ),
    ];
    for (name, help, field) in per_model {
        let series: Vec<Series> = counts
            .models
            .iter()
            .map(|m| (labels(&[("model", &m.name)]), field(m).to_string()))
            .collect();
        family(&mut out, name, "gauge", help, series);
    }
    let by_state = counts
        .replicas
        .iter()
        .map(|((model, state), n)| (labels(&[("model", model), ("state", state)]), n.to_string()))
        .collect();
    family(
        &mut out,
        "gpufleet_replicas",
        "gauge",
        "Replicas by model and state.",
        by_state,
    );
    let refused = counts
        .refused
        .iter()
        .map(|(node, why, n)| {
            (
                labels(&[("node", node), ("reason", why.as_str())]),
                n.to_string(),
            )
        })
        .collect();
    family(
        &mut out,
        "gpufleet_replica_claims_refused_total",
        "counter",
        "Replicas a node reported that the coordinator did not believe: assigned to another node, or (on adoption) without a valid assignment token.",
        refused,
    );
    let degraded = u8::from(s.store_health.borrow().is_some());
    family(
        &mut out,
        "gpufleet_store_degraded",
        "gauge",
        "1 while the store cannot write (a full disk, an I/O error).",
        vec![(String::new(), degraded.to_string())],
    );
    super::limits::write_metrics(&mut out, &s.gates);
    let (queued, capacity) = fleet.queue();
    fleet.metrics().write(&mut out, queued, capacity);
    crate::exposition::ProcessStats::own().write(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
