//! What the fleet did or decided, typed: the coordinator records an
//! [`EventKind`] with the values behind it, and renders it to the event
//! log's `kind` and `message` text only for display (`gpufleet events`,
//! `explain`, the JSON and gRPC views). The typed value is stored beside the
//! text, so a record written before typed events (text only) still loads.

use serde::{Deserialize, Serialize};

/// Why a node's lifecycle state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeLiveness {
    Ready,
    Suspect,
    Lost,
}

impl NodeLiveness {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeLiveness::Ready => "ready",
            NodeLiveness::Suspect => "suspect",
            NodeLiveness::Lost => "lost",
        }
    }
}

/// How a model's replica count was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum ScaleRule {
    /// `gpufleet model scale --replicas N`.
    Pinned,
    /// The spec's fixed `replicas`.
    Fixed,
    /// The autoscaler: the rule that decided, its reason in words (with
    /// its inputs) and a warning for the operator, if any.
    Policy {
        rule: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
}

impl ScaleRule {
    /// The decision in words, as `model show` and `explain` give it.
    pub fn describe(&self, to: u32) -> String {
        match self {
            ScaleRule::Pinned => format!("pinned to {to} by `model scale`"),
            ScaleRule::Fixed => format!("fixed replicas = {to}"),
            ScaleRule::Policy {
                rule,
                reason,
                warning,
            } => {
                let mut why = format!("{reason} [rule: {rule}]");
                if let Some(w) = warning {
                    why.push_str(&format!(" (warning: {w})"));
                }
                why
            }
        }
    }
}

/// Why a replica is replaced by one elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "because", rename_all = "kebab-case")]
pub enum ReplaceReason {
    NodeLost,
    GpuUnhealthy {
        gpu: u32,
        reason: String,
    },
    /// It crash-loops: it moves (to `to` next) and its node is avoided for
    /// the model for `avoid_s`.
    CrashLoop {
        to: String,
        avoid_s: u64,
    },
}

/// Why a replica on a draining node is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "because", rename_all = "kebab-case")]
pub enum DrainReason {
    DeadlinePassed,
    ReadyElsewhere { ready: u32 },
}

/// How `model apply` changed a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Applied {
    New,
    Updated,
    /// Applied over a stored record that did not load.
    Healed,
}

/// How an operator's warm request was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarmAsk {
    Start,
    /// Evict, with no replica of the model on the node.
    Evict,
    /// Evict, while a replica of the model still runs on the node.
    EvictWhileRunning,
}

