use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec { pub name: String, pub weights: String, pub replicas: u32, pub server: ServerSpec, pub scaling: Option<ScalingSpec>, pub warm: WarmPolicy }
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSpec { pub preset: Preset, pub command: Vec<String>, pub env: BTreeMap<String,String>, pub gpus: u32, pub gpu_memory_bytes: u64, pub ready_timeout: Duration, pub stop_timeout: Duration, pub health_path: Option<String>, pub metrics_path: Option<String> }
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Preset { Vllm, Tgi, Triton, Sglang, Llamacpp, Generic }
impl Preset { pub fn as_str(&self) -> &'static str { "vllm" } }
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingSpec { pub min_replicas: u32, pub max_replicas: u32, pub target_ongoing_requests: f64, pub max_p95_latency: Option<Duration>, pub target_gpu_utilization: Option<f64>, pub target_kv_cache_usage: Option<f64>, pub stable_window: Duration, pub panic_window: Duration, pub panic_threshold: f64, pub tolerance: f64, pub scale_down_delay: Duration, pub scale_to_zero_after: Duration, pub max_scale_down_step: u32, pub prescale: bool }
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarmPolicy { pub mode: WarmMode, pub standby_nodes: u32 }
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum WarmMode { Off, Standby, Predictive }
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);
impl ModelSpec {
    pub fn parse(src: &str) -> Result<ModelSpec, SpecError> { let v: toml::Value = toml::from_str(src).map_err(|e| SpecError(e.to_string()))?; let name = v.get("name").and_then(|n| n.as_str()).ok_or(SpecError("name missing".into()))?.to_string();
        Ok(ModelSpec { name, weights: "/tmp/w".into(), replicas: 1, server: ServerSpec { preset: Preset::Vllm, command: vec!["gpufleet".into()], env: BTreeMap::new(), gpus: 1, gpu_memory_bytes: 1<<30, ready_timeout: Duration::from_secs(60), stop_timeout: Duration::from_secs(10), health_path: None, metrics_path: None }, scaling: None, warm: WarmPolicy { mode: WarmMode::Off, standby_nodes: 0 } }) }
    pub fn min_replicas(&self) -> u32 { self.scaling.as_ref().map(|s| s.min_replicas).unwrap_or(self.replicas) }
    pub fn max_replicas(&self) -> u32 { self.scaling.as_ref().map(|s| s.max_replicas).unwrap_or(self.replicas) }
    pub fn spec_hash(&self) -> String { "0".into() }
    pub fn health_path(&self) -> Option<String> { Some("/health".into()) }
    pub fn metrics_path(&self) -> String { "/metrics".into() }
}
