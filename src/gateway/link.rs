//! The gateway's stream to the coordinator: the routing table comes down
//! (pushed whenever it changes), the gateway's demand goes up every report
//! interval and at once when a request finds its model asleep. While the
//! coordinator is away the gateway keeps routing on the last table it had.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::link::{backoff, Dial, Ended};
use crate::domain::{GatewayReport, RoutingTable};
use crate::security::{BearerToken, ClientTls};
use crate::wire::pb;

use super::dispatch::SlotsQuery;
use super::Gateway;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// How often demand is checked for a step worth reporting before the
/// report interval is up.
const STEP_CHECK: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// How the gateway reaches the coordinator.
pub struct LinkSettings {
    pub coordinator: String,
    pub tls: Option<ClientTls>,
    pub token: BearerToken,
}

/// Keeps the stream up until the process ends; with several coordinators
/// (comma-separated), to whichever leads.
pub async fn run(gw: Arc<Gateway>, link: LinkSettings) {
    let mut failures: u32 = 0;
    let list: Vec<String> = link.coordinator.split(',').map(str::to_string).collect();
    let mut dial = Dial::new(&list);
    loop {
        let started = Instant::now();
        let target = dial.target();
        let outcome = stream(&gw, &link, &target).await;
        gw.connected.store(false, Ordering::Relaxed);
        if started.elapsed() > Duration::from_secs(10) {
            failures = 0;
        }
        let (message, leader) = match outcome {
            Ok(()) => ("the coordinator ended the stream".to_string(), None),
            Err(Ended { message, leader }) => (message, leader),
        };
        if let Some(leader) = leader.as_ref().filter(|l| !l.is_empty() && **l != target) {
            if dial.redirect(leader.clone()) {
                tracing::info!(follower = %target, leader = %leader, "the coordinator is a follower; dialling the leader");
                continue;
            }
        }
        dial.advance();
        let delay = if dial.tried_all() {
            let d = backoff(failures, BACKOFF_BASE, BACKOFF_CAP, rand::random());
            failures = failures.saturating_add(1);
            d
        } else {
            BACKOFF_BASE
        };
        if failures <= 1 || failures.is_multiple_of(20) {
            tracing::warn!(coordinator = %target, retry_in = ?delay, "{message}; routing on the last known replicas");
        } else {
            tracing::debug!(coordinator = %target, retry_in = ?delay, "{message}");
        }
        tokio::time::sleep(delay).await;
    }
}

async fn stream(gw: &Arc<Gateway>, link: &LinkSettings, coordinator: &str) -> Result<(), Ended> {
    let plain = Ended::from;
    let endpoint = crate::security::tls::endpoint(coordinator, link.tls.as_ref())
        .map_err(|e| plain(format!("coordinator URL `{coordinator}` is invalid: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(crate::coordinator::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::coordinator::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = crate::security::tls::connect(endpoint, link.tls.as_ref())
        .await
        .map_err(|e| {
            plain(format!(
                "cannot reach the coordinator at {coordinator}: {}",
                crate::wire::error_chain(&e)
            ))
        })?;
    let mut client =
        pb::gateway_client::GatewayClient::with_interceptor(channel, link.token.clone());
    let (tx, rx) = mpsc::channel::<pb::GatewayReport>(4);
    // The first report goes out with the stream, so a queue is known at once.
    let mut last = report(gw);
    let _ = tx.try_send(pb::GatewayReport::from(&last));
    let mut inbound = client
        .routes(ReceiverStream::new(rx))
        .await
        .map_err(|s| Ended {
            message: format!(
                "the coordinator refused the routing stream: {}",
                s.message()
            ),
            leader: crate::wire::leader_of(&s),
        })?
        .into_inner();
    tracing::info!(coordinator = %coordinator, "routing stream open");
    let mut tick = tokio::time::interval(gw.cfg.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(STEP_CHECK);
    let mut confirm = false;
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(table)) => {
                    for q in gw.dispatcher.apply_table(&RoutingTable::from(table)) {
                        ask_slots(gw.clone(), q);
                    }
                    // Connected means routing on the coordinator's current table.
                    gw.connected.store(true, Ordering::Relaxed);
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(format!("routing stream broke: {}", s.message()).into()),
            },
            _ = tick.tick() => last = send(&tx, report(gw)).await?,
            _ = gw.wake.notified() => last = send(&tx, report(gw)).await?,
            _ = check.tick() => {
                // A step in demand goes out now: the autoscaler decides on
                // it without waiting for the report interval. The count
                // after a step goes out too, one check later: the newer
                // measurement that confirms a surge.
                let now = report(gw);
                let stepped = now.moved_from(&last);
                if stepped || confirm {
                    last = send(&tx, now).await?;
                    tick.reset();
                    confirm = stepped;
                }
            }
        }
    }
}

/// Asks a new replica's engine for its slot count, off the link's task:
/// the replica takes requests once the engine answered or could not.
fn ask_slots(gw: Arc<Gateway>, q: SlotsQuery) {
    tokio::spawn(async move {
        let slots = super::slots::engine_slots(&gw.client, &q.address).await;
        match slots {
            Some(n) => {
                tracing::info!(model = %q.model, replica_id = %q.replica, slots = n, "the engine serves {n} requests at once")
            }
            None => {
                tracing::debug!(model = %q.model, replica_id = %q.replica, "the engine does not say its slots; default_max_concurrency applies")
            }
        }
        gw.dispatcher.learn_slots(&q.model, &q.replica, slots);
    });
}

async fn send(
    tx: &mpsc::Sender<pb::GatewayReport>,
    report: GatewayReport,
) -> Result<GatewayReport, String> {
    tx.send(pb::GatewayReport::from(&report))
        .await
        .map_err(|_| "the routing stream closed".to_string())?;
    Ok(report)
}

fn report(gw: &Gateway) -> GatewayReport {
    GatewayReport {
        gateway: gw.name.clone(),
        models: gw.dispatcher.demand(),
    }
}