/// Every kind of event, with the values behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventKind {
    CoordinatorStarted {
        models: usize,
    },
    /// The coordinator did not run for `gap_s` (stopped or frozen).
    CoordinatorPaused {
        gap_s: u64,
    },
    /// The reconnect grace holds: why, in words.
    ReconnectWaiting {
        why: String,
    },
    ReconnectDone,
    ModelQuarantined {
        model: String,
        reason: String,
    },
    ModelApplied {
        model: String,
        how: Applied,
    },
    ModelDeleted {
        model: String,
        stopping: u32,
    },
    /// `model scale`: pinned to a count, or (`None`) back to its policy.
    ModelPinned {
        model: String,
        replicas: Option<u32>,
    },
    Scaled {
        model: String,
        from: u32,
        to: u32,
        rule: ScaleRule,
        /// The numbers behind a policy's decision, by name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        inputs: Vec<(String, String)>,
    },
    Woken {
        model: String,
    },
    /// Signals the spec targets went missing from the replicas' metrics
    /// (scale-down waits `wait` for them), or (`missing` empty) came back.
    SignalsMissing {
        model: String,
        missing: Vec<String>,
        before: Vec<String>,
        wait: String,
    },
    /// A replica's scrapes started or stopped failing, in the agent's words.
    ScrapeHealth {
        model: String,
        node: String,
        replica: String,
        message: String,
    },
    ReplicaPlaced {
        model: String,
        node: String,
        replica: String,
        gpus: Vec<u32>,
        /// Placement's reason (warm or cold, spread, free memory).
        why: String,
    },
    ReplicaKept {
        model: String,
        node: String,
        replica: String,
    },
    /// A replica beyond the desired count leaves the endpoints now and
    /// stops `grace_s` later.
    ReplicaRetiring {
        model: String,
        node: String,
        replica: String,
        grace_ms: u64,
    },
    ReplicaReplaced {
        model: String,
        node: String,
        replica: String,
        reason: ReplaceReason,
    },
    Unplaceable {
        model: String,
        problem: String,
    },
    ReplicaAdopted {
        model: String,
        node: String,
        replica: String,
        /// Adopted without an assignment token (`adopt_unsigned_replicas`).
        unsigned: bool,
    },
    /// A node's report of a replica not believed; `model` and `replica` are
    /// empty when they are not ours or not valid ids.
    ClaimRefused {
        model: String,
        node: String,
        replica: String,
        message: String,
    },
    NodeState {
        node: String,
        from: NodeLiveness,
        to: NodeLiveness,
        /// Silence that judged it (0 when it reports again).
        silent_ms: u64,
    },
    NodeConnected {
        node: String,
        agent_version: String,
        address: String,
        gpus: usize,
        replicas: usize,
    },
    NodeDisconnected {
        node: String,
        reason: String,
    },
    NodeRefused {
        node: String,
        holder: String,
        address: String,
    },
    NodeCordoned {
        node: String,
    },
    NodeUncordoned {
        node: String,
        drain_cancelled: bool,
    },
    DrainStarted {
        node: String,
        deadline_ms: u64,
    },
    DrainStop {
        model: String,
        node: String,
        replica: String,
        reason: DrainReason,
        /// How long it stays up, retiring, before it is stopped (0 in
        /// records written before this was said).
        #[serde(default)]
        grace_ms: u64,
    },
    DrainFinished {
        node: String,
    },
    GpuMarkedHealthy {
        node: String,
        gpu: u32,
    },
    WarmAsked {
        model: String,
        node: String,
        ask: WarmAsk,
    },
    /// Weights kept warm on these nodes, each with why (`node (why)`).
    WarmPlanned {
        model: String,
        on: Vec<String>,
    },
    WarmResident {
        model: String,
        node: String,
        path: String,
        bytes: u64,
    },
    WarmFailed {
        model: String,
        node: String,
        path: String,
        error: String,
    },
}

/// Whom an event concerns; empty where it does not concern one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subject<'a> {
    pub model: &'a str,
    pub node: &'a str,
    pub replica: &'a str,
}

fn span(ms: u64) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_millis(ms))
}

