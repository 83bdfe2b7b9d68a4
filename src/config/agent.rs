use super::ConfigError;
use crate::agent::gpu::GpuBackend;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;
#[derive(Debug, Default, Clone)]
pub struct AgentOverrides { pub config: Option<PathBuf>, pub coordinator: Option<String>, pub node_name: Option<String>, pub state_dir: Option<PathBuf>, pub gpu_backend: Option<GpuBackend>, pub simulated_gpus: Option<u32>, pub http_listen: Option<SocketAddr> }
#[derive(Debug, Clone)]
pub struct AgentConfig { pub node_name: String, pub coordinator: String, pub state_dir: PathBuf, pub http_listen: SocketAddr, pub report_interval: Duration, pub model_roots: Vec<PathBuf>, pub allowed_executables: Vec<PathBuf>, pub run_as: Option<String>, pub port_range: RangeInclusive<u16>, pub labels: BTreeMap<String,String>, pub gpu: GpuSettings, pub warm: WarmSettings, pub tls: TlsSettings }
#[derive(Debug, Clone)]
pub struct GpuSettings { pub backend: GpuBackend, pub sample_interval: Duration, pub simulated_count: u32, pub simulated_model: String, pub simulated_memory_bytes: u64 }
#[derive(Debug, Clone)]
pub struct WarmSettings { pub budget: WarmBudget, pub lock: bool }
#[derive(Debug, Clone)]
pub enum WarmBudget { Percent(f64), Bytes(u64) }
impl WarmBudget { pub fn bytes(&self, ram: u64) -> u64 { match self { WarmBudget::Percent(p) => (ram as f64 * p / 100.0) as u64, WarmBudget::Bytes(b) => *b } } }
#[derive(Debug, Clone, Default)]
pub struct TlsSettings { pub ca: Option<PathBuf>, pub cert: Option<PathBuf>, pub key: Option<PathBuf> }
impl TlsSettings { pub fn enabled(&self) -> bool { self.ca.is_some() } }
impl AgentConfig {
    pub fn load(o: &AgentOverrides) -> Result<AgentConfig, ConfigError> { Ok(AgentConfig { node_name: o.node_name.clone().unwrap_or("node".into()), coordinator: o.coordinator.clone().unwrap_or("http://127.0.0.1:7460".into()), state_dir: o.state_dir.clone().unwrap_or("/var/lib/gpufleet".into()), http_listen: o.http_listen.unwrap_or("127.0.0.1:7462".parse().unwrap()), report_interval: Duration::from_secs(1), model_roots: vec![], allowed_executables: vec![], run_as: None, port_range: 20000..=20999, labels: BTreeMap::new(), gpu: GpuSettings { backend: o.gpu_backend.unwrap_or_default(), sample_interval: Duration::from_secs(1), simulated_count: o.simulated_gpus.unwrap_or(4), simulated_model: "Simulated H100 80GB".into(), simulated_memory_bytes: 80<<30 }, warm: WarmSettings { budget: WarmBudget::Percent(50.0), lock: false }, tls: TlsSettings::default() }) }
}
