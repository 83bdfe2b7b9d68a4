//! The fleet's side of its gateways: the routing table they are pushed
//! (ready, non-retiring replicas with their live load) and the demand they
//! report back, which the autoscaler reads as a signal and which wakes a
//! model at zero.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::domain::{GatewayReport, ModelRoutes, RouteTarget, RoutingTable};

use super::fleet::Fleet;

/// A gateway's report counts for this long; gateways report every few
/// hundred milliseconds, so older means it is gone or stuck.
pub const GATEWAY_DEMAND_STALE: Duration = Duration::from_secs(2);

/// One connected gateway's latest report.
pub struct GatewayLink {
    pub report: GatewayReport,
    pub at: Instant,
    /// Reports received on this link: each one is a new measurement.
    pub seq: u64,
}

/// The demand of every fresh gateway for one model, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GatewayDemand {
    pub queued: u32,
    pub in_flight: u32,
    pub arrivals_per_s: f64,
    /// The least recent of the reports summed: all of them are at least this new.
    pub oldest: Option<Instant>,
    /// Changes with every report summed in.
    pub seq: u64,
}

impl GatewayDemand {
    pub fn held_and_sent(&self) -> f64 {
        f64::from(self.queued) + f64::from(self.in_flight)
    }
}

impl Fleet {
    /// Each model's ready replicas that are not retiring (the endpoints
    /// without the retiring ones), with their last scraped load.
    pub(super) fn routing_table(&self) -> RoutingTable {
        let mut models: BTreeMap<String, ModelRoutes> = BTreeMap::new();
        for (name, endpoints) in self.endpoints() {
            let Some(m) = self.models.get(&name) else {
                continue;
            };
            let mut replicas: Vec<RouteTarget> = endpoints
                .into_iter()
                .filter(|e| !e.retiring)
                .map(|e| {
                    let ongoing = self
                        .nodes
                        .get(&e.node)
                        .and_then(|n| n.replicas.iter().find(|r| r.id == e.replica))
                        .filter(|r| r.signals.fresh)
                        .map_or(0.0, |r| r.signals.ongoing());
                    RouteTarget {
                        id: e.replica,
                        node: e.node,
                        address: e.address,
                        ongoing,
                    }
                })
                .collect();
            replicas.sort_by(|a, b| a.id.cmp(&b.id));
            let routes = ModelRoutes {
                max_concurrency: m.spec.replica_concurrency(),
                desired_replicas: m.desired,
                pinned_replicas: m.record.pinned_replicas,
                replicas,
            };
            models.insert(name, routes);
        }
        RoutingTable { models }
    }

    /// Tells the gateways, if the table changed.
    pub(super) fn publish_routes(&mut self) {
        self.routes_stale = false;
        self.routes_published = std::time::Instant::now();
        // Nobody follows the table: building it (the whole fleet) can wait
        // for the first gateway, which publishes it on connecting.
        if self.routes_tx.receiver_count() == 0 {
            return;
        }
        let table = self.routing_table();
        self.routes_tx.send_if_modified(|current| {
            let changed = *current != table;
            if changed {
                *current = table;
            }
            changed
        });
    }

    pub(super) fn gateway_connected(
        &mut self,
    ) -> (u64, tokio::sync::watch::Receiver<RoutingTable>) {
        let id = self.next_gateway;
        self.next_gateway += 1;
        let rx = self.routes_tx.subscribe();
        // Skipped while no gateway followed: bring it up to date first.
        self.publish_routes();
        (id, rx)
    }

    /// A gateway's report: kept as that gateway's demand; a queue for a
    /// model at zero wakes it now.
    pub(super) fn gateway_report(&mut self, link: u64, report: GatewayReport, now: Instant) {
        let to_wake: Vec<String> = report
            .models
            .iter()
            .filter(|(name, d)| {
                d.queued > 0
                    && self.models.get(*name).is_some_and(|m| {
                        m.desired == 0
                            && m.record.pinned_replicas.is_none()
                            && m.spec.scaling.is_some()
                    })
            })
            .map(|(name, _)| name.clone())
            .collect();
        let seq = self.gateways.get(&link).map_or(1, |g| g.seq + 1);
        let stepped = self
            .gateways
            .get(&link)
            .is_none_or(|g| report.moved_from(&g.report));
        self.gateways.insert(
            link,
            GatewayLink {
                report,
                at: now,
                seq,
            },
        );
        for name in to_wake {
            if self.wake(&name, now).is_ok() {
                self.tick_soon(now);
            }
        }
        if stepped || self.awaiting_measurement {
            // A step in demand is decided on now, not at the next tick; so
            // is a surge that awaited this newer measurement to confirm it.
            self.tick_soon(now);
        }
    }

    pub(super) fn gateway_disconnected(&mut self, link: u64) {
        self.gateways.remove(&link);
    }

    /// What the gateways that reported lately hold and send for `model`.
    pub(super) fn gateway_demand(&self, model: &str, now: Instant) -> Option<GatewayDemand> {
        let mut sum: Option<GatewayDemand> = None;
        for g in self.gateways.values() {
            if now.saturating_duration_since(g.at) > GATEWAY_DEMAND_STALE {
                continue;
            }
            let d = g.report.models.get(model).copied().unwrap_or_default();
            let s = sum.get_or_insert_with(GatewayDemand::default);
            s.queued = s.queued.saturating_add(d.queued);
            s.in_flight = s.in_flight.saturating_add(d.in_flight);
            s.arrivals_per_s += d.arrivals_per_s;
            s.oldest = Some(s.oldest.map_or(g.at, |o| o.min(g.at)));
            s.seq = s.seq.wrapping_mul(31).wrapping_add(g.seq);
        }
        sum
    }
}
