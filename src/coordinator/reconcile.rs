//! The control loop's tick: node lifecycle, desired counts, the replica plan
//! (placement of missing replicas, removal of surplus ones, replacement of
//! replicas on lost nodes) and the per-node assignments derived from it.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::api::NodeState;
use crate::domain::{Assignment, ReplicaSpec, ReplicaState, ReplicaStatus, ToAgent};

use super::fleet::{Fleet, PlannedReplica};
use super::metrics::{Phase, PhaseClock};
use super::placement::{self, GpuCandidate, NodeCandidate, ReplicaNeeds};
use super::trust::{Refusal, TokenCheck};

/// The shortest retirement the property tests and the demo use: longer than
/// the demo balancer's refresh (it re-reads the endpoints every second), so
/// no new request is sent to a server that is about to close.
#[cfg(test)]
pub(super) const RETIRE_GRACE_MIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Replicas placed in one tick at most: placing one looks at every node, and
/// reports wait while a tick runs, so a fleet-wide placement (thousands of
/// replicas applied at once) is spread over ticks a few hundred ms apart.
const PLACEMENTS_PER_TICK: usize = 256;

/// How long a node is avoided for a model whose replica crash-looped there.
const AVOID_AFTER_CRASHLOOP: std::time::Duration = std::time::Duration::from_secs(600);

/// What the plan holds on one node, as placing a model needs it.
#[derive(Default)]
struct PlannedOnNode {
    /// GPUs its replicas hold.
    taken: Vec<u32>,
    /// Replicas of the model being placed.
    model_replicas: u32,
    /// Host CPU and memory its replicas' specs ask for.
    asked: Vec<(f64, u64)>,
}

/// The plan's replicas by model, in one pass: per-model loops look their
/// model up here instead of scanning the whole plan each.
pub(super) fn plan_by_model(
    plan: &BTreeMap<String, PlannedReplica>,
) -> std::collections::HashMap<&str, Vec<&PlannedReplica>> {
    let mut out: std::collections::HashMap<&str, Vec<&PlannedReplica>> = Default::default();
    for r in plan.values() {
        out.entry(r.model.as_str()).or_default().push(r);
    }
    out
}

impl Fleet {
    /// One pass of the control loop; the clock it returns has timed the
    /// phases so far, for the caller to carry on.
    pub(super) fn tick(&mut self, now: Instant) -> PhaseClock {
        let mut clock = super::metrics::FleetMetrics::process().phases();
        self.announce_node_states(now);
        clock.done(Phase::Nodes);
        if self.reconnect_wait(now).is_some() {
            // Agents are still reconnecting after a coordinator start: what we
            // know of the fleet is partial, so we change nothing yet, and act
            // on what was asked meanwhile as soon as the grace ends.
            if self.tick_at.is_none() {
                self.tick_soon(self.started + self.settings.reconnect_grace);
            }
            return clock;
        }
        self.decide_desired(now);
        clock.done(Phase::Decide);
        self.replace_on_lost_nodes(now);
        self.replace_on_unhealthy_gpus();
        self.move_crash_looping(now);
        self.follow_spec_changes();
        clock.done(Phase::Replace);
        self.remove_surplus(now);
        self.finish_retirements(now);
        clock.done(Phase::Surplus);
        self.place_missing(now);
        self.drain_step();
        self.plan_warm(now);
        clock.done(Phase::Place);
        self.send_assignments();
        clock.done(Phase::Assign);
        clock
    }

    /// While the reconnect grace holds, why, in words. It holds for
    /// `reconnect_grace` after a start, and only while a node the store knew
    /// has not reconnected: a first start (no node known) or a fleet that is
    /// all back decides at once.
    pub(super) fn reconnect_wait(&self, now: Instant) -> Option<String> {
        let left = self
            .settings
            .reconnect_grace
            .checked_sub(now.saturating_duration_since(self.started))
            .filter(|d| !d.is_zero())?;
        if self.awaiting_agents.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.awaiting_agents.iter().map(String::as_str).collect();
        Some(format!(
            "waiting {} s for agents to reconnect ({} of {} known nodes not back: {}); no decisions until then",
            left.as_secs_f64().ceil(),
            names.len(),
            self.node_flags.len(),
            names.join(", ")
        ))
    }

