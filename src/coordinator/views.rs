//! Read-only views of the fleet for operators and load balancers: models,
//! replicas and endpoints.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::api::{ModelView, ReplicaView, SignalsHealth};

use super::fleet::Fleet;
use super::handle::FleetError;
use super::scrapes::health;
use super::state::{Endpoint, INVALID_STORED_SPEC};

impl Fleet {
    /// Ready replicas of each model with their `host:port`, serving or
    /// retiring (every model is listed, with no replicas if it has none).
    pub(super) fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>> {
        let mut out: BTreeMap<String, Vec<Endpoint>> = self
            .models
            .keys()
            .map(|m| (m.clone(), Vec::new()))
            .collect();
        for node in self.nodes.values() {
            let Some(session) = &node.session else {
                continue;
            };
            let host = session
                .address
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| session.address.clone());
            for r in &node.replicas {
                // Only a replica assigned to this very node: another node's
                // report of it (or of an id never placed) lists nothing.
                let Some(planned) = self.plan.get(&r.id).filter(|p| p.node == node.name) else {
                    continue;
                };
                if r.state == crate::domain::ReplicaState::Ready {
                    if let Some(list) = out.get_mut(&r.model) {
                        let host = if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host.clone()
                        };
                        list.push(Endpoint {
                            address: format!("{host}:{}", r.port),
                            node: node.name.clone(),
                            replica: r.id.clone(),
                            gpus: r.gpus.clone(),
                            retiring: planned.retiring_since.is_some(),
                        });
                    }
                }
            }
        }
        out
    }

    /// `replica ls`: the views, or, where a name asked for matches
    /// nothing, an error naming what exists rather than an empty table (a
    /// typo looks like "no replicas"). A deleted model's retiring replicas,
    /// or a forgotten node's, still list.
    pub(super) fn list_replicas(
        &self,
        model: Option<&str>,
        node: Option<&str>,
    ) -> Result<Vec<ReplicaView>, FleetError> {
        let views = self.replica_views(model, node);
        match (model, node) {
            _ if !views.is_empty() => Ok(views),
            (Some(m), _) if !self.models.contains_key(m) => Err(self.model_not_found(m)),
            (_, Some(n)) if !self.nodes.contains_key(n) => Err(self.node_not_found(n)),
            _ => Ok(views),
        }
    }

    pub(super) fn replica_views(
        &self,
        model: Option<&str>,
        node: Option<&str>,
    ) -> Vec<ReplicaView> {
        let mut out = Vec::new();
        // The ids shown so far: a set, not a search of the list per planned
        // replica (quadratic in the fleet's replicas for `replica ls` and
        // every `/metrics` scrape).
        let mut shown: foldhash::HashSet<&str> = Default::default();
        // A view, not a decision: the wall of the moment is fine.
        let now = Instant::now();
        for n in self.nodes.values() {
            if node.is_some_and(|want| want != n.name) {
                continue;
            }
            for r in &n.replicas {
                // A claim not believed is shown as an event, not a replica.
                if model.is_some_and(|want| want != r.model) || n.refused_claims.contains(&r.id) {
                    continue;
                }
                // The token proves an assignment to the coordinator; no
                // operator needs to see it.
                let mut status = r.clone();
                status.assignment_token.clear();
                self.note_retiring(&mut status, now);
                shown.insert(r.id.as_str());
                out.push(ReplicaView {
                    node: n.name.clone(),
                    signals_health: health(r, n.scraped.get(&r.id), now),
                    status,
                });
            }
        }
        // Planned replicas the agent has not reported yet show as starting.
        for p in self.plan.values() {
            if model.is_some_and(|want| want != p.model) || node.is_some_and(|want| want != p.node)
            {
                continue;
            }
            if shown.insert(p.id.as_str()) {
                out.push(starting(p));
            }
        }
        out.sort_by(|a, b| (&a.status.model, &a.status.id).cmp(&(&b.status.model, &b.status.id)));
        out
    }

    /// A retiring replica still runs, and its node reports it ready: its
    /// reason says that it gets no new requests and when it stops.
    fn note_retiring(&self, status: &mut crate::domain::ReplicaStatus, now: Instant) {
        let Some(since) = self.plan.get(&status.id).and_then(|p| p.retiring_since) else {
            return;
        };
        if !status.reason.is_empty() {
            return;
        }
        let left = self
            .settings
            .retire_grace
            .saturating_sub(now.saturating_duration_since(since));
        status.reason = format!(
            "retiring: out of the endpoints, stops in {}",
            super::autoscale::format_span(left)
        );
    }

    /// What the nodes report of each model and its planned replicas not
    /// reported (starting), by model: `replica_views(Some(m), None)` for
    /// every `m` at once, in one walk of the nodes and the plan (each group
    /// sorted by id, as that sorts it).
    fn replica_views_by_model(&self) -> foldhash::HashMap<&str, Vec<ReplicaView>> {
        let mut out: foldhash::HashMap<&str, Vec<ReplicaView>> = Default::default();
        // (model, id) shown: a planned replica is shown as starting unless
        // its node reported it as that model.
        let mut shown: foldhash::HashSet<(&str, &str)> = Default::default();
        let now = Instant::now();
        for n in self.nodes.values() {
            for r in &n.replicas {
                if n.refused_claims.contains(&r.id) {
                    continue;
                }
                let mut status = r.clone();
                status.assignment_token.clear();
                shown.insert((r.model.as_str(), r.id.as_str()));
                out.entry(r.model.as_str()).or_default().push(ReplicaView {
                    node: n.name.clone(),
                    signals_health: health(r, n.scraped.get(&r.id), now),
                    status,
                });
            }
        }
        for p in self.plan.values() {
            if shown.insert((p.model.as_str(), p.id.as_str())) {
                out.entry(p.model.as_str()).or_default().push(starting(p));
            }
        }
        for views in out.values_mut() {
            views.sort_by(|a, b| a.status.id.cmp(&b.status.id));
        }
        out
    }

    /// `model_view(m, false)` of every model, quarantined ones too, by
    /// name: one walk of the fleet for all, not one per model.
    pub(super) fn model_views(&self) -> Vec<ModelView> {
        let by_model = self.replica_views_by_model();
        let mut views: Vec<ModelView> = self
            .models
            .keys()
            .chain(self.quarantined.keys())
            .map(|m| {
                let replicas = by_model.get(m.as_str()).cloned().unwrap_or_default();
                self.model_view_of(m, replicas, false)
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    pub(super) fn model_view(&self, name: &str, with_replicas: bool) -> ModelView {
        self.model_view_of(name, self.replica_views(Some(name), None), with_replicas)
    }

    /// A model's view from its `replicas` (as `replica_views` shows them).
    fn model_view_of(
        &self,
        name: &str,
        replicas: Vec<ReplicaView>,
        with_replicas: bool,
    ) -> ModelView {
        let Some(m) = self.models.get(name) else {
            // Callers check that the model exists: here, quarantined.
            let reason = self
                .quarantined
                .get(name)
                .map(|q| q.reason.as_str())
                .unwrap_or_default();
            let current = self.plan.values().filter(|p| p.model == name).count() as u32;
            return ModelView {
                name: name.to_string(),
                state: INVALID_STORED_SPEC.to_string(),
                current_replicas: current,
                ready_replicas: replicas
                    .iter()
                    .filter(|r| r.status.state == crate::domain::ReplicaState::Ready)
                    .count() as u32,
                placement_problem: format!(
                    "{INVALID_STORED_SPEC}: {reason}; its replicas run untouched until the spec is applied again"
                ),
                replicas: if with_replicas { replicas } else { Vec::new() },
                ..Default::default()
            };
        };
        let planned: Vec<&ReplicaView> = replicas
            .iter()
            .filter(|r| {
                self.plan
                    .get(&r.status.id)
                    .is_some_and(|p| p.retiring_since.is_none())
            })
            .collect();
        ModelView {
            name: name.to_string(),
            min_replicas: m.spec.min_replicas(),
            max_replicas: m.spec.max_replicas(),
            desired_replicas: m.desired,
            ready_replicas: planned
                .iter()
                .filter(|r| r.status.state == crate::domain::ReplicaState::Ready)
                .count() as u32,
            current_replicas: planned.len() as u32,
            pinned_replicas: m.record.pinned_replicas,
            created: crate::api::rfc3339(m.record.created_unix_ms),
            updated: crate::api::rfc3339(m.record.updated_unix_ms),
            placement_problem: m.placement_problem.clone(),
            last_decision: m.last_decision.clone(),
            decision_now: m.decision_now.clone(),
            state: "active".to_string(),
            spec_toml: m.record.spec_toml.clone(),
            created_unix_ms: m.record.created_unix_ms,
            updated_unix_ms: m.record.updated_unix_ms,
            replicas: if with_replicas { replicas } else { Vec::new() },
        }
    }
}

/// A planned replica its node has not reported yet: shown as starting.
fn starting(p: &super::state::PlannedReplica) -> ReplicaView {
    ReplicaView {
        node: p.node.clone(),
        status: crate::domain::ReplicaStatus {
            id: p.id.clone(),
            model: p.model.clone(),
            spec_hash: p.spec_hash.clone(),
            state: crate::domain::ReplicaState::Starting,
            gpus: p.gpus.clone(),
            reason: "assigned; waiting for the agent to start it".into(),
            ..Default::default()
        },
        signals_health: SignalsHealth::NotScraped,
    }
}

/// What `/metrics` reports of the fleet, counted where it lives: the same
/// numbers as the node, model and replica views would give, without
/// building a view (at 10,000 nodes building them held the fleet task for
/// tenths of a second per scrape).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FleetCounts {
    /// Nodes by state (`NodeState::as_str`).
    pub nodes: BTreeMap<&'static str, usize>,
    pub gpus_healthy: usize,
    pub gpus_unhealthy: usize,
    /// Every model, quarantined ones too, by name.
    pub models: Vec<ModelCount>,
    /// Replicas as `replica ls` shows them, by model and state.
    pub replicas: BTreeMap<(String, &'static str), u32>,
    /// Replica reports not believed: (node, why, how many).
    pub refused: Vec<(String, super::trust::Refusal, u64)>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelCount {
    pub name: String,
    pub desired: u32,
    pub ready: u32,
    pub current: u32,
}

impl Fleet {
    pub(super) fn counts(&self, now: Instant) -> FleetCounts {
        use crate::domain::ReplicaState;
        let mut c = FleetCounts::default();
        for n in self.nodes.values() {
            *c.nodes.entry(self.node_state(n, now).as_str()).or_default() += 1;
            for g in &n.gpus {
                if n.gpu_healthy(g) {
                    c.gpus_healthy += 1;
                } else {
                    c.gpus_unhealthy += 1;
                }
            }
        }
        // As `model_view_of` counts from `replica_views_by_model`: a
        // replica a node reports (and is believed) counts as current while
        // planned and not retiring; a planned one no node reports as that
        // model counts as starting.
        let mut per_model: foldhash::HashMap<&str, ModelCount> = Default::default();
        let mut shown: foldhash::HashSet<(&str, &str)> = Default::default();
        let mut shown_ids: foldhash::HashSet<&str> = Default::default();
        let serving = |id: &str| {
            self.plan
                .get(id)
                .is_some_and(|p| p.retiring_since.is_none())
        };
        for n in self.nodes.values() {
            for r in &n.replicas {
                if n.refused_claims.contains(&r.id) {
                    continue;
                }
                shown.insert((r.model.as_str(), r.id.as_str()));
                shown_ids.insert(r.id.as_str());
                *c.replicas
                    .entry((r.model.clone(), r.state.as_str()))
                    .or_default() += 1;
                let m = per_model.entry(r.model.as_str()).or_default();
                let ready = r.state == ReplicaState::Ready;
                if self.models.contains_key(&r.model) {
                    if serving(&r.id) {
                        m.current += 1;
                        m.ready += u32::from(ready);
                    }
                } else {
                    m.ready += u32::from(ready);
                }
            }
        }
        for p in self.plan.values() {
            if shown_ids.insert(p.id.as_str()) {
                *c.replicas
                    .entry((p.model.clone(), ReplicaState::Starting.as_str()))
                    .or_default() += 1;
            }
            let m = per_model.entry(p.model.as_str()).or_default();
            if self.models.contains_key(&p.model) {
                if shown.insert((p.model.as_str(), p.id.as_str())) && serving(&p.id) {
                    m.current += 1;
                }
            } else {
                // A quarantined model counts every planned replica.
                m.current += 1;
            }
        }
        c.models = self
            .models
            .keys()
            .chain(self.quarantined.keys())
            .map(|name| ModelCount {
                name: name.clone(),
                desired: self.models.get(name).map_or(0, |m| m.desired),
                ..per_model.get(name.as_str()).cloned().unwrap_or_default()
            })
            .collect();
        c.models.sort_by(|a, b| a.name.cmp(&b.name));
        c.refused = self
            .refused_claims
            .iter()
            .map(|((node, why), n)| (node.clone(), *why, *n))
            .collect();
        c
    }

    /// `counts` as the views give them: what the tests hold `counts` to.
    #[cfg(test)]
    pub(super) fn counts_from_views(&self, now: Instant) -> FleetCounts {
        let mut c = FleetCounts::default();
        for n in self.nodes.values() {
            let view = n.view(self.node_state(n, now));
            *c.nodes.entry(view.state.as_str()).or_default() += 1;
            for g in &view.gpus {
                if g.healthy {
                    c.gpus_healthy += 1;
                } else {
                    c.gpus_unhealthy += 1;
                }
            }
        }
        c.models = self
            .model_views()
            .into_iter()
            .map(|m| ModelCount {
                name: m.name,
                desired: m.desired_replicas,
                ready: m.ready_replicas,
                current: m.current_replicas,
            })
            .collect();
        for r in self.replica_views(None, None) {
            *c.replicas
                .entry((r.status.model.clone(), r.status.state.as_str()))
                .or_default() += 1;
        }
        c.refused = self
            .refused_claims
            .iter()
            .map(|((node, why), n)| (node.clone(), *why, *n))
            .collect();
        c
    }
}
