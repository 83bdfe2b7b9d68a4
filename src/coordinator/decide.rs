//! The control loop's decisions: functions of a read-only view of the fleet
//! (`&Fleet`: nodes, models, the replica plan) and the tick's time, each
//! returning typed [`Change`]s with the reason and inputs behind them.
//! Nothing here mutates the fleet; `Fleet::apply` (`apply.rs`) does.
//!
//! One decision carries state of its own: each model's scaler
//! ([`ModelScaler`]: windows, demand history, forecast score) is advanced by
//! [`scale_step`], the very step the simulator runs; `decide_scale` borrows
//! the fleet mutably for that alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::api::NodeState;
use crate::config::{ModelSpec, WarmMode};
use crate::domain::event::{DrainReason, NodeLiveness, ReplaceReason, ScaleRule};
use crate::domain::{ReplicaState, ReplicaStatus};

use super::autoscale::{ModelScaler, Signals, Tick};
use super::fleet::{Fleet, Model, PlannedReplica};
use super::nodes::Node;
use super::placement::{self, warm_targets, GpuCandidate, NodeCandidate, ReplicaNeeds};
use super::scaling::PREDICT_HORIZON;

/// Replicas placed in one tick at most: placing one looks at every node, and
/// reports wait while a tick runs, so a fleet-wide placement (thousands of
/// replicas applied at once) is spread over ticks a few hundred ms apart.
const PLACEMENTS_PER_TICK: usize = 256;

/// How long a node is avoided for a model whose replica crash-looped there.
pub(super) const AVOID_AFTER_CRASHLOOP: Duration = Duration::from_secs(600);

/// One thing the control loop decided to change, with why.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A node's lifecycle state changed (announced once).
    NodeState {
        node: String,
        from: NodeState,
        to: NodeState,
        /// The silence that judged it.
        silent: Duration,
    },
    /// A model's replica count this tick, also when it holds.
    Scale(Box<ScaleChange>),
    /// A replica leaves the plan at once; the placement phase replaces it.
    Replace {
        replica: PlannedReplica,
        reason: ReplaceReason,
        /// Its node is avoided for its model until then (a crash loop).
        avoid_until: Option<Instant>,
    },
    /// A model's spec changed: the replica's next assignment restarts it
    /// with the new spec.
    Respec { replica: String, spec_hash: String },
    /// A replica leaves the endpoints now and stops after the retire grace.
    Retire {
        replica: PlannedReplica,
        reason: RetireReason,
    },
    /// A retiring replica's grace is over: it leaves the plan.
    Stop { replica: String },
    /// A retiring replica is wanted again before it stopped.
    Keep { replica: PlannedReplica },
    /// A new replica; `why` is placement's reason (warm or cold, spread).
    Place {
        replica: PlannedReplica,
        why: String,
    },
    /// What keeps a model's missing replicas from being placed changed
    /// (empty: nothing does any more).
    PlacementProblem { model: String, problem: String },
    /// One tick's placement budget is spent: the rest at an early tick.
    PlaceRestSoon,
    /// A draining node runs nothing any more.
    DrainFinished { node: String },
    /// The nodes that keep weights warm beyond those running them, node →
    /// model → why; `news` names the models whose nodes changed.
    WarmPlan {
        plan: BTreeMap<String, BTreeMap<String, &'static str>>,
        news: Vec<(String, Vec<String>)>,
    },
}

/// Why a replica is retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireReason {
    /// More replicas than desired.
    Surplus,
    /// Its node drains.
    Drain(DrainReason),
}

/// A model's scale decision and the signals it was made on.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleChange {
    pub model: String,
    /// The count decided last tick.
    pub from: u32,
    pub to: u32,
    pub rule: ScaleRule,
    /// The numbers behind a policy's decision (empty when pinned or fixed).
    pub inputs: Vec<(String, String)>,
    pub panic: bool,
    /// A surge awaits the next measurement: decide again when it comes.
    pub awaits_measurement: bool,
    /// Signals the spec targets that the replicas' metrics lack (`None`
    /// when no policy reads them: pinned or fixed).
    pub missing: Option<Vec<&'static str>>,
    pub signals: Signals,
    /// Replicas planned and not retiring.
    pub current: u32,
}

/// What a model's scaling step reads from the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleInputs {
    pub signals: Signals,
    /// Whether the signals are news (at least one replica scraped anew, or
    /// a gateway's report): `false` holds the autoscaler's windows.
    pub fresh: bool,
    /// Its replicas not retiring: `(id, ready, since placement)`.
    pub replicas: Vec<(String, bool, Duration)>,
}

/// The model a scale step decides for.
#[derive(Debug, Clone, Copy)]
pub struct ScaledModel<'a> {
    pub name: &'a str,
    pub spec: &'a ModelSpec,
    /// `model scale --replicas N`.
    pub pinned: Option<u32>,
    /// The count decided last tick.
    pub desired: u32,
}

