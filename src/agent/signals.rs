//! Serving signals: every scrape interval, each ready replica's own metrics
//! endpoint is scraped and turned into waiting/running/p95/KV-cache signals.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::{ReplicaState, ReplicaStatus, ServingSignals};

use super::scrape::{self, Scraper};

const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

/// Runs until the replica status channel closes; publishes signals by
/// replica id.
pub async fn run(
    mut replicas: watch::Receiver<Vec<ReplicaStatus>>,
    metrics_paths: watch::Receiver<BTreeMap<String, (String, String)>>,
    out: watch::Sender<BTreeMap<String, ServingSignals>>,
    interval: Duration,
) {
    let client = match reqwest::Client::builder().timeout(SCRAPE_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the metrics client; no serving signals");
            return;
        }
    };
    let mut scrapers: BTreeMap<String, Scraper> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Numbers each round, so the coordinator can tell a new measurement from
    // the same one reported again.
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        round += 1;
        if replicas.has_changed().is_err() {
            return;
        }
        let ready: Vec<ReplicaStatus> = replicas
            .borrow_and_update()
            .iter()
            .filter(|r| r.state == ReplicaState::Ready && r.port != 0)
            .cloned()
            .collect();
        scrapers.retain(|id, _| ready.iter().any(|r| &r.id == id));
        let paths = metrics_paths.borrow().clone();
        let fetches = ready.iter().filter_map(|r| {
            let (preset, path) = paths.get(&r.id)?.clone();
            let port = if r.metrics_port != 0 {
                r.metrics_port
            } else {
                r.port
            };
            let url = format!("http://127.0.0.1:{port}{path}");
            let client = client.clone();
            Some(async move {
                (
                    r.id.clone(),
                    preset,
                    scrape::fetch(&client, &url, SCRAPE_TIMEOUT).await,
                )
            })
        });
        let results = futures_util::future::join_all(fetches).await;
        let now = Instant::now();
        let mut signals = BTreeMap::new();
        for (id, preset, body) in results {
            let scraper = match scrapers.entry(id.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    match Scraper::new(&preset, scrape::DEFAULT_WINDOW) {
                        Ok(s) => v.insert(s),
                        Err(e) => {
                            tracing::warn!(replica_id = %id, error = %e, "no scraper for this replica");
                            continue;
                        }
                    }
                }
            };
            let was_failing = scraper.failing();
            let mut s = match body
                .map_err(|e| scraper.explain_fetch_error(e))
                .and_then(|b| scraper.observe(&b, now))
            {
                Ok(s) => {
                    if was_failing {
                        tracing::info!(replica_id = %id, "metrics scrape recovered");
                    }
                    s
                }
                Err(e) => {
                    // Loud once, then quiet: a replica the autoscaler cannot
                    // see is worth a warning, not one every half second.
                    if was_failing {
                        tracing::debug!(replica_id = %id, error = %e, "metrics scrape still failing");
                    } else {
                        tracing::warn!(replica_id = %id, error = %e, "metrics scrape failing; the autoscaler cannot see this replica's load");
                    }
                    scraper.failed(&e)
                }
            };
            s.scrape_seq = round;
            signals.insert(id, s);
        }
        if out.send(signals).is_err() {
            return;
        }
    }
}
