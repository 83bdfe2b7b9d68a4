//! The control loop's tick: node lifecycle, desired counts, the replica plan
//! (placement of missing replicas, removal of surplus ones, replacement of
//! replicas on lost nodes) and the per-node assignments derived from it.
//! Each phase decides (`decide.rs`, pure over the fleet) and then applies
//! (`apply.rs`) before the next phase decides: placement reads the counts
//! the scale phase set, the surplus the replacements left, and so on.
//! Also what a node's report may add to the plan: replicas it runs that the
//! plan lacks (adopted), and claims not believed.

use std::time::Instant;

use crate::domain::{unix_ms_now, EventKind, ReplicaState, ReplicaStatus};

use super::decide::Change;
use super::fleet::{Fleet, PlannedReplica};
use super::metrics::{Phase, PhaseClock};
use super::trust::{Refusal, TokenCheck};

/// The shortest retirement the property tests and the demo use: longer than
/// the demo balancer's refresh (it re-reads the endpoints every second), so
/// no new request is sent to a server that is about to close.
#[cfg(test)]
pub(super) const RETIRE_GRACE_MIN: std::time::Duration = std::time::Duration::from_secs(3);

impl Fleet {
    /// One pass of the control loop; the clock it returns has timed the
    /// phases so far, for the caller to carry on. Each phase's changes are
    /// applied before the next phase decides, and so are each replacement
    /// rule's (a replica a rule replaces is not judged by the next one).
    pub(super) fn tick(&mut self, now: Instant) -> PhaseClock {
        let mut clock = super::metrics::FleetMetrics::process().phases();
        let now_unix_ms = unix_ms_now();
        let changes = self.decide_node_states(now);
        self.apply(changes, now);
        clock.done(Phase::Nodes);
        self.take_reports(&mut clock);
        if self.reconnect_wait(now).is_some() {
            // Agents are still reconnecting after a coordinator start: what we
            // know of the fleet is partial, so we change nothing yet, and act
            // on what was asked meanwhile as soon as the grace ends.
            if self.tick_at.is_none() {
                self.tick_soon(self.started + self.settings.reconnect_grace);
            }
            return clock;
        }
        self.scale_phase(now, now_unix_ms / 1000, &mut clock);
        clock.done(Phase::Decide);
        self.take_reports(&mut clock);
        // Each rule reads the fleet afresh, as each phase does: when the
        // phase runs long, reports may come in between two rules.
        let changes = self.decide_lost_nodes(now);
        self.apply(changes, now);
        self.take_reports_due(&mut clock, Phase::Replace);
        let changes = self.decide_unhealthy_gpus();
        self.apply(changes, now);
        self.take_reports_due(&mut clock, Phase::Replace);
        self.avoid.retain(|_, until| *until > now);
        let changes = self.decide_crash_loops(now);
        self.apply(changes, now);
        self.take_reports_due(&mut clock, Phase::Replace);
        let changes = self.decide_spec_changes();
        self.apply(changes, now);
        clock.done(Phase::Replace);
        self.take_reports(&mut clock);
        let changes = self.decide_surplus(now);
        self.apply(changes, now);
        clock.done(Phase::Surplus);
        self.take_reports(&mut clock);
        let changes = self.decide_placements(now);
        // Every test's tick: the view chose as a scan of every node would.
        #[cfg(test)]
        if self.pick() == super::decide::Pick::View {
            assert_eq!(
                changes,
                self.decide_placements_by(now, super::decide::Pick::Scan),
                "placement through the view differs from a scan of every node"
            );
        }
        self.apply(changes, now);
        // Drains and the warm plan read the fleet afresh too.
        self.take_reports_due(&mut clock, Phase::Place);
        // Drains retire what the placements just replaced.
        let changes = self.decide_drains(now_unix_ms);
        self.apply(changes, now);
        self.take_reports_due(&mut clock, Phase::Place);
        let changes = vec![self.decide_warm(now, now_unix_ms / 1000)];
        self.apply(changes, now);
        clock.done(Phase::Place);
        self.take_reports(&mut clock);
        self.send_assignments();
        clock.done(Phase::Assign);
        clock
    }