/// One model's scale decision: a pinned count, the fixed `replicas`, or the
/// autoscaler's step on the model's signals. Advances only `scaler` (the
/// decision's own memory); the simulator runs the same [`ModelScaler::step`].
pub fn scale_step(
    model: ScaledModel<'_>,
    scaler: &mut ModelScaler,
    inputs: &ScaleInputs,
    now: Instant,
    now_unix_s: i64,
) -> ScaleChange {
    let from = model.desired;
    scaler.replicas_seen(
        inputs
            .replicas
            .iter()
            .map(|(id, ready, age)| (id.as_str(), *ready, *age)),
    );
    let mut change = ScaleChange {
        model: model.name.to_string(),
        from,
        to: from,
        rule: ScaleRule::Fixed,
        inputs: Vec::new(),
        panic: false,
        awaits_measurement: false,
        missing: None,
        signals: inputs.signals,
        current: inputs.replicas.len() as u32,
    };
    match (model.pinned, &model.spec.scaling) {
        (Some(n), _) => {
            change.to = n;
            change.rule = ScaleRule::Pinned;
        }
        (None, None) => change.to = model.spec.replicas,
        (None, Some(scaling)) => {
            let tick = Tick {
                now,
                now_unix_s,
                signals: inputs.fresh.then_some(inputs.signals),
                current: from,
                default_horizon: PREDICT_HORIZON,
                forecast: false,
            };
            let d = scaler.step(scaling, &tick).decision;
            change.to = d.desired;
            change.rule = ScaleRule::Policy {
                rule: d.rule.to_string(),
                reason: d.reason,
                warning: d.warning,
            };
            change.inputs = d.inputs;
            change.panic = d.panic;
            change.awaits_measurement = d.awaits_measurement;
            change.missing = Some(d.missing);
        }
    }
    change
}

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

impl PlannedOnNode {
    fn add(&mut self, r: &PlannedReplica, model: &str, models: &BTreeMap<String, Model>) {
        self.taken.extend(r.gpus.iter().copied());
        self.model_replicas += u32::from(r.model == model);
        if let Some(m) = models.get(&r.model) {
            self.asked
                .push((m.spec.server.cpu, m.spec.server.memory_bytes));
        }
    }
}

/// The plan's replicas by model, in one pass: per-model loops look their
/// model up here instead of scanning the whole plan each.
pub(super) fn plan_by_model(
    plan: &BTreeMap<String, PlannedReplica>,
) -> TickMap<&str, Vec<&PlannedReplica>> {
    let mut out: TickMap<&str, Vec<&PlannedReplica>> = Default::default();
    for r in plan.values() {
        out.entry(r.model.as_str()).or_default().push(r);
    }
    out
}

/// A map built and dropped within one tick, keyed by names and ids: hashed
/// with foldhash (randomly seeded, several times faster than the default
/// SipHash on short strings; these maps hold every replica, every tick).
pub(super) type TickMap<K, V> = foldhash::HashMap<K, V>;

/// What each node reports of each replica, by (node, replica id): the
/// first status a node lists for an id, as a search of its list finds it.
type Reported<'a> = TickMap<(&'a str, &'a str), (&'a Node, &'a ReplicaStatus)>;

impl Fleet {
    /// Each node's lifecycle transition since it was last announced.
    pub(super) fn decide_node_states(&self, now: Instant) -> Vec<Change> {
        let (suspect, lost) = (self.settings.suspect_after, self.settings.lost_after);
        self.nodes
            .values()
            .filter_map(|node| {
                let to = node.liveness(now, suspect, lost);
                (to != node.announced).then(|| Change::NodeState {
                    node: node.name.clone(),
                    from: node.announced,
                    to,
                    silent: match to {
                        NodeState::Suspect => suspect,
                        NodeState::Lost => lost,
                        _ => Duration::ZERO,
                    },
                })
            })
            .collect()
    }

    /// One model's scale step on `inputs` (read by [`Fleet::scale_inputs`]
    /// for every model at once). Takes `&mut self` only for the model's
    /// scaler; see [`scale_step`]. `None` for a model no longer applied.
    pub(super) fn decide_scale(
        &mut self,
        name: &str,
        inputs: &ScaleInputs,
        now: Instant,
        now_unix_s: i64,
    ) -> Option<ScaleChange> {
        let m = self.models.get_mut(name)?;
        let model = ScaledModel {
            name,
            spec: &m.spec,
            pinned: m.record.pinned_replicas,
            desired: m.desired,
        };
        Some(scale_step(model, &mut m.scaler, inputs, now, now_unix_s))
    }

