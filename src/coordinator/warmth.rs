//! The warm cache across the fleet: what each node reports resident, and the
//! operator's `warm start` / `warm evict` wishes, which become the `warm` and
//! `evict` lists of the node's assignment.

use crate::api::WarmView;
use crate::domain::event::WarmAsk;
use crate::domain::{EventKind, WarmSpec};

use super::fleet::{Fleet, FleetError, WarmOp};

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
        let ask = match op {
            WarmOp::Start => {
                flags.evict.retain(|m| m != model);
                if !flags.warm.iter().any(|m| m == model) {
                    flags.warm.push(model.to_string());
                }
                WarmAsk::Start
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
                    WarmAsk::EvictWhileRunning
                } else {
                    WarmAsk::Evict
                }
            }
        };
        self.set_node_flags(node, flags)?;
        self.record(EventKind::WarmAsked {
            model: model.to_string(),
            node: node.to_string(),
            ask,
        });
        self.list_warm(Some(node))
    }

    /// The warm and evict lists of a node's assignment.
    pub(super) fn warm_specs(&self, node: &str) -> (Vec<WarmSpec>, Vec<WarmSpec>) {
        let flags = self.node_flags.get(node);
        // Most nodes keep nothing warm: asked per report and per tick.
        if flags.is_none_or(|f| f.warm.is_empty() && f.evict.is_empty())
            && !self.warm_plan.contains_key(node)
        {
            return (Vec::new(), Vec::new());
        }
        let flags = flags.cloned().unwrap_or_default();
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