    /// The `decide` phase: every model's scale step, applied. When it runs
    /// long, reports are taken in between two models' steps.
    pub(super) fn scale_phase(&mut self, now: Instant, now_unix_s: i64, clock: &mut PhaseClock) {
        // The models' inputs are read at once for a run of models, as many
        // as fit before the queued reports are due (at 10,000 replicas,
        // reading every model's took longer than reports may wait), then
        // those models decide. A report taken in between two models' steps
        // changes no input already read: the models of the run decide on
        // the fleet as it was when the run's inputs were read, and the
        // report counts for the runs after it and from the next tick on.
        // A step reads and writes only its own model's scaler and count.
        let names: Vec<String> = self.models.keys().cloned().collect();
        let mut awaiting = false;
        let mut next = 0;
        while next < names.len() {
            let inputs = self.scale_inputs_run(&names[next..], now, Some(self.reports_wait));
            next += inputs.len();
            for (name, inputs) in inputs {
                if let Some(change) = self.decide_scale(&name, &inputs, now, now_unix_s) {
                    awaiting |= change.awaits_measurement;
                    self.apply(vec![Change::Scale(Box::new(change))], now);
                }
                self.take_reports_due(clock, Phase::Decide);
            }
        }
        self.awaiting_measurement = awaiting;
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

    /// A node speaks only for itself: its report of a replica assigned to
    /// another node is dropped (never listed, never counted), with an event
    /// and a metric the first time.
    pub(super) fn screen_claims(&mut self, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        let plan = &self.plan;
        // Asked per report: the set only when some claim was refused.
        let reported: Option<std::collections::BTreeSet<String>> =
            (!node.refused_claims.is_empty())
                .then(|| node.replicas.iter().map(|r| r.id.clone()).collect());
        let mut foreign = Vec::new();
        node.replicas.retain(|r| match plan.get(&r.id) {
            Some(p) if p.node != name => {
                foreign.push((r.clone(), p.node.clone()));
                false
            }
            _ => true,
        });
        // A claim made again after a pause is news again.
        if let Some(reported) = reported {
            node.refused_claims.retain(|id| reported.contains(id));
        }
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
        self.record(EventKind::ClaimRefused {
            model,
            node: node.to_string(),
            replica,
            message,
        });
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
        let mut grown = Vec::new();
        for (r, unsigned) in adopted {
            let what = EventKind::ReplicaAdopted {
                model: r.model.clone(),
                node: r.node.clone(),
                replica: r.id.clone(),
                unsigned,
            };
            grown.push(r.model.clone());
            self.plan.insert(r);
            self.record(what);
        }
        grown.sort_unstable();
        grown.dedup();
        for model in grown {
            self.count_adopted_replicas(&model);
        }
    }

    /// An autoscaled model's count takes in the replicas adopted: what runs
    /// is its current count, and a lower desire waits the scale-down delay
    /// as any other. Without this, a coordinator that decided before the
    /// agents were back (a restart, a failover whose agents take longer than
    /// the reconnect grace) counted 0 running, walked to `min_replicas`,
    /// and retired the adopted replicas above it. A fixed or pinned count
    /// is the operator's: a surplus is retired as before.
    fn count_adopted_replicas(&mut self, name: &str) {
        let Some(model) = self.models.get(name) else {
            return;
        };
        let Some(scaling) = &model.spec.scaling else {
            return;
        };
        if model.record.pinned_replicas.is_some() {
            return;
        }
        let running = self
            .plan
            .of_model(name)
            .filter(|r| r.retiring_since.is_none())
            .count() as u32;
        let count = running.min(scaling.max_replicas);
        if let Some(model) = self.models.get_mut(name) {
            model.desired = model.desired.max(count);
        }
    }
}