    /// What each model's scale step reads from the fleet, by model.
    #[cfg(test)]
    pub(super) fn scale_inputs(&self, now: Instant) -> Vec<(String, ScaleInputs)> {
        let names: Vec<String> = self.models.keys().cloned().collect();
        self.scale_inputs_run(&names, now, None)
    }

    /// The scale inputs of a run of `names` from the first, read at once:
    /// all of them, or those read within `budget` (at least one; a zero
    /// budget reads one).
    pub(super) fn scale_inputs_run(
        &self,
        names: &[String],
        now: Instant,
        budget: Option<Duration>,
    ) -> Vec<(String, ScaleInputs)> {
        let started = Instant::now();
        let mut out = Vec::new();
        for name in names {
            // The model's replicas from the plan's index by model, and each
            // one's status from its node: no pass over the whole plan or
            // every node, so a run costs what its models hold.
            let planned: Vec<&PlannedReplica> = self.plan.of_model(name).collect();
            let reported = self.reported_of(&planned);
            out.push((
                name.clone(),
                self.model_inputs(name, &planned, &reported, now),
            ));
            if budget.is_some_and(|b| started.elapsed() >= b) {
                break;
            }
        }
        // Every test's tick: the indexed lookups read what a scan reads.
        #[cfg(test)]
        {
            let scan = self.scale_inputs_by_scan(now);
            for (name, inputs) in &out {
                let (_, expected) = scan.iter().find(|(n, _)| n == name).expect("a model");
                assert_eq!(
                    inputs, expected,
                    "scale inputs through the index differ from a scan of the plan"
                );
            }
        }
        out
    }

    /// One model's scale inputs from its `planned` replicas and what their
    /// nodes report of them.
    fn model_inputs(
        &self,
        model: &str,
        planned: &[&PlannedReplica],
        reported: &Reported<'_>,
        now: Instant,
    ) -> ScaleInputs {
        let mut replicas = Vec::with_capacity(planned.len());
        let (signals, fresh) = self.model_signals(model, planned, reported, now, &mut replicas);
        ScaleInputs {
            signals,
            fresh,
            replicas,
        }
    }