    /// Records each node's lifecycle transitions once.
    fn announce_node_states(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for node in self.nodes.values_mut() {
            let state = node.liveness(now, self.settings.suspect_after, self.settings.lost_after);
            if state != node.announced {
                changes.push((node.name.clone(), node.announced, state));
                node.announced = state;
            }
        }
        for (name, from, to) in changes {
            let why = match to {
                NodeState::Suspect => format!(
                    "no report for {}",
                    humantime::format_duration(self.settings.suspect_after)
                ),
                NodeState::Lost => format!(
                    "no report for {}",
                    humantime::format_duration(self.settings.lost_after)
                ),
                _ => "reporting again".to_string(),
            };
            self.record(
                "node-state",
                "",
                &name,
                "",
                format!("{} → {}: {why}", from.as_str(), to.as_str()),
            );
        }
    }

    fn replace_on_lost_nodes(&mut self, now: Instant) {
        let lost: std::collections::HashSet<String> = self
            .nodes
            .values()
            .filter(|n| {
                n.liveness(now, self.settings.suspect_after, self.settings.lost_after)
                    == NodeState::Lost
            })
            .map(|n| n.name.clone())
            .collect();
        let doomed: Vec<PlannedReplica> = self
            .plan
            .values()
            .filter(|r| lost.contains(&r.node))
            .cloned()
            .collect();
        for r in doomed {
            self.plan.remove(&r.id);
            self.record(
                "replace",
                &r.model,
                &r.node,
                &r.id,
                format!(
                    "node {} is lost; replacing replica {} elsewhere",
                    r.node, r.id
                ),
            );
        }
    }

    /// A replica whose GPU turned unhealthy (Xid, fallen off the bus, ECC)
    /// is replaced on a healthy GPU: its own may never compute right again.
    fn replace_on_unhealthy_gpus(&mut self) {
        let mut doomed = Vec::new();
        for r in self.plan.values() {
            let Some(node) = self.nodes.get(&r.node) else {
                continue;
            };
            for g in &r.gpus {
                let info = node.gpus.iter().find(|i| i.index == *g);
                let sample = node.sample(*g);
                let healthy = info.is_none_or(|i| i.healthy) && sample.is_none_or(|s| s.healthy);
                if !healthy {
                    let reason = info
                        .map(|i| i.health_reason.clone())
                        .filter(|s| !s.is_empty())
                        .or_else(|| sample.map(|s| s.health_reason.clone()))
                        .unwrap_or_default();
                    doomed.push((r.clone(), *g, reason));
                    break;
                }
            }
        }
        for (r, gpu, reason) in doomed {
            self.plan.remove(&r.id);
            self.record(
                "replace",
                &r.model,
                &r.node,
                &r.id,
                format!("GPU {gpu} on {} is unhealthy ({reason}); replacing replica {} on a healthy GPU", r.node, r.id),
            );
        }
    }

    /// A replica crash-looping on one node moves to another node that can
    /// take it (the host may be what is wrong: a bad driver, a full disk).
    /// The node is avoided for that model for a while.
    fn move_crash_looping(&mut self, now: Instant) {
        self.avoid.retain(|_, until| *until > now);
        let looping: Vec<PlannedReplica> = self
            .plan
            .values()
            .filter(|r| self.reported_state(&r.id) == Some(ReplicaState::Crashloop))
            .cloned()
            .collect();
        for r in looping {
            let Some(m) = self.models.get(&r.model) else {
                continue;
            };
            let needs = ReplicaNeeds {
                gpus: m.spec.server.gpus,
                gpu_memory_bytes: m.spec.server.gpu_memory_bytes,
                spread: m.spec.spread,
            };
            let mut candidates = self.candidates(&r.model, now);
            for c in candidates.iter_mut().filter(|c| c.name == r.node) {
                c.unschedulable = Some("the replica crash-loops here".into());
            }
            if let Ok(p) = placement::place(&candidates, &needs) {
                self.avoid.insert(
                    (r.model.clone(), r.node.clone()),
                    now + AVOID_AFTER_CRASHLOOP,
                );
                self.plan.remove(&r.id);
                self.record(
                    "replace",
                    &r.model,
                    &r.node,
                    &r.id,
                    format!(
                        "replica {} crash-loops on {}; moving it (to {} next) and avoiding {} for {}",
                        r.id,
                        r.node,
                        p.node,
                        r.node,
                        humantime::format_duration(AVOID_AFTER_CRASHLOOP)
                    ),
                );
            }
        }
    }

