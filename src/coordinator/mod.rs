//! The fleet brain: holds desired state, decides replica counts and places
//! them, and tells each agent what to run.

pub mod apply;
pub mod autoscale;
pub mod decide;
#[cfg(test)]
mod decide_tests;
pub mod election;
mod event_log;
pub mod fleet;
#[cfg(test)]
mod fleet_tests;
pub mod gateways;
pub mod handle;
mod host_room;
pub mod http;
#[cfg(test)]
mod invariants_tests;
pub mod leading;
pub mod limits;
pub mod metrics;
pub mod nodes;
pub mod operations;
pub mod placement;
mod placement_view;
mod plan;
pub mod predict;
pub mod reconcile;
pub mod scaling;
pub mod scrapes;
pub mod service;
mod state;
pub mod store;
pub mod trust;
mod views;
pub mod warmth;

use std::future::Future;
use std::time::Duration;

use crate::config::{CoordinatorConfig, Misconfigured, StoreBackend};
use crate::wire::pb;

use fleet::{Fleet, FleetSettings};

/// Upper bound on any replica count an operator can ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// HTTP/2 keepalive: well under the default 10 s suspect time, so a dead
/// connection is noticed before the node is judged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one client connection may hold open on the gRPC port: far more
/// than the CLI or an agent uses, few enough that one connection cannot
/// hold thousands.
const GRPC_STREAMS_PER_CONNECTION: u32 = 128;

/// How long open agent sessions may take to close after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(
    cfg: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _watchdog = crate::notify::spawn_watchdog();
    let fd_limit = limits::raise_fd_limit();
    let connection_limits = limits::fit_to_fds(cfg.limits, fd_limit);
    let settings = FleetSettings {
        tick: cfg.tick,
        suspect_after: cfg.node_suspect_after,
        lost_after: cfg.node_lost_after,
        reconnect_grace: cfg.reconnect_grace,
        retire_grace: cfg.retire_grace,
        event_capacity: cfg.event_log_capacity,
        allowed_env: cfg.allowed_env.clone(),
        adopt_unsigned_replicas: cfg.adopt_unsigned_replicas,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (fleet, mut fleet_task, fleet_stop, store_health, ha) = match &cfg.store {
        StoreBackend::Redb => {
            let store = store::RedbStore::open(&cfg.data_dir)?;
            let store_health = store.health();
            // A snapshot of what opened and verified: a later damage of the file
            // is then a restore away, not a lost fleet.
            if let Err(e) = store::snapshot(&store, &cfg.data_dir, cfg.store_snapshots) {
                tracing::warn!(error = %e, "no store snapshot this start");
            }
            let (fleet, task) = Fleet::spawn(settings, Box::new(store))
                .map_err(|e| anyhow::anyhow!("cannot load the fleet state: {e}"))?;
            let (ended, stop) = task.into_parts();
            (fleet, ended, Some(stop), store_health, None)
        }
        StoreBackend::Etcd(etcd) => {
            let l = leading::start(settings, (**etcd).clone(), stopped(stop_rx.clone())).await?;
            tracing::info!(name = %etcd.name, prefix = %etcd.prefix, endpoints = %l.etcd.endpoints(), "joined the coordinators on etcd");
            let ha = http::HaState {
                role: l.role.clone(),
                etcd: l.etcd.clone(),
                keys: l.keys.clone(),
            };
            (
                l.fleet,
                l.election,
                None,
                tokio::sync::watch::channel(None).1,
                Some(ha),
            )
        }
    };

    let grpc = bind(cfg.listen, "gRPC", "listen").await?;
    let http = bind(cfg.http_listen, "HTTP", "http_listen").await?;
    tracing::info!(
        grpc = %grpc.local_addr()?,
        http = %http.local_addr()?,
        data_dir = %cfg.data_dir.display(),
        "coordinator listening"
    );
    if cfg.adopt_unsigned_replicas {
        tracing::warn!("adopt_unsigned_replicas = true: replicas reported without an assignment token are adopted, so a node can claim replicas it was never given; turn it off once every agent has reported");
    }
    if !cfg.tls.enabled() {
        tracing::warn!("TLS is not configured: agent sessions and the Control API are plain TCP");
    }

    let control_auth =
        crate::security::ControlAuth::from_settings(&cfg.auth).map_err(Misconfigured::wrap)?;
    let grpc_gate = limits::Gate::new("grpc", connection_limits);
    let http_gate = limits::Gate::new("http", connection_limits);
    let grpc_server = crate::security::tls::grpc_server(&cfg.tls)
        .map_err(Misconfigured::wrap)?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(GRPC_STREAMS_PER_CONNECTION))
        .layer(limits::track_calls(grpc_gate.clone()))
        .add_service(
            service::SessionService::new(fleet.clone(), connection_limits.max_agent_sessions)
                .server(),
        )
        .add_service(control_auth.guard(pb::control_server::ControlServer::new(
            service::ControlService::new(fleet.clone(), ha.clone()),
        )))
        .add_service(control_auth.guard(pb::gateway_server::GatewayServer::new(
            service::GatewayService::new(fleet.clone()),
        )))
        .serve_with_incoming_shutdown(
            limits::incoming(grpc, grpc_gate.clone()),
            stopped(stop_rx.clone()),
        );
    let grpc_task = tokio::spawn(grpc_server);
    let router = http::router(http::HttpState {
        fleet: fleet.clone(),
        auth: control_auth.clone(),
        anonymous_endpoints: cfg.http.anonymous_endpoints,
        store_health,
        gates: vec![grpc_gate, http_gate.clone()],
        ha: ha.clone(),
    });
    let http_task = tokio::spawn(limits::serve_http(
        http,
        router,
        http_gate,
        stopped(stop_rx),
    ));
    crate::notify::ready(&service_status(&fleet).await.unwrap_or_default());
    let status_task = crate::notify::spawn_status(Duration::from_secs(2), {
        let fleet = fleet.clone();
        move || {
            let fleet = fleet.clone();
            async move { service_status(&fleet).await }
        }
    });

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        r = &mut fleet_task => anyhow::bail!("the fleet task ended unexpectedly: {r:?}"),
    }
    crate::notify::stopping();
    drop(status_task);
    let _ = stop_tx.send(true);
    if let Some(stop) = fleet_stop {
        // The fleet task saves what it holds and closes the store, so the
        // next start opens it without a repair.
        stop.stop();
    }
    // With several coordinators the election resigns (its fleet task stops
    // the same way) and revokes its lease: a follower leads now.
    let _ = tokio::time::timeout(Duration::from_secs(2), fleet_task).await;
    // Agent sessions are endless streams: give them a moment, then go.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    })
    .await;
    drop(fleet);
    Ok(())
}

/// Binds a listener; an address that cannot be this host's is a config error.
async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
    key: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::config::bind_error(e, format!("{what} on {addr} ({key})")))
}

/// The line `systemctl status gpufleet-coordinator` shows.
async fn service_status(fleet: &fleet::FleetHandle) -> Option<String> {
    let nodes = fleet.list_nodes().await.ok()?;
    let models = fleet.list_models().await.ok()?;
    let connected = nodes.iter().filter(|n| n.connected).count();
    Some(format!(
        "{} nodes ({connected} connected), {} models",
        nodes.len(),
        models.len()
    ))
}
