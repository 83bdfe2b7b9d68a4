use super::{ConfigError, TlsSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
#[derive(Debug, Default, Clone)]
pub struct CoordinatorOverrides { pub config: Option<PathBuf>, pub listen: Option<SocketAddr>, pub http_listen: Option<SocketAddr>, pub data_dir: Option<PathBuf> }
#[derive(Debug, Clone)]
pub struct CoordinatorConfig { pub listen: SocketAddr, pub http_listen: SocketAddr, pub data_dir: PathBuf, pub tick: Duration, pub node_suspect_after: Duration, pub node_lost_after: Duration, pub reconnect_grace: Duration, pub event_log_capacity: usize, pub tls: TlsSettings, pub auth: AuthSettings }
#[derive(Debug, Clone, Default)]
pub struct AuthSettings { pub tokens_file: Option<PathBuf> }
impl CoordinatorConfig {
    pub fn load(o: &CoordinatorOverrides) -> Result<CoordinatorConfig, ConfigError> { Ok(CoordinatorConfig { listen: o.listen.unwrap_or("0.0.0.0:7460".parse().unwrap()), http_listen: o.http_listen.unwrap_or("0.0.0.0:7461".parse().unwrap()), data_dir: o.data_dir.clone().unwrap_or("/var/lib/gpufleet".into()), tick: Duration::from_secs(1), node_suspect_after: Duration::from_secs(10), node_lost_after: Duration::from_secs(30), reconnect_grace: Duration::from_secs(30), event_log_capacity: 10000, tls: TlsSettings::default(), auth: AuthSettings::default() }) }
}