    /// What the nodes of `planned` report of each: its node looked up by
    /// name, the first status its list gives for the id.
    fn reported_of<'a>(&'a self, planned: &[&'a PlannedReplica]) -> Reported<'a> {
        let mut reported: Reported<'a> = Reported::default();
        for r in planned {
            let Some(node) = self.nodes.get(&r.node) else {
                continue;
            };
            if let Some(st) = node.replicas.iter().find(|x| x.id == r.id) {
                reported.insert((r.node.as_str(), r.id.as_str()), (node, st));
            }
        }
        reported
    }

    /// `scale_inputs` without the plan's index by model: per model a pass
    /// over the whole plan. Tests compare the two at every tick.
    #[cfg(test)]
    pub(super) fn scale_inputs_by_scan(&self, now: Instant) -> Vec<(String, ScaleInputs)> {
        self.models
            .keys()
            .map(|name| {
                let planned: Vec<&PlannedReplica> =
                    self.plan.values().filter(|r| &r.model == name).collect();
                let reported = self.reported_of(&planned);
                (
                    name.clone(),
                    self.model_inputs(name, &planned, &reported, now),
                )
            })
            .collect()
    }

    /// The model's signals this tick, from what its replicas' nodes report
    /// and what its gateways hold. `fresh` is false when neither has news
    /// (nothing to judge by).
    fn model_signals(
        &self,
        model: &str,
        planned: &[&PlannedReplica],
        reported: &Reported<'_>,
        now: Instant,
        replicas: &mut Vec<(String, bool, Duration)>,
    ) -> (Signals, bool) {
        let mut s = Signals {
            waiting: Some(0.0),
            ..Signals::default()
        };
        let mut fresh = false;
        let mut known = true;
        let mut oldest = None;
        let mut kv = Vec::new();
        let mut util = Vec::new();
        for r in planned.iter().filter(|r| r.retiring_since.is_none()) {
            let status = reported.get(&(r.node.as_str(), r.id.as_str()));
            // Also the scale step's list of replicas, from the same lookup.
            let ready = status.is_some_and(|(_, st)| st.state == ReplicaState::Ready);
            replicas.push((
                r.id.clone(),
                ready,
                now.saturating_duration_since(r.created),
            ));
            match status {
                Some(&(node, st)) if ready => {
                    s.ready += 1;
                    if st.signals.fresh {
                        fresh = true;
                        // Agents that do not number their scrapes leave the
                        // measurement unknown.
                        known &= st.signals.scrape_seq != 0;
                        s.measurement = s.measurement.wrapping_add(st.signals.scrape_seq);
                        if let Some(mark) = node.scraped.get(&st.id) {
                            oldest = Some(oldest.map_or(mark.at, |o: Instant| o.min(mark.at)));
                            s.last_active = s.last_active.max(mark.active_at);
                        }
                        s.ongoing += st.signals.ongoing();
                        s.waiting = s.waiting.map(|w| w + st.signals.waiting);
                        s.requests_per_s += st.signals.requests_per_s;
                        if let Some(p) = st.signals.p95_latency_s {
                            s.p95_latency_s = Some(s.p95_latency_s.map_or(p, |q: f64| q.max(p)));
                        }
                        if let Some(k) = st.signals.kv_cache_usage {
                            kv.push(k);
                        }
                    }
                    for g in &r.gpus {
                        if let Some(sample) = node.sample(*g) {
                            util.push(sample.utilization_pct / 100.0);
                        }
                    }
                }
                _ => s.starting += 1,
            }
        }
        if known {
            s.rescraped_at = oldest;
        } else {
            s.measurement = 0;
        }
        let gateway = self.gateway_demand(model, now);
        if let Some(g) = gateway {
            // Requests held at a gateway are demand no replica has seen; the
            // ones it sent are counted at once, before any scrape.
            let scraped = s.ongoing;
            s.ongoing = scraped.max(f64::from(g.in_flight)) + f64::from(g.queued);
            // Held at the gateway is queued, as an engine's waiting requests are.
            s.waiting = s.waiting.map(|w| w + f64::from(g.queued));
            s.requests_per_s = s.requests_per_s.max(g.arrivals_per_s);
            s.measurement = s.measurement.wrapping_mul(31).wrapping_add(g.seq);
            if g.held_and_sent() >= scraped {
                // The gateways' count is exact, not sampled: a report newer
                // than a surge's start confirms it.
                s.rescraped_at = g.oldest.max(s.rescraped_at);
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        s.kv_cache_usage = mean(&kv);
        s.gpu_utilization = mean(&util);
        // With nothing ready yet, "replicas are starting" is itself fresh
        // news; so is a gateway's report of traffic (a gateway that saw
        // nothing says nothing about clients that bypass it).
        let gateway_saw =
            gateway.is_some_and(|g| g.held_and_sent() > 0.0 || g.arrivals_per_s > 0.0);
        let fresh = fresh || (s.ready == 0 && s.starting > 0) || gateway_saw;
        (s, fresh)
    }

    /// Replicas on lost nodes are replaced elsewhere.
    pub(super) fn decide_lost_nodes(&self, now: Instant) -> Vec<Change> {
        let lost: BTreeSet<&str> = self
            .nodes
            .values()
            .filter(|n| {
                n.liveness(now, self.settings.suspect_after, self.settings.lost_after)
                    == NodeState::Lost
            })
            .map(|n| n.name.as_str())
            .collect();
        // Most ticks no node is lost: no pass over the plan then.
        if lost.is_empty() {
            return Vec::new();
        }
        self.plan
            .values()
            .filter(|r| lost.contains(r.node.as_str()))
            .map(|r| Change::Replace {
                replica: r.clone(),
                reason: ReplaceReason::NodeLost,
                avoid_until: None,
            })
            .collect()
    }

    /// A replica whose GPU turned unhealthy (Xid, fallen off the bus, ECC)
    /// is replaced on a healthy GPU: its own may never compute right again.
    pub(super) fn decide_unhealthy_gpus(&self) -> Vec<Change> {
        let mut out = Vec::new();
        // A pass over the nodes finds none in a healthy fleet, without a
        // lookup per replica.
        let any_unhealthy = self
            .nodes
            .values()
            .any(|n| n.gpus.iter().any(|g| !g.healthy) || n.samples.iter().any(|s| !s.healthy));
        if !any_unhealthy {
            return out;
        }
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
                    out.push(Change::Replace {
                        replica: r.clone(),
                        reason: ReplaceReason::GpuUnhealthy { gpu: *g, reason },
                        avoid_until: None,
                    });
                    break;
                }
            }
        }
        out
    }

    /// A replica crash-looping on one node moves to another node that can
    /// take it (the host may be what is wrong: a bad driver, a full disk).
    /// The node is avoided for that model for a while.
    pub(super) fn decide_crash_loops(&self, now: Instant) -> Vec<Change> {
        self.decide_crash_loops_by(now, self.pick())
    }

