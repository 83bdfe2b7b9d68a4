//! The gateway's HTTP server: one accept loop handing each connection to
//! one of a few request threads (hyper with a timer, so a client that
//! trickles its request head is cut off), serving the OpenAI routes,
//! `/v1/models`, `/metrics`, `/healthz` and `/status`.
//!
//! Each request thread runs a single-threaded runtime of its own with its
//! own pooled connections to the replicas: a request, the replica
//! connection it goes out on and the client connection it came in on are
//! served by one thread, so passing the request and its answer between
//! them wakes no other thread (a multi-threaded runtime woke an idle
//! worker for most hand-offs, a futex call and a context switch each).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;

use super::{Gateway, Upstream};

/// What the handlers of one request thread share: the gateway, and that
/// thread's own connections to the replicas.
pub struct Lane {
    pub gw: Arc<Gateway>,
    pub upstream: Upstream,
}

pub fn router(lane: Arc<Lane>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(lane)
}

/// How many request threads: one per CPU, or `TOKIO_WORKER_THREADS` (as
/// for the rest of the runtime) when set.
pub fn request_threads() -> usize {
    threads_from(
        std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
        std::thread::available_parallelism().ok().map(|n| n.get()),
    )
}

/// `setting` when it is a positive count, else `cpus`, else 1.
fn threads_from(setting: Option<&str>, cpus: Option<usize>) -> usize {
    setting
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or(cpus)
        .unwrap_or(1)
}

/// The request threads, fed connections by [`serve`]; they serve the
/// connections they hold until `halt` turns true.
pub struct Lanes {
    feeds: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
}

impl Lanes {
    pub fn start(
        gw: &Arc<Gateway>,
        threads: usize,
        halt: &tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Lanes> {
        let mut feeds = Vec::with_capacity(threads);
        for n in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let gw = gw.clone();
            let mut halt = halt.clone();
            std::thread::Builder::new()
                .name(format!("gateway-lane-{n}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let lane = Arc::new(Lane {
                            upstream: super::upstream_client(),
                            gw,
                        });
                        tokio::select! {
                            _ = serve_lane(lane, rx) => {}
                            _ = halt.wait_for(|h| *h) => {}
                        }
                        // Connections still open keep being served until
                        // the gateway halts.
                        let _ = halt.wait_for(|h| *h).await;
                    })
                })?;
            feeds.push(tx);
        }
        Ok(Lanes { feeds })
    }
}

/// Serves the connections handed to this thread, each on its own task.
async fn serve_lane(lane: Arc<Lane>, mut rx: mpsc::UnboundedReceiver<std::net::TcpStream>) {
    let read_timeout = lane.gw.cfg.request_read_timeout;
    let app = router(lane);
    while let Some(stream) = rx.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("taking over a client connection failed: {e}");
                continue;
            }
        };
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

/// Accepts until `stop` turns true and hands the connections to the
/// request threads in turn; no client can hold up another.
pub async fn serve(
    listener: tokio::net::TcpListener,
    lanes: Lanes,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut next = 0;
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
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("handing over a client connection failed: {e}");
                continue;
            }
        };
        // A request thread ends only when the gateway halts, after this.
        let _ = lanes.feeds[next % lanes.feeds.len()].send(stream);
        next = next.wrapping_add(1);
    }
}

async fn completions(State(lane): State<Arc<Lane>>, req: Request) -> Response {
    super::proxy::forward(&lane, "/v1/completions", req).await
}

async fn chat_completions(State(lane): State<Arc<Lane>>, req: Request) -> Response {
    super::proxy::forward(&lane, "/v1/chat/completions", req).await
}

/// OpenAI's model list: every model of the fleet, awake or not.
async fn models(State(lane): State<Arc<Lane>>, headers: HeaderMap) -> Response {
    let gw = &lane.gw;
    if let Err(e) = gw.authorize(&headers) {
        return e.into_response();
    }
    let data: Vec<serde_json::Value> = gw
        .dispatcher
        .snapshot()
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "id": m.model,
                "object": "model",
                "owned_by": "gpufleet",
                "ready_replicas": m.replicas.len(),
            })
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(lane): State<Arc<Lane>>) -> Response {
    let gw = &lane.gw;
    let body = gw.metrics.render(
        &gw.dispatcher.snapshot(),
        gw.connected.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Healthy once the gateway has a routing table to route by.
async fn healthz(State(lane): State<Arc<Lane>>) -> Response {
    let gw = &lane.gw;
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

async fn status(State(lane): State<Arc<Lane>>) -> Response {
    let gw = &lane.gw;
    Json(super::status::GatewayStatus {
        name: gw.name.clone(),
        coordinator: gw.cfg.coordinator.clone(),
        connected: gw.connected.load(Ordering::Relaxed),
        models: gw.dispatcher.snapshot(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::threads_from;

    #[test]
    fn one_request_thread_per_cpu_unless_set() {
        assert_eq!(threads_from(None, Some(8)), 8);
        assert_eq!(threads_from(Some("2"), Some(8)), 2);
        assert_eq!(threads_from(Some(" 3 "), Some(8)), 3);
        assert_eq!(threads_from(Some("0"), Some(8)), 8);
        assert_eq!(threads_from(Some("many"), Some(8)), 8);
        assert_eq!(threads_from(None, None), 1);
    }
}
