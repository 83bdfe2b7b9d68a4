//! The replica plan: every replica the fleet wants, by id, indexed by node
//! so that what one node is planned to run is found without a pass over
//! the whole plan (placement asks it per node, assignments per node). Reads
//! go through `Deref` to the map; every change goes through the methods
//! here, which keep the index and note the nodes whose part changed.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use super::state::PlannedReplica;

#[derive(Debug, Default)]
pub struct ReplicaPlan {
    replicas: BTreeMap<String, PlannedReplica>,
    /// node → ids of the replicas planned there.
    by_node: foldhash::HashMap<String, BTreeSet<String>>,
    /// model → ids of its planned replicas.
    by_model: foldhash::HashMap<String, BTreeSet<String>>,
    /// Nodes whose planned replicas changed since `take_touched`.
    touched: BTreeSet<String>,
}

impl Deref for ReplicaPlan {
    type Target = BTreeMap<String, PlannedReplica>;

    fn deref(&self) -> &Self::Target {
        &self.replicas
    }
}

impl ReplicaPlan {
    pub fn insert(&mut self, r: PlannedReplica) -> Option<PlannedReplica> {
        let old = self.remove(&r.id);
        self.by_node
            .entry(r.node.clone())
            .or_default()
            .insert(r.id.clone());
        self.by_model
            .entry(r.model.clone())
            .or_default()
            .insert(r.id.clone());
        self.touched.insert(r.node.clone());
        self.replicas.insert(r.id.clone(), r);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<PlannedReplica> {
        let old = self.replicas.remove(id)?;
        self.unindex(&old);
        Some(old)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&PlannedReplica) -> bool) {
        let gone: Vec<String> = self
            .replicas
            .values()
            .filter(|r| !keep(r))
            .map(|r| r.id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// Changes one replica in place (its node and GPUs too, if need be).
    /// False when the plan has no such replica.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut PlannedReplica)) -> bool {
        let Some(mut r) = self.remove(id) else {
            return false;
        };
        change(&mut r);
        self.insert(r);
        true
    }

    /// The replicas planned on `node`, by id.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a PlannedReplica> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.replicas.get(id))
    }

    /// The replicas planned for `model`, by id.
    pub fn of_model<'a>(&'a self, model: &str) -> impl Iterator<Item = &'a PlannedReplica> + 'a {
        self.by_model
            .get(model)
            .into_iter()
            .flatten()
            .filter_map(|id| self.replicas.get(id))
    }

    /// The nodes whose planned replicas changed since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// Whether some node's planned replicas changed since `take_touched`.
    pub fn touched_any(&self) -> bool {
        !self.touched.is_empty()
    }

    fn unindex(&mut self, r: &PlannedReplica) {
        if let Some(ids) = self.by_node.get_mut(&r.node) {
            ids.remove(&r.id);
            if ids.is_empty() {
                self.by_node.remove(&r.node);
            }
        }
        if let Some(ids) = self.by_model.get_mut(&r.model) {
            ids.remove(&r.id);
            if ids.is_empty() {
                self.by_model.remove(&r.model);
            }
        }
        self.touched.insert(r.node.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn replica(id: &str, node: &str) -> PlannedReplica {
        PlannedReplica {
            id: id.into(),
            model: "m".into(),
            node: node.into(),
            gpus: vec![0],
            spec_hash: String::new(),
            created: Instant::now(),
            retiring_since: None,
        }
    }

    fn ids_on(plan: &ReplicaPlan, node: &str) -> Vec<String> {
        plan.on_node(node).map(|r| r.id.clone()).collect()
    }

    #[test]
    fn the_node_index_follows_every_change() {
        let mut plan = ReplicaPlan::default();
        plan.insert(replica("a", "n1"));
        plan.insert(replica("b", "n1"));
        plan.insert(replica("c", "n2"));
        assert_eq!(ids_on(&plan, "n1"), ["a", "b"]);
        assert_eq!(
            plan.take_touched().into_iter().collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        // The same id again, on another node: it moves.
        plan.insert(replica("b", "n2"));
        assert_eq!(ids_on(&plan, "n1"), ["a"]);
        assert_eq!(ids_on(&plan, "n2"), ["b", "c"]);
        assert_eq!(
            plan.take_touched().into_iter().collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert!(plan.update("a", |r| r.node = "n3".into()));
        assert!(!plan.update("zz", |_| {}));
        assert_eq!(ids_on(&plan, "n3"), ["a"]);
        assert!(ids_on(&plan, "n1").is_empty());
        plan.retain(|r| r.id != "c");
        assert_eq!(ids_on(&plan, "n2"), ["b"]);
        assert_eq!(plan.remove("b").map(|r| r.node), Some("n2".into()));
        assert!(plan.remove("b").is_none());
        assert_eq!(plan.len(), 1);
        assert!(plan.by_node.keys().all(|n| n == "n3"));
        assert_eq!(
            plan.take_touched().into_iter().collect::<Vec<_>>(),
            ["n1", "n2", "n3"]
        );
    }

    #[test]
    fn the_model_index_follows_every_change() {
        let ids_of = |plan: &ReplicaPlan, model: &str| -> Vec<String> {
            plan.of_model(model).map(|r| r.id.clone()).collect()
        };
        let mut plan = ReplicaPlan::default();
        plan.insert(replica("a", "n1"));
        plan.insert(replica("b", "n2"));
        let mut other = replica("c", "n1");
        other.model = "o".into();
        plan.insert(other);
        assert_eq!(ids_of(&plan, "m"), ["a", "b"]);
        assert_eq!(ids_of(&plan, "o"), ["c"]);
        // Moved to another model in place, then gone.
        assert!(plan.update("b", |r| r.model = "o".into()));
        assert_eq!(ids_of(&plan, "m"), ["a"]);
        assert_eq!(ids_of(&plan, "o"), ["b", "c"]);
        plan.retain(|r| r.model != "o");
        assert!(ids_of(&plan, "o").is_empty());
        assert!(plan.remove("a").is_some());
        assert!(ids_of(&plan, "m").is_empty());
        assert!(plan.by_model.is_empty());
    }
}