    pub(super) fn decide_crash_loops_by(&self, now: Instant, pick: Pick) -> Vec<Change> {
        let mut out = Vec::new();
        // Replicas moved before this one free their GPUs for it.
        let mut moved: Vec<&str> = Vec::new();
        // Few replicas crash-loop: found from what the nodes report, not by
        // a lookup per planned replica; taken in the plan's order.
        let mut looping: Vec<&PlannedReplica> = self
            .nodes
            .values()
            .flat_map(|n| n.replicas.iter().map(move |r| (n, r)))
            .filter(|(_, r)| r.state == ReplicaState::Crashloop)
            .filter_map(|(n, r)| self.plan.get(&r.id).filter(|p| p.node == n.name))
            .filter(|p| self.reported_state(&p.id) == Some(ReplicaState::Crashloop))
            .collect();
        looping.sort_by(|a, b| a.id.cmp(&b.id));
        looping.dedup_by(|a, b| a.id == b.id);
        for r in looping {
            let Some(m) = self.models.get(&r.model) else {
                continue;
            };
            let running = self.nodes_running(&r.model);
            let mut pool = self.pool(&r.model, now, &[], &moved, pick, &running, &[&r.node]);
            for c in pool.candidates.iter_mut().filter(|c| c.name == r.node) {
                c.unschedulable = Some("the replica crash-loops here".into());
            }
            if let Ok(p) = self.place_from(&pool, &r.model, &needs(&m.spec), now, &[], &moved) {
                moved.push(&r.id);
                out.push(Change::Replace {
                    replica: r.clone(),
                    reason: ReplaceReason::CrashLoop {
                        to: p.node,
                        avoid_s: AVOID_AFTER_CRASHLOOP.as_secs(),
                    },
                    avoid_until: Some(now + AVOID_AFTER_CRASHLOOP),
                });
            }
        }
        out
    }

    /// A changed spec hash reaches the agent in the next assignment, which
    /// replaces the replica (stop, then start with the new spec).
    pub(super) fn decide_spec_changes(&self) -> Vec<Change> {
        // Each model's hash is kept with its spec, not hashed per tick.
        #[cfg(test)]
        for m in self.models.values() {
            assert_eq!(
                m.spec_hash,
                m.spec.spec_hash(),
                "a spec changed without its hash"
            );
        }
        let hashes: TickMap<&str, &str> = self
            .models
            .iter()
            .map(|(name, m)| (name.as_str(), m.spec_hash.as_str()))
            .collect();
        self.plan
            .values()
            .filter_map(|r| {
                let hash = *hashes.get(r.model.as_str())?;
                (r.spec_hash != hash).then(|| Change::Respec {
                    replica: r.id.clone(),
                    spec_hash: hash.to_string(),
                })
            })
            .collect()
    }

