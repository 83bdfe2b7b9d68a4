//! The coordinator's HTTP side: `/healthz`, `/metrics` (Prometheus) and
//! `/v1/endpoints` (ready replica addresses in Prometheus http_sd format, for
//! Prometheus itself and for load balancer templates).

use std::fmt::Write;
use std::future::Future;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::fleet::FleetHandle;

#[derive(Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
}

pub fn router(fleet: FleetHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/models/{name}/wake", axum::routing::post(wake))
        .with_state(fleet)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    fleet: FleetHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(fleet))
        .with_graceful_shutdown(shutdown)
        .await
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

async fn healthz(State(fleet): State<FleetHandle>) -> Response {
    // The fleet task answering is what "healthy" means for the coordinator.
    match fleet.list_models().await {
        Ok(_) => "ok\n".into_response(),
        Err(e) => unavailable(e),
    }
}

async fn endpoints(State(fleet): State<FleetHandle>) -> Response {
    match fleet.endpoints().await {
        Ok(map) => {
            let groups: Vec<TargetGroup> = map
                .into_iter()
                .map(|(model, targets)| TargetGroup {
                    targets,
                    labels: [("model".to_string(), model)].into_iter().collect(),
                })
                .collect();
            Json(groups).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// For a gateway that sees a request for a sleeping model: bring it to at
/// least one replica now. 202 with the model's state; 404 for an unknown
/// model; 409 when it is pinned.
async fn wake(
    State(fleet): State<FleetHandle>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    use super::fleet::FleetError;
    match fleet.wake_model(name).await {
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

async fn metrics(State(fleet): State<FleetHandle>) -> Response {
    let (nodes, models, replicas, refused) = match tokio::try_join!(
        fleet.list_nodes(),
        fleet.list_models(),
        fleet.list_replicas(None, None),
        fleet.refused_claims()
    ) {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let mut out = String::new();
    out.push_str("# HELP gpufleet_nodes Nodes by state.\n# TYPE gpufleet_nodes gauge\n");
    for state in ["ready", "suspect", "lost", "cordoned", "draining"] {
        let n = nodes.iter().filter(|n| n.state.as_str() == state).count();
        let _ = writeln!(out, "gpufleet_nodes{{state=\"{state}\"}} {n}");
    }
    out.push_str(
        "# HELP gpufleet_gpus GPUs known to the fleet by health.\n# TYPE gpufleet_gpus gauge\n",
    );
    let gpus: Vec<_> = nodes.iter().flat_map(|n| n.gpus.iter()).collect();
    let healthy = gpus.iter().filter(|g| g.healthy).count();
    let _ = writeln!(out, "gpufleet_gpus{{healthy=\"true\"}} {healthy}");
    let _ = writeln!(
        out,
        "gpufleet_gpus{{healthy=\"false\"}} {}",
        gpus.len() - healthy
    );
    for (metric, help) in [
        (
            "gpufleet_model_desired_replicas",
            "Replicas the coordinator wants for the model.",
        ),
        (
            "gpufleet_model_ready_replicas",
            "Replicas of the model that are ready.",
        ),
        (
            "gpufleet_model_current_replicas",
            "Replicas of the model placed, in any state.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for m in &models {
            let v = match metric {
                "gpufleet_model_desired_replicas" => m.desired_replicas,
                "gpufleet_model_ready_replicas" => m.ready_replicas,
                _ => m.current_replicas,
            };
            let _ = writeln!(out, "{metric}{{model=\"{}\"}} {v}", m.name);
        }
    }
    out.push_str(
        "# HELP gpufleet_replicas Replicas by model and state.\n# TYPE gpufleet_replicas gauge\n",
    );
    let mut counts: std::collections::BTreeMap<(String, &str), u32> = Default::default();
    for r in &replicas {
        *counts
            .entry((r.status.model.clone(), r.status.state.as_str()))
            .or_default() += 1;
    }
    for ((model, state), n) in counts {
        let _ = writeln!(
            out,
            "gpufleet_replicas{{model=\"{model}\",state=\"{state}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP gpufleet_replica_claims_refused_total Replicas a node reported that the coordinator did not believe: assigned to another node, or (on adoption) without a valid assignment token.\n# TYPE gpufleet_replica_claims_refused_total counter\n",
    );
    for (node, why, n) in refused {
        let _ = writeln!(
            out,
            "gpufleet_replica_claims_refused_total{{node=\"{node}\",reason=\"{why}\"}} {n}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
