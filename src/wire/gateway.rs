//! Conversions of the gateway stream's messages.

use super::pb;
use crate::domain::{GatewayReport, ModelDemand, ModelRoutes, RouteTarget, RoutingTable};

impl From<&RoutingTable> for pb::RoutingTable {
    fn from(t: &RoutingTable) -> Self {
        pb::RoutingTable {
            models: t
                .models
                .iter()
                .map(|(name, m)| pb::ModelRoutes {
                    model: name.clone(),
                    max_concurrency: m.max_concurrency.unwrap_or(0),
                    desired_replicas: m.desired_replicas,
                    pinned_replicas: m.pinned_replicas,
                    replicas: m
                        .replicas
                        .iter()
                        .map(|r| pb::RouteTarget {
                            id: r.id.clone(),
                            node: r.node.clone(),
                            address: r.address.clone(),
                            ongoing: r.ongoing,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<pb::RoutingTable> for RoutingTable {
    fn from(t: pb::RoutingTable) -> Self {
        RoutingTable {
            models: t
                .models
                .into_iter()
                .map(|m| {
                    let routes = ModelRoutes {
                        max_concurrency: (m.max_concurrency > 0).then_some(m.max_concurrency),
                        desired_replicas: m.desired_replicas,
                        pinned_replicas: m.pinned_replicas,
                        replicas: m
                            .replicas
                            .into_iter()
                            .map(|r| RouteTarget {
                                id: r.id,
                                node: r.node,
                                address: r.address,
                                ongoing: r.ongoing,
                            })
                            .collect(),
                    };
                    (m.model, routes)
                })
                .collect(),
        }
    }
}

impl From<&GatewayReport> for pb::GatewayReport {
    fn from(r: &GatewayReport) -> Self {
        pb::GatewayReport {
            gateway: r.gateway.clone(),
            models: r
                .models
                .iter()
                .map(|(name, d)| pb::ModelDemand {
                    model: name.clone(),
                    queued: d.queued,
                    in_flight: d.in_flight,
                    arrivals_per_s: d.arrivals_per_s,
                })
                .collect(),
        }
    }
}

impl From<pb::GatewayReport> for GatewayReport {
    fn from(r: pb::GatewayReport) -> Self {
        GatewayReport {
            gateway: r.gateway,
            models: r
                .models
                .into_iter()
                .map(|d| {
                    let finite = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
                    (
                        d.model,
                        ModelDemand {
                            queued: d.queued,
                            in_flight: d.in_flight,
                            arrivals_per_s: finite(d.arrivals_per_s),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_reports_survive_the_wire() {
        let mut table = RoutingTable::default();
        table.models.insert(
            "chat".into(),
            ModelRoutes {
                max_concurrency: Some(4),
                desired_replicas: 2,
                pinned_replicas: None,
                replicas: vec![RouteTarget {
                    id: "chat-1".into(),
                    node: "n1".into(),
                    address: "10.0.0.1:20001".into(),
                    ongoing: 3.0,
                }],
            },
        );
        table.models.insert("idle".into(), ModelRoutes::default());
        assert_eq!(RoutingTable::from(pb::RoutingTable::from(&table)), table);

        let mut report = GatewayReport {
            gateway: "gw".into(),
            ..Default::default()
        };
        report.models.insert(
            "chat".into(),
            ModelDemand {
                queued: 5,
                in_flight: 2,
                arrivals_per_s: 7.5,
            },
        );
        assert_eq!(
            GatewayReport::from(pb::GatewayReport::from(&report)),
            report
        );
        let mut bad = pb::GatewayReport::from(&report);
        bad.models[0].arrivals_per_s = f64::NAN;
        assert_eq!(GatewayReport::from(bad).models["chat"].arrivals_per_s, 0.0);
    }
}
