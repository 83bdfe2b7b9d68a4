//! What a gateway needs from the fleet (each model's ready replicas and
//! their load) and what it tells the fleet back (its demand per model).

use std::collections::BTreeMap;

/// The complete routing picture the coordinator pushes to gateways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingTable {
    /// Every applied model, by name, with or without replicas.
    pub models: BTreeMap<String, ModelRoutes>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRoutes {
    /// Requests one replica takes at once, from the spec; `None`: the
    /// gateway's default.
    pub max_concurrency: Option<u32>,
    pub desired_replicas: u32,
    /// Set while the operator pins the count: a gateway cannot wake it.
    pub pinned_replicas: Option<u32>,
    /// Ready replicas that are not retiring, ordered by id.
    pub replicas: Vec<RouteTarget>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTarget {
    pub id: String,
    pub node: String,
    /// `host:port` of the replica's HTTP server.
    pub address: String,
    /// Waiting + running at the last scrape, from every client.
    pub ongoing: f64,
}

/// One gateway's demand for one model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelDemand {
    /// Held at the gateway, waiting for a replica with room.
    pub queued: u32,
    /// Sent to replicas, not finished.
    pub in_flight: u32,
    pub arrivals_per_s: f64,
}

/// What a gateway reports every few hundred milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayReport {
    pub gateway: String,
    pub models: BTreeMap<String, ModelDemand>,
}

impl GatewayReport {
    /// Whether demand for some model moved enough since `before` to act on
    /// now: by 2 requests and a quarter (held + in flight), the agents'
    /// rule for an early report.
    pub fn moved_from(&self, before: &GatewayReport) -> bool {
        let total = |r: &GatewayReport, m: &str| {
            r.models
                .get(m)
                .map_or(0.0, |d| f64::from(d.queued) + f64::from(d.in_flight))
        };
        before.models.keys().chain(self.models.keys()).any(|m| {
            let (a, b) = (total(before, m), total(self, m));
            (b - a).abs() >= 2.0 && (b - a).abs() >= a.max(b) * 0.25
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(queued: u32, in_flight: u32) -> GatewayReport {
        let mut r = GatewayReport::default();
        r.models.insert(
            "m".into(),
            ModelDemand {
                queued,
                in_flight,
                arrivals_per_s: 0.0,
            },
        );
        r
    }

    #[test]
    fn a_step_in_demand_is_news_and_jitter_is_not() {
        assert!(report(0, 4).moved_from(&report(0, 0)));
        assert!(report(6, 8).moved_from(&report(0, 8)));
        assert!(!report(0, 9).moved_from(&report(0, 8)));
        assert!(!report(3, 40).moved_from(&report(0, 40)));
        assert!(GatewayReport::default().moved_from(&report(0, 3)));
    }
}
