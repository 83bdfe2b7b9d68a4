//! The CLI's connection to the coordinator's Control API.

use std::time::Duration;

use anyhow::anyhow;
use tonic::transport::{Channel, Endpoint};

use crate::wire::pb::control_client::ControlClient;

pub type Control = ControlClient<Channel>;

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
}

pub async fn connect(args: &ClientArgs) -> anyhow::Result<Control> {
    let url = &args.coordinator;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            anyhow!("coordinator URL `{url}` is invalid: {e}; expected e.g. http://127.0.0.1:7460")
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow!(
            "cannot reach the coordinator at {url}: {} (set --coordinator or GPUFLEET_COORDINATOR)",
            crate::wire::error_chain(&e)
        )
    })?;
    Ok(ControlClient::new(channel))
}

/// Turns a gRPC status into the one line an operator reads.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow!("coordinator unavailable: {}", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}
