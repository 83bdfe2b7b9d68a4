//! Where a new replica goes: a pure function of the fleet's view and the
//! replica's needs. Whole GPUs only; warm nodes first, then bin-packing so
//! whole nodes stay free for big models.

use crate::config::units::format_bytes;

/// One node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCandidate {
    pub name: String,
    /// Why the node takes no new replicas (cordoned, draining, suspect, lost);
    /// `None` when it is schedulable.
    pub unschedulable: Option<String>,
    pub gpus: Vec<GpuCandidate>,
    /// Share (0..=1) of the model's weights resident in this node's page cache.
    pub warm_fraction: f64,
    /// Replicas of the same model already on this node (for spreading).
    pub model_replicas: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuCandidate {
    pub index: u32,
    pub healthy: bool,
    /// Already given to a replica in the fleet's plan.
    pub taken: bool,
    pub free_bytes: u64,
    /// A MIG instance: a process sees only one, so it serves one-GPU
    /// replicas only.
    pub mig: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaNeeds {
    pub gpus: u32,
    pub gpu_memory_bytes: u64,
    /// Prefer nodes with fewer replicas of this model.
    pub spread: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub node: String,
    pub gpus: Vec<u32>,
    /// Why this node, in words ("warm 100%, packs 3 free GPUs").
    pub why: String,
}

/// Picks a node and GPUs for one replica, or explains why none fits.
pub fn place(nodes: &[NodeCandidate], needs: &ReplicaNeeds) -> Result<Placement, String> {
    let fitting = |n: &NodeCandidate| -> Vec<u32> {
        n.gpus
            .iter()
            .filter(|g| g.healthy && !g.taken && g.free_bytes >= needs.gpu_memory_bytes)
            .filter(|g| !(g.mig && needs.gpus > 1))
            .map(|g| g.index)
            .collect()
    };
    let mut best: Option<(&NodeCandidate, Vec<u32>)> = None;
    for node in nodes.iter().filter(|n| n.unschedulable.is_none()) {
        let fit = fitting(node);
        if fit.len() < needs.gpus as usize {
            continue;
        }
        let better = match &best {
            None => true,
            Some((b, bfit)) => rank(node, fit.len(), needs) < rank(b, bfit.len(), needs),
        };
        if better {
            best = Some((node, fit));
        }
    }
    if let Some((node, fit)) = best {
        let gpus: Vec<u32> = fit.iter().copied().take(needs.gpus as usize).collect();
        let warm = node.warm_fraction * 100.0;
        let why = if needs.gpus == 0 {
            // A CPU replica: its host's CPUs and RAM were checked before
            // placement; the GPUs free there are not its concern.
            format!("warm {warm:.0}%, a CPU replica")
        } else {
            format!("warm {warm:.0}%, {} fitting GPUs free there", fit.len())
        };
        return Ok(Placement {
            node: node.name.clone(),
            why,
            gpus,
        });
    }
    Err(explain_no_fit(nodes, needs, fitting))
}

/// Where a model's weights should be kept warm beyond the nodes running it:
/// the nodes where `predicted` more replicas would be placed (predictive
/// warming), then `standby` more nodes that run none of it, each chosen as
/// placement would choose a next replica. The coordinator and the simulator
/// both decide warm nodes with this.
pub fn warm_targets(
    candidates: &[NodeCandidate],
    needs: &ReplicaNeeds,
    running_on: &[&str],
    predicted: u32,
    standby: u32,
) -> Vec<(String, &'static str)> {
    let mut cands = candidates.to_vec();
    let mut targets: Vec<(String, &'static str)> = Vec::new();
    for _ in 0..predicted {
        let Ok(p) = place(&cands, needs) else { break };
        if let Some(c) = cands.iter_mut().find(|c| c.name == p.node) {
            for g in c.gpus.iter_mut().filter(|g| p.gpus.contains(&g.index)) {
                g.taken = true;
            }
        }
        if !running_on.contains(&p.node.as_str()) && !targets.iter().any(|(n, _)| *n == p.node) {
            targets.push((p.node, "predictive"));
        }
    }
    for c in cands.iter_mut() {
        if running_on.contains(&c.name.as_str()) || targets.iter().any(|(n, _)| *n == c.name) {
            c.unschedulable = Some("already warm for this model".into());
        }
    }
    for _ in 0..standby {
        let Ok(p) = place(&cands, needs) else { break };
        if let Some(c) = cands.iter_mut().find(|c| c.name == p.node) {
            c.unschedulable = Some("chosen as standby".into());
        }
        targets.push((p.node, "standby"));
    }
    targets
}

/// Lower ranks win: warm first, then spread, then the tightest fit (packing),
/// then the name so the choice is deterministic.
fn rank<'a>(
    n: &'a NodeCandidate,
    free_fitting: usize,
    needs: &ReplicaNeeds,
) -> (i64, u32, usize, &'a str) {
    // Warmth in whole percent so that tiny differences do not beat packing.
    let warm = -((n.warm_fraction.clamp(0.0, 1.0) * 100.0).round() as i64);
    let spread = if needs.spread { n.model_replicas } else { 0 };
    (warm, spread, free_fitting, n.name.as_str())
}

fn explain_no_fit(
    nodes: &[NodeCandidate],
    needs: &ReplicaNeeds,
    fitting: impl Fn(&NodeCandidate) -> Vec<u32>,
) -> String {
    let want = if needs.gpus == 0 {
        "needs a node with the CPUs and RAM it asks for".to_string()
    } else {
        format!(
            "needs {} GPU{} with {} free on one node",
            needs.gpus,
            if needs.gpus == 1 { "" } else { "s" },
            format_bytes(needs.gpu_memory_bytes)
        )
    };
    if nodes.is_empty() {
        return format!("{want}; no node has joined the fleet");
    }
    let schedulable: Vec<&NodeCandidate> =
        nodes.iter().filter(|n| n.unschedulable.is_none()).collect();
    if schedulable.is_empty() {
        let why: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} {}", n.name, n.unschedulable.as_deref().unwrap_or("")))
            .collect();
        return format!("{want}; no node takes new replicas ({})", why.join(", "));
    }
    let best = schedulable
        .iter()
        .map(|n| (fitting(n).len(), *n))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.name.cmp(&a.1.name)));
    match best {
        Some((count, n)) => format!("{want}; best: {} has {count}", n.name),
        None => want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, free: &[u64]) -> NodeCandidate {
        NodeCandidate {
            name: name.into(),
            unschedulable: None,
            gpus: free
                .iter()
                .enumerate()
                .map(|(i, f)| GpuCandidate {
                    index: i as u32,
                    healthy: true,
                    taken: false,
                    free_bytes: f * GIB,
                    mig: false,
                })
                .collect(),
            warm_fraction: 0.0,
            model_replicas: 0,
        }
    }

    fn needs(gpus: u32, gib: u64) -> ReplicaNeeds {
        ReplicaNeeds {
            gpus,
            gpu_memory_bytes: gib * GIB,
            spread: false,
        }
    }

    #[test]
    fn packs_onto_the_fullest_node_that_fits() {
        let nodes = vec![node("a", &[80, 80, 80, 80]), node("b", &[80, 10, 10, 10])];
        let p = place(&nodes, &needs(1, 20)).unwrap();
        assert_eq!(p.node, "b");
        assert_eq!(p.gpus, vec![0]);
    }

    #[test]
    fn a_cpu_replica_is_placed_without_gpus_and_says_so() {
        let nodes = vec![node("a", &[80, 80, 80, 80])];
        let p = place(&nodes, &needs(0, 0)).unwrap();
        assert_eq!(p.gpus, Vec::<u32>::new());
        assert_eq!(p.why, "warm 0%, a CPU replica");
        let p = place(&nodes, &needs(1, 20)).unwrap();
        assert_eq!(p.why, "warm 0%, 4 fitting GPUs free there");
    }

    #[test]
    fn warm_nodes_win_over_packing() {
        let mut nodes = vec![node("a", &[80, 80, 80, 80]), node("b", &[80, 10, 10, 10])];
        nodes[0].warm_fraction = 1.0;
        assert_eq!(place(&nodes, &needs(1, 20)).unwrap().node, "a");
    }

    #[test]
    fn skips_unhealthy_taken_and_unschedulable() {
        let mut nodes = vec![node("a", &[80, 80]), node("b", &[80, 80])];
        nodes[0].gpus[0].healthy = false;
        nodes[0].gpus[1].taken = true;
        nodes[1].unschedulable = Some("cordoned".into());
        let err = place(&nodes, &needs(1, 20)).unwrap_err();
        assert_eq!(
            err,
            "needs 1 GPU with 20.0 GiB free on one node; best: a has 0"
        );
    }

    #[test]
    fn explains_when_nothing_fits() {
        let nodes = vec![node("gpu-07", &[80, 10]), node("gpu-08", &[10, 10])];
        let err = place(&nodes, &needs(2, 70)).unwrap_err();
        assert_eq!(
            err,
            "needs 2 GPUs with 70.0 GiB free on one node; best: gpu-07 has 1"
        );
        assert!(place(&[], &needs(1, 1)).unwrap_err().contains("no node"));
    }

    #[test]
    fn spreads_when_asked() {
        let mut nodes = vec![node("a", &[80, 80, 80]), node("b", &[80, 80, 80, 80])];
        nodes[0].model_replicas = 1;
        let mut n = needs(1, 20);
        assert_eq!(place(&nodes, &n).unwrap().node, "a");
        n.spread = true;
        assert_eq!(place(&nodes, &n).unwrap().node, "b");
    }

    #[test]
    fn standby_nodes_run_nothing_of_the_model_and_predictions_go_where_replicas_would() {
        let nodes = vec![
            node("a", &[80]),
            node("b", &[80, 80]),
            node("c", &[80, 80, 80]),
        ];
        let n = needs(1, 20);
        // a runs the model; one standby: packing picks b (fewest free that fit).
        assert_eq!(
            warm_targets(&nodes, &n, &["a"], 0, 1),
            vec![("b".to_string(), "standby")]
        );
        // Two predicted replicas pack onto b; the standby then goes to c.
        assert_eq!(
            warm_targets(&nodes, &n, &["a"], 2, 1),
            vec![
                ("b".to_string(), "predictive"),
                ("c".to_string(), "standby")
            ]
        );
        // Nothing fits: nothing to warm.
        assert!(warm_targets(&nodes, &needs(1, 90), &[], 1, 1).is_empty());
    }

    #[test]
    fn multi_gpu_replicas_never_span_mig_instances() {
        let mut nodes = vec![node("a", &[80, 80])];
        for g in &mut nodes[0].gpus {
            g.mig = true;
        }
        assert!(place(&nodes, &needs(2, 10)).is_err());
        assert_eq!(place(&nodes, &needs(1, 10)).unwrap().gpus, vec![0]);
    }

    proptest! {
        #[test]
        fn a_placement_always_fits(
            frees in proptest::collection::vec(proptest::collection::vec(0u64..100, 0..8), 0..6),
            unhealthy in proptest::collection::vec(any::<bool>(), 48),
            gpus in 1u32..4,
            gib in 1u64..90,
        ) {
            let mut k = 0;
            let nodes: Vec<NodeCandidate> = frees.iter().enumerate().map(|(i, f)| {
                let mut n = node(&format!("n{i}"), f);
                for g in &mut n.gpus { g.healthy = !unhealthy[k % 48]; k += 1; }
                n
            }).collect();
            match place(&nodes, &needs(gpus, gib)) {
                Ok(p) => {
                    let n = nodes.iter().find(|n| n.name == p.node).unwrap();
                    prop_assert_eq!(p.gpus.len() as u32, gpus);
                    for i in &p.gpus {
                        let g = &n.gpus[*i as usize];
                        prop_assert!(g.healthy && !g.taken && g.free_bytes >= gib * GIB);
                    }
                }
                Err(msg) => {
                    prop_assert!(msg.starts_with("needs"));
                    for n in &nodes {
                        let fit = n.gpus.iter().filter(|g| g.healthy && g.free_bytes >= gib * GIB).count();
                        prop_assert!(fit < gpus as usize);
                    }
                }
            }
        }
    }
}
