//! The model spec (`gpufleet model apply -f FILE`): what to run, on how many
//! GPUs, how to scale it and how to keep it warm, validated into real types.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::problem::Problem;
use super::units::format_duration;
use crate::domain::{MetricsPort, ReplicaSpec};

/// Placeholders the agent substitutes in a model's command and environment.
pub const PLACEHOLDERS: &[&str] = &[
    "port",
    "metrics_port",
    "weights",
    "gpus",
    "gpu_count",
    "replica_id",
    "model",
];

/// A validated model spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    pub name: String,
    pub weights: String,
    /// Fixed replica count, used when `scaling` is `None`.
    pub replicas: u32,
    /// Place replicas on different nodes where the fleet allows (one
    /// node's loss then takes fewer of them down).
    pub spread: bool,
    pub server: ServerSpec,
    pub scaling: Option<ScalingSpec>,
    pub warm: WarmPolicy,
}

/// How to run one replica of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSpec {
    pub preset: Preset,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub gpus: u32,
    /// Free memory the replica needs on each of its GPUs.
    pub gpu_memory_bytes: u64,
    /// CPUs the replica asks of its host (0: none asked); with `gpus = 0`
    /// placement finds a host with this many CPUs and `memory_bytes` free.
    pub cpu: f64,
    /// RAM the replica asks of its host, bytes (0: none asked).
    pub memory_bytes: u64,
    #[serde(serialize_with = "human_duration")]
    pub ready_timeout: Duration,
    #[serde(serialize_with = "human_duration")]
    pub stop_timeout: Duration,
    /// Overrides the preset's readiness path; `None` on `generic` means a TCP connect.
    pub health_path: Option<String>,
    /// Overrides the preset's metrics path.
    pub metrics_path: Option<String>,
    /// Overrides the preset's metrics port.
    #[serde(serialize_with = "metrics_port_text")]
    pub metrics_port: Option<MetricsPort>,
    /// Requests one replica serves at once (its engine's slots or batch
    /// size): gateways send a replica no more than this and hold the rest.
    /// `None`: the slots the engine itself reports (llama.cpp), else the
    /// gateway's `default_max_concurrency`.
    pub max_concurrency: Option<u32>,
}

/// The model server engine, which fixes its health and metrics endpoints and
/// how its metrics are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Vllm,
    Tgi,
    Triton,
    Sglang,
    Llamacpp,
    Generic,
}

