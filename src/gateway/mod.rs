//! The request gateway: one OpenAI-compatible address for every model of
//! the fleet. It follows the coordinator's routing table over a push
//! stream, holds requests while a model wakes or its replicas are full,
//! sends each to a replica with room, and reports its queue back as an
//! autoscaling signal. Stateless: several can serve one fleet.

pub mod dispatch;
pub mod http;
pub mod link;
pub mod metrics;
pub mod prefix;
pub mod proxy;
pub mod slots;
pub mod status;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{header, HeaderMap, StatusCode};
use tokio::sync::Notify;

use crate::config::{bind_error, GatewayConfig, Misconfigured};
use crate::security::tokens::{check_token, TokenSet};
use crate::security::BearerToken;

use dispatch::{Dispatcher, SharedDispatcher};
use proxy::ApiError;

/// A replica that does not accept a connection within this is failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to replicas idle longer than this are closed.
const REPLICA_IDLE: Duration = Duration::from_secs(4);

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The client that forwards requests: HTTP/1.1 over kept-alive connections.
pub type Upstream = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<axum::body::Bytes>,
>;

/// What every request handler shares.
pub struct Gateway {
    pub cfg: GatewayConfig,
    pub name: String,
    pub dispatcher: SharedDispatcher,
    pub metrics: metrics::Metrics,
    /// To the replicas, for questions of the gateway's own (their slots).
    pub client: reqwest::Client,
    /// To the replicas, for clients' requests: hyper's pooled client
    /// itself, as the proxy's hot path needs none of reqwest's conveniences.
    pub upstream: Upstream,
    /// Asks the link to report now (a request found its model asleep).
    pub wake: Notify,
    /// Whether the routing stream is up.
    pub connected: AtomicBool,
    client_tokens: Option<TokenSet>,
}

impl Gateway {
    /// Checks a client's bearer token when tokens are configured.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(tokens) = &self.client_tokens else {
            return Ok(());
        };
        let refuse = |message: &str| ApiError {
            status: StatusCode::UNAUTHORIZED,
            reason: "unauthorized",
            model: String::new(),
            message: message.to_string(),
            retry_after: None,
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| refuse("this gateway requires `Authorization: Bearer <token>`"))?;
        if check_token(token).is_err() || tokens.access_of(token).is_none() {
            return Err(refuse("the bearer token is not known to this gateway"));
        }
        Ok(())
    }
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _watchdog = crate::notify::spawn_watchdog();
    // Files the config names that cannot be used are config problems (exit 64).
    let client_tokens = match &cfg.client_tokens_file {
        Some(path) => Some(TokenSet::load(path).map_err(Misconfigured::wrap)?),
        None => None,
    };
    let token = BearerToken::from_sources(cfg.coordinator_token_file.as_deref(), None)
        .map_err(Misconfigured::wrap)?;
    // The config ties a CA to an https:// coordinator URL.
    let tls = match &cfg.tls.ca {
        Some(ca) => {
            let identity = cfg.tls.cert.as_deref().zip(cfg.tls.key.as_deref());
            Some(crate::security::ClientTls::new(ca, identity).map_err(Misconfigured::wrap)?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| bind_error(e, format!("clients on {} (listen)", cfg.listen)))?;
    let local = listener.local_addr()?;
    let name = cfg.name.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "gateway".into());
        format!("{host}:{}", local.port())
    });
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // Below the engines' own keep-alive timeout (5 s in llama.cpp and
        // in uvicorn, which serves vLLM): a pooled connection the replica
        // is closing right now fails the request before any byte, which
        // costs a retry and passes the replica over for a while.
        .pool_idle_timeout(REPLICA_IDLE)
        .build()
        .context("building the HTTP client for replicas")?;
    let upstream = {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // Token streams are many small writes: each goes out at once.
        connector.set_nodelay(true);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(REPLICA_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector)
    };
    let gw = Arc::new(Gateway {
        dispatcher: SharedDispatcher::new(Dispatcher::new(
            cfg.queue_capacity,
            cfg.default_max_concurrency,
            cfg.routing,
        )),
        metrics: metrics::Metrics::default(),
        client,
        upstream,
        wake: Notify::new(),
        connected: AtomicBool::new(false),
        client_tokens,
        name,
        cfg,
    });
    tracing::info!(listen = %local, coordinator = %gw.cfg.coordinator, name = %gw.name, "gateway listening");
    if gw.client_tokens.is_none() {
        tracing::warn!(
            "no [auth] client_tokens_file: any client that reaches the gateway may send requests"
        );
    }
    let link = tokio::spawn(link::run(
        gw.clone(),
        link::LinkSettings {
            coordinator: gw.cfg.coordinator.clone(),
            tls,
            token,
        },
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::serve(listener, gw.clone(), stop_rx));
    crate::notify::ready("routing");
    shutdown.await;
    tracing::info!("shutting down: no new connections; letting requests in flight finish");
    crate::notify::stopping();
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while gw
            .dispatcher
            .demand()
            .values()
            .any(|d| d.in_flight > 0 || d.queued > 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    link.abort();
    Ok(())
}
