//! Placement's incremental view of the fleet: per schedulable node, its free
//! GPUs, kept in order of how many there are, updated when a node's state
//! changes (a report, a session opening or closing, a flag, a replica
//! planned or gone there) rather than rebuilt for every placement. A
//! placement then looks at few nodes: those whose rank depends on the model
//! or on this tick's placements (warm for it, running it, given a replica
//! this tick), seen whole, and the rest in the view's order until one is
//! confirmed. The choice is the one [`placement::place`] makes over every
//! node (tested against it below).

use std::collections::{BTreeSet, HashSet};

use super::decide::gpu_candidates;
use super::fleet::Fleet;
use super::nodes::Node;
use super::placement::{self, GpuCandidate, NodeCandidate, Placement, ReplicaNeeds};

/// What a schedulable node offers placement, whatever the model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeRoom {
    /// Free bytes of each healthy GPU no replica holds: all of them, and
    /// those that are whole GPUs (not MIG instances; multi-GPU replicas
    /// take only those).
    all: Vec<u64>,
    whole: Vec<u64>,
    /// Models with weights in this node's page cache.
    warm: Vec<String>,
}

impl NodeRoom {
    /// The room of a node as placement sees its GPUs (`gpus`) and page
    /// cache (`warm`: models with any weights resident).
    pub fn of(gpus: &[GpuCandidate], warm: Vec<String>) -> NodeRoom {
        let free = gpus.iter().filter(|g| g.healthy && !g.taken);
        NodeRoom {
            all: free.clone().map(|g| g.free_bytes).collect(),
            whole: free.filter(|g| !g.mig).map(|g| g.free_bytes).collect(),
            warm,
        }
    }

    fn kind(&self, whole: bool) -> &[u64] {
        if whole {
            &self.whole
        } else {
            &self.all
        }
    }

    /// GPUs that fit one GPU of `needs`, as `placement::place` counts them.
    fn fitting(&self, needs: &ReplicaNeeds) -> usize {
        self.kind(needs.gpus > 1)
            .iter()
            .filter(|f| **f >= needs.gpu_memory_bytes)
            .count()
    }

    fn least_free(&self, whole: bool) -> u64 {
        self.kind(whole).iter().copied().min().unwrap_or(u64::MAX)
    }
}

/// Nodes in order, for one kind of GPU (all, or whole GPUs only).
#[derive(Debug, Default)]
struct Order {
    /// (free GPUs, node): a node whose free GPUs all fit a replica ranks
    /// by this count.
    by_count: BTreeSet<(usize, String)>,
    /// (the least free bytes among its free GPUs, node): the nodes where
    /// some free GPU is too small for a replica, found by a range.
    by_least_free: BTreeSet<(u64, String)>,
}

impl Order {
    fn add(&mut self, node: &str, room: &NodeRoom, whole: bool) {
        self.by_count
            .insert((room.kind(whole).len(), node.to_string()));
        self.by_least_free
            .insert((room.least_free(whole), node.to_string()));
    }

    fn remove(&mut self, node: &str, room: &NodeRoom, whole: bool) {
        self.by_count
            .remove(&(room.kind(whole).len(), node.to_string()));
        self.by_least_free
            .remove(&(room.least_free(whole), node.to_string()));
    }
}

/// The schedulable nodes (a session, not cordoned, not draining; liveness,
/// which changes with time alone, is checked per node when one is chosen).
#[derive(Debug, Default)]
pub struct PlacementView {
    rooms: foldhash::HashMap<String, NodeRoom>,
    all: Order,
    whole: Order,
    /// model → nodes with some of its weights resident.
    warm: foldhash::HashMap<String, BTreeSet<String>>,
}

