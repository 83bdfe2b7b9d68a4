//! The CLI's connection to the coordinator's Control API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::security::{tls, BearerToken};
use crate::wire::pb::control_client::ControlClient;

pub type Control = ControlClient<InterceptedService<Channel, BearerToken>>;

/// Options every operator command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Coordinator gRPC URL (`https://` means TLS).
    #[arg(
        long,
        env = "GPUFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:7460",
        global = true
    )]
    pub coordinator: String,
    /// CA bundle to verify the coordinator with (needs an https:// URL).
    #[arg(long, env = "GPUFLEET_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// File holding the Control API token [default: $GPUFLEET_TOKEN]. There is
    /// no flag for the token itself: it would show in `ps`.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    #[arg(skip = std::env::var("GPUFLEET_TOKEN").ok())]
    pub token_env: Option<String>,
}

impl ClientArgs {
    /// No TLS, no token: the demo's own local coordinator.
    pub fn plain(coordinator: String) -> ClientArgs {
        ClientArgs {
            coordinator,
            ca: None,
            token_file: None,
            token_env: None,
        }
    }
}

pub async fn connect(args: &ClientArgs) -> anyhow::Result<Control> {
    let url = &args.coordinator;
    let token = BearerToken::from_sources(args.token_file.as_deref(), args.token_env.clone())?;
    let tls = tls::cli_tls(args.ca.as_deref(), url)?;
    let endpoint = tls::endpoint(url, tls.as_ref())
        .map_err(|e| {
            anyhow!("coordinator URL `{url}` is invalid: {e}; expected e.g. http://127.0.0.1:7460")
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = tls::connect(endpoint, tls.as_ref()).await.map_err(|e| {
        anyhow!(
            "cannot reach the coordinator at {url}: {} (set --coordinator or GPUFLEET_COORDINATOR)",
            crate::wire::error_chain(&e)
        )
    })?;
    Ok(ControlClient::with_interceptor(channel, token))
}

/// Turns a gRPC status into the one line an operator reads.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow!("coordinator unavailable: {}", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}