impl Preset {
    pub const ALL: [Preset; 6] = [
        Preset::Vllm,
        Preset::Tgi,
        Preset::Triton,
        Preset::Sglang,
        Preset::Llamacpp,
        Preset::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Vllm => "vllm",
            Preset::Tgi => "tgi",
            Preset::Triton => "triton",
            Preset::Sglang => "sglang",
            Preset::Llamacpp => "llamacpp",
            Preset::Generic => "generic",
        }
    }

    /// The readiness path the engine serves; `None` means a TCP connect.
    pub fn default_health_path(self) -> Option<&'static str> {
        match self {
            Preset::Vllm | Preset::Tgi | Preset::Sglang | Preset::Llamacpp => Some("/health"),
            Preset::Triton => Some("/v2/health/ready"),
            Preset::Generic => None,
        }
    }

    pub fn default_metrics_path(self) -> &'static str {
        "/metrics"
    }

    /// Triton serves its metrics on a port of their own (`--metrics-port`).
    pub fn default_metrics_port(self) -> MetricsPort {
        match self {
            Preset::Triton => MetricsPort::Second,
            _ => MetricsPort::Server,
        }
    }

    /// The command-line flag without which the engine serves no metrics.
    pub fn metrics_flag(self) -> Option<&'static str> {
        match self {
            Preset::Llamacpp => Some("--metrics"),
            Preset::Sglang => Some("--enable-metrics"),
            _ => None,
        }
    }

    /// The flag naming the model the engine answers to. Without it vLLM and
    /// SGLang answer only to their weights path, and refuse a request whose
    /// `model` names the fleet's model, as every request through the gateway
    /// does. Other engines take any name.
    pub fn served_name_flag(self) -> Option<&'static str> {
        match self {
            Preset::Vllm | Preset::Sglang => Some("--served-model-name"),
            _ => None,
        }
    }

    /// The flag by which the engine's command says how many requests it runs
    /// at once (its batch), and the engine's own default, for messages.
    pub fn batch_flag(self) -> Option<(&'static str, &'static str)> {
        match self {
            Preset::Vllm => Some(("--max-num-seqs", "256 by default")),
            Preset::Sglang => Some(("--max-running-requests", "sized from its memory by default")),
            Preset::Tgi => Some(("--max-concurrent-requests", "128 by default")),
            _ => None,
        }
    }

    /// Whether the engine's metrics can give a request latency.
    pub fn exports_latency(self) -> bool {
        self != Preset::Llamacpp
    }

    /// Whether the engine's metrics can give a KV-cache use. Triton's come
    /// only from the TensorRT-LLM backend; a Triton without it is a signal
    /// missing at run time.
    pub fn exports_kv_cache(self) -> bool {
        !matches!(self, Preset::Llamacpp | Preset::Tgi)
    }

    /// What the preset reads, for messages that refuse a signal it lacks.
    pub fn exports(self) -> &'static str {
        match self {
            Preset::Vllm => "waiting, running, p95 latency, KV-cache use, finished requests, tokens",
            Preset::Tgi => "waiting, running, p95 latency, finished and received requests (no KV-cache use)",
            Preset::Triton => "pending, p95 latency, finished requests and inferences; running and KV-cache use with the TensorRT-LLM backend",
            Preset::Sglang => "waiting, running, p95 latency, KV-cache use, finished requests, tokens",
            Preset::Llamacpp => "waiting, running and token counters (no latency, no KV-cache use)",
            Preset::Generic => "whatever matches the generic naming conventions",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown preset `{s}`; allowed: vllm, tgi, triton, sglang, llamacpp, generic"
                )
            })
    }
}

/// Autoscaling bounds and windows; present when the spec has a `[scaling]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingSpec {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Waiting + running requests per replica the autoscaler aims for.
    pub target_ongoing_requests: f64,
    #[serde(serialize_with = "human_duration_opt")]
    pub max_p95_latency: Option<Duration>,
    pub target_gpu_utilization: Option<f64>,
    pub target_kv_cache_usage: Option<f64>,
    #[serde(serialize_with = "human_duration")]
    pub stable_window: Duration,
    #[serde(serialize_with = "human_duration")]
    pub panic_window: Duration,
    /// Demand over capacity at which the panic window takes over.
    pub panic_threshold: f64,
    /// Relative change in desire ignored as noise.
    pub tolerance: f64,
    #[serde(serialize_with = "human_duration")]
    pub scale_down_delay: Duration,
    #[serde(serialize_with = "human_duration")]
    pub scale_to_zero_after: Duration,
    /// Most replicas removed in one decision: GPU replicas are slow to come
    /// back, so scale-down walks while scale-up jumps.
    pub max_scale_down_step: u32,
    /// Scale up ahead of predicted demand, not only warm weights for it.
    pub prescale: bool,
    /// Ski-rental scale-down: idle capacity is kept about this many times
    /// the model's measured replica start time, longer while released
    /// capacity keeps being needed again (up to 4 × `scale_down_delay`);
    /// 0 keeps the fixed `scale_down_delay`.
    pub scale_down_hold_factor: f64,
    /// A backlog that drains at the current capacity before a new replica
    /// could be ready starts none.
    pub cold_start_aware: bool,
    /// Size from arrival rate × measured service time (Little's law) rather
    /// than from ongoing requests, which count a transient queue as demand.
    pub size_from_arrivals: bool,
    /// Pre-scale only while the forecast's recent relative error is at most this.
    pub prescale_max_error: f64,
    /// Latency objective per request, of the kind `slo_kind` says: once a
    /// service time is measured, the per-replica target follows from it.
    #[serde(serialize_with = "human_duration_opt")]
    pub slo: Option<Duration>,
    /// What `slo` bounds: end to end (arrival to last token, the default)
    /// or the time to first token (queueing plus prefill).
    pub slo_kind: SloKind,
}

