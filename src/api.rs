//! The Control API in domain terms: what the coordinator answers and what the
//! CLI prints. The JSON form of these structs (`-o json`) is a contract that
//! operators' scripts rely on (DESIGN.md §8): fields are only ever added.

use serde::{Deserialize, Serialize};

use crate::domain::{HostInfo, HostSample, ReplicaStatus, WarmStatus};

/// Longest value shown whole in a message; longer ones are cut.
const SHOWN_WHOLE: usize = 64;

/// A value as messages show it: "`llama-3`", or for a long one its start and
/// its size ("`aaaaaaaa…` (1,048,576 bytes)"), so no message grows with what
/// a client sent. Control characters show escaped (`a\0b`, `x\n`): a NUL or
/// an escape sequence sent in a name never reaches a terminal or a log raw.
pub fn quoted(value: &str) -> String {
    if value.len() <= SHOWN_WHOLE {
        return format!("`{}`", escaped(value));
    }
    let mut end = 32;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "`{}…` ({} bytes)",
        escaped(&value[..end]),
        grouped(value.len())
    )
}

fn escaped(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.chars().any(char::is_control) {
        return value.into();
    }
    value
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Cuts a whole message to at most `max` bytes, saying so: the last guard
/// before a message travels in a gRPC trailer or an HTTP body.
pub fn capped(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (message cut; {} bytes in all)",
        &message[..end],
        grouped(message.len())
    )
}

/// 1048576 → "1,048,576".
pub fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats Unix milliseconds as RFC 3339 (UTC, seconds); empty for "never".
pub fn rfc3339(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    Suspect,
    Lost,
    Cordoned,
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Lost => "lost",
            NodeState::Cordoned => "cordoned",
            NodeState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        Some(match s {
            "ready" => NodeState::Ready,
            "suspect" => NodeState::Suspect,
            "lost" => NodeState::Lost,
            "cordoned" => NodeState::Cordoned,
            "draining" => NodeState::Draining,
            _ => return None,
        })
    }
}

/// One GPU inside `node ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeGpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub utilization_pct: f64,
    pub healthy: bool,
    pub health_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub state: NodeState,
    pub cordoned: bool,
    pub draining: bool,
    /// RFC 3339; empty if the node never reported.
    pub last_seen: String,
    pub last_seen_unix_ms: i64,
    pub connected: bool,
    pub address: String,
    pub agent_version: String,
    pub boot_id: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub host: HostInfo,
    pub host_sample: HostSample,
    pub gpus: Vec<NodeGpu>,
    pub replicas: u32,
}

/// One GPU in `gpu ls`: inventory, latest sample and what runs on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuView {
    pub node: String,
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub utilization_pct: f64,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub healthy: bool,
    pub health_reason: String,
    /// The replica on this GPU (comma-separated if several share it).
    pub replica: String,
    pub utilization_mean_60s: f64,
    pub utilization_p95_60s: f64,
    pub memory_used_max_60s: f64,
    pub xid_errors: u64,
}

/// A replica and the node it runs on. The JSON is the replica's status
/// (id, model, state, pid, port, gpus, restarts, signals …) plus `node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub node: String,
    #[serde(flatten)]
    pub status: ReplicaStatus,
    /// Whether the replica's metrics can be read (`ok`, `failing: …`,
    /// `stale`, `-` when not ready).
    #[serde(default)]
    pub signals_health: SignalsHealth,
}

/// Whether a replica's metrics can be read: the `SIGNALS` column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignalsHealth {
    /// Not scraped: the replica is not ready.
    #[default]
    NotScraped,
    Ok,
    /// The last scrape failed, and why.
    Failing(String),
    /// No new scrape for a while, or none yet.
    Stale,
}

impl SignalsHealth {
    /// Parses the text [`std::fmt::Display`] writes (the wire form).
    pub fn parse(text: &str) -> SignalsHealth {
        match text {
            "ok" => SignalsHealth::Ok,
            "stale" => SignalsHealth::Stale,
            other => match other.strip_prefix("failing: ") {
                Some(reason) => SignalsHealth::Failing(reason.to_string()),
                None => SignalsHealth::NotScraped,
            },
        }
    }
}

impl std::fmt::Display for SignalsHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalsHealth::NotScraped => f.write_str("-"),
            SignalsHealth::Ok => f.write_str("ok"),
            SignalsHealth::Failing(reason) => write!(f, "failing: {reason}"),
            SignalsHealth::Stale => f.write_str("stale"),
        }
    }
}