    /// A changed spec hash reaches the agent in the next assignment, which
    /// replaces the replica (stop, then start with the new spec).
    fn follow_spec_changes(&mut self) {
        // Once per model, not per replica.
        let hashes: BTreeMap<&str, String> = self
            .models
            .iter()
            .map(|(name, m)| (name.as_str(), m.spec.spec_hash()))
            .collect();
        for r in self.plan.values_mut() {
            if let Some(hash) = hashes.get(r.model.as_str()) {
                if &r.spec_hash != hash {
                    r.spec_hash = hash.clone();
                }
            }
        }
    }

    /// Stops replicas beyond the desired count: ones not ready first, then
    /// the ones that became ready last.
    fn remove_surplus(&mut self, now: Instant) {
        // Built only if some model has a surplus: most ticks none has.
        let mut statuses = None;
        let by_model = plan_by_model(&self.plan);
        let mut removals = Vec::new();
        for (name, model) in &self.models {
            // Replicas on a draining node leave through the drain, not here.
            let mut mine: Vec<&PlannedReplica> = by_model
                .get(name.as_str())
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .copied()
                .filter(|r| !self.on_draining_node(&r.node))
                .filter(|r| r.retiring_since.is_none())
                .collect();
            let surplus = mine.len().saturating_sub(model.desired as usize);
            if surplus == 0 {
                continue;
            }
            let statuses = statuses.get_or_insert_with(|| self.reported_statuses());
            mine.sort_by_key(|r| {
                let s = statuses.get(&r.id);
                let ready = s.is_some_and(|s| s.0 == ReplicaState::Ready);
                let ready_since = s.map(|s| s.1).unwrap_or(i64::MAX);
                (ready, std::cmp::Reverse(ready_since))
            });
            for r in mine.into_iter().take(surplus) {
                removals.push(r.clone());
            }
        }
        for r in removals {
            self.retire(&r.id, now);
            self.record(
                "stop",
                &r.model,
                &r.node,
                &r.id,
                format!(
                    "retiring replica {} on {}: more replicas than desired (marked retiring in the endpoints now, stopped in {})",
                    r.id,
                    r.node,
                    humantime::format_duration(self.settings.retire_grace)
                ),
            );
        }
    }

    /// Marks a replica retiring in the endpoints; it stops after `retire_grace`.
    pub(super) fn retire(&mut self, id: &str, now: Instant) {
        if let Some(r) = self.plan.get_mut(id) {
            r.retiring_since.get_or_insert(now);
        }
    }

    /// Stops the replicas whose retirement grace has passed.
    fn finish_retirements(&mut self, now: Instant) {
        let grace = self.settings.retire_grace;
        self.plan.retain(|_, r| {
            r.retiring_since
                .is_none_or(|since| now.saturating_duration_since(since) < grace)
        });
    }