/// Which latency an SLO bounds: the model spec's `slo_kind` and
/// `gpufleet simulate --slo-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SloKind {
    /// Arrival to last token, queueing included.
    #[default]
    E2e,
    /// Arrival to first token: queueing plus prefill, whatever the length.
    Ttft,
}

impl SloKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SloKind::E2e => "e2e",
            SloKind::Ttft => "ttft",
        }
    }
}

impl fmt::Display for SloKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SloKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "e2e" => Ok(SloKind::E2e),
            "ttft" => Ok(SloKind::Ttft),
            other => Err(format!(
                "unknown SLO kind `{other}`; allowed: e2e (arrival to last token), ttft (time to first token)"
            )),
        }
    }
}

/// How the model's weights are kept in page caches beyond running replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarmPolicy {
    pub mode: WarmMode,
    /// Nodes kept warm beyond those running replicas.
    pub standby_nodes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmMode {
    Off,
    Standby,
    Predictive,
}

impl WarmMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WarmMode::Off => "off",
            WarmMode::Standby => "standby",
            WarmMode::Predictive => "predictive",
        }
    }
}

impl fmt::Display for WarmMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WarmMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(WarmMode::Off),
            "standby" => Ok(WarmMode::Standby),
            "predictive" => Ok(WarmMode::Predictive),
            other => Err(format!(
                "unknown warm mode `{other}`; allowed: off, standby, predictive"
            )),
        }
    }
}

/// A model spec that cannot be applied: one line naming the key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub Problem);

impl SpecError {
    pub fn problem(&self) -> &Problem {
        &self.0
    }
}

impl ModelSpec {
    /// Parses and validates a spec from TOML text.
    pub fn parse(src: &str) -> Result<ModelSpec, SpecError> {
        super::model_rules::parse(src).map_err(SpecError)
    }

    /// Renders the spec as TOML that [`ModelSpec::parse`] reads back to the same spec.
    pub fn to_toml(&self) -> String {
        super::model_rules::to_toml(self)
    }

    pub fn min_replicas(&self) -> u32 {
        self.scaling
            .as_ref()
            .map_or(self.replicas, |s| s.min_replicas)
    }

    pub fn max_replicas(&self) -> u32 {
        self.scaling
            .as_ref()
            .map_or(self.replicas, |s| s.max_replicas)
    }