impl PlacementView {
    /// Sets what `node` offers; `None` when it takes no replicas (or is gone).
    pub fn set(&mut self, node: &str, room: Option<NodeRoom>) {
        if self.rooms.get(node) == room.as_ref() {
            return;
        }
        if let Some(old) = self.rooms.remove(node) {
            self.all.remove(node, &old, false);
            self.whole.remove(node, &old, true);
            for m in &old.warm {
                if let Some(nodes) = self.warm.get_mut(m) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        self.warm.remove(m);
                    }
                }
            }
        }
        if let Some(room) = room {
            self.all.add(node, &room, false);
            self.whole.add(node, &room, true);
            for m in &room.warm {
                self.warm
                    .entry(m.clone())
                    .or_default()
                    .insert(node.to_string());
            }
            self.rooms.insert(node.to_string(), room);
        }
    }

    #[cfg(test)]
    fn room(&self, node: &str) -> Option<&NodeRoom> {
        self.rooms.get(node)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Schedulable nodes with some of `model`'s weights resident.
    pub fn warm_nodes<'a>(&'a self, model: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.warm
            .get(model)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Where `placement::place` over the whole fleet would put a replica,
    /// seeing whole only `special`: every node whose rank has more than its
    /// fitting GPUs and name in it (warm for the model, running it) or that
    /// the view does not show as it is for this placement (given or losing
    /// a replica this tick). The rest are taken in the view's order and
    /// confirmed by `candidate` (liveness, host room, what only the model
    /// says) until one takes the replica. `None` when no node does, or when
    /// a confirmed node disagrees with the view (then the caller looks at
    /// the whole fleet, which also says why nothing fits).
    pub fn place(
        &self,
        needs: &ReplicaNeeds,
        special: &[NodeCandidate],
        mut candidate: impl FnMut(&str) -> Option<NodeCandidate>,
    ) -> Option<Placement> {
        let special_names: HashSet<&str> = special.iter().map(|c| c.name.as_str()).collect();
        let is_special = |n: &str| special_names.contains(n);
        let whole = needs.gpus > 1;
        let order = if whole { &self.whole } else { &self.all };
        let want = needs.gpus as usize;
        // Nodes with a free GPU too small for the replica fit fewer than
        // their free GPUs: counted one by one (few, in a fleet of whole-GPU
        // replicas), then merged into the order by count.
        let mut short: Vec<(usize, &str)> = order
            .by_least_free
            .range(..(needs.gpu_memory_bytes, String::new()))
            .map(|(_, n)| n.as_str())
            .filter(|n| !is_special(n))
            .filter_map(|n| Some((self.rooms.get(n)?.fitting(needs), n)))
            .filter(|(fit, _)| *fit >= want)
            .collect();
        short.sort_unstable();
        let mut short = short.into_iter().peekable();
        let mut clean = order
            .by_count
            .range((want, String::new())..)
            .map(|(count, n)| (*count, n.as_str()))
            .filter(|(_, n)| !is_special(n))
            .filter(|(_, n)| {
                self.rooms
                    .get(*n)
                    .is_some_and(|r| r.least_free(whole) >= needs.gpu_memory_bytes)
            })
            .peekable();
        let mut plain = None;
        loop {
            let next = match (clean.peek(), short.peek()) {
                (Some(c), Some(s)) if s < c => short.next(),
                (Some(_), _) => clean.next(),
                (None, _) => short.next(),
            };
            let Some((fit, node)) = next else {
                break;
            };
            let Some(c) = candidate(node) else {
                continue;
            };
            if c.unschedulable.is_some() {
                continue;
            }
            let fits = c
                .gpus
                .iter()
                .filter(|g| g.healthy && !g.taken && g.free_bytes >= needs.gpu_memory_bytes)
                .filter(|g| !(g.mig && whole))
                .count();
            if fits != fit || c.warm_fraction > 0.0 || (needs.spread && c.model_replicas > 0) {
                // The view is behind the node: not to be trusted here.
                debug_assert!(false, "placement view of {node} is stale: {fit} vs {c:?}");
                tracing::warn!(
                    node,
                    "placement view disagrees with the node; looking at every node"
                );
                return None;
            }
            plain = Some(c);
            break;
        }
        let mut few: Vec<NodeCandidate> = special.to_vec();
        few.extend(plain);
        placement::place(&few, needs).ok()
    }
}

impl Fleet {
    /// Notes that what `node` offers placement may have changed; the view
    /// catches up at the end of the command or of the applied changes.
    pub(super) fn touch_node(&mut self, node: &str) {
        if !self.view_stale.contains(node) {
            self.view_stale.insert(node.to_string());
        }
    }