    fn place_missing(&mut self, now: Instant) {
        let names: Vec<String> = self.models.keys().cloned().collect();
        // Per model, in one pass over the plan: replicas serving, and those
        // retiring, off draining nodes (replicas on a draining node are on
        // their way out: replacements are placed for them).
        let mut counts: std::collections::HashMap<String, (u32, Vec<String>)> = Default::default();
        for r in self.plan.values() {
            if self.on_draining_node(&r.node) {
                continue;
            }
            let entry = counts.entry(r.model.clone()).or_default();
            match r.retiring_since {
                None => entry.0 += 1,
                Some(_) => entry.1.push(r.id.clone()),
            }
        }
        let mut placed = 0usize;
        for name in names {
            let model = &self.models[&name];
            let (current, retiring) = counts.remove(&name).unwrap_or_default();
            let desired = model.desired;
            let spec_hash = model.spec.spec_hash();
            let needs = ReplicaNeeds {
                gpus: model.spec.server.gpus,
                gpu_memory_bytes: model.spec.server.gpu_memory_bytes,
                spread: model.spec.spread,
            };
            // A replica still retiring is running capacity: keep it rather
            // than start another (a wake right after a scale-down, say).
            let mut current = current;
            for id in retiring
                .into_iter()
                .take(desired.saturating_sub(current) as usize)
            {
                if let Some(r) = self.plan.get_mut(&id) {
                    r.retiring_since = None;
                    let node = r.node.clone();
                    current += 1;
                    self.record(
                        "keep",
                        &name,
                        &node,
                        &id,
                        format!("keeping replica {id}: wanted again before it stopped"),
                    );
                }
            }
            let mut problem = String::new();
            if placed >= PLACEMENTS_PER_TICK {
                // The rest next tick, soon: reports wait while a tick runs.
                self.tick_soon(now);
                break;
            }
            // Built once per model; after each placement only the node
            // that took the replica is looked at again.
            let mut candidates = if current < desired {
                self.candidates(&name, now)
            } else {
                Vec::new()
            };
            for _ in current..desired {
                if placed >= PLACEMENTS_PER_TICK {
                    self.tick_soon(now);
                    break;
                }
                match placement::place(&candidates, &needs) {
                    Ok(p) => {
                        let id = self.new_replica_id(&name);
                        let replica = PlannedReplica {
                            id: id.clone(),
                            model: name.clone(),
                            node: p.node.clone(),
                            gpus: p.gpus.clone(),
                            spec_hash: spec_hash.clone(),
                            created: now,
                            retiring_since: None,
                        };
                        self.plan.insert(id.clone(), replica);
                        placed += 1;
                        if let (Some(slot), Some(fresh)) = (
                            candidates.iter_mut().find(|c| c.name == p.node),
                            self.candidate_on(&p.node, &name, now),
                        ) {
                            *slot = fresh;
                        }
                        let gpus: Vec<String> = p.gpus.iter().map(u32::to_string).collect();
                        self.record(
                            "place",
                            &name,
                            &p.node,
                            &id,
                            format!(
                                "placed {id} on {} GPU {} ({})",
                                p.node,
                                gpus.join(","),
                                p.why
                            ),
                        );
                    }
                    Err(why) => {
                        problem = why;
                        break;
                    }
                }
            }
            let model = self
                .models
                .get_mut(&name)
                .expect("model names were just listed");
            if model.placement_problem != problem {
                model.placement_problem = problem.clone();
                if !problem.is_empty() {
                    self.record("unplaceable", &name, "", "", problem);
                }
            }
        }
    }

    /// The fleet as placement sees it for one model.
    pub(super) fn candidates(&self, model: &str, now: Instant) -> Vec<NodeCandidate> {
        let planned = self.planned_on_nodes(model, None);
        self.nodes
            .values()
            .map(|n| self.candidate(n, model, now, planned.get(n.name.as_str())))
            .collect()
    }

    /// One node as placement sees it for one model (after a placement
    /// there, the rest of the fleet is unchanged).
    fn candidate_on(&self, node: &str, model: &str, now: Instant) -> Option<NodeCandidate> {
        let n = self.nodes.get(node)?;
        let planned = self.planned_on_nodes(model, Some(node));
        Some(self.candidate(n, model, now, planned.get(node)))
    }

    /// In one pass over the plan (not one per node), per node (or for
    /// `only` that one): what the plan holds there for placing `model`.
    fn planned_on_nodes(&self, model: &str, only: Option<&str>) -> BTreeMap<&str, PlannedOnNode> {
        let mut out: BTreeMap<&str, PlannedOnNode> = BTreeMap::new();
        for r in self.plan.values() {
            if only.is_some_and(|n| n != r.node) {
                continue;
            }
            let entry = out.entry(r.node.as_str()).or_default();
            entry.taken.extend(r.gpus.iter().copied());
            entry.model_replicas += u32::from(r.model == model);
            if let Some(m) = self.models.get(&r.model) {
                entry
                    .asked
                    .push((m.spec.server.cpu, m.spec.server.memory_bytes));
            }
        }
        out
    }

    fn candidate(
        &self,
        n: &super::nodes::Node,
        model: &str,
        now: Instant,
        planned: Option<&PlannedOnNode>,
    ) -> NodeCandidate {
        let empty = PlannedOnNode::default();
        let planned = planned.unwrap_or(&empty);
        let state = self.node_state(n, now);
        let unschedulable = if self
            .avoid
            .contains_key(&(model.to_string(), n.name.clone()))
        {
            Some("a replica of this model crash-looped here recently".to_string())
        } else if n.session.is_none() {
            Some("disconnected".to_string())
        } else if state != NodeState::Ready {
            Some(state.as_str().to_string())
        } else {
            self.host_shortfall(n, model, &planned.asked)
        };
        let mut taken = planned.taken.clone();
        // Replicas still running outside the plan (being stopped)
        // hold their GPUs until they are gone.
        taken.extend(
            n.replicas
                .iter()
                .filter(|r| r.state.is_live())
                .flat_map(|r| r.gpus.iter().copied()),
        );
        let warm = n
            .warm
            .iter()
            .find(|w| w.model == model && w.total_bytes > 0)
            .map(|w| w.resident_bytes as f64 / w.total_bytes as f64)
            .unwrap_or(0.0);
        NodeCandidate {
            name: n.name.clone(),
            unschedulable,
            gpus: n
                .gpus
                .iter()
                .map(|g| {
                    let s = n.sample(g.index);
                    GpuCandidate {
                        index: g.index,
                        healthy: g.healthy && s.is_none_or(|s| s.healthy),
                        taken: taken.contains(&g.index),
                        free_bytes: s
                            .map(|s| s.memory_total_bytes.saturating_sub(s.memory_used_bytes))
                            .unwrap_or(g.memory_total_bytes),
                        mig: g.mig_parent.is_some(),
                    }
                })
                .collect(),
            warm_fraction: warm,
            model_replicas: planned.model_replicas,
        }
    }