    /// Things that are allowed but probably wrong, for `model apply` to print:
    /// a command without the flag that turns the preset's metrics on.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let preset = self.server.preset;
        if let Some(flag) = preset.metrics_flag() {
            let has_flag = self.server.command.iter().any(|arg| {
                arg == flag || arg.strip_prefix(flag).is_some_and(|r| r.starts_with('='))
            });
            if !has_flag {
                out.push(format!(
                    "server.command has no {flag}: the {preset} engine then serves no metrics, and the model cannot autoscale on its load or tell when it is idle"
                ));
            }
        }
        let uses = |placeholder: &str| {
            self.server
                .command
                .iter()
                .chain(self.server.env.values())
                .any(|v| v.contains(placeholder))
        };
        if self.metrics_port() == MetricsPort::Second && !uses("{metrics_port}") {
            out.push(format!(
                "metrics are scraped from {{metrics_port}}, and server.command never passes it to the {preset} engine (for Triton: \"--metrics-port\", \"{{metrics_port}}\")"
            ));
        }
        if let (Some((flag, default)), None) = (preset.batch_flag(), self.replica_concurrency()) {
            out.push(format!(
                "neither server.max_concurrency nor a {flag} in server.command says how many requests a replica runs at once: gateways then send each replica at most their default_max_concurrency (8 unless gateway.toml says otherwise) and hold the rest, where the {preset} engine batches more ({flag}: {default}); set server.max_concurrency"
            ));
        }
        if let Some(flag) = preset.served_name_flag() {
            let name = &self.name;
            match flag_values(&self.server.command, flag) {
                None => out.push(format!(
                    "server.command has no {flag}: the {preset} engine then answers only to its weights path as the model's name and refuses requests naming `{name}`, as every request through the gateway does; add \"{flag}\", \"{{model}}\""
                )),
                Some(names) if !names.iter().any(|n| n == name || n == "{model}") => {
                    out.push(format!(
                        "server.command's {flag} {} does not include the model's name `{name}`: the gateway passes requests naming `{name}` to the {preset} engine, which refuses them; give \"{flag}\", \"{{model}}\"",
                        names.join(" ")
                    ))
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Requests one replica serves at once, as gateways count them:
    /// `server.max_concurrency`, else the batch the command gives the engine
    /// (vLLM's `--max-num-seqs 64`); `None` when neither says (llama.cpp's
    /// gateways then ask its `/props`).
    pub fn replica_concurrency(&self) -> Option<u32> {
        self.server.max_concurrency.or_else(|| {
            let (flag, _) = self.server.preset.batch_flag()?;
            let underscored = flag.trim_start_matches('-').replace('-', "_");
            // vLLM and SGLang take `--max_num_seqs` too.
            let values = flag_values(&self.server.command, flag)
                .or_else(|| flag_values(&self.server.command, &format!("--{underscored}")))?;
            values
                .last()?
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
        })
    }

    /// The readiness path: the override, else the preset's; `None` means a TCP connect.
    pub fn health_path(&self) -> Option<String> {
        self.server
            .health_path
            .clone()
            .or_else(|| self.server.preset.default_health_path().map(str::to_string))
    }

    pub fn metrics_path(&self) -> String {
        self.server
            .metrics_path
            .clone()
            .unwrap_or_else(|| self.server.preset.default_metrics_path().to_string())
    }

    pub fn metrics_port(&self) -> MetricsPort {
        self.server
            .metrics_port
            .unwrap_or_else(|| self.server.preset.default_metrics_port())
    }

    /// A stable hex hash of what a running replica was started from: weights
    /// and the `[server]` table. A replica whose hash differs from its model's
    /// must be replaced; scaling and warm changes never force that.
    ///
    /// FNV-1a 64 over a length-prefixed encoding, so the hash is the same on
    /// every run, host and Rust version (std's hasher promises none of that).
    pub fn spec_hash(&self) -> String {
        let s = &self.server;
        let mut h = Fnv1a64::new();
        h.field(b"gpufleet-spec-v1");
        h.field(self.weights.as_bytes());
        h.field(s.preset.as_str().as_bytes());
        h.field(&(s.command.len() as u64).to_le_bytes());
        for arg in &s.command {
            h.field(arg.as_bytes());
        }
        h.field(&(s.env.len() as u64).to_le_bytes());
        for (k, v) in &s.env {
            h.field(k.as_bytes());
            h.field(v.as_bytes());
        }
        h.field(&s.gpus.to_le_bytes());
        h.field(&s.gpu_memory_bytes.to_le_bytes());
        // Only when asked for, so that GPU specs keep their hash.
        if s.cpu > 0.0 || s.memory_bytes > 0 {
            h.field(&s.cpu.to_bits().to_le_bytes());
            h.field(&s.memory_bytes.to_le_bytes());
        }
        h.field(&s.ready_timeout.as_nanos().to_le_bytes());
        h.field(&s.stop_timeout.as_nanos().to_le_bytes());
        h.field(self.health_path().unwrap_or_default().as_bytes());
        h.field(self.metrics_path().as_bytes());
        // Only when it is not the server port, so that the hash of every
        // spec from before metrics ports existed stays the same.
        if self.metrics_port() != MetricsPort::Server {
            h.field(self.metrics_port().as_text().as_bytes());
        }
        format!("{:016x}", h.0)
    }

    /// What an agent needs to run one replica of this model on `gpus`.
    pub fn replica_spec(&self, replica_id: &str, gpus: Vec<u32>) -> ReplicaSpec {
        ReplicaSpec {
            id: replica_id.to_string(),
            model: self.name.clone(),
            spec_hash: self.spec_hash(),
            command: self.server.command.clone(),
            env: self.server.env.clone(),
            gpus,
            weights: self.weights.clone(),
            preset: self.server.preset.as_str().to_string(),
            health_path: self.health_path().unwrap_or_default(),
            metrics_path: self.metrics_path(),
            metrics_port: self.metrics_port(),
            ready_timeout: self.server.ready_timeout,
            stop_timeout: self.server.stop_timeout,
            gpu_memory_bytes: self.server.gpu_memory_bytes,
            // Signed per node by the coordinator as it sends the assignment.
            assignment_token: String::new(),
        }
    }
}

struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Length first, so ("ab", "c") and ("a", "bc") differ.
    fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }
}

/// The values a command gives `flag`: those after it up to the next flag
/// (vLLM's `--served-model-name a b`), or the one after `flag=`; `None`
/// when it is not given.
fn flag_values(command: &[String], flag: &str) -> Option<Vec<String>> {
    let mut found = None;
    for (i, arg) in command.iter().enumerate() {
        if arg == flag {
            let values = command[i + 1..]
                .iter()
                .take_while(|a| !a.starts_with('-'))
                .cloned();
            found.get_or_insert_with(Vec::new).extend(values);
        } else if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found.get_or_insert_with(Vec::new).push(value.to_string());
        }
    }
    found
}