    /// Retires replicas beyond the desired count (ones not ready first,
    /// then the ones that became ready last), and stops the retiring ones
    /// whose grace has passed.
    pub(super) fn decide_surplus(&self, now: Instant) -> Vec<Change> {
        // Every test's tick: one replica's lookup reads what the map of
        // every reported replica holds for it.
        #[cfg(test)]
        {
            let all = self.reported_statuses();
            for r in self.plan.values() {
                assert_eq!(self.reported_status(r), all.get(&r.id).copied());
            }
        }
        let by_model = plan_by_model(&self.plan);
        let any_draining = self.nodes.values().any(|n| n.flags.draining);
        let mut out = Vec::new();
        for (name, model) in &self.models {
            // Replicas on a draining node leave through the drain, not here.
            let mut mine: Vec<&PlannedReplica> = by_model
                .get(name.as_str())
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .copied()
                .filter(|r| !(any_draining && self.on_draining_node(&r.node)))
                .filter(|r| r.retiring_since.is_none())
                .collect();
            let surplus = mine.len().saturating_sub(model.desired as usize);
            if surplus == 0 {
                continue;
            }
            // Only this model's replicas are looked up, each on its node:
            // not a map of every replica in the fleet for one surplus.
            mine.sort_by_key(|r| {
                let s = self.reported_status(r);
                let ready = s.is_some_and(|s| s.0 == ReplicaState::Ready);
                let ready_since = s.map(|s| s.1).unwrap_or(i64::MAX);
                (ready, std::cmp::Reverse(ready_since))
            });
            out.extend(mine.into_iter().take(surplus).map(|r| Change::Retire {
                replica: r.clone(),
                reason: RetireReason::Surplus,
            }));
        }
        // Replicas retired just now are not retiring in this view: their
        // grace starts with this tick.
        let grace = self.settings.retire_grace;
        out.extend(
            self.plan
                .values()
                .filter(|r| {
                    r.retiring_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= grace)
                })
                .map(|r| Change::Stop {
                    replica: r.id.clone(),
                }),
        );
        out
    }

    /// Keeps retiring replicas wanted again and places the missing ones,
    /// at most `PLACEMENTS_PER_TICK` a tick.
    pub(super) fn decide_placements(&self, now: Instant) -> Vec<Change> {
        self.decide_placements_by(now, self.pick())
    }

    /// `decide_placements`, looking at the fleet through the placement
    /// view or at every node (the same choices; tests compare them).
    pub(super) fn decide_placements_by(&self, now: Instant, pick: Pick) -> Vec<Change> {
        // The plan by model, in one pass; per model then: replicas serving,
        // and those retiring, off draining nodes (replicas on a draining
        // node are on their way out: replacements are placed for them).
        let by_model = plan_by_model(&self.plan);
        let any_draining = self.nodes.values().any(|n| n.flags.draining);
        let mut out = Vec::new();
        // Replicas placed so far this tick: later placements see them.
        let mut placed: Vec<PlannedReplica> = Vec::new();
        for (name, model) in &self.models {
            let mine = by_model.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            let mut current = 0u32;
            let mut retiring = Vec::new();
            for r in mine {
                if any_draining && self.on_draining_node(&r.node) {
                    continue;
                }
                match r.retiring_since {
                    None => current += 1,
                    Some(_) => retiring.push(*r),
                }
            }
            let desired = model.desired;
            // A replica still retiring is running capacity: keep it rather
            // than start another (a wake right after a scale-down, say).
            for r in retiring
                .into_iter()
                .take(desired.saturating_sub(current) as usize)
            {
                current += 1;
                out.push(Change::Keep { replica: r.clone() });
            }
            let mut problem = String::new();
            if placed.len() >= PLACEMENTS_PER_TICK {
                // The rest next tick, soon: reports wait while a tick runs.
                out.push(Change::PlaceRestSoon);
                break;
            }
            if current >= desired {
                // Nothing to place: nothing keeps it from being placed.
                if !model.placement_problem.is_empty() {
                    out.push(Change::PlacementProblem {
                        model: name.clone(),
                        problem,
                    });
                }
                continue;
            }
            // Built once per model; after each placement only the node
            // that took the replica is looked at again.
            let running: BTreeSet<&str> = mine.iter().map(|r| r.node.as_str()).collect();
            let mut pool = self.pool(name, now, &placed, &[], pick, &running, &[]);
            let spec_hash = model.spec_hash.clone();
            let needs = needs(&model.spec);
            for _ in current..desired {
                if placed.len() >= PLACEMENTS_PER_TICK {
                    out.push(Change::PlaceRestSoon);
                    break;
                }
                match self.place_from(&pool, name, &needs, now, &placed, &[]) {
                    Ok(p) => {
                        let replica = PlannedReplica {
                            id: self.new_replica_id(name, &placed),
                            model: name.clone(),
                            node: p.node.clone(),
                            gpus: p.gpus,
                            spec_hash: spec_hash.clone(),
                            created: now,
                            retiring_since: None,
                        };
                        placed.push(replica.clone());
                        if let Some(fresh) = self.candidate_on(&p.node, name, now, &placed, &[]) {
                            pool.put(fresh);
                        }
                        out.push(Change::Place {
                            replica,
                            why: p.why,
                        });
                    }
                    Err(why) => {
                        problem = why;
                        break;
                    }
                }
            }
            if model.placement_problem != problem {
                out.push(Change::PlacementProblem {
                    model: name.clone(),
                    problem,
                });
            }
        }
        out
    }

    /// One step of every drain in progress: each replica on a draining node
    /// is retired once its model has the desired count ready elsewhere (or
    /// at the deadline); a node left empty has finished draining.
    pub(super) fn decide_drains(&self, now_unix_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        for node in self.nodes.values().filter(|n| n.flags.draining) {
            let forced = now_unix_ms >= node.flags.drain_deadline_unix_ms;
            for r in self
                .plan
                .values()
                .filter(|r| r.node == node.name && r.retiring_since.is_none())
            {
                let desired = self.models.get(&r.model).map(|m| m.desired).unwrap_or(0) as usize;
                let ready_elsewhere = self
                    .plan
                    .values()
                    .filter(|p| p.model == r.model && !self.on_draining_node(&p.node))
                    .filter(|p| p.retiring_since.is_none())
                    .filter(|p| self.reported_state(&p.id) == Some(ReplicaState::Ready))
                    .count();
                if forced || ready_elsewhere >= desired {
                    let reason = if forced {
                        DrainReason::DeadlinePassed
                    } else {
                        DrainReason::ReadyElsewhere {
                            ready: ready_elsewhere as u32,
                        }
                    };
                    out.push(Change::Retire {
                        replica: r.clone(),
                        reason: RetireReason::Drain(reason),
                    });
                }
            }
            let live_left = node.replicas.iter().any(|r| r.state.is_live());
            let planned_left = self.plan.values().any(|r| r.node == node.name);
            if !live_left && !planned_left {
                out.push(Change::DrainFinished {
                    node: node.name.clone(),
                });
            }
        }
        out
    }

    /// Which nodes keep which models warm beyond those running them: the
    /// model's `standby_nodes`, and with `mode = "predictive"` also the nodes
    /// the forecast says the next replicas will need. Nodes already warm win,
    /// then nodes with the most GPUs that could host a replica.
    pub(super) fn decide_warm(&self, now: Instant, now_unix_s: i64) -> Change {
        let mut plan: BTreeMap<String, BTreeMap<String, &'static str>> = BTreeMap::new();
        let mut news = Vec::new();
        for (name, model) in &self.models {
            if model.spec.warm.mode == WarmMode::Off {
                continue;
            }
            let predicted = match (&model.spec.warm.mode, &model.spec.scaling) {
                (WarmMode::Predictive, Some(spec)) => {
                    let horizon = PREDICT_HORIZON.as_secs() as i64;
                    let f = model.scaler.demand.forecast(now_unix_s, horizon);
                    model
                        .scaler
                        .forecast_replicas(spec, &f)
                        .replicas
                        .saturating_sub(model.desired)
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
            let candidates = self.candidates(name, now, &[], &[]);
            let targets = warm_targets(
                &candidates,
                &needs(&model.spec),
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
                news.push((name.clone(), chosen));
            }
        }
        Change::WarmPlan { plan, news }
    }

    /// The fleet as placement sees it for one model, with the replicas
    /// `placed` so far this tick and without those `gone` from the plan.
    pub(super) fn candidates(
        &self,
        model: &str,
        now: Instant,
        placed: &[PlannedReplica],
        gone: &[&str],
    ) -> Vec<NodeCandidate> {
        let planned = self.planned_on_nodes(model, placed, gone);
        self.nodes
            .values()
            .map(|n| self.candidate(n, model, now, planned.get(n.name.as_str())))
            .collect()
    }

    /// One node as placement sees it for one model, with the replicas
    /// `placed` so far this tick and without those `gone`, from the plan's
    /// replicas on that node alone.
    pub(super) fn candidate_on(
        &self,
        node: &str,
        model: &str,
        now: Instant,
        placed: &[PlannedReplica],
        gone: &[&str],
    ) -> Option<NodeCandidate> {
        let n = self.nodes.get(node)?;
        let mut planned = PlannedOnNode::default();
        for r in self
            .plan
            .on_node(node)
            .chain(placed.iter().filter(|r| r.node == node))
        {
            if !gone.contains(&r.id.as_str()) {
                planned.add(r, model, &self.models);
            }
        }
        Some(self.candidate(n, model, now, Some(&planned)))
    }

    /// In one pass over the plan (not one per node), per node: what the
    /// plan, with the replicas `placed` so far this tick and without those
    /// `gone`, holds there for placing `model`.
    fn planned_on_nodes<'a>(
        &'a self,
        model: &str,
        placed: &'a [PlannedReplica],
        gone: &[&str],
    ) -> HashMap<&'a str, PlannedOnNode> {
        let mut out: HashMap<&str, PlannedOnNode> = HashMap::new();
        for r in self.plan.values().chain(placed) {
            if !gone.contains(&r.id.as_str()) {
                out.entry(r.node.as_str())
                    .or_default()
                    .add(r, model, &self.models);
            }
        }
        out
    }

    /// Which way placements look at the fleet: through the placement view
    /// when it is up to date (it is after every command and every applied
    /// change; a test that drives the fleet's methods directly may leave it
    /// behind), else at every node.
    pub(super) fn pick(&self) -> Pick {
        if self.view_current() {
            Pick::View
        } else {
            Pick::Scan
        }
    }

    /// The nodes the plan has replicas of `model` on.
    fn nodes_running(&self, model: &str) -> BTreeSet<&str> {
        self.plan
            .values()
            .filter(|r| r.model == model)
            .map(|r| r.node.as_str())
            .collect()
    }

    /// The nodes one model's placements start from: every node, or with the
    /// view only those whose rank the view does not give (warm for the
    /// model, `running` it, given or losing a replica this tick, `also`).
    #[allow(clippy::too_many_arguments)]
    fn pool(
        &self,
        model: &str,
        now: Instant,
        placed: &[PlannedReplica],
        gone: &[&str],
        pick: Pick,
        running: &BTreeSet<&str>,
        also: &[&str],
    ) -> Pool {
        let candidates = match pick {
            Pick::Scan => self.candidates(model, now, placed, gone),
            Pick::View => {
                let mut names: BTreeSet<&str> = running.clone();
                names.extend(self.view.warm_nodes(model));
                names.extend(placed.iter().map(|r| r.node.as_str()));
                names.extend(
                    gone.iter()
                        .filter_map(|id| self.plan.get(*id))
                        .map(|r| r.node.as_str()),
                );
                names.extend(also);
                names
                    .into_iter()
                    .filter_map(|n| self.candidate_on(n, model, now, placed, gone))
                    .collect()
            }
        };
        Pool { pick, candidates }
    }

    /// One replica of `model` placed from `pool`: as `placement::place`
    /// over every node would place it.
    fn place_from(
        &self,
        pool: &Pool,
        model: &str,
        needs: &ReplicaNeeds,
        now: Instant,
        placed: &[PlannedReplica],
        gone: &[&str],
    ) -> Result<placement::Placement, String> {
        if pool.pick == Pick::Scan {
            return placement::place(&pool.candidates, needs);
        }
        let by_view = self.view.place(needs, &pool.candidates, |n| {
            self.candidate_on(n, model, now, placed, gone)
        });
        match by_view {
            Some(p) => Ok(p),
            // Nothing fits: every node, to say why.
            None => placement::place(&self.candidates(model, now, placed, gone), needs),
        }
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
        // Asked per node for every model placed: no key built when no
        // node is avoided (almost always).
        let avoided = !self.avoid.is_empty()
            && self
                .avoid
                .get(&(model.to_string(), n.name.clone()))
                .is_some_and(|until| *until > now);
        let unschedulable = if avoided {
            Some("a replica of this model crash-looped here recently".to_string())
        } else if n.session.is_none() {
            Some("disconnected".to_string())
        } else if state != NodeState::Ready {
            Some(state.as_str().to_string())
        } else {
            self.host_shortfall(n, model, &planned.asked)
        };
        let warm = n
            .warm
            .iter()
            .find(|w| w.model == model && w.total_bytes > 0)
            .map(|w| w.resident_bytes as f64 / w.total_bytes as f64)
            .unwrap_or(0.0);
        NodeCandidate {
            name: n.name.clone(),
            unschedulable,
            gpus: gpu_candidates(n, &planned.taken),
            warm_fraction: warm,
            model_replicas: planned.model_replicas,
        }
    }

    /// An id for a new replica of `model`, free in the plan and among the
    /// replicas `placed` this tick. Drawn from the fleet's id seed (which
    /// `apply` moves on after each placement), so the same view decides the
    /// same ids.
    fn new_replica_id(&self, model: &str, placed: &[PlannedReplica]) -> String {
        use std::hash::{Hash, Hasher};
        (0u64..)
            .map(|n| {
                let mut h = std::hash::DefaultHasher::new();
                (self.id_seed, model, placed.len(), n).hash(&mut h);
                format!("{model}-{:05x}", h.finish() & 0xfffff)
            })
            .find(|id| !self.plan.contains_key(id) && !placed.iter().any(|p| &p.id == id))
            .expect("an endless sequence of ids has a free one")
    }

    /// (state, ready since) of a planned replica as the node it is
    /// assigned to reports it (the last status in its list for that id).
    fn reported_status(&self, r: &PlannedReplica) -> Option<(ReplicaState, i64)> {
        let node = self.nodes.get(&r.node)?;
        let st = node.replicas.iter().rev().find(|x| x.id == r.id)?;
        Some((st.state, st.ready_unix_ms))
    }

    /// (state, ready since) of every replica the agents report, by id.
    /// Each replica counts only as reported by the node it is assigned to.
    /// What `reported_status` answers for one, for every one.
    #[cfg(test)]
    pub(super) fn reported_statuses(&self) -> BTreeMap<String, (ReplicaState, i64)> {
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
}

