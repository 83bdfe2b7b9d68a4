//! The gateway's HTTP server: its own accept loop (hyper with a timer, so a
//! client that trickles its request head is cut off) serving the OpenAI
//! routes, `/v1/models`, `/metrics`, `/healthz` and `/status`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;

use super::dispatch::ModelSnapshot;
use super::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(gw)
}

/// OpenAI clients read `error.message`: an empty 404 or 405 left them
/// nothing to say.
async fn unknown_path(req: Request) -> Response {
    super::proxy::ApiError::refusal(
        StatusCode::NOT_FOUND,
        "unknown_path",
        format!(
            "the gateway serves no {}; it serves POST /v1/completions, POST /v1/chat/completions and GET /v1/models",
            crate::api::capped(req.uri().path().to_string(), 200)
        ),
    )
    .into_response()
}

async fn wrong_method(req: Request) -> Response {
    super::proxy::ApiError::refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not served on {}: POST /v1/completions and /v1/chat/completions, GET the others",
            req.method(),
            crate::api::capped(req.uri().path().to_string(), 200)
        ),
    )
    .into_response()
}

/// Accepts until `stop` turns true; each connection is served on its own
/// task, so no client can hold up another.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let read_timeout = gw.cfg.request_read_timeout;
    let app = router(gw);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, not spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("client connection ended: {e}");
            }
        });
    }
}

async fn completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    super::proxy::forward(gw, "/v1/completions", req).await
}

async fn chat_completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    super::proxy::forward(gw, "/v1/chat/completions", req).await
}

/// OpenAI's model list: every model of the fleet, awake or not.
async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gw.authorize(&headers) {
        return e.into_response();
    }
    // An empty list would say the fleet has no models.
    if !gw.dispatcher.has_table() {
        return super::proxy::no_routes(&gw, "").into_response();
    }
    let data: Vec<serde_json::Value> = gw.dispatcher.snapshot().iter().map(model_object).collect();
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// OpenAI's model object for one model (`GET /v1/models/{model}`), 404
/// naming the fleet's models for one it does not serve.
async fn model(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = gw.authorize(&headers) {
        return e.into_response();
    }
    let name = crate::api::capped(name, 200);
    if !gw.dispatcher.has_table() {
        return super::proxy::no_routes(&gw, &name).into_response();
    }
    let models = gw.dispatcher.snapshot();
    match models.iter().find(|m| m.model == name) {
        Some(m) => Json(model_object(m)).into_response(),
        None => {
            let known: Vec<String> = models.into_iter().map(|m| m.model).collect();
            super::proxy::unknown_model(&name, &known).into_response()
        }
    }
}

fn model_object(m: &ModelSnapshot) -> serde_json::Value {
    serde_json::json!({
        "id": m.model,
        "object": "model",
        "created": m.known_since,
        "owned_by": "gpufleet",
        "ready_replicas": m.replicas.len(),
    })
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let body = gw.metrics.render(
        &gw.dispatcher.snapshot(),
        gw.connected.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Healthy once the gateway has a routing table to route by.
async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.dispatcher.has_table() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no routing table from the coordinator yet\n",
        )
            .into_response()
    }
}

async fn status(State(gw): State<Arc<Gateway>>) -> Response {
    Json(super::status::GatewayStatus {
        name: gw.name.clone(),
        coordinator: gw.cfg.coordinator.clone(),
        connected: gw.connected.load(Ordering::Relaxed),
        models: gw.dispatcher.snapshot(),
    })
    .into_response()
}
