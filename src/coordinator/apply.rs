//! The control loop's effects: [`Fleet::apply`] carries out the typed
//! [`Change`]s the decision steps return (the replica plan, the models'
//! counts and timelines, node flags, the warm plan), records each as a typed
//! event, and `send_assignments` sends each node whose part of the plan
//! changed its new assignment.

use std::time::Instant;

use crate::api::SignalPoint;
use crate::domain::event::ScaleRule;
use crate::domain::{unix_ms_now, Assignment, EventKind, ReplicaSpec, ToAgent};

use super::decide::{liveness, Change, RetireReason, ScaleChange};
use super::fleet::{Fleet, PlannedReplica};

/// Ticks of signals kept per model for `explain` (10 minutes at 1 s; early
/// ticks on news take their share).
const TIMELINE_LEN: usize = 600;

impl Fleet {
    /// Carries out `changes` in order, recording an event for each one an
    /// operator reads.
    pub(super) fn apply(&mut self, changes: Vec<Change>, now: Instant) {
        for change in changes {
            self.apply_one(change, now);
        }
        self.refresh_view();
    }

    fn apply_one(&mut self, change: Change, now: Instant) {
        match change {
            Change::NodeState {
                node,
                from,
                to,
                silent,
            } => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.announced = to;
                }
                self.record(EventKind::NodeState {
                    node,
                    from: liveness(from),
                    to: liveness(to),
                    silent_ms: silent.as_millis() as u64,
                });
            }
            Change::Scale(c) => self.apply_scale(*c),
            Change::Replace {
                replica,
                reason,
                avoid_until,
            } => {
                if let Some(until) = avoid_until {
                    self.avoid
                        .insert((replica.model.clone(), replica.node.clone()), until);
                }
                self.plan.remove(&replica.id);
                self.record(EventKind::ReplicaReplaced {
                    model: replica.model,
                    node: replica.node,
                    replica: replica.id,
                    reason,
                });
            }
            Change::Respec { replica, spec_hash } => {
                self.plan.update(&replica, |r| r.spec_hash = spec_hash);
            }
            Change::Retire { replica, reason } => {
                self.retire(&replica.id, now);
                let PlannedReplica {
                    id, model, node, ..
                } = replica;
                self.record(match reason {
                    RetireReason::Surplus => EventKind::ReplicaRetiring {
                        model,
                        node,
                        replica: id,
                        grace_ms: self.settings.retire_grace.as_millis() as u64,
                    },
                    RetireReason::Drain(reason) => EventKind::DrainStop {
                        model,
                        node,
                        replica: id,
                        reason,
                        grace_ms: self.settings.retire_grace.as_millis() as u64,
                    },
                });
            }
            Change::Stop { replica } => {
                self.plan.remove(&replica);
            }
            Change::Keep { replica } => {
                if self.plan.update(&replica.id, |r| r.retiring_since = None) {
                    self.record(EventKind::ReplicaKept {
                        model: replica.model,
                        node: replica.node,
                        replica: replica.id,
                    });
                }
            }
            Change::Place { replica, why } => {
                // The next placement draws its id afresh.
                self.id_seed = rand::random();
                let what = EventKind::ReplicaPlaced {
                    model: replica.model.clone(),
                    node: replica.node.clone(),
                    replica: replica.id.clone(),
                    gpus: replica.gpus.clone(),
                    why,
                };
                self.plan.insert(replica);
                self.record(what);
            }
            Change::PlacementProblem { model, problem } => {
                if let Some(m) = self.models.get_mut(&model) {
                    m.placement_problem = problem.clone();
                    if !problem.is_empty() {
                        self.record(EventKind::Unplaceable { model, problem });
                    }
                }
            }
            Change::PlaceRestSoon => self.tick_soon(now),
            Change::DrainFinished { node } => {
                let mut flags = self.node_flags.get(&node).cloned().unwrap_or_default();
                flags.cordoned = true;
                flags.draining = false;
                flags.drain_deadline_unix_ms = 0;
                if let Err(e) = self.set_node_flags(&node, flags) {
                    tracing::warn!(node = %node, error = %e, "drain finished but not saved");
                }
                self.record(EventKind::DrainFinished { node });
            }
            Change::WarmPlan { plan, news } => {
                if self.warm_plan != plan {
                    self.assign_all = true;
                }
                self.warm_plan = plan;
                for (model, on) in news {
                    self.record(EventKind::WarmPlanned { model, on });
                }
            }
        }
    }

    /// A model's count for this tick: recorded as an event when it changes
    /// (or first, or with a new warning), and in the model's timeline always.
    fn apply_scale(&mut self, c: ScaleChange) {
        let Some(model) = self.models.get_mut(&c.model) else {
            return;
        };
        let mut events = Vec::new();
        if let (Some(missing), Some(spec)) = (&c.missing, &model.spec.scaling) {
            if *missing != model.missing_signals {
                let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
                events.push(EventKind::SignalsMissing {
                    model: c.model.clone(),
                    missing: names(missing),
                    before: names(&model.missing_signals),
                    wait: super::autoscale::format_span(spec.stable_window),
                });
            }
        }
        model.missing_signals = c.missing.unwrap_or_default();
        model.decision_now = c.rule.describe(c.to);
        // A new warning is news even when the count holds.
        let warned = matches!(
            &c.rule,
            ScaleRule::Policy {
                warning: Some(_),
                ..
            }
        ) && !model.last_decision.contains("(warning: ");
        if c.to != model.desired || model.last_decision.is_empty() || warned {
            let scaled = EventKind::Scaled {
                model: c.model.clone(),
                from: c.from,
                to: c.to,
                rule: c.rule,
                inputs: c.inputs,
            };
            model.desired = c.to;
            model.last_decision = scaled.message();
            events.push(scaled);
        }
        let now_ms = unix_ms_now();
        model.timeline.push_back(SignalPoint {
            time: crate::api::rfc3339(now_ms),
            time_unix_ms: now_ms,
            ongoing: c.signals.ongoing,
            p95_latency_s: c.signals.p95_latency_s,
            gpu_utilization: c.signals.gpu_utilization,
            kv_cache_usage: c.signals.kv_cache_usage,
            desired: c.to,
            ready: c.signals.ready,
            current: c.current,
            panic: c.panic,
        });
        while model.timeline.len() > TIMELINE_LEN {
            model.timeline.pop_front();
        }
        for e in events {
            self.record(e);
        }
    }

    /// Marks a replica retiring in the endpoints; it stops after `retire_grace`.
    pub(super) fn retire(&mut self, id: &str, now: Instant) {
        self.plan.update(id, |r| {
            r.retiring_since.get_or_insert(now);
        });
    }

    /// Sends each node whose desired state changed its new assignment. Only
    /// the nodes marked since the last time are looked at (all of them
    /// after a change to a model or the warm plan), and a fingerprint of
    /// the plan's part for each tells whether it changed, so a tick in a
    /// steady fleet builds no assignment (specs, tokens) at all.
    pub(super) fn send_assignments(&mut self) {
        let started = Instant::now();
        // Nodes whose planned replicas changed are marked by this.
        self.refresh_view();
        let marked: Vec<String> = if std::mem::take(&mut self.assign_all) {
            self.assign_stale.clear();
            self.nodes.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.assign_stale).into_iter().collect()
        };
        // First the nodes whose fingerprint moved: in a steady fleet, none.
        let changed: Vec<(String, u64)> = marked
            .into_iter()
            .filter_map(|name| {
                let node = self.nodes.get(&name).filter(|n| n.session.is_some())?;
                let key = self.assignment_print(&name);
                (node.sent.is_none() || node.sent_key != key).then_some((name, key))
            })
            .collect();
        let mut sent = 0u64;
        for (name, key) in changed {
            let planned: Vec<&PlannedReplica> = self.plan.on_node(&name).collect();
            let (warm, evict) = self.warm_specs(&name);
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
                    tracing::debug!(node = %name, error = %e, "assignment not sent this tick");
                    self.assign_stale.insert(name);
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
        #[cfg(test)]
        self.check_assignments();
    }

    /// A fingerprint of the plan's part for `node`: its replicas (ids,
    /// models, GPUs, their models' specs) and its warm and evict lists.
    fn assignment_print(&self, node: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for r in self.plan.on_node(node) {
            let spec = self.models.get(&r.model).map(|m| &m.record.spec_toml);
            (&r.id, &r.model, &r.gpus, spec).hash(&mut h);
        }
        let (warm, evict) = self.warm_specs(node);
        warm.len().hash(&mut h);
        for w in warm.iter().chain(&evict) {
            (&w.model, &w.path).hash(&mut h);
        }
        h.finish()
    }

    /// Every change to what a node should run marks it: after assignments
    /// went out, each connected node has been sent its present one, or is
    /// marked to be tried again.
    #[cfg(test)]
    fn check_assignments(&self) {
        for (name, n) in self.nodes.iter().filter(|(_, n)| n.session.is_some()) {
            if self.assign_stale.contains(name) {
                continue;
            }
            assert!(
                n.sent.is_some() && n.sent_key == self.assignment_print(name),
                "{name}'s assignment changed but the node was not marked"
            );
        }
    }
}