/// A node's GPUs as placement sees them, whatever the model: `planned`
/// are those the plan gives to replicas there.
pub(super) fn gpu_candidates(n: &Node, planned: &[u32]) -> Vec<GpuCandidate> {
    let mut taken = planned.to_vec();
    // Replicas still running outside the plan (being stopped)
    // hold their GPUs until they are gone.
    taken.extend(
        n.replicas
            .iter()
            .filter(|r| r.state.is_live())
            .flat_map(|r| r.gpus.iter().copied()),
    );
    n.gpus
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
        .collect()
}

/// How placements look at the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Pick {
    /// Through the placement view: few nodes per placement.
    View,
    /// At every node.
    #[default]
    Scan,
}

/// The candidates one model's placements start from (`Fleet::pool`).
#[derive(Default)]
struct Pool {
    pick: Pick,
    candidates: Vec<NodeCandidate>,
}

impl Pool {
    /// A node seen afresh (it took a replica): replaces what was there.
    fn put(&mut self, c: NodeCandidate) {
        match self.candidates.iter_mut().find(|x| x.name == c.name) {
            Some(slot) => *slot = c,
            None => self.candidates.push(c),
        }
    }
}

/// What placing one replica of a model needs.
fn needs(spec: &ModelSpec) -> ReplicaNeeds {
    ReplicaNeeds {
        gpus: spec.server.gpus,
        gpu_memory_bytes: spec.server.gpu_memory_bytes,
        spread: spec.spread,
    }
}

/// The event log's word for a node's lifecycle state.
pub(super) fn liveness(s: NodeState) -> NodeLiveness {
    match s {
        NodeState::Suspect => NodeLiveness::Suspect,
        NodeState::Lost => NodeLiveness::Lost,
        _ => NodeLiveness::Ready,
    }
}