    /// Brings the placement view up to date with the nodes touched and
    /// those whose planned replicas changed.
    pub(super) fn refresh_view(&mut self) {
        let mut stale = std::mem::take(&mut self.view_stale);
        for node in self.plan.take_touched() {
            // What a node runs changed: so does its assignment.
            self.assign_stale.insert(node.clone());
            stale.insert(node);
        }
        for name in stale {
            let room = self.nodes.get(&name).and_then(|n| self.room_of(n));
            self.view.set(&name, room);
        }
        #[cfg(test)]
        self.check_view();
    }

    /// Whether the view shows every node as it is now.
    pub(super) fn view_current(&self) -> bool {
        self.view_stale.is_empty() && !self.plan.touched_any()
    }

    /// What `n` offers placement whatever the model; `None` when it takes
    /// no replica whatever its liveness (no session, cordoned, draining).
    fn room_of(&self, n: &Node) -> Option<NodeRoom> {
        if n.session.is_none() || n.flags.cordoned || n.flags.draining {
            return None;
        }
        let planned: Vec<u32> = self
            .plan
            .on_node(&n.name)
            .flat_map(|r| r.gpus.iter().copied())
            .collect();
        let warm = n
            .warm
            .iter()
            .filter(|w| w.total_bytes > 0)
            .map(|w| w.model.clone())
            .collect();
        Some(NodeRoom::of(&gpu_candidates(n, &planned), warm))
    }

