//! Operator actions on nodes: cordon, uncordon and drain. A drain moves
//! replicas off a node without dropping below the wanted ready count: each
//! replica there is stopped only once the model has enough ready replicas
//! elsewhere, or when the drain's deadline passes.

use std::time::Instant;

use crate::api::NodeView;
use crate::domain::{unix_ms_now, ReplicaState};

use super::fleet::{Fleet, FleetError, NodeOp};
use super::store::NodeFlags;

impl Fleet {
    pub(super) fn node_operation(
        &mut self,
        name: &str,
        op: NodeOp,
        now: Instant,
    ) -> Result<NodeView, FleetError> {
        if !self.nodes.contains_key(name) {
            return Err(self.node_not_found(name));
        }
        let mut flags = self.node_flags.get(name).cloned().unwrap_or_default();
        let message = match &op {
            NodeOp::Cordon => {
                flags.cordoned = true;
                "cordoned: no new replicas will be placed here".to_string()
            }
            NodeOp::Uncordon => {
                let was_draining = flags.draining;
                flags.cordoned = false;
                flags.draining = false;
                flags.drain_deadline_unix_ms = 0;
                if was_draining {
                    "uncordoned: drain cancelled, the node takes replicas again".to_string()
                } else {
                    "uncordoned: the node takes replicas again".to_string()
                }
            }
            NodeOp::Drain { deadline } => {
                flags.cordoned = true;
                flags.draining = true;
                flags.drain_deadline_unix_ms = unix_ms_now() + deadline.as_millis() as i64;
                format!(
                    "draining: replicas move elsewhere; deadline in {}",
                    humantime::format_duration(*deadline)
                )
            }
        };
        self.set_node_flags(name, flags)?;
        let kind = match op {
            NodeOp::Cordon => "node-cordoned",
            NodeOp::Uncordon => "node-uncordoned",
            NodeOp::Drain { .. } => "drain",
        };
        self.record(kind, "", name, "", message);
        let node = &self.nodes[name];
        Ok(node.view(self.node_state(node, now)))
    }

    pub(super) fn set_node_flags(
        &mut self,
        name: &str,
        flags: NodeFlags,
    ) -> Result<(), FleetError> {
        self.store
            .put_node_flags(name, &flags)
            .map_err(|e| FleetError::Internal(format!("node `{name}` flags not saved: {e}")))?;
        if let Some(n) = self.nodes.get_mut(name) {
            n.flags = flags.clone();
        }
        self.node_flags.insert(name.to_string(), flags);
        Ok(())
    }

    /// One step of every drain in progress; called each tick after
    /// replacements were placed.
    pub(super) fn drain_step(&mut self) {
        let draining: Vec<(String, i64)> = self
            .nodes
            .values()
            .filter(|n| n.flags.draining)
            .map(|n| (n.name.clone(), n.flags.drain_deadline_unix_ms))
            .collect();
        let now_ms = unix_ms_now();
        for (node, deadline) in draining {
            let forced = now_ms >= deadline;
            let on_node: Vec<_> = self
                .plan
                .values()
                .filter(|r| r.node == node && r.retiring_since.is_none())
                .cloned()
                .collect();
            for r in on_node {
                let desired = self.models.get(&r.model).map(|m| m.desired).unwrap_or(0) as usize;
                let ready_elsewhere = self
                    .plan
                    .values()
                    .filter(|p| p.model == r.model && !self.on_draining_node(&p.node))
                    .filter(|p| p.retiring_since.is_none())
                    .filter(|p| self.reported_state(&p.id) == Some(ReplicaState::Ready))
                    .count();
                if forced || ready_elsewhere >= desired {
                    self.retire(&r.id, Instant::now());
                    let why = if forced {
                        "the drain deadline passed".to_string()
                    } else {
                        format!(
                            "{ready_elsewhere} ready replicas of {} run elsewhere",
                            r.model
                        )
                    };
                    self.record(
                        "drain",
                        &r.model,
                        &node,
                        &r.id,
                        format!("stopping {} on draining node {node}: {why}", r.id),
                    );
                }
            }
            let live_left = self.nodes[&node].replicas.iter().any(|r| r.state.is_live());
            let planned_left = self.plan.values().any(|r| r.node == node);
            if !live_left && !planned_left {
                let mut flags = self.node_flags.get(&node).cloned().unwrap_or_default();
                flags.cordoned = true;
                flags.draining = false;
                flags.drain_deadline_unix_ms = 0;
                if let Err(e) = self.set_node_flags(&node, flags) {
                    tracing::warn!(node = %node, error = %e, "drain finished but not saved");
                }
                self.record("drain", "", &node, "", "drain finished: no replicas left; the node stays cordoned until `node uncordon`".into());
            }
        }
    }

    pub(super) fn on_draining_node(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.flags.draining)
    }

    /// The state of a planned replica as the node it is assigned to reports
    /// it; what other nodes say of that id does not count.
    pub(super) fn reported_state(&self, replica: &str) -> Option<ReplicaState> {
        let node = &self.plan.get(replica)?.node;
        self.nodes
            .get(node)?
            .replicas
            .iter()
            .find(|r| r.id == replica)
            .map(|r| r.state)
    }
}
