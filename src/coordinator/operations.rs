//! Operator actions on nodes: cordon, uncordon and drain. A drain moves
//! replicas off a node without dropping below the wanted ready count: each
//! replica there is stopped only once the model has enough ready replicas
//! elsewhere, or when the drain's deadline passes.

use std::time::Instant;

use crate::api::NodeView;
use crate::domain::{unix_ms_now, EventKind, ReplicaState};

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
        let node = name.to_string();
        let what = match &op {
            NodeOp::Cordon => {
                flags.cordoned = true;
                EventKind::NodeCordoned { node }
            }
            NodeOp::Uncordon => {
                let was_draining = flags.draining;
                flags.cordoned = false;
                flags.draining = false;
                flags.drain_deadline_unix_ms = 0;
                EventKind::NodeUncordoned {
                    node,
                    drain_cancelled: was_draining,
                }
            }
            NodeOp::Drain { deadline } => {
                flags.cordoned = true;
                flags.draining = true;
                flags.drain_deadline_unix_ms = unix_ms_now() + deadline.as_millis() as i64;
                EventKind::DrainStarted {
                    node,
                    deadline_ms: deadline.as_millis() as u64,
                }
            }
        };
        self.set_node_flags(name, flags)?;
        self.record(what);
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
        self.touch_node(name);
        // Its warm and evict lists are in its assignment.
        self.assign_stale.insert(name.to_string());
        self.node_flags.insert(name.to_string(), flags);
        Ok(())
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
