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