    /// Every change to a node reaches the view: a node the view shows
    /// otherwise than it is now is a missed `touch_node`.
    #[cfg(test)]
    fn check_view(&self) {
        for n in self.nodes.values() {
            assert_eq!(
                self.view.room(&n.name),
                self.room_of(n).as_ref(),
                "the placement view of {} is stale",
                n.name
            );
        }
        assert_eq!(
            self.view.len(),
            self.nodes
                .values()
                .filter(|n| self.room_of(n).is_some())
                .count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32, free_gib: u64, healthy: bool, taken: bool, mig: bool) -> GpuCandidate {
        GpuCandidate {
            index,
            healthy,
            taken,
            free_bytes: free_gib * GIB,
            mig,
        }
    }

    /// Healthy whole GPUs, none taken, with `free` GiB free each.
    fn free_gpus(free: &[u64]) -> Vec<GpuCandidate> {
        free.iter()
            .enumerate()
            .map(|(i, f)| gpu(i as u32, *f, true, false, false))
            .collect()
    }

    fn view_of(
        nodes: &[NodeCandidate],
        schedulable: impl Fn(&NodeCandidate) -> bool,
    ) -> PlacementView {
        let mut view = PlacementView::default();
        for n in nodes {
            let warm = if n.warm_fraction > 0.0 {
                vec!["m".to_string()]
            } else {
                vec![]
            };
            view.set(&n.name, schedulable(n).then(|| NodeRoom::of(&n.gpus, warm)));
        }
        view
    }

    /// What a caller gives as special: nodes warm for the model or running it.
    fn special(nodes: &[NodeCandidate]) -> Vec<NodeCandidate> {
        nodes
            .iter()
            .filter(|n| n.warm_fraction > 0.0 || n.model_replicas > 0)
            .cloned()
            .collect()
    }

    fn by_view(
        view: &PlacementView,
        nodes: &[NodeCandidate],
        needs: &ReplicaNeeds,
    ) -> Result<Placement, String> {
        view.place(needs, &special(nodes), |n| {
            nodes.iter().find(|c| c.name == n).cloned()
        })
        .ok_or(())
        .or_else(|()| placement::place(nodes, needs))
    }

    fn node(name: &str, gpus: Vec<GpuCandidate>) -> NodeCandidate {
        NodeCandidate {
            name: name.into(),
            unschedulable: None,
            gpus,
            warm_fraction: 0.0,
            model_replicas: 0,
        }
    }

    fn needs(gpus: u32, gib: u64, spread: bool) -> ReplicaNeeds {
        ReplicaNeeds {
            gpus,
            gpu_memory_bytes: gib * GIB,
            spread,
        }
    }

    #[test]
    fn keeps_its_order_as_nodes_change() {
        let mut view = PlacementView::default();
        let room = |free: &[u64]| NodeRoom::of(&free_gpus(free), vec![]);
        view.set("a", Some(room(&[80, 80, 80])));
        view.set("b", Some(room(&[80])));
        view.set("c", Some(room(&[80, 80])));
        let order: Vec<&str> = view.all.by_count.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(order, ["b", "c", "a"]);
        view.set("a", Some(room(&[80])));
        view.set("b", None);
        let order: Vec<(usize, &str)> = view
            .all
            .by_count
            .iter()
            .map(|(c, n)| (*c, n.as_str()))
            .collect();
        assert_eq!(order, [(1, "a"), (2, "c")]);
        assert_eq!(view.all.by_least_free.len(), 2);
        assert_eq!(view.len(), 2);
    }

    #[test]
    fn a_node_whose_free_gpus_are_too_small_for_some_ranks_by_those_that_fit() {
        // a: 3 free, one of them big enough; b: 2 free, both big enough.
        let nodes = vec![
            node("a", free_gpus(&[70, 5, 5])),
            node("b", free_gpus(&[70, 70])),
        ];
        let view = view_of(&nodes, |_| true);
        let p = by_view(&view, &nodes, &needs(1, 20, false)).unwrap();
        assert_eq!(p, placement::place(&nodes, &needs(1, 20, false)).unwrap());
        assert_eq!(p.node, "a");
    }

    #[test]
    fn a_node_the_view_shows_but_that_fell_silent_is_passed_over() {
        let mut nodes = vec![node("a", free_gpus(&[80])), node("b", free_gpus(&[80, 80]))];
        let view = view_of(&nodes, |_| true);
        nodes[0].unschedulable = Some("suspect".into());
        assert_eq!(
            by_view(&view, &nodes, &needs(1, 20, false)).unwrap().node,
            "b"
        );
    }

    proptest! {
        /// The view's choice is the full scan's, on random fleets: free GPUs
        /// of random sizes, unhealthy, taken and MIG ones, warm nodes, nodes
        /// running the model, nodes the view leaves out (cordoned) and nodes
        /// it shows that turn out not to take the replica (silent).
        #[test]
        fn chooses_as_a_scan_of_every_node_does(
            fleet in proptest::collection::vec(
                (
                    proptest::collection::vec((0u64..90, any::<bool>(), any::<bool>(), 0u8..8), 0..6),
                    0u8..16,  // warmth: (w-1)/4 for w in 1..=4, else cold
                    0u32..12, // replicas of the model: r + 1 for r < 2, else none
                    0u8..8,  // 0: left out of the view, 1: silent, else schedulable
                ),
                0..24,
            ),
            gpus in 0u32..4,
            gib in 0u64..90,
            spread in any::<bool>(),
        ) {
            let mut nodes = Vec::new();
            let mut in_view = Vec::new();
            for (i, (gs, warm, replicas, sched)) in fleet.iter().enumerate() {
                let gs = gs.iter().enumerate().map(|(j, (free, healthy, taken, mig))| {
                    // Mostly healthy, free and whole: fleets look like that.
                    gpu(j as u32, *free, *healthy || mig % 2 == 0, *taken && mig % 3 == 0, *mig == 7)
                }).collect();
                let mut n = node(&format!("n{i:02}"), gs);
                // Most nodes are neither warm for the model nor run it: the
                // view ranks those.
                n.warm_fraction = if (1..=4).contains(warm) { f64::from(warm - 1) / 4.0 } else { 0.0 };
                n.model_replicas = if *replicas < 2 { replicas + 1 } else { 0 };
                n.unschedulable = match sched {
                    0 => Some("cordoned".into()),
                    1 => Some("suspect".into()),
                    _ => None,
                };
                in_view.push(*sched != 0);
                nodes.push(n);
            }
            let view = view_of(&nodes, |n| n.unschedulable.as_deref() != Some("cordoned"));
            prop_assert_eq!(view.len(), in_view.iter().filter(|s| **s).count());
            let needs = needs(gpus, gib, spread);
            prop_assert_eq!(by_view(&view, &nodes, &needs), placement::place(&nodes, &needs));
        }
    }
}