impl EventKind {
    /// The `kind` column of the event log.
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        match self {
            CoordinatorStarted { .. } => "coordinator",
            CoordinatorPaused { .. } => "coordinator-paused",
            ReconnectWaiting { .. } | ReconnectDone => "reconnect",
            ModelQuarantined { .. } => "model-quarantined",
            ModelApplied { .. } => "model-applied",
            ModelDeleted { .. } => "model-deleted",
            ModelPinned { .. } => "model-scaled",
            Scaled { .. } => "scale",
            Woken { .. } => "wake",
            SignalsMissing { .. } | ScrapeHealth { .. } => "signals",
            ReplicaPlaced { .. } => "place",
            ReplicaKept { .. } => "keep",
            ReplicaRetiring { .. } => "stop",
            ReplicaReplaced { .. } => "replace",
            Unplaceable { .. } => "unplaceable",
            ReplicaAdopted { .. } => "adopt",
            ClaimRefused { .. } => "claim-refused",
            NodeState { .. } => "node-state",
            NodeConnected { .. } => "node-connected",
            NodeDisconnected { .. } => "node-disconnected",
            NodeRefused { .. } => "node-refused",
            NodeCordoned { .. } => "node-cordoned",
            NodeUncordoned { .. } => "node-uncordoned",
            DrainStarted { .. } | DrainStop { .. } | DrainFinished { .. } => "drain",
            GpuMarkedHealthy { .. } => "gpu-healthy",
            WarmAsked {
                ask: WarmAsk::Start,
                ..
            }
            | WarmPlanned { .. } => "warm",
            WarmAsked { .. } => "evict",
            WarmResident { .. } | WarmFailed { .. } => "warm-done",
        }
    }

    /// The model, node and replica the event concerns.
    pub fn subject(&self) -> Subject<'_> {
        use EventKind::*;
        let none = "";
        let (model, node, replica) = match self {
            CoordinatorStarted { .. }
            | CoordinatorPaused { .. }
            | ReconnectWaiting { .. }
            | ReconnectDone => (none, none, none),
            ModelQuarantined { model, .. }
            | ModelApplied { model, .. }
            | ModelDeleted { model, .. }
            | ModelPinned { model, .. }
            | Scaled { model, .. }
            | Woken { model }
            | SignalsMissing { model, .. }
            | Unplaceable { model, .. }
            | WarmPlanned { model, .. } => (model.as_str(), none, none),
            ScrapeHealth {
                model,
                node,
                replica,
                ..
            }
            | ReplicaPlaced {
                model,
                node,
                replica,
                ..
            }
            | ReplicaKept {
                model,
                node,
                replica,
            }
            | ReplicaRetiring {
                model,
                node,
                replica,
                ..
            }
            | ReplicaReplaced {
                model,
                node,
                replica,
                ..
            }
            | ReplicaAdopted {
                model,
                node,
                replica,
                ..
            }
            | ClaimRefused {
                model,
                node,
                replica,
                ..
            }
            | DrainStop {
                model,
                node,
                replica,
                ..
            } => (model.as_str(), node.as_str(), replica.as_str()),
            WarmAsked { model, node, .. }
            | WarmResident { model, node, .. }
            | WarmFailed { model, node, .. } => (model.as_str(), node.as_str(), none),
            NodeState { node, .. }
            | NodeConnected { node, .. }
            | NodeDisconnected { node, .. }
            | NodeRefused { node, .. }
            | NodeCordoned { node }
            | NodeUncordoned { node, .. }
            | DrainStarted { node, .. }
            | DrainFinished { node }
            | GpuMarkedHealthy { node, .. } => (none, node.as_str(), none),
        };
        Subject {
            model,
            node,
            replica,
        }
    }

    /// The event in words, for display.
    pub fn message(&self) -> String {
        use EventKind::*;
        match self {
            CoordinatorStarted { models: 1 } => "coordinator started with 1 model".into(),
            CoordinatorStarted { models } => format!("coordinator started with {models} models"),
            CoordinatorPaused { gap_s } => format!(
                "the coordinator did not run for {} (stopped or frozen); nodes are not judged for that time, and agents get the reconnect grace again",
                span(gap_s * 1000)
            ),
            ReconnectWaiting { why } => why.clone(),
            ReconnectDone => {
                "every node known before the restart has reconnected; deciding now".into()
            }
            ModelQuarantined { model, reason } => format!(
                "stored record cannot be loaded: {reason}; its replicas keep running untouched until `gpufleet model apply` of its spec heals it (or `model rm {model}`)"
            ),
            ModelApplied { how, .. } => format!(
                "model {}",
                match how {
                    Applied::New => "applied",
                    Applied::Updated => "updated",
                    Applied::Healed => "applied again; its unreadable stored record is replaced",
                }
            ),
            ModelDeleted { stopping, .. } => {
                format!("model deleted; stopping {stopping} replicas")
            }
            ModelPinned {
                model,
                replicas: Some(n),
            } => format!(
                "pinned to {n} replicas (autoscaling off until `model scale {model} --auto`)"
            ),
            ModelPinned { replicas: None, .. } => "returned to its scaling policy".to_string(),
            Scaled { from, to, rule, .. } => {
                let why = rule.describe(*to);
                // The policy's reason already says "from → to: …" when the
                // count changes.
                // The first decision after an apply or a restart is recorded
                // even when the count holds: it says so, not "0 → 0".
                if why.contains('→') || why.starts_with("holding ") {
                    why
                } else if from == to {
                    format!("holding {to}: {why}")
                } else {
                    format!("{from} → {to}: {why}")
                }
            }
            Woken { .. } => "woken on demand: at least one replica at once".into(),
            SignalsMissing {
                missing,
                before,
                wait,
                ..
            } => {
                if missing.is_empty() {
                    format!("{} back in the replicas' metrics", before.join(" and "))
                } else {
                    format!(
                        "{} missing from the replicas' metrics: scale-down waits for {wait} at most, then the remaining signals decide",
                        missing.join(" and ")
                    )
                }
            }
            ScrapeHealth { message, .. } | ClaimRefused { message, .. } => message.clone(),
            ReplicaPlaced {
                node,
                replica,
                gpus,
                why,
                ..
            } => {
                if gpus.is_empty() {
                    format!("placed {replica} on {node} ({why})")
                } else {
                    let gpus: Vec<String> = gpus.iter().map(u32::to_string).collect();
                    format!("placed {replica} on {node} GPU {} ({why})", gpus.join(","))
                }
            }
            ReplicaKept { replica, .. } => {
                format!("keeping replica {replica}: wanted again before it stopped")
            }
            ReplicaRetiring {
                node,
                replica,
                grace_ms,
                ..
            } => format!(
                "retiring replica {replica} on {node}: more replicas than desired (marked retiring in the endpoints now, stopped in {})",
                span(*grace_ms)
            ),
            ReplicaReplaced {
                node,
                replica,
                reason,
                ..
            } => match reason {
                ReplaceReason::NodeLost => {
                    format!("node {node} is lost; replacing replica {replica} elsewhere")
                }
                ReplaceReason::GpuUnhealthy { gpu, reason } => format!(
                    "GPU {gpu} on {node} is unhealthy ({reason}); replacing replica {replica} on a healthy GPU"
                ),
                ReplaceReason::CrashLoop { to, avoid_s } => format!(
                    "replica {replica} crash-loops on {node}; moving it (to {to} next) and avoiding {node} for {}",
                    span(avoid_s * 1000)
                ),
            },
            Unplaceable { problem, .. } => problem.clone(),
            ReplicaAdopted {
                node,
                replica,
                unsigned,
                ..
            } => {
                let unsigned = if *unsigned {
                    " (without an assignment token: adopt_unsigned_replicas is on; it gets one with its next assignment)"
                } else {
                    ""
                };
                format!(
                    "adopted replica {replica} that {node} reports running{unsigned}; it counts toward the model's replicas (a surplus over a fixed or pinned count is stopped; an autoscaled count takes it in)"
                )
            }
            NodeState {
                from, to, silent_ms, ..
            } => {
                let why = match to {
                    NodeLiveness::Suspect | NodeLiveness::Lost => {
                        format!("no report for {}", span(*silent_ms))
                    }
                    NodeLiveness::Ready => "reporting again".to_string(),
                };
                format!("{} → {}: {why}", from.as_str(), to.as_str())
            }
            NodeConnected {
                agent_version,
                address,
                gpus,
                replicas,
                ..
            } => format!(
                "agent {agent_version} connected from {address} with {gpus} GPUs and {replicas} replicas"
            ),
            NodeDisconnected { reason, .. } => format!("agent session ended: {reason}"),
            NodeRefused {
                node,
                holder,
                address,
            } => format!(
                "node name `{node}` is already connected from {holder}; each agent needs its own node_name (refused {address})"
            ),
            NodeCordoned { .. } => "cordoned: no new replicas will be placed here".to_string(),
            NodeUncordoned {
                drain_cancelled: true,
                ..
            } => "uncordoned: drain cancelled, the node takes replicas again".to_string(),
            NodeUncordoned { .. } => "uncordoned: the node takes replicas again".to_string(),
            DrainStarted { deadline_ms, .. } => format!(
                "draining: replicas move elsewhere; deadline in {}",
                span(*deadline_ms)
            ),
            DrainStop {
                model,
                node,
                replica,
                reason,
                grace_ms,
            } => {
                let why = match reason {
                    DrainReason::DeadlinePassed => "the drain deadline passed".to_string(),
                    DrainReason::ReadyElsewhere { ready } => {
                        format!("{ready} ready replicas of {model} run elsewhere")
                    }
                };
                // It retires as a scale-down's surplus does: out of the
                // endpoints now, stopped after the grace.
                if *grace_ms > 0 {
                    format!(
                        "retiring {replica} on draining node {node}: {why} (marked retiring in the endpoints now, stopped in {})",
                        span(*grace_ms)
                    )
                } else {
                    format!("stopping {replica} on draining node {node}: {why}")
                }
            }
            DrainFinished { .. } => "drain finished: no replicas left; the node stays cordoned until `node uncordon`".into(),
            GpuMarkedHealthy { gpu, .. } => format!(
                "GPU {gpu} marked healthy by the operator; its health rules start afresh"
            ),
            WarmAsked { ask, .. } => match ask {
                WarmAsk::Start => "keeping the weights warm here (warm start)",
                WarmAsk::Evict => "dropping the weights from the page cache (warm evict)",
                WarmAsk::EvictWhileRunning => "evict asked, but a replica here runs the model: its weights stay until it stops",
            }
            .to_string(),
            WarmPlanned { on, .. } => format!("keeping weights warm on {}", on.join(", ")),
            WarmResident { path, bytes, .. } => format!(
                "{path} resident ({})",
                crate::config::units::format_bytes(*bytes)
            ),
            WarmFailed { path, error, .. } => format!("warming {path} failed: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    /// Typed events render to the very kind and text the event log had
    /// when events were recorded as prose.
    #[test]
    fn typed_events_render_the_text_they_always_had() {
        let cases: Vec<(EventKind, &str, &str)> = vec![
            (
                EventKind::CoordinatorStarted { models: 3 },
                "coordinator",
                "coordinator started with 3 models",
            ),
            (
                EventKind::CoordinatorPaused { gap_s: 95 },
                "coordinator-paused",
                "the coordinator did not run for 1m 35s (stopped or frozen); nodes are not judged for that time, and agents get the reconnect grace again",
            ),
            (
                EventKind::ModelApplied {
                    model: s("m"),
                    how: Applied::Healed,
                },
                "model-applied",
                "model applied again; its unreadable stored record is replaced",
            ),
            (
                EventKind::ModelPinned {
                    model: s("m"),
                    replicas: Some(2),
                },
                "model-scaled",
                "pinned to 2 replicas (autoscaling off until `model scale m --auto`)",
            ),
            (
                EventKind::Scaled {
                    model: s("m"),
                    from: 0,
                    to: 2,
                    rule: ScaleRule::Fixed,
                    inputs: Vec::new(),
                },
                "scale",
                "0 → 2: fixed replicas = 2",
            ),
            (
                EventKind::Scaled {
                    model: s("m"),
                    from: 3,
                    to: 5,
                    rule: ScaleRule::Policy {
                        rule: s("target"),
                        reason: s("3 → 5: 41 ongoing / target 8 per replica"),
                        warning: Some(s("the SLO is shorter than the service time")),
                    },
                    inputs: vec![(s("ongoing"), s("41"))],
                },
                "scale",
                "3 → 5: 41 ongoing / target 8 per replica [rule: target] (warning: the SLO is shorter than the service time)",
            ),
            (
                EventKind::Scaled {
                    model: s("m"),
                    from: 4,
                    to: 4,
                    rule: ScaleRule::Pinned,
                    inputs: Vec::new(),
                },
                "scale",
                "holding 4: pinned to 4 by `model scale`",
            ),
            (
                EventKind::Scaled {
                    model: s("m"),
                    from: 0,
                    to: 0,
                    rule: ScaleRule::Policy {
                        rule: s("scale-to-zero"),
                        reason: s("holding 0: no requests"),
                        warning: None,
                    },
                    inputs: Vec::new(),
                },
                "scale",
                "holding 0: no requests [rule: scale-to-zero]",
            ),
            (
                EventKind::SignalsMissing {
                    model: s("m"),
                    missing: vec![s("p95 latency")],
                    before: Vec::new(),
                    wait: s("5m"),
                },
                "signals",
                "p95 latency missing from the replicas' metrics: scale-down waits for 5m at most, then the remaining signals decide",
            ),
            (
                EventKind::SignalsMissing {
                    model: s("m"),
                    missing: Vec::new(),
                    before: vec![s("p95 latency"), s("KV-cache use")],
                    wait: s("5m"),
                },
                "signals",
                "p95 latency and KV-cache use back in the replicas' metrics",
            ),
            (
                EventKind::ReplicaPlaced {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-0a1b2"),
                    gpus: vec![0, 1],
                    why: s("warm"),
                },
                "place",
                "placed m-0a1b2 on gpu-1 GPU 0,1 (warm)",
            ),
            (
                EventKind::ReplicaPlaced {
                    model: s("m"),
                    node: s("cpu-1"),
                    replica: s("m-3c4d5"),
                    gpus: Vec::new(),
                    why: s("warm 0%, a CPU replica"),
                },
                "place",
                "placed m-3c4d5 on cpu-1 (warm 0%, a CPU replica)",
            ),
            (
                EventKind::ReplicaRetiring {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-1"),
                    grace_ms: 30_000,
                },
                "stop",
                "retiring replica m-1 on gpu-1: more replicas than desired (marked retiring in the endpoints now, stopped in 30s)",
            ),
            (
                EventKind::ReplicaReplaced {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-1"),
                    reason: ReplaceReason::CrashLoop {
                        to: s("gpu-2"),
                        avoid_s: 600,
                    },
                },
                "replace",
                "replica m-1 crash-loops on gpu-1; moving it (to gpu-2 next) and avoiding gpu-1 for 10m",
            ),
            (
                EventKind::ReplicaReplaced {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-1"),
                    reason: ReplaceReason::GpuUnhealthy {
                        gpu: 1,
                        reason: s("Xid 79"),
                    },
                },
                "replace",
                "GPU 1 on gpu-1 is unhealthy (Xid 79); replacing replica m-1 on a healthy GPU",
            ),
            (
                EventKind::NodeState {
                    node: s("gpu-1"),
                    from: NodeLiveness::Suspect,
                    to: NodeLiveness::Lost,
                    silent_ms: 30_000,
                },
                "node-state",
                "suspect → lost: no report for 30s",
            ),
            (
                EventKind::NodeState {
                    node: s("gpu-1"),
                    from: NodeLiveness::Lost,
                    to: NodeLiveness::Ready,
                    silent_ms: 0,
                },
                "node-state",
                "lost → ready: reporting again",
            ),
            (
                EventKind::DrainStop {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-1"),
                    reason: DrainReason::ReadyElsewhere { ready: 2 },
                    grace_ms: 0,
                },
                "drain",
                "stopping m-1 on draining node gpu-1: 2 ready replicas of m run elsewhere",
            ),
            (
                EventKind::DrainStop {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-1"),
                    reason: DrainReason::DeadlinePassed,
                    grace_ms: 75_000,
                },
                "drain",
                "retiring m-1 on draining node gpu-1: the drain deadline passed (marked retiring in the endpoints now, stopped in 1m 15s)",
            ),
            (
                EventKind::WarmAsked {
                    model: s("m"),
                    node: s("gpu-1"),
                    ask: WarmAsk::EvictWhileRunning,
                },
                "evict",
                "evict asked, but a replica here runs the model: its weights stay until it stops",
            ),
            (
                EventKind::ReplicaAdopted {
                    model: s("m"),
                    node: s("gpu-1"),
                    replica: s("m-1"),
                    unsigned: false,
                },
                "adopt",
                "adopted replica m-1 that gpu-1 reports running; it counts toward the model's replicas (a surplus over a fixed or pinned count is stopped; an autoscaled count takes it in)",
            ),
            (
                EventKind::WarmResident {
                    model: s("m"),
                    node: s("gpu-1"),
                    path: s("/srv/m"),
                    bytes: 16 << 30,
                },
                "warm-done",
                "/srv/m resident (16.0 GiB)",
            ),
        ];
        for (event, kind, message) in cases {
            assert_eq!(event.name(), kind, "{event:?}");
            assert_eq!(event.message(), message, "{event:?}");
        }
    }

    #[test]
    fn an_event_names_whom_it_concerns() {
        let e = EventKind::ReplicaKept {
            model: s("m"),
            node: s("gpu-1"),
            replica: s("m-1"),
        };
        assert_eq!(
            e.subject(),
            Subject {
                model: "m",
                node: "gpu-1",
                replica: "m-1"
            }
        );
        let e = EventKind::DrainFinished { node: s("gpu-1") };
        assert_eq!(
            e.subject(),
            Subject {
                node: "gpu-1",
                ..Subject::default()
            }
        );
    }

    /// A drain stop stored before it carried its grace loads, and says
    /// "stopping" as it did.
    #[test]
    fn a_drain_stop_stored_without_its_grace_loads() {
        let old = r#"{"type":"drain-stop","model":"m","node":"gpu-1","replica":"m-1","reason":{"because":"deadline-passed"}}"#;
        let e: EventKind = serde_json::from_str(old).unwrap();
        assert_eq!(
            e.message(),
            "stopping m-1 on draining node gpu-1: the drain deadline passed"
        );
    }

    /// A record written before events were typed (no `detail`) still
    /// loads; a typed one keeps its type through the store's encoding.
    #[test]
    fn stored_events_load_with_and_without_their_type() {
        let old = r#"{"seq":7,"time":"2026-01-01T00:00:00Z","time_unix_ms":1767225600000,"kind":"scale","model":"m","node":"","replica":"","message":"1 → 2: fixed replicas = 2"}"#;
        let e: crate::api::Event = serde_json::from_str(old).unwrap();
        assert_eq!(e.detail, None);
        assert_eq!(e.message, "1 → 2: fixed replicas = 2");
        let typed = crate::api::Event {
            detail: Some(EventKind::ReplicaReplaced {
                model: s("m"),
                node: s("gpu-1"),
                replica: s("m-1"),
                reason: ReplaceReason::NodeLost,
            }),
            ..e
        };
        let json = serde_json::to_string(&typed).unwrap();
        let back: crate::api::Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, typed);
    }
}