    fn new_replica_id(&self, model: &str) -> String {
        loop {
            let id = format!("{model}-{:05x}", rand::random::<u32>() & 0xfffff);
            if !self.plan.contains_key(&id) {
                return id;
            }
        }
    }

    /// (state, ready since) of every replica the agents report, by id.
    /// Each replica counts only as reported by the node it is assigned to.
    fn reported_statuses(&self) -> BTreeMap<String, (ReplicaState, i64)> {
        self.nodes
            .values()
            .flat_map(|n| {
                n.replicas
                    .iter()
                    .filter(|r| self.plan.get(&r.id).is_some_and(|p| p.node == n.name))
                    .map(|r| (r.id.clone(), (r.state, r.ready_unix_ms)))
            })
            .collect()
    }

    /// A node speaks only for itself: its report of a replica assigned to
    /// another node is dropped (never listed, never counted), with an event
    /// and a metric the first time.
    pub(super) fn screen_claims(&mut self, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        let plan = &self.plan;
        let reported: std::collections::BTreeSet<String> =
            node.replicas.iter().map(|r| r.id.clone()).collect();
        let mut foreign = Vec::new();
        node.replicas.retain(|r| match plan.get(&r.id) {
            Some(p) if p.node != name => {
                foreign.push((r.clone(), p.node.clone()));
                false
            }
            _ => true,
        });
        // A claim made again after a pause is news again.
        node.refused_claims.retain(|id| reported.contains(id));
        for (r, owner) in foreign {
            let message = format!(
                "ignored {name}'s report of replica {:?}: it is assigned to {owner}, and a node speaks only for its own replicas",
                r.id
            );
            self.refuse_claim(name, &r, Refusal::OtherNode, message);
        }
    }