fn human_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn metrics_port_text<S: Serializer>(p: &Option<MetricsPort>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.as_text()),
        None => s.serialize_none(),
    }
}

fn human_duration_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../packaging/examples/demo.toml");
    const LLAMA: &str = include_str!("../../packaging/examples/llama.toml");
    const LLAMACPP_CPU: &str = include_str!("../../packaging/examples/llamacpp-cpu.toml");

    fn spec(src: &str) -> ModelSpec {
        ModelSpec::parse(src).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn demo_example_parses_to_what_the_demo_needs() {
        let s = spec(DEMO);
        assert_eq!(s.name, "demo-llm");
        assert_eq!(s.weights, "/tmp/gpufleet-demo/models/demo-llm/weights.bin");
        assert_eq!(s.server.command[0], "gpufleet");
        assert!(s.server.command.contains(&"{port}".to_string()));
        assert_eq!(s.server.preset, Preset::Vllm);
        assert_eq!(s.server.gpu_memory_bytes, 20 << 30);
        assert_eq!(s.server.ready_timeout, Duration::from_secs(60));
        assert_eq!((s.min_replicas(), s.max_replicas()), (1, 4));
        let scaling = s.scaling.as_ref().unwrap();
        assert_eq!(scaling.panic_window, Duration::from_secs(6));
        assert_eq!(scaling.scale_to_zero_after, Duration::from_secs(600));
        assert_eq!(s.warm.mode, WarmMode::Standby);
    }

    #[test]
    fn llama_example_parses() {
        let s = spec(LLAMA);
        assert_eq!(s.server.preset, Preset::Vllm);
        assert!(s.server.command[0].starts_with('/'));
        assert_eq!(s.warm.mode, WarmMode::Predictive);
        assert!(s.scaling.is_some());
    }

    #[test]
    fn llamacpp_cpu_example_parses_without_warnings() {
        let s = spec(LLAMACPP_CPU);
        assert_eq!(s.server.preset, Preset::Llamacpp);
        assert_eq!((s.server.gpus, s.server.cpu), (0, 4.0));
        assert_eq!(s.server.memory_bytes, 4 << 30);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    }

    #[test]
    fn fixed_replicas_bound_both_ways() {
        let mut s = spec(DEMO);
        s.scaling = None;
        s.replicas = 3;
        assert_eq!((s.min_replicas(), s.max_replicas()), (3, 3));
    }

    #[test]
    fn paths_come_from_the_preset_unless_overridden() {
        let mut s = spec(DEMO);
        assert_eq!(s.health_path().as_deref(), Some("/health"));
        assert_eq!(s.metrics_path(), "/metrics");
        s.server.preset = Preset::Triton;
        assert_eq!(s.health_path().as_deref(), Some("/v2/health/ready"));
        s.server.preset = Preset::Generic;
        assert_eq!(s.health_path(), None);
        s.server.health_path = Some("/ready".into());
        s.server.metrics_path = Some("/stats".into());
        assert_eq!(s.health_path().as_deref(), Some("/ready"));
        assert_eq!(s.metrics_path(), "/stats");
    }

    #[test]
    fn presets_round_trip_through_their_names() {
        for p in Preset::ALL {
            assert_eq!(p.as_str().parse::<Preset>(), Ok(p));
        }
        let err = "vlm".parse::<Preset>().unwrap_err();
        assert!(err.contains("allowed: vllm, tgi"), "{err}");
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        let mut h = Fnv1a64::new();
        assert_eq!(h.0, 0xcbf29ce484222325);
        h.write(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn spec_hash_is_stable_and_pinned() {
        let s = spec(DEMO);
        assert_eq!(s.spec_hash(), spec(DEMO).spec_hash());
        assert_eq!(s.spec_hash().len(), 16);
        // Pinned on a spec of its own: a change here restarts every replica
        // in every fleet on upgrade. The value was checked against an
        // independent FNV-1a implementation over the same encoding.
        let pinned = spec(
            r#"name = "m"
weights = "/w"
[server]
command = ["/bin/serve", "{port}"]
gpu_memory = "1GiB"
"#,
        );
        assert_eq!(pinned.spec_hash(), "9f148afe6374469d");
    }

    #[test]
    fn scaling_and_warm_changes_keep_the_hash() {
        let s = spec(DEMO);
        let mut t = s.clone();
        t.scaling.as_mut().unwrap().max_replicas = 9;
        t.scaling.as_mut().unwrap().stable_window = Duration::from_secs(5);
        t.warm.mode = WarmMode::Off;
        t.replicas = 7;
        assert_eq!(s.spec_hash(), t.spec_hash());
    }

    #[test]
    fn server_changes_change_the_hash() {
        let s = spec(DEMO);
        let changes: Vec<fn(&mut ModelSpec)> = vec![
            |t| t.server.command.push("--verbose".into()),
            |t| t.weights.push('2'),
            |t| {
                t.server.env.insert("A".into(), "1".into());
            },
            |t| t.server.gpus = 2,
            |t| t.server.gpu_memory_bytes += 1,
            |t| t.server.preset = Preset::Tgi,
            |t| t.server.ready_timeout += Duration::from_secs(1),
            |t| t.server.stop_timeout += Duration::from_secs(1),
            |t| t.server.health_path = Some("/ready".into()),
            |t| t.server.metrics_path = Some("/m".into()),
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut t = s.clone();
            change(&mut t);
            assert_ne!(s.spec_hash(), t.spec_hash(), "change {i}");
        }
    }

    #[test]
    fn argument_boundaries_count_in_the_hash() {
        let mut a = spec(DEMO);
        a.server.command = vec!["ab".into(), "c".into()];
        let mut b = a.clone();
        b.server.command = vec!["a".into(), "bc".into()];
        assert_ne!(a.spec_hash(), b.spec_hash());
    }

    #[test]
    fn replica_spec_carries_the_server_table() {
        let s = spec(DEMO);
        let r = s.replica_spec("demo-llm-3", vec![2]);
        assert_eq!(r.id, "demo-llm-3");
        assert_eq!(r.model, "demo-llm");
        assert_eq!(r.spec_hash, s.spec_hash());
        assert_eq!(r.gpus, vec![2]);
        assert_eq!(r.health_path, "/health");
        assert_eq!(r.gpu_memory_bytes, 20 << 30);
        assert_eq!(r.stop_timeout, Duration::from_secs(10));
    }

    #[test]
    fn json_shows_durations_as_people_write_them() {
        let json = serde_json::to_value(spec(DEMO)).unwrap();
        assert_eq!(json["server"]["ready_timeout"], "1m");
        assert_eq!(json["server"]["preset"], "vllm");
        assert_eq!(json["scaling"]["panic_window"], "6s");
        assert_eq!(json["warm"]["mode"], "standby");
    }
}