impl serde::Serialize for SignalsHealth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SignalsHealth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|text| SignalsHealth::parse(&text))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    pub name: String,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub desired_replicas: u32,
    pub ready_replicas: u32,
    pub current_replicas: u32,
    pub pinned_replicas: Option<u32>,
    pub created: String,
    pub updated: String,
    pub placement_problem: String,
    pub last_decision: String,
    /// This tick's decision, also when it holds the count ("holding 3: …").
    #[serde(default)]
    pub decision_now: String,
    /// `active`, or `invalid-stored-spec` while the model's stored record
    /// cannot be read.
    #[serde(default)]
    pub state: String,
    #[serde(skip)]
    pub spec_toml: String,
    #[serde(skip)]
    pub created_unix_ms: i64,
    #[serde(skip)]
    pub updated_unix_ms: i64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmView {
    pub node: String,
    pub model: String,
    pub path: String,
    pub resident_bytes: u64,
    pub total_bytes: u64,
    pub state: String,
    pub rate_bytes_per_s: f64,
    pub eta_ms: u64,
    pub error: String,
    pub reason: String,
}

impl WarmView {
    pub fn new(node: &str, w: &WarmStatus, reason: &str) -> WarmView {
        WarmView {
            node: node.to_string(),
            model: w.model.clone(),
            path: w.path.clone(),
            resident_bytes: w.resident_bytes,
            total_bytes: w.total_bytes,
            state: w.state.clone(),
            rate_bytes_per_s: w.rate_bytes_per_s,
            eta_ms: w.eta_ms,
            error: w.error.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Something the fleet did or decided, in words, with what it concerned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub time_unix_ms: i64,
    pub kind: String,
    pub model: String,
    pub node: String,
    pub replica: String,
    pub message: String,
    /// The event typed, with the values behind it (`kind` and `message` are
    /// its rendering). Absent in records written before typed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<crate::domain::EventKind>,
}

/// One tick of a model's signals and the decision taken, for `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SignalPoint {
    pub time: String,
    pub time_unix_ms: i64,
    /// Waiting + running requests over the model's ready replicas.
    pub ongoing: f64,
    pub p95_latency_s: Option<f64>,
    /// Mean utilization (0..1) of the model's GPUs.
    pub gpu_utilization: Option<f64>,
    pub kv_cache_usage: Option<f64>,
    pub desired: u32,
    pub ready: u32,
    pub current: u32,
    pub panic: bool,
}

/// Why a model has the replicas it has: the last decisions with their
/// inputs, and the recent timeline of signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Explanation {
    pub model: String,
    pub summary: String,
    pub decisions: Vec<Event>,
    pub signals: Vec<SignalPoint>,
}

#[cfg(test)]
mod quoting_tests {
    use super::*;

    #[test]
    fn long_values_are_cut_with_their_size() {
        assert_eq!(quoted("llama-3"), "`llama-3`");
        // Control characters never travel raw.
        assert_eq!(quoted("a\0b\n\u{1b}[2J"), "`a\\0b\\n\\u{1b}[2J`");
        assert_eq!(
            quoted(&format!("{}\0", "a".repeat(70))),
            format!("`{}…` (71 bytes)", "a".repeat(32))
        );
        let long = "a".repeat(1 << 20);
        assert_eq!(
            quoted(&long),
            format!("`{}…` (1,048,576 bytes)", "a".repeat(32))
        );
        // Never inside a character.
        let wide = "é".repeat(100);
        assert!(quoted(&wide).starts_with(&format!("`{}…`", "é".repeat(16))));
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(
            capped("x".repeat(10), 4),
            "xxxx… (message cut; 10 bytes in all)"
        );
        assert_eq!(capped("short".into(), 10), "short");
    }
}

/// `gpufleet coordinator status`: the coordinators sharing a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HaStatus {
    /// "redb" (one coordinator) or "etcd".
    #[serde(rename = "backend")]
    pub backend: String,
    pub prefix: String,
    /// The leader's name; empty when none leads.
    pub leader: String,
    pub epoch: u64,
    pub members: Vec<HaMember>,
    /// Each etcd endpoint and whether it answers.
    pub store: Vec<EtcdEndpoint>,
    /// The answering coordinator's role: leader, follower or no-leader.
    pub role: String,
    /// The leader's gRPC URL, when the answering coordinator follows it
    /// (empty otherwise, but always there: docs/cli.md lists it).
    #[serde(default)]
    pub leader_address: String,
}

impl HaStatus {
    /// A lone coordinator on redb: it leads, with no epoch to fence.
    pub fn single() -> HaStatus {
        HaStatus {
            backend: "redb".into(),
            role: "leader".into(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HaMember {
    pub name: String,
    pub address: String,
    /// "leader" or "follower".
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EtcdEndpoint {
    pub endpoint: String,
    pub healthy: bool,
    /// Its version, or why it did not answer.
    pub detail: String,
}

#[cfg(test)]
mod ha_status_tests {
    use super::*;

    #[test]
    fn coordinator_status_json_has_every_field_docs_list() {
        let v = serde_json::to_value(HaStatus::single()).unwrap();
        for key in [
            "backend",
            "prefix",
            "leader",
            "epoch",
            "members",
            "store",
            "role",
            "leader_address",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
    }
}