    /// Counts and records a refused claim once per (node, replica).
    fn refuse_claim(&mut self, node: &str, r: &ReplicaStatus, why: Refusal, message: String) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if !n.refused_claims.insert(r.id.clone()) {
            return;
        }
        *self
            .refused_claims
            .entry((node.to_string(), why))
            .or_default() += 1;
        // The model is named only when it is one of ours: the rest of the
        // report is the node's word.
        let model = if self.models.contains_key(&r.model) {
            r.model.clone()
        } else {
            String::new()
        };
        let replica = if crate::domain::valid_replica_id(&r.id) {
            r.id.clone()
        } else {
            String::new()
        };
        self.record("claim-refused", &model, node, &replica, message);
    }

    /// Takes replicas an agent reports (after a coordinator restart or a
    /// node's return) into the plan, so they are kept rather than duplicated.
    pub(super) fn adopt_reported_replicas(&mut self, node: &str, now: Instant) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let mut adopted = Vec::new();
        let mut refused = Vec::new();
        for r in &n.replicas {
            let keep = matches!(
                r.state,
                ReplicaState::Starting
                    | ReplicaState::Ready
                    | ReplicaState::Crashloop
                    | ReplicaState::Failed
            );
            let known =
                self.models.contains_key(&r.model) || self.quarantined.contains_key(&r.model);
            if !keep || !known || self.plan.contains_key(&r.id) {
                continue;
            }
            let check = self
                .assignment_key
                .check(node, &r.id, &r.model, &r.assignment_token);
            let unsigned = check == TokenCheck::Missing && self.settings.adopt_unsigned_replicas;
            if let Some(why) = Refusal::from_check(check).filter(|_| !unsigned) {
                refused.push((r.clone(), why));
                continue;
            }
            adopted.push((
                PlannedReplica {
                    id: r.id.clone(),
                    model: r.model.clone(),
                    node: node.to_string(),
                    gpus: r.gpus.clone(),
                    spec_hash: r.spec_hash.clone(),
                    created: now,
                    retiring_since: None,
                },
                unsigned,
            ));
        }
        for (r, why) in refused {
            let token = match why {
                Refusal::NoToken => "it carries no assignment token (an agent or a replica record from before tokens, or a replica this coordinator never placed)",
                _ => "its assignment token is not one this coordinator signed for this node and replica",
            };
            let message = format!(
                "not adopting replica {:?} that {node} reports: {token}; it is left out of {node}'s assignment, so its agent stops it, and the model's replicas are placed afresh",
                r.id
            );
            self.refuse_claim(node, &r, why, message);
        }
        for (r, unsigned) in adopted {
            let unsigned = if unsigned {
                " (without an assignment token: adopt_unsigned_replicas is on; it gets one with its next assignment)"
            } else {
                ""
            };
            let message = format!(
                "adopted replica {} that {} reports running{unsigned}; it counts toward the model's replicas (any surplus is stopped)",
                r.id, r.node
            );
            let (model, node, id) = (r.model.clone(), r.node.clone(), r.id.clone());
            self.plan.insert(r.id.clone(), r);
            self.record("adopt", &model, &node, &id, message);
        }
    }

    /// Sends each node whose desired state changed its new assignment. A
    /// fingerprint of the plan's part for each node finds them, so a tick
    /// in a steady fleet builds no assignment (specs, tokens) at all.
    fn send_assignments(&mut self) {
        use std::hash::{Hash, Hasher};
        let started = Instant::now();
        let spec_prints: BTreeMap<&str, u64> = self
            .models
            .iter()
            .map(|(name, m)| {
                let mut h = std::hash::DefaultHasher::new();
                m.record.spec_toml.hash(&mut h);
                (name.as_str(), h.finish())
            })
            .collect();
        let mut by_node: BTreeMap<&str, Vec<&PlannedReplica>> = BTreeMap::new();
        for r in self.plan.values() {
            by_node.entry(r.node.as_str()).or_default().push(r);
        }
        let mut sent = 0u64;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let Some(node) = self.nodes.get(&name) else {
                continue;
            };
            if node.session.is_none() {
                continue;
            }
            let planned = by_node.remove(name.as_str()).unwrap_or_default();
            let (warm, evict) = self.warm_specs(&name);
            let mut h = std::hash::DefaultHasher::new();
            for r in &planned {
                (&r.id, &r.model, &r.gpus, spec_prints.get(r.model.as_str())).hash(&mut h);
            }
            warm.len().hash(&mut h);
            for w in warm.iter().chain(&evict) {
                (&w.model, &w.path).hash(&mut h);
            }
            let key = h.finish();
            if node.sent.is_some() && node.sent_key == key {
                continue;
            }
            let mut replicas = Vec::new();
            let mut keep = Vec::new();
            for r in planned {
                if let Some(m) = self.models.get(&r.model) {
                    replicas.push(ReplicaSpec {
                        assignment_token: self.assignment_key.token(&r.node, &r.id, &r.model),
                        ..m.spec.replica_spec(&r.id, r.gpus.clone())
                    });
                } else if self.quarantined.contains_key(&r.model) {
                    keep.push(r.id.clone());
                }
            }
            let node = self.nodes.get_mut(&name).expect("names were just listed");
            let Some(session) = &node.session else {
                continue;
            };
            let wanted = Assignment {
                generation: node.generation + 1,
                epoch: self.epoch,
                replicas,
                warm,
                evict,
                keep,
            };
            if node.sent.as_ref().is_some_and(|s| s.same_state(&wanted)) {
                node.sent_key = key;
                continue;
            }
            match session.outbox.try_send(ToAgent::Assignment(wanted.clone())) {
                Ok(()) => {
                    node.generation = wanted.generation;
                    node.sent = Some(wanted);
                    node.sent_key = key;
                    sent += 1;
                }
                // A full outbox means the agent is slow to read; the next tick
                // tries again with whatever is wanted then.
                Err(e) => {
                    tracing::debug!(node = %name, error = %e, "assignment not sent this tick")
                }
            }
        }
        if sent > 0 {
            super::metrics::FleetMetrics::process()
                .fanout
                .observe(started.elapsed());
            super::metrics::FleetMetrics::process()
                .assignments_sent
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
