//! The warm cache across the fleet: what each node reports resident, and the
//! operator's `warm start` / `warm evict` wishes, which become the `warm` and
//! `evict` lists of the node's assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::api::WarmView;
use crate::config::WarmMode;
use crate::domain::{unix_ms_now, WarmSpec};

use super::fleet::{Fleet, FleetError, WarmOp};
use super::placement::{warm_targets, ReplicaNeeds};
use super::predict::replicas_needed;
use super::scaling::PREDICT_HORIZON;

impl Fleet {
    pub(super) fn list_warm(&self, node: Option<&str>) -> Result<Vec<WarmView>, FleetError> {
        if let Some(name) = node {
            if !self.nodes.contains_key(name) {
                return Err(self.node_not_found(name));
            }
        }
        let mut out = Vec::new();
        for n in self
            .nodes
            .values()
            .filter(|n| node.is_none_or(|want| want == n.name))
        {
            for w in &n.warm {
                let planned = self.warm_plan.get(&n.name).and_then(|m| m.get(&w.model));
                let reason = if n.flags.warm.contains(&w.model) {
                    "manual"
                } else if let Some(why) = planned {
                    why
                } else if self
                    .plan
                    .values()
                    .any(|r| r.node == n.name && r.model == w.model)
                {
                    "replica"
                } else {
                    "cached"
                };
                out.push(WarmView::new(&n.name, w, reason));
            }
        }
        Ok(out)
    }

    pub(super) fn warm_op(
        &mut self,
        model: &str,
        node: &str,
        op: WarmOp,
    ) -> Result<Vec<WarmView>, FleetError> {
        if !self.models.contains_key(model) {
            return Err(self.model_not_found(model));
        }
        if !self.nodes.contains_key(node) {
            return Err(self.node_not_found(node));
        }
        let mut flags = self.node_flags.get(node).cloned().unwrap_or_default();
        let message = match op {
            WarmOp::Start => {
                flags.evict.retain(|m| m != model);
                if !flags.warm.iter().any(|m| m == model) {
                    flags.warm.push(model.to_string());
                }
                "keeping the weights warm here (warm start)".to_string()
            }
            WarmOp::Evict => {
                flags.warm.retain(|m| m != model);
                if !flags.evict.iter().any(|m| m == model) {
                    flags.evict.push(model.to_string());
                }
                let running = self
                    .plan
                    .values()
                    .any(|r| r.node == node && r.model == model);
                if running {
                    "evict asked, but a replica here runs the model: its weights stay until it stops".to_string()
                } else {
                    "dropping the weights from the page cache (warm evict)".to_string()
                }
            }
        };
        self.set_node_flags(node, flags)?;
        let kind = match op {
            WarmOp::Start => "warm",
            WarmOp::Evict => "evict",
        };
        self.record(kind, model, node, "", message);
        self.list_warm(Some(node))
    }

    /// Which nodes keep which models warm beyond those running them: the
    /// model's `standby_nodes`, and with `mode = "predictive"` also the nodes
    /// the forecast says the next replicas will need. Nodes already warm win,
    /// then nodes with the most GPUs that could host a replica.
    pub(super) fn plan_warm(&mut self, now: Instant) {
        let now_unix_s = unix_ms_now() / 1000;
        let mut plan: BTreeMap<String, BTreeMap<String, &'static str>> = BTreeMap::new();
        let mut changes = Vec::new();
        for (name, model) in &self.models {
            if model.spec.warm.mode == WarmMode::Off {
                continue;
            }
            let needs = ReplicaNeeds {
                gpus: model.spec.server.gpus,
                gpu_memory_bytes: model.spec.server.gpu_memory_bytes,
                spread: model.spec.spread,
            };
            let predicted = match (&model.spec.warm.mode, &model.spec.scaling) {
                (WarmMode::Predictive, Some(spec)) => {
                    let f = model
                        .scaler
                        .demand
                        .forecast(now_unix_s, PREDICT_HORIZON.as_secs() as i64);
                    replicas_needed(&f, spec).saturating_sub(model.desired)
                }
                _ => 0,
            };
            // Nothing to choose: no need to see the fleet as placement does
            // (that is a pass over every node, for every model, every tick).
            if predicted == 0 && model.spec.warm.standby_nodes == 0 {
                continue;
            }
            let running: BTreeSet<&str> = self
                .plan
                .values()
                .filter(|r| &r.model == name)
                .map(|r| r.node.as_str())
                .collect();
            let running: Vec<&str> = running.into_iter().collect();
            let candidates = self.candidates(name, now);
            let targets = warm_targets(
                &candidates,
                &needs,
                &running,
                predicted,
                model.spec.warm.standby_nodes,
            );
            let mut chosen = Vec::new();
            for (node, why) in targets {
                chosen.push(format!("{node} ({why})"));
                plan.entry(node).or_default().insert(name.clone(), why);
            }
            let before: Vec<String> = self
                .warm_plan
                .iter()
                .filter_map(|(node, models)| models.get(name).map(|why| format!("{node} ({why})")))
                .collect();
            let mut sorted = chosen.clone();
            sorted.sort();
            if sorted != before && !chosen.is_empty() {
                changes.push((
                    name.clone(),
                    format!("keeping weights warm on {}", chosen.join(", ")),
                ));
            }
        }
        self.warm_plan = plan;
        for (model, message) in changes {
            self.record("warm", &model, "", "", message);
        }
    }

    /// The warm and evict lists of a node's assignment.
    pub(super) fn warm_specs(&self, node: &str) -> (Vec<WarmSpec>, Vec<WarmSpec>) {
        let flags = self.node_flags.get(node).cloned().unwrap_or_default();
        let spec = |model: &String| {
            self.models.get(model).map(|m| WarmSpec {
                model: model.clone(),
                path: m.spec.weights.clone(),
                lock: false,
            })
        };
        let mut warm: Vec<String> = flags.warm.clone();
        if let Some(planned) = self.warm_plan.get(node) {
            for model in planned.keys() {
                if !warm.contains(model) && !flags.evict.contains(model) {
                    warm.push(model.clone());
                }
            }
        }
        (
            warm.iter().filter_map(spec).collect(),
            flags.evict.iter().filter_map(spec).collect(),
        )
    }
}
